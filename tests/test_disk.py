"""Behaviour of the disk port: what an operator comparing with df/du would notice."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fsm_cleaner import disk
from fsm_cleaner.disk import FsStats, du_tree, fs_stats, tree_bytes, walk_tree

HAVE_GNU_DU = (
    shutil.which("du") is not None
    and b"GNU" in subprocess.run(["du", "--version"], capture_output=True).stdout
)

needs_du = pytest.mark.skipif(not HAVE_GNU_DU, reason="GNU du not on PATH: apt-get install coreutils")


def _du_or_fail(path: str) -> int:
    tree = du_tree(path)
    assert tree is not None, "du path unexpectedly fell back"
    return tree.bytes


def walk_tree_bytes(path: str) -> int:
    return walk_tree(path).bytes


# Every counting rule must hold for the public entry point and for both implementations.
COUNTERS: list = [
    pytest.param(tree_bytes, id="tree_bytes"),
    pytest.param(walk_tree_bytes, id="python-walk"),
    pytest.param(_du_or_fail, id="du", marks=needs_du),
]


def blocks(path: Path) -> int:
    return os.lstat(path).st_blocks * 512


def write(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


@pytest.mark.parametrize("count", COUNTERS)
def test_hard_links_counted_once(tmp_path: Path, count: Callable[[str], int]) -> None:
    original = write(tmp_path / "a" / "big", 256 * 1024)
    (tmp_path / "b").mkdir()
    for i in range(3):
        os.link(original, tmp_path / "b" / f"link{i}")
    expected = sum(blocks(p) for p in (tmp_path, tmp_path / "a", tmp_path / "b", original))

    assert count(str(tmp_path)) == expected


@pytest.mark.parametrize("count", COUNTERS)
def test_sparse_file_counts_allocated_blocks(tmp_path: Path, count: Callable[[str], int]) -> None:
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as f:
        f.truncate(100 << 20)
        f.write(b"x" * 8192)
    assert sparse.stat().st_size == 100 << 20

    total = count(str(tmp_path))

    assert total == blocks(tmp_path) + blocks(sparse)
    assert total < 1 << 20


@pytest.mark.parametrize("count", COUNTERS)
def test_symlinks_not_followed(tmp_path: Path, count: Callable[[str], int]) -> None:
    outside = write(tmp_path / "outside" / "big", 512 * 1024)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "to_file").symlink_to(outside)
    (tree / "to_dir").symlink_to(outside.parent, target_is_directory=True)
    (tree / "dangling").symlink_to(tmp_path / "nowhere")

    expected = blocks(tree) + sum(blocks(tree / n) for n in ("to_file", "to_dir", "dangling"))
    assert count(str(tree)) == expected


@pytest.mark.parametrize("count", COUNTERS)
def test_path_that_is_a_file(tmp_path: Path, count: Callable[[str], int]) -> None:
    f = write(tmp_path / "f", 10_000)
    assert count(str(f)) == blocks(f)


def test_missing_path_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        tree_bytes(str(tmp_path / "nope"))


def build_mixed_tree(root: Path) -> None:
    """Nested dirs, sizes from empty to multi-block, hard links across dirs and to a file
    outside the tree, sparse file, symlinks, an empty dir and a fifo."""
    for i in range(60):
        write(root / f"d{i % 4}" / f"e{i % 3}" / f"f{i}", (i * 977) % 20_000)
    os.link(root / "d0" / "e0" / "f0", root / "d1" / "hard0")
    os.link(root / "d0" / "e0" / "f0", root / "d2" / "e1" / "hard1")
    outside = write(root.parent / f"{root.name}-outside", 40_000)
    os.link(outside, root / "d3" / "hard_to_outside")
    with open(root / "sparse", "wb") as f:
        f.seek(10 << 20)
        f.write(b"z")
    (root / "d0" / "sym").symlink_to("../d1")
    (root / "empty").mkdir()
    os.mkfifo(root / "fifo")


@needs_du
def test_du_and_python_walk_agree(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    build_mixed_tree(tree)

    assert _du_or_fail(str(tree)) == walk_tree_bytes(str(tree))
    # tree_bytes goes through du here; it must not matter which path was taken.
    assert tree_bytes(str(tree)) == walk_tree_bytes(str(tree))


class _ListedThen:
    """Stand-in for os.scandir's iterator: entries already read, then a side effect runs,
    so the walker sees names whose files are gone - the race with Docker deleting layers,
    made deterministic."""

    def __init__(self, entries: list[os.DirEntry[str]]) -> None:
        self._entries = entries

    def __enter__(self) -> _ListedThen:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __iter__(self) -> Iterator[os.DirEntry[str]]:
        return iter(self._entries)


def test_files_vanishing_mid_walk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keep = write(tmp_path / "layer" / "keep", 50_000)
    write(tmp_path / "layer" / "gone_file", 50_000)
    write(tmp_path / "layer" / "gone_dir" / "inner", 50_000)
    real_scandir = os.scandir

    def racing_scandir(path: str) -> _ListedThen:
        with real_scandir(path) as it:
            entries = list(it)
        if path == str(tmp_path / "layer"):  # the names are listed; now Docker deletes
            os.unlink(tmp_path / "layer" / "gone_file")
            os.unlink(tmp_path / "layer" / "gone_dir" / "inner")
            os.rmdir(tmp_path / "layer" / "gone_dir")
        return _ListedThen(entries)

    monkeypatch.setattr(disk.os, "scandir", racing_scandir)

    total = walk_tree_bytes(str(tmp_path))

    assert total == blocks(tmp_path) + blocks(tmp_path / "layer") + blocks(keep)


def test_unreadable_dir_is_skipped_but_rest_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keep = write(tmp_path / "ok" / "keep", 30_000)
    write(tmp_path / "locked" / "secret", 30_000)
    real_scandir = os.scandir

    def scandir(path: str):  # root ignores permissions, so simulate EACCES
        if path == str(tmp_path / "locked"):
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(disk.os, "scandir", scandir)

    tree = walk_tree(str(tmp_path))

    # Like du: the unreadable dir's own blocks count, its contents cannot, and it is counted as denied.
    expected = sum(blocks(p) for p in (tmp_path, tmp_path / "ok", keep, tmp_path / "locked"))
    assert tree == disk.Tree(expected, unreadable=1)


def _write_exe(path: Path, script: str) -> None:
    path.write_text(script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_du_partial_total_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GNU du exits 1 when files vanished under it but still prints what it counted.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _write_exe(bindir / "du", '#!/bin/sh\necho "du: cannot access x" >&2\nprintf "12345\\t$5\\n"\nexit 1\n')
    monkeypatch.setenv("PATH", str(bindir))

    assert tree_bytes(str(tmp_path)) == 12345


def test_falls_back_when_du_missing_or_unusable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = tmp_path / "tree"
    build_mixed_tree(tree)
    expected = walk_tree_bytes(str(tree))
    bindir = tmp_path / "bin"
    bindir.mkdir()

    monkeypatch.setenv("PATH", str(bindir))  # no du at all
    assert du_tree(str(tree)) is None
    assert tree_bytes(str(tree)) == expected

    # A du that rejects -B1 (busybox-style usage error) must not be trusted either.
    _write_exe(bindir / "du", '#!/bin/sh\necho "du: invalid option -- B" >&2\nexit 1\n')
    assert du_tree(str(tree)) is None
    assert tree_bytes(str(tree)) == expected


@pytest.fixture
def tmpfs_mount(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and `mount` (apt-get install mount)")
    mnt = tmp_path / "tree" / "merged"
    mnt.mkdir(parents=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,nr_inodes=0", "tmpfs", str(mnt)], capture_output=True
    )
    if proc.returncode:
        pytest.skip(f"cannot mount tmpfs: {proc.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.parametrize("count", COUNTERS)
def test_nested_mount_not_descended(tmpfs_mount: Path, count: Callable[[str], int]) -> None:
    tree = tmpfs_mount.parent
    write(tmpfs_mount / "container-rootfs-file", 1 << 20)
    own = write(tree / "own", 20_000)

    # The mount point entry itself resolves to the tmpfs root, so it is skipped entirely.
    assert count(str(tree)) == blocks(tree) + blocks(own)


def test_inode_percent_none_when_fs_has_no_inode_table() -> None:
    stats = FsStats(total_bytes=1000, free_bytes=250, total_inodes=0, free_inodes=0)

    assert stats.inode_percent is None
    assert stats.block_percent == pytest.approx(75.0)
    assert stats.percent == pytest.approx(75.0)


def test_percent_is_the_fuller_of_blocks_and_inodes() -> None:
    stats = FsStats(total_bytes=1000, free_bytes=900, total_inodes=100, free_inodes=5)

    assert stats.used_inodes == 95
    assert stats.inode_percent == pytest.approx(95.0)
    assert stats.percent == pytest.approx(95.0)


def test_reserved_blocks_are_neither_used_nor_available() -> None:
    # 1000 total, 100 reserved for root, 300 available: df shows Used 600, Use% 600/900.
    stats = FsStats(total_bytes=1000, free_bytes=300, total_inodes=10, free_inodes=10, reserved_bytes=100)

    assert stats.used_bytes == 600
    assert stats.block_percent == pytest.approx(100 * 600 / 900)


def test_zero_sized_filesystem_does_not_divide_by_zero() -> None:
    assert FsStats(0, 0, 0, 0).percent == 0.0


def _df_percent(column: str, path: str) -> float:
    out = subprocess.run(
        ["df", f"--output={column}", path], capture_output=True, text=True, check=True
    ).stdout
    return float(out.splitlines()[1].strip().rstrip("%"))


@pytest.mark.skipif(shutil.which("df") is None, reason="df not on PATH: apt-get install coreutils")
@pytest.mark.parametrize("where", ["tmp", "root"])
def test_percentages_match_df(tmp_path: Path, where: str) -> None:
    path = str(tmp_path) if where == "tmp" else "/"
    try:
        df_blocks = _df_percent("pcent", path)
        df_inodes = _df_percent("ipcent", path)
    except (subprocess.CalledProcessError, ValueError):
        pytest.skip("df without --output (not GNU coreutils)")
    stats = fs_stats(path)

    # df rounds up; the disk may change a little between the two readings.
    assert abs(stats.block_percent - df_blocks) <= 1
    assert stats.inode_percent is not None
    assert abs(stats.inode_percent - df_inodes) <= 1


def test_fs_without_inode_table_reads_as_blocks_only(tmpfs_mount: Path) -> None:
    # tmpfs with nr_inodes=0 reports f_files=0 like btrfs; `df -i` shows "-" for it.
    write(tmpfs_mount / "data", 1 << 20)

    stats = fs_stats(str(tmpfs_mount))

    assert stats.total_bytes == 4 << 20
    assert stats.total_inodes == 0
    assert stats.inode_percent is None
    assert stats.percent == stats.block_percent == pytest.approx(25.0)


# --- A reader without DAC_READ_SEARCH (issue 9, item 14) -------------------------------------------
# The DaemonSet runs as root with every capability dropped: root still reads what root owns, but not a
# 0700 directory of another owner (a user's home in an image layer). Absolute mode used to count 1 MiB
# of 51 MiB that way and say "nothing to do". The reader here is a subprocess without capabilities.

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def test_a_count_that_missed_a_little_is_a_warning_saying_how_much() -> None:
    message = disk.unreadable_warning("/var/lib/docker", disk.Tree(40 << 30, unreadable=3), 41 << 30)
    assert "3 directories could not be read" in message
    assert "40.0 GiB counted may be short by up to 1.0 GiB" in message
    assert "CAP_DAC_READ_SEARCH (deploy/README.md)" in message


@pytest.mark.parametrize("counted, used", [(1 * MiB, 51 * MiB), (0, 4096), (10 * MiB, 20 * MiB + 1)])
def test_a_count_that_may_have_missed_most_of_the_tree_is_an_error(counted: int, used: int) -> None:
    with pytest.raises(disk.UnreadableTree, match=r"mostly unreadable .*CAP_DAC_READ_SEARCH \(deploy/README"):
        disk.unreadable_warning("/var/lib/docker", disk.Tree(counted, unreadable=1), used)


@pytest.fixture
def own_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs: its used bytes are the tree's, as for a dedicated Docker disk."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs and changing owners need root")
    mnt = tmp_path / "docker"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def _layers(root: Path, readable_mib: int, locked_mib: int) -> None:
    """A readable layer, and a 0700 directory owned by nobody (65534) holding ``locked_mib``."""
    write(root / "overlay2" / "a" / "diff" / "usr" / "lib.so", readable_mib * MiB)
    locked = root / "overlay2" / "b" / "diff" / "home" / "jovyan"
    write(locked / ".cache" / "pip.tar", locked_mib * MiB)
    for path in (locked, locked / ".cache", locked / ".cache" / "pip.tar"):
        os.chown(path, 65534, 65534)
        path.chmod(0o700)


def _without_capabilities(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as root without any capability, as the DaemonSet's container runs the agent."""
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv not found: apt-get install util-linux"
    return subprocess.run([setpriv, "--bounding-set=-all", "--inh-caps=-all", "--", *argv],
                          capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


_COUNT = """
import logging, sys
from fsm_cleaner import disk
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
try:
    print(disk.tree_bytes(sys.argv[1]))
except disk.UnreadableTree as e:
    print("UnreadableTree:", e)
"""


@pytest.mark.parametrize("how", ["du", "python-walk"])
def test_a_reader_without_dac_read_search_warns_how_much_it_could_not_read(
        own_fs: Path, tmp_path: Path, how: str) -> None:
    _layers(own_fs, readable_mib=20, locked_mib=1)
    env = {"PATH": str(tmp_path)} if how == "python-walk" else None  # no du on PATH: the fallback
    run = _without_capabilities(sys.executable, "-c", _COUNT, str(own_fs), env=env)
    assert run.returncode == 0, run.stderr
    counted = int(run.stdout)
    assert 20 * MiB <= counted < 21 * MiB  # the readable layer; the locked MiB is not in it
    assert "WARNING" in run.stderr and "1 directories could not be read (permission denied)" in run.stderr
    assert "may be short by up to 1.0 MiB" in run.stderr and "CAP_DAC_READ_SEARCH" in run.stderr
    # With the capability (the test process: root with every capability) all is read, silently.
    full = subprocess.run([sys.executable, "-c", _COUNT, str(own_fs)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    assert int(full.stdout) >= counted + MiB and full.stderr == ""


@pytest.mark.parametrize("how", ["du", "python-walk"])
def test_a_reader_without_dac_read_search_refuses_a_mostly_unreadable_count(
        own_fs: Path, tmp_path: Path, how: str) -> None:
    _layers(own_fs, readable_mib=1, locked_mib=50)  # the 1 MiB of 51 MiB
    env = {"PATH": str(tmp_path)} if how == "python-walk" else None
    run = _without_capabilities(sys.executable, "-c", _COUNT, str(own_fs), env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"UnreadableTree: {own_fs} is mostly unreadable (1 directories denied, ")
    assert "counted of 51." in run.stdout and "CAP_DAC_READ_SEARCH (deploy/README.md)" in run.stdout


def test_the_agent_without_dac_read_search_fails_measuring_instead_of_saying_nothing_to_do(
        own_fs: Path, tmp_path: Path) -> None:
    _layers(own_fs, readable_mib=1, locked_mib=50)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FSM_CLEANER_", "DOCKER_IMAGE_CLEANER_"))}
    env.pop("KUBECONFIG", None)
    env.update(FSM_CLEANER_PATH_TO_CHECK=str(own_fs), FSM_CLEANER_THRESHOLD_TYPE="absolute",
               FSM_CLEANER_THRESHOLD_HIGH="40Mi", FSM_CLEANER_HEARTBEAT_FILE=str(tmp_path / "heartbeat"),
               FSM_CLEANER_STATE_DIR=str(tmp_path / "state"),  # never the host's /var/lib/fsm-cleaner
               DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock")
    run = _without_capabilities(sys.executable, "-m", "fsm_cleaner", "run", "--once", env=env)
    assert run.returncode == 1, run.stderr
    assert "Measuring failed: UnreadableTree: " in run.stderr and "CAP_DAC_READ_SEARCH" in run.stderr
    assert "nothing to do" not in run.stderr
