"""Kubernetes label selectors, read as the API server reads them (apimachinery's labels.Parse), so that a
selector the server would refuse is a configuration error at start, not a failed cycle at 3 a.m.

The agent only validates: the selector is sent as written and the server does the matching.
"""

from __future__ import annotations

import re

_SPECIAL = "=!(),<>"
_SPACE = " \t\r\n"
_OPERATORS = ("=", "==", "!=", "in", "notin", ">", "<")
_PREFIX = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


class SelectorError(ValueError):
    """The text is not a label selector."""


def _tokens(text: str) -> list[str]:
    """Identifiers, and the symbols ( ) , ! = == != < > (the two-character ones when they are there)."""
    out, i = [], 0
    while i < len(text):
        if text[i] in _SPACE:
            i += 1
        elif text[i] in _SPECIAL:
            token = text[i:i + 2] if text[i:i + 2] in ("==", "!=") else text[i]
            out.append(token)
            i += len(token)
        else:
            start = i
            while i < len(text) and text[i] not in _SPACE + _SPECIAL:
                i += 1
            out.append(text[start:i])
    return out


def _check_key(key: str) -> None:
    prefix, slash, name = key.rpartition("/")
    if slash and not (len(prefix) <= 253 and _PREFIX.fullmatch(prefix)):
        raise SelectorError(f"key {key!r}: the prefix before '/' must be a DNS subdomain (lower case)")
    if not (len(name) <= 63 and _NAME.fullmatch(name)):
        raise SelectorError(f"key {key!r}: a name of at most 63 letters, digits, '-', '_' or '.', starting "
                            "and ending with a letter or digit")


def _check_value(value: str) -> None:
    if value and not (len(value) <= 63 and _NAME.fullmatch(value)):
        raise SelectorError(f"value {value!r}: at most 63 letters, digits, '-', '_' or '.', starting and "
                            "ending with a letter or digit")


def parse(text: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """(key, operator, values) per requirement; operator "exists" or "!" for a bare key or !key.
    Raises SelectorError saying what is wrong. An empty text selects everything: no requirements."""
    tokens = _tokens(text)
    pos = 0

    def take(expected: str) -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise SelectorError(f"the selector ends where {expected} was expected")
        pos += 1
        return tokens[pos - 1]

    def is_identifier(token: str) -> bool:
        return token[0] not in _SPECIAL

    out: list[tuple[str, str, tuple[str, ...]]] = []
    while pos < len(tokens):
        if out and take("','") != ",":
            raise SelectorError(f"found {tokens[pos - 1]!r} where ',' or the end was expected")
        key = take("a key")
        negated = key == "!"
        if negated:
            key = take("a key after '!'")
        if not is_identifier(key) or key in ("in", "notin"):
            raise SelectorError(f"found {key!r} where a key was expected")
        _check_key(key)
        if negated or pos == len(tokens) or tokens[pos] == ",":
            out.append((key, "!" if negated else "exists", ()))
            continue
        op = take("an operator")
        if op not in _OPERATORS:
            raise SelectorError(f"found {op!r} after {key!r} where an operator (=, ==, !=, in, notin) was "
                                "expected")
        if op in ("in", "notin"):
            if take("'('") != "(":
                raise SelectorError(f"{key} {op}: a list in parentheses must follow, e.g. (a,b)")
            values: list[str] = []
            want_value, commas = True, 0
            while (item := take("')'")) != ")":
                if item == ",":
                    if want_value:
                        values.append("")  # an empty value, as in (,a) or (a,,b)
                    want_value, commas = True, commas + 1
                elif want_value and is_identifier(item):
                    values.append(item)
                    want_value = False
                else:
                    raise SelectorError(f"found {item!r} in the list of {key} {op}")
            if want_value and commas:
                values.append("")  # (a,)
            if not values:
                raise SelectorError(f"{key} {op} (): the list of values is empty")
        else:
            value = "" if pos == len(tokens) or tokens[pos] == "," else take("a value")
            if value and not is_identifier(value):
                raise SelectorError(f"found {value!r} where a value for {key} was expected")
            values = [value]
            if op in ("<", ">") and not re.fullmatch(r"[0-9]+", value):
                raise SelectorError(f"{key} {op} {value}: a whole number must follow {op}")
        for value in values:
            _check_value(value)
        out.append((key, op, tuple(values)))
    return out
