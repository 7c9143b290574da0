"""Drive devtools/fakekube.py with the real kubernetes client, so the fake stays honest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import (
    ApiException,
    ConflictException,
    NotFoundException,
    UnprocessableEntityException,
)

from devtools.fakekube import JSON_PATCH_NOT_APPLIED, FakeKube, json_patch, strategic_merge_patch
from fsm_cleaner import journal
from fsm_cleaner.journal import NodeChanged, Patch
from fsm_cleaner.kube import Kube

ROOT = Path(__file__).resolve().parent.parent
STATE_KEY = "fsm-cleaner/state"


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    with FakeKube() as fk:
        fk.add_node("n1", labels={"role": "worker"}, annotations={"keep": "me"})
        yield fk
    assert not fk.running


def make_api(fk: FakeKube, kubeconfig: Path) -> client.CoreV1Api:
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(fk.kubeconfig(kubeconfig)), client_configuration=cfg)
    cfg.retries = 0  # urllib3 retries by default, which would swallow injected faults
    return client.CoreV1Api(client.ApiClient(cfg))


@pytest.fixture
def v1(fake: FakeKube, tmp_path: Path) -> Iterator[client.CoreV1Api]:
    api = make_api(fake, tmp_path / "kubeconfig")
    yield api
    api.api_client.close()


def status_of(err: ApiException) -> dict[str, Any]:
    body = json.loads(err.body)
    assert body["kind"] == "Status" and body["apiVersion"] == "v1"
    assert body["status"] == "Failure" and body["code"] == err.status
    return body


def last_request(fk: FakeKube, method: str) -> Any:
    return [r for r in fk.requests if r.method == method][-1]


# -- reads --------------------------------------------------------------------------------------


def test_read_node_and_404(fake: FakeKube, v1: client.CoreV1Api) -> None:
    node = v1.read_node("n1")
    assert node.metadata.name == "n1"
    assert node.metadata.uid and node.metadata.creation_timestamp
    assert node.metadata.resource_version == fake.node("n1")["metadata"]["resourceVersion"]
    assert node.spec.unschedulable is None  # omitted when false, like the real server
    assert node.metadata.labels == {"role": "worker"}

    with pytest.raises(NotFoundException) as exc:
        v1.read_node("nope")
    body = status_of(exc.value)
    assert body["reason"] == "NotFound"
    assert body["message"] == 'nodes "nope" not found'
    assert body["details"] == {"name": "nope", "kind": "nodes"}


def test_list_nodes(fake: FakeKube, v1: client.CoreV1Api) -> None:
    fake.add_node("n2", unschedulable=True)
    nodes = v1.list_node()
    assert [n.metadata.name for n in nodes.items] == ["n1", "n2"]
    assert [n.spec.unschedulable for n in nodes.items] == [None, True]
    assert nodes.metadata.resource_version == fake.resource_version
    with pytest.raises(ApiException) as exc:  # not implemented: an error, never a wrong answer
        v1.list_node(label_selector="role=worker")
    assert exc.value.status == 400


def test_methods_not_served_are_405(fake: FakeKube, v1: client.CoreV1Api) -> None:
    node = v1.read_node("n1")
    node.metadata.annotations["put"] = "yes"
    with pytest.raises(ApiException) as exc:
        v1.replace_node("n1", node)
    assert exc.value.status == 405 and status_of(exc.value)["reason"] == "MethodNotAllowed"
    assert "put" not in fake.node("n1")["metadata"]["annotations"]


def test_unknown_path_is_404_status(fake: FakeKube) -> None:
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(fake.url + "/api/v1/secrets", timeout=5)
    body = json.loads(exc.value.read())
    assert exc.value.code == 404
    assert body["kind"] == "Status" and body["reason"] == "NotFound"


def test_version_and_discovery(fake: FakeKube, v1: client.CoreV1Api) -> None:
    assert client.VersionApi(v1.api_client).get_code().major == "1"
    assert client.CoreApi(v1.api_client).get_api_versions().versions == ["v1"]


# -- patches ------------------------------------------------------------------------------------


def test_dict_patch_is_strategic_merge_and_bumps_rv(fake: FakeKube, v1: client.CoreV1Api) -> None:
    rv0 = int(fake.node("n1")["metadata"]["resourceVersion"])
    node = v1.patch_node(
        "n1", {"spec": {"unschedulable": True}, "metadata": {"annotations": {STATE_KEY: "{}"}}}
    )
    assert node.spec.unschedulable is True
    assert node.metadata.annotations == {"keep": "me", STATE_KEY: "{}"}
    assert int(node.metadata.resource_version) > rv0
    # The client picks json-patch+json by default but rewrites it for non-list bodies.
    assert last_request(fake, "PATCH").content_type == "application/strategic-merge-patch+json"

    # Uncordon: false is omitted on the way back, as with the real Go omitempty field.
    assert v1.patch_node("n1", {"spec": {"unschedulable": False}}).spec.unschedulable is None
    assert "unschedulable" not in fake.node("n1")["spec"]


def test_merge_patch_null_deletes(fake: FakeKube, v1: client.CoreV1Api) -> None:
    node = v1.patch_node(
        "n1",
        {"metadata": {"annotations": {"keep": None, "new": "v"}}},
        _content_type="application/merge-patch+json",
    )
    assert node.metadata.annotations == {"new": "v"}
    assert last_request(fake, "PATCH").content_type == "application/merge-patch+json"
    # Removing the last annotation removes the map, like the real server.
    v1.patch_node(
        "n1",
        {"metadata": {"annotations": {"new": None}}},
        _content_type="application/merge-patch+json",
    )
    assert "annotations" not in fake.node("n1")["metadata"]


def test_noop_patch_keeps_resource_version(fake: FakeKube, v1: client.CoreV1Api) -> None:
    rv = fake.node("n1")["metadata"]["resourceVersion"]
    node = v1.patch_node("n1", {"metadata": {"annotations": {"keep": "me"}}})
    assert node.metadata.resource_version == rv
    assert fake.node("n1")["metadata"]["resourceVersion"] == rv


def test_stale_resource_version_is_conflict(fake: FakeKube, v1: client.CoreV1Api) -> None:
    stale = fake.node("n1")["metadata"]["resourceVersion"]
    fake.mutate("n1", lambda n: n["metadata"]["annotations"].update(other="writer"))
    with pytest.raises(ConflictException) as exc:
        v1.patch_node("n1", {"metadata": {"resourceVersion": stale, "annotations": {"a": "b"}}})
    assert exc.value.status == 409
    body = status_of(exc.value)
    assert body["reason"] == "Conflict"
    assert body["message"] == (
        'Operation cannot be fulfilled on nodes "n1": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )
    assert "a" not in fake.node("n1")["metadata"]["annotations"]

    # A matching resourceVersion passes; the stored one never comes from the body.
    current = fake.node("n1")["metadata"]["resourceVersion"]
    node = v1.patch_node("n1", {"metadata": {"resourceVersion": current, "labels": {"x": "y"}}})
    assert int(node.metadata.resource_version) == int(current) + 1


def test_json_patch_test_op_and_escapes(fake: FakeKube, v1: client.CoreV1Api) -> None:
    rv = fake.node("n1")["metadata"]["resourceVersion"]
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
        {"op": "add", "path": "/metadata/annotations/fsm-cleaner~1state", "value": "v1"},
        {"op": "replace", "path": "/spec", "value": {"unschedulable": True}},
    ]
    node = v1.patch_node("n1", ops)  # a list body goes out as json-patch+json
    assert last_request(fake, "PATCH").content_type == "application/json-patch+json"
    assert node.metadata.annotations[STATE_KEY] == "v1"
    assert node.spec.unschedulable is True

    failing = [
        {"op": "test", "path": "/metadata/annotations/fsm-cleaner~1state", "value": "other"},
        {"op": "remove", "path": "/spec/unschedulable"},
    ]
    with pytest.raises(UnprocessableEntityException) as exc:
        v1.patch_node("n1", failing)
    assert status_of(exc.value)["reason"] == "Invalid"
    assert fake.node("n1")["spec"]["unschedulable"] is True  # atomic: nothing applied

    with pytest.raises(UnprocessableEntityException):
        v1.patch_node("n1", [{"op": "remove", "path": "/metadata/annotations/missing"}])
    with pytest.raises(UnprocessableEntityException):
        v1.patch_node("n1", [{"op": "add", "path": "/no/such/parent", "value": 1}])


def test_json_patch_ops_unit() -> None:
    doc = {"a": {"b~c": 1, "d/e": [1, 2]}, "t": True}
    out = json_patch(
        doc,
        [
            {"op": "copy", "from": "/a/b~0c", "path": "/a/copied"},
            {"op": "move", "from": "/a/d~1e", "path": "/list"},
            {"op": "add", "path": "/list/-", "value": 3},
            {"op": "add", "path": "/list/0", "value": 0},
            {"op": "test", "path": "/t", "value": True},
        ],
    )
    assert out == {"a": {"b~c": 1, "copied": 1}, "list": [0, 1, 2, 3], "t": True}
    assert doc["a"]["d/e"] == [1, 2]  # input untouched
    with pytest.raises(Exception, match="test failed"):
        json_patch(doc, [{"op": "test", "path": "/t", "value": 1}])  # true is not 1


def test_json_patch_test_of_null_means_absent_as_on_the_real_server(fake: FakeKube,
                                                                  v1: client.CoreV1Api) -> None:
    # evanphx/json-patch, which the API server uses: a test for null passes when the key is missing
    # (so "absent" can be tested), fails when the key has a value, and fails when the parent is missing.
    absent = {"op": "test", "path": "/metadata/annotations/fsm-cleaner~1state", "value": None}
    node = v1.patch_node("n1", [absent, {"op": "add", "path": "/metadata/annotations/fsm-cleaner~1state",
                                         "value": "v1"}])
    assert node.metadata.annotations[STATE_KEY] == "v1"
    assert last_request(fake, "PATCH").body[0] == absent  # the client sends the null as it is
    for failing in (absent, {"op": "test", "path": "/metadata/labels/missing/deeper", "value": None},
                    {"op": "test", "path": "/metadata/annotations/keep", "value": "not me"}):
        with pytest.raises(UnprocessableEntityException) as exc:
            v1.patch_node("n1", [failing, {"op": "add", "path": "/spec/unschedulable", "value": True}])
        assert status_of(exc.value)["message"] == JSON_PATCH_NOT_APPLIED  # the library's error is dropped
    assert fake.node("n1")["spec"].get("unschedulable") is None  # nothing applied
    assert json_patch({"a": {}}, [{"op": "test", "path": "/a/b", "value": None}]) == {"a": {}}
    with pytest.raises(Exception, match="test operation does not apply: is missing path: /x/b"):
        json_patch({"a": {}}, [{"op": "test", "path": "/x/b", "value": None}])


def kube(fk: FakeKube, tmp_path: Path) -> Kube:
    return Kube(make_api(fk, tmp_path / "kubeconfig-agent"), "n1")


def churn(fk: FakeKube, stop: threading.Event, every: float) -> threading.Thread:
    """The kubelet's status updates: a new resourceVersion every ``every`` seconds."""
    def beat() -> None:
        n = 0
        while not stop.wait(every):
            n += 1
            fk.mutate("n1", lambda node, n=n: node["status"].update(heartbeat=str(n)))
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    return thread


def test_node_writes_land_on_a_busy_node(fake: FakeKube, tmp_path: Path) -> None:
    """Issue 9 item 8: status updates every 100 ms and 150 ms of PATCH latency. A precondition on the
    whole object's version loses every race; the agent's precondition is on its own data."""
    agent = kube(fake, tmp_path)
    me = journal.Holder("pod-a", "token-a")
    stop = threading.Event()
    thread = churn(fake, stop, 0.1)
    fake.fail("PATCH", path="/nodes/n1$", status=None, delay=0.15, times=10)
    try:
        for decide in (lambda n: journal.cordon(n, me, journal.now_rfc3339()),
                       lambda n: journal.advance(n, "PruningAll", me, journal.now_rfc3339()),
                       lambda n: journal.release(n, me, journal.now_rfc3339())):
            seen = agent.read()
            agent.write(seen, decide(seen))  # no retry: the first attempt lands
            assert fake.node("n1")["metadata"]["resourceVersion"] != seen.resource_version
    finally:
        stop.set()
        thread.join(5)
    node = fake.node("n1")
    assert node["spec"].get("unschedulable") is None and node["metadata"]["annotations"]["keep"] == "me"
    assert journal.decode(node["metadata"]["annotations"][STATE_KEY]).state == "Idle"
    patches = [r for r in fake.requests if r.method == "PATCH"]
    assert len(patches) == 3 and all(r.content_type == "application/json-patch+json" for r in patches)


def test_a_changed_journal_or_cordon_fails_the_write(fake: FakeKube, tmp_path: Path) -> None:
    agent = kube(fake, tmp_path)
    me = journal.Holder("pod-a", "token-a")
    seen = agent.read()
    cordon = journal.cordon(seen, me, journal.now_rfc3339())
    assert isinstance(cordon, Patch)
    fake.mutate("n1", lambda node: node["spec"].update(unschedulable=True))  # an administrator's cordon
    with pytest.raises(NodeChanged, match="n1 changed since it was read"):
        agent.write(seen, cordon)
    fake.mutate("n1", lambda node: node["spec"].update(unschedulable=False))
    fake.mutate("n1", lambda node: node["metadata"]["annotations"].update({STATE_KEY: "someone else's"}))
    with pytest.raises(NodeChanged):
        agent.write(seen, cordon)
    assert fake.node("n1")["metadata"]["annotations"][STATE_KEY] == "someone else's"
    assert fake.node("n1")["spec"].get("unschedulable") is None


def test_a_node_without_annotations_is_written_with_a_version_precondition(fake: FakeKube,
                                                                          tmp_path: Path) -> None:
    # A JSON patch cannot create the map without replacing it whole; this rare node (kubelets annotate
    # theirs) gets a merge patch conditional on the resourceVersion instead.
    fake.mutate("n1", lambda node: node["metadata"].pop("annotations"))
    agent = kube(fake, tmp_path)
    seen = agent.read()
    assert seen.annotations == {}
    cordon = journal.cordon(seen, journal.Holder("pod-a", "token-a"), journal.now_rfc3339())
    assert isinstance(cordon, Patch)
    fake.mutate("n1", lambda node: node["status"].update(heartbeat="1"))
    with pytest.raises(ConflictException):
        agent.write(seen, cordon)
    agent.write(agent.read(), cordon)
    request = last_request(fake, "PATCH")
    assert request.content_type == "application/strategic-merge-patch+json"
    assert request.body["metadata"]["resourceVersion"]
    assert STATE_KEY in fake.node("n1")["metadata"]["annotations"]


def test_strategic_merge_directives_unit() -> None:
    node = {
        "metadata": {"finalizers": ["a"], "annotations": {"x": "1", "y": "2"}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Disk"}]},
    }
    out = strategic_merge_patch(
        node,
        {
            "metadata": {"finalizers": ["b"], "annotations": {"$patch": "replace", "z": "3"}},
            "status": {
                "conditions": [
                    {"type": "Ready", "status": "False"},
                    {"type": "Disk", "$patch": "delete"},
                    {"type": "New", "status": "True"},
                ]
            },
        },
    )
    assert out["metadata"] == {"finalizers": ["a", "b"], "annotations": {"z": "3"}}
    assert out["status"]["conditions"] == [
        {"type": "Ready", "status": "False"},
        {"type": "New", "status": "True"},
    ]


def test_validation_and_content_types(fake: FakeKube, v1: client.CoreV1Api) -> None:
    with pytest.raises(UnprocessableEntityException) as exc:
        v1.patch_node("n1", {"metadata": {"labels": {"bad": "not a label value!"}}})
    body = status_of(exc.value)
    assert body["reason"] == "Invalid" and body["message"].startswith('Node "n1" is invalid')

    with pytest.raises(ApiException) as exc:
        v1.patch_node("n1", {"spec": {}}, _content_type="application/apply-patch+yaml")
    assert exc.value.status == 415
    assert status_of(exc.value)["reason"] == "UnsupportedMediaType"


# -- fault injection ----------------------------------------------------------------------------


def test_fault_500_once_then_success(fake: FakeKube, v1: client.CoreV1Api) -> None:
    fake.fail("PATCH", r"^/api/v1/nodes/n1$", status=500)
    with pytest.raises(ApiException) as exc:
        v1.patch_node("n1", {"spec": {"unschedulable": True}})
    assert exc.value.status == 500
    assert status_of(exc.value)["reason"] == "InternalError"
    assert "unschedulable" not in fake.node("n1")["spec"]
    assert v1.patch_node("n1", {"spec": {"unschedulable": True}}).spec.unschedulable is True


def test_faults_consumed_in_order(fake: FakeKube, v1: client.CoreV1Api) -> None:
    fake.fail("GET", status=503)
    fake.fail("*", status=409, times=2)
    codes = []
    for _ in range(4):
        try:
            v1.read_node("n1")
            codes.append(200)
        except ApiException as err:
            codes.append(err.status)
    assert codes == [503, 409, 409, 200]


def test_delay_fault_times_out_but_write_lands(fake: FakeKube, v1: client.CoreV1Api) -> None:
    fake.fail("PATCH", delay=1.0, status=None)
    started = time.monotonic()
    # PATCH is not idempotent, so urllib3 raises the bare ReadTimeoutError (a GET would be
    # wrapped in MaxRetryError, see test_drop_gives_connection_error).
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        v1.patch_node("n1", {"spec": {"unschedulable": True}}, _request_timeout=0.2)
    assert time.monotonic() - started < 0.9
    # Like a real apiserver, the write still happens after the client has given up.
    deadline = time.monotonic() + 5
    while "unschedulable" not in fake.node("n1")["spec"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_drop_gives_connection_error(fake: FakeKube, v1: client.CoreV1Api) -> None:
    fake.fail("GET", drop=True)
    # GET is idempotent, so urllib3 wraps it in MaxRetryError; a dropped PATCH is a bare
    # ProtocolError (urllib3 never retries non-idempotent methods on read errors).
    with pytest.raises(urllib3.exceptions.MaxRetryError) as exc:
        v1.read_node("n1")
    assert isinstance(exc.value.reason, urllib3.exceptions.ProtocolError)
    fake.fail("PATCH", drop=True)
    with pytest.raises(urllib3.exceptions.ProtocolError):
        v1.patch_node("n1", {"spec": {"unschedulable": True}})
    assert "unschedulable" not in fake.node("n1")["spec"]
    assert v1.read_node("n1").metadata.name == "n1"


def test_on_request_hook_plays_concurrent_writer(fake: FakeKube, v1: client.CoreV1Api) -> None:
    def writer(method: str, path: str) -> None:
        if method == "PATCH":
            fake.on_request(None)  # only once
            fake.mutate("n1", lambda n: n["metadata"]["annotations"].update(race="won"))

    node = v1.read_node("n1")
    fake.on_request(writer)
    with pytest.raises(ConflictException):
        v1.patch_node(
            "n1",
            {"metadata": {"resourceVersion": node.metadata.resource_version, "labels": {"a": "b"}}},
        )
    assert fake.node("n1")["metadata"]["annotations"]["race"] == "won"


def test_before_reply_hook_runs_after_the_write_and_before_the_reply(fake: FakeKube,
                                                                      v1: client.CoreV1Api) -> None:
    in_hook, release = threading.Event(), threading.Event()
    seen: list[tuple[str, str, int]] = []

    def hook(method: str, path: str, code: int, body: Any) -> None:
        seen.append((method, path, code))
        in_hook.set()
        assert release.wait(10)

    fake.before_reply(hook)
    patch = threading.Thread(target=v1.patch_node, args=("n1", {"spec": {"unschedulable": True}}))
    patch.start()
    assert in_hook.wait(10)
    assert fake.node("n1")["spec"]["unschedulable"] is True  # the write has landed ...
    patch.join(0.5)
    assert patch.is_alive()  # ... and the client is still waiting for its reply
    release.set()
    patch.join(10)
    assert not patch.is_alive()
    assert seen == [("PATCH", "/api/v1/nodes/n1", 200)]
    fake.before_reply(None)
    v1.read_node("n1")
    assert len(seen) == 1


# -- events -------------------------------------------------------------------------------------


def test_events_create(fake: FakeKube, v1: client.CoreV1Api) -> None:
    ref = client.V1ObjectReference(kind="Node", name="n1", api_version="v1")
    created = v1.create_namespaced_event(
        "default",
        client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name="n1."),
            involved_object=ref,
            reason="Cordoned",
            message="pruning docker",
            type="Normal",
        ),
    )
    assert created.metadata.name.startswith("n1.") and len(created.metadata.name) == 8
    assert created.metadata.namespace == "default"
    assert created.metadata.uid and created.metadata.resource_version
    named = client.CoreV1Event(metadata=client.V1ObjectMeta(name="n1.cleaned"), involved_object=ref,
                               reason="Cleaned", message="freed 1GiB", type="Normal")
    v1.create_namespaced_event("other", named)
    with pytest.raises(ConflictException) as exc:
        v1.create_namespaced_event("other", named)
    assert status_of(exc.value)["reason"] == "AlreadyExists"
    assert [(e["metadata"]["namespace"], e["reason"]) for e in fake.events] == [
        ("default", "Cordoned"), ("other", "Cleaned")]
    assert last_request(fake, "POST").path == "/api/v1/namespaces/other/events"


# -- concurrency, lifecycle, kubeconfig -----------------------------------------------------------


def test_concurrent_writers_lose_no_update(fake: FakeKube, tmp_path: Path) -> None:
    conflicts = [0, 0]
    errors: list[BaseException] = []

    def worker(idx: int) -> None:
        api = make_api(fake, tmp_path / f"kubeconfig-{idx}")
        try:
            for i in range(50):
                while True:
                    node = api.read_node("n1")
                    patch = {
                        "metadata": {
                            "resourceVersion": node.metadata.resource_version,
                            "annotations": {f"t{idx}-{i}": "done"},
                            "labels": {f"t{idx}-{i}": "done"},
                        }
                    }
                    try:
                        api.patch_node("n1", patch)
                        break
                    except ConflictException:
                        conflicts[idx] += 1
        except BaseException as exc:  # surface in the main thread
            errors.append(exc)
        finally:
            api.api_client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    meta = fake.node("n1")["metadata"]
    wanted = {f"t{t}-{i}" for t in range(2) for i in range(50)}
    assert wanted <= set(meta["annotations"])
    assert wanted <= set(meta["labels"])
    patches = [r for r in fake.requests if r.method == "PATCH"]
    assert len(patches) == 100 + sum(conflicts)


def test_restart_keeps_state(fake: FakeKube, v1: client.CoreV1Api) -> None:
    v1.patch_node("n1", {"metadata": {"annotations": {"before": "outage"}}})
    url = fake.url
    fake.stop()
    with pytest.raises(urllib3.exceptions.MaxRetryError) as exc:
        v1.read_node("n1", _request_timeout=1)
    assert isinstance(exc.value.reason, urllib3.exceptions.NewConnectionError)
    fake.start()
    assert fake.url == url
    assert v1.read_node("n1").metadata.annotations["before"] == "outage"


def test_kubeconfig_env_in_subprocesses(fake: FakeKube, tmp_path: Path) -> None:
    # kubernetes reads $KUBECONFIG once, at import time, so check it the way the agent uses
    # it: from separate processes, which also exercises concurrent clients.
    script = (
        "import sys\n"
        "from kubernetes import client, config\n"
        "config.load_kube_config()\n"
        "api = client.CoreV1Api()\n"
        "api.patch_node('n1', {'metadata': {'annotations': {sys.argv[1]: 'x'}}})\n"
        "print(api.read_node('n1').metadata.name)\n"
    )
    env = {**os.environ, "KUBECONFIG": str(fake.kubeconfig(tmp_path / "kc"))}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, f"proc-{i}"], env=env, stdout=subprocess.PIPE, text=True
        )
        for i in range(3)
    ]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert outputs == ["n1\n"] * 3
    assert {"proc-0", "proc-1", "proc-2"} <= set(fake.node("n1")["metadata"]["annotations"])


def test_standalone_cli(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kc"
    proc = subprocess.Popen(
        [sys.executable, "-m", "devtools.fakekube", "--port", "0", "--node", "cli-node"]
        + ["--kubeconfig", str(kubeconfig)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url + "/api/v1/nodes/cli-node", timeout=5) as resp:
            assert json.loads(resp.read())["metadata"]["name"] == "cli-node"
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        assert cfg.host == url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# --- pods: listing by node and selector (BLOCKING_POD_SELECTOR) ----------------------------------------


def _names(pod_list: Any) -> list[str]:
    return [f"{p.metadata.namespace}/{p.metadata.name}" for p in pod_list.items]


def test_pods_are_listed_by_node_and_label_selector(fake: FakeKube, v1: client.CoreV1Api) -> None:
    fake.add_pod("build-a", "n1", namespace="binder", labels={"component": "binderhub-build", "repo": "x"})
    fake.add_pod("build-b", "n2", namespace="binder", labels={"component": "binderhub-build"})
    fake.add_pod("hub", "n1", namespace="binder", labels={"component": "hub"})
    fake.add_pod("web", "n1", labels={"tier": "web", "replicas": "3"})
    on_n1 = "spec.nodeName=n1"
    assert _names(v1.list_pod_for_all_namespaces(field_selector=on_n1)) == [
        "binder/build-a", "binder/hub", "default/web"]
    for selector, expected in [
        ("component=binderhub-build", ["binder/build-a"]),
        ("component==binderhub-build", ["binder/build-a"]),
        ("component!=hub", ["binder/build-a", "default/web"]),  # a pod without the label matches !=
        ("component in (hub, binderhub-build)", ["binder/build-a", "binder/hub"]),
        ("component notin (hub)", ["binder/build-a", "default/web"]),
        ("repo", ["binder/build-a"]),
        ("!component", ["default/web"]),
        ("component,!repo", ["binder/hub"]),
        ("replicas>2", ["default/web"]),
        ("replicas<3", []),
    ]:
        found = v1.list_pod_for_all_namespaces(field_selector=on_n1, label_selector=selector)
        assert _names(found) == expected, selector
    assert _names(v1.list_namespaced_pod("binder", field_selector=on_n1)) == ["binder/build-a", "binder/hub"]
    assert _names(v1.list_namespaced_pod("binder", label_selector="component=binderhub-build")) == [
        "binder/build-a", "binder/build-b"]
    assert _names(v1.list_namespaced_pod("empty")) == []


def test_pods_come_and_go_and_change_phase(fake: FakeKube, v1: client.CoreV1Api) -> None:
    fake.add_pod("build-a", "n1", labels={"component": "build"}, phase="Pending")
    first = v1.list_pod_for_all_namespaces(field_selector="spec.nodeName=n1")
    assert [p.status.phase for p in first.items] == ["Pending"]
    fake.set_pod_phase("build-a", "Running")
    assert [p.status.phase for p in v1.list_pod_for_all_namespaces().items] == ["Running"]
    assert _names(v1.list_pod_for_all_namespaces(field_selector="status.phase!=Running")) == []
    fake.delete_pod("build-a")
    assert v1.list_pod_for_all_namespaces().items == []
    later = v1.list_pod_for_all_namespaces()
    assert int(later.metadata.resource_version) > int(first.metadata.resource_version)
    fake.add_pod("x", "n1")
    with pytest.raises(ValueError, match="already exists"):
        fake.add_pod("x", "n1")
    with pytest.raises(ValueError):
        fake.add_pod("bad-labels", "n1", labels={"a": "no spaces"})


@pytest.mark.parametrize("query, message", [
    ({"label_selector": "a in ()"}, "unable to parse requirement"),
    ({"label_selector": "a b"}, "unable to parse requirement"),
    ({"field_selector": "spec.nodeName"}, "invalid selector"),
    ({"field_selector": "spec.nodename=n1"}, "field label not supported: spec.nodename"),
])
def test_a_bad_selector_is_400(fake: FakeKube, v1: client.CoreV1Api, query: dict[str, str],
                               message: str) -> None:
    with pytest.raises(ApiException) as e:
        v1.list_pod_for_all_namespaces(**query)
    assert e.value.status == 400 and message in json.loads(e.value.body)["message"]


def test_pods_are_listed_in_discovery(fake: FakeKube, v1: client.CoreV1Api) -> None:
    resources = {r.name: r.verbs for r in v1.get_api_resources().resources}
    assert resources["pods"] == ["list"] and "list" in resources["nodes"]
