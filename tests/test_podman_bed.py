"""The Podman test bed (devtools/podmanbed.py), and what Podman's Docker-compatible API answers.

The compatibility tests talk to a real Podman 4.3 service through the project's Docker port
(fsm_cleaner.docker_runtime.Docker on a docker.APIClient), and each asserts an answer that a runtime
port for Podman relies on, wherever it differs from dockerd 20.10 (noted per test). Needs root, loop
devices and podman; skipped with the reason when the bed cannot start, except under CI=true, where
that is a failure.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from devtools import podmanbed
from devtools.podmanbed import BASE_REF, PodmanBed
from devtools.testbed import TestbedError, _alive, _loops_backing
from fsm_cleaner.docker_runtime import Docker, Removed
from fsm_cleaner.plan import Image

REPO = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


def _bare(image_id: str) -> str:
    return image_id.removeprefix("sha256:")


def _mounted_under(path: Path) -> list[str]:
    with open("/proc/mounts") as f:
        return [line for line in f if str(path) in line]


def _used_bytes(bed: PodmanBed) -> int:
    os.sync()
    st = os.statvfs(bed.mountpoint)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _assert_gone(bed: PodmanBed, pid: int | None = None) -> None:
    assert _mounted_under(bed.root) == []
    assert _mounted_under(bed.exec_root) == []
    assert _loops_backing(bed.disk_image) == []
    assert bed.dockerd_pid() is None
    if pid is not None:
        assert not _alive(pid), f"podman service {pid} still alive"
    assert bed._stray_pids() == []
    assert not bed.exec_root.exists()
    assert {p.name for p in bed.root.iterdir()} <= {"podman.log"}  # the log stays for post-mortems


def _build_from(api: docker.APIClient, parent: str, tag: str) -> str:
    """A one-step build FROM `parent` (rm=True, as builders do); returns the image id."""
    ctx = io.BytesIO()
    with tarfile.open(fileobj=ctx, mode="w") as tar:
        for name, data in (("Dockerfile", f"FROM {parent}\nCOPY x /x\n".encode()), ("x", os.urandom(64))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    ctx.seek(0)
    out = list(api.build(fileobj=ctx, custom_context=True, tag=tag, rm=True, forcerm=True,
                         network_mode="none", pull=False, decode=True))
    return next(o["aux"]["ID"] for o in out if "aux" in o)


@pytest.fixture(scope="module")
def pbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodmanBed]:
    bed = PodmanBed(tmp_path_factory.mktemp("pbed"), size_mb=400, inodes=20000)
    try:
        bed.start()
    except TestbedError as e:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"podman test bed unavailable: {e}", pytrace=False)
        pytest.skip(f"podman test bed unavailable: {e}")
    yield bed
    bed.stop()


@pytest.fixture
def clean(pbed: PodmanBed) -> PodmanBed:
    pbed.reset()
    pbed.base_image()
    return pbed


@pytest.fixture
def port(clean: PodmanBed) -> Iterator[Docker]:
    api = docker.APIClient(base_url=clean.host, version="auto", timeout=60)
    yield Docker(lambda: api)
    api.close()


# ------------------------------------------------------------------------------------ the bed


def test_missing_tool_names_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(podmanbed.REQUIRED_TOOLS, "no-such-tool-xyz", "some-debian-pkg")
    with pytest.raises(TestbedError, match="apt-get install some-debian-pkg"):
        podmanbed.check_prerequisites()


def test_long_root_moves_sockets_to_tmp() -> None:
    bed = PodmanBed(Path("/tmp") / ("deep-" * 30))
    assert str(bed.exec_root).startswith("/tmp/fsm-podbed-")
    assert len(str(bed.runroot)) <= 50  # Podman's limit
    assert bed.exec_root == PodmanBed(Path("/tmp") / ("deep-" * 30)).exec_root  # stable for `down`


def test_base_image_and_container_limits(clean: PodmanBed) -> None:
    # Containers start only because the bed's containers.conf lowers the default ulimits.
    client = clean.client()
    out = client.containers.run(BASE_REF, ["sh", "-c", "ulimit -n; ulimit -u"], network_mode="none",
                                remove=True)
    assert out.split() == [b"4096", b"4096"]
    assert client.info()["Driver"] == "overlay"
    assert client.images.get(BASE_REF).attrs["Config"]["Env"] == ["PATH=/bin"]


def test_start_failure_cleans_up(pbed: PodmanBed, tmp_path: Path) -> None:
    broken = PodmanBed(tmp_path / "broken", size_mb=100, storage_driver="no-such-driver")
    with pytest.raises(TestbedError, match="podman system service exited") as err:
        broken.start()
    assert "no-such-driver" in str(err.value)  # the podman.log tail is in the message
    _assert_gone(broken)


def test_crash_recovery_kills_what_the_service_left(pbed: PodmanBed, tmp_path: Path) -> None:
    other = PodmanBed(tmp_path / "other", size_mb=200, inodes=10000)
    try:
        other.start()
        theirs = other.run_container(other.base_image())
        mine = pbed.run_container(pbed.base_image())
        pid = other.dockerd_pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.05)
        # Daemonless: the container runs on under conmon, its storage stays mounted.
        assert other._stray_pids() and _mounted_under(other.root)

        again = PodmanBed(other.root, size_mb=200, inodes=10000).start()  # cleans the leftovers
        assert theirs not in {c.id for c in again.client().containers.list(all=True)}
        again.stop()
        _assert_gone(again, pid)
    finally:
        other.stop()
    assert pbed.client().containers.get(mine).status == "running"  # the other bed left ours alone


def test_cli_up_fill_status_down(pbed: PodmanBed, tmp_path: Path) -> None:
    root = tmp_path / "cli"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "devtools.podmanbed", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=300)

    probe = PodmanBed(root)
    try:
        up = cli("up", str(root), "--size-mb", "200", "--fill")
        assert up.returncode == 0, up.stderr
        assert f"export DOCKER_HOST=unix://{probe.socket}" in up.stdout
        assert f"export PATH_TO_CHECK={probe.mountpoint}" in up.stdout
        assert probe.usage()[0] > 60  # --fill aims at 65 %
        pid = probe.dockerd_pid()
        assert pid is not None and probe.is_running()  # outlived the CLI process
        status = cli("status", str(root))
        assert status.returncode == 0 and f"podman pid {pid}" in status.stderr

        down = cli("down", str(root))
        assert down.returncode == 0, down.stderr
        _assert_gone(probe, pid)
        assert cli("status", str(root)).returncode == 3
    finally:
        probe.stop()


# ------------------------------------------------------------------------------------ compatibility


def test_version_tells_podman_from_docker(port: Docker) -> None:
    v = port.api.version()
    # dockerd 20.10 (Debian): Components[0].Name "Engine", Platform.Name "".
    assert v["Components"][0]["Name"] == "Podman Engine"
    assert v["Components"][0]["Version"].startswith("4.")
    assert v["Platform"]["Name"].startswith("linux/")
    assert v["ApiVersion"] == "1.41" and port.api.api_version == "1.41"


def test_ping(port: Docker) -> None:
    port.ping()
    r = port.api._get(port.api._url("/_ping"))
    assert (r.status_code, r.text) == (200, "OK")
    # A version-free tell: dockerd answers Server "Docker/20.10.24+dfsg1 (linux)" and no Libpod header.
    assert r.headers["Libpod-Api-Version"].startswith("4.")
    assert r.headers["Server"].startswith("Libpod/")


def test_stopped_container_listing_rejects_dead(port: Docker, clean: PodmanBed) -> None:
    clean.run_container(BASE_REF, running=False)
    with pytest.raises(docker.errors.APIError, match="unknown container state: dead") as err:
        port.stopped_containers()  # filters status exited, created, dead
    assert err.value.status_code == 500
    found = port.api.containers(all=True, size=True, filters={"status": ["exited", "created"]})
    assert len(found) == 1 and found[0]["SizeRw"] > 0


def test_container_prune_counts_and_bytes(port: Docker, clean: PodmanBed) -> None:
    ids = set()
    for script in ("dd if=/dev/zero of=/f bs=1024 count=1024", "true"):
        c = port.api.create_container(BASE_REF, ["sh", "-c", script],
                                      host_config=port.api.create_host_config(network_mode="none"))
        port.api.start(c["Id"])
        assert port.api.wait(c["Id"])["StatusCode"] == 0
        ids.add(c["Id"])
    running = clean.run_container(BASE_REF)
    listed = port.api.containers(all=True, size=True, filters={"status": ["exited"]})
    listed_bytes = sum(c["SizeRw"] for c in listed)
    assert listed_bytes >= MiB

    raw = port.api.prune_containers()
    assert set(raw["ContainersDeleted"]) == ids  # full ids, as dockerd gives them
    assert raw["SpaceReclaimed"] == listed_bytes  # the rw layers, as dockerd counts them
    assert [c["Id"] for c in port.api.containers(all=True)] == [running]
    assert port.prune_containers() == Removed(0, 0)  # nothing left: "ContainersDeleted" is None


def test_dangling_prune_answers_bare_ids_and_counts_shared_layers(port: Docker, clean: PodmanBed) -> None:
    clean.build_image("fsmtest/keep:1", 1)  # keeps the base layer in use
    made = set(clean.make_dangling(2, 2))
    listed = port.dangling_images(older_than=0)
    assert {i.id for i in listed} == made
    base_size = port.api.inspect_image(BASE_REF)["Size"]
    before = _used_bytes(clean)

    raw = port.api.prune_images(filters={"dangling": True})
    freed = before - _used_bytes(clean)
    deleted = [d["Deleted"] for d in raw["ImagesDeleted"]]
    # dockerd: "sha256:<id>" for each image and each removed layer; Podman: the bare id, images only.
    # This is why the port's count (listed ids & deleted ids) comes out 0.
    assert not any(d.startswith("sha256:") for d in deleted)
    assert {f"sha256:{d}" for d in deleted} == made
    assert port.dangling_images(older_than=0) == []
    # SpaceReclaimed is the sum of the listed image sizes, each counting the shared base layer that
    # stays on disk; dockerd reports the bytes of the layers it removed.
    assert raw["SpaceReclaimed"] == sum(i.size for i in listed)
    assert raw["SpaceReclaimed"] - freed > base_size


def test_image_listing_fully_qualified_refs(port: Docker, clean: PodmanBed) -> None:
    app = clean.build_image("fsmtest/app:v1", 1)
    dangling = clean.build_image(None, 1)
    clean.run_container(BASE_REF)
    images = {i.id: i for i in port.images()}
    assert images[clean.base_id].tags == (BASE_REF,)
    assert images[app].tags == ("docker.io/fsmtest/app:v1",)  # dockerd lists "fsmtest/app:v1"
    assert images[dangling].tags == ()
    rows = {r["Id"]: r for r in port.api.images()}
    assert rows[dangling]["RepoTags"] is None and rows[dangling]["Dangling"] is True
    assert rows[clean.base_id]["Containers"] == 1  # dockerd: -1 unless asked through /system/df
    # Short names still find both, whichever prefix the listing shows.
    assert port.api.inspect_image("fsmtest/app:v1")["Id"] == app
    assert port.api.inspect_image("fsmtest/busybox:latest")["Id"] == clean.base_id


def test_image_parents_are_bare_ids_without_intermediates(port: Docker, clean: PodmanBed) -> None:
    app = clean.build_image("fsmtest/app:v1", 1)
    assert port.image_parents() == {app: _bare(clean.base_id)}  # dockerd: "sha256:<parent>"
    assert {r["Id"] for r in port.api.images(all=True)} == {r["Id"] for r in port.api.images()}


def test_remove_image_in_use_is_409(port: Docker, clean: PodmanBed) -> None:
    app = clean.build_image("fsmtest/app:v1", 1)
    clean.run_container("fsmtest/app:v1", running=False)
    clean.run_container(BASE_REF)
    # One message for running and stopped users (dockerd: "must be forced" vs "cannot be forced").
    kept = port.remove_image(Image(id=app, created=0, size=0, tags=("docker.io/fsmtest/app:v1",)))
    assert kept is not None and "image is in use by a container" in kept
    with pytest.raises(docker.errors.APIError, match="image is in use by a container") as err:
        port.api.remove_image(BASE_REF)
    assert err.value.status_code == 409
    assert {r["Id"] for r in port.api.images()} >= {app, clean.base_id}


def test_remove_image_with_two_tags(port: Docker, clean: PodmanBed) -> None:
    app = clean.build_image("fsmtest/app:v1", 1)
    port.api.tag(app, "fsmtest/app", "v2")
    with pytest.raises(docker.errors.APIError, match="by ID with more than one tag") as err:
        port.api.remove_image(app)
    assert err.value.status_code == 500  # dockerd: 409 "(must be forced) - image is referenced ..."
    image = next(i for i in port.images() if i.id == app)
    # The Docker port forces after a fresh look; on Podman that force would also remove containers
    # created meanwhile, which is why the Podman port (test_podman_runtime.py) untags instead.
    assert port.remove_image(image) is None
    assert app not in {r["Id"] for r in port.api.images(all=True)}


def test_force_removes_the_containers_using_the_image(port: Docker, clean: PodmanBed) -> None:
    # dockerd: force untags an image a stopped container uses and refuses (409) one a running container
    # uses; Podman removes the containers, running ones included. Why the Podman port never forces.
    app = clean.build_image("fsmtest/app:v1", 1)
    clean.run_container(app, running=False)
    clean.run_container(app)
    port.api.remove_image(app, force=True)
    assert port.api.containers(all=True) == []
    assert app not in {r["Id"] for r in port.api.images(all=True)}


def test_remove_parent_drops_its_record_but_frees_nothing(port: Docker, clean: PodmanBed) -> None:
    parent = clean.build_image("fsmtest/parent:1", 2)
    child = _build_from(port.api, "fsmtest/parent:1", "fsmtest/child:1")
    before = _used_bytes(clean)
    answer = port.api.remove_image("docker.io/fsmtest/parent:1")
    # dockerd answers the same but keeps the parent, untagged, in images(all=True).
    assert answer == [{"Untagged": "docker.io/fsmtest/parent:1"}]
    rows = {r["Id"]: r for r in port.api.images(all=True)}
    assert parent not in rows
    assert rows[child]["ParentId"] == ""
    assert before - _used_bytes(clean) < MiB  # the 2 MiB layer stays: the child uses it


def test_system_df(port: Docker, clean: PodmanBed) -> None:
    app = clean.build_image("fsmtest/app:v1", 3)
    clean.run_container(BASE_REF)
    df = port.api.df()
    rows = {f"sha256:{r['Id']}": r for r in df["Images"]}  # bare ids; dockerd: "sha256:<id>"
    listed = {r["Id"]: r for r in port.api.images()}
    base_size = listed[clean.base_id]["Size"]
    assert set(rows) == set(listed)
    assert rows[app]["Size"] == listed[app]["Size"]
    assert rows[app]["SharedSize"] == base_size
    assert 3 * MiB <= rows[app]["Size"] - rows[app]["SharedSize"] < 3 * MiB + 64 * 1024
    assert rows[app]["RepoTags"] == ["v1"]  # the tag part only: key df rows by id, never by tag
    assert rows[clean.base_id]["Containers"] == 1
    assert (df["BuildCache"], df["BuilderSize"], df["LayersSize"]) == ([], 0, 0)  # dockerd: real LayersSize


def test_build_prune_is_404(port: Docker) -> None:
    with pytest.raises(docker.errors.NotFound) as err:
        port.api.prune_builds()
    assert err.value.status_code == 404


def _events_until(api: docker.APIClient, since: int, last: Callable[[dict], bool],
                  **filters: list[str]) -> list[dict]:
    """Replay events since `since` and follow the stream until `last(event)` is true. The stream has
    no read timeout; a guard closes it after 60 s so that a missing event fails instead of hanging."""
    stream = api.events(since=since, filters=filters or None, decode=True)
    guard = threading.Timer(60, stream.close)
    guard.start()
    seen: list[dict] = []
    with contextlib.suppress(Exception):  # what reading a closed stream raises varies
        for e in stream:
            seen.append(e)
            if last(e):
                guard.cancel()
                return seen
    guard.cancel()
    pytest.fail(f"the awaited event did not come; saw {[(e['Action'], e.get('id')) for e in seen]}")


def _name(e: dict) -> str:
    return e["Actor"]["Attributes"].get("name", "")


def test_events(port: Docker, clean: PodmanBed, tmp_path: Path) -> None:
    api = port.api
    since = int(time.time())
    base = _bare(clean.base_id)
    c = api.create_container(BASE_REF, ["true"], host_config=api.create_host_config(network_mode="none"))
    api.start(c["Id"])
    api.wait(c["Id"])
    with pytest.raises(docker.errors.APIError) as err:
        api.remove_image(BASE_REF)
    assert err.value.status_code == 409  # a container uses it
    api.tag(BASE_REF, "fsmtest/evtag", "1")
    tar = tmp_path / "rootfs.tar"
    with tarfile.open(tar, "w") as t:
        info = tarfile.TarInfo("hello")
        info.size = 2
        t.addfile(info, io.BytesIO(b"hi"))
    api.import_image(src=str(tar), repository="fsmtest/evimp", tag="1")
    imported = api.inspect_image("fsmtest/evimp:latest")["Id"]  # Podman 4.3 ignores the import's tag
    api.load_image(b"".join(api.get_image(BASE_REF)))
    api.pull("localhost:1/nothing", tag="x")  # fails at once: nothing listens on port 1
    api.tag(BASE_REF, "fsmtest/sentinel", "1")

    seen = {(e["Type"], e["Action"], e.get("id", ""), _name(e))
            for e in _events_until(api, since, lambda e: _name(e) == "docker.io/fsmtest/sentinel:1")}
    name = next(x[3] for x in seen if x[2] == c["Id"])
    for action in ("create", "init", "start", "die"):  # "init" is Podman's; dockerd has no such event
        assert ("container", action, c["Id"], name) in seen
    # The refused (409) removal is still announced as "delete"; the image is there.
    assert ("image", "delete", base, BASE_REF) in seen
    assert api.inspect_image(BASE_REF)["Id"] == clean.base_id
    assert ("image", "tag", base, "docker.io/fsmtest/evtag:1") in seen  # bare id; dockerd "sha256:"
    assert any(x[:3] == ("image", "tag", _bare(imported)) and x[3].startswith("docker.io/fsmtest/evimp")
               for x in seen)  # the import shows as a tag of the new image
    assert not any(x[1] in ("import", "load") for x in seen)  # dockerd sends "import" and "load"
    assert any(x[:3] == ("image", "loadfromarchive", "") for x in seen)  # no image id at all
    assert ("image", "pull", "", "localhost:1/nothing:x") in seen  # sent although the pull failed


def test_events_replay_survives_a_service_restart(port: Docker, clean: PodmanBed) -> None:
    # dockerd replays only what it holds in memory, and nothing after a restart.
    since = int(time.time())
    port.api.tag(BASE_REF, "fsmtest/before-restart", "1")
    # Podman writes image events asynchronously: wait until this one is out before stopping.
    _events_until(port.api, since, lambda e: _name(e) == "docker.io/fsmtest/before-restart:1")
    clean.stop_daemon()
    clean.start_daemon()
    api = docker.APIClient(base_url=clean.host, version="auto", timeout=60)
    try:
        api.tag(BASE_REF, "fsmtest/after-restart", "1")
        replay = _events_until(api, since, lambda e: _name(e) == "docker.io/fsmtest/after-restart:1",
                               type=["image"])
        assert "docker.io/fsmtest/before-restart:1" in [_name(e) for e in replay]
    finally:
        api.close()


def test_stop_leaves_nothing(pbed: PodmanBed) -> None:
    # Last in this module: stops the shared bed (fixture teardown then stops it again).
    pbed.run_container(pbed.base_image())  # the service does not stop containers: stop() must
    pid = pbed.dockerd_pid()
    assert pid is not None
    pbed.stop()
    _assert_gone(pbed, pid)
    pbed.stop()  # idempotent
