"""Real-Docker test bed: a private dockerd on a small loop-mounted ext4 filesystem.

Why a loop filesystem: fsm-cleaner measures how full a filesystem is (blocks and inodes) and
prunes Docker objects to bring it down. A few hundred MB loop fs with a private dockerd whose
data-root lives on it lets tests push usage over thresholds quickly and measure the effect
exactly, without touching the host's Docker (there is none here) or the host disk.

Usage (library; stdlib + the ``docker`` SDK only, no pytest)::

    with DockerBed(Path("/tmp/bed")) as bed:        # start() ... stop()
        img = bed.build_image("fsmtest/app:v1", size_mb=20)
        bed.run_container(img, running=False)
        blocks_pct, inodes_pct = bed.usage()
        client = bed.client()                        # docker.DockerClient on bed.host

Command line (for demos; dockerd keeps running after ``up`` returns)::

    eval "$(python -m devtools.testbed up /tmp/bed --fill)"   # exports DOCKER_HOST, PATH_TO_CHECK
    python -m devtools.testbed status /tmp/bed
    python -m devtools.testbed down /tmp/bed

Requirements: root, loop devices, Debian packages docker.io, containerd, runc, e2fsprogs,
mount, busybox-static. No network is used; images are imported/built locally, never pulled.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import TracebackType

import docker
import docker.errors

log = logging.getLogger("devtools.testbed")

MiB = 1024 * 1024
BASE_REPO = "fsmtest/busybox"
BASE_TAG = f"{BASE_REPO}:latest"
# Applets linked in the base image; enough for `sh -c` scripts that fill disks and idle.
APPLETS = (
    "sh", "ash", "sleep", "true", "false", "dd", "cat", "ls", "echo", "rm", "mkdir", "touch",
    "du", "df", "head", "tail", "wc", "env", "ps", "kill", "printf", "test", "[", "mv", "cp",
    "find", "sync", "uname", "date", "id", "seq", "xargs", "stat",
)
BUSYBOX = Path("/bin/busybox")
# Debian binaries only: /usr/local/bin holds an unrelated, newer docker CLI.
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# Binary -> Debian package that provides it (for actionable error messages).
REQUIRED_TOOLS = {
    "dockerd": "docker.io",
    "containerd": "containerd",
    "runc": "runc",
    "mkfs.ext4": "e2fsprogs",
    "mount": "mount",
    "umount": "mount",
    "losetup": "mount",
}
# sun_path is 108 bytes incl. NUL; the longest socket dockerd puts in its exec-root is
# "<exec-root>/containerd/containerd-debug.sock" (+33 chars), so keep the exec-root short.
MAX_EXEC_ROOT_LEN = 107 - len("/containerd/containerd-debug.sock") - 4
DOCKERD_STOP_GRACE_S = 20.0
START_TIMEOUT_S = 60.0


class TestbedError(RuntimeError):
    """The test bed could not be set up or torn down; the message says what to install/do."""

    __test__ = False  # the name starts with "Test": keep pytest from collecting it


# --------------------------------------------------------------------------------------------
# Prerequisites
# --------------------------------------------------------------------------------------------


def _which(name: str) -> str | None:
    override = os.environ.get("TESTBED_DOCKERD") if name == "dockerd" else None
    if override:  # e.g. a dockerd of another version
        return override if os.access(override, os.X_OK) and os.path.isfile(override) else None
    return shutil.which(name, path=SYSTEM_PATH)


def _is_static_elf(path: Path) -> bool:
    """True if `path` is an ELF executable without a PT_INTERP (dynamic loader) header."""
    with open(path, "rb") as f:
        hdr = f.read(64)
        if hdr[:4] != b"\x7fELF":
            return False
        end = "<" if hdr[5] == 1 else ">"
        if hdr[4] == 2:  # 64-bit
            (phoff,) = struct.unpack_from(end + "Q", hdr, 0x20)
            phentsize, phnum = struct.unpack_from(end + "HH", hdr, 0x36)
        else:
            (phoff,) = struct.unpack_from(end + "I", hdr, 0x1C)
            phentsize, phnum = struct.unpack_from(end + "HH", hdr, 0x2A)
        f.seek(phoff)
        for _ in range(phnum):
            (p_type,) = struct.unpack_from(end + "I", f.read(phentsize))
            if p_type == 3:  # PT_INTERP
                return False
    return True


def check_prerequisites() -> dict[str, str]:
    """Return {tool: path}; raise TestbedError naming every missing piece and its package."""
    problems: list[str] = []
    tools: dict[str, str] = {}
    if os.geteuid() != 0:
        problems.append("must run as root (loop mounts and dockerd need it)")
    for tool, pkg in REQUIRED_TOOLS.items():
        path = _which(tool)
        if path:
            tools[tool] = path
        elif tool == "dockerd" and os.environ.get("TESTBED_DOCKERD"):
            problems.append(f"TESTBED_DOCKERD={os.environ['TESTBED_DOCKERD']} is not an "
                            "executable file (unset it to use docker.io's /usr/sbin/dockerd)")
        else:
            problems.append(f"`{tool}` not found: apt-get install {pkg}")
    if not BUSYBOX.is_file():
        problems.append(f"{BUSYBOX} not found: apt-get install busybox-static")
    elif not _is_static_elf(BUSYBOX.resolve()):
        problems.append(f"{BUSYBOX} is dynamically linked: apt-get install busybox-static")
    if not Path("/dev/loop-control").exists() and not list(Path("/dev").glob("loop[0-9]*")):
        problems.append("no loop devices (/dev/loop-control): `modprobe loop`, or run the "
                        "container --privileged")
    if problems:
        raise TestbedError("docker test bed prerequisites missing:\n  - " + "\n  - ".join(problems))
    return tools


# --------------------------------------------------------------------------------------------
# Process, mount and loop-device helpers
# --------------------------------------------------------------------------------------------


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """True if pid runs. Zombies count as dead: PID 1 in some containers never reaps them."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child (dockerd started by start())
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _terminate(pid: int, grace: float) -> bool:
    """SIGTERM, wait up to `grace` s, then SIGKILL. True once the process is gone."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return True
            time.sleep(0.05)
    return not _alive(pid)


def _mounts_under(prefix: Path) -> list[str]:
    """Mount points at or below `prefix`, in unmount order (reverse of /proc/self/mounts)."""
    p = str(prefix)
    found: list[str] = []
    with open("/proc/self/mounts") as f:
        for line in f:
            mp = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[1])
            if mp == p or mp.startswith(p + "/"):
                found.append(mp)
    return found[::-1]


def _loops_backing(image: Path) -> list[str]:
    """Loop devices whose backing file is `image` (also if it has been deleted meanwhile)."""
    devs: list[str] = []
    for d in Path("/sys/block").glob("loop*"):
        try:
            backing = (d / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        if backing.removesuffix(" (deleted)") == str(image):
            devs.append(f"/dev/{d.name}")
    return devs


def _run(cmd: list[str], what: str) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise TestbedError(f"{what} failed (exit {res.returncode}): {shlex.join(cmd)}\n"
                           f"{(res.stderr or res.stdout).strip()}")


class _RandomReader:
    """File-like of `size` random (incompressible) bytes, generated as tarfile reads them."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return os.urandom(n)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    tar.addfile(info, io.BytesIO(data))


# --------------------------------------------------------------------------------------------
# The bed
# --------------------------------------------------------------------------------------------


class DockerBed:
    """A private dockerd whose data-root is a loop-mounted ext4 of `size_mb` MB / `inodes` inodes.

    Layout under `root`: disk.img (sparse loop file), mnt/ (mountpoint = what the agent measures),
    mnt/docker (data-root), exec/ (exec-root with docker.sock; kept off the loop fs and short
    because of the 108-byte unix socket path limit; moved to /tmp/fsm-testbed-<hash> if `root`
    is too long), dockerd.pid, dockerd.log, daemon.json (instead of /etc/docker/daemon.json).

    Every process is stopped via its pid file and every mount is undone by stop(); start()
    first removes leftovers of a crashed run in the same root and undoes its own partial work
    if it fails.
    """

    def __init__(self, root: Path | str, size_mb: int = 600, inodes: int = 40000,
                 storage_driver: str = "overlay2") -> None:
        self.root = Path(root).resolve()  # canonical, to compare with /proc/self/mounts
        self.size_mb = size_mb
        self.inodes = inodes
        self.storage_driver = storage_driver
        self.disk_image = self.root / "disk.img"
        self.mountpoint = self.root / "mnt"
        self.data_root = self.mountpoint / "docker"
        exec_root = self.root / "exec"
        if len(str(exec_root)) > MAX_EXEC_ROOT_LEN:
            digest = hashlib.sha1(str(self.root).encode()).hexdigest()[:12]
            exec_root = Path(f"/tmp/fsm-testbed-{digest}")
        self.exec_root = exec_root
        self.socket = self.exec_root / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.pidfile = self.root / "dockerd.pid"
        self.logfile = self.root / "dockerd.log"
        self.config_file = self.root / "daemon.json"
        self.key_file = self.root / "key.json"
        self.timings: dict[str, float] = {}
        self.base_id: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._client: docker.DockerClient | None = None

    def __repr__(self) -> str:
        return f"DockerBed(root={str(self.root)!r}, host={self.host!r})"

    def __enter__(self) -> DockerBed:
        return self.start()  # always fresh: tests must not inherit state

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> DockerBed:
        """Create + mount the loop fs and start dockerd; wait until it answers /_ping.

        Always starts fresh (new empty filesystem): whatever still runs or is mounted in this
        root (a crashed run, or a bed from `up`) is stopped and removed first."""
        tools = check_prerequisites()
        t0 = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        self._cleanup(leftovers=True)
        try:
            t_fs = time.monotonic()
            self._make_filesystem(tools)
            t1 = time.monotonic()
            self.timings["mkfs_mount"] = t1 - t_fs
            self._launch_dockerd(tools["dockerd"], self.storage_driver)
            try:
                self._wait_ready()
            except TestbedError:
                if self.storage_driver != "overlay2" or not self._graphdriver_failed():
                    raise
                # Only when overlay2 cannot work on this kernel/fs: vfs is slow and copies
                # whole layers, so usage numbers differ; say so loudly.
                log.warning("overlay2 unusable here, falling back to the vfs storage driver")
                self._stop_dockerd()
                self.storage_driver = "vfs"
                self._launch_dockerd(tools["dockerd"], "vfs")
                self._wait_ready()
            self.timings["dockerd_ready"] = time.monotonic() - t1
        except BaseException:
            try:
                self._cleanup()
            except Exception as e:  # keep the original error; report the cleanup one too
                log.error("cleanup after failed start also failed: %s", e)
            raise
        self.timings["start"] = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Stop dockerd (via pid file), unmount everything, detach the loop device, remove
        disk.img. Idempotent; raises TestbedError if something could not be undone."""
        t0 = time.monotonic()
        try:
            self._cleanup()
        finally:
            self._client = None
            self.timings["stop"] = time.monotonic() - t0

    def dockerd_pid(self) -> int | None:
        """The pid of this bed's dockerd if it is alive (from the pid file), else None."""
        pid = _read_pid(self.pidfile)
        if pid is None and self._proc is not None:
            pid = self._proc.pid  # before dockerd has written its pid file
        if pid is not None and _alive(pid) and self._is_our_dockerd(pid):
            return pid
        return None

    def is_running(self) -> bool:
        """True if this root's dockerd is alive and answers a ping (e.g. from an earlier `up`)."""
        if self.dockerd_pid() is None or not os.path.ismount(self.mountpoint):
            return False
        return self._ping()

    def stop_daemon(self, grace: float = DOCKERD_STOP_GRACE_S) -> None:
        """Stop only dockerd (SIGTERM via its pid file, like `systemctl stop docker` on a node); the
        filesystem stays mounted with its images, and start_daemon() brings the same daemon back.
        dockerd stops the running containers itself (no live-restore); those with a restart policy
        are started again by start_daemon()."""
        pid = self.dockerd_pid()
        if pid is None:
            raise TestbedError(f"dockerd of {self.root} is not running")
        if not _terminate(pid, grace):
            raise TestbedError(f"dockerd pid {pid} survived SIGKILL")
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=1)
            self._proc = None
        self.pidfile.unlink(missing_ok=True)
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None

    def start_daemon(self) -> None:
        """Start dockerd again on the mounted data root after stop_daemon(); waits for /_ping."""
        if self.dockerd_pid() is not None:
            return
        if not os.path.ismount(self.mountpoint):
            raise TestbedError(f"{self.mountpoint} is not mounted; start() the bed first")
        self._launch_dockerd(check_prerequisites()["dockerd"], self.storage_driver)
        self._wait_ready()

    # ---------------------------------------------------------------- docker objects

    def client(self, timeout: int = 120) -> docker.DockerClient:
        """A new docker SDK client for this bed (API version negotiated; 20.10 speaks 1.41)."""
        return docker.DockerClient(base_url=self.host, timeout=timeout)

    def base_image(self) -> str:
        """Import (once per bed) a busybox-static based image; returns its tag BASE_TAG.

        Re-imported if something (e.g. the agent's prune) removed it."""
        api = self._docker()
        with contextlib.suppress(docker.errors.ImageNotFound):
            self.base_id = api.images.get(BASE_TAG).id
            return BASE_TAG
        if not _is_static_elf(BUSYBOX.resolve()):
            raise TestbedError(f"{BUSYBOX} must be static: apt-get install busybox-static")
        tar_path = self.root / "base.tar"

        def owned_by_root(ti: tarfile.TarInfo) -> tarfile.TarInfo:
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"
            return ti

        with tarfile.open(tar_path, "w") as tar:
            for d, mode in (("bin", 0o755), ("tmp", 0o1777), ("etc", 0o755)):
                ti = tarfile.TarInfo(d)
                ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, mode, int(time.time())
                tar.addfile(ti)
            tar.add(str(BUSYBOX.resolve()), arcname="bin/busybox", filter=owned_by_root)
            for applet in APPLETS:
                ti = tarfile.TarInfo(f"bin/{applet}")
                ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, "busybox", 0o777
                tar.addfile(ti)
        try:
            api.api.import_image(src=str(tar_path), repository=BASE_REPO, tag="latest",
                                 changes=["ENV PATH=/bin", 'CMD ["sh"]'])
            self.base_id = api.images.get(BASE_TAG).id
        except docker.errors.DockerException as e:
            raise TestbedError(f"importing the base image failed: {e}") from e
        finally:
            tar_path.unlink(missing_ok=True)
        return BASE_TAG

    def build_image(self, tag: str | None, size_mb: float, files: int = 1) -> str:
        """Build `FROM base; COPY data /data` with `files` random files totalling `size_mb`.

        Legacy builder (what the SDK's images.build speaks), network none. Content is random,
        so every call yields a new image: building a tag twice leaves the first dangling, and
        tag=None yields a dangling image directly. Many small files = inode pressure (each file
        also takes at least one fs block). Returns the image id."""
        if files < 1:
            raise ValueError("files must be >= 1")
        base = self.base_image()
        api = self._docker()
        total = int(size_mb * MiB)
        per_file, extra = divmod(total, files)
        t0 = time.monotonic()
        # Context tar goes to the host disk (root/), not the loop fs being measured.
        with tempfile.TemporaryFile(dir=self.root, prefix="ctx-") as ctx:
            with tarfile.open(fileobj=ctx, mode="w") as tar:
                # Single build step: no intermediate images besides the result.
                _add_bytes(tar, "Dockerfile", f"FROM {base}\nCOPY data /data\n".encode())
                _add_bytes(tar, "data/.nonce", os.urandom(16).hex().encode())  # if size is 0
                for i in range(files):
                    info = tarfile.TarInfo(f"data/f{i:06d}")
                    info.size = per_file + (extra if i == 0 else 0)
                    info.mode, info.mtime = 0o644, int(time.time())
                    tar.addfile(info, _RandomReader(info.size))  # type: ignore[arg-type]
            ctx.seek(0)
            try:
                image, _logs = api.images.build(
                    fileobj=ctx, custom_context=True, tag=tag, rm=True, forcerm=True,
                    network_mode="none", pull=False)
            except docker.errors.BuildError as e:
                build_log = "".join(str(x.get("stream", x.get("error", ""))) for x in e.build_log)
                raise TestbedError(f"building image {tag or '<dangling>'} ({size_mb} MB, "
                                   f"{files} files) failed: {e.msg}\n{build_log[-2000:]}") from e
            except docker.errors.APIError as e:
                raise TestbedError(f"building image {tag or '<dangling>'} failed: {e}") from e
        self.timings["last_build"] = time.monotonic() - t0
        return str(image.id)

    def make_dangling(self, n: int, size_mb: float) -> list[str]:
        """Build `n` untagged images (each `size_mb`); they show up with filter dangling=True."""
        return [self.build_image(None, size_mb) for _ in range(n)]

    def run_container(self, image: str, running: bool = True, name: str | None = None) -> str:
        """Create a container with network none; returns its id.

        running=True: it idles (`sleep 3600`, exits promptly on SIGTERM so stops are fast).
        running=False: it ran `true` and exited (status "exited", code 0)."""
        api = self._docker()
        cmd = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"] if running else ["true"]
        try:
            c = api.containers.run(image, cmd, detach=True, network_mode="none", name=name)
            if running:
                c.reload()
                if c.status != "running":
                    raise TestbedError(f"container {c.short_id} is {c.status}, not running: "
                                       f"{c.logs()[-500:]!r}")
            else:
                code = c.wait(timeout=60).get("StatusCode")
                if code != 0:
                    raise TestbedError(f"container {c.short_id} exited {code}: {c.logs()[-500:]!r}")
        except docker.errors.DockerException as e:
            raise TestbedError(f"running a container from {image} failed: {e}") from e
        return str(c.id)

    def reset(self) -> None:
        """Remove all containers (force) and images except the base image; prune volumes."""
        api = self._docker()
        for c in api.containers.list(all=True):
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True, v=True)
        keep: str | None = None
        with contextlib.suppress(docker.errors.ImageNotFound):
            keep = api.images.get(BASE_TAG).id
        leftover: list[str] = []
        for _ in range(10):  # several passes: a parent can only go once its children are gone
            leftover = [i.id for i in api.images.list(all=True) if i.id != keep]
            if not leftover:
                break
            for image_id in leftover:
                with contextlib.suppress(docker.errors.APIError):  # 404 gone, 409 has children
                    api.images.remove(image_id, force=True)
        else:
            raise TestbedError(f"reset() could not remove images: {leftover}")
        api.volumes.prune()

    def usage(self) -> tuple[float, float]:
        """(percent of blocks used, percent of inodes used) on `mountpoint`, as `df` computes them
        before rounding: used / (used + avail), with used = f_blocks - f_bfree. ext4 keeps some
        clusters back even with `-m 0` (f_bfree > f_bavail), so 1 - f_bavail/f_blocks would differ
        from both `df` and the agent (fsm_cleaner.disk)."""
        if not os.path.ismount(self.mountpoint):
            raise TestbedError(f"{self.mountpoint} is not mounted; start() the bed first")
        st = os.statvfs(self.mountpoint)
        used = st.f_blocks - st.f_bfree
        return (100.0 * used / (used + st.f_bavail), 100.0 * (1 - st.f_ffree / st.f_files))

    # ---------------------------------------------------------------- internals

    def _docker(self) -> docker.DockerClient:
        if self._client is None:
            if self.dockerd_pid() is None:
                raise TestbedError(f"dockerd of {self.root} is not running; call start()")
            self._client = self.client()
        return self._client

    def _ping(self, timeout: int = 2) -> bool:
        if not self.socket.exists():
            return False
        try:
            c = docker.DockerClient(base_url=self.host, timeout=timeout)
            try:
                return bool(c.ping())
            finally:
                c.close()
        except Exception:
            return False

    def _is_our_dockerd(self, pid: int) -> bool:
        # Guards against a recycled pid in a stale pid file.
        cmd = _cmdline(pid)
        return "dockerd" in cmd and str(self.pidfile) in cmd

    def _make_filesystem(self, tools: dict[str, str]) -> None:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with open(self.disk_image, "wb") as f:
            f.truncate(self.size_mb * MiB)  # sparse: instant, host space only as written
        # -m 0: no reserved blocks, so "available" == "free" (what df and the agent see).
        # Eager inode-table/journal init: no ext4lazyinit thread writing behind the tests.
        _run([tools["mkfs.ext4"], "-q", "-F", "-m", "0", "-N", str(self.inodes), "-L", "fsmtest",
              "-E", "lazy_itable_init=0,lazy_journal_init=0", str(self.disk_image)],
             "mkfs.ext4 (e2fsprogs)")
        _run([tools["mount"], "-o", "loop", str(self.disk_image), str(self.mountpoint)],
             "loop mount (needs root and /dev/loop*)")

    def _launch_dockerd(self, dockerd: str, driver: str) -> None:
        self.exec_root.mkdir(parents=True, exist_ok=True)
        # Own config file: ignore the host's /etc/docker/daemon.json. "deprecated-key-path" keeps
        # dockerd 20.10 from creating /etc/docker/key.json (there is no CLI flag for it).
        self.config_file.write_text(json.dumps({"deprecated-key-path": str(self.key_file)}) + "\n")
        self.pidfile.unlink(missing_ok=True)
        cmd = [
            dockerd,
            "--config-file", str(self.config_file),
            "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root),
            "--host", self.host,
            "--pidfile", str(self.pidfile),
            "--storage-driver", driver,
            # No networking at all: containers use network "none"; leave host iptables alone.
            "--iptables=false", "--ip-masq=false", "--bridge=none", "--userland-proxy=false",
        ]
        # Minimal env: no DOCKER_* / TMPDIR leaking in; dockerd finds containerd and runc here.
        env = {"PATH": f"{os.path.dirname(dockerd)}:{SYSTEM_PATH}", "LANG": "C.UTF-8"}
        with open(self.logfile, "wb") as logf:
            # New session + no inherited fds: survives the caller (`up`) and its terminal.
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf,
                                          stderr=subprocess.STDOUT, start_new_session=True,
                                          close_fds=True, env=env, cwd=self.root)
        log.debug("started dockerd pid %d: %s", self._proc.pid, shlex.join(cmd))

    def _wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while True:
            rc = self._proc.poll()
            if rc is not None:
                raise TestbedError(f"dockerd exited with code {rc} during startup "
                                   f"(log: {self.logfile}):\n{self._log_tail()}")
            if self._ping():
                break
            if time.monotonic() > deadline:
                raise TestbedError(f"dockerd did not answer on {self.host} within {timeout:.0f}s "
                                   f"(log: {self.logfile}):\n{self._log_tail()}")
            time.sleep(0.05)
        if _read_pid(self.pidfile) != self._proc.pid:
            raise TestbedError(f"dockerd pid file {self.pidfile} does not hold pid {self._proc.pid}")

    def _graphdriver_failed(self) -> bool:
        with contextlib.suppress(OSError):
            return "error initializing graphdriver" in self.logfile.read_text(errors="replace")
        return False

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.logfile.read_text(errors="replace").splitlines()
        except OSError:
            return "(no dockerd log)"
        # The raw tail is mostly grpc reconnect chatter: show errors and the rest without it.
        text = [x for x in text if "module=grpc" not in x]
        errors = [x for x in text
                  if "level=error" in x or "level=fatal" in x or not x.startswith("time=")]
        return "\n".join(errors[-8:] + ["--- last lines of dockerd.log ---"] + text[-lines:])

    def _stop_dockerd(self) -> list[str]:
        pid = self.dockerd_pid()
        if pid is None:
            stale = _read_pid(self.pidfile)
            if stale is not None and _alive(stale):
                log.warning("pid file %s names pid %d, which is not this bed's dockerd; "
                            "leaving it alone", self.pidfile, stale)
            self.pidfile.unlink(missing_ok=True)  # stale: dead process
        else:
            # dockerd would stop each container with its 10 s stop timeout; kill them first.
            with contextlib.suppress(Exception):
                c = docker.DockerClient(base_url=self.host, timeout=10)
                for ct in c.containers.list():
                    with contextlib.suppress(Exception):
                        ct.kill()
                c.close()
            if not _terminate(pid, DOCKERD_STOP_GRACE_S):
                return [f"dockerd pid {pid} survived SIGKILL"]
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=1)
            self._proc = None
        self.pidfile.unlink(missing_ok=True)
        return []

    def _stray_pids(self) -> list[int]:
        """Processes left by a dockerd that died hard. Never matched by program name, only by
        this bed's unique paths: its containerd and shims (command line holds the exec-root /
        socket) and container processes (they live in another mount namespace whose mounts,
        e.g. the overlay root, reference this bed's data-root)."""
        markers = (f"{self.exec_root}/containerd/", f"unix://{self.socket}")
        data_marker = f"{self.data_root}/"
        own_ns = os.readlink("/proc/self/ns/mnt")
        found: list[int] = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid():
                continue
            pid = int(d.name)
            hit = any(m in _cmdline(pid) for m in markers)
            if not hit:
                with contextlib.suppress(OSError):
                    hit = (os.readlink(d / "ns" / "mnt") != own_ns
                           and data_marker in (d / "mountinfo").read_text(errors="replace"))
            if hit and _alive(pid):
                found.append(pid)
        return found

    def _unmount_all(self, prefix: Path) -> list[str]:
        umount = _which("umount") or "umount"
        for attempt in range(6):
            mps = _mounts_under(prefix)
            if not mps:
                return []
            for mp in mps:
                subprocess.run([umount, mp], capture_output=True, stdin=subprocess.DEVNULL)
            time.sleep(0.1 * attempt)
        for mp in _mounts_under(prefix):  # last resort: detach now, free when no longer busy
            log.warning("lazy-unmounting busy %s", mp)
            subprocess.run([umount, "-l", mp], capture_output=True, stdin=subprocess.DEVNULL)
        return [f"still mounted: {mp}" for mp in _mounts_under(prefix)]

    def _cleanup(self, leftovers: bool = False) -> None:
        """Undo everything start() may have done, in reverse order. With leftovers=True, log
        what a crashed earlier run left behind."""
        if leftovers:
            stale = [x for x in (_read_pid(self.pidfile),) if x is not None]
            mounts = _mounts_under(self.root) + (
                [] if self.exec_root.is_relative_to(self.root) else _mounts_under(self.exec_root))
            loops = _loops_backing(self.disk_image)
            if stale or mounts or loops:
                log.warning("cleaning up leftovers in %s: pidfile %s, mounts %s, loop devices %s",
                            self.root, stale, mounts, loops)
        problems = self._stop_dockerd()
        # dockerd normally stops its containerd; after a SIGKILL it may still be around.
        cpid = _read_pid(self.exec_root / "containerd" / "containerd.pid")
        if cpid is not None and _alive(cpid) and str(self.exec_root) in _cmdline(cpid):
            _terminate(cpid, 5.0)
        for pid in self._stray_pids():
            log.warning("killing stray process %d of this bed: %s", pid, _cmdline(pid)[:200])
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self._stray_pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        problems += self._unmount_all(self.root)
        if not self.exec_root.is_relative_to(self.root):
            problems += self._unmount_all(self.exec_root)
        losetup = _which("losetup") or "losetup"
        for dev in _loops_backing(self.disk_image):
            res = subprocess.run([losetup, "-d", dev], capture_output=True, text=True)
            if res.returncode != 0:  # a lazily unmounted fs still holds it; autoclear frees it
                log.warning("could not detach %s (%s)", dev, res.stderr.strip())
        deadline = time.monotonic() + 2  # detach can complete asynchronously
        while _loops_backing(self.disk_image) and time.monotonic() < deadline:
            time.sleep(0.05)
        for dev in _loops_backing(self.disk_image):
            log.warning("%s stays attached until its last user exits (autoclear)", dev)
        self.disk_image.unlink(missing_ok=True)
        if not _mounts_under(self.exec_root):
            shutil.rmtree(self.exec_root, ignore_errors=True)
        if self.mountpoint.is_dir() and not _mounts_under(self.mountpoint):
            with contextlib.suppress(OSError):
                self.mountpoint.rmdir()
        if problems:
            raise TestbedError(f"could not clean up docker test bed {self.root}: "
                               + "; ".join(problems))


# --------------------------------------------------------------------------------------------
# Demo helpers / command line
# --------------------------------------------------------------------------------------------


def fill(bed: DockerBed, target_percent: float = 65.0) -> dict[str, list[str]]:
    """Populate a bed until ~`target_percent` of blocks are used: 3 tagged images, a tag rebuilt
    4 times (3 dangling + 1 tagged), a stopped and a running container."""
    blocks, _ = bed.usage()
    st = os.statvfs(bed.mountpoint)
    need_mb = (target_percent - blocks) / 100 * st.f_blocks * st.f_frsize / MiB
    if need_mb < 1:
        log.info("already %.0f%% used, not filling", blocks)
        return {}
    tagged_mb, dangling_mb = need_mb * 0.6 / 3, need_mb * 0.4 / 4
    out: dict[str, list[str]] = {"tagged": [], "dangling": [], "containers": []}
    for i in range(3):
        out["tagged"].append(bed.build_image(f"fsmtest/app{i}:v1", tagged_mb))
    for _ in range(4):  # old versions of a tag become dangling, as on a real node
        out["dangling"].append(bed.build_image("fsmtest/web:latest", dangling_mb))
    out["tagged"].append(out["dangling"].pop())
    out["containers"].append(bed.run_container("fsmtest/app0:v1", running=False))
    out["containers"].append(bed.run_container("fsmtest/app1:v1", running=True))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m devtools.testbed",
        description="Private dockerd on a loop-mounted ext4 for fsm-cleaner demos and tests.",
        epilog='Example: eval "$(python -m devtools.testbed up /tmp/bed --fill)"')
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a bed (or report the running one); print exports")
    up.add_argument("root", type=Path)
    up.add_argument("--fill", action="store_true", help="build images/containers to ~65%% use")
    up.add_argument("--size-mb", type=int, default=600)
    up.add_argument("--inodes", type=int, default=40000)
    for name, text in (("down", "stop dockerd, unmount, remove disk.img"),
                       ("status", "report whether the bed runs and its usage")):
        sub.add_parser(name, help=text).add_argument("root", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="testbed: %(message)s", stream=sys.stderr)

    bed = DockerBed(args.root, **({"size_mb": args.size_mb, "inodes": args.inodes}
                                  if args.cmd == "up" else {}))
    try:
        if args.cmd == "up":
            if bed.is_running():
                log.info("already running in %s (dockerd pid %s); not starting again",
                         bed.root, bed.dockerd_pid())
            else:
                bed.start()
                log.info("started in %.1fs (dockerd pid %s, log %s)",
                         bed.timings["start"], bed.dockerd_pid(), bed.logfile)
            if args.fill:
                t0 = time.monotonic()
                if fill(bed):
                    log.info("filled in %.1fs", time.monotonic() - t0)
            blocks, inodes = bed.usage()
            log.info("usage of %s: %.1f%% blocks, %.1f%% inodes", bed.mountpoint, blocks, inodes)
            print(f"export DOCKER_HOST={shlex.quote(bed.host)}")
            print(f"export PATH_TO_CHECK={shlex.quote(str(bed.mountpoint))}")
        elif args.cmd == "down":
            bed.stop()
            log.info("stopped %s in %.1fs; nothing left mounted", bed.root, bed.timings["stop"])
        else:
            if not bed.is_running():
                log.info("not running: %s", bed.root)
                return 3
            blocks, inodes = bed.usage()
            log.info("running: dockerd pid %s, %s, %.1f%% blocks, %.1f%% inodes used",
                     bed.dockerd_pid(), bed.host, blocks, inodes)
    except TestbedError as e:
        print(f"testbed: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
