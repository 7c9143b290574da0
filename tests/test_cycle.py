"""End to end: the agent as a subprocess, one cycle, against the fake API and a real runtime bed: the
runtime-facing cases run twice (``runtime_bed``: dockerd 20.10 and Podman 4.3), the API-facing ones on
dockerd only."""

from __future__ import annotations

import re
import time

import docker.errors
import pytest

from devtools.fakekube import FakeKube
from devtools.testbed import DockerBed
from fsm_cleaner import disk
from tests.conftest import (
    NODE,
    RealCluster,
    Run,
    agent_env,
    journal_of,
    needs_fake,
    run_agent,
    settled_usage,
)

Cluster = FakeKube | RealCluster
FULL_CYCLE = ["Reconciling", "Idle", "Measuring", "TakingSlot", "Cordoning", "PruningContainers",
              "PruningDangling", "PruningBuildCache", "PruningAll", "Uncordoning", "Idle"]


REMOVAL_EVENTS = {("image", "delete"), ("container", "destroy"), ("container", "remove")}


def exists(bed: DockerBed, image_id: str) -> bool:
    try:
        bed.client().images.get(image_id)
        return True
    except docker.errors.ImageNotFound:
        return False


def created_seconds(bed: DockerBed) -> dict[str, int]:
    """Image id -> creation time as Docker's image list gives it (whole seconds), which orders removals."""
    return {i["Id"]: i["Created"] for i in bed.client().api.images(all=True)}


def build_in_distinct_seconds(bed: DockerBed, tags: list[str], size_mb: float) -> list[str]:
    """Each image built in a later second than the one before, so that "oldest first" is no tie."""
    images: list[str] = []
    for tag in tags:
        if images:
            last = created_seconds(bed)[images[-1]]
            while time.time() < last + 1:  # the clock Docker stamps images with is this host's
                time.sleep(0.05)
        images.append(bed.build_image(tag, size_mb))
    return images


def summary(run: Run) -> dict[str, str]:
    """The numbers of the agent's cycle summary line."""
    m = re.search(r"(freed|would free) (?P<freed>[\d.]+ \w+) and \d+ inodes \(Docker reports "
                  r"(?P<reported>[\d.]+ \w+)\); (removed|would remove) (?P<containers>\d+) containers and "
                  r"(?P<images>\d+) images", run.log)
    assert m, run.log
    return m.groupdict()


def to_bytes(human: str) -> float:
    value, unit = human.split()
    return float(value) * 1024 ** ["B", "KiB", "MiB", "GiB", "TiB"].index(unit)


def high_just_below(bed: DockerBed, margin: float = 1.0) -> float:
    return round(max(settled_usage(bed)) - margin, 2)


def rv(cluster: Cluster) -> str:
    return cluster.node(NODE)["metadata"]["resourceVersion"]


def is_cordoned(cluster: Cluster) -> bool:
    return bool(cluster.node(NODE)["spec"].get("unschedulable"))


def above(bed: DockerBed, tmp_path, margin: float = 1.0, **settings) -> dict[str, str]:
    """The agent's environment with THRESHOLD_HIGH just below the bed's current usage."""
    high = high_just_below(bed, margin)
    return agent_env(bed, tmp_path, DOCKER_IMAGE_CLEANER_THRESHOLD_HIGH=high, **settings)


def assert_handed_back(cluster: Cluster, unschedulable: bool = False) -> dict:
    node = cluster.node(NODE)
    assert bool(node["spec"].get("unschedulable")) is unschedulable
    assert node["metadata"]["labels"]["fsm-test/keep"] == "yes"  # labels survive
    assert node["metadata"]["annotations"]["team"] == "ml"  # a neighbour's annotation survives
    entry = journal_of(node)
    assert entry is not None and entry["state"] == "Idle"
    return entry


def test_below_threshold_does_nothing(runtime_bed: DockerBed, cluster: Cluster, tmp_path) -> None:
    image = runtime_bed.build_image("app:1", 10)
    before = rv(cluster)
    high = max(settled_usage(runtime_bed)) + 10
    run = run_agent(agent_env(runtime_bed, tmp_path, DOCKER_IMAGE_CLEANER_THRESHOLD_HIGH=high))
    assert run.code == 0, run.log
    assert "below the high threshold" in run.log
    assert run.states() == ["Reconciling", "Idle", "Measuring", "Idle"]
    assert rv(cluster) == before  # a quiet node is not written to
    assert exists(runtime_bed, image)


def test_full_cycle_cordons_exactly_while_pruning(runtime_bed: DockerBed, cluster: Cluster, tmp_path) -> None:
    old = runtime_bed.build_image("app:old", 20)
    live = runtime_bed.build_image("app:live", 20)
    stopped = runtime_bed.run_container(old, running=False)
    running = runtime_bed.run_container(live, running=True)
    cluster = needs_fake(cluster)  # it reads the node at every API request
    seen: list[tuple[float, bool]] = []  # (time, node unschedulable) just before each API request
    cluster.on_request(lambda m, p: seen.append((time.time(), is_cordoned(cluster))))
    since = time.time() - 1

    run = run_agent(above(runtime_bed, tmp_path))

    assert run.code == 0, run.log
    assert run.states() == FULL_CYCLE, run.log
    entry = assert_handed_back(cluster)
    assert entry["cordoned_by_us"] is False
    client = runtime_bed.client()
    assert [c.id for c in client.containers.list(all=True)] == [running]
    assert not exists(runtime_bed, old) and exists(runtime_bed, live)  # the running container's image stays

    # Podman answers nothing to a fractional since/until, and says "remove" where dockerd says "destroy"
    events = [e for e in client.events(since=int(since), until=int(time.time()) + 1, decode=True)
              if (e["Type"], e["Action"]) in REMOVAL_EVENTS and e["timeNano"] / 1e9 >= since]
    assert stopped in {e["id"] for e in events}, "the runtime reported no removal of the stopped container"
    removals = [e["timeNano"] / 1e9 for e in events]
    cordoned = [t for t, unschedulable in seen if unschedulable]
    assert cordoned and min(cordoned) < min(removals) and max(removals) < max(cordoned)
    # from the first moment it was seen cordoned to the last, it never was schedulable in between
    assert all(u for t, u in seen if min(cordoned) <= t <= max(cordoned))
    assert "removed 1 containers and 1 images" in run.log
    assert {"Cordoned", "Uncordoned"} <= {e["reason"] for e in cluster.events}


def test_enough_dangling_images_skip_pruning_all(runtime_bed: DockerBed, cluster: Cluster, tmp_path) -> None:
    tagged = runtime_bed.build_image("app:1", 10)
    dangling = runtime_bed.make_dangling(3, 25)
    run = run_agent(above(runtime_bed, tmp_path, 4))
    assert run.code == 0, run.log
    assert "PruningAll" not in run.states()
    assert not any(exists(runtime_bed, i) for i in dangling)
    assert exists(runtime_bed, tagged)
    assert_handed_back(cluster)


def test_threshold_low_stops_removal_at_the_target(runtime_bed: DockerBed, cluster: Cluster,
                                                   tmp_path) -> None:
    images = build_in_distinct_seconds(runtime_bed, [f"app:{n}" for n in range(5)], 20)
    created = created_seconds(runtime_bed)
    assert len({created[i] for i in images}) == len(images)
    usage = max(settled_usage(runtime_bed))
    low = round(usage - 7, 2)  # about two of the five images' worth
    run = run_agent(agent_env(runtime_bed, tmp_path, DOCKER_IMAGE_CLEANER_THRESHOLD_HIGH=round(usage - 1, 2),
                              DOCKER_IMAGE_CLEANER_THRESHOLD_LOW=low))
    assert run.code == 0, run.log
    assert max(settled_usage(runtime_bed)) <= low
    kept = [created[i] for i in images if exists(runtime_bed, i)]
    removed = [created[i] for i in images if not exists(runtime_bed, i)]
    assert kept, "it removed everything although the target was reached earlier"
    assert removed and max(removed) <= min(kept)  # oldest first
    assert_handed_back(cluster)


def test_absolute_mode_measures_bytes_and_stops_at_the_target(runtime_bed: DockerBed, cluster: Cluster,
                                                              tmp_path) -> None:
    images = [runtime_bed.build_image(f"app:{n}", 10) for n in range(4)]
    settled_usage(runtime_bed)
    used = disk.tree_bytes(str(runtime_bed.mountpoint))
    low = used - 15 * 2**20  # about two of the four images
    run = run_agent(agent_env(runtime_bed, tmp_path, DOCKER_IMAGE_CLEANER_THRESHOLD_TYPE="absolute",
                              DOCKER_IMAGE_CLEANER_THRESHOLD_HIGH=used - 2**20,
                              DOCKER_IMAGE_CLEANER_THRESHOLD_LOW=low))
    assert run.code == 0, run.log
    assert run.states() == FULL_CYCLE
    assert disk.tree_bytes(str(runtime_bed.mountpoint)) <= low
    assert 0 < sum(exists(runtime_bed, i) for i in images) < len(images)
    assert_handed_back(cluster)


def test_inode_pressure_alone_triggers_a_cycle(runtime_bed: DockerBed, cluster: Cluster, tmp_path) -> None:
    runtime_bed.build_image("many-files:1", 6, files=6000)
    runtime_bed.build_image("many-files:2", 6, files=6000)
    blocks, inodes = settled_usage(runtime_bed)
    assert inodes > blocks + 10, (blocks, inodes)
    run = run_agent(agent_env(runtime_bed, tmp_path, DOCKER_IMAGE_CLEANER_THRESHOLD_HIGH=round(inodes - 5)))
    assert run.code == 0, run.log
    assert "Cordoning" in run.states()
    assert runtime_bed.usage()[1] < inodes - 10
    assert_handed_back(cluster)


def test_without_node_name_there_is_no_cluster(runtime_bed: DockerBed, tmp_path) -> None:
    image = runtime_bed.build_image("app:1", 20)
    run = run_agent(above(runtime_bed, tmp_path, node=False))
    assert run.code == 0, run.log
    assert run.states() == FULL_CYCLE  # Cordoning and Uncordoning still show, doing nothing
    assert "no cluster: nothing to cordon" in run.log
    assert not exists(runtime_bed, image)


def test_a_node_cordoned_by_someone_else_stays_cordoned(docker_bed: DockerBed, cluster: Cluster,
                                                        tmp_path) -> None:
    cluster.mutate(NODE, lambda n: n["spec"].update(unschedulable=True))
    docker_bed.build_image("app:1", 20)
    run = run_agent(above(docker_bed, tmp_path))
    assert run.code == 0, run.log
    assert run.states() == FULL_CYCLE, run.log
    entry = assert_handed_back(cluster, unschedulable=True)
    assert entry["cordoned_by_us"] is False


def test_api_server_errors_are_retried(docker_bed: DockerBed, cluster: Cluster, tmp_path) -> None:
    docker_bed.build_image("app:1", 20)
    cluster = needs_fake(cluster)
    cluster.fail("PATCH", status=500, times=2)
    cluster.fail("GET", status=503, times=1)
    run = run_agent(above(docker_bed, tmp_path))
    assert run.code == 0, run.log
    assert run.log.count("retrying in") >= 3
    assert_handed_back(cluster)


def test_when_the_cordon_cannot_be_written_nothing_is_removed(docker_bed: DockerBed, cluster: Cluster,
                                                              tmp_path) -> None:
    image = docker_bed.build_image("app:1", 20)
    cluster = needs_fake(cluster)
    cluster.fail("PATCH", status=500, times=3)
    run = run_agent(above(docker_bed, tmp_path, FSM_CLEANER_RETRY_ATTEMPTS=3))
    assert run.code == 1, run.log
    assert run.states()[-3:] == ["TakingSlot", "Uncordoning", "Idle"]  # its journal is the first write
    assert "cycle FAILED" in run.log
    assert exists(docker_bed, image)
    assert not cluster.node(NODE)["spec"].get("unschedulable")


def test_with_docker_down_the_node_is_not_cordoned(runtime_bed: DockerBed, cluster: Cluster,
                                                    tmp_path) -> None:
    runtime_bed.build_image("app:1", 20)
    env = above(runtime_bed, tmp_path, FSM_CLEANER_RETRY_ATTEMPTS=2)
    before = rv(cluster)
    runtime_bed.stop_daemon()
    try:
        run = run_agent(env)
    finally:
        runtime_bed.start_daemon()
    assert run.code == 1, run.log
    assert run.states()[-2:] == ["Measuring", "Idle"]
    assert "Measuring failed" in run.log and "cycle failed in Measuring" in run.log
    assert rv(cluster) == before  # the node was never touched


def test_a_bug_in_a_state_hands_the_node_back(runtime_bed: DockerBed, cluster: Cluster, tmp_path,
                                              monkeypatch, caplog) -> None:
    """In process: an unexpected exception inside PruningAll fails the cycle, it does not crash the
    agent with the node cordoned."""
    from kubernetes import client
    from kubernetes import config as kube_config

    from fsm_cleaner import config, plan
    from fsm_cleaner.cli import build_agent
    from fsm_cleaner.kube import Kube
    from fsm_cleaner.runtimes import Detected

    fake = needs_fake(cluster)
    runtime_bed.build_image("app:1", 20)
    env = above(runtime_bed, tmp_path)
    monkeypatch.setattr(plan, "plan_removals", lambda *a, **k: 1 / 0)
    api = client.CoreV1Api(kube_config.new_client_from_config(config_file=env["KUBECONFIG"]))
    agent = build_agent(config.load(env), Detected(lambda: runtime_bed.client().api), Kube(api, NODE))
    with caplog.at_level("INFO", logger="fsm_cleaner"):
        assert agent.run(once=True) == 1
    assert "unexpected error in PruningAll" in caplog.text
    assert re.findall(r"\w+ -> (\w+)", caplog.text)[-2:] == ["Uncordoning", "Idle"]
    assert not is_cordoned(fake)
    assert_handed_back(fake)


def dry_run_scene(bed: DockerBed) -> tuple[str, str, str, list[str]]:
    """An unused image, an image used only by a stopped container, and a dangling image."""
    unused = bed.build_image("app:1", 20)
    used = bed.build_image("app:2", 10)
    stopped = bed.run_container(used, running=False)
    return unused, used, stopped, bed.make_dangling(1, 2)


def test_dry_run_reports_and_touches_nothing(runtime_bed: DockerBed, cluster: Cluster, tmp_path) -> None:
    unused, used, stopped, dangling = dry_run_scene(runtime_bed)
    before = rv(cluster)
    run = run_agent(above(runtime_bed, tmp_path), "--dry-run")
    assert run.code == 0, run.log
    assert "would remove 1 stopped containers" in run.log, run.log
    assert "would remove 1 dangling images" in run.log, run.log
    # as the runtime lists it: dockerd "app:1", Podman "docker.io/library/app:1"
    assert re.search(r"would remove image (docker\.io/library/)?app:1 ", run.log), run.log
    assert runtime_bed.client().containers.get(stopped)
    assert all(exists(runtime_bed, i) for i in [unused, used, *dangling])
    assert rv(cluster) == before
    if isinstance(cluster, FakeKube):
        assert [r.method for r in cluster.requests if r.method != "GET"] == []  # no write, no Event


def test_dry_run_projects_what_a_real_run_frees(runtime_bed: DockerBed, cluster: Cluster, tmp_path) -> None:
    dry_run_scene(runtime_bed)
    env = above(runtime_bed, tmp_path)
    dry = summary(run_agent(env, "--dry-run"))
    real = summary(run_agent(env))
    # the same objects: as many containers and images, and Docker's sizes of them
    assert (dry["containers"], dry["images"], dry["reported"]) == (
        real["containers"], real["images"], real["reported"])
    # and what would be freed is what the filesystem got back, within Docker's overstatement of shared layers
    assert abs(to_bytes(dry["freed"]) - to_bytes(real["freed"])) <= 0.2 * to_bytes(real["freed"]), (dry, real)


BAD_CONFIG = [
    ({"DOCKER_IMAGE_CLEANER_THRESHOLD_TYPE": "percent"}, "DOCKER_IMAGE_CLEANER_THRESHOLD_TYPE='percent'"),
    ({"DOCKER_IMAGE_CLEANER_THRESHOLD_HIGH": "80%"}, "DOCKER_IMAGE_CLEANER_THRESHOLD_HIGH='80%'"),
    ({"DOCKER_IMAGE_CLEANER_THRESHOLD_HIGH": "101"}, "from 0 to 100"),
    ({"DOCKER_IMAGE_CLEANER_THRESHOLD_HIGH": "50", "DOCKER_IMAGE_CLEANER_THRESHOLD_LOW": "60"}, "is above"),
    ({"DOCKER_IMAGE_CLEANER_INTERVAL_SECONDS": "five"}, "DOCKER_IMAGE_CLEANER_INTERVAL_SECONDS='five'"),
    ({"DOCKER_IMAGE_CLEANER_PATH_TO_CHECK": "/nonexistent"}, "does not exist"),
    ({"FSM_CLEANER_MAX_CORDONED": "two"}, "FSM_CLEANER_MAX_CORDONED='two' is not a node count"),
    ({"FSM_CLEANER_CORDON": "sometimes"}, "FSM_CLEANER_CORDON='sometimes' is not a boolean"),
]


@pytest.mark.parametrize("bad,message", BAD_CONFIG, ids=[m for _, m in BAD_CONFIG])
def test_bad_configuration_exits_2_and_touches_nothing(docker_bed: DockerBed, cluster: Cluster, tmp_path,
                                                        bad: dict, message: str) -> None:
    image = docker_bed.build_image("app:1", 5)
    before = rv(cluster)
    run = run_agent(agent_env(docker_bed, tmp_path, DOCKER_IMAGE_CLEANER_THRESHOLD_HIGH=0) | bad)
    assert run.code == 2
    assert message in run.log and "accepted:" in run.log
    assert len(run.log.strip().splitlines()) == 1  # one message, no traceback
    assert rv(cluster) == before
    assert exists(docker_bed, image)


def test_a_running_build_pod_defers_image_removals_until_it_ends(runtime_bed: DockerBed, cluster: Cluster,
                                                                 tmp_path) -> None:
    """BLOCKING_POD_SELECTOR: while a selected pod runs on the node the stopped container goes and the
    images stay; once it has ended, the next cycle removes them. Pods on other nodes or with other
    labels never block: the node and the selector reach the API server."""
    cluster = needs_fake(cluster)
    old = runtime_bed.build_image("app:old", 20)
    runtime_bed.run_container(old, running=False)
    build = {"component": "binderhub-build"}
    cluster.add_pod("build-1", NODE, namespace="binder", labels=build)
    cluster.add_pod("build-2", "node-2", namespace="binder", labels=build)
    cluster.add_pod("hub", NODE, namespace="binder", labels={"component": "hub"})
    env = above(runtime_bed, tmp_path, 2, FSM_CLEANER_BLOCKING_POD_SELECTOR="component=binderhub-build")

    run = run_agent(env)
    assert run.code == 0, run.log
    assert run.states() == ["Reconciling", "Idle", "Measuring", "TakingSlot", "Cordoning",
                            "PruningContainers", "Uncordoning", "Idle"], run.log
    assert "waiting: pod binder/build-1 (selector component=binderhub-build) runs on this node; images, " \
           "dangling images and build cache stay until the next tick" in run.log
    assert runtime_bed.client().containers.list(all=True) == []  # the stopped container went
    assert exists(runtime_bed, old)
    assert_handed_back(cluster)
    assert "RemovalsDeferred" in {e["reason"] for e in cluster.events}
    assert [r.method for r in cluster.requests if r.path == "/api/v1/pods"] == ["GET"]  # once a cycle

    cluster.set_pod_phase("build-1", "Succeeded", namespace="binder")
    run = run_agent(env)  # the next tick
    assert run.code == 0, run.log
    assert run.states() == FULL_CYCLE, run.log
    assert not exists(runtime_bed, old)
    assert "waiting:" not in run.log
    assert_handed_back(cluster)


def test_cordon_false_cleans_everything_with_no_write_to_unschedulable(docker_bed: DockerBed,
                                                                       cluster: Cluster, tmp_path) -> None:
    """CORDON=false (BinderHub's cordon: false, a single-node cluster): the whole cycle, images included,
    the journal and the Events kept, and not one write to spec.unschedulable nor to a cordon slot."""
    cluster = needs_fake(cluster)
    old = docker_bed.build_image("app:old", 20)
    docker_bed.run_container(old, running=False)
    run = run_agent(above(docker_bed, tmp_path, FSM_CLEANER_CORDON="false"))
    assert run.code == 0, run.log
    no_cordon = [s for s in FULL_CYCLE if s != "Cordoning"]
    assert run.states() == no_cordon, run.log
    assert "TakingSlot: CORDON=false: cleaning without a cordon" in run.log
    assert not exists(docker_bed, old) and "removed 1 containers and " in run.log
    patches = [r for r in cluster.requests if r.method == "PATCH"]
    # JSON patches whose only mention of spec.unschedulable is a `test` of it (the precondition)
    assert patches and all(isinstance(r.body, list) for r in patches)
    assert not [op for r in patches for op in r.body if op["path"].startswith("/spec") and op["op"] != "test"]
    assert cluster.cordoned_history and not any(cluster.cordoned_history)
    assert not [r for r in cluster.requests if "leases" in r.path]
    assert_handed_back(cluster)
    assert "CleanupDone" in {e["reason"] for e in cluster.events}
