"""The journal decisions, case by case: what a (re)starting agent writes to the node."""

import json

import pytest

from fsm_cleaner import journal
from fsm_cleaner.journal import ANNOTATION, LEGACY_ANNOTATION, Busy, Holder, Journal, NodeView

A = Holder("pod-a", "token-a")  # wrote the journals below, unless they say otherwise
B = Holder("pod-b", "token-b")  # another pod
SINCE = "2026-11-29T10:00:00Z"  # when they were written and last renewed
T = "2026-11-29T11:00:00Z"  # an hour later: pod-a's journals are stale by then


def node(unschedulable: bool, state: str | None = None, ours: bool = False, was: bool = False,
         raw: str | None = None, legacy: bool = False, by: Holder = A, at: str = SINCE,
         **other: str) -> NodeView:
    annotations = dict(other)
    if state is not None:
        annotations[ANNOTATION] = Journal(state, ours, was, at, by.pod, by.token, at).encode()
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
    patch = journal.release(view, B, T)
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
    assert journal.release(view, B, T) is None
    with pytest.raises(journal.JournalError, match="not json"):
        view.journal()


@pytest.mark.parametrize("raw", ['"Idle"', '{"state": "Idle"}', '{"state": 1, "cordoned_by_us": true, '
                                 '"was_unschedulable": false, "since": "x"}', "[]"])
def test_decode_rejects_what_it_cannot_trust(raw: str) -> None:
    with pytest.raises(journal.JournalError):
        journal.decode(raw)


def test_cordon_takes_the_node_only_when_schedulable() -> None:
    mine = journal.cordon(node(False, "Idle"), A, T)
    assert mine.unschedulable is True
    assert journal.decode(mine.annotations[ANNOTATION]).cordoned_by_us is True

    theirs = journal.cordon(node(True), A, T)
    assert theirs.unschedulable is None  # the admin's cordon is not touched
    entry = journal.decode(theirs.annotations[ANNOTATION])
    assert (entry.cordoned_by_us, entry.was_unschedulable) == (False, True)


def test_advance_keeps_the_cordon_owner() -> None:
    after_cordon = node(True, "Cordoning", ours=True)
    step = journal.decode(journal.advance(after_cordon, "PruningAll", A, T).annotations[ANNOTATION])
    assert (step.state, step.cordoned_by_us, step.was_unschedulable) == ("PruningAll", True, False)
    assert (step.holder, step.token, step.renewed) == ("pod-a", "token-a", T)
    assert journal.advance(after_cordon, "PruningAll", A, T).unschedulable is None


def test_journal_round_trip() -> None:
    entry = Journal("PruningDangling", True, False, "2026-11-29T10:00:00Z", "pod-a", "token-a", T)
    assert journal.decode(entry.encode()) == entry
    older = Journal("PruningDangling", True, False, "2026-11-29T10:00:00Z", "pod-a")
    assert journal.decode(older.encode()) == older  # from an agent before mutual exclusion


def test_a_retried_cordon_keeps_its_own_record() -> None:
    # The first attempt landed but its reply was lost (timeout): the retry reads our own cordon.
    landed = node(True, "Cordoning", ours=True, was=False)
    retry = journal.cordon(landed, A, T)
    entry = journal.decode(retry.annotations[ANNOTATION])
    assert (entry.cordoned_by_us, entry.was_unschedulable) == (True, False)  # not "an admin's cordon"
    assert retry.unschedulable is None  # already cordoned: spec left alone


def test_unreadable_journal_on_a_cordoned_node_is_never_written_over() -> None:
    garbage = node(True, raw="{half")
    assert journal.cordon(garbage, A, T) is None  # whose cordon it is cannot be known
    assert journal.advance(garbage, "PruningAll", A, T) is None
    # on a schedulable node the cordon is ours, and the journal must say so before it happens
    mine = journal.cordon(node(False, raw="{half"), A, T)
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
    assert journal.release(cordoned, B, T) is None
    assert journal.cordon(cordoned, B, T) is None


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    entry = Journal("PruningAll", True, False, "2026-11-29T10:00:00Z", "[[[[[[[[{{{{{{{{ \\\" [[[[")
    assert journal.decode(entry.encode()) == entry


# --- one agent per node (issue 9, item 5) -----------------------------------------------------------

def later(seconds: int) -> str:
    return f"2026-11-29T10:{seconds // 60:02d}:{seconds % 60:02d}Z"


EARLIER = "2026-11-29T09:58:30Z"  # 90 s before SINCE: a clock stepped back


def held(token: str = "token-a", renewed: str = SINCE, since: str = SINCE) -> Journal:
    return Journal("PruningAll", True, False, since, "pod-a", token, renewed)


# pod-a's journal (token, renewal), the reader, the reader's clock -> claim
CLAIMS = [
    ("this process", held(), A, T, "mine"),
    ("this pod, another process: a container restart", held("token-old"), A, later(1), "predecessor"),
    ("another pod, renewed 30 s ago", held(), B, later(30), "live"),
    ("another pod, renewed exactly STALE_SECONDS ago", held(), B, later(60), "live"),
    ("another pod, renewed 61 s ago", held(), B, later(61), "stale"),
    ("renewed long after it began", held(renewed=later(50), since=EARLIER), B, later(90), "live"),
    ("clock stepped back 30 s", held(renewed=later(30)), B, SINCE, "live"),
    ("clock stepped back 90 s", held(), B, EARLIER, "stale"),
    ("an older agent's journal (no renewal): its since counts", held("", ""), B, later(20), "live"),
    ("an older agent's journal, begun long ago", held("", ""), B, T, "stale"),
    ("a renewal that is not a time", held(renewed="yesterday"), B, later(1), "stale"),
    ("a renewal without a zone", held(renewed="2026-11-29T10:00:00"), B, later(1), "stale"),
]


@pytest.mark.parametrize("case,entry,me,now,expected", CLAIMS, ids=[c[0] for c in CLAIMS])
def test_whose_journal_it_is(case: str, entry: Journal, me: Holder, now: str, expected: str) -> None:
    assert journal.claim(entry, me, now) == expected


LIVE, STALE = later(30), later(90)  # B's clock: pod-a's journal renewed 30 s / 90 s ago
CORDONED_BY_A = node(True, "PruningAll", ours=True)


def test_a_live_agents_cycle_is_left_alone() -> None:
    for decide in (lambda n: journal.release(n, B, LIVE), lambda n: journal.cordon(n, B, LIVE),
                   lambda n: journal.advance(n, "PruningAll", B, LIVE)):
        busy = decide(CORDONED_BY_A)
        assert isinstance(busy, Busy), busy  # nothing written: not its cordon, not its journal
        assert str(busy) == ("another fsm-cleaner (holder pod-a) is cleaning this node since "
                             f"{SINCE} (PruningAll, renewed {SINCE}); skipping this cycle")
    assert journal.renew(CORDONED_BY_A, B, LIVE) is None


def test_a_dead_agents_cycle_is_taken_over() -> None:
    released = journal.release(CORDONED_BY_A, B, STALE)
    assert isinstance(released, journal.Patch) and released.unschedulable is False and idle(released)
    assert f"taken over from holder pod-a, not renewed since {SINCE} (dead after 60 s)" in released.why
    assert journal.decode(released.annotations[ANNOTATION]).holder == "pod-b"
    # or by a cycle of its own, which then owns the dead agent's cordon and undoes it at its end
    cordoned = journal.cordon(CORDONED_BY_A, B, STALE)
    assert isinstance(cordoned, journal.Patch) and cordoned.unschedulable is None
    entry = journal.decode(cordoned.annotations[ANNOTATION])
    assert (entry.holder, entry.token, entry.cordoned_by_us, entry.was_unschedulable) == ("pod-b", "token-b",
                                                                                         True, False)


def test_the_same_pod_restarted_reconciles_at_once() -> None:
    left = node(True, "PruningAll", ours=True, by=Holder("pod-b", "token-before-restart"))
    released = journal.release(left, B, later(1))  # renewed a second ago, but by this pod
    assert isinstance(released, journal.Patch) and released.unschedulable is False


@pytest.mark.parametrize("now", [LIVE, STALE])
def test_a_finished_cycle_holds_nothing(now: str) -> None:
    done = node(False, "Idle", by=A)
    assert journal.release(done, B, now) is None
    cordon = journal.cordon(done, B, now)
    assert isinstance(cordon, journal.Patch) and cordon.unschedulable is True


@pytest.mark.parametrize("view,now_there", [
    (node(True, "PruningAll", ours=True), "PruningAll by pod-a"),  # taken over, then A died too: not ours
    (node(False, "Idle", by=B), "Idle by pod-b"),  # released by someone: our cordon is gone
    (node(False), "none"),  # reset, or the node registered again
], ids=["another pod's journal", "reset to Idle", "no journal"])
def test_a_cycle_whose_journal_is_gone_ends(view: NodeView, now_there: str) -> None:
    busy = journal.advance(view, "PruningAll", B, STALE)
    assert isinstance(busy, Busy)
    assert f"(journal now: {now_there})" in str(busy) and "ending this cycle" in str(busy)


def test_renewal_changes_only_the_renewal_time() -> None:
    mine = node(True, "PruningDangling", ours=True, by=B)
    patch = journal.renew(mine, B, STALE)
    assert patch is not None and patch.unschedulable is None
    before, after = mine.journal(), journal.decode(patch.annotations[ANNOTATION])
    assert after == Journal(before.state, True, False, before.since, "pod-b", "token-b", STALE)
    assert journal.renew(node(False, "Idle", by=B), B, STALE) is None  # nothing held: nothing to renew


def test_a_hostile_holder_is_shown_escaped_and_bounded() -> None:
    raw = Journal("PruningAll", True, False, SINCE, "pod\x1b]0;pwned\x07" + "x" * 500, "t", SINCE).encode()
    assert "\\u001b" in raw  # json.dumps escapes it; the decoded holder has the real ESC
    busy = journal.release(node(True, raw=raw), B, LIVE)
    assert isinstance(busy, Busy) and "\x1b" not in str(busy) and "pod\\x1b]0;pwned" in str(busy)
    assert len(str(busy)) < 300
