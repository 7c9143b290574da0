"""The Docker event watcher: event decoding (table), the thread on a fake source, and on the real dockerd."""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from devtools.testbed import DockerBed
from fsm_cleaner import history
from fsm_cleaner.history import History, Usage
from fsm_cleaner.watcher import DockerEvents, Use, Watcher, _epoch, decode

ID = "sha256:c5ef591649193980faa5f7e007ec371c54cdff083d746ed70b95e67bac63016b"
CID = "2ac6d6d8ff620e8cb27aba44ed1bfa7c66685e331e0cc4a6e50128b301e8de8a"
T = 1796121438427712477


def event(kind: str, action: str, actor_id: str, **attrs: str) -> dict[str, Any]:
    """An event shaped as dockerd 20.10 sends it (trimmed from the stream recorded on the test bed)."""
    return {"Type": kind, "Action": action, "status": action, "id": actor_id,
            "Actor": {"ID": actor_id, "Attributes": attrs}, "scope": "local",
            "time": T // 10**9, "timeNano": T}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # docker run = create (time only) + start (a use); the image as the user wrote it
        (event("container", "create", CID, image="fsmtest/app:v1", name="x"),
         Use("fsmtest/app:v1", T, False, CID)),
        (event("container", "start", CID, image="c5ef59164919", name="x"), Use("c5ef59164919", T, True, CID)),
        (event("container", "die", CID, image="fsmtest/busybox", exitCode="0"),
         Use("fsmtest/busybox", T, False, CID)),
        # image events carry the id (a pull: the reference)
        (event("image", "tag", ID, name="fsmtest/app:v1"), Use(ID, T, True)),
        (event("image", "import", ID, name=ID), Use(ID, T, True)),
        (event("image", "load", ID, name=ID), Use(ID, T, True)),
        (event("image", "pull", "quay.io/jupyterhub/k8s-hub:3.0", name="quay.io/jupyterhub/k8s-hub"),
         Use("quay.io/jupyterhub/k8s-hub:3.0", T, True)),
        # not uses
        (event("image", "untag", ID, name=ID), None),
        (event("image", "delete", ID, name=ID), None),
        (event("image", "save", ID, name=ID), None),
        (event("container", "destroy", CID, image="fsmtest/app:v1"), None),
        (event("container", "export", CID, image="fsmtest/app:v1"), None),
        (event("network", "connect", "34cbe901", container=CID, name="none"), None),
        # older shape without Actor, and seconds only
        ({"status": "start", "Type": "container", "id": CID, "from": "app:1", "time": 5},
         Use("app:1", 5_000_000_000, True, CID)),
        # malformed: no time, no image, a non-integer time
        ({"Type": "image", "Action": "tag", "Actor": {"ID": ID}}, None),
        ({**event("container", "start", CID), "from": None}, None),
        ({**event("image", "tag", ID), "timeNano": "soon", "time": None}, None),
        ({**event("image", "tag", ID), "Actor": {"ID": 42}, "id": None}, None),
        ({"Type": "image", "Action": "tag", "Actor": {"ID": ID}, "time": None}, None),
    ],
)
def test_decode(raw: dict[str, Any], expected: Use | None) -> None:
    assert decode(raw) == expected


# ------------------------------------------------------------------ the thread, on a fake source


class FakeStream:
    """An event stream fed from the test; close() wakes a blocked reader, like CancellableStream."""

    END = object()

    def __init__(self) -> None:
        self.q: queue.Queue[Any] = queue.Queue()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while (item := self.q.get()) is not self.END:
            yield item

    def close(self) -> None:
        self.q.put(self.END)


class FakeDocker:
    def __init__(self, refuse: int = 0) -> None:
        self.refuse = refuse  # subscriptions to refuse first (daemon down)
        self.calls: list[tuple[float, int | None]] = []  # (monotonic time, cursor) per subscribe
        self.streams: queue.Queue[FakeStream] = queue.Queue()
        self.tags = {"app:1": "sha256:app1"}

    def subscribe(self, cursor_ns: int | None) -> FakeStream:
        self.calls.append((time.monotonic(), cursor_ns))
        if self.refuse > 0:
            self.refuse -= 1
            raise ConnectionRefusedError(111, "Connection refused")
        stream = FakeStream()
        self.streams.put(stream)
        return stream

    def resolve(self, use: Use) -> str | None:
        if use.image == "boom":
            raise RuntimeError("daemon went away")
        return self.tags.get(use.image, use.image if use.image.startswith("sha256:") else None)


def wait_for(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll until check() is truthy; fail after `timeout` (a bound, not a synchronisation)."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    return result


def ev(action: str, image: str, ns: int) -> dict[str, Any]:
    kind = "container" if action in ("create", "start", "die") else "image"
    return {"Type": kind, "Action": action, "timeNano": ns,
            "Actor": {"ID": CID if kind == "container" else image, "Attributes": {"image": image}}}


@pytest.fixture
def fake() -> FakeDocker:
    return FakeDocker()


def watch(fake: FakeDocker, h: History, state_dir: Path | None = None, **kw: Any) -> Watcher:
    w = Watcher(h, fake.subscribe, fake.resolve, state_dir, backoff=kw.pop("backoff", (0.01, 0.05)), **kw)
    w.start()
    return w


def test_uses_are_recorded_by_image_id(fake: FakeDocker) -> None:
    h = History()
    w = watch(fake, h)
    s = fake.streams.get(timeout=10)
    for n, (action, image) in enumerate([("create", "app:1"), ("start", "app:1"), ("tag", "sha256:b"),
                                         ("start", "gone:1"), ("start", "boom"), ("die", "app:1")], 1):
        s.q.put(ev(action, image, n * 10**9))
    wait_for(lambda: h.cursor_ns == 6 * 10**9)
    w.stop()
    assert h.snapshot() == {"sha256:app1": Usage(6.0, 1), "sha256:b": Usage(3.0, 1)}


def test_reconnects_with_backoff_and_skips_replayed_events(fake: FakeDocker) -> None:
    fake.refuse = 0
    h = History()
    w = watch(fake, h, backoff=(0.05, 0.2))
    s = fake.streams.get(timeout=10)
    s.q.put(ev("start", "app:1", 10 * 10**9))
    wait_for(lambda: h.cursor_ns == 10 * 10**9)
    fake.refuse = 4  # dockerd restarts: the stream ends, then the socket refuses a while
    s.close()
    s2 = fake.streams.get(timeout=10)
    assert fake.calls[-1][1] == 10 * 10**9  # caught up from the last event seen
    s2.q.put(ev("start", "app:1", 10 * 10**9))  # replayed by `since`: already counted
    s2.q.put(ev("start", "app:1", 11 * 10**9))
    wait_for(lambda: h.cursor_ns == 11 * 10**9)
    w.stop()
    assert h.snapshot() == {"sha256:app1": Usage(11.0, 2)}
    assert w.subscriptions == 2
    gaps = [b[0] - a[0] for a, b in zip(fake.calls[1:], fake.calls[2:], strict=False)]
    # doubling from the first delay, capped: 0.1, 0.2, 0.2, 0.2 (never a hot loop)
    assert len(gaps) == 4 and all(g >= want for g, want in zip(gaps, (0.1, 0.2, 0.2, 0.2), strict=True))


def test_stop_is_prompt_while_the_stream_waits_and_saves(fake: FakeDocker, tmp_path: Path) -> None:
    h = History()
    w = watch(fake, h, tmp_path, persist_seconds=3600)
    s = fake.streams.get(timeout=10)
    s.q.put(ev("start", "app:1", 10**9))
    wait_for(lambda: h.cursor_ns)
    t0 = time.monotonic()
    w.stop()
    assert time.monotonic() - t0 < 2
    assert all(not t.is_alive() for t in w._threads)
    back = history.load(tmp_path)
    assert back.snapshot() == {"sha256:app1": Usage(1.0, 1)} and back.cursor_ns == 10**9


def test_saves_periodically_while_running(fake: FakeDocker, tmp_path: Path) -> None:
    h = History()
    w = watch(fake, h, tmp_path, persist_seconds=0.05)
    s = fake.streams.get(timeout=10)
    s.q.put(ev("start", "app:1", 10**9))
    wait_for(lambda: "sha256:app1" in history.load(tmp_path).snapshot())
    w.stop()


def test_a_failing_save_is_logged_and_not_fatal(fake: FakeDocker, tmp_path: Path, caplog) -> None:
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    h = History()
    w = watch(fake, h, blocked, persist_seconds=0.05)
    s = fake.streams.get(timeout=10)
    s.q.put(ev("start", "app:1", 10**9))
    with caplog.at_level(logging.WARNING, "fsm_cleaner.watcher"):
        wait_for(lambda: "could not save the use history" in caplog.text)
        s.q.put(ev("start", "app:1", 2 * 10**9))  # still following
        wait_for(lambda: h.snapshot().get("sha256:app1") == Usage(2.0, 2))
    w.stop()


def test_seeds_unknown_images_on_each_subscription(fake: FakeDocker) -> None:
    h = History({"sha256:known": Usage(5.0, 3)})
    seen: list[float] = []

    def seed_inputs(now: float) -> tuple[dict[str, float], list[tuple[str, float]]]:
        seen.append(now)
        return {"sha256:known": 1.0, "sha256:new": 2.0}, [("sha256:new", 4.0)]

    w = watch(fake, h, seed_inputs=seed_inputs)
    fake.streams.get(timeout=10)
    wait_for(lambda: seen)
    w.stop()
    assert h.snapshot() == {"sha256:known": Usage(5.0, 3), "sha256:new": Usage(4.0, 1)}


# ------------------------------------------------------------------ on the real dockerd


def docker_watcher(bed: DockerBed, h: History, state_dir: Path | None) -> tuple[Watcher, DockerEvents]:
    source = DockerEvents(lambda: docker.APIClient(base_url=bed.host, version="auto", timeout=30))
    w = Watcher(h, source.subscribe, source.resolve, state_dir, seed_inputs=source.seed_inputs,
                persist_seconds=0.2, backoff=(0.1, 1.0))
    w.start()
    wait_for(lambda: w.subscriptions)
    return w, source


def test_docker_run_is_recorded(docker_bed: DockerBed, tmp_path: Path) -> None:
    h = History()
    w, _ = docker_watcher(docker_bed, h, tmp_path)
    try:
        image = docker_bed.build_image("fsmtest/app:v1", 1)
        built = wait_for(lambda: h.snapshot().get(image))  # the build's tag event
        assert built.count == 1
        t0 = time.time()
        docker_bed.run_container("fsmtest/app:v1", running=False)  # create, start, die
        used = wait_for(lambda: (u := h.snapshot().get(image)) and u.last_used >= t0 and u.count == 2 and u)
        assert used.last_used <= time.time()
    finally:
        w.stop()
    assert history.load(tmp_path).snapshot()[image] == h.snapshot()[image]  # saved on stop


def test_history_survives_a_watcher_restart_and_catches_up(docker_bed: DockerBed, tmp_path: Path) -> None:
    h = History()
    w, _ = docker_watcher(docker_bed, h, tmp_path)
    image = docker_bed.build_image("fsmtest/app:v1", 1)
    docker_bed.run_container(image, running=False)
    wait_for(lambda: (u := h.snapshot().get(image)) and u.count == 2)
    w.stop()
    # While no watcher runs (an agent restart), the image is run again: the next one replays it.
    docker_bed.run_container("fsmtest/app:v1", running=False)
    h2 = history.load(tmp_path)
    assert h2.snapshot()[image].count == 2
    w2, _ = docker_watcher(docker_bed, h2, tmp_path)
    try:
        wait_for(lambda: h2.snapshot()[image].count == 3)
    finally:
        w2.stop()


def test_corrupt_state_file_is_rebuilt_from_docker(docker_bed: DockerBed, tmp_path: Path, caplog) -> None:
    image = docker_bed.build_image("fsmtest/app:v1", 1)
    docker_bed.run_container(image, running=False)
    [container] = docker_bed.client().containers.list(all=True)
    stopped_at = _epoch(container.attrs["State"]["FinishedAt"])
    (tmp_path / history.FILE_NAME).write_bytes(b'{"version":1,"cursor_ns":17961214')  # torn write
    with caplog.at_level(logging.WARNING, "fsm_cleaner.history"):
        h = history.load(tmp_path)
    assert "rebuilding it" in caplog.text
    w, _ = docker_watcher(docker_bed, h, tmp_path)
    w.stop()
    # Seeded from the stopped container (not just the image's creation), then saved whole.
    seeded = history.load(tmp_path).snapshot()[image]
    assert seeded.count >= 1 and seeded.last_used >= stopped_at


def test_a_dockerd_restart_is_followed_by_a_new_subscription(docker_bed: DockerBed, tmp_path: Path) -> None:
    h = History()
    w, _ = docker_watcher(docker_bed, h, tmp_path)
    try:
        image = docker_bed.build_image("fsmtest/app:v1", 1)
        wait_for(lambda: image in h.snapshot())
        docker_bed.stop_daemon()
        docker_bed.start_daemon()
        wait_for(lambda: w.subscriptions >= 2)
        t0 = time.time()
        docker_bed.run_container("fsmtest/app:v1", running=False)
        wait_for(lambda: (u := h.snapshot().get(image)) and u.last_used >= t0 and u.count == 2)
    finally:
        w.stop()
