"""In-memory stand-ins for the agent's ports, so its machine runs in milliseconds without root,
dockerd, a cluster or sleeping: a container runtime, the disk it fills, a clock and the node API.

``FakeNodeApi`` speaks as kube.Kube does (NodeView in, Patch out, a resourceVersion precondition that
answers 409, NodeGone for 404; the pods on the node that a label selector names, matched as the fake
API server matches them), so the real node writer and journal decisions run against it.
"""

from __future__ import annotations

import heapq
import itertools
import select
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from kubernetes.client.exceptions import ApiException

from devtools.fakekube import labels_match, parse_label_selector
from fsm_cleaner.blocking import Pod
from fsm_cleaner.build_cache import CacheEntry, prunable
from fsm_cleaner.disk import FsStats
from fsm_cleaner.journal import NodeView, Patch
from fsm_cleaner.kube import NodeGone
from fsm_cleaner.plan import ImageRecord
from fsm_cleaner.runtime import Image, Removed, Unsupported
from fsm_cleaner.slots import Lease, SlotConflict


class Faults:
    """Exceptions to raise, in turn, from named calls; a callable is run instead of raised."""

    def __init__(self) -> None:
        self._queue: dict[str, list[BaseException | Callable[[], object]]] = {}
        self.calls: list[str] = []

    def add(self, call: str, *faults: BaseException | Callable[[], object]) -> None:
        self._queue.setdefault(call, []).extend(faults)

    def __call__(self, call: str) -> None:
        self.calls.append(call)
        queue = self._queue.get(call)
        if queue:
            fault = queue.pop(0)
            if isinstance(fault, BaseException):
                raise fault
            fault()


class FakeClock:
    """Monotonic time that moves only when the agent waits; actions fire at their time."""

    def __init__(self, start: float = 1000.0):
        self.now = start
        self._due: list[tuple[float, int, Callable[[], object]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self.now

    def at(self, delay: float, action: Callable[[], object]) -> None:
        """Run ``action`` once ``delay`` seconds from now have been waited through."""
        heapq.heappush(self._due, (self.now + delay, next(self._order), action))

    def wait(self, seconds: float, wake_fd: int) -> None:
        end = self.now + max(seconds, 0)
        while self._due and self._due[0][0] <= end and not self._readable(wake_fd):
            when, _, action = heapq.heappop(self._due)
            self.now = max(self.now, when)
            action()
        if not self._readable(wake_fd):
            self.now = end

    @staticmethod
    def _readable(fd: int) -> bool:
        return bool(select.select([fd], [], [], 0)[0])


@dataclass
class FakeContainer:
    image: str
    running: bool
    size: int = 0


@dataclass
class FakeRuntime:
    """Images and containers in memory; removing them frees what the FakeDisk counts."""

    store: dict[str, Image] = field(default_factory=dict)  # by id
    parents: dict[str, str] = field(default_factory=dict)
    containers: list[FakeContainer] = field(default_factory=list)
    faults: Faults = field(default_factory=Faults)
    removed: list[str] = field(default_factory=list)
    cache: dict[str, CacheEntry] = field(default_factory=dict)  # the build cache, by id
    has_build_cache: bool = True  # False: answers as Podman does (no build prune endpoint)
    now: Callable[[], float] = time.time  # the wall clock the cache's last use is compared with
    _created: itertools.count = field(default_factory=lambda: itertools.count(1_700_000_000))

    def add_image(self, id: str, size: int, *tags: str, parent: str = "",
                  created: int | None = None) -> Image:
        image = Image(id, next(self._created) if created is None else created, size, tuple(tags))
        self.store[id] = image
        if parent:
            self.parents[id] = parent
        return image

    def add_container(self, image: str, running: bool, size: int = 0) -> None:
        self.containers.append(FakeContainer(image, running, size))

    def add_cache(self, id: str, size: int, idle: float, *, shared: bool = False,
                  in_use: bool = False) -> None:
        """A build cache entry last used ``idle`` seconds ago."""
        self.cache[id] = CacheEntry(id, size, self.now() - idle, in_use=in_use, shared=shared)

    def stored_bytes(self) -> int:
        return (sum(i.size for i in self.store.values()) + sum(c.size for c in self.containers)
                + sum(e.size for e in self.cache.values() if not e.shared))

    def _dangling(self, older_than: float = 0) -> list[Image]:
        cutoff = time.time() - older_than
        return [i for i in self.store.values()
                if not i.tags and i.id not in self.parents.values() and i.created < cutoff]

    def ping(self) -> None:
        self.faults("ping")

    def stopped_containers(self) -> Removed:
        self.faults("stopped_containers")
        stopped = [c for c in self.containers if not c.running]
        return Removed(len(stopped), sum(c.size for c in stopped))

    def prune_containers(self) -> Removed:
        self.faults("prune_containers")
        stopped = [c for c in self.containers if not c.running]
        self.containers = [c for c in self.containers if c.running]
        return Removed(len(stopped), sum(c.size for c in stopped))

    def dangling_images(self, older_than: float) -> list[Image]:
        self.faults("dangling_images")
        return self._dangling(older_than)

    def prune_dangling(self, older_than: float) -> Removed:
        self.faults("prune_dangling")
        gone = self._dangling(older_than)
        for image in gone:
            self._delete(image.id)
        return Removed(len(gone), sum(i.size for i in gone))

    def image_records(self, *, running_only: bool = False) -> list[ImageRecord]:
        """As Docker's /system/df lists them: untagged parents (intermediates) left out; no shared
        layers here, so an image's unique bytes are its size."""
        self.faults("image_records")
        in_use = {c.image for c in self.containers if c.running or not running_only}
        listed = {i for i, image in self.store.items() if image.tags or i not in self.parents.values()}

        def nearest_listed(image_id: str) -> str:
            parent = self.parents.get(image_id, "")
            while parent and parent not in listed:
                parent = self.parents.get(parent, "")
            return parent

        return [ImageRecord(i.id, i.tags, nearest_listed(i.id), float(i.created), in_use=i.id in in_use,
                            size=i.size, unique=i.size) for i in self.store.values() if i.id in listed]

    def remove_image(self, image: Image) -> str | None:
        self.faults("remove_image")
        if image.id not in self.store:
            return "already gone: removed by someone else meanwhile"
        if image.id in {c.image for c in self.containers}:
            return f"conflict: unable to remove {image.id[:12]}: image is being used by a container"
        if image.id in self.parents.values():  # kept whole, tags included, as docker_runtime does
            return "it is the parent of another image (seen right before removal)"
        self._delete(image.id)
        return None

    def build_cache(self) -> list[CacheEntry]:
        self.faults("build_cache")
        return list(self.cache.values())

    def prune_build_cache(self, min_age_seconds: float, keep_bytes: int) -> Removed:
        self.faults("prune_build_cache")
        if not self.has_build_cache:
            raise Unsupported("the runtime has no build cache endpoint (POST /build/prune: 404)")
        gone = prunable(list(self.cache.values()), self.now(), min_age_seconds, keep_bytes)
        for entry in gone:
            del self.cache[entry.id]
        return Removed(len(gone), sum(e.size for e in gone))

    def _delete(self, id: str) -> None:
        del self.store[id]
        self.parents.pop(id, None)
        self.removed.append(id)


class FakeDisk:
    """The filesystem under PATH_TO_CHECK: ``base`` bytes plus what the runtime stores."""

    def __init__(self, runtime: FakeRuntime, total: int, base: int = 0):
        self.runtime, self.total, self.base = runtime, total, base
        self.faults = Faults()

    def used(self) -> int:
        return self.base + self.runtime.stored_bytes()

    def fs_stats(self, path: str) -> FsStats:
        self.faults("fs_stats")
        return FsStats(total_bytes=self.total, free_bytes=self.total - self.used(),
                       total_inodes=1_000_000, free_inodes=1_000_000)

    def tree_bytes(self, path: str) -> int:
        self.faults("tree_bytes")
        return self.used()


@dataclass
class FakePod:
    name: str
    node: str
    labels: dict[str, str]
    phase: str = "Running"
    namespace: str = "default"


class FakeLeases:
    """The cordon slots' Leases of one namespace, shared by the nodes of a fake cluster: a write on a
    stale resourceVersion, or a create of an existing name, is a SlotConflict (the API's 409)."""

    def __init__(self, daemonset_nodes: int = 1):
        self.store: dict[str, Lease] = {}
        self.daemonset_nodes = daemonset_nodes
        self.faults = Faults()
        self._rv = itertools.count(1)
        self.writes: list[Lease] = []

    def put(self, lease: Lease) -> None:
        self.faults("put_lease")
        current = self.store.get(lease.name)
        if lease.resource_version != (current.resource_version if current else ""):  # create: none yet
            raise SlotConflict(f"lease {lease.name}: conflict")
        self.store[lease.name] = replace(lease, resource_version=str(next(self._rv)))
        self.writes.append(self.store[lease.name])

    def holders(self) -> dict[str, str]:
        return {name: lease.holder for name, lease in sorted(self.store.items()) if lease.holder}


class FakeNodeApi:
    """One node in memory, with the API's answers: 409 on a stale resourceVersion, NodeGone for 404;
    the cordon slots in ``leases`` (a FakeLeases that several nodes may share)."""

    def __init__(self, node_name: str = "node-1", unschedulable: bool = False,
                 annotations: dict[str, str] | None = None, leases: FakeLeases | None = None):
        self.leases = leases or FakeLeases()
        self.node_name = node_name
        self.unschedulable = unschedulable
        self.annotations = dict(annotations or {})
        self.resource_version = 1
        self.exists = True
        self.faults = Faults()
        self.patches: list[Patch] = []
        self.events: list[tuple[str, str, bool]] = []
        self.pods: list[FakePod] = []  # on any node: the listing keeps this node's

    def view(self) -> NodeView:
        return NodeView(self.node_name, str(self.resource_version), self.unschedulable,
                        dict(self.annotations))

    def touch(self) -> None:
        """Someone else updated the node (a status heartbeat, a label)."""
        self.resource_version += 1

    def read(self, timeout: tuple[float, float]) -> NodeView:
        self.faults("read")
        if not self.exists:
            raise NodeGone(f"node {self.node_name!r} not found")
        return self.view()

    def write(self, seen: NodeView, patch: Patch, timeout: tuple[float, float]) -> None:
        self.faults("write")
        if not self.exists:
            raise NodeGone(f"node {self.node_name!r} not found")
        if seen.resource_version != str(self.resource_version):
            raise ApiException(status=409, reason="Conflict")
        for key, value in patch.annotations.items():
            if value is None:
                self.annotations.pop(key, None)
            else:
                self.annotations[key] = value
        if patch.unschedulable is not None:
            self.unschedulable = patch.unschedulable
        self.resource_version += 1
        self.patches.append(patch)

    def event(self, reason: str, message: str, warning: bool = False,
              timeout: tuple[float, float] = (2, 5)) -> None:
        self.faults("event")
        self.events.append((reason, message, warning))

    def slot_leases(self, timeout: tuple[float, float]) -> list[Lease]:
        self.leases.faults("slot_leases")
        return list(self.leases.store.values())

    def put_lease(self, lease: Lease, timeout: tuple[float, float]) -> None:
        self.leases.put(lease)

    def daemonset_nodes(self, timeout: tuple[float, float]) -> int:
        return self.leases.daemonset_nodes

    def pods_on_node(self, selector: str, timeout: tuple[float, float]) -> list[Pod]:
        self.faults("pods_on_node")
        requirements = parse_label_selector(selector)
        return [Pod(p.namespace, p.name, p.phase) for p in self.pods
                if p.node == self.node_name and labels_match(requirements, p.labels)]
