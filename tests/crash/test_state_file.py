"""SIGKILL while the agent writes its use history (STATE_DIR): the restart loads the old file or the
new one, never a mix, clears what the cut write left, and hands the node back.

The agent writes the history in PruningContainers, before the stopped containers go (their uses exist
nowhere else afterwards). A record of 15,000 images makes that write last milliseconds; the test kills
the agent the moment the write's temp file appears, while the node is cordoned.
"""

from __future__ import annotations

import json
import signal
import threading

from fsm_cleaner import history
from tests.crash.conftest import Row, Scene
from tests.crash.test_kill import restart_and_check

ENTRIES = 15_000


def test_sigkill_during_a_state_file_write(scene: Scene, agents, row: Row) -> None:
    row.case = "SIGKILL during a use-history write (STATE_DIR), the node cordoned"
    state = scene.tmp / "state"
    state.mkdir()
    images = {f"sha256:{n:064x}": [1_700_000_000.0 + n, 1 + n % 7] for n in range(ENTRIES)}
    history.path_in(state).write_text(json.dumps({"version": 1, "cursor_ns": None, "images": images}))
    agent = agents(scene.env())
    killed: dict[str, float] = {}
    started = threading.Event()

    def kill_mid_write() -> None:
        started.wait()
        while agent.running:
            if next(state.glob(f".{history.FILE_NAME}.*.tmp"), None) is not None:
                killed["t"] = agent.signal(signal.SIGKILL)
                return

    watcher = threading.Thread(target=kill_mid_write, daemon=True)
    watcher.start()
    agent.start()
    started.set()
    assert agent.wait(60) == -signal.SIGKILL, agent.log
    watcher.join(5)
    assert "t" in killed, agent.log
    at_kill = scene.watch.last()
    assert at_kill.unschedulable and at_kill.state == "PruningContainers", at_kill

    # the old file or the new one: it parses, every entry there
    assert set(images) <= set(history.load(state).snapshot())
    left = list(state.glob(f".{history.FILE_NAME}.*.tmp"))

    restarted = restart_and_check(scene, agents, row, killed["t"], "PruningContainers")
    assert f"use history: {ENTRIES}" in restarted.log, restarted.log
    assert not list(state.glob(f".{history.FILE_NAME}.*.tmp"))
    if left:
        assert "left by a write that was cut short" in restarted.log
    saved = history.load(state).snapshot()
    assert set(images) <= set(saved) and len(saved) > ENTRIES  # the scene's images recorded too
    row.invariants.append("history loaded whole" + (", the cut write's temp file removed" if left else ""))
    row.note = "killed while its temp file existed"
