"""The journal decisions, case by case: what a (re)starting agent writes to the node."""

import json

import pytest

from fsm_cleaner import journal
from fsm_cleaner.journal import ANNOTATION, LEGACY_ANNOTATION, Journal, NodeView


def node(unschedulable: bool, state: str | None = None, ours: bool = False, was: bool = False,
         raw: str | None = None, legacy: bool = False, **other: str) -> NodeView:
    annotations = dict(other)
    if state is not None:
        annotations[ANNOTATION] = Journal(state, ours, was, "2026-11-29T10:00:00Z", "pod-a").encode()
    if raw is not None:
        annotations[ANNOTATION] = raw
    if legacy:
        annotations[LEGACY_ANNOTATION] = "true"
    return NodeView("n1", "7", unschedulable, annotations)


def idle(p: journal.Patch) -> bool:
    return json.loads(p.annotations[ANNOTATION])["state"] == "Idle"


# case, node, expected unschedulable in the patch (None: left alone), expected journal write
RELEASE_CASES = [
    ("no journal: start normally", node(False), "no patch", None),
    ("no journal, admin cordon: start normally", node(True), "no patch", None),
    ("journal Idle", node(False, "Idle"), "no patch", None),
    ("journal Measuring", node(True, "Measuring"), "no patch", None),
    ("died while pruning, our cordon: uncordon", node(True, "PruningAll", ours=True), False, "Idle"),
    ("died in Cordoning, our cordon: uncordon", node(True, "Cordoning", ours=True), False, "Idle"),
    ("died in Uncordoning before it landed", node(True, "Uncordoning", ours=True), False, "Idle"),
    ("admin cordon before the cycle: left alone", node(True, "PruningDangling", was=True), None, "Idle"),
    ("someone uncordoned meanwhile: only mark Idle", node(False, "PruningAll", ours=True), None, "Idle"),
    ("old cleaner's cordon: uncordon, drop its annotation", node(True, legacy=True), False, None),
    ("old cleaner's annotation on a schedulable node", node(False, legacy=True), None, None),
]


@pytest.mark.parametrize("case,view,unschedulable,state", RELEASE_CASES, ids=[c[0] for c in RELEASE_CASES])
def test_release_decision(case: str, view: NodeView, unschedulable, state) -> None:
    patch = journal.release(view, "pod-b", "2026-11-29T11:00:00Z")
    if unschedulable == "no patch":
        assert patch is None
        return
    assert patch is not None
    assert patch.unschedulable is unschedulable
    if state:
        assert idle(patch)
    else:
        assert ANNOTATION not in patch.annotations
    if LEGACY_ANNOTATION in view.annotations:
        assert patch.annotations[LEGACY_ANNOTATION] is None  # removed
    assert patch.why


def test_unreadable_journal_is_left_alone() -> None:
    view = node(True, raw="{not json")
    assert journal.release(view, "pod-b", "t") is None
    with pytest.raises(journal.JournalError, match="not json"):
        view.journal()


@pytest.mark.parametrize("raw", ['"Idle"', '{"state": "Idle"}', '{"state": 1, "cordoned_by_us": true, '
                                 '"was_unschedulable": false, "since": "x"}', "[]"])
def test_decode_rejects_what_it_cannot_trust(raw: str) -> None:
    with pytest.raises(journal.JournalError):
        journal.decode(raw)


def test_cordon_takes_the_node_only_when_schedulable() -> None:
    mine = journal.cordon(node(False, "Idle"), "pod-a", "t")
    assert mine.unschedulable is True
    assert journal.decode(mine.annotations[ANNOTATION]).cordoned_by_us is True

    theirs = journal.cordon(node(True), "pod-a", "t")
    assert theirs.unschedulable is None  # the admin's cordon is not touched
    entry = journal.decode(theirs.annotations[ANNOTATION])
    assert (entry.cordoned_by_us, entry.was_unschedulable) == (False, True)


def test_advance_keeps_the_cordon_owner() -> None:
    after_cordon = node(True, "Cordoning", ours=True)
    step = journal.decode(journal.advance(after_cordon, "PruningAll", "pod-a", "t").annotations[ANNOTATION])
    assert (step.state, step.cordoned_by_us, step.was_unschedulable) == ("PruningAll", True, False)
    assert journal.advance(after_cordon, "PruningAll", "pod-a", "t").unschedulable is None


def test_journal_round_trip() -> None:
    entry = Journal("PruningDangling", True, False, "2026-11-29T10:00:00Z", "pod-a")
    assert journal.decode(entry.encode()) == entry


def test_a_retried_cordon_keeps_its_own_record() -> None:
    # The first attempt landed but its reply was lost (timeout): the retry reads our own cordon.
    landed = node(True, "Cordoning", ours=True, was=False)
    retry = journal.cordon(landed, "pod-a", "t")
    entry = journal.decode(retry.annotations[ANNOTATION])
    assert (entry.cordoned_by_us, entry.was_unschedulable) == (True, False)  # not "an admin's cordon"
    assert retry.unschedulable is None  # already cordoned: spec left alone


def test_unreadable_journal_on_a_cordoned_node_is_never_written_over() -> None:
    garbage = node(True, raw="{half")
    assert journal.cordon(garbage, "pod-a", "t") is None  # whose cordon it is cannot be known
    assert journal.advance(garbage, "PruningAll", "pod-a", "t") is None
    # on a schedulable node the cordon is ours, and the journal must say so before it happens
    mine = journal.cordon(node(False, raw="{half"), "pod-a", "t")
    assert mine is not None and mine.unschedulable is True
    assert journal.decode(mine.annotations[ANNOTATION]).cordoned_by_us is True


HOSTILE = [
    ("100 KB of nested arrays", "[" * 100_000),
    ("nested objects", '{"a":' * 3000 + "1" + "}" * 3000),
    ("deep but short", '{"state": ' + "[" * 50 + "]" * 50 + "}"),
    ("a journal padded past 4 KiB", Journal("PruningAll", True, False, "t", "pod-a").encode() + " " * 5000),
]


@pytest.mark.parametrize("raw", [h[1] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_a_hostile_journal_is_unreadable_and_its_excerpt_bounded(raw: str) -> None:
    with pytest.raises(journal.JournalError) as err:
        journal.decode(raw)
    assert len(str(err.value)) <= 300  # the log line an on-call engineer reads, not the annotation
    assert raw[:20] in str(err.value) and f"{len(raw)} characters" in str(err.value)
    cordoned = node(True, raw=raw)
    assert cordoned.journal_unreadable  # the documented unreadable rule: the node is left as found
    assert journal.release(cordoned, "pod-b", "t") is None
    assert journal.cordon(cordoned, "pod-b", "t") is None


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    entry = Journal("PruningAll", True, False, "2026-11-29T10:00:00Z", "[[[[[[[[{{{{{{{{ \\\" [[[[")
    assert journal.decode(entry.encode()) == entry
