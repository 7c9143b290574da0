"""Where PruningBuildCache belongs in the cycle, measured on the real test bed (dockerd 20.10, BuildKit).

A miniature build node: four repositories built three times each with BuildKit (the first two versions
of each left dangling), two of them running. The same scene is cleaned in three orders, each step
through fsm-cleaner's own Docker port, and the bytes each step gives back to the filesystem are read
with statvfs. Then the next commit of every repository is built, to see what the cycle cost the
next builds (seconds, and whether the env layer still came from the cache).

    sudo .venv/bin/python -m benchmarks.build_cache_placement [--root /tmp/bc-bench]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import time
from pathlib import Path

import docker

from devtools.testbed import BASE_TAG, SYSTEM_PATH, DockerBed
from fsm_cleaner.docker_runtime import Docker

REPOS = ("r0", "r1", "r2", "r3")
LIVE = ("r0", "r1")  # a running container holds their current image
ENV_MB, CODE_MB = 12, 6
ORDERS = {
    "cache first": ("build cache", "dangling", "unused images"),
    "after dangling (chosen)": ("dangling", "build cache", "unused images"),
    "cache last": ("dangling", "unused images", "build cache"),
}


def build(bed: DockerBed, work: Path, repo: str, commit: int) -> tuple[float, bool]:
    """Build one commit; (seconds, whether the env layer came from the cache)."""
    ctx = work / repo
    ctx.mkdir(parents=True, exist_ok=True)
    (ctx / "Dockerfile").write_text(
        f"FROM {BASE_TAG}\n"
        f"RUN echo {repo} > /repo && dd if=/dev/urandom of=/env bs=1M count={ENV_MB} 2>/dev/null\n"
        "ARG COMMIT\n"
        f"RUN dd if=/dev/urandom of=/code bs=1M count={CODE_MB} 2>/dev/null && echo $COMMIT > /commit\n")
    start = time.monotonic()
    done = subprocess.run(
        ["/usr/bin/docker", "build", "--progress", "plain", "--network", "host", "--build-arg",
         f"COMMIT={commit}", "-t", f"bench/{repo}:latest", str(ctx)],
        env={"PATH": SYSTEM_PATH, "DOCKER_HOST": bed.host, "DOCKER_BUILDKIT": "1", "HOME": str(work)},
        capture_output=True, text=True, timeout=300)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    env_step = re.search(rf"^(#\d+) \[\d+/\d+\] RUN echo {repo} ", done.stderr, re.MULTILINE)
    return time.monotonic() - start, bool(env_step) and f"{env_step[1]} CACHED" in done.stderr


def used(bed: DockerBed) -> int:
    os.sync()
    st = os.statvfs(bed.mountpoint)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def scene(bed: DockerBed, work: Path) -> None:
    bed.reset()
    bed.client().api.prune_builds(all=True)
    for repo in REPOS:
        for commit in range(3):
            build(bed, work, repo, commit)
    for repo in LIVE:
        bed.run_container(f"bench/{repo}:latest", running=True)


def step(port: Docker, name: str) -> str:
    if name == "dangling":
        return f"{port.prune_dangling().count} images"
    if name == "build cache":
        return f"{port.prune_build_cache(0, 0).count} entries"
    in_use, parents = port.images_in_use(), port.image_parents()
    gone = [i for i in port.images() if i.id not in in_use and i.id not in parents.values()
            and BASE_TAG not in i.tags and port.remove_image(i) is None]
    return f"{len(gone)} images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/bc-bench"))
    args = parser.parse_args()
    with DockerBed(args.root / "bed", size_mb=800, inodes=40000) as bed:
        bed.base_image()
        port = Docker(lambda: docker.APIClient(base_url=bed.host, version="auto", timeout=300))
        print(f"{len(REPOS)} repositories x 3 BuildKit builds (env {ENV_MB} MB, code {CODE_MB} MB), "
              f"{len(LIVE)} running\n")
        print("| order | step | removed | MiB freed | next commit of each repo: s (env layer cached) |")
        print("|---|---|---|---:|---|")
        for order, steps in ORDERS.items():
            scene(bed, args.root / "ctx")
            for name in steps:
                before = used(bed)
                what = step(port, name)
                print(f"| {order} | {name} | {what} | {(before - used(bed)) / 2**20:.1f} | |")
            rebuilds = {repo: build(bed, args.root / "ctx", repo, 3) for repo in REPOS}
            cells = ", ".join(f"{r} {s:.1f} s ({'yes' if hit else 'no'})" for r, (s, hit) in rebuilds.items())
            print(f"| {order} | (next builds) | | | {cells} |")


if __name__ == "__main__":
    main()
