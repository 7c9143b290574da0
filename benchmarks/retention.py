"""Which images to remove: retention policies replayed on one simulated BinderHub build/launch node.

    python benchmarks/retention.py [--days 7] [--seed 1] [--disk 300] [--high 85 --low 80] [--min-age 1800]

One trace (fixed seed) is replayed through every policy; the node starts empty. The model:

- Repositories: 3000, launched with Zipf popularity (s = 1.1): the most popular one gets about 1 launch
  in 9, the median repository almost none. 700 launches a day on average, following a day/night
  rhythm (rate ±60 %). A launch's pod holds its image for a log-normal session (median 15 min,
  1 min to 6 h, mybinder.org's cap).
- Images: one of 4 shared base stacks (3 layers each, 0.8–3 GB; a new revision of every stack on
  day 3.5, as when repo2docker is upgraded) + the repository's environment layer (log-normal, median
  1.5 GB, 0.1–10 GB) + a code layer (median 30 MB). A layer present for one image is not fetched again
  for another.
- New versions: each repository gets commits at 2/day × (popularity relative to the top)^0.5 +
  0.02/day; 30 % of them change the environment layer, the rest reuse it. A launch always wants the
  repository's newest version; the first launch of a new version builds it on this node (the build
  then pushes it: later launches after an eviction pull it). Versions older than the trace are in the
  registry and are pulled.
- A build leaves, with probability 0.25, a dangling image (20–100 % of its environment layer), and
  adds half of what it built to the BuildKit cache, which the build-cache state holds at 10 GB (not
  simulated beyond that budget; it is the same for every policy).
- Disk: 300 GB (``--disk``; 150 for a crowded node), 20 GB of it used by the OS, logs and the
  kubelet. A pull or build that would not fit is a disk-full event: that launch fails (counted as a
  miss, nothing is fetched).
- Costs: "re-fetched" is the bytes pulled or built again for layers that had been on this node before
  (avoidable); first-time pulls and builds are the same for every policy and shown once. A hit is a
  launch whose whole image is present.
- Cleaners run every 300 s (the agent's INTERVAL_SECONDS and the kubelet's image GC period). The agent
  (fsm-cleaner current, the new planner and the offline bound) cordons above the high threshold,
  prunes every dangling image in one call, then removes images one by one re-measuring after each,
  stopping at or below the low threshold; seconds cordoned = 2 s per cycle (measure, cordon, prunes,
  uncordon) + DELAY_SECONDS (1 s) per image removed. The old tool removes every unused image (dangling
  ones too, one by one) at 80 %. The kubelet (85/80, MinAge 2 min) removes least recently used first,
  "last used" being the last time its GC saw a container of the image, and counts an image's full
  size as freed, shared layers included; it never cordons. The offline bound (Belady) removes the
  image needed again farthest in the future first, at the agent's thresholds. The agent's thresholds
  default to the kubelet's 85/80, so that the agent policies differ from the kubelet only in order.
- The new planner is `plan.plan_removals`, called with what the agent will have: Docker's Size and
  Size - SharedSize, uses and last use from the event stream (one use per container start, the
  start time), arrived = when it was pulled or built here, in use = a pod holds it, bytes to free =
  usage - low threshold, MIN_AGE (default 30 min), KEEP empty.
- Not modelled: pull and build durations (an image is there the moment it is launched), the
  cordon's effect on scheduling, other nodes (one node builds and launches its share of the traffic).
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fsm_cleaner import plan  # noqa: E402
from fsm_cleaner.plan import ImageRecord  # noqa: E402

GB = 10**9
MB = 10**6
HOUR = 3600
DAY = 86400

BASELINE = 20 * GB
BUILD_CACHE_MAX = 10 * GB
INTERVAL = 300
DELAY = 1.0
CYCLE_OVERHEAD = 2.0


@dataclass(frozen=True)
class Spec:
    """One version of one repository, as an image."""

    id: str
    ref: str
    created: float
    layers: tuple[str, ...]
    dangling: int  # bytes of the dangling image its build leaves (0: none)


@dataclass(frozen=True)
class Launch:
    t: float
    image: str
    hold: float


@dataclass
class Trace:
    sizes: dict[str, int]
    specs: dict[str, Spec]
    launches: list[Launch]
    needs: dict[str, list[float]]  # image -> times it is launched (for the offline bound)


def lognormal(rng: random.Random, median: float, sigma: float, low: float, high: float) -> float:
    return min(max(rng.lognormvariate(math.log(median), sigma), low), high)


def make_trace(days: float, seed: int, repos: int = 3000, zipf: float = 1.1, per_day: float = 700) -> Trace:
    rng = random.Random(seed)
    horizon = days * DAY
    weights = [1 / (r + 1) ** zipf for r in range(repos)]
    cum = list(_accumulate(weights))
    sizes: dict[str, int] = {}
    stacks = (0.8, 1.5, 2.0, 3.0)

    def stack(s: int, revision: int) -> tuple[str, ...]:
        parts = [f"base{s}.{revision}.{n}" for n in range(3)]
        for n, layer in enumerate(parts):
            sizes[layer] = int(stacks[s] * GB * (0.6, 0.3, 0.1)[n])
        return tuple(parts)

    # per repository: its base stack, its commits and whether each changes the environment
    repo_stack = rng.choices(range(len(stacks)), weights=(0.5, 0.25, 0.15, 0.1), k=repos)
    commits: list[list[float]] = []
    env_of: list[list[int]] = []
    for r in range(repos):
        rate = (2.0 * (weights[r] / weights[0]) ** 0.5 + 0.02) / DAY
        times, t = [], rng.expovariate(rate)
        while t < horizon:
            times.append(t)
            t += rng.expovariate(rate)
        commits.append(times)
        envs = [0]
        for _ in times:
            envs.append(envs[-1] + (rng.random() < 0.3))
        env_of.append(envs)
    env_size = [lognormal(rng, 1.5 * GB, 0.8, 0.1 * GB, 10 * GB) for _ in range(repos)]

    specs: dict[str, Spec] = {}

    def spec(r: int, version: int) -> Spec:
        image = f"r{r}v{version}"
        if image not in specs:
            created = commits[r][version - 1] if version else -rng.uniform(1, 90) * DAY
            env = f"env{r}.{env_of[r][version]}"
            code = f"code{r}.{version}"
            sizes[env] = int(env_size[r] * (0.9 + 0.2 * rng.random()) if env not in sizes else sizes[env])
            sizes[code] = int(lognormal(rng, 30 * MB, 1.0, 1 * MB, 500 * MB))
            leaves = int(sizes[env] * rng.uniform(0.2, 1.0)) if version and rng.random() < 0.25 else 0
            layers = stack(repo_stack[r], 1 if created >= horizon / 2 else 0) + (env, code)
            specs[image] = Spec(image, f"binder.example.org/r2d-repo{r}:v{version}", created, layers, leaves)
        return specs[image]

    launches: list[Launch] = []
    peak, t = per_day / DAY * 1.6, 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= horizon:
            break
        if rng.random() * 1.6 > 1 + 0.6 * math.sin(2 * math.pi * t / DAY):
            continue  # thinning: fewer launches at night
        r = bisect.bisect(cum, rng.random() * cum[-1])
        image = spec(r, bisect.bisect(commits[r], t)).id
        launches.append(Launch(t, image, lognormal(rng, 15 * 60, 1.0, 60, 6 * HOUR)))
    needs: dict[str, list[float]] = {}
    for launch in launches:
        needs.setdefault(launch.image, []).append(launch.t)
    return Trace(sizes, specs, launches, needs)


def _accumulate(xs: list[float]):
    total = 0.0
    for x in xs:
        total += x
        yield total


@dataclass
class Present:
    arrived: float
    last_used: float  # last container start (what the event stream gives the agent)
    last_held: float  # last time a pod held it (what the kubelet's GC sees)
    uses: int = 1


@dataclass
class Node:
    trace: Trace
    disk: int
    used: int = BASELINE
    build_cache: int = 0
    images: dict[str, Present] = field(default_factory=dict)
    dangling: dict[str, tuple[int, float]] = field(default_factory=dict)  # id -> bytes, created
    refs: Counter = field(default_factory=Counter)  # layer -> present images holding it
    holding: Counter = field(default_factory=Counter)  # image -> pods running it
    ever: set[str] = field(default_factory=set)  # layers that have been on this node
    registry: set[str] = field(default_factory=set)  # built versions (pulled, not built, from now on)
    hits: int = 0
    refetched: int = 0
    first_time: int = 0
    disk_full: int = 0
    cordoned: float = 0.0
    cycles: int = 0
    removed: int = 0

    def percent(self) -> float:
        return 100 * self.used / self.disk

    def launch(self, launch: Launch) -> bool:
        """Place the launch's image; False when it does not fit on the disk."""
        image = self.trace.specs[launch.image]
        if launch.image in self.images:
            self.hits += 1
            present = self.images[launch.image]
            present.last_used = launch.t
            present.uses += 1
            return True
        missing = [layer for layer in image.layers if self.refs[layer] == 0]
        fetch = sum(self.trace.sizes[layer] for layer in missing)
        build = not image.id.endswith("v0") and image.id not in self.registry
        cache = min(fetch // 2, BUILD_CACHE_MAX - self.build_cache) if build else 0
        leaves = image.dangling if build else 0
        if self.used + fetch + cache + leaves > self.disk:
            self.disk_full += 1
            return False
        for layer in missing:
            if layer in self.ever:
                self.refetched += self.trace.sizes[layer]
            else:
                self.first_time += self.trace.sizes[layer]
            self.ever.add(layer)
        for layer in image.layers:
            self.refs[layer] += 1
        self.used += fetch + cache + leaves
        self.build_cache += cache
        if leaves:
            self.dangling[f"{image.id}-dangling"] = (leaves, launch.t)
        self.registry.add(image.id)
        self.images[image.id] = Present(launch.t, launch.t, launch.t)
        return True

    def remove(self, image_id: str) -> None:
        if image_id in self.dangling:
            self.used -= self.dangling.pop(image_id)[0]
        else:
            del self.images[image_id]
            for layer in self.trace.specs[image_id].layers:
                self.refs[layer] -= 1
                if self.refs[layer] == 0:
                    self.used -= self.trace.sizes[layer]
        self.removed += 1

    def size(self, image_id: str) -> int:
        return sum(self.trace.sizes[layer] for layer in self.trace.specs[image_id].layers)

    def unique(self, image_id: str) -> int:
        return sum(self.trace.sizes[layer] for layer in self.trace.specs[image_id].layers
                   if self.refs[layer] == 1)

    def unused(self) -> list[str]:
        return [i for i in self.images if not self.holding[i]]


Order = Callable[[Node, float], list[str]]


def agent(high: float, low: float, order: Order) -> Callable[[Node, float], None]:
    """fsm-cleaner's cycle: above high, cordon, prune dangling, remove in order until at or below low."""

    def cycle(node: Node, now: float) -> None:
        if node.percent() < high:
            return
        node.cycles += 1
        node.cordoned += CYCLE_OVERHEAD
        for image_id in list(node.dangling):
            node.remove(image_id)
        if node.percent() <= low:
            return
        for image_id in order(node, now):
            if node.percent() <= low:
                break
            node.remove(image_id)
            node.cordoned += DELAY

    return cycle


def old_tool(node: Node, now: float) -> None:
    """docker-image-cleaner: at 80 %, remove every image no container uses."""
    if node.percent() < 80:
        return
    node.cycles += 1
    node.cordoned += CYCLE_OVERHEAD
    for image_id in list(node.dangling) + node.unused():
        node.remove(image_id)
        node.cordoned += DELAY


def kubelet(node: Node, now: float) -> None:
    """The kubelet's image GC: at 85 %, least recently used first down to 80 %, counting full sizes."""
    if node.percent() < 85:
        return
    node.cycles += 1
    to_free = node.used - 0.80 * node.disk
    candidates = [(0.0, created, i) for i, (_, created) in node.dangling.items() if now - created >= 120]
    candidates += [(node.images[i].last_held, node.images[i].arrived, i) for i in node.unused()
                   if now - node.images[i].arrived >= 120]
    freed = 0
    for _, _, image_id in sorted(candidates):
        if freed >= to_free:
            break
        freed += node.dangling[image_id][0] if image_id in node.dangling else node.size(image_id)
        node.remove(image_id)


def oldest_first(node: Node, now: float) -> list[str]:
    """fsm-cleaner today: plan.removal_order, oldest creation first."""
    images = [plan.Image(i, int(node.trace.specs[i].created), node.size(i), (node.trace.specs[i].ref,))
              for i in node.images]
    in_use = {i for i in node.images if node.holding[i]}
    return [i.id for i in plan.removal_order(images, in_use, {})]


def planner(high: float, low: float, min_age: float,
            rank: Callable[[ImageRecord, float], float] = plan.likely_needed) -> Order:
    """The new planner, called with what the agent has: records, bytes to free, KEEP, MIN_AGE, now."""

    def order(node: Node, now: float) -> list[str]:
        specs = node.trace.specs
        records = [ImageRecord(id=i, refs=(specs[i].ref,), created=specs[i].created, arrived=p.arrived,
                               last_used=p.last_used, uses=p.uses, in_use=node.holding[i] > 0,
                               size=node.size(i), unique=node.unique(i))
                   for i, p in node.images.items()]
        records += [ImageRecord(id=i, created=created, size=size, unique=size)
                    for i, (size, created) in node.dangling.items()]
        result = plan.plan_removals(records, node.used - low / 100 * node.disk, (), min_age, now, rank=rank)
        return [r.image.id for r in result.removals]

    return order


def belady(node: Node, now: float) -> list[str]:
    """Offline bound: the image needed again farthest in the future goes first."""

    def next_need(image_id: str) -> float:
        times = node.trace.needs.get(image_id, [])
        k = bisect.bisect_right(times, now)
        return times[k] if k < len(times) else math.inf

    return sorted(node.unused(), key=next_need, reverse=True)


def replay(trace: Trace, clean: Callable[[Node, float], None], days: float, disk: int) -> Node:
    node = Node(trace, disk)
    ends: list[tuple[float, str]] = []
    ticks = iter(range(INTERVAL, int(days * DAY) + INTERVAL, INTERVAL))
    tick = next(ticks)
    for launch in trace.launches:
        while tick <= launch.t or (ends and ends[0][0] <= launch.t):
            if ends and ends[0][0] <= tick:
                end, image_id = heapq.heappop(ends)
                node.holding[image_id] -= 1
                if image_id in node.images:
                    node.images[image_id].last_held = end
            else:
                clean(node, tick)
                tick = next(ticks)
        if node.launch(launch):
            node.holding[launch.image] += 1
            heapq.heappush(ends, (launch.t + launch.hold, launch.image))
    return node


def rank_lru(image: ImageRecord, now: float) -> float:
    return plan.seen(image)


def rank_lfu(image: ImageRecord, now: float) -> float:
    return image.uses + plan.seen(image) / (2 * now)  # ties: least recent first


def rank_power(k: float) -> Callable[[ImageRecord, float], float]:
    """uses / (hours idle + ½)^k: k = 0 is LFU, a large k approaches LRU; plan.likely_needed is k = ½."""

    def rank(image: ImageRecord, now: float) -> float:
        return max(image.uses, 1) / ((now - plan.seen(image)) / 3600 + 0.5) ** k

    return rank


def rank_gdsf(image: ImageRecord, now: float) -> float:
    """Size-aware (GDSF with the cost of a miss as one launch): likelihood per byte it frees."""
    return plan.likely_needed(image, now) / max(image.unique, MB)


def row(name: str, node: Node, launches: int) -> str:
    return (f"| {name} | {node.hits / launches:.3f} | {node.refetched / GB:,.0f} | {node.disk_full} "
            f"| {node.cordoned:,.0f} | {node.cycles} | {node.removed} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=7)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--disk", type=float, default=300, help="disk size in GB")
    parser.add_argument("--high", type=float, default=85, help="agent's THRESHOLD_HIGH (percent)")
    parser.add_argument("--low", type=float, default=80, help="agent's THRESHOLD_LOW (percent)")
    parser.add_argument("--min-age", type=float, default=1800, help="MIN_AGE (seconds)")
    args = parser.parse_args()
    started = time.monotonic()
    trace = make_trace(args.days, args.seed)
    n, disk = len(trace.launches), int(args.disk * GB)
    hi, lo, age = args.high, args.low, args.min_age
    policies: dict[str, Callable[[Node, float], None]] = {
        "old tool (all unused at 80 %)": old_tool,
        f"fsm-cleaner today, oldest first ({hi:g}/{lo:g})": agent(hi, lo, oldest_first),
        "kubelet LRU (85/80, 2 min)": kubelet,
        f"offline bound, Belady ({hi:g}/{lo:g})": agent(hi, lo, belady),
        f"new planner ({hi:g}/{lo:g}, MIN_AGE {age:g} s)": agent(hi, lo, planner(hi, lo, age)),
    }
    header = ("| policy | hit ratio | GB re-fetched | disk-full | s cordoned | cycles | images removed |\n"
              "|---|---|---|---|---|---|---|")
    print(f"{args.days:g} days, seed {args.seed}: {n} launches of {len(trace.needs)} image versions, "
          f"{args.disk:g} GB disk\n\n{header}")
    results = [replay(trace, clean, args.days, disk) for clean in policies.values()]
    for name, node in zip(policies, results, strict=True):
        print(row(name, node, n))
    old, _, lru, bound, new = results
    print(f"\nfirst-time pulls and builds: {old.first_time / GB:,.0f} GB with the old tool (the same for "
          "every policy but for launches that failed on a full disk)")
    print(f"new planner: re-fetched {new.refetched / old.refetched:.2f}x the old tool's, "
          f"{new.refetched / lru.refetched:.2f}x the kubelet's, "
          f"{new.refetched / bound.refetched:.2f}x the offline bound's; "
          f"cordoned {new.cordoned / old.cordoned:.2f}x the old tool's")

    print(f"\nThe planner's ranking and MIN_AGE (same trace, {hi:g}/{lo:g}, MIN_AGE {age:g} s unless "
          f"named)\n\n{header}")
    variants: dict[str, Order] = {
        "LRU (last use)": planner(hi, lo, age, rank_lru),
        "LFU (uses, then last use)": planner(hi, lo, age, rank_lfu),
        "uses / idle^0.25": planner(hi, lo, age, rank_power(0.25)),
        "uses / idle^0.5 (chosen: plan.likely_needed)": planner(hi, lo, age),
        "uses / idle": planner(hi, lo, age, rank_power(1)),
        "uses / idle^2": planner(hi, lo, age, rank_power(2)),
        "GDSF-style, per unique byte": planner(hi, lo, age, rank_gdsf),
        "chosen, MIN_AGE 2 min": planner(hi, lo, 120),
        "chosen, MIN_AGE 2 h": planner(hi, lo, 2 * HOUR),
    }
    for name, order in variants.items():
        print(row(name, replay(trace, agent(hi, lo, order), args.days, disk), n), flush=True)
    print(f"\n({time.monotonic() - started:.1f} s)")


if __name__ == "__main__":
    main()
