"""The liveness heartbeat: a file the loop touches and `fsm-cleaner healthcheck` reads."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("fsm_cleaner")


class Heartbeat:
    def __init__(self, path: str):
        self.path = Path(path)
        self.failing = False  # said once when it starts failing, once when it works again

    def beat(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()
        except OSError as e:
            if not self.failing:
                log.error("cannot write the heartbeat %s (%s): the liveness probe will restart this pod; "
                          "check HEARTBEAT_FILE and that its directory is writable", self.path,
                          e.strerror or e)
            self.failing = True
            return
        if self.failing:
            log.info("heartbeat written again: %s", self.path)
            self.failing = False
