"""Blocking pods: the pure decision, the selector check at start, and the pod listing over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes import config as kubeconfig

from devtools.fakekube import ApiError, FakeKube, parse_label_selector
from fsm_cleaner import config, selector
from fsm_cleaner.blocking import Pod, notice, removals_blocked, waiting
from fsm_cleaner.kube import Kube, PodsForbidden

RUNNING, PENDING = Pod("binder", "build-a", "Running"), Pod("binder", "build-b", "Pending")
DONE, FAILED, UNKNOWN = (Pod("binder", n, p) for n, p in
                         (("build-c", "Succeeded"), ("build-d", "Failed"), ("build-e", "Unknown")))


@pytest.mark.parametrize("pods, usage, critical, blocked", [
    ([], 90.0, None, False),  # nothing runs
    ([RUNNING], 90.0, None, True),
    ([PENDING], 90.0, None, True),  # bound to the node, about to pull and build
    ([DONE, FAILED, UNKNOWN], 90.0, None, False),  # nothing left running that a removal could break
    ([DONE, RUNNING], 90.0, None, True),
    ([RUNNING], 94.9, 95.0, True),  # below the critical level
    ([RUNNING], 95.0, 95.0, False),  # at it: the disk comes first
    ([RUNNING], 99.0, 95.0, False),
    ([], 99.0, 95.0, False),
])
def test_removals_blocked(pods: list[Pod], usage: float, critical: float | None, blocked: bool) -> None:
    assert removals_blocked(pods, usage, critical) is blocked


def test_the_log_line_names_the_running_pods_and_what_stays() -> None:
    assert waiting([DONE, RUNNING], "component=binderhub-build") == (
        "waiting: pod binder/build-a (selector component=binderhub-build) runs on this node; images, "
        "dangling images and build cache stay until the next tick")
    many = [Pod("binder", f"build-{n}", "Running") for n in range(5)]
    assert waiting(many, "x").startswith(
        "waiting: pods binder/build-0, binder/build-1, binder/build-2 and 2 more (selector x) run on")


# Selectors the API server accepts, and ones it refuses (apimachinery's labels.Parse).
VALID = ["component=binderhub-build", "component==binderhub-build", "component!=web", "app", "!app",
         "! app", "app in (build,push)", "app notin (web)", "app in(build)", "app in (build, push )",
         "app in (a,)", "env=", "hub.jupyter.org/network-access-hub=true", "a=b,c!=d,e,!f,g in (h)",
         "  a = b  ", "a==", "tier in (in,notin)", "n>5", "n<10", "example.com/x=y", "a in (,b)"]
INVALID = ["a b", "=b", "a=b=c", "a in ()", "a in (b c)", "a in b", "a=b,", ",a=b", "a,,b", "!a=b",
           "in", "notin=x", "a>b", "a<-1", "-a=b", "a=-b", "A_/b=c", "a/b/c=d", "x" * 64 + "=y",
           "a=" + "v" * 64, "a in (b", "a in b)", "a!", "a=(b)", "Example.com/x=y"]


@pytest.mark.parametrize("text", VALID)
def test_a_selector_the_server_accepts_is_accepted(text: str) -> None:
    selector.parse(text)
    parse_label_selector(text)  # the fake API server agrees: the tests behind it mean something


@pytest.mark.parametrize("text", INVALID)
def test_a_selector_the_server_refuses_is_a_configuration_error(text: str, tmp_path: Path) -> None:
    with pytest.raises(ApiError):
        parse_label_selector(text)
    env = {"FSM_CLEANER_PATH_TO_CHECK": str(tmp_path), "FSM_CLEANER_NODE_NAME": "node-1",
           "FSM_CLEANER_BLOCKING_POD_SELECTOR": text}
    with pytest.raises(config.ConfigError) as e:
        config.load(env)
    assert str(e.value).startswith(f"FSM_CLEANER_BLOCKING_POD_SELECTOR={text!r} is not a label selector: ")
    assert "accepted: a Kubernetes label selector such as component=binderhub-build" in str(e.value)


def test_the_selector_is_parsed_into_its_requirements() -> None:
    assert selector.parse("a=b, !c, d in (e,f), g!=h, i") == [
        ("a", "=", ("b",)), ("c", "!", ()), ("d", "in", ("e", "f")), ("g", "!=", ("h",)), ("i", "exists", ())]
    assert selector.parse("") == []


def test_a_selector_without_a_node_is_a_configuration_error(tmp_path: Path) -> None:
    env = {"FSM_CLEANER_PATH_TO_CHECK": str(tmp_path), "FSM_CLEANER_BLOCKING_POD_SELECTOR": "app=build"}
    with pytest.raises(config.ConfigError, match=r"BLOCKING_POD_SELECTOR='app=build' needs NODE_NAME"):
        config.load(env)
    assert config.load({**env, "FSM_CLEANER_NODE_NAME": "node-1"}).blocking_pod_selector == "app=build"
    assert config.load({**env, "FSM_CLEANER_BLOCKING_POD_SELECTOR": ""}).blocking_pod_selector is None


# --- kube.Kube.pods_on_node against the fake API server -------------------------------------------

@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[FakeKube, Kube]]:
    with FakeKube() as fk:
        fk.add_node("node-1")
        cfg = client.Configuration()
        kubeconfig.load_kube_config(config_file=str(fk.kubeconfig(tmp_path / "kubeconfig")),
                                    client_configuration=cfg)
        cfg.retries = 0
        api = client.CoreV1Api(client.ApiClient(cfg))
        yield fk, Kube(api, "node-1")
        api.api_client.close()


def test_the_pods_on_this_node_in_every_namespace(fake: tuple[FakeKube, Kube]) -> None:
    fk, kube = fake
    build = {"component": "binderhub-build"}
    fk.add_pod("build-a", "node-1", namespace="binder", labels=build)
    fk.add_pod("build-b", "node-1", namespace="other", labels=build, phase="Pending")
    fk.add_pod("build-c", "node-2", namespace="binder", labels=build)  # another node
    fk.add_pod("hub", "node-1", namespace="binder", labels={"component": "hub"})
    assert kube.pods_on_node("component=binderhub-build") == [
        Pod("binder", "build-a", "Running"), Pod("other", "build-b", "Pending")]
    fk.set_pod_phase("build-a", "Succeeded", namespace="binder")
    fk.delete_pod("build-b", namespace="other")
    assert kube.pods_on_node("component=binderhub-build") == [Pod("binder", "build-a", "Succeeded")]
    assert kube.pods_on_node("component in (hub, proxy)") == [Pod("binder", "hub", "Running")]


def test_pods_list_forbidden_names_the_rbac_component(fake: tuple[FakeKube, Kube]) -> None:
    fk, kube = fake
    fk.fail("GET", r"^/api/v1/pods$", status=403)
    with pytest.raises(PodsForbidden, match="deploy/components/blocking-pods"):
        kube.pods_on_node("app=build")


@pytest.mark.parametrize("pods, blocked, said", [
    ([], False, None),
    ([DONE, FAILED], False, None),  # listed, but nothing runs: nothing to say
    ([RUNNING, DONE], True, ("RemovalsDeferred", "waiting: pod binder/build-a (selector s) runs on this "
                             "node; images, dangling images and build cache stay until the next tick")),
    ([RUNNING, PENDING], False, ("CriticalUsage", "pods binder/build-a, binder/build-b (selector s) on this "
                                 "node, but usage 97.0% is at the critical level: removing anyway")),
])
def test_what_the_log_and_the_event_say(pods: list[Pod], blocked: bool, said: tuple[str, str] | None) -> None:
    assert notice(pods, "s", blocked, "97.0%") == said
