"""The cordon budget across a cluster: five agents (five nodes of the fake API server, the real
Kubernetes client, one thread each) whose disks all pass the threshold at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.fakekube import FakeKube
from devtools.fleet import NAMESPACE, Fleet, api_for
from fsm_cleaner.kube import Kube, SlotsUnusable

LEASES = r"/apis/coordination\.k8s\.io/v1/namespaces/fsm-cleaner/leases"


@pytest.mark.parametrize("budget, faults", [("2", False), ("2", True), ("40%", False)],
                         ids=["clean-api", "409s-and-500s", "40%-of-5"])
def test_five_full_nodes_and_a_budget_of_two(tmp_path: Path, budget: str, faults: bool) -> None:
    with FakeKube() as fake:
        fake.add_daemonset(NAMESPACE, "fsm-cleaner", 5)  # what a percentage is of
        env = {"FSM_CLEANER_MAX_CORDONED": budget, "FSM_CLEANER_INTERVAL_SECONDS": "1",
               "FSM_CLEANER_DELAY_SECONDS": "0.3"}
        fleet = Fleet(fake, tmp_path, 5, env)
        if faults:  # conflicts on slot writes and server errors on every kind of request the budget makes
            fake.fail("PUT", LEASES + "/", status=409, times=3)
            fake.fail("POST", LEASES + "$", status=409, times=2)
            fake.fail("GET", LEASES, status=500, times=3)
            fake.fail("POST", LEASES + "$", status=500, times=2)
            fake.fail("PUT", LEASES + "/", status=500, times=2)
            fake.fail("PATCH", "/api/v1/nodes/", status=500, times=3)
        fleet.start()
        done = fleet.wait_until(lambda: all(n.cleaned for n in fleet.nodes), timeout=90)
        codes = fleet.stop()
        leases = fake.leases(NAMESPACE)
    assert done, {n.name: n.disk.used() for n in fleet.nodes}
    assert codes == [0] * 5
    # From the API's own history: never more than two nodes cordoned, and the budget was used.
    assert max(len(cordoned) for cordoned in fake.cordoned_history) == 2
    assert set().union(*fake.cordoned_history) == {n.name for n in fleet.nodes}  # each one cordoned
    assert fake.cordoned_history[-1] == frozenset()  # all handed back
    for node in fleet.nodes:  # every image removal under the node's own cordon, none without
        assert node.removed_while and all(node.removed_while), node.name
    assert [lease["spec"].get("holderIdentity") for lease in leases] == [None, None]  # two slots, freed


def test_a_percentage_without_its_daemonset_says_what_to_set(tmp_path: Path) -> None:
    with FakeKube() as fake:
        kube = Kube(api_for(fake.kubeconfig(tmp_path / "kubeconfig")), "node-0", namespace=NAMESPACE,
                    daemonset="builders")
        missing = r"DaemonSet fsm-cleaner/builders \(404\).*set DAEMONSET_NAME"
        with pytest.raises(SlotsUnusable, match=missing):
            kube.daemonset_nodes()
        fake.add_daemonset(NAMESPACE, "builders", 12)
        assert kube.daemonset_nodes() == 12
