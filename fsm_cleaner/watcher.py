"""A background thread that follows the Docker event stream and records image uses in the history.

It lives outside the state machine: the agent only reads `history.snapshot()`. The event source is
injected (`subscribe(cursor_ns) -> events`, `resolve(use) -> image id`), so tests run it on fakes;
`DockerEvents` is the Docker-backed source.

What dockerd 20.10 (API 1.41) emits, measured on the test bed:
- `docker run` / create + start: container `create`, `start` (and `die` on exit); `Actor.Attributes.image`
  is the reference as the user wrote it (a tag, a repository without tag, a short id), so it is
  resolved through the container (its exact image id) or else the reference.
- build (legacy builder and BuildKit alike): only an image `tag` event for the result, `Actor.ID` = the
  image id; an untagged build emits nothing. `docker tag`: `tag`. `docker commit`: `tag` (+ container
  `commit`).
- `docker import`: `tag` (if named) then `import`; `docker load`: `load`; both with `Actor.ID` = the id.
- `docker pull` (also one that finds the image up to date): `pull` with `Actor.ID` = the reference
  pulled (`127.0.0.1:5000/fsmtest/pulled:v1`), no `tag` event.
Events are replayed from the daemon's memory only (the last 256, lost when dockerd restarts), and
`since` is inclusive: after a broken stream the watcher subscribes again with bounded backoff and
`since` = the last event it recorded, skipping that one when it comes again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import docker
import docker.errors

from . import history as history_file
from .history import History

log = logging.getLogger("fsm_cleaner.watcher")

# Container actions → whether the event counts as a use. A create is followed by a start (one use per
# run); a die only moves the last-use time: the image was needed until the container exited.
CONTAINER_ACTIONS = {"create": False, "start": True, "die": False}
IMAGE_ACTIONS = frozenset({"pull", "tag", "load", "import"})  # the image arrived or was (re)named
EVENT_FILTERS = {"type": ["container", "image"], "event": sorted({*CONTAINER_ACTIONS, *IMAGE_ACTIONS})}


@dataclass(frozen=True)
class Use:
    image: str  # an image id ("sha256:…") or the reference Docker reported
    time_ns: int
    counts: bool
    container: str | None = None  # the container of a container event: it knows its exact image


def decode(event: Mapping[str, Any]) -> Use | None:
    """The image use an event means, or None for events that are not uses (or malformed)."""
    kind, action = event.get("Type"), event.get("Action") or event.get("status")
    actor = event.get("Actor") or {}
    attrs = actor.get("Attributes") or {}
    time_ns, seconds = event.get("timeNano"), event.get("time")
    if time_ns is None and type(seconds) is int:  # older daemons: seconds only
        time_ns = seconds * 1_000_000_000
    if type(time_ns) is not int:
        return None
    if kind == "container" and action in CONTAINER_ACTIONS:
        image = attrs.get("image") or event.get("from") or None
        container = actor.get("ID") or event.get("id")
        return Use(image, time_ns, CONTAINER_ACTIONS[action], container) if isinstance(image, str) else None
    if kind == "image" and action in IMAGE_ACTIONS:
        image = actor.get("ID") or event.get("id")
        return Use(image, time_ns, True) if isinstance(image, str) and image else None
    return None


Subscribe = Callable[[int | None], Iterable[Mapping[str, Any]]]
Resolve = Callable[[Use], str | None]
SeedInputs = Callable[[float], tuple[dict[str, float], list[tuple[str, float]]]]


class Watcher:
    """Follows `subscribe` in a daemon thread, saves the history to `state_dir` at most every
    `persist_seconds` (when it changed) and on stop. Never raises into the caller after start()."""

    def __init__(self, history: History, subscribe: Subscribe, resolve: Resolve,
                 state_dir: Path | str | None, seed_inputs: SeedInputs | None = None,
                 persist_seconds: float = 30.0, backoff: tuple[float, float] = (1.0, 30.0)) -> None:
        self.history = history
        self._subscribe, self._resolve, self._seed_inputs = subscribe, resolve, seed_inputs
        self._state_dir = state_dir
        self._persist_seconds = persist_seconds
        self._backoff = backoff
        self._stop = threading.Event()
        self._stream: Iterable[Mapping[str, Any]] | None = None
        self._threads: list[threading.Thread] = []
        self.subscriptions = 0  # subscribed (and seeded) so far: the first, then one per reconnect

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._follow, name="docker-events", daemon=True)]
        if self._state_dir is not None:
            self._threads.append(threading.Thread(target=self._persist, name="history-save", daemon=True))
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the stream, wait up to `timeout` for the threads, then save the history."""
        self._stop.set()
        self._close_stream()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._save(only_if_changed=True)

    def _follow(self) -> None:
        delay = self._backoff[0]
        while not self._stop.is_set():
            cursor = self.history.cursor_ns
            try:
                stream = self._stream = self._subscribe(cursor)
                if self._stop.is_set():  # stop() ran while we were connecting
                    break
                # After subscribing, so that nothing falls between; seed() only adds unknown images.
                if self._seed_inputs is not None:
                    now = time.time()
                    seeded = self.history.seed(*self._seed_inputs(now), now=now)
                    if seeded:
                        log.info("use history: %d images not seen before, started from their creation "
                                 "and their containers", len(seeded))
                self.subscriptions += 1
                log.info("following Docker events (subscription %d)", self.subscriptions)
                for event in stream:
                    self._consume(event)
                reason = "the event stream ended"
            except Exception as e:  # daemon down or restarting: connection refused, reset, timeout
                reason = f"{type(e).__name__}: {e}"
            finally:
                self._close_stream()
            if self._stop.is_set():
                break
            if self.history.cursor_ns != cursor:  # it delivered new events: a healthy stream
                delay = self._backoff[0]
            log.warning("Docker events: %s; subscribing again in %.1fs", reason, delay)
            self._stop.wait(delay)
            delay = min(delay * 2, self._backoff[1])

    def _consume(self, event: Mapping[str, Any]) -> None:
        use = decode(event)
        if use is None:
            return
        cursor = self.history.cursor_ns
        if cursor is not None and use.time_ns <= cursor:
            return  # replayed after a reconnect: already recorded
        try:
            image_id = self._resolve(use)
        except Exception as e:  # the daemon went away mid-stream; the stream breaks next
            log.warning("could not resolve image %s of a Docker event: %s", use.image, e)
            image_id = None
        if image_id is not None:
            self.history.record(image_id, use.time_ns / 1e9, counts=use.counts)
        self.history.advance(use.time_ns)

    def _persist(self) -> None:
        while not self._stop.wait(self._persist_seconds):
            self._save(only_if_changed=True)

    def _save(self, only_if_changed: bool) -> None:
        if self._state_dir is None:
            return
        try:
            history_file.save(self.history, self._state_dir, only_if_changed=only_if_changed)
        except OSError as e:  # e.g. the disk we are cleaning is full: keep it in memory, retry later
            log.warning("could not save the use history to %s: %s; kept in memory, retrying in %.0fs",
                        history_file.path_in(self._state_dir), e, self._persist_seconds)

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        close = getattr(stream, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()


def _epoch(rfc3339: str) -> float:
    """Docker's RFC 3339 UTC times (nanosecond fractions) as seconds; Python 3.10 cannot parse them."""
    whole, _, frac = rfc3339.rstrip("Z").partition(".")
    seconds = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    return seconds + (float(f"0.{frac}") if frac else 0.0)


class DockerEvents:
    """The Docker-backed source: `subscribe`, `resolve` and `seed_inputs` for a Watcher.

    `connect` makes a new `docker.APIClient`; it is called for every subscription, so a restarted
    dockerd (or one that was down when the agent started) is reached again."""

    def __init__(self, connect: Callable[[], docker.APIClient]) -> None:
        self._connect = connect
        self._api: docker.APIClient | None = None

    def subscribe(self, cursor_ns: int | None) -> Iterable[Mapping[str, Any]]:
        self._api = self._connect()
        # No cursor yet (first start): replay what the daemon still holds; it is real recent use.
        since = "0" if cursor_ns is None else f"{cursor_ns // 10**9}.{cursor_ns % 10**9:09d}"
        return self._api.events(since=since, filters=EVENT_FILTERS, decode=True)

    def resolve(self, use: Use) -> str | None:
        if use.image.startswith("sha256:") and len(use.image) == 71:
            return use.image
        api = self._api or self._connect()
        if use.container is not None:
            with contextlib.suppress(docker.errors.NotFound):  # `docker run --rm`: already gone
                return str(api.inspect_container(use.container)["Image"])
        try:
            return str(api.inspect_image(use.image)["Id"])
        except docker.errors.NotFound:  # removed meanwhile: nothing to rank
            return None

    def seed_inputs(self, now: float) -> tuple[dict[str, float], list[tuple[str, float]]]:
        """Images (id → created) and containers (image id, when last active: `now` if running, else
        the latest of created / started / finished), for History.seed."""
        api = self._api or self._connect()
        images = {i["Id"]: float(i["Created"]) for i in api.images()}
        containers: list[tuple[str, float]] = []
        for c in api.containers(all=True):
            if c.get("State") == "running":
                containers.append((c["ImageID"], now))
                continue
            with contextlib.suppress(docker.errors.NotFound):  # removed since the listing
                state = api.inspect_container(c["Id"])["State"]
                times = [float(c["Created"]), _epoch(state["StartedAt"]), _epoch(state["FinishedAt"])]
                containers.append((c["ImageID"], max(times)))
        return images, containers
