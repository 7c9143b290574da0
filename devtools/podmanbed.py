"""Real-Podman test bed: a private rootful `podman system service` on a small loop-mounted ext4.

The Podman twin of the dockerd bed (tests/testbed.py), with the same object API, so fixtures can run
the same checks against either runtime: start()/stop(), build_image(), run_container(), reset(),
usage(), client(), stop_daemon()/start_daemon() (dockerd_pid() names the service's pid here).

Layout under `root`: disk.img (sparse loop file), mnt/ (mountpoint = what the agent measures),
mnt/storage (Podman's --root: images, containers, libpod database), podman.pid, podman.log, and a
short exec dir (root/exec, or /tmp/fsm-podbed-<hash> when that is longer than 46 characters: Podman
refuses a runroot longer than 50) with the socket podman.sock, --runroot run/, --tmpdir tmp/, the
events file and the bed's own containers.conf, storage.conf and registries.conf. Nothing of the
host's container configuration is read, and nothing is written outside the bed (no shared-memory
locks, no CNI lock in /etc/cni) except Podman's 64 KiB blob-info cache in /var/lib/containers/cache,
which import and build write there whatever the configuration says.

Podman specifics, each one measured here (Podman 4.3.1, runc 1.1.5, cgroup v1, no systemd):
- runc cannot raise a container's nofile/nproc limits without CAP_SYS_RESOURCE ("error setting rlimit
  type 7: operation not permitted"): containers.conf sets default_ulimits to 4096.
- Podman is daemonless: conmon keeps containers running when the service stops, and the service
  does not stop them. Teardown kills them through the API first, then stops the service by pid, then
  kills whatever still names this bed's runroot (conmon, `podman container cleanup`) or runs on its
  storage, as the dockerd bed does.
- Image references are listed fully qualified: the base image, imported with `podman import`, is
  `localhost/fsmtest/busybox:latest`; images built through the API with tag `fsmtest/app:v1` are
  listed as `docker.io/fsmtest/app:v1` (short names still find both).

Command line (same shape as the dockerd bed)::

    eval "$(python -m devtools.podmanbed up /tmp/pbed --fill)"   # exports DOCKER_HOST, PATH_TO_CHECK
    python -m devtools.podmanbed status /tmp/pbed
    python -m devtools.podmanbed down /tmp/pbed

Requirements: root, loop devices, Debian packages podman (pulls in conmon, runc), e2fsprogs, mount,
busybox-static. No network: images are imported or built locally, never pulled.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import docker
import docker.errors

from devtools.testbed import (
    APPLETS,
    BUSYBOX,
    START_TIMEOUT_S,
    SYSTEM_PATH,
    DockerBed,
    TestbedError,
    _alive,
    _is_static_elf,
    fill,
)

log = logging.getLogger("devtools.podmanbed")

BASE_REF = "localhost/fsmtest/busybox:latest"
REQUIRED_TOOLS = {
    "podman": "podman",
    "conmon": "conmon",
    "runc": "runc",
    "mkfs.ext4": "e2fsprogs",
    "mount": "mount",
    "umount": "mount",
    "losetup": "mount",
}
ULIMITS = ("nofile=4096:4096", "nproc=4096:4096")
# Podman refuses a runroot longer than 50 characters ("the specified runroot is longer than 50
# characters"): conmon's sockets live below it.
MAX_EXEC_ROOT_LEN = 50 - len("/run")


def check_prerequisites() -> dict[str, str]:
    """Return {tool: path}; raise TestbedError naming every missing piece and its package."""
    problems: list[str] = []
    tools: dict[str, str] = {}
    if os.geteuid() != 0:
        problems.append("must run as root (loop mounts and rootful podman need it)")
    for tool, pkg in REQUIRED_TOOLS.items():
        path = shutil.which(tool, path=SYSTEM_PATH)
        if path:
            tools[tool] = path
        else:
            problems.append(f"`{tool}` not found: apt-get install {pkg}")
    if not BUSYBOX.is_file() or not _is_static_elf(BUSYBOX.resolve()):
        problems.append(f"{BUSYBOX} missing or dynamically linked: apt-get install busybox-static")
    if not Path("/dev/loop-control").exists() and not list(Path("/dev").glob("loop[0-9]*")):
        problems.append("no loop devices (/dev/loop-control): `modprobe loop`, or run the "
                        "container --privileged")
    if problems:
        raise TestbedError("podman test bed prerequisites missing:\n  - " + "\n  - ".join(problems))
    return tools


def _argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _toml_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f'"{x}"' for x in items) + "]"


class PodmanBed(DockerBed):
    """A private `podman system service` whose --root is on a loop-mounted ext4 of `size_mb` MB.

    storage_driver: "overlay" (works on the loop ext4 here: native overlay diff, d_type) or "vfs"
    (copies every layer in full, so usage numbers differ from a real node's)."""

    def __init__(self, root: Path | str, size_mb: int = 600, inodes: int = 40000,
                 storage_driver: str = "overlay") -> None:
        super().__init__(root, size_mb, inodes, storage_driver)
        self.data_root = self.mountpoint / "storage"
        exec_root = self.root / "exec"
        if len(str(exec_root)) > MAX_EXEC_ROOT_LEN:
            exec_root = Path(f"/tmp/fsm-podbed-{hashlib.sha1(str(self.root).encode()).hexdigest()[:12]}")
        self.exec_root = exec_root
        self.runroot = exec_root / "run"
        self.tmpdir = exec_root / "tmp"
        self.events_file = exec_root / "events.log"
        self.config_file = exec_root / "containers.conf"
        self.socket = exec_root / "podman.sock"
        self.host = f"unix://{self.socket}"
        self.pidfile = self.root / "podman.pid"
        self.logfile = self.root / "podman.log"

    def __repr__(self) -> str:
        return f"PodmanBed(root={str(self.root)!r}, host={self.host!r})"

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> PodmanBed:
        """Create + mount the loop fs and start the service; wait until it answers /_ping.

        Always fresh: whatever still runs or is mounted in this root is stopped and removed first;
        a failed start undoes its own work before raising."""
        tools = check_prerequisites()
        t0 = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        self._cleanup(leftovers=True)
        try:
            self._make_filesystem(tools)
            t1 = time.monotonic()
            self.timings["mkfs_mount"] = t1 - t0
            self._write_config()
            self._launch_dockerd(tools["podman"], self.storage_driver)
            self._wait_ready()
            self.timings["service_ready"] = time.monotonic() - t1
        except BaseException:
            try:
                self._cleanup()
            except Exception as e:  # keep the original error; report the cleanup one too
                log.error("cleanup after failed start also failed: %s", e)
            raise
        self.timings["start"] = time.monotonic() - t0
        return self

    def start_daemon(self) -> None:
        """Start the service again on the mounted storage after stop_daemon(); waits for /_ping."""
        if self.dockerd_pid() is not None:
            return
        if not os.path.ismount(self.mountpoint):
            raise TestbedError(f"{self.mountpoint} is not mounted; start() the bed first")
        self._launch_dockerd(check_prerequisites()["podman"], self.storage_driver)
        self._wait_ready()

    def podman(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the podman CLI on this bed's storage (beside the service, as Podman allows)."""
        cmd = [shutil.which("podman", path=SYSTEM_PATH) or "podman", *self._global_args(), *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=self._env(),
                              stdin=subprocess.DEVNULL, cwd=self.root, timeout=120)

    # ---------------------------------------------------------------- objects

    def base_image(self) -> str:
        """`podman import` (once per bed) of a busybox-static tarball; returns BASE_REF.

        Re-imported if something (e.g. the agent's prune) removed it."""
        api = self._docker()
        with contextlib.suppress(docker.errors.ImageNotFound):
            self.base_id = api.images.get(BASE_REF).id
            return BASE_REF
        tar_path = self.tmpdir / "base.tar"

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
            res = self.podman("import", "--change", "ENV PATH=/bin", "--change", 'CMD ["sh"]',
                              str(tar_path), BASE_REF)
        finally:
            tar_path.unlink(missing_ok=True)
        if res.returncode != 0:
            raise TestbedError(f"podman import of the base image failed: {res.stderr.strip()}")
        self.base_id = api.images.get(BASE_REF).id
        return BASE_REF

    def reset(self) -> None:
        """Remove all containers and every image but the base image (force); prune volumes."""
        api = self._docker()
        for c in api.containers.list(all=True):
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True, v=True)
        keep: str | None = None
        with contextlib.suppress(docker.errors.ImageNotFound):
            keep = api.images.get(BASE_REF).id
        # One pass: Podman removes an image whatever depends on it (its layers stay with the child).
        for image in api.images.list(all=True):
            if image.id != keep:
                with contextlib.suppress(docker.errors.NotFound):
                    api.images.remove(image.id, force=True)
        api.volumes.prune()

    # ---------------------------------------------------------------- internals (DockerBed's hooks)

    def _global_args(self) -> list[str]:
        return ["--root", str(self.data_root), "--runroot", str(self.runroot),
                "--tmpdir", str(self.tmpdir), "--storage-driver", self.storage_driver]

    def _env(self) -> dict[str, str]:
        # Only the bed's own configuration files; TMPDIR keeps build contexts and the compat API's
        # save/load archives (which Podman 4.3 leaves behind) inside the bed.
        return {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", "TMPDIR": str(self.tmpdir),
                "CONTAINERS_CONF": str(self.config_file),
                "CONTAINERS_STORAGE_CONF": str(self.exec_root / "storage.conf"),
                "CONTAINERS_REGISTRIES_CONF": str(self.exec_root / "registries.conf")}

    def _write_config(self) -> None:
        for d in (self.exec_root, self.tmpdir, self.exec_root / "cni"):
            d.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            "[containers]\n"
            f"default_ulimits = {_toml_list(ULIMITS)}\n"
            'netns = "none"\n'
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'  # no systemd in this container
            'events_logger = "file"\n'
            f'events_logfile_path = "{self.events_file}"\n'
            f'image_copy_tmp_dir = "{self.tmpdir}"\n'
            # File locks under --tmpdir instead of the host-wide /libpod_lock shared-memory segment,
            # which every new runtime's first start would reset under another bed's feet.
            'lock_type = "file"\n'
            "[network]\n"
            f'network_config_dir = "{self.exec_root / "cni"}"\n')
        (self.exec_root / "storage.conf").write_text(
            f'[storage]\ndriver = "{self.storage_driver}"\n'
            f'graphroot = "{self.data_root}"\nrunroot = "{self.runroot}"\n')
        (self.exec_root / "registries.conf").write_text("unqualified-search-registries = []\n")

    def _launch_dockerd(self, podman: str, driver: str) -> None:
        self.storage_driver = driver
        self.pidfile.unlink(missing_ok=True)
        cmd = [podman, *self._global_args(), "system", "service", "--time", "0", self.host]
        with open(self.logfile, "ab") as logf:
            # New session + no inherited fds: survives the caller (`up`) and its terminal.
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf,
                                          stderr=subprocess.STDOUT, start_new_session=True,
                                          close_fds=True, env=self._env(), cwd=self.root)
        self.pidfile.write_text(f"{self._proc.pid}\n")  # the service has no --pidfile
        log.debug("started podman service pid %d: %s", self._proc.pid, shlex.join(cmd))

    def _wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while not self._ping():
            rc = self._proc.poll()
            if rc is not None:
                raise TestbedError(f"podman system service exited with code {rc} during startup "
                                   f"(log: {self.logfile}):\n{self._log_tail()}")
            if time.monotonic() > deadline:
                raise TestbedError(f"podman did not answer on {self.host} within {timeout:.0f}s "
                                   f"(log: {self.logfile}):\n{self._log_tail()}")
            time.sleep(0.02)

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no podman.log)"

    def _is_our_dockerd(self, pid: int) -> bool:
        # Guards against a recycled pid in a stale pid file.
        argv = _argv(pid)
        return "service" in argv and str(self.runroot) in argv

    def _stray_pids(self) -> list[int]:
        """Processes left after the service stopped or died: conmon and `podman container cleanup`
        name this bed's runroot in an argument; container processes live in another mount namespace
        whose mounts reference this bed's storage. Never matched by program name."""
        runroot, data = str(self.runroot), f"{self.data_root}/"
        own_ns = os.readlink("/proc/self/ns/mnt")
        found: list[int] = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid():
                continue
            pid = int(d.name)
            hit = any(a == runroot or a.startswith(runroot + "/") for a in _argv(pid))
            if not hit:
                with contextlib.suppress(OSError):
                    hit = (os.readlink(d / "ns" / "mnt") != own_ns
                           and data in (d / "mountinfo").read_text(errors="replace"))
            if hit and _alive(pid):
                found.append(pid)
        return found


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m devtools.podmanbed",
        description="Private rootful podman service on a loop-mounted ext4 for fsm-cleaner demos and tests.",
        epilog='Example: eval "$(python -m devtools.podmanbed up /tmp/pbed --fill)"')
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a bed (or report the running one); print exports")
    up.add_argument("root", type=Path)
    up.add_argument("--fill", action="store_true", help="build images/containers to ~65%% use")
    up.add_argument("--size-mb", type=int, default=600)
    up.add_argument("--inodes", type=int, default=40000)
    up.add_argument("--storage-driver", choices=("overlay", "vfs"), default="overlay")
    for name, text in (("down", "stop containers and the service, unmount, remove disk.img"),
                       ("status", "report whether the bed runs and its usage")):
        sub.add_parser(name, help=text).add_argument("root", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="podmanbed: %(message)s", stream=sys.stderr)

    bed = PodmanBed(args.root, **({"size_mb": args.size_mb, "inodes": args.inodes,
                                   "storage_driver": args.storage_driver} if args.cmd == "up" else {}))
    try:
        if args.cmd == "up":
            if bed.is_running():
                log.info("already running in %s (podman pid %s); not starting again",
                         bed.root, bed.dockerd_pid())
            else:
                bed.start()
                log.info("started in %.1fs (podman pid %s, %s driver, log %s)", bed.timings["start"],
                         bed.dockerd_pid(), bed.storage_driver, bed.logfile)
                try:
                    if args.fill:
                        t0 = time.monotonic()
                        if fill(bed):
                            log.info("filled in %.1fs", time.monotonic() - t0)
                except BaseException:
                    bed.stop()  # a bed that failed to come up as asked leaves nothing behind
                    raise
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
            log.info("running: podman pid %s, %s, %.1f%% blocks, %.1f%% inodes used",
                     bed.dockerd_pid(), bed.host, blocks, inodes)
    except TestbedError as e:
        print(f"podmanbed: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
