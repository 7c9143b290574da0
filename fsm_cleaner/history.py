"""Use history: per image id, when it was last used and how often, kept in a state file.

Docker records no last-use time, so the watcher (watcher.py) follows the event stream and records
uses here; the removal planner reads a snapshot. Keyed by image id because the planner ranks image
ids: a tag rebuilt or re-pulled is a new image with a history of its own, and the old one, dangling or
superseded, should not inherit the popularity of the name.

The store is thread-safe (one lock, held only to update or copy the dict) and does no I/O; `load` and
`save` are the state file: JSON with a version field, written atomically, bounded in size, and
rebuilt (with a warning) when it is missing, truncated or corrupt, never fatal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("fsm_cleaner.history")

VERSION = 1
FILE_NAME = "history.json"
MAX_ENTRIES = 20_000  # ~2 MB of JSON; far more images than a node's disk holds
MAX_FILE_BYTES = 16 * 1024 * 1024  # a larger file is not ours (or not sane): rebuilt


@dataclass(frozen=True)
class Usage:
    last_used: float  # seconds since the epoch
    count: int  # uses seen: container starts, pulls, tags (builds), loads, imports


class History:
    def __init__(self, entries: Mapping[str, Usage] | None = None, cursor_ns: int | None = None,
                 max_entries: int = MAX_ENTRIES) -> None:
        self._entries: dict[str, Usage] = dict(entries or {})
        self._lock = threading.Lock()
        self._max = max_entries
        self._dirty = False
        # Time (ns) of the last Docker event consumed, so a restarted watcher catches up from there.
        self.cursor_ns = cursor_ns
        self._trim()

    def record(self, image_id: str, when: float, counts: bool = True) -> None:
        """A use of `image_id` at `when`; `counts=False` only moves the last-use time (e.g. a
        container create, whose start follows, or a container exit: the image was needed until then)."""
        with self._lock:
            old = self._entries.get(image_id)
            last = max(when, old.last_used) if old else when  # events can arrive out of order
            self._entries[image_id] = Usage(last, (old.count if old else 0) + int(counts))
            self._dirty = True
            if len(self._entries) > self._max:
                self._trim()

    def advance(self, cursor_ns: int) -> None:
        with self._lock:
            if self.cursor_ns is None or cursor_ns > self.cursor_ns:
                self.cursor_ns = cursor_ns
                self._dirty = True

    def forget(self, present: Iterable[str]) -> list[str]:
        """Drop the images no longer on the node (keep only `present`); returns the dropped ids."""
        keep = set(present)
        with self._lock:
            gone = [i for i in self._entries if i not in keep]
            for image_id in gone:
                del self._entries[image_id]
            self._dirty = self._dirty or bool(gone)
        return gone

    def seed(self, images: Mapping[str, float], containers: Iterable[tuple[str, float]],
             now: float) -> list[str]:
        """Start a record for every image in `images` (id → created) that has none: last used at its
        creation or at the latest time of a container (image id, latest of created / started /
        finished; `now` for a running one) that uses it, one use per container. Times later than
        `now` (a skewed clock) are clamped to it. Returns the ids seeded."""
        latest: dict[str, float] = {}
        uses: dict[str, int] = {}
        for image_id, when in containers:
            latest[image_id] = max(when, latest.get(image_id, when))
            uses[image_id] = uses.get(image_id, 0) + 1
        seeded: list[str] = []
        with self._lock:
            for image_id, created in images.items():
                if image_id in self._entries:
                    continue
                last = min(now, max(created, latest.get(image_id, created)))
                self._entries[image_id] = Usage(last, uses.get(image_id, 0))
                seeded.append(image_id)
            self._dirty = self._dirty or bool(seeded)
            self._trim()
        return seeded

    def snapshot(self) -> dict[str, Usage]:
        """A copy for the planner: image id → Usage."""
        with self._lock:
            return dict(self._entries)

    def _trim(self) -> None:
        """Keep the `max_entries` most recently used (caller holds the lock, or owns the object)."""
        if len(self._entries) > self._max:
            ranked = sorted(self._entries.items(), key=lambda kv: kv[1].last_used, reverse=True)
            self._entries = dict(ranked[: self._max])

    def _take_state(self) -> tuple[dict, bool]:
        """The file's content and whether anything changed since the last take (clears the flag)."""
        with self._lock:
            dirty, self._dirty = self._dirty, False
            images = {i: [u.last_used, u.count] for i, u in self._entries.items()}
            return {"version": VERSION, "cursor_ns": self.cursor_ns, "images": images}, dirty

    def _mark_dirty(self) -> None:
        with self._lock:
            self._dirty = True


def path_in(state_dir: Path | str) -> Path:
    return Path(state_dir) / FILE_NAME


def load(state_dir: Path | str, max_entries: int = MAX_ENTRIES) -> History:
    """The history kept in `state_dir`; an empty one (logged) if the file is missing or unreadable."""
    path = path_in(state_dir)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        log.info("no use history in %s yet: starting one from what Docker reports", path)
        return History(max_entries=max_entries)
    except OSError as e:
        log.warning("cannot read the use history %s (%s): starting a new one", path, e)
        return History(max_entries=max_entries)
    try:
        if len(raw) > MAX_FILE_BYTES:
            raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
        return History(*_parse(raw), max_entries=max_entries)
    except (ValueError, TypeError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        log.warning("use history %s is unreadable (%s; %d bytes): rebuilding it from what Docker "
                    "reports; images will be ranked by creation time until they are used again",
                    path, e, len(raw))
        return History(max_entries=max_entries)


def _parse(raw: bytes) -> tuple[dict[str, Usage], int | None]:
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise TypeError("not a JSON object")
    if data.get("version") != VERSION:
        raise ValueError(f"version {data.get('version')!r}, this agent reads version {VERSION}")
    cursor, images = data.get("cursor_ns"), data.get("images")
    if not (cursor is None or type(cursor) is int) or not isinstance(images, dict):
        raise TypeError("wrong field types")
    entries: dict[str, Usage] = {}
    for image_id, value in images.items():
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], int | float)
                and type(value[1]) is int and value[1] >= 0):
            raise TypeError(f"bad entry for {image_id}: {value!r}")
        entries[image_id] = Usage(float(value[0]), value[1])
    return entries, cursor


def save(history: History, state_dir: Path | str, only_if_changed: bool = False) -> bool:
    """Write the history atomically: a temp file in the same directory, fsync, rename, fsync the
    directory, so a crash leaves the old file or the new one, never a mix. Returns whether it wrote.
    Raises OSError (e.g. disk full); the history stays marked as changed so a later save retries."""
    state, dirty = history._take_state()
    if only_if_changed and not dirty:
        return False
    path = path_in(state_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{FILE_NAME}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(state, separators=(",", ":")).encode())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        history._mark_dirty()
        raise
    return True
