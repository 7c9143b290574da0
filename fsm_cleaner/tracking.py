"""The use history as the agent runs it: kept in STATE_DIR, followed in the background, seeded from the
stopped containers before the container prune destroys them.

history.py is the store and its file, watcher.py the thread that feeds it from Docker's events; this
is their life in the process. The agent reads `snapshot()` in PruningAll and calls
`before_container_prune()` in PruningContainers; cli starts and stops it around the agent's run.
Nothing here raises into the agent over the state file: an unwritable STATE_DIR is a warning and the
history lives in memory (ranks then restart from Docker's creation times at every restart). A dry run
reads the state file and never writes it (a live agent on the same node owns it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import docker

from . import history as history_file
from .config import Config
from .history import History, Usage
from .watcher import DockerEvents, SeedInputs, Watcher

log = logging.getLogger("fsm_cleaner")


class UseTracking:
    def __init__(self, history: History, *, watcher: Watcher | None = None,
                 seed_inputs: SeedInputs | None = None, state_dir: str | None = None):
        """``state_dir``: where to write (None: in memory only); ``seed_inputs``: what the agent seeds
        from itself when the watcher has not yet (or when there is no watcher)."""
        self.history = history
        self.watcher = watcher
        self._seed_inputs = seed_inputs
        self._state_dir = state_dir

    @classmethod
    def for_docker(cls, cfg: Config, connect: Callable[[], docker.APIClient]) -> UseTracking:
        history = history_file.load(cfg.state_dir)
        known = len(history.snapshot())
        if known:
            log.info("use history: %d images on record in %s", known, history_file.path_in(cfg.state_dir))
        if cfg.dry_run:
            log.info("dry run: the use history in %s is read, never written", cfg.state_dir)
            state_dir = None
        else:
            state_dir = writable(cfg.state_dir)
        events = DockerEvents(connect)
        watcher = Watcher(history, events.subscribe, events.resolve, state_dir,
                          seed_inputs=events.seed_inputs)
        # its own client: the watcher's may be busy subscribing when the agent needs a seed
        return cls(history, watcher=watcher, seed_inputs=DockerEvents(connect).seed_inputs,
                   state_dir=state_dir)

    def start(self) -> None:
        if self.watcher is not None:
            self.watcher.start()

    def stop(self) -> None:
        """Stop following events and save what changed (the watcher's last save)."""
        if self.watcher is not None:
            self.watcher.stop(timeout=1.0)  # its threads are daemons: the wait only lets them finish
        else:
            self.save()

    def snapshot(self) -> dict[str, Usage]:
        return self.history.snapshot()

    def before_container_prune(self) -> None:
        """Make sure every stopped container's use is on record, then write the record ahead of the
        prune: once the containers are gone nothing else tells when their images were last used.

        The watcher seeds at each subscription; until its first one (a slow or restarting daemon at
        start-up) the agent seeds here, in its own step, bounded by the Docker API timeout. Seeding
        twice is harmless: only images the history does not know are seeded."""
        if self._seed_inputs is not None and (self.watcher is None or not self.watcher.subscriptions):
            now = time.time()
            seeded = self.history.seed(*self._seed_inputs(now), now=now)
            if seeded:
                log.info("use history: seeded %d images from their creation and their containers",
                         len(seeded))
        self.save()

    def save(self) -> None:
        if self._state_dir is None:
            return
        try:
            history_file.save(self.history, self._state_dir, only_if_changed=True)
        except OSError as e:  # e.g. the disk being cleaned is full: kept in memory, saved later
            log.warning("could not save the use history to %s: %s; kept in memory",
                        history_file.path_in(self._state_dir), e)


def writable(state_dir: str) -> str | None:
    """``state_dir`` if the history can be written there (created if missing), else None with a
    warning. Temp files a killed writer left behind are removed (the agent is the only writer)."""
    try:
        os.makedirs(state_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=state_dir):
            pass
    except OSError as e:
        log.warning("cannot write the use history in STATE_DIR=%s (%s): keeping it in memory only; "
                    "after a restart images are ranked by creation time until they are used again",
                    state_dir, e.strerror or e)
        return None
    for stale in Path(state_dir).glob(f".{history_file.FILE_NAME}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
            log.info("removed %s, left by a write that was cut short", stale)
    return state_dir
