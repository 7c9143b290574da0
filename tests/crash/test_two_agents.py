"""Two agents on one node (a DaemonSet rolling update with maxSurge, a second install): two real agent
processes, the test-bed dockerd and the fake API server. At most one acts on the node at a time; the
other leaves a live agent's cycle alone and takes a dead one's over once its journal is STALE_SECONDS
old. Checked from the API server's history of applied writes and from Docker's events."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections import Counter
from datetime import datetime
from typing import Any

from fsm_cleaner.journal import ANNOTATION, RENEW_SECONDS, STALE_SECONDS
from tests.crash.conftest import NODE_PATH, STOP_TIMEOUT, AgentProcess, Row, Scene, Snap

BUSY = r"another fsm-cleaner \(holder {}\) is cleaning this node since .*; skipping this cycle"


def epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def holder(record: Snap) -> str | None:
    entry = record.journal()
    return None if entry is None else entry.get("holder")


def image_deletions(scene: Scene, since: float) -> Counter[str]:
    """How many times Docker deleted each image since ``since`` (time.time())."""
    with contextlib.closing(scene.bed.client()) as client:
        events = client.events(since=int(since), until=int(time.time()) + 1, decode=True,
                               filters={"type": "image", "event": "delete"})
        return Counter(str(e["id"]) for e in events)


def stop(*agents: AgentProcess) -> None:
    for agent in agents:
        t = agent.signal(signal.SIGTERM)
        assert agent.wait(STOP_TIMEOUT + 5) == 0, agent.log
        assert agent.exited_at - t <= STOP_TIMEOUT


def test_two_agents_starting_a_cycle_together(scene: Scene, agents, row: Row) -> None:
    row.case = "two agents on one node start a cycle at once (both read the node before either cordons)"
    # Hold the first two node PATCHes (the two cycles' first journal writes: a fresh node needs no
    # reconciling) until both have arrived: both agents decided on the same read, and the journal's test
    # lets only one win.
    both_sent = threading.Barrier(2, timeout=30)
    held, lock = [0], threading.Lock()

    def hold_the_cordons(method: str, path: str) -> None:
        with lock:
            first_two = method == "PATCH" and path == NODE_PATH and held[0] < 2
            held[0] += first_two
        if first_two:
            both_sent.wait()
    scene.cluster.on_request(hold_the_cordons)
    started = time.time()
    pair = {pod: agents(scene.env(POD_NAME=pod, DOCKER_IMAGE_CLEANER_INTERVAL_SECONDS=1), once=False)
            for pod in ("agent-a", "agent-b")}
    for agent in pair.values():
        agent.start()
    deadline = time.monotonic() + 60
    while not (done := [pod for pod, a in pair.items() if "cycle done" in a.log]):
        assert time.monotonic() < deadline, "\n\n".join(a.log for a in pair.values())
        time.sleep(0.1)
    (winner,) = done
    loser = next(pod for pod in pair if pod != winner)
    a, b = pair[winner], pair[loser]
    # the loser's first journal write failed its test (422), and the re-read showed the winner's journal
    b.wait_for(r"TakingSlot: attempt 1 failed \(NodeChanged: ")
    b.wait_for(r"TakingSlot failed: NodeBusy: " + BUSY.format(winner))
    # once the winner is done, the loser's next tick measures again: nothing left to do
    b.wait_for(r"nothing to do", start=b.wait_for(r"Uncordoning: " + BUSY.format(winner)).index)
    stop(a, b)

    records = scene.watch.records[1:]
    journals = [r.annotations.get(ANNOTATION) for r in records]
    assert records and {holder(r) for r in records} == {winner}, journals
    pruning = {"PruningContainers", "PruningDangling", "PruningBuildCache", "PruningAll"}
    assert not pruning & set(b.states()), b.log
    assert b.count(r"removed (image|\d+ (stopped|dangling))") == 0, b.log
    deletions = image_deletions(scene, started)
    assert set(scene.old_images) <= set(deletions) and max(deletions.values()) == 1, deletions
    assert "already gone" not in a.log + b.log
    row.invariants = scene.check_handed_back() + [
        "one journal write won (the other 422)", "the loser never wrote to the node",
        "the loser pruned nothing", "each image deleted once (Docker events)", "SIGTERM: both exit 0"]
    row.note = f"{winner} cleaned; the other skipped until it was done"


def test_a_dead_agents_cycle_is_taken_over_once_stale(scene: Scene, agents, row: Row) -> None:
    row.case = (f"two agents on one node: the first renews its journal, is SIGKILLed mid-PruningAll; the "
                f"second takes over after {STALE_SECONDS} s")
    started = time.time()
    # A's removals pause 10 s: its PruningAll outlasts a renewal (every RENEW_SECONDS)
    a = agents(scene.env(POD_NAME="agent-a", DOCKER_IMAGE_CLEANER_DELAY_SECONDS=10))
    b = agents(scene.env(POD_NAME="agent-b", DOCKER_IMAGE_CLEANER_INTERVAL_SECONDS=2,
                         DOCKER_IMAGE_CLEANER_DELAY_SECONDS=0), once=False)
    scene.watch.after_state("PruningAll", b.start)  # B starts while A works
    killed: dict[str, Any] = {}

    def kill_after_a_renewal(method: str, path: str, code: int, body: Any) -> None:
        if method != "PATCH" or path != NODE_PATH or not 200 <= code < 300 or killed:
            return
        entry = json.loads(body["metadata"]["annotations"][ANNOTATION])
        renewal = entry["state"] == "PruningAll" and entry["renewed"] != entry["since"]
        if entry["holder"] == "agent-a" and renewal:
            killed.update(t=a.signal(signal.SIGKILL), renewed=entry["renewed"], since=entry["since"])
    scene.cluster.before_reply(kill_after_a_renewal)
    a.start()
    assert a.wait(60) == -signal.SIGKILL, a.log
    b.wait_for(r"Reconciling: " + BUSY.format("agent-a"))  # A's live cycle is left alone at B's start
    taken = b.wait_for(r"Uncordoning: our cordon from PruningAll undone; taken over from holder agent-a",
                       timeout=STALE_SECONDS + 30)
    b.wait_for(r"cycle done|nothing to do", start=taken.index)
    stop(b)

    records = scene.watch.records[1:]
    first_b = next((i for i, r in enumerate(records) if holder(r) == "agent-b"), None)
    assert first_b is not None, [r.annotations.get(ANNOTATION) for r in records]
    assert {holder(r) for r in records[:first_b]} == {"agent-a"}  # B wrote nothing while A's journal lived
    assert records[0].state == "TakingSlot"  # A's first write, before its cordon
    assert all(r.unschedulable for r in records[1:first_b])  # and A's cordon stayed
    takeover = records[first_b]
    assert takeover.state == "Idle" and not takeover.unschedulable
    renewed, decided = epoch(killed["renewed"]), epoch(takeover.journal()["since"])
    # not before the limit; after it, within B's next tick (2 s), the times' 1 s resolution, and slack
    assert STALE_SECONDS < decided - renewed <= STALE_SECONDS + 5, (killed, takeover)
    renewal_after = renewed - epoch(killed["since"])
    assert 0 < renewal_after <= RENEW_SECONDS + 1  # renewed during PruningAll, not only at its write
    deletions = image_deletions(scene, started)
    assert deletions and max(deletions.values()) == 1, deletions
    row.invariants = scene.check_handed_back() + [
        "B left A's live journal alone", "A's cordon kept until stale", f"taken over > {STALE_SECONDS} s "
        "after A's last renewal", "each image deleted once (Docker events)", "SIGTERM: exit 0"]
    row.recover, row.since = scene.watch.recovered_after(killed["t"], False), "SIGKILL of A"
    row.note = (f"A renewed {renewal_after:.0f} s into PruningAll; B took over {decided - renewed:.0f} s "
                "after that renewal")
