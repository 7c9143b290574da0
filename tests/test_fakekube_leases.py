"""Leases and DaemonSets in devtools/fakekube.py, driven with the real kubernetes client (and kubectl)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import (
    ApiException,
    ConflictException,
    NotFoundException,
    UnprocessableEntityException,
)

from devtools.fakekube import FakeKube

NS = "fsm-cleaner"
GROUP = "coordination.k8s.io"
RENEWED = "2026-12-04T19:20:00.123456Z"


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    with FakeKube() as fk:
        fk.add_node("n1")
        yield fk


@pytest.fixture
def api_client(fake: FakeKube, tmp_path: Path) -> Iterator[client.ApiClient]:
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(fake.kubeconfig(tmp_path / "kc")), client_configuration=cfg)
    cfg.retries = 0  # urllib3's retries would swallow injected faults
    with client.ApiClient(cfg) as api:
        yield api


@pytest.fixture
def leases(api_client: client.ApiClient) -> client.CoordinationV1Api:
    return client.CoordinationV1Api(api_client)


def lease(name: str, *, rv: str | None = None, holder: str = "agent-a", renew: Any = RENEWED,
          labels: dict[str, str] | None = None) -> client.V1Lease:
    return client.V1Lease(
        metadata=client.V1ObjectMeta(name=name, resource_version=rv, labels=labels),
        spec=client.V1LeaseSpec(holder_identity=holder, lease_duration_seconds=30, acquire_time=renew,
                                renew_time=renew, lease_transitions=0),
    )


def status_of(err: ApiException) -> dict[str, Any]:
    body = json.loads(err.body)
    assert body["kind"] == "Status" and body["status"] == "Failure" and body["code"] == err.status
    return body


def test_create_read_and_list_by_label(fake: FakeKube, leases: client.CoordinationV1Api) -> None:
    node_rv = int(fake.node("n1")["metadata"]["resourceVersion"])
    created = leases.create_namespaced_lease(NS, lease("slot-0", labels={"app": "fsm", "slot": "0"}))
    assert created.metadata.uid and created.metadata.creation_timestamp
    assert int(created.metadata.resource_version) == node_rv + 1  # one counter for every resource, as etcd
    assert created.spec.renew_time == datetime(2026, 12, 4, 19, 20, 0, 123456, tzinfo=timezone.utc)
    assert (created.spec.holder_identity, created.spec.lease_duration_seconds) == ("agent-a", 30)
    stored = fake.lease(NS, "slot-0")
    assert stored["spec"]["renewTime"] == RENEWED and stored["spec"]["leaseTransitions"] == 0
    assert leases.read_namespaced_lease("slot-0", NS) == created

    leases.create_namespaced_lease(NS, lease("slot-1", labels={"app": "fsm", "slot": "1"}))
    leases.create_namespaced_lease("other", lease("slot-0", labels={"app": "fsm", "slot": "0"}))
    found = leases.list_namespaced_lease(NS, label_selector="app=fsm,slot=1")
    assert [item.metadata.name for item in found.items] == ["slot-1"]
    assert found.metadata.resource_version == fake.resource_version
    assert [i.metadata.name for i in leases.list_namespaced_lease(NS, label_selector="app=fsm").items] == [
        "slot-0", "slot-1"]
    assert leases.list_namespaced_lease(NS, label_selector="app=other").items == []
    assert [x["metadata"]["name"] for x in fake.leases(NS)] == ["slot-0", "slot-1"]
    assert len(fake.leases()) == 3


def test_micro_time_is_strict_on_the_way_in_and_utc_on_the_way_out(fake: FakeKube,
                                                                   leases: client.CoordinationV1Api) -> None:
    offset = leases.create_namespaced_lease(NS, lease("offset", renew="2026-12-04T21:20:00.000001+02:00"))
    assert fake.lease(NS, "offset")["spec"]["renewTime"] == "2026-12-04T19:20:00.000001Z"
    assert offset.spec.renew_time.utcoffset().total_seconds() == 0
    # The client sends datetime.isoformat(): no fraction when the microseconds are 0, no zone when
    # naive. The real server's RFC3339Micro parse rejects both, so the fake does too.
    for renew in (datetime(2026, 12, 4, 19, 20, tzinfo=timezone.utc), datetime(2026, 12, 4, 19, 20, 0, 5)):
        with pytest.raises(ApiException) as exc:
            leases.create_namespaced_lease(NS, lease("bad", renew=renew))
        message = status_of(exc.value)["message"]
        assert exc.value.status == 400 and message.startswith(
            'Lease in version "v1" cannot be handled as a Lease: parsing time "2026-12-04T19:20:00')
    assert [x["metadata"]["name"] for x in fake.leases(NS)] == ["offset"]


def test_create_twice_is_already_exists(leases: client.CoordinationV1Api) -> None:
    leases.create_namespaced_lease(NS, lease("slot-0"))
    with pytest.raises(ConflictException) as exc:
        leases.create_namespaced_lease(NS, lease("slot-0", holder="agent-b"))
    body = status_of(exc.value)
    assert body["reason"] == "AlreadyExists"
    assert body["message"] == 'leases.coordination.k8s.io "slot-0" already exists'
    assert body["details"] == {"name": "slot-0", "group": GROUP, "kind": "leases"}
    assert leases.read_namespaced_lease("slot-0", NS).spec.holder_identity == "agent-a"


def test_replace_is_conditional_on_the_resource_version(fake: FakeKube,
                                                        leases: client.CoordinationV1Api) -> None:
    first = leases.create_namespaced_lease(NS, lease("slot-0"))
    renewal = lease("slot-0", rv=first.metadata.resource_version, renew="2026-12-04T19:20:10.000500Z")
    mine = leases.replace_namespaced_lease("slot-0", NS, renewal)
    assert fake.lease(NS, "slot-0")["spec"]["renewTime"] == "2026-12-04T19:20:10.000500Z"
    assert int(mine.metadata.resource_version) > int(first.metadata.resource_version)
    assert mine.metadata.uid == first.metadata.uid
    # The same body again is a no-op: no new revision.
    renewal.metadata.resource_version = mine.metadata.resource_version
    again = leases.replace_namespaced_lease("slot-0", NS, renewal)
    assert again.metadata.resource_version == mine.metadata.resource_version

    with pytest.raises(ConflictException) as exc:  # agent-b read before agent-a's write
        leases.replace_namespaced_lease("slot-0", NS, lease("slot-0", rv=first.metadata.resource_version,
                                                            holder="agent-b"))
    body = status_of(exc.value)
    assert body["reason"] == "Conflict"
    assert body["message"] == (
        'Operation cannot be fulfilled on leases.coordination.k8s.io "slot-0": the object has been '
        "modified; please apply your changes to the latest version and try again")
    assert fake.lease(NS, "slot-0")["spec"]["holderIdentity"] == "agent-a"

    # Leases do not allow unconditional updates: no resourceVersion is a 422, not a blind write.
    with pytest.raises(UnprocessableEntityException) as exc:
        leases.replace_namespaced_lease("slot-0", NS, lease("slot-0", holder="agent-b"))
    assert status_of(exc.value)["message"] == (
        'leases.coordination.k8s.io "slot-0" is invalid: metadata.resourceVersion: Invalid value: 0x0: '
        "must be specified for an update")


def test_replace_creates_a_missing_lease_unless_it_names_a_uid(leases: client.CoordinationV1Api) -> None:
    # AllowCreateOnUpdate: a PUT of a lease that is not there creates it (201), whatever its version.
    created = leases.replace_namespaced_lease("slot-0", NS, lease("slot-0", rv="42"))
    assert created.metadata.uid and created.metadata.resource_version != "42"
    # A body read from the server carries its uid, a precondition: after a delete, no resurrection.
    leases.delete_namespaced_lease("slot-0", NS)
    with pytest.raises(ConflictException) as exc:
        leases.replace_namespaced_lease("slot-0", NS, created)
    assert "Precondition failed: UID in precondition" in status_of(exc.value)["message"]
    with pytest.raises(NotFoundException):
        leases.read_namespaced_lease("slot-0", NS)


def test_delete_with_preconditions_and_404s(fake: FakeKube, leases: client.CoordinationV1Api) -> None:
    stale = leases.create_namespaced_lease(NS, lease("slot-0"))
    fake.mutate_lease(NS, "slot-0", lambda x: x["spec"].update(holderIdentity="agent-b"))
    current = fake.lease(NS, "slot-0")["metadata"]["resourceVersion"]
    with pytest.raises(ConflictException) as exc:
        leases.delete_namespaced_lease("slot-0", NS, body=client.V1DeleteOptions(
            preconditions=client.V1Preconditions(resource_version=stale.metadata.resource_version)))
    assert status_of(exc.value)["message"] == (
        f'Operation cannot be fulfilled on Lease.coordination.k8s.io "slot-0": the ResourceVersion in the '
        f"precondition ({stale.metadata.resource_version}) does not match the ResourceVersion in record "
        f"({current}). The object might have been modified")
    assert fake.leases(NS)

    done = leases.delete_namespaced_lease("slot-0", NS, body=client.V1DeleteOptions(
        preconditions=client.V1Preconditions(resource_version=current, uid=stale.metadata.uid)))
    # This client types the answer as a plain object: the Success Status as a dict.
    assert done["status"] == "Success"
    assert done["details"] == {"name": "slot-0", "group": GROUP, "kind": "leases", "uid": stale.metadata.uid}
    assert fake.leases(NS) == []
    assert int(fake.resource_version) > int(current)  # the delete is a revision too

    for call in (lambda: leases.read_namespaced_lease("slot-0", NS),
                 lambda: leases.delete_namespaced_lease("slot-0", NS)):
        with pytest.raises(NotFoundException) as exc:
            call()
        body = status_of(exc.value)
        assert body["message"] == 'leases.coordination.k8s.io "slot-0" not found'
        assert body["details"] == {"name": "slot-0", "group": GROUP, "kind": "leases"}


def test_validation(fake: FakeKube, leases: client.CoordinationV1Api) -> None:
    bad = lease("slot-0")
    bad.spec.lease_duration_seconds = 0
    with pytest.raises(UnprocessableEntityException) as exc:
        leases.create_namespaced_lease(NS, bad)
    assert status_of(exc.value)["message"] == (
        'Lease.coordination.k8s.io "slot-0" is invalid: spec.leaseDurationSeconds: Invalid value: 0: '
        "must be greater than 0")
    with pytest.raises(UnprocessableEntityException):
        leases.create_namespaced_lease(NS, lease("Not_A_Name"))
    with pytest.raises(ApiException) as exc:  # the storage refuses a version on create
        leases.create_namespaced_lease(NS, lease("slot-0", rv="7"))
    assert exc.value.status == 500 and "reason" not in status_of(exc.value)
    with pytest.raises(ValueError, match="must be greater than 0"):
        fake.add_lease(NS, "slot-0", {"leaseDurationSeconds": -1})
    assert fake.leases(NS) == []


def test_faults_apply_to_lease_routes(fake: FakeKube, leases: client.CoordinationV1Api) -> None:
    held = fake.add_lease(NS, "slot-0", {"holderIdentity": "agent-a", "renewTime": RENEWED})
    fake.fail("PUT", r"/leases/slot-0$", status=500)
    renewal = lease("slot-0", rv=held["metadata"]["resourceVersion"])
    with pytest.raises(ApiException) as exc:
        leases.replace_namespaced_lease("slot-0", NS, renewal)
    assert exc.value.status == 500 and status_of(exc.value)["reason"] == "InternalError"
    assert fake.lease(NS, "slot-0") == held  # not written
    assert leases.replace_namespaced_lease("slot-0", NS, renewal).spec.lease_duration_seconds == 30

    fake.fail("GET", r"/leases/slot-0$", status=409)  # shaped like the resource's own Status
    with pytest.raises(ConflictException) as exc:
        leases.read_namespaced_lease("slot-0", NS)
    assert status_of(exc.value)["details"] == {"name": "slot-0", "group": GROUP, "kind": "leases"}
    assert [(r.method, r.path) for r in fake.requests][-3:] == [
        ("PUT", f"/apis/{GROUP}/v1/namespaces/{NS}/leases/slot-0"),
        ("PUT", f"/apis/{GROUP}/v1/namespaces/{NS}/leases/slot-0"),
        ("GET", f"/apis/{GROUP}/v1/namespaces/{NS}/leases/slot-0")]


def test_daemonset_read(fake: FakeKube, api_client: client.ApiClient) -> None:
    apps = client.AppsV1Api(api_client)
    fake.add_daemonset(NS, "fsm-cleaner", 3, ready=2)
    ds = apps.read_namespaced_daemon_set("fsm-cleaner", NS)
    assert (ds.metadata.name, ds.metadata.namespace) == ("fsm-cleaner", NS)
    assert (ds.status.desired_number_scheduled, ds.status.number_ready) == (3, 2)
    rv = ds.metadata.resource_version
    fake.set_daemonset_status(NS, "fsm-cleaner", desired=4)
    ds = apps.read_namespaced_daemon_set("fsm-cleaner", NS)
    assert (ds.status.desired_number_scheduled, ds.status.number_ready) == (4, 4)
    assert int(ds.metadata.resource_version) > int(rv)
    with pytest.raises(NotFoundException) as exc:
        apps.read_namespaced_daemon_set("missing", NS)
    assert status_of(exc.value)["message"] == 'daemonsets.apps "missing" not found'


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not on PATH (.venv/bin)")
def test_kubectl_get_leases(fake: FakeKube, tmp_path: Path) -> None:
    fake.add_lease(NS, "slot-0", {"holderIdentity": "agent-a", "renewTime": RENEWED})
    env = {**os.environ, "KUBECONFIG": str(fake.kubeconfig(tmp_path / "kc"))}

    def kubectl(*args: str) -> str:
        out = subprocess.run(["kubectl", *args], capture_output=True, text=True, timeout=30, env=env)
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert kubectl("get", "leases", "-n", NS).split()[:3] == ["NAME", "AGE", "slot-0"]
    assert kubectl("get", "lease", "slot-0", "-n", NS, "-o", "jsonpath={.spec.renewTime}") == RENEWED
