"""deploy/components/admission-policy: its CEL, evaluated offline against allowed and forbidden requests.

The rendered ValidatingAdmissionPolicies are evaluated the way the API server does (matchConstraints,
then matchConditions, then variables in order, then every validation; an evaluation error denies, as
failurePolicy Fail does) with cel-python, a CEL implementation from PyPI. ``object`` and ``oldObject``
are plain maps, as the API server declares them (dynamic type over the unstructured object).

The allowed node writes are the ones fsm-cleaner really makes: the journal's decisions (cordon, a step,
release) turned into a request body by ``Kube.write``, applied to a realistic node.
"""

from __future__ import annotations

import copy
from typing import Any

import celpy
import pytest
from celpy import celtypes

from devtools.fakekube import json_patch
from fsm_cleaner import journal
from fsm_cleaner.kube import Kube
from tests.test_deploy import KUSTOMIZATIONS, one, render

NODE_NAME_KEY = "authentication.kubernetes.io/node-name"
SINCE = "2025-01-01T00:00:00Z"
AGENT = journal.Holder("fsm-cleaner-x7k2p", "5f3a9c1e")  # the agent's pod and process
CEL = celpy.Environment()


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return render(KUSTOMIZATIONS["base"])


@pytest.fixture(scope="module")
def agent(docs) -> str:
    """The username fsm-cleaner's requests arrive with."""
    account = one(docs, "ServiceAccount")["metadata"]
    return f"system:serviceaccount:{account['namespace']}:{account['name']}"


# --- the evaluator -------------------------------------------------------------------------------
def _eval(expression: str, activation: dict[str, Any]) -> Any:
    result = CEL.program(CEL.compile(expression)).evaluate(activation)
    if isinstance(result, celpy.CELEvalError):
        raise result
    return result


def _matches(rules: list[dict[str, Any]], request: dict[str, Any]) -> bool:
    resource = request["resource"]
    return any(resource["group"] in r["apiGroups"] and resource["version"] in r["apiVersions"]
               and resource["resource"] in r["resources"] and request["operation"] in r["operations"]
               for r in rules)


def evaluate(policy: dict[str, Any], request: dict[str, Any]) -> list[str] | None:
    """None: the policy does not apply to this request; else the messages of the failed validations."""
    spec = policy["spec"]
    if not _matches(spec["matchConstraints"]["resourceRules"], request):
        return None
    activation: dict[str, Any] = {
        "request": celpy.json_to_cel(request),
        "object": celpy.json_to_cel(request.get("object")),
        "oldObject": celpy.json_to_cel(request.get("oldObject")),
    }
    if not all(_eval(c["expression"], activation) for c in spec.get("matchConditions", [])):
        return None
    variables = celtypes.MapType({})
    activation["variables"] = variables
    for variable in spec.get("variables", []):
        variables[celtypes.StringType(variable["name"])] = _eval(variable["expression"], activation)
    failures = []
    for validation in spec["validations"]:
        try:
            passed = _eval(validation["expression"], activation)
        except Exception as e:  # failurePolicy: Fail
            assert spec["failurePolicy"] == "Fail"
            failures.append(f"evaluation error: {e}")
            continue
        if not passed:
            if "messageExpression" in validation:
                failures.append(str(_eval(validation["messageExpression"], activation)))
            else:
                failures.append(validation["message"])
    return failures


def admit(docs: list[dict[str, Any]], request: dict[str, Any]) -> list[str] | None:
    """What the API server decides: None when no policy applies, [] allowed, else why it is denied."""
    results = [evaluate(p, request) for p in docs if p["kind"] == "ValidatingAdmissionPolicy"]
    applied = [r for r in results if r is not None]
    return None if not applied else [m for r in applied for m in r]


# --- requests ------------------------------------------------------------------------------------
def user(username: str, node: str | None) -> dict[str, Any]:
    extra = {"authentication.kubernetes.io/pod-name": ["fsm-cleaner-x7k2p"]}
    if node is not None:
        extra[NODE_NAME_KEY] = [node]
    return {"username": username, "uid": "5d1c", "groups": ["system:serviceaccounts"], "extra": extra}


def a_node(name: str, *, unschedulable: bool = False, annotations: dict[str, str] | None = None) -> dict:
    """A node as the API server holds it: the fields the policy must leave alone are all there."""
    node: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name, "uid": f"uid-{name}", "resourceVersion": "4711",
            "creationTimestamp": "2025-01-01T00:00:00Z",
            "labels": {"kubernetes.io/hostname": name, "hub.jupyter.org/node-purpose": "user"},
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", **(annotations or {})},
            "managedFields": [{"manager": "kubelet", "operation": "Update", "apiVersion": "v1"}],
        },
        "spec": {"podCIDR": "10.0.1.0/24", "podCIDRs": ["10.0.1.0/24"], "providerID": f"gce://p/z/{name}"},
        "status": {"capacity": {"cpu": "4"}, "conditions": [{"type": "Ready", "status": "True"}]},
    }
    if unschedulable:
        node["spec"]["unschedulable"] = True
    return node


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386; for annotations and spec.unschedulable a strategic merge patch means the same."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def stored(old: dict[str, Any], body: Any) -> dict[str, Any]:
    """The object admission sees after a PATCH: applied, with what the server itself changes."""
    new = json_patch(old, body) if isinstance(body, list) else merge_patch(old, body)
    if new["spec"].get("unschedulable") is False:  # omitempty: false is not serialised
        del new["spec"]["unschedulable"]
    new["metadata"]["resourceVersion"] = str(int(old["metadata"]["resourceVersion"]) + 1)
    new["metadata"]["managedFields"] = [*old["metadata"]["managedFields"],
                                        {"manager": "fsm-cleaner", "operation": "Update", "apiVersion": "v1"}]
    return new


def node_update(who: dict[str, Any], old: dict[str, Any], body: Any) -> dict[str, Any]:
    return {"operation": "UPDATE", "name": old["metadata"]["name"], "userInfo": who,
            "resource": {"group": "", "version": "v1", "resource": "nodes"},
            "oldObject": old, "object": stored(old, body)}


def event_create(who: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    return {"operation": "CREATE", "namespace": "default", "userInfo": who,
            "resource": {"group": "", "version": "v1", "resource": "events"},
            "oldObject": None, "object": event}


class RecordingApi:
    """Stands in for CoreV1Api: records the bodies fsm_cleaner.kube.Kube sends."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def patch_node(self, name: str, body: dict[str, Any], **_: Any) -> None:
        self.bodies.append(body)

    def create_namespaced_event(self, namespace: str, body: dict[str, Any], **_: Any) -> None:
        self.bodies.append(body)


def agent_body(old: dict[str, Any], decide) -> Any:
    """The PATCH body fsm-cleaner sends for one of the journal's decisions about this node (a JSON patch)."""
    meta = old["metadata"]
    view = journal.NodeView(name=meta["name"], resource_version=meta["resourceVersion"],
                            unschedulable=bool(old["spec"].get("unschedulable")),
                            annotations=dict(meta.get("annotations", {})))
    patch = decide(view)
    assert patch is not None
    api = RecordingApi()
    Kube(api, meta["name"]).write(view, patch)  # type: ignore[arg-type]
    return api.bodies[0]


def agent_event(node: str) -> dict[str, Any]:
    api = RecordingApi()
    Kube(api, node).event("Cordoned", "disk 91% used: cordoned to clean")  # type: ignore[arg-type]
    return api.bodies[0]


def in_progress(state: str, cordoned_by_us: bool = True) -> dict[str, str]:
    entry = journal.Journal(state, cordoned_by_us=cordoned_by_us, was_unschedulable=False, since=SINCE,
                            holder=AGENT.pod, token=AGENT.token, renewed=SINCE)
    return {journal.ANNOTATION: entry.encode()}


# --- the agent's own writes are allowed ------------------------------------------------------------
AGENT_WRITES = {
    "cordon own node": (a_node("n1"),
                        lambda v: journal.cordon(v, AGENT, SINCE)),
    "journal a step": (a_node("n1", unschedulable=True, annotations=in_progress("Cordoning")),
                       lambda v: journal.advance(v, "PruningAll", AGENT, SINCE)),
    "uncordon own node": (a_node("n1", unschedulable=True, annotations=in_progress("PruningAll")),
                          lambda v: journal.release(v, AGENT, SINCE)),
    "hand back docker-image-cleaner's cordon": (
        a_node("n1", unschedulable=True, annotations={journal.LEGACY_ANNOTATION: "true"}),
        lambda v: journal.release(v, AGENT, SINCE)),
}


@pytest.mark.parametrize("case", sorted(AGENT_WRITES))
def test_the_agents_own_writes_are_allowed(docs, agent, case):
    old, decide = AGENT_WRITES[case]
    body = agent_body(old, decide)
    request = node_update(user(agent, "n1"), old, body)
    assert request["object"] != old  # it does change the node
    assert admit(docs, request) == []


def test_cordon_and_uncordon_really_change_the_node(docs, agent):
    """The allowed cases above are the real thing: unschedulable flips both ways, the journal is written."""
    old = a_node("n1")
    cordon = node_update(user(agent, "n1"), old, agent_body(old, AGENT_WRITES["cordon own node"][1]))
    assert cordon["object"]["spec"]["unschedulable"] is True
    assert journal.ANNOTATION in cordon["object"]["metadata"]["annotations"]
    old, decide = AGENT_WRITES["uncordon own node"]
    uncordon = node_update(user(agent, "n1"), old, agent_body(old, decide))
    assert "unschedulable" not in uncordon["object"]["spec"]


# --- everything else is denied, and says why -------------------------------------------------------
CORDON = {"spec": {"unschedulable": True}}
TTL = "node.alpha.kubernetes.io/ttl"  # an annotation the node controller owns
FORBIDDEN = {
    "cordon another node": (a_node("n2"), CORDON, "running on node n1 may not change node n2"),
    "change a label": (a_node("n1"), {"metadata": {"labels": {"hub.jupyter.org/node-purpose": "core"}}},
                       "labels"),
    "remove a label": (a_node("n1"), {"metadata": {"labels": {"hub.jupyter.org/node-purpose": None}}},
                       "labels"),
    "add a taint": (a_node("n1"), {"spec": {"taints": [{"key": "k", "effect": "NoExecute"}]}}, "taints"),
    "change the provider id": (a_node("n1"), {"spec": {"providerID": "gce://p/z/other"}}, "spec"),
    "add another annotation": (a_node("n1"), {"metadata": {"annotations": {"evil": "1"}}}, "annotation"),
    "change another annotation": (a_node("n1"), {"metadata": {"annotations": {TTL: "9"}}}, "annotation"),
    "remove another annotation": (a_node("n1"), {"metadata": {"annotations": {TTL: None}}}, "annotation"),
    "add docker-image-cleaner's annotation": (
        a_node("n1"), {"metadata": {"annotations": {journal.LEGACY_ANNOTATION: "true"}}}, "annotation"),
    "change the status": (a_node("n1"), {"status": {"capacity": {"cpu": "64"}}}, "only spec.unschedulable"),
    "add a finalizer": (a_node("n1"), {"metadata": {"finalizers": ["x/y"]}}, "metadata"),
}


@pytest.mark.parametrize("case", sorted(FORBIDDEN))
def test_other_changes_are_denied(docs, agent, case):
    old, body, why = FORBIDDEN[case]
    denied = admit(docs, node_update(user(agent, "n1"), old, body))
    assert denied, f"{case} was allowed"
    assert any(why in message for message in denied), denied
    assert not any(m.startswith("evaluation error") for m in denied), denied


def test_a_forbidden_change_riding_along_with_a_cordon_is_denied(docs, agent):
    old = a_node("n1")
    body = agent_body(old, AGENT_WRITES["cordon own node"][1])
    body.append({"op": "add", "path": "/metadata/labels/hub.jupyter.org~1node-purpose", "value": "core"})
    assert admit(docs, node_update(user(agent, "n1"), old, body))


@pytest.mark.parametrize("extra", [None, {}, {NODE_NAME_KEY: []}, {NODE_NAME_KEY: ["n1", "n2"]}],
                         ids=["no extra at all", "no node claim", "empty claim", "two nodes"])
def test_a_token_without_one_node_is_denied(docs, agent, extra):
    """A legacy (secret) token or a cluster without the node claim: the agent may change no node."""
    old = a_node("n1")
    who = user(agent, None)
    if extra is None:
        del who["extra"]
    else:
        who["extra"] = extra
    denied = admit(docs, node_update(who, old, agent_body(old, AGENT_WRITES["cordon own node"][1])))
    assert denied and any("name no node" in m for m in denied), denied


@pytest.mark.parametrize("username", ["system:node:n1", "kubernetes-admin",
                                      "system:serviceaccount:kube-system:node-controller",
                                      "system:serviceaccount:other:fsm-cleaner"])
def test_other_users_are_not_matched(docs, username):
    """Only fsm-cleaner's own account is judged: an admin or the kubelet may relabel any node."""
    request = node_update(user(username, "n1"), a_node("n2"), {"metadata": {"labels": {"a": "b"}}})
    assert admit(docs, request) is None
    assert admit(docs, event_create(user(username, "n1"), agent_event("n2"))) is None


# --- Events ----------------------------------------------------------------------------------------
def test_the_agents_events_about_its_node_are_allowed(docs, agent):
    assert admit(docs, event_create(user(agent, "n1"), agent_event("n1"))) == []


@pytest.mark.parametrize("case", ["another node", "a pod", "with a related object", "no involved object"])
def test_events_about_anything_else_are_denied(docs, agent, case):
    event = agent_event("n1")
    if case == "another node":
        event = agent_event("n2")
    elif case == "a pod":
        event["involvedObject"] = {"kind": "Pod", "name": "n1", "namespace": "default", "apiVersion": "v1"}
    elif case == "with a related object":
        event["related"] = {"kind": "Node", "name": "n2", "apiVersion": "v1"}
    else:
        del event["involvedObject"]
    denied = admit(docs, event_create(user(agent, "n1"), event))
    assert denied and all("may create Events only about that node" in m for m in denied), denied


def test_the_node_policy_does_not_judge_events_nor_the_event_policy_nodes(docs, agent):
    policies = {p["metadata"]["name"]: p for p in docs if p["kind"] == "ValidatingAdmissionPolicy"}
    who = user(agent, "n1")
    assert evaluate(policies["fsm-cleaner-own-node-events"], node_update(who, a_node("n2"), CORDON)) is None
    assert evaluate(policies["fsm-cleaner-own-node"], event_create(who, agent_event("n2"))) is None


# --- wiring ----------------------------------------------------------------------------------------
def test_policies_deny_and_fail_closed_and_name_the_agents_account(docs, agent):
    policies = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"]
    bindings = {d["spec"]["policyName"]: d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding"}
    assert {p["metadata"]["name"] for p in policies} == set(bindings)
    for policy in policies:
        assert policy["spec"]["failurePolicy"] == "Fail"
        assert bindings[policy["metadata"]["name"]]["spec"]["validationActions"] == ["Deny"]
        # kustomize does not rewrite names inside CEL: the account must be spelt out as rendered
        conditions = [c["expression"] for c in policy["spec"]["matchConditions"]]
        assert conditions == [f"request.userInfo.username == '{agent}'"]
