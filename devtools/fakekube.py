"""A small stateful fake Kubernetes API server for tests, the demo and the benchmarks.

The real ``kubernetes`` Python client talks to it over HTTP on 127.0.0.1, so tests exercise the
client's actual wire behaviour (content types, status codes, exception classes) instead of mocks.
Only what the fsm-cleaner agent and its tests use is served (``FakeKube.ROUTES``):

- nodes: GET and PATCH (merge, strategic-merge and JSON patch as the real server applies them,
  resourceVersion preconditions), and the list (``kubectl get nodes``, ``fsm-cleaner status --all``);
- pods: lists in all namespaces or one, with label and field selectors (pods are added, re-phased and
  deleted with ``add_pod``, ``set_pod_phase`` and ``delete_pod``);
- core/v1 Event creation;
- coordination.k8s.io/v1 Leases: GET, list (in a namespace or all, label and field selectors), POST,
  PUT (conditional on the body's resourceVersion; a missing lease is created; a uid in the body is a
  precondition), DELETE (with uid/resourceVersion preconditions); MicroTimes are parsed as strictly as
  Go does. Test side: ``add_lease``, ``lease``, ``leases``, ``mutate_lease``, ``delete_lease``;
- apps/v1 DaemonSet GET, set up with ``add_daemonset`` and ``set_daemonset_status``;
- the discovery documents kubectl reads first (``kubectl get nodes``, ``kubectl get leases -n NS``).

Every write takes the next value of one revision counter, as etcd's, whatever the resource.
Faults (5xx, delays, dropped connections) are injected with ``fail``; tests act around requests
with the ``on_request`` and ``before_reply`` hooks; every request is logged in ``requests``, and the
unschedulable nodes after every node PATCH in ``cordoned_history``.

Server side is stdlib only. Run in-process (``with FakeKube() as fk: ...``) or standalone::

    python -m devtools.fakekube --port 8081 --node NAME [--kubeconfig PATH]

which prints the URL on stdout and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import random
import re
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH)

# apiserver's answer (422 Invalid) to a JSON patch that does not apply, a failed `test` included.
JSON_PATCH_NOT_APPLIED = "the server rejected our request due to an error in our request"

# Same limit as apimachinery's ValidateAnnotations: the agent's journal lives in an annotation.
ANNOTATIONS_MAX_BYTES = 256 * 1024

_REASONS: dict[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}

_NODE_PATH = re.compile(r"^/api/v1/nodes/(?P<name>[^/]+)$")

_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# apimachinery's generateName suffix alphabet (no vowels, no confusable digits)
_NAME_SUFFIX_CHARS = "bcdfghjklmnpqrstvwxz2456789"


class Request(NamedTuple):
    """One logged request; a plain 4-tuple so ``method, path, ctype, body = r`` works."""

    method: str
    path: str  # without the query string
    content_type: str | None  # media type only, lower-cased, no parameters
    body: Any  # parsed JSON, the raw text if it was not JSON, or None


class Call(NamedTuple):
    """What a route's handler gets besides the path's named groups."""

    query: dict[str, str]  # the last value of each query parameter
    content_type: str | None
    body: Any  # parsed JSON (the handler may change it: it is not the logged copy)


class ApiError(Exception):
    """Raised inside request handling; becomes a ``Status`` response."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        # "" is StatusReasonUnknown: what the apiserver sends for errors that are not API errors
        self.reason = _REASONS.get(code, "Unknown") if reason is None else reason
        self.details = details

    def status(self) -> dict[str, Any]:
        return status_body(self.code, self.message, reason=self.reason, details=self.details)


def status_body(
    code: int, message: str, *, reason: str | None = None, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A ``metav1.Status`` failure object as the apiserver returns it (an empty reason is omitted)."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": _REASONS.get(code, "Unknown") if reason is None else reason,
        "code": code,
    }
    if not body["reason"]:
        del body["reason"]
    if details is not None:
        body["details"] = details
    return body


def _details(name: str, kind: str, group: str = "") -> dict[str, Any]:
    # StatusDetails: the group is omitted for the core group, as Go's omitempty does.
    return {"name": name, **({"group": group} if group else {}), "kind": kind}


def _qualified(resource: str, group: str = "") -> str:
    """schema.GroupResource (or GroupKind) as the apiserver prints it: ``leases.coordination.k8s.io``."""
    return f"{resource}.{group}" if group else resource


def _not_found(resource: str, name: str, *, group: str = "") -> ApiError:
    return ApiError(
        404, f'{_qualified(resource, group)} "{name}" not found', details=_details(name, resource, group)
    )


def _conflict(resource: str, name: str, *, group: str = "", why: str | None = None) -> ApiError:
    why = why or (
        "the object has been modified; please apply your changes to the latest version and try again"
    )
    return ApiError(
        409,
        f'Operation cannot be fulfilled on {_qualified(resource, group)} "{name}": {why}',
        details=_details(name, resource, group),
    )


def _invalid(kind: str, name: str, errors: list[tuple[str, str]], *, group: str = "") -> ApiError:
    """422 in the shape of apimachinery's ``NewInvalid`` (field errors listed in the message)."""
    parts = [f"{field}: {msg}" for field, msg in errors]
    joined = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    causes = [{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in errors]
    return ApiError(
        422,
        f'{_qualified(kind, group)} "{name}" is invalid: {joined}',
        details={**_details(name, kind, group), "causes": causes},
    )


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------
# Patch algorithms (pure functions on JSON values; callers pass deep copies where they mutate)
# ---------------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, ``null`` deletes, the rest replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# Node fields whose Go struct tags say patchStrategy=merge. A merge key of None means a list of
# primitives merged as a set. Every other list is replaced wholesale, like the real server does.
_SMP_LIST_MERGE_KEYS: dict[tuple[str, ...], str | None] = {
    ("metadata", "finalizers"): None,
    ("metadata", "ownerReferences"): "uid",
    ("spec", "podCIDRs"): None,
    ("status", "conditions"): "type",
    ("status", "addresses"): "type",
}

_DELETE = object()  # sentinel: a ``$patch: delete`` map asks its parent to drop it


def _smp_format_error(message: str) -> ApiError:
    return ApiError(400, message)


def strategic_merge_patch(target: Any, patch: Any, path: tuple[str, ...] = ()) -> Any:
    """Strategic merge patch for Node objects.

    For maps it is RFC 7386 plus the ``$patch: replace|delete``, ``$retainKeys``,
    ``$deleteFromPrimitiveList/<field>`` directives (``$setElementOrder/<field>`` is accepted and
    ignored, so list order is not reordered). Lists listed in ``_SMP_LIST_MERGE_KEYS`` merge by
    key (elements may carry ``$patch: delete``/``replace``); other lists are replaced.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "delete":
        return _DELETE
    if directive == "replace":
        return _strip_directives({k: v for k, v in patch.items() if k != "$patch"})
    if directive is not None:
        raise _smp_format_error(f"Unknown patch type: {directive}")

    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    # The real implementation handles deleteFromPrimitiveList before merging the rest.
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if not isinstance(value, list):
                raise _smp_format_error(f"invalid patch format for {key}: must be a list")
            if isinstance(result.get(field), list):
                result[field] = [x for x in result[field] if not _contains(value, x)]
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith(
            ("$deleteFromPrimitiveList/", "$setElementOrder/")
        ):
            continue
        if value is None:
            result.pop(key, None)
            continue
        sub = (*path, key)
        if isinstance(value, list) and sub in _SMP_LIST_MERGE_KEYS:
            result[key] = _smp_merge_list(result.get(key), value, _SMP_LIST_MERGE_KEYS[sub], sub)
            continue
        merged = strategic_merge_patch(result.get(key), value, sub)
        if merged is _DELETE:
            result.pop(key, None)
        else:
            result[key] = merged
    retain = patch.get("$retainKeys")
    if retain is not None:
        if not isinstance(retain, list):
            raise _smp_format_error("invalid patch format for $retainKeys: must be a list")
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _smp_merge_list(
    current: Any, patch: list[Any], merge_key: str | None, path: tuple[str, ...]
) -> list[Any]:
    items = copy.deepcopy(current) if isinstance(current, list) else []
    if merge_key is None:  # set of primitives: union, keeping existing order
        for value in patch:
            if not _contains(items, value):
                items.append(copy.deepcopy(value))
        return items
    if any(isinstance(e, dict) and e.get("$patch") == "replace" for e in patch):
        return [
            _strip_directives(e) for e in patch if not (isinstance(e, dict) and e.get("$patch") == "replace")
        ]
    for elem in patch:
        if not isinstance(elem, dict) or merge_key not in elem:
            raise _smp_format_error(f"map: {elem!r} does not contain declared merge key: {merge_key}")
        idx = next(
            (
                i
                for i, cur in enumerate(items)
                if isinstance(cur, dict) and cur.get(merge_key) == elem[merge_key]
            ),
            None,
        )
        if elem.get("$patch") == "delete":
            if idx is not None:
                del items[idx]
            continue
        merged = strategic_merge_patch(items[idx] if idx is not None else {}, elem, path)
        if idx is None:
            items.append(merged)
        else:
            items[idx] = merged
    return items


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def _json_equal(a: Any, b: Any) -> bool:
    """JSON value equality; unlike ``==`` it keeps ``true`` and ``1`` apart."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _contains(items: list[Any], value: Any) -> bool:
    return any(_json_equal(x, value) for x in items)


class JsonPatchError(Exception):
    """An RFC 6902 operation could not be applied (the apiserver answers 422)."""


def _parse_pointer(pointer: Any) -> list[str]:
    """RFC 6901: ``/a~1b/c~0d`` -> ``["a/b", "c~d"]``."""
    if not isinstance(pointer, str):
        raise JsonPatchError(f"invalid JSON pointer: {pointer!r}")
    if pointer == "":
        return []
    if not pointer.startswith("/") or re.search(r"~([^01]|$)", pointer):
        raise JsonPatchError(f"invalid JSON pointer: {pointer!r}")
    # ~1 first, then ~0, so "~01" decodes to "~1" and not "/"
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def _list_index(token: str, length: int, pointer: str) -> int:
    if not re.fullmatch(r"0|[1-9][0-9]*", token) or int(token) >= length:
        raise JsonPatchError(f"index out of range or invalid: {pointer}")
    return int(token)


def _get(doc: Any, tokens: list[str], pointer: str) -> Any:
    node = doc
    for token in tokens:
        if isinstance(node, dict):
            if token not in node:
                raise JsonPatchError(f"missing value: {pointer}")
            node = node[token]
        elif isinstance(node, list):
            node = node[_list_index(token, len(node), pointer)]
        else:
            raise JsonPatchError(f"missing value: {pointer}")
    return node


def _add(doc: Any, tokens: list[str], value: Any, pointer: str) -> Any:
    if not tokens:
        return value
    parent = _get(doc, tokens[:-1], pointer)
    key = tokens[-1]
    if isinstance(parent, dict):
        parent[key] = value
    elif isinstance(parent, list):
        if key == "-":
            parent.append(value)
        else:
            parent.insert(_list_index(key, len(parent) + 1, pointer), value)
    else:
        raise JsonPatchError(f"add operation does not apply: doc is missing path: {pointer}")
    return doc


def _remove(doc: Any, tokens: list[str], pointer: str) -> Any:
    if not tokens:
        raise JsonPatchError("remove operation does not apply: cannot remove the document root")
    parent = _get(doc, tokens[:-1], pointer)
    key = tokens[-1]
    if isinstance(parent, dict):
        if key not in parent:
            raise JsonPatchError(f"remove operation does not apply: doc is missing key: {pointer}")
        return parent.pop(key)
    if isinstance(parent, list):
        return parent.pop(_list_index(key, len(parent), pointer))
    raise JsonPatchError(f"remove operation does not apply: doc is missing path: {pointer}")


def _test(doc: Any, tokens: list[str], value: Any, pointer: str) -> None:
    """RFC 6902 ``test``, with the API server's (evanphx/json-patch's) reading of ``null``: it also
    matches a missing key, so "absent" can be tested; a missing parent fails."""
    if not tokens:
        actual = doc
    else:
        try:
            parent = _get(doc, tokens[:-1], pointer)
        except JsonPatchError:
            raise JsonPatchError(f"test operation does not apply: is missing path: {pointer}") from None
        if isinstance(parent, dict):
            actual = parent.get(tokens[-1])
        elif isinstance(parent, list):
            actual = parent[_list_index(tokens[-1], len(parent), pointer)]
        else:
            raise JsonPatchError(f"test operation does not apply: is missing path: {pointer}")
    if not _json_equal(actual, value):
        raise JsonPatchError(f"testing value {pointer} failed: test failed")


def json_patch(doc: Any, ops: list[Any]) -> Any:
    """RFC 6902 JSON patch, atomic: works on a deep copy, raises JsonPatchError on any failure."""
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict):
            raise JsonPatchError(f"invalid operation: {op!r}")
        kind = op.get("op")
        pointer = op.get("path")
        tokens = _parse_pointer(pointer)
        if kind in ("add", "replace", "test") and "value" not in op:
            raise JsonPatchError(f"missing value for {kind} operation at {pointer}")
        if kind == "add":
            doc = _add(doc, tokens, copy.deepcopy(op["value"]), pointer)
        elif kind == "remove":
            _remove(doc, tokens, pointer)
        elif kind == "replace":
            if tokens:
                _get(doc, tokens, pointer)  # the target must exist (RFC 6902 4.3)
                _remove(doc, tokens, pointer)
            doc = _add(doc, tokens, copy.deepcopy(op["value"]), pointer)
        elif kind == "test":
            _test(doc, tokens, op["value"], pointer)
        elif kind in ("move", "copy"):
            source = op.get("from")
            from_tokens = _parse_pointer(source)
            if kind == "move":
                if tokens[: len(from_tokens)] == from_tokens and tokens != from_tokens:
                    raise JsonPatchError(f"move operation cannot move {source} into its child")
                value = _remove(doc, from_tokens, source)
            else:
                value = copy.deepcopy(_get(doc, from_tokens, source))
            doc = _add(doc, tokens, value, pointer)
        else:
            raise JsonPatchError(f"Unexpected kind: {kind}")
    return doc


# ---------------------------------------------------------------------------------------------
# Node normalisation and validation (what the apiserver's Go types and validation would do)
# ---------------------------------------------------------------------------------------------


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _normalize_node(node: dict[str, Any]) -> dict[str, Any]:
    """Mimic Go's ``omitempty`` so a round trip looks like the real server's JSON.

    E.g. ``spec.unschedulable: false`` and empty annotation maps are not serialised by the real
    server, so an uncordon comes back without the field and the client sees ``None``.
    """
    node = _drop_nulls(node)
    meta = node.setdefault("metadata", {})
    for key in ("labels", "annotations", "finalizers", "ownerReferences"):
        if meta.get(key) in ({}, []):
            del meta[key]
    spec = node.setdefault("spec", {})
    if isinstance(spec, dict) and spec.get("unschedulable") is False:
        del spec["unschedulable"]
    node.setdefault("status", {})
    return node


def _qualified_name_errors(key: str) -> list[str]:
    """apimachinery ``IsQualifiedName`` (label and annotation keys)."""
    parts = key.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            return ["prefix part must be non-empty"]
        if len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix):
            return [
                "prefix part a lowercase RFC 1123 subdomain must consist of lower case "
                "alphanumeric characters, '-' or '.', and must start and end with an "
                "alphanumeric character"
            ]
    else:
        return [
            "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and "
            "must start and end with an alphanumeric character with an optional DNS subdomain "
            "prefix and '/'"
        ]
    if not name:
        return ["name part must be non-empty"]
    if len(name) > 63:
        return ["name part must be no more than 63 characters"]
    if not _QUALIFIED_NAME.match(name):
        return [
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must "
            "start and end with an alphanumeric character"
        ]
    return []


def _string_map_errors(field: str, value: Any, *, labels: bool) -> list[tuple[str, str]]:
    if not isinstance(value, dict):
        return [(field, f"Invalid value: {value!r}: must be a map of string to string")]
    errors: list[tuple[str, str]] = []
    for key, val in value.items():
        errors += [(field, f"Invalid value: {key!r}: {m}") for m in _qualified_name_errors(key)]
        if not isinstance(val, str):
            errors.append((f"{field}[{key}]", f"Invalid value: {val!r}: must be a string"))
        elif labels and (len(val) > 63 or not _LABEL_VALUE.match(val)):
            errors.append(
                (
                    field,
                    f"Invalid value: {val!r}: a valid label must be an empty string or consist "
                    "of alphanumeric characters, '-', '_' or '.', and must start and end with "
                    "an alphanumeric character (at most 63 characters)",
                )
            )
    if not labels and not errors:
        size = sum(len(k.encode()) + len(v.encode()) for k, v in value.items())
        if size > ANNOTATIONS_MAX_BYTES:
            errors.append((field, f"Too long: must have at most {ANNOTATIONS_MAX_BYTES} bytes"))
    return errors


def node_errors(node: dict[str, Any]) -> list[tuple[str, str]]:
    """Validation for the fields the agent writes (others are stored as given)."""
    meta = node.get("metadata", {})
    errors: list[tuple[str, str]] = []
    if "labels" in meta:
        errors += _string_map_errors("metadata.labels", meta["labels"], labels=True)
    if "annotations" in meta:
        errors += _string_map_errors("metadata.annotations", meta["annotations"], labels=False)
    spec = node.get("spec")
    if not isinstance(spec, dict):
        errors.append(("spec", f"Invalid value: {spec!r}: must be an object"))
    elif "unschedulable" in spec and not isinstance(spec["unschedulable"], bool):
        errors.append(("spec.unschedulable", f"Invalid value: {spec['unschedulable']!r}: must be a boolean"))
    return errors


# ---------------------------------------------------------------------------------------------
# Label and field selectors (apimachinery's labels.Parse and fields.ParseSelector), for pod lists
# ---------------------------------------------------------------------------------------------

_WORD = r"[^\s=!(),<>]+"
_SET_TERM = re.compile(rf"^({_WORD})\s+(in|notin)\s*\((.*)\)$", re.S)
_VALUE_TERM = re.compile(rf"^({_WORD})\s*(==|!=|=|>|<)\s*({_WORD})?$", re.S)
_EXISTS_TERM = re.compile(rf"^(!?)\s*({_WORD})$", re.S)

Requirement = tuple[str, str, tuple[str, ...]]  # key, operator ("exists", "!", "=", "!=", "in"...), values


def _bad_selector(why: str) -> ApiError:
    return ApiError(400, f"unable to parse requirement: {why}")


def _split_terms(text: str) -> list[str]:
    """Split on the commas that are not inside parentheses."""
    terms, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            terms.append(text[start:i])
            start = i + 1
    return [*terms, text[start:]]


def parse_label_selector(text: str) -> list[Requirement]:
    """A label selector as the apiserver parses it; ApiError 400 when it cannot."""
    if not text.strip():
        return []
    out: list[Requirement] = []
    for term in (t.strip() for t in _split_terms(text)):
        if m := _SET_TERM.match(term):
            key, op, values = m[1], m[2], tuple(v.strip() for v in m[3].split(","))
            if values == ("",):
                raise _bad_selector(f"{term!r}: for 'in', 'notin' operators, values set can't be empty")
        elif m := _VALUE_TERM.match(term):
            key, op, values = m[1], "=" if m[2] == "==" else m[2], (m[3] or "",)
            if op in "<>" and not values[0].isdigit():
                raise _bad_selector(f"{term!r}: for 'Gt', 'Lt' operators, the value must be an integer")
        elif m := _EXISTS_TERM.match(term):
            key, op, values = m[2], "!" if m[1] else "exists", ()
        else:
            raise _bad_selector(f"cannot read {term!r}" if term else "found '', expected: identifier")
        if key in ("in", "notin"):
            raise _bad_selector(f"found {key!r}, expected: !, identifier, or 'end of string'")
        errors = _qualified_name_errors(key)
        if errors:
            raise _bad_selector(f"key: Invalid value: {key!r}: {errors[0]}")
        for value in values:
            if len(value) > 63 or not _LABEL_VALUE.match(value):
                raise _bad_selector(f"values[0][{key}]: Invalid value: {value!r}: a valid label must be an "
                                    "empty string or consist of alphanumeric characters, '-', '_' or '.', "
                                    "and must start and end with an alphanumeric character")
        out.append((key, op, values))
    return out


def labels_match(requirements: list[Requirement], labels: dict[str, str]) -> bool:
    def holds(key: str, op: str, values: tuple[str, ...]) -> bool:
        value = labels.get(key)
        if op == "exists":
            return value is not None
        if op == "!":
            return value is None
        if op in ("=", "in"):
            return value in values
        if op in ("!=", "notin"):
            return value not in values
        if value is None or not re.fullmatch(r"-?[0-9]+", value):
            return False  # Gt/Lt: a label that is not an integer matches neither
        return int(value) > int(values[0]) if op == ">" else int(value) < int(values[0])

    return all(holds(*r) for r in requirements)


# The pod fields the apiserver lets a field selector name (pkg/registry/core/pod: PodToSelectableFields).
_POD_FIELDS: dict[str, Callable[[dict[str, Any]], str]] = {
    "metadata.name": lambda p: p["metadata"]["name"],
    "metadata.namespace": lambda p: p["metadata"]["namespace"],
    "spec.nodeName": lambda p: p["spec"].get("nodeName", ""),
    "spec.restartPolicy": lambda p: p["spec"].get("restartPolicy", ""),
    "spec.schedulerName": lambda p: p["spec"].get("schedulerName", ""),
    "spec.serviceAccountName": lambda p: p["spec"].get("serviceAccountName", ""),
    "spec.hostNetwork": lambda p: "true" if p["spec"].get("hostNetwork") else "false",
    "status.phase": lambda p: p.get("status", {}).get("phase", ""),
    "status.podIP": lambda p: p.get("status", {}).get("podIP", ""),
    "status.nominatedNodeName": lambda p: p.get("status", {}).get("nominatedNodeName", ""),
}


def parse_field_selector(text: str, fields: dict[str, Callable[[dict[str, Any]], str]]) -> list[Requirement]:
    """``field=value``, ``field==value`` or ``field!=value`` terms, comma-separated."""
    out: list[Requirement] = []
    for term in text.split(",") if text.strip() else []:
        m = re.fullmatch(r"\s*([^=!\s]+)\s*(==|!=|=)(.*)", term)
        if not m:
            raise ApiError(400, f"invalid selector: {text!r}; can't understand {term!r}")
        if m[1] not in fields:
            raise ApiError(400, f"field label not supported: {m[1]}")
        out.append((m[1], "=" if m[2] == "==" else m[2], (m[3],)))
    return out


def fields_match(requirements: list[Requirement], obj: dict[str, Any],
                 fields: dict[str, Callable[[dict[str, Any]], str]]) -> bool:
    return all((fields[key](obj) == values[0]) == (op == "=") for key, op, values in requirements)


# ---------------------------------------------------------------------------------------------
# Leases (coordination.k8s.io/v1) and DaemonSets (apps/v1)
# ---------------------------------------------------------------------------------------------

COORDINATION = "coordination.k8s.io"
COORDINATION_V1 = f"{COORDINATION}/v1"
APPS = "apps"

_NS = r"^/apis/{gv}/namespaces/(?P<namespace>[^/]+)/{resource}"
_LEASES_PATH = re.compile(_NS.format(gv=re.escape(COORDINATION_V1), resource="leases") + "$")
_LEASE_PATH = re.compile(_NS.format(gv=re.escape(COORDINATION_V1), resource="leases") + "/(?P<name>[^/]+)$")
_DAEMONSET_PATH = re.compile(_NS.format(gv="apps/v1", resource="daemonsets") + "/(?P<name>[^/]+)$")

# metav1.MicroTime's wire format. Go parses it with time.Parse(RFC3339Micro): exactly six fractional
# digits and a zone, or the whole request is a 400 - which is what the Python client's
# datetime.isoformat() produces whenever the microseconds are zero, or the datetime is naive.
RFC3339_MICRO = "2006-01-02T15:04:05.000000Z07:00"
_MICRO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(?:Z|[+-]\d{2}:\d{2})$")

# LeaseSpec as stored with the CoordinatedLeaderElection feature gate off (its default): strategy
# and preferredHolder are dropped like unknown fields.
_LEASE_SPEC: dict[str, str] = {
    "holderIdentity": "string",
    "leaseDurationSeconds": "int32",
    "acquireTime": "MicroTime",
    "renewTime": "MicroTime",
    "leaseTransitions": "int32",
}
# What a write may say about metadata; the rest is the server's (uid and creationTimestamp are set
# on create and kept on update; resourceVersion and uid are read as preconditions).
_LEASE_META = ("name", "generateName", "namespace", "uid", "resourceVersion", "labels", "annotations",
               "ownerReferences")

# The fields every namespaced resource lets a field selector name (DefaultNamespaceScopedAttr).
_META_FIELDS: dict[str, Callable[[dict[str, Any]], str]] = {
    "metadata.name": lambda o: o["metadata"]["name"],
    "metadata.namespace": lambda o: o["metadata"]["namespace"],
}


def _undecodable(why: str) -> ApiError:
    # The create and update handlers' wording for a body that does not decode into the Go type.
    return ApiError(400, f'Lease in version "v1" cannot be handled as a Lease: {why}')


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", dict: "object", list: "array"}.get(type(value), "value")


def micro_time(value: Any, field: str = "spec.renewTime") -> str:
    """A MicroTime as the apiserver decodes and re-encodes it: strict RFC3339Micro in, UTC out."""
    if not isinstance(value, str):
        raise _undecodable(f"json: cannot unmarshal {_json_type(value)} into Go struct field "
                           f"LeaseSpec.{field} of type string")
    if not _MICRO_TIME.match(value):
        # Go names the first part of the layout that did not match; the usual culprits are these.
        tail = value[19:]
        if not re.match(r"\.\d{6}", tail):
            what = f'cannot parse "{tail}" as ".000000"'
        elif value[26:] and not re.fullmatch(r"Z|[+-]\d{2}:\d{2}", value[26:]):
            what = f'cannot parse "{value[26:]}" as "Z07:00"'
        else:
            what = f'cannot parse "{value}" as "2006"'
        raise _undecodable(f'parsing time "{value}" as "{RFC3339_MICRO}": {what}')
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))  # 3.10 has no "Z"
    except ValueError:
        raise _undecodable(f'parsing time "{value}": out of range') from None
    return parsed.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _decode_lease(body: Any) -> dict[str, Any]:
    """A write's body as the apiserver decodes it into a v1.Lease: a 400 for what would not decode,
    unknown fields dropped (default field validation only warns), times normalised to UTC."""
    if not isinstance(body, dict):
        raise _undecodable(f"json: cannot unmarshal {_json_type(body)} into Go value of type v1.Lease")
    api_version, kind = body.get("apiVersion"), body.get("kind")
    if api_version not in (None, "", COORDINATION_V1) or kind not in (None, "", "Lease"):
        raise ApiError(400, f"{api_version}, Kind={kind} is not a {COORDINATION_V1} Lease")
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    for name, part in (("ObjectMeta", meta), ("LeaseSpec", spec)):
        if not isinstance(part, dict):
            raise _undecodable(f"json: cannot unmarshal {_json_type(part)} into Go value of type v1.{name}")
    if meta.get("finalizers"):
        # A finalizer makes a delete graceful (deletionTimestamp, no removal); not modelled.
        raise ApiError(400, "fakekube does not implement finalizers on leases")
    out_meta = {k: copy.deepcopy(meta[k]) for k in _LEASE_META if meta.get(k) is not None}
    for key in ("labels", "annotations"):
        value = out_meta.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise _undecodable(f"json: cannot unmarshal {_json_type(value)} into Go struct field "
                               f"ObjectMeta.metadata.{key} of type map[string]string")
    out_spec: dict[str, Any] = {}
    for key, value in spec.items():
        wanted = _LEASE_SPEC.get(key)
        if wanted is None or value is None:
            continue
        if wanted == "MicroTime":
            out_spec[key] = micro_time(value, f"spec.{key}")
        elif wanted == "int32" and not (isinstance(value, int) and not isinstance(value, bool)
                                        and -(2**31) <= value < 2**31):
            raise _undecodable(f"json: cannot unmarshal {_json_type(value)} into Go struct field "
                               f"LeaseSpec.spec.{key} of type int32")
        elif wanted == "string" and not isinstance(value, str):
            raise _undecodable(f"json: cannot unmarshal {_json_type(value)} into Go struct field "
                               f"LeaseSpec.spec.{key} of type string")
        else:
            out_spec[key] = copy.deepcopy(value)
    return {"kind": "Lease", "apiVersion": COORDINATION_V1, "metadata": out_meta, "spec": out_spec}


def lease_errors(lease: dict[str, Any]) -> list[tuple[str, str]]:
    """ValidateLease: the name, labels and annotations, and the two numeric spec fields."""
    meta, spec = lease["metadata"], lease["spec"]
    name = meta.get("name", "")
    errors: list[tuple[str, str]] = []
    if not name:
        errors.append(("metadata.name", "Required value: name or generateName is required"))
    elif len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name):
        errors.append(("metadata.name", f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must '
                       "consist of lower case alphanumeric characters, '-' or '.', and must start and end "
                       "with an alphanumeric character"))
    if "labels" in meta:
        errors += _string_map_errors("metadata.labels", meta["labels"], labels=True)
    if "annotations" in meta:
        errors += _string_map_errors("metadata.annotations", meta["annotations"], labels=False)
    if spec.get("leaseDurationSeconds", 1) <= 0:
        errors.append(("spec.leaseDurationSeconds",
                       f"Invalid value: {spec['leaseDurationSeconds']}: must be greater than 0"))
    if spec.get("leaseTransitions", 0) < 0:
        errors.append(("spec.leaseTransitions",
                       f"Invalid value: {spec['leaseTransitions']}: must be greater than or equal to 0"))
    return errors


def _normalize_lease(lease: dict[str, Any]) -> dict[str, Any]:
    """Go's omitempty: empty maps and lists vanish; ``spec`` is a struct, so ``{}`` stays."""
    meta = lease["metadata"]
    for key in ("labels", "annotations", "ownerReferences", "generateName"):
        if meta.get(key) in ({}, [], ""):
            meta.pop(key, None)
    return {"kind": "Lease", "apiVersion": COORDINATION_V1, "metadata": meta, "spec": lease.get("spec") or {}}


def _resource_version(value: Any) -> int:
    """A body's metadata.resourceVersion as the storage versioner reads it: absent or "" is 0."""
    if value in (None, ""):
        return 0
    if not isinstance(value, str) or not value.isdigit():
        raise ApiError(400, f"invalid resourceVersion: {value!r}")
    return int(value)


def _uid_precondition_failed(namespace: str, name: str, sent: str, stored: str) -> ApiError:
    # An update's body uid is a storage precondition; etcd3's failure, wrapped by InterpretUpdateError.
    return _conflict("leases", name, group=COORDINATION, why=(
        f"StorageError: invalid object, Code: 4, Key: /registry/leases/{namespace}/{name}, "
        f"ResourceVersion: 0, AdditionalErrorMsg: Precondition failed: UID in precondition: {sent}, "
        f"UID in object meta: {stored}"))


def _delete_precondition_failed(name: str, what: str, sent: str, stored: str, hint: str) -> ApiError:
    # rest.BeforeDelete checks preconditions early, naming the GroupResource by its Kind.
    return _conflict("Lease", name, group=COORDINATION, why=(
        f"the {what} in the precondition ({sent}) does not match the {what} in record ({stored}). {hint}"))


# DaemonSetStatus fields without omitempty: sent even when 0 (and required by the Python client).
_DAEMONSET_STATUS_REQUIRED = ("currentNumberScheduled", "numberMisscheduled", "desiredNumberScheduled",
                              "numberReady")


def _daemonset(namespace: str, name: str, labels: dict[str, str], desired: int, ready: int) -> dict[str, Any]:
    """A DaemonSet as its controller reports it: every desired pod scheduled and up to date."""
    status: dict[str, Any] = {
        "currentNumberScheduled": desired,
        "numberMisscheduled": 0,
        "desiredNumberScheduled": desired,
        "numberReady": ready,
        "observedGeneration": 1,
        "updatedNumberScheduled": desired,
        "numberAvailable": ready,
        "numberUnavailable": desired - ready,
    }
    status = {k: v for k, v in status.items() if v or k in _DAEMONSET_STATUS_REQUIRED}  # omitempty
    selector = {"matchLabels": dict(labels)}
    return {
        "kind": "DaemonSet",
        "apiVersion": "apps/v1",
        "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()),
                     "creationTimestamp": _now(), "generation": 1, "labels": dict(labels)},
        "spec": {
            "selector": selector,
            "template": {"metadata": {"labels": dict(labels)},
                         "spec": {"containers": [{"name": name, "image": f"{name}:latest"}]}},
            "updateStrategy": {"type": "RollingUpdate",
                               "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}},
            "revisionHistoryLimit": 10,
        },
        "status": status,
    }


# ---------------------------------------------------------------------------------------------
# HTTP plumbing
# ---------------------------------------------------------------------------------------------


@dataclass
class _Fault:
    method: str
    path: re.Pattern[str]
    status: int | None
    remaining: int
    delay: float
    drop: bool


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # several agent processes may connect at once

    def __init__(self, address: tuple[str, int], fake: FakeKube) -> None:
        self.fake = fake
        self._conn_lock = threading.Lock()
        self._conns: dict[socket.socket, threading.Thread] = {}
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Like ThreadingMixIn, but remembering each connection so stop() can cut keep-alive
        # connections that would otherwise park a handler thread forever.
        thread = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), daemon=True
        )
        with self._conn_lock:
            self._conns[request] = thread
        thread.start()

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            self._conns.pop(request, None)
        super().shutdown_request(request)

    def close_connections(self, timeout: float = 5.0) -> None:
        with self._conn_lock:
            conns = list(self._conns.items())
        for sock, _ in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for _, thread in conns:
            thread.join(timeout)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out or go away mid-request are routine in these tests.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError, OSError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the client's urllib3 pool expects
    # Headers and body go out in separate writes; with Nagle on, each response would stall on
    # the client's delayed ACK (~40 ms).
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.fake.verbose:
            sys.stderr.write(f"fakekube: {self.address_string()} {format % args}\n")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        fake = self.server.fake
        url = urlsplit(self.path)
        path = url.path
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        raw_ctype = self.headers.get("Content-Type")
        ctype = raw_ctype.split(";")[0].strip().lower() if raw_ctype else None
        raw = self._read_body()
        body: Any = None
        bad_json = False
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body, bad_json = raw.decode("utf-8", "replace"), True
        method = self.command
        fake._log(Request(method, path, ctype, copy.deepcopy(body)))

        try:
            fake._run_hooks(fake._on_request, method, path)
        except Exception as exc:  # a broken hook must show up in the test, not hang it
            self._send(500, status_body(500, f"fakekube on_request hook failed: {exc!r}"))
            return

        fault = fake._take_fault(method, path)
        if fault is not None:
            if fault.delay:
                fake._stopping.wait(fault.delay)  # interruptible, so stop() is never held up
            if fault.drop:
                self.close_connection = True
                # FIN, no bytes: the client sees the connection end without any response
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault.status is not None:
                self._send(fault.status, fake._fault_status(fault.status, path))
                return

        try:
            if bad_json:
                raise ApiError(400, f"the request body is not valid JSON: {body[:200]!r}")
            code, obj = fake._dispatch(method, path, query, ctype, body)
        except ApiError as err:
            code, obj = err.code, err.status()
        except Exception as exc:  # keep serving; report like the apiserver's panic handler
            code, obj = 500, status_body(500, f"Internal error occurred: {exc!r}")
        try:
            fake._run_hooks(fake._before_reply, method, path, code, obj)
        except Exception as exc:
            code, obj = 500, status_body(500, f"fakekube before_reply hook failed: {exc!r}")
        self._send(code, obj)

    def _send(self, code: int, obj: Any) -> None:
        if isinstance(obj, str):
            data, ctype = obj.encode(), "text/plain; charset=utf-8"
        else:
            data, ctype = json.dumps(obj).encode(), "application/json"
        try:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Audit-Id", str(uuid.uuid4()))
            if code == 429:
                self.send_header("Retry-After", "1")
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:  # the client gave up (timeout) - nothing to answer
            self.close_connection = True


# ---------------------------------------------------------------------------------------------
# The fake
# ---------------------------------------------------------------------------------------------


class FakeKube:
    """Stateful fake apiserver. All state lives under one lock; requests are served in threads.

    ``requests`` and ``events`` are the live lists (appended under the lock); copy them with
    ``list(...)`` if other requests may still be in flight.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, verbose: bool = False) -> None:
        self.host = host
        self.port = port  # 0 until start() picks one; kept so a restart reuses the same port
        self.verbose = verbose
        self._lock = threading.RLock()
        self._nodes: dict[str, dict[str, Any]] = {}
        self._pods: dict[tuple[str, str], dict[str, Any]] = {}  # by (namespace, name)
        self._leases: dict[tuple[str, str], dict[str, Any]] = {}  # by (namespace, name)
        self._daemonsets: dict[tuple[str, str], dict[str, Any]] = {}  # by (namespace, name)
        self._rv = 0
        self._faults: list[_Fault] = []
        self._on_request: list[Callable[[str, str], None]] = []
        self._before_reply: list[Callable[[str, str, int, Any], None]] = []
        self.requests: list[Request] = []
        self.events: list[dict[str, Any]] = []
        # The unschedulable nodes after each node PATCH, recorded under the lock that serialises the
        # writes: the cluster's cordons at every instant at which they changed through the API.
        self.cordoned_history: list[frozenset[str]] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FakeKube:
        """Bind and serve in a daemon thread. After stop(), start() again resumes on the same
        port with the state intact, which lets a test simulate an apiserver outage."""
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server((self.host, self.port), self)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fakekube:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # wakes handlers sleeping in a delay fault
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> FakeKube:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("FakeKube is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def kubeconfig(self, path: str | Path) -> Path:
        """Write a kubeconfig for ``load_kube_config(config_file=path)`` / ``KUBECONFIG=path``.

        JSON is valid YAML, so no YAML library is needed."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "fakekube", "cluster": {"server": self.url, "insecure-skip-tls-verify": True}}
            ],
            "users": [{"name": "fakekube", "user": {"token": "fakekube-token"}}],
            "contexts": [
                {
                    "name": "fakekube",
                    "context": {"cluster": "fakekube", "user": "fakekube", "namespace": "default"},
                }
            ],
            "current-context": "fakekube",
            "preferences": {},
        }
        path.write_text(json.dumps(cfg, indent=2) + "\n")
        return path

    # -- test helpers ---------------------------------------------------------------------------

    def add_node(
        self,
        name: str,
        *,
        unschedulable: bool = False,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        now = _now()
        with self._lock:
            if name in self._nodes:
                raise ValueError(f"node {name!r} already exists")
            node: dict[str, Any] = {
                "kind": "Node",
                "apiVersion": "v1",
                "metadata": {
                    "name": name,
                    "uid": str(uuid.uuid4()),
                    "creationTimestamp": now,
                    "labels": dict(labels or {}),
                    "annotations": dict(annotations or {}),
                },
                "spec": {"unschedulable": unschedulable},
                "status": {
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "KubeletReady",
                            "message": "kubelet is posting ready status",
                            "lastHeartbeatTime": now,
                            "lastTransitionTime": now,
                        }
                    ],
                    "addresses": [{"type": "Hostname", "address": name}],
                },
            }
            node = _normalize_node(node)
            errors = node_errors(node)
            if errors:
                raise ValueError(_invalid("Node", name, errors).message)
            node["metadata"]["resourceVersion"] = self._next_rv()
            self._nodes[name] = node
            return copy.deepcopy(node)

    def node(self, name: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._nodes[name])

    def nodes(self) -> list[str]:
        with self._lock:
            return sorted(self._nodes)

    def delete_node(self, name: str) -> None:
        with self._lock:
            del self._nodes[name]
            self._next_rv()  # deletes advance the global revision too

    def add_pod(self, name: str, node: str, *, namespace: str = "default",
                labels: dict[str, str] | None = None, phase: str = "Running") -> dict[str, Any]:
        """A pod bound to ``node`` (which need not exist: a pod may outlive its node) in ``phase``."""
        pod = {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()),
                         "creationTimestamp": _now(), "labels": dict(labels or {})},
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "busybox"}],
                     "restartPolicy": "Never", "schedulerName": "default-scheduler",
                     "serviceAccountName": "default"},
            "status": {"phase": phase},
        }
        errors = _string_map_errors("metadata.labels", pod["metadata"]["labels"], labels=True)
        if errors or not _DNS1123_SUBDOMAIN.match(name):
            raise ValueError(_invalid("Pod", name, errors or [("metadata.name", "Invalid value")]).message)
        with self._lock:
            if (namespace, name) in self._pods:
                raise ValueError(f"pod {namespace}/{name} already exists")
            pod["metadata"]["resourceVersion"] = self._next_rv()
            self._pods[namespace, name] = pod
            return copy.deepcopy(pod)

    def set_pod_phase(self, name: str, phase: str, *, namespace: str = "default") -> None:
        """As the kubelet reports it: Pending, Running, Succeeded, Failed or Unknown."""
        with self._lock:
            self._pods[namespace, name]["status"]["phase"] = phase
            self._pods[namespace, name]["metadata"]["resourceVersion"] = self._next_rv()

    def delete_pod(self, name: str, *, namespace: str = "default") -> None:
        with self._lock:
            del self._pods[namespace, name]
            self._next_rv()

    def add_lease(self, namespace: str, name: str, spec: dict[str, Any] | None = None, *,
                  labels: dict[str, str] | None = None) -> dict[str, Any]:
        """Create a lease as a POST would (``spec`` in wire form: holderIdentity, renewTime as a
        MicroTime string...), e.g. one another agent holds. ValueError where the API would refuse."""
        body = {"metadata": {"name": name, "labels": dict(labels or {})}, "spec": dict(spec or {})}
        with self._lock:
            try:
                return self._insert_lease(namespace, _decode_lease(body))
            except ApiError as err:
                raise ValueError(err.message) from None

    def lease(self, namespace: str, name: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._leases[namespace, name])

    def leases(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """A snapshot of the leases in ``namespace`` (all namespaces if None), by namespace and name."""
        with self._lock:
            return [copy.deepcopy(lease) for key, lease in sorted(self._leases.items())
                    if namespace in (None, key[0])]

    def mutate_lease(self, namespace: str, name: str,
                     fn: Callable[[dict[str, Any]], dict[str, Any] | None]) -> dict[str, Any]:
        """Like ``mutate`` for a lease: another writer's update, with a new resourceVersion and
        no validation (the spec's times are stored as given)."""
        with self._lock:
            old = self._leases[namespace, name]
            draft = copy.deepcopy(old)
            returned = fn(draft)
            new = _normalize_lease(_drop_nulls(returned if returned is not None else draft))
            for key in ("name", "namespace", "uid", "creationTimestamp"):
                new["metadata"][key] = old["metadata"][key]
            new["metadata"]["resourceVersion"] = self._next_rv()
            self._leases[namespace, name] = new
            return copy.deepcopy(new)

    def delete_lease(self, namespace: str, name: str) -> None:
        with self._lock:
            del self._leases[namespace, name]
            self._next_rv()

    def add_daemonset(self, namespace: str, name: str, desired: int, *, ready: int | None = None,
                      labels: dict[str, str] | None = None) -> dict[str, Any]:
        """A DaemonSet whose controller has scheduled ``desired`` pods, ``ready`` of them ready
        (all by default)."""
        ready = desired if ready is None else ready
        if not 0 <= ready <= desired:
            raise ValueError(f"ready must be between 0 and desired ({desired}), not {ready}")
        with self._lock:
            if (namespace, name) in self._daemonsets:
                raise ValueError(f"daemonset {namespace}/{name} already exists")
            ds = _daemonset(namespace, name, labels or {"app": name}, desired, ready)
            ds["metadata"]["resourceVersion"] = self._next_rv()
            self._daemonsets[namespace, name] = ds
            return copy.deepcopy(ds)

    def set_daemonset_status(self, namespace: str, name: str, *, desired: int | None = None,
                             ready: int | None = None) -> dict[str, Any]:
        """As the DaemonSet controller reports a change: nodes join or leave (``desired``), pods
        become ready or not (``ready``, which defaults to the new ``desired``)."""
        with self._lock:
            old = self._daemonsets[namespace, name]
            desired = old["status"]["desiredNumberScheduled"] if desired is None else desired
            ready = desired if ready is None else ready
            if not 0 <= ready <= desired:
                raise ValueError(f"ready must be between 0 and desired ({desired}), not {ready}")
            ds = _daemonset(namespace, name, old["metadata"]["labels"], desired, ready)
            ds["metadata"] = {**old["metadata"], "resourceVersion": self._next_rv()}
            self._daemonsets[namespace, name] = ds
            return copy.deepcopy(ds)

    def mutate(self, name: str, fn: Callable[[dict[str, Any]], dict[str, Any] | None]) -> dict[str, Any]:
        """Apply ``fn`` to a copy of the node (in place, or return a replacement) and store it
        with a new resourceVersion, as a concurrent writer would. No validation: tests may set
        anything, including status."""
        with self._lock:
            old = self._nodes[name]
            draft = copy.deepcopy(old)
            returned = fn(draft)
            new = _normalize_node(returned if returned is not None else draft)
            meta = new["metadata"]
            for key in ("name", "uid", "creationTimestamp"):
                meta[key] = old["metadata"][key]
            meta["resourceVersion"] = self._next_rv()
            self._nodes[name] = new
            return copy.deepcopy(new)

    @property
    def resource_version(self) -> str:
        """The current global revision (what a list would report)."""
        with self._lock:
            return str(self._rv)

    def fail(
        self,
        method: str = "PATCH",
        path: str = r".*",
        status: int | None = 500,
        times: int = 1,
        delay: float = 0.0,
        drop: bool = False,
    ) -> None:
        """Queue a fault for the next ``times`` requests whose method matches (``"*"`` = any)
        and whose path (no query string) matches the regex ``path`` via ``re.search``.

        Each hit waits ``delay`` seconds, then either drops the connection (``drop=True``),
        answers ``status`` with a Status body, or (``status=None``) is served normally - so a
        delayed write still lands after a client that timed out has given up, as on a real
        server. Faults are consumed in the order queued; a request consumes at most one."""
        if times < 1:
            raise ValueError("times must be >= 1")
        with self._lock:
            self._faults.append(_Fault(method.upper(), re.compile(path), status, times, delay, drop))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def on_request(self, fn: Callable[[str, str], None] | None) -> None:
        """Add a hook ``fn(method, path)`` run for each request after it is logged and before it
        is served (and before any fault), outside the state lock, so it may call ``mutate``,
        ``fail`` or ``delete_node``: a concurrent writer racing the request. ``on_request(None)``
        removes these hooks."""
        with self._lock:
            if fn is None:
                self._on_request.clear()
            else:
                self._on_request.append(fn)

    def before_reply(self, fn: Callable[[str, str, int, Any], None] | None) -> None:
        """Add a hook ``fn(method, path, code, body)`` run after a request has been served (a
        write has been applied; ``body`` is the object or Status the client will get) and before
        the reply is sent, outside the state lock. A test may kill the client there: its write
        landed and it never learns it. Not run for requests answered by an injected fault.
        ``before_reply(None)`` removes these hooks."""
        with self._lock:
            if fn is None:
                self._before_reply.clear()
            else:
                self._before_reply.append(fn)

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    # -- internals used by the handler ----------------------------------------------------------

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _log(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _run_hooks(self, hooks: list[Callable[..., None]], *args: Any) -> None:
        with self._lock:
            hooks = list(hooks)
        for hook in hooks:
            hook(*args)

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.method in ("*", method) and fault.path.search(path):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _fault_status(self, code: int, path: str) -> dict[str, Any]:
        """An injected 409 or 404 on one object's path looks like that resource's real one."""
        for pattern, resource, group in ((_NODE_PATH, "nodes", ""), (_LEASE_PATH, "leases", COORDINATION),
                                         (_DAEMONSET_PATH, "daemonsets", APPS)):
            m = pattern.match(path)
            if m and code == 409:
                return _conflict(resource, unquote(m["name"]), group=group).status()
            if m and code == 404:
                return _not_found(resource, unquote(m["name"]), group=group).status()
        return status_body(code, f"fakekube: injected fault ({code})")

    def _dispatch(
        self, method: str, path: str, query: dict[str, str], ctype: str | None, body: Any
    ) -> tuple[int, Any]:
        path = path.rstrip("/") or "/"  # the client's VersionApi asks for "/version/"
        if method == "GET" and path in _DISCOVERY:
            return 200, _DISCOVERY[path](self)
        allowed = False
        for route_method, pattern, handler in self.ROUTES:
            m = pattern.match(path)
            if m:
                allowed = True
                if route_method == method:
                    params = {k: unquote(v) for k, v in m.groupdict().items()}
                    with self._lock:  # one lock for all state: every request is serialised here
                        return handler(self, Call(query, ctype, body), **params)
        if allowed:
            raise ApiError(405, "the server does not allow this method on the requested resource")
        raise ApiError(404, "the server could not find the requested resource", details={})

    # -- nodes ----------------------------------------------------------------------------------

    def _get_node(self, name: str) -> dict[str, Any]:
        try:
            return self._nodes[name]
        except KeyError:
            raise _not_found("nodes", name) from None

    def _read_node(self, call: Call, name: str) -> tuple[int, Any]:
        return 200, copy.deepcopy(self._get_node(name))

    def _list_nodes(self, call: Call) -> tuple[int, Any]:
        if call.query.get("labelSelector") or call.query.get("fieldSelector"):
            raise ApiError(400, "fakekube does not implement label or field selectors")
        return 200, {
            "kind": "NodeList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": str(self._rv)},
            "items": [copy.deepcopy(self._nodes[n]) for n in sorted(self._nodes)],
        }

    def _patch_node(self, call: Call, name: str) -> tuple[int, Any]:
        ctype, patch = call.content_type, call.body
        if ctype not in PATCH_TYPES:
            raise ApiError(
                415,
                "the body of the request was in an unknown format - accepted media types "
                f"include: {', '.join(PATCH_TYPES)} (fakekube does not implement {APPLY_PATCH})",
            )
        current = copy.deepcopy(self._get_node(name))
        if ctype == JSON_PATCH:
            if not isinstance(patch, list):
                raise ApiError(400, "json: cannot unmarshal object into Go value of type jsonpatch.Patch")
            try:
                patched = json_patch(current, patch)
            except JsonPatchError:
                # The real server's whole answer: the patch library's error is dropped.
                raise ApiError(422, JSON_PATCH_NOT_APPLIED, details={}) from None
        else:
            if not isinstance(patch, dict):
                raise ApiError(
                    400, "json: cannot unmarshal non-object into Go value of type map[string]interface {}"
                )
            if ctype == MERGE_PATCH:
                patched = merge_patch(current, patch)
            else:
                patched = strategic_merge_patch(current, patch)
                if patched is _DELETE:
                    raise ApiError(400, "$patch: delete is not allowed at the root of the patch")
        return 200, self._store_node(name, patched)

    def _store_node(self, name: str, new: Any) -> dict[str, Any]:
        """A patched node, stored in the apiserver's order: name check, resourceVersion precondition
        (409), immutable fields, normalisation, validation (422), no-op detection."""
        old = self._get_node(name)
        if not isinstance(new, dict) or not isinstance(new.get("metadata", {}), dict):
            raise ApiError(400, "the request body is not a Node object")
        if new.get("kind", "Node") != "Node" or new.get("apiVersion", "v1") != "v1":
            raise ApiError(400, f"{new.get('apiVersion')}, Kind={new.get('kind')} is not a v1 Node")
        meta = new.setdefault("metadata", {})
        if meta.get("name") != name:
            raise ApiError(
                400,
                f"the name of the object ({meta.get('name') or ''}) does not match the name on "
                f"the URL ({name})",
            )
        old_meta = old["metadata"]
        check_resource_version(meta.get("resourceVersion"), old_meta["resourceVersion"], "nodes", name)
        uid = meta.get("uid")
        if uid not in (None, "") and uid != old_meta["uid"]:
            raise _invalid("Node", name, [("metadata.uid", f"Invalid value: {uid!r}: field is immutable")])
        meta["uid"] = old_meta["uid"]
        meta["creationTimestamp"] = old_meta["creationTimestamp"]
        meta["resourceVersion"] = old_meta["resourceVersion"]
        new["kind"], new["apiVersion"] = "Node", "v1"
        # Writes to the main resource never touch status (that is the /status subresource).
        new["status"] = copy.deepcopy(old.get("status", {}))
        new = _normalize_node(new)
        errors = node_errors(new)
        if errors:
            raise _invalid("Node", name, errors)
        if _json_equal(new, old):  # no-op: the stored object, revision unchanged
            return copy.deepcopy(old)
        new["metadata"]["resourceVersion"] = self._next_rv()
        self._nodes[name] = new
        self.cordoned_history.append(self._cordoned())
        return copy.deepcopy(new)

    def _cordoned(self) -> frozenset[str]:
        return frozenset(n for n, node in self._nodes.items() if node.get("spec", {}).get("unschedulable"))

    # -- pods -----------------------------------------------------------------------------------

    def _list_pods(self, call: Call, namespace: str | None = None) -> tuple[int, Any]:
        labels = parse_label_selector(call.query.get("labelSelector", ""))
        fields = parse_field_selector(call.query.get("fieldSelector", ""), _POD_FIELDS)
        items = [copy.deepcopy(p) for key, p in sorted(self._pods.items())
                 if namespace in (None, key[0]) and labels_match(labels, p["metadata"].get("labels", {}))
                 and fields_match(fields, p, _POD_FIELDS)]
        return 200, {"kind": "PodList", "apiVersion": "v1",
                     "metadata": {"resourceVersion": str(self._rv)}, "items": items}

    # -- events ---------------------------------------------------------------------------------

    def _create_event(self, call: Call, namespace: str) -> tuple[int, Any]:
        _require_json(call.content_type)
        body = call.body
        if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
            raise ApiError(400, "the request body is not an Event object")
        meta = body.setdefault("metadata", {})
        if meta.get("namespace") not in (None, "", namespace):
            raise ApiError(
                400,
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        name = meta.get("name")
        if not name:
            prefix = meta.get("generateName")
            if not prefix:
                raise _invalid(
                    "Event", "", [("metadata.name", "Required value: name or generateName is required")]
                )
            name = prefix + "".join(random.choices(_NAME_SUFFIX_CHARS, k=5))
        if any((e["metadata"]["namespace"], e["metadata"]["name"]) == (namespace, name) for e in self.events):
            raise ApiError(
                409,
                f'events "{name}" already exists',
                reason="AlreadyExists",
                details={"name": name, "kind": "events"},
            )
        meta.update(name=name, namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=_now())
        body["kind"], body["apiVersion"] = "Event", "v1"
        body = _drop_nulls(body)
        body["metadata"]["resourceVersion"] = self._next_rv()
        self.events.append(body)
        return 201, copy.deepcopy(body)

    # -- leases ---------------------------------------------------------------------------------

    def _get_lease(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            return self._leases[namespace, name]
        except KeyError:
            raise _not_found("leases", name, group=COORDINATION) from None

    def _read_lease(self, call: Call, namespace: str, name: str) -> tuple[int, Any]:
        return 200, copy.deepcopy(self._get_lease(namespace, name))

    def _list_leases(self, call: Call, namespace: str | None = None) -> tuple[int, Any]:
        if call.query.get("watch") in ("true", "1"):
            raise ApiError(400, "fakekube does not implement watch")
        labels = parse_label_selector(call.query.get("labelSelector", ""))
        fields = parse_field_selector(call.query.get("fieldSelector", ""), _META_FIELDS)
        # Items in a typed list carry no kind/apiVersion; the list's limit is ignored (no paging).
        items = [{k: copy.deepcopy(v) for k, v in lease.items() if k not in ("kind", "apiVersion")}
                 for key, lease in sorted(self._leases.items())
                 if namespace in (None, key[0]) and labels_match(labels, lease["metadata"].get("labels", {}))
                 and fields_match(fields, lease, _META_FIELDS)]
        return 200, {"kind": "LeaseList", "apiVersion": COORDINATION_V1,
                     "metadata": {"resourceVersion": str(self._rv)}, "items": items}

    def _create_lease(self, call: Call, namespace: str) -> tuple[int, Any]:
        _require_json(call.content_type)
        _no_dry_run(call)
        lease = _decode_lease(call.body)
        if lease["metadata"].get("namespace") not in (None, "", namespace):
            raise ApiError(
                400,
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        return 201, self._insert_lease(namespace, lease)

    def _insert_lease(self, namespace: str, lease: dict[str, Any]) -> dict[str, Any]:
        """The create path, in the registry's order: system fields, validation (422), a
        resourceVersion in the body (the storage's error, a 500), the name taken (409)."""
        meta = lease["metadata"]
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(random.choices(_NAME_SUFFIX_CHARS, k=5))
        name = meta.get("name", "")
        meta.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=_now())
        lease = _normalize_lease(lease)
        errors = lease_errors(lease)
        if errors:
            raise _invalid("Lease", name, errors, group=COORDINATION)
        if _resource_version(meta.pop("resourceVersion", None)) != 0:
            raise ApiError(500, "resourceVersion should not be set on objects to be created", reason="")
        if (namespace, name) in self._leases:
            raise ApiError(409, f'leases.{COORDINATION} "{name}" already exists', reason="AlreadyExists",
                           details=_details(name, "leases", COORDINATION))
        meta["resourceVersion"] = self._next_rv()
        self._leases[namespace, name] = lease
        return copy.deepcopy(lease)

    def _replace_lease(self, call: Call, namespace: str, name: str) -> tuple[int, Any]:
        """PUT as the generic registry does it for leases: a uid in the body is a precondition;
        a missing lease is created (AllowCreateOnUpdate); otherwise the body's resourceVersion must
        be the stored one (AllowUnconditionalUpdate is false, so an absent one is a 422)."""
        _require_json(call.content_type)
        _no_dry_run(call)
        lease = _decode_lease(call.body)
        meta = lease["metadata"]
        if meta.get("name") != name:
            raise ApiError(400, f"the name of the object ({meta.get('name', '')}) does not match the name "
                                f"on the URL ({name})")
        if meta.get("namespace") not in (None, "", namespace):
            raise ApiError(400, f"the namespace of the object ({meta['namespace']}) does not match the "
                                f"namespace on the URL ({namespace})")
        old = self._leases.get((namespace, name))
        old_uid = old["metadata"]["uid"] if old else ""
        if meta.get("uid") not in (None, "", old_uid):
            raise _uid_precondition_failed(namespace, name, meta["uid"], old_uid)
        if old is None:
            return 201, self._insert_lease(namespace, {**lease, "metadata": {**meta, "resourceVersion": ""}})
        sent = _resource_version(meta.get("resourceVersion"))
        if sent == 0:
            raise _invalid("leases", name, [("metadata.resourceVersion",
                                             "Invalid value: 0x0: must be specified for an update")],
                           group=COORDINATION)
        if str(sent) != old["metadata"]["resourceVersion"]:
            raise _conflict("leases", name, group=COORDINATION)
        meta.update(namespace=namespace, uid=old_uid, creationTimestamp=old["metadata"]["creationTimestamp"],
                    resourceVersion=old["metadata"]["resourceVersion"])
        new = _normalize_lease(lease)
        errors = lease_errors(new)
        if errors:
            raise _invalid("Lease", name, errors, group=COORDINATION)
        if _json_equal(new, old):  # no-op: etcd is not written, the revision stays
            return 200, copy.deepcopy(old)
        new["metadata"]["resourceVersion"] = self._next_rv()
        self._leases[namespace, name] = new
        return 200, copy.deepcopy(new)

    def _delete_lease(self, call: Call, namespace: str, name: str) -> tuple[int, Any]:
        _no_dry_run(call)
        options = call.body if call.body is not None else {}
        if not isinstance(options, dict) or not isinstance(options.get("preconditions") or {}, dict):
            raise ApiError(400, "the request body is not a DeleteOptions object")
        if options.get("dryRun"):
            raise ApiError(400, "fakekube does not implement dryRun")
        meta = self._get_lease(namespace, name)["metadata"]
        pre = options.get("preconditions") or {}
        if pre.get("uid") is not None and pre["uid"] != meta["uid"]:
            raise _delete_precondition_failed(name, "UID", pre["uid"], meta["uid"],
                                              "The object might have been deleted and then recreated")
        if pre.get("resourceVersion") is not None and pre["resourceVersion"] != meta["resourceVersion"]:
            raise _delete_precondition_failed(name, "ResourceVersion", pre["resourceVersion"],
                                              meta["resourceVersion"], "The object might have been modified")
        del self._leases[namespace, name]
        self._next_rv()  # a delete is an etcd revision too
        # Leases are not returned on delete (ReturnDeletedObject is false): a Success Status.
        return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                     "details": {**_details(name, "leases", COORDINATION), "uid": meta["uid"]}}

    # -- daemonsets -----------------------------------------------------------------------------

    def _read_daemonset(self, call: Call, namespace: str, name: str) -> tuple[int, Any]:
        try:
            return 200, copy.deepcopy(self._daemonsets[namespace, name])
        except KeyError:
            raise _not_found("daemonsets", name, group=APPS) from None

    # The API served, besides discovery: (method, path pattern, handler). A handler gets the Call
    # and the pattern's named groups, under the state lock, and returns (status code, object) or
    # raises ApiError. Another resource is its store in __init__, its handlers, its rows here and
    # its entry in RESOURCES (discovery); faults need nothing (they match any path).
    ROUTES: list[tuple[str, re.Pattern[str], Callable[..., tuple[int, Any]]]] = [
        ("GET", re.compile(r"^/api/v1/nodes$"), _list_nodes),
        ("GET", _NODE_PATH, _read_node),
        ("PATCH", _NODE_PATH, _patch_node),
        ("POST", re.compile(r"^/api/v1/namespaces/(?P<namespace>[^/]+)/events$"), _create_event),
        ("GET", re.compile(r"^/api/v1/pods$"), _list_pods),
        ("GET", re.compile(r"^/api/v1/namespaces/(?P<namespace>[^/]+)/pods$"), _list_pods),
        ("GET", re.compile(rf"^/apis/{re.escape(COORDINATION_V1)}/leases$"), _list_leases),
        ("GET", _LEASES_PATH, _list_leases),
        ("POST", _LEASES_PATH, _create_lease),
        ("GET", _LEASE_PATH, _read_lease),
        ("PUT", _LEASE_PATH, _replace_lease),
        ("DELETE", _LEASE_PATH, _delete_lease),
        ("GET", _DAEMONSET_PATH, _read_daemonset),
    ]


def check_resource_version(sent: Any, stored: str, resource: str, name: str) -> None:
    """A resourceVersion in a write's body is a precondition: 409 unless it is the stored one.
    Absent, empty or "0" means unconditional."""
    if sent in (None, ""):
        return
    if not isinstance(sent, str) or not sent.isdigit():
        raise ApiError(400, f"invalid resourceVersion: {sent!r}")
    if int(sent) != 0 and sent != stored:
        raise _conflict(resource, name)


def _no_dry_run(call: Call) -> None:
    # Not modelled: an error, never a write that should not have happened.
    if call.query.get("dryRun"):
        raise ApiError(400, "fakekube does not implement dryRun")


def _require_json(ctype: str | None) -> None:
    # The client always sends application/json for create/update; be lenient about a missing one.
    if ctype not in (None, "application/json"):
        raise ApiError(
            415,
            f"the body of the request was in an unknown format - accepted media types include: "
            f'application/json (got "{ctype}")',
        )


# Discovery: what each API group version serves (kubectl reads these before it lists anything).
# Core resources are under "v1", a group's under "GROUP/VERSION".
RESOURCES: dict[str, list[dict[str, Any]]] = {
    "v1": [
        {"name": "nodes", "singularName": "node", "namespaced": False, "kind": "Node",
         "verbs": ["get", "list", "patch"], "shortNames": ["no"]},
        {"name": "events", "singularName": "event", "namespaced": True, "kind": "Event",
         "verbs": ["create"], "shortNames": ["ev"]},
        {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod",
         "verbs": ["list"], "shortNames": ["po"]},
    ],
    COORDINATION_V1: [
        {"name": "leases", "singularName": "lease", "namespaced": True, "kind": "Lease",
         "verbs": ["create", "delete", "get", "list", "update"]},
    ],
    "apps/v1": [
        {"name": "daemonsets", "singularName": "daemonset", "namespaced": True, "kind": "DaemonSet",
         "verbs": ["get"], "shortNames": ["ds"], "categories": ["all"]},
    ],
}

_VERSION: dict[str, str] = {
    "major": "1",
    "minor": "34",
    "gitVersion": "v1.34.0-fakekube",
    "gitCommit": "0" * 40,
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.24.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def _resource_list(group_version: str) -> dict[str, Any]:
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
            "resources": RESOURCES[group_version]}


def _group_list() -> dict[str, Any]:
    groups = []
    for group_version in RESOURCES:
        if "/" in group_version:
            name, version = group_version.split("/")
            entry = {"groupVersion": group_version, "version": version}
            groups.append({"name": name, "versions": [entry], "preferredVersion": entry})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


_DISCOVERY: dict[str, Callable[[FakeKube], Any]] = {
    "/healthz": lambda fake: "ok",
    "/livez": lambda fake: "ok",
    "/readyz": lambda fake: "ok",
    "/version": lambda fake: _VERSION,
    "/api": lambda fake: {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{fake.host}:{fake.port}"}
        ],
    },
    "/apis": lambda fake: _group_list(),
    "/api/v1": lambda fake: _resource_list("v1"),
    **{f"/apis/{gv}": (lambda fake, gv=gv: _resource_list(gv)) for gv in RESOURCES if "/" in gv},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.fakekube", description="Serve a fake Kubernetes API until SIGTERM."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081, help="0 picks a free port")
    parser.add_argument(
        "--node", action="append", default=[], metavar="NAME", help="create a node (repeatable)"
    )
    parser.add_argument("--kubeconfig", type=Path, help="write a kubeconfig pointing here")
    parser.add_argument("-v", "--verbose", action="store_true", help="log requests to stderr")
    args = parser.parse_args(argv)

    stop = threading.Event()

    def _on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    with FakeKube(args.host, args.port, verbose=args.verbose) as fake:
        for name in args.node:
            fake.add_node(name)
        if args.kubeconfig:
            fake.kubeconfig(args.kubeconfig)
            print(f"fakekube: kubeconfig written to {args.kubeconfig}", file=sys.stderr)
        print(fake.url, flush=True)  # first stdout line is the URL, for scripts to read
        while not stop.wait(0.2):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
