"""The cordon budget: the pure slot decision, table-tested, and CordonBudget against in-memory Leases."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from devtools.fakes import FakeClock, FakeLeases, FakeNodeApi
from fsm_cleaner import config
from fsm_cleaner.shutdown import Shutdown
from fsm_cleaner.slots import PREFIX, CordonBudget, Lease, budget_size, choose

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)


def held(i: int, node: str, ago: float = 10, duration: float = 120, rv: str = "7") -> Lease:
    return Lease(f"{PREFIX}{i}", node, NOW - timedelta(seconds=ago), duration, rv, 3)


@pytest.mark.parametrize("leases, size, take, holders", [
    ([], 1, f"{PREFIX}0", ()),  # no Lease yet: created
    ([held(0, "b")], 1, None, ("b",)),  # full
    ([held(0, "b")], 2, f"{PREFIX}1", ()),
    ([held(0, "b", ago=121)], 1, f"{PREFIX}0", ()),  # its holder stopped renewing: free
    ([held(0, "")], 1, f"{PREFIX}0", ()),  # released
    ([held(0, "b"), held(1, "c")], 2, None, ("b", "c")),
    # the budget shrank (fewer nodes) while slot 2 was held: it counts, and nothing is free
    ([held(0, "b"), held(2, "c")], 2, None, ("b", "c")),
    ([held(1, "b", ago=500)], 1, f"{PREFIX}0", ()),  # a dead holder above the size does not count
], ids=["none-yet", "full", "second-slot", "expired", "released", "full-of-two", "shrunk", "dead-above"])
def test_which_slot_is_taken(leases: list[Lease], size: int, take: str | None,
                             holders: tuple[str, ...]) -> None:
    choice = choose(leases, size, "a", NOW, 60)
    assert (choice.take.name if choice.take else None, choice.holders, choice.held) == (take, holders, False)
    if choice.take:
        assert (choice.take.holder, choice.take.renewed, choice.take.duration) == ("a", NOW, 60)


def test_a_slot_taken_over_counts_a_transition_and_keeps_its_resource_version() -> None:
    taken = choose([held(0, "b", ago=200)], 1, "a", NOW, 60).take
    assert taken is not None and (taken.transitions, taken.resource_version, taken.acquired) == (4, "7", NOW)


def test_this_nodes_own_live_slot_is_held_again_not_a_second_one() -> None:
    choice = choose([held(0, "b"), held(1, "a")], 3, "a", NOW, 60)
    assert choice.held and choice.take is not None and choice.take.name == f"{PREFIX}1"


@pytest.mark.parametrize("value, percent, nodes, size", [
    (1, False, 0, 1), (3, False, 100, 3), (20, True, 10, 2), (20, True, 14, 2), (20, True, 4, 1),
    (100, True, 7, 7), (1, True, 0, 1)])
def test_the_budget_is_a_count_or_a_share_of_the_nodes_and_at_least_one(
        value: float, percent: bool, nodes: int, size: int) -> None:
    assert budget_size(value, percent, nodes) == size


# --- CordonBudget against in-memory Leases --------------------------------------------------------------

def budget(tmp_path: Path, node: str, leases: FakeLeases, **env: str) -> CordonBudget:
    cfg = config.load({"FSM_CLEANER_PATH_TO_CHECK": str(tmp_path), "FSM_CLEANER_RETRY_ATTEMPTS": "2",
                       **{f"FSM_CLEANER_{k}": v for k, v in env.items()}})
    shutdown = Shutdown(cfg.stop_timeout_seconds, FakeClock())
    return CordonBudget(FakeNodeApi(node, leases=leases), cfg, shutdown, node)


def test_a_budget_of_two_grants_two_nodes_and_makes_the_third_wait(tmp_path: Path) -> None:
    leases = FakeLeases()
    a, b, c = (budget(tmp_path, n, leases, MAX_CORDONED="2") for n in "abc")
    assert a.take(False, "90%").slot == f"{PREFIX}0" and b.take(False, "90%").slot == f"{PREFIX}1"
    waiting = c.take(False, "90%")
    assert (waiting.cordon, waiting.images) == (False, False)
    assert c.take(True, "96%").images  # critical: images go, uncordoned, and it says why
    assert "above CRITICAL_THRESHOLD" in c.take(True, "96%").notice
    a.release()
    assert c.take(False, "90%").slot == f"{PREFIX}0"
    assert leases.holders() == {f"{PREFIX}0": "c", f"{PREFIX}1": "b"}
    for x in (a, b, c):
        x.release()
    assert leases.holders() == {}


def test_a_lost_race_looks_again_and_never_shares_a_slot(tmp_path: Path) -> None:
    """b writes slot 0 between a's list and a's write: a's write is refused (409), a lists again."""
    leases = FakeLeases()
    a, b = budget(tmp_path, "a", leases, MAX_CORDONED="2"), budget(tmp_path, "b", leases, MAX_CORDONED="2")
    leases.faults.add("put_lease", lambda: b.take(False, "90%"))
    assert a.take(False, "90%").slot == f"{PREFIX}1"
    assert leases.holders() == {f"{PREFIX}0": "b", f"{PREFIX}1": "a"}
    a.release(), b.release()


def test_with_a_budget_of_one_the_loser_of_a_race_waits(tmp_path: Path) -> None:
    leases = FakeLeases()
    a, b = budget(tmp_path, "a", leases), budget(tmp_path, "b", leases)
    leases.faults.add("put_lease", lambda: b.take(False, "90%"))
    assert not a.take(False, "90%").cordon
    assert leases.holders() == {f"{PREFIX}0": "b"}
    b.release()


def test_a_percentage_counts_the_daemonsets_nodes(tmp_path: Path) -> None:
    leases = FakeLeases(daemonset_nodes=10)
    nodes = [budget(tmp_path, f"n{i}", leases, MAX_CORDONED="20%") for i in range(3)]
    grants = [n.take(False, "90%") for n in nodes]
    assert [g.cordon for g in grants] == [True, True, False]
    for n in nodes:
        n.release()


def test_a_held_slot_is_renewed_until_released(tmp_path: Path) -> None:
    leases = FakeLeases()
    a = budget(tmp_path, "a", leases, SLOT_LEASE_SECONDS="4")  # renewed every second
    a.take(False, "90%")
    first = leases.store[f"{PREFIX}0"].renewed
    deadline = time.monotonic() + 5
    while leases.store[f"{PREFIX}0"].renewed == first and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leases.store[f"{PREFIX}0"].renewed != first and leases.holders() == {f"{PREFIX}0": "a"}
    a.release()
    writes = len(leases.writes)
    time.sleep(1.5)
    assert len(leases.writes) == writes and leases.holders() == {}  # no renewal after the release
