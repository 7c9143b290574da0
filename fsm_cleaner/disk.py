"""Disk port: how full the filesystem holding a path is, and how much a tree occupies.

Stdlib only. Two questions are answered here:

* ``fs_stats(path)`` - one ``statvfs`` reading, with percentages computed the way GNU ``df``
  computes ``Use%`` / ``IUse%`` so that the numbers in our logs match what an operator sees.
* ``tree_bytes(path)`` - bytes allocated under a directory, counted like ``du -s -x``.
  It runs GNU ``du`` when available (C, ~2x faster than any pure-Python walk here) and
  falls back to an equivalent pure-Python walk when ``du`` is missing or unusable. What it
  was denied (directories of other owners, 0700, without ``DAC_READ_SEARCH``) is a warning
  with how much may be missing, or ``UnreadableTree`` when most of the tree may be missing.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
from dataclasses import dataclass

__all__ = ["FsStats", "Tree", "UnreadableTree", "du_tree", "fs_stats", "tree_bytes", "unreadable_warning",
           "walk_tree"]

log = logging.getLogger(__name__)

# st_blocks is in 512-byte units on Linux regardless of the filesystem block size.
_ST_BLOCK = 512
# What an operator must change when the agent cannot read the tree it measures.
_CAPABILITY = "absolute mode needs CAP_DAC_READ_SEARCH (deploy/README.md) or THRESHOLD_TYPE=relative"


@dataclass(frozen=True)
class FsStats:
    """One ``statvfs`` reading of the filesystem holding a path.

    ``free_bytes`` is what unprivileged users can still write (``f_bavail``), as ``df`` shows
    in "Avail". ``reserved_bytes`` is free space only root may use (``f_bfree - f_bavail``,
    e.g. ext4's 5% reserve); it is neither used nor available, so ``used_bytes`` matches
    ``df``'s "Used" column. It defaults to 0 so fakes can be built from the four main fields.
    """

    total_bytes: int
    free_bytes: int
    total_inodes: int
    free_inodes: int
    reserved_bytes: int = 0

    @property
    def used_bytes(self) -> int:
        return self.total_bytes - self.free_bytes - self.reserved_bytes

    @property
    def used_inodes(self) -> int:
        return self.total_inodes - self.free_inodes

    @property
    def block_percent(self) -> float:
        """``df``'s Use% before rounding: ``100 * used / (used + avail)``.

        The denominator leaves out the root-reserved blocks, so 100% means "unprivileged
        writers (containerd, pods) are out of space". ``df`` rounds this up to an integer.
        (Kubelet's eviction signal ``nodefs.available`` is ``free_bytes / total_bytes``
        instead; the two differ by the reserve.)
        """
        denominator = self.used_bytes + self.free_bytes
        return 100.0 * self.used_bytes / denominator if denominator > 0 else 0.0

    @property
    def inode_percent(self) -> float | None:
        """``df -i``'s IUse% before rounding, or None when the filesystem has no fixed inode
        table and reports 0 inodes (btrfs, many overlay/FUSE mounts)."""
        if self.total_inodes <= 0:
            return None
        return 100.0 * self.used_inodes / self.total_inodes

    @property
    def percent(self) -> float:
        """The fuller of blocks and inodes: running out of either stops writes."""
        inodes = self.inode_percent
        return self.block_percent if inodes is None else max(self.block_percent, inodes)


def fs_stats(path: str) -> FsStats:
    """Read ``statvfs(path)``. Raises ``OSError`` if ``path`` cannot be reached."""
    st = os.statvfs(path)
    # f_frsize is the unit of f_blocks/f_bfree/f_bavail; some old filesystems leave it 0.
    unit = st.f_frsize or st.f_bsize
    return FsStats(
        total_bytes=st.f_blocks * unit,
        free_bytes=st.f_bavail * unit,
        total_inodes=st.f_files,
        free_inodes=st.f_favail,
        reserved_bytes=max(st.f_bfree - st.f_bavail, 0) * unit,
    )


@dataclass(frozen=True)
class Tree:
    """One count of a tree."""

    bytes: int
    unreadable: int = 0  # directories (or entries) it was denied: whatever they hold is not in bytes


class UnreadableTree(PermissionError):
    """Most of a tree could not be read: its count is too low to compare with a threshold."""


def tree_bytes(path: str) -> int:
    """Bytes allocated under ``path``, counted like ``du -s -x -B1``.

    Rules (same for both implementations): allocated blocks (``st_blocks * 512``), not the
    apparent size, so sparse files count what they occupy; every inode at most once (hard
    links are tracked by ``(st_dev, st_ino)`` only when ``st_nlink > 1``, which keeps the set
    small); directories count their own blocks; symlinks are not followed; entries on a
    different filesystem than ``path`` are skipped entirely, so overlay ``merged`` mounts of
    running containers under /var/lib/docker are not counted twice; entries that vanish while
    walking (Docker removing layers) are skipped, counting what can be counted.

    Directories it is denied are skipped too, but not silently: a warning says how many and how
    much they may hold (see ``unreadable_warning``), and when that may be most of the tree the
    count is refused with ``UnreadableTree``. Raises ``OSError`` (e.g. ``FileNotFoundError``)
    when ``path`` itself cannot be stat'ed.
    """
    tree = du_tree(path)
    if tree is None:
        log.debug("du unavailable for %s; using the Python walk", path)
        tree = walk_tree(path)
    if tree.unreadable:
        log.warning("%s", unreadable_warning(path, tree, fs_stats(path).used_bytes))
    return tree.bytes


def unreadable_warning(path: str, tree: Tree, fs_used: int) -> str:
    """What to tell the operator about a count that was denied ``tree.unreadable`` directories.

    The denied directories' size is unknowable without reading them; what the filesystem holds
    beyond the count bounds it from above (more than the tree when the filesystem holds other
    things too). When that bound exceeds the count, most of the tree may be unread, and the
    count would under-measure by more than itself: ``UnreadableTree``.
    """
    from .report import human_bytes  # report imports this module

    missing = max(fs_used - tree.bytes, 0)
    if missing > tree.bytes:
        raise UnreadableTree(
            f"{path} is mostly unreadable ({tree.unreadable} directories denied, {human_bytes(tree.bytes)} "
            f"counted of {human_bytes(fs_used)} used): {_CAPABILITY}")
    return (f"{path}: {tree.unreadable} directories could not be read (permission denied): the "
            f"{human_bytes(tree.bytes)} counted may be short by up to {human_bytes(missing)} (what its "
            f"filesystem holds beyond that); {_CAPABILITY}")


def du_tree(path: str) -> Tree | None:
    """The count of GNU ``du -s -x -B1``, or None when ``du`` is missing or printed no total.

    ``du`` exits 1 when some entries vanished or were unreadable but still prints the total
    of what it could count, which is exactly the tolerance we want, so that total is kept;
    each "Permission denied" on stderr (one per directory it could not read or entry it could
    not stat; the C locale keeps the words fixed) counts as unreadable.
    """
    try:
        proc = subprocess.run(
            ["du", "-s", "-x", "-B1", "--", path],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
            env={**os.environ, "LC_ALL": "C"},
        )
    except OSError as exc:  # no du on PATH (distroless/minimal images), or not executable
        log.debug("cannot run du: %s", exc)
        return None
    # Output is "<bytes>\t<path>\n"; bytes, because the path need not be valid UTF-8.
    head = proc.stdout.split(b"\t", 1)[0].strip()
    if proc.returncode not in (0, 1) or not head.isdigit():
        # e.g. a busybox du rejecting -B1, or path missing: let the walk decide.
        log.debug(
            "du -s %s gave rc=%s stdout=%r stderr=%r",
            path,
            proc.returncode,
            proc.stdout[:100],
            proc.stderr[-300:],
        )
        return None
    if proc.returncode:
        log.debug("du -s %s: partial total (%s)", path, proc.stderr[-300:])
    denied = sum(line.endswith(b": Permission denied") for line in proc.stderr.splitlines())
    return Tree(int(head), denied)


def walk_tree(path: str) -> Tree:
    """Pure-Python equivalent of ``du -s -x -B1`` (see ``tree_bytes`` for the rules)."""
    root = os.lstat(path)  # path itself missing is a caller error, not a race: let it raise
    total = root.st_blocks * _ST_BLOCK
    if not stat.S_ISDIR(root.st_mode):
        return Tree(total)
    dev = root.st_dev
    seen: set[tuple[int, int]] = set()
    denied = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except PermissionError:  # its directory is readable but not searchable
                        denied += 1
                        continue
                    except OSError:  # vanished since readdir
                        continue
                    if st.st_dev != dev:  # a mount point or something on another fs
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(entry.path)
                    elif st.st_nlink > 1:
                        key = (st.st_dev, st.st_ino)
                        if key in seen:
                            continue
                        seen.add(key)
                    # A directory's own blocks count even if listing it fails later (as du).
                    total += st.st_blocks * _ST_BLOCK
        except PermissionError:  # not ours to read: counted, as du counts it
            denied += 1
        except OSError:  # directory vanished: keep what was counted so far
            continue
    return Tree(total, denied)
