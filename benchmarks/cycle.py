"""Time whole cleaning cycles on the test bed: cycle time, seconds cordoned, bytes freed, peak RSS.

    python benchmarks/cycle.py [--images 20] [--size-mb 10] [--runs 3]

Each run starts from the same fill (tagged images, dangling images, stopped containers, one running
container), runs `fsm-cleaner run --once` as a subprocess against a private dockerd and the fake API
server, and reads the numbers from the agent's own summary line. Needs root (loop mount).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools.fakekube import FakeKube  # noqa: E402
from devtools.testbed import DockerBed  # noqa: E402
from tests.conftest import NODE, agent_env  # noqa: E402

SUMMARY = re.compile(r"cycle done: usage (?P<before>[\d.]+)% -> (?P<after>[\d.]+)%; "
                     r"freed (?P<freed>[\d.]+ \w+) .*"
                     r"removed (?P<containers>\d+) containers and (?P<images>\d+) images; "
                     r"node cordoned (?P<cordoned>[\d.]+) s; took (?P<took>[\d.]+) s")


def fill(bed: DockerBed, images: int, size_mb: float) -> None:
    bed.reset()
    base = bed.base_image()
    for n in range(images):
        bed.build_image(f"bench/app:{n}", size_mb)
    bed.make_dangling(max(1, images // 4), size_mb)
    for _ in range(3):
        bed.run_container(base, running=False)
    bed.run_container(bed.build_image("bench/live:1", size_mb), running=True)
    os.sync()
    time.sleep(1)  # let ext4 settle the blocks freed by the builds


def run_once(bed: DockerBed, tmp: Path, low_margin: float, delay: float) -> dict[str, str]:
    blocks, inodes = bed.usage()
    usage = max(blocks, inodes)
    with FakeKube() as cluster:
        cluster.add_node(NODE)
        cluster.kubeconfig(tmp / "kubeconfig")
        env = agent_env(bed, tmp, DOCKER_IMAGE_CLEANER_THRESHOLD_HIGH=round(usage - 1, 2),
                        DOCKER_IMAGE_CLEANER_THRESHOLD_LOW=round(max(usage - low_margin, 0), 2),
                        DOCKER_IMAGE_CLEANER_DELAY_SECONDS=delay)
        proc = subprocess.Popen([sys.executable, "-m", "fsm_cleaner", "run", "--once"], env=env, cwd=ROOT,
                                stderr=subprocess.PIPE, text=True)
        log = proc.stderr.read() if proc.stderr else ""
        _, status, usage_info = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    match = SUMMARY.search(log)
    if proc.returncode != 0 or not match:
        raise SystemExit(f"cycle failed (exit {proc.returncode}):\n{log}")
    return {**match.groupdict(), "rss_mib": f"{usage_info.ru_maxrss / 1024:.0f}"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=12)
    p.add_argument("--delay", type=float, default=1.0, help="DELAY_SECONDS between removals (default 1)")
    p.add_argument("--size-mb", type=float, default=10)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--low-margin", type=float, default=25, help="target = usage minus this many points")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="fsm-bench-") as tmp, \
            DockerBed(Path(tmp) / "bed", size_mb=1024, inodes=60000) as bed:
        rows = []
        for _ in range(args.runs):
            fill(bed, args.images, args.size_mb)
            rows.append(run_once(bed, Path(tmp), args.low_margin, args.delay))
    print(f"{args.runs} cycles, each from {args.images} tagged + {max(1, args.images // 4)} dangling images "
          f"of {args.size_mb:g} MiB, 3 stopped containers, 1 running; target usage minus "
          f"{args.low_margin:g} points; DELAY_SECONDS {args.delay:g}")
    cols = ["took", "cordoned", "before", "after", "freed", "containers", "images", "rss_mib"]
    print(" | ".join(f"{c:>10}" for c in cols))
    for r in rows:
        print(" | ".join(f"{r[c]:>10}" for c in cols))
    for c in ("took", "cordoned"):
        print(f"median {c}: {statistics.median(float(r[c]) for r in rows):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
