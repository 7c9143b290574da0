"""Signals are never lost: the handler only records the request, whatever the main flow is doing.

A signal that lands while the main thread writes a log line to a full stderr pipe, or while it waits
between removals, must still stop it; the second signal must still exit at once. Each round of the
race is a fresh request in one small subprocess, repeated enough to catch a 1-in-25 race.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ROUNDS = 150

# The child: per round a fresh Shutdown, heavy logging to stderr and short interruptible pauses,
# until the stop is seen; "stopped N" on stdout. A hang or a lost signal never prints it.
CHILD = f"""
import logging, signal, sys
from fsm_cleaner.clock import RealClock
from fsm_cleaner.shutdown import Shutdown, StopRequested
logging.basicConfig(stream=sys.stderr, level="INFO", format="%(message)s")
log = logging.getLogger("fsm_cleaner")
mode = sys.argv[1]
for n in range({ROUNDS}):
    shutdown = Shutdown(25, RealClock())
    shutdown.install_signal_handlers()
    print("ready", n, flush=True)
    try:
        while not shutdown.requested:
            log.info("removed image app:%d " + "x" * 400, n)
            if mode == "pause":
                shutdown.pause(0.0002)
            else:
                with shutdown.stoppable():
                    log.info("a call in flight " + "y" * 400)
    except StopRequested:
        shutdown.interrupted()  # what the agent's loop does
    print("stopped", n, flush=True)
"""


def _drain_slowly(stream, seen: list[bytes]) -> None:
    """Read stderr in small sips so that the pipe is often full and the child's writes block."""
    while chunk := stream.read1(1024):
        seen.append(chunk)
        time.sleep(0.002)


@pytest.mark.parametrize("mode", ["pause", "stoppable"])
def test_sigterm_is_never_lost_while_logging_and_pausing(mode: str) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD, mode], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=os.environ | {"PYTHONPATH": str(REPO)})
    err: list[bytes] = []
    drain = threading.Thread(target=_drain_slowly, args=(child.stderr, err), daemon=True)
    drain.start()
    rng = random.Random(8)
    try:
        for n in range(ROUNDS):
            assert child.stdout.readline().split() == [b"ready", str(n).encode()]
            time.sleep(rng.uniform(0, 0.004))
            child.send_signal(signal.SIGTERM)
            line = _readline_within(child, 10)
            assert line == f"stopped {n}".encode(), f"round {n}: the stop was lost ({line!r})"
    finally:
        child.kill()
        child.wait()
        drain.join(5)
    log = b"".join(err).decode(errors="replace")
    assert "reentrant call" not in log and "Traceback" not in log, log[-3000:]
    assert log.count("signal 15: stopping") == ROUNDS


def _readline_within(child: subprocess.Popen, seconds: float) -> bytes:
    """The child's next stdout line; b"" if it hangs (the symptom: a handler blocked forever)."""
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(child.stdout.readline().strip()), daemon=True)
    reader.start()
    reader.join(seconds)
    return got[0] if got else b""


def test_a_second_signal_exits_at_once_even_during_a_pause() -> None:
    child = subprocess.Popen([sys.executable, "-c", """
import logging, signal, sys
from fsm_cleaner.clock import RealClock
from fsm_cleaner.shutdown import Shutdown
logging.basicConfig(stream=sys.stderr, level="INFO", format="%(message)s")
shutdown = Shutdown(25, RealClock())
shutdown.install_signal_handlers()
print("ready", flush=True)
while True:
    shutdown.backoff(60)  # the stop ends this wait; the handing back would start here
    print("handing back", flush=True)
    shutdown.backoff(60)  # a hanging uncordon
"""], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ | {"PYTHONPATH": str(REPO)})
    assert child.stdout.readline() == b"ready\n"
    child.send_signal(signal.SIGTERM)
    assert child.stdout.readline() == b"handing back\n"
    child.send_signal(signal.SIGTERM)
    assert child.wait(10) == 128 + signal.SIGTERM
    assert b"second signal 15: exiting now" in child.stderr.read()


def test_sighup_stops_like_sigterm_and_sigusr_signals_are_ignored() -> None:
    """SIGUSR1/SIGUSR2 (default action: terminate) would kill the agent with the node cordoned."""
    child = subprocess.Popen([sys.executable, "-c", """
import logging, sys
from fsm_cleaner.clock import RealClock
from fsm_cleaner.shutdown import Shutdown
logging.basicConfig(stream=sys.stdout, level="INFO", format="%(message)s")
shutdown = Shutdown(25, RealClock())
shutdown.install_signal_handlers()
print("ready", flush=True)
shutdown.backoff(60)
print("handing back", flush=True)
"""], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ | {"PYTHONPATH": str(REPO)})
    assert child.stdout.readline() == b"ready\n"
    for signum in (signal.SIGUSR1, signal.SIGUSR2):
        child.send_signal(signum)
        assert child.stdout.readline().decode() == f"signal {signum} ignored\n"  # logged by the main flow
    child.send_signal(signal.SIGHUP)
    assert child.stdout.readline() == f"signal {signal.SIGHUP}: stopping (bound 25 s)\n".encode()
    assert child.stdout.readline() == b"handing back\n"
    assert child.wait(10) == 0
