"""Port to the Kubernetes API: read the node, write a journal patch, emit an Event, list the pods on the
node; and, for `fsm-cleaner status --all`, list the nodes.

The RBAC in deploy/ grants exactly these calls: nodes get, patch and list, events create; pods list only
in the optional component deploy/components/blocking-pods (BLOCKING_POD_SELECTOR).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from .blocking import Pod
from .config import BY_NAME
from .journal import ANNOTATION, NodeChanged, NodeView, Patch, now_rfc3339
from .retry import short_error

log = logging.getLogger("fsm_cleaner")


# (connect, read) seconds. The read part is the setting API_TIMEOUT_SECONDS (its default here, for
# commands that read no configuration); the agent clips both to what is left of the stop bound.
CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = (CONNECT_TIMEOUT, float(BY_NAME["API_TIMEOUT_SECONDS"].default or 0))
EVENT_TIMEOUT = (2, 5)


class NodeGone(RuntimeError):
    """The node does not exist (404): nothing to cordon or journal on."""


class PodsForbidden(RuntimeError):
    """The service account may not list pods (403): BLOCKING_POD_SELECTOR without its RBAC."""


def _view(node: Any) -> NodeView:
    return NodeView(
        name=node.metadata.name,
        resource_version=node.metadata.resource_version,
        unschedulable=bool(node.spec and node.spec.unschedulable),
        annotations=dict(node.metadata.annotations or {}),
    )


def connect() -> client.CoreV1Api:
    """In-cluster credentials, else KUBECONFIG / ~/.kube/config."""
    try:
        config.load_incluster_config()
        configuration = client.Configuration.get_default_copy()
    except config.ConfigException:
        configuration = client.Configuration()
        config.load_kube_config(client_configuration=configuration)
    configuration.retries = 0  # urllib3 would retry GETs on its own; tenacity decides instead
    return client.CoreV1Api(client.ApiClient(configuration))


def _pointer(*keys: str) -> str:
    """RFC 6901: ``~`` and ``/`` inside a key are escaped."""
    return "".join("/" + key.replace("~", "~0").replace("/", "~1") for key in keys)


def json_patch(seen: NodeView, patch: Patch) -> list[dict[str, Any]]:
    """``patch`` as RFC 6902 operations, conditional on what the decision read: first ``test`` the
    journal and every annotation the patch changes, and spec.unschedulable, against their values as
    read (null: absent, which the API server's test accepts for a missing key), then change them."""
    annotations = {ANNOTATION: seen.annotations.get(ANNOTATION)} | {
        key: seen.annotations.get(key) for key in patch.annotations}
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": _pointer("metadata", "annotations", key), "value": value}
        for key, value in annotations.items()]
    ops.append({"op": "test", "path": "/spec/unschedulable", "value": True if seen.unschedulable else None})
    for key, value in patch.annotations.items():
        path = _pointer("metadata", "annotations", key)
        if value is not None:
            ops.append({"op": "add", "path": path, "value": value})  # add replaces an existing key
        elif key in seen.annotations:
            ops.append({"op": "remove", "path": path})
    if patch.unschedulable is not None:
        ops.append({"op": "add", "path": "/spec/unschedulable", "value": patch.unschedulable})
    return ops


# The API server's whole answer when a JSON patch does not apply (a `test` failed, or a path it changes
# is gone); it drops the patch library's own error. Validation and admission policies say more.
NOT_APPLIED = "the server rejected our request due to an error in our request"


def _not_applied(e: ApiException) -> bool:
    """A 422 because our JSON patch did not apply to the node as it is now: the node changed since the
    read (a retry re-reads), as opposed to a 422 from validation or an admission policy (no retry helps)."""
    try:
        return e.status == 422 and json.loads(e.body or "")["message"] == NOT_APPLIED
    except (ValueError, TypeError, KeyError):
        return False


class Kube:
    def __init__(self, api: client.CoreV1Api, node_name: str, events_namespace: str = "default"):
        self.api = api
        self.node_name = node_name
        self.events_namespace = events_namespace

    def read(self, timeout: Any = REQUEST_TIMEOUT) -> NodeView:
        try:
            node = self.api.read_node(self.node_name, _request_timeout=timeout)
        except ApiException as e:
            if e.status == 404:
                raise NodeGone(f"node {self.node_name!r} not found") from None
            raise
        return _view(node)

    def pods_on_node(self, selector: str, timeout: Any = REQUEST_TIMEOUT) -> list[Pod]:
        """The pods bound to this node whose labels match ``selector``, in every namespace."""
        try:
            found = self.api.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={self.node_name}", label_selector=selector,
                _request_timeout=timeout)
        except ApiException as e:
            if e.status == 403:
                raise PodsForbidden(
                    "the service account may not list pods, which BLOCKING_POD_SELECTOR needs: install "
                    "deploy/components/blocking-pods (or unset BLOCKING_POD_SELECTOR)") from None
            raise
        return [Pod(p.metadata.namespace, p.metadata.name, (p.status and p.status.phase) or "Unknown")
                for p in found.items]

    def write(self, seen: NodeView, patch: Patch, timeout: Any = REQUEST_TIMEOUT) -> None:
        """One patch, conditional on what the decision read; NodeChanged when that has changed.

        A JSON patch whose tests check our data only (see ``json_patch``), so the kubelet's status
        updates, ten a second on a busy node, do not make every write lose. A node with no annotations
        at all gets a merge patch with a resourceVersion precondition instead: a JSON patch cannot
        create the map without an `add` of the whole map, which would drop any annotation another
        writer added since our read. Kubelets annotate every node they register, so this is a test
        cluster's case and never the busy node's.
        """
        body: list[dict[str, Any]] | dict[str, Any]
        if seen.annotations:
            body = json_patch(seen, patch)
        else:
            # The client sends a dict as a strategic-merge patch; for these fields (annotations, with
            # null deleting a key, and spec.unschedulable) it means the same as a JSON merge patch.
            body = {"metadata": {"resourceVersion": seen.resource_version, "annotations": patch.annotations}}
            if patch.unschedulable is not None:
                body["spec"] = {"unschedulable": patch.unschedulable}
        try:
            self.api.patch_node(self.node_name, body, _request_timeout=timeout)
        except ApiException as e:
            if e.status == 404:
                raise NodeGone(f"node {self.node_name!r} not found") from None
            if _not_applied(e):
                raise NodeChanged(f"node {self.node_name} changed since it was read: the JSON patch's tests "
                                  "failed (422)") from None
            raise

    def event(self, reason: str, message: str, warning: bool = False, timeout: Any = EVENT_TIMEOUT) -> None:
        """Best effort: an Event on the node (kubectl describe node shows it); never fails a step."""
        now = now_rfc3339()
        body = {
            "metadata": {"generateName": f"{self.node_name}.fsm-cleaner."},
            "involvedObject": {"kind": "Node", "name": self.node_name, "uid": self.node_name,
                               "apiVersion": "v1"},
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": "fsm-cleaner", "host": self.node_name},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.api.create_namespaced_event(self.events_namespace, body, _request_timeout=timeout)
        except Exception as e:  # events are advisory: a cycle never fails over one, but say so
            log.warning("could not emit event %s: %s", reason, short_error(e))


class Cluster:
    """Reads across the cluster, for `fsm-cleaner status --all`."""

    def __init__(self, api: client.CoreV1Api):
        self.api = api

    def nodes(self, timeout: Any = REQUEST_TIMEOUT) -> list[NodeView]:
        return [_view(n) for n in self.api.list_node(_request_timeout=timeout).items]
