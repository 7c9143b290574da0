"""The cordon budget under load: five nodes whose disks pass the high threshold at the same moment and
keep filling (a build every second each), MAX_CORDONED 2. Five real agents, in threads, each with an
in-memory runtime and disk (devtools.fleet), all on one fake API server through the real Kubernetes
client. Reported: the most nodes cordoned at once (from the API server's own history), the longest
time a node waited for a slot, and its usage when it got the slot, against CRITICAL_THRESHOLD (95 %).

Time is compressed: DELAY_SECONDS 0.3 with 5 images to remove makes a cordoned cycle last ~2 s where a
real node's lasts minutes; the waits scale with the cycle, so they are also given in cordoned cycles.

    .venv/bin/python -m benchmarks.cordon_budget [--nodes 5] [--budget 2] [--grow-mib 1]
"""

from __future__ import annotations

import argparse
import logging
import re
import statistics
import tempfile
import threading
import time
from pathlib import Path

from devtools.fakekube import FakeKube
from devtools.fleet import ByNode, Fleet, MiB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--budget", type=int, default=2)
    p.add_argument("--grow-mib", type=float, default=1.0, help="MiB each node's builds add per second")
    args = p.parse_args()
    log = ByNode()
    logging.getLogger("fsm_cleaner").addHandler(log)
    logging.getLogger("fsm_cleaner").setLevel(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp, FakeKube() as fake:
        fleet = Fleet(fake, Path(tmp), args.nodes, {
            "FSM_CLEANER_MAX_CORDONED": str(args.budget), "FSM_CLEANER_INTERVAL_SECONDS": "1",
            "FSM_CLEANER_DELAY_SECONDS": "0.3"})
        growing = threading.Event()

        def builds() -> None:  # every node gains an image a second while the fleet runs
            n = 0
            while not growing.wait(1.0):
                n += 1
                for node in fleet.nodes:
                    node.runtime.add_image(f"sha256:{0xb0000 + n:064x}", int(args.grow_mib * MiB),
                                           f"build:{n}", created=int(time.time()) - 3600)
        threading.Thread(target=builds, daemon=True).start()
        start = time.monotonic()
        fleet.start()
        done = fleet.wait_until(lambda: all(n.cleaned for n in fleet.nodes), timeout=120)
        took = time.monotonic() - start
        growing.set()
        fleet.stop()
    waits, cycles = [], []
    critical = sum("above CRITICAL_THRESHOLD" in text for lines in log.lines.values() for _, text in lines)
    for name, lines in sorted(log.lines.items()):
        first_wait = None
        for t, text in lines:
            if "no cordon slot free" in text and first_wait is None:
                first_wait = t
            got = re.search(r"holding fsm-cleaner-slot-\d+.*\(usage ([\d.]+)%\)", text)
            if got:
                waits.append((t - first_wait if first_wait else 0.0, float(got[1]), name))
                first_wait = None
            cordoned = re.search(r"node cordoned ([\d.]+) s", text)
            if cordoned and float(cordoned[1]) > 0:
                cycles.append(float(cordoned[1]))
    longest = max(waits)
    cycle = statistics.median(cycles)
    print(f"{args.nodes} nodes, MAX_CORDONED {args.budget}, +{args.grow_mib:g} MiB/s each (disk 100 MiB)")
    print(f"all nodes cleaned: {done}, in {took:.1f} s")
    print(f"most nodes cordoned at once (API history): {max(len(c) for c in fake.cordoned_history)}")
    print(f"cordoned cycle: median {cycle:.2f} s over {len(cycles)} cycles")
    print(f"longest wait for a slot: {longest[0]:.1f} s ({longest[0] / cycle:.1f} cordoned cycles), "
          f"{longest[2]}, usage {longest[1]:.1f}% when it got the slot (CRITICAL_THRESHOLD 95%)")
    print(f"slots taken: {len(waits)}; waits (s): {', '.join(f'{w:.1f}' for w, _, _ in sorted(waits))}")
    print(f"cycles that cleaned uncordoned at the critical level: {critical}")


if __name__ == "__main__":
    main()
