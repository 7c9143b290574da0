"""Configuration: the old cleaner's variables keep working; bad input is named and refused."""

import pytest

from fsm_cleaner import config
from fsm_cleaner.config import ConfigError


def load(tmp_path, **env: str) -> config.Config:
    env.setdefault("DOCKER_IMAGE_CLEANER_PATH_TO_CHECK", str(tmp_path))
    return config.load(env)


def test_defaults_are_the_old_cleaners(tmp_path) -> None:
    cfg = load(tmp_path)
    assert (cfg.node_name, cfg.interval_seconds, cfg.delay_seconds, cfg.threshold_type,
            cfg.threshold_high, cfg.threshold_low, cfg.timeout_seconds) == (
        None, 300, 1, "relative", 80, None, 300)


def test_old_names_and_precedence(tmp_path) -> None:
    cfg = load(tmp_path, DOCKER_IMAGE_CLEANER_NODE_NAME="n1", DOCKER_IMAGE_CLEANER_THRESHOLD_HIGH="70",
               FSM_CLEANER_THRESHOLD_HIGH="75", DOCKER_IMAGE_CLEANER_THRESHOLD_LOW="60")
    assert (cfg.node_name, cfg.threshold_high, cfg.threshold_low) == ("n1", 75, 60)
    flag = config.load({"FSM_CLEANER_THRESHOLD_HIGH": "75", "FSM_CLEANER_PATH_TO_CHECK": str(tmp_path)},
                       THRESHOLD_HIGH="90")
    assert flag.threshold_high == 90


def test_absolute_sizes(tmp_path) -> None:
    cfg = load(tmp_path, DOCKER_IMAGE_CLEANER_THRESHOLD_TYPE="absolute",
               DOCKER_IMAGE_CLEANER_THRESHOLD_HIGH="50Gi", DOCKER_IMAGE_CLEANER_THRESHOLD_LOW="1000000")
    assert (cfg.threshold_high, cfg.threshold_low) == (50 * 2**30, 1e6)


BAD = [
    ({"DOCKER_IMAGE_CLEANER_THRESHOLD_TYPE": "percent"}, "THRESHOLD_TYPE='percent'", "relative, absolute"),
    ({"DOCKER_IMAGE_CLEANER_THRESHOLD_HIGH": "eighty"}, "THRESHOLD_HIGH='eighty'", "from 0 to 100"),
    ({"DOCKER_IMAGE_CLEANER_THRESHOLD_HIGH": "120"}, "THRESHOLD_HIGH='120'", "from 0 to 100"),
    ({"DOCKER_IMAGE_CLEANER_THRESHOLD_HIGH": "-1"}, "THRESHOLD_HIGH='-1'", "from 0 to 100"),
    ({"DOCKER_IMAGE_CLEANER_THRESHOLD_LOW": "85"}, "THRESHOLD_LOW='85' is above", "at or below"),
    ({"DOCKER_IMAGE_CLEANER_INTERVAL_SECONDS": "5m"}, "INTERVAL_SECONDS='5m'", "a number >= 1"),
    ({"DOCKER_IMAGE_CLEANER_PATH_TO_CHECK": "/no/such/dir"}, "PATH_TO_CHECK='/no/such/dir'", "existing"),
    ({"DOCKER_IMAGE_CLEANER_THRESHOLD_TYPE": "absolute", "DOCKER_IMAGE_CLEANER_THRESHOLD_HIGH": "lots"},
     "THRESHOLD_HIGH='lots'", "50Gi"),
    ({"DOCKER_IMAGE_CLEANER_THRESHOLD_TYPE": "absolute"}, "THRESHOLD_HIGH is unset in absolute mode", "50Gi"),
    ({"FSM_CLEANER_DRY_RUN": "maybe"}, "FSM_CLEANER_DRY_RUN='maybe'", "true or false"),
    ({"FSM_CLEANER_RETRY_ATTEMPTS": "2.5"}, "RETRY_ATTEMPTS='2.5'", "whole number"),
    ({"FSM_CLEANER_MAX_CORDONED": "0"}, "MAX_CORDONED='0' is not a node count", "whole number of nodes >= 1"),
    ({"FSM_CLEANER_MAX_CORDONED": "150%"}, "MAX_CORDONED='150%'", "at most 100%"),
    ({"FSM_CLEANER_CRITICAL_THRESHOLD": "70"}, "CRITICAL_THRESHOLD='70' is below", "at or above the high"),
    ({"FSM_CLEANER_CORDON": "sometimes"}, "FSM_CLEANER_CORDON='sometimes'", "true or false"),
    ({"FSM_CLEANER_SLOT_LEASE_SECONDS": "1"}, "SLOT_LEASE_SECONDS='1'", "a number >= 4"),
    ({"POD_NAMESPACE": "Kube_System"}, "POD_NAMESPACE='Kube_System'", "DNS-1123 label"),
]


@pytest.mark.parametrize("env,names,accepted", BAD, ids=[next(iter(b[0].values())) for b in BAD])
def test_bad_values_name_the_setting_and_what_is_accepted(tmp_path, env, names, accepted) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, **env)
    assert names in str(err.value)
    assert accepted in str(err.value)


# The old tool's parse, for the variables it read: float() for these, int() for TIMEOUT_SECONDS, and in
# absolute mode a THRESHOLD_HIGH of at least 1 GiB. (It ignored THRESHOLD_LOW.)
def old_tool_parse(var: str, raw: str, kind: str) -> float | None:
    try:
        value = int(raw) if var == "TIMEOUT_SECONDS" else float(raw)
    except ValueError:
        return None
    return None if var == "THRESHOLD_HIGH" and kind == "absolute" and value < 2**30 else value


# variable, raw value, THRESHOLD_TYPE, what fsm-cleaner makes of it: the number, or why it refuses.
# A refusal of a value the old tool accepted says why; accepting one the old tool refused is an extension.
OLD_TOOL_TABLE = [
    ("THRESHOLD_HIGH", "40e9", "absolute", 40e9),  # mybinder.org
    ("THRESHOLD_LOW", "10e9", "absolute", 10e9),  # mybinder.org
    ("THRESHOLD_HIGH", " 40e9 ", "absolute", 40e9),
    ("THRESHOLD_HIGH", "4.0E10", "absolute", 40e9),
    ("THRESHOLD_HIGH", "40_000_000_000", "absolute", 40e9),
    ("THRESHOLD_HIGH", "+40000000000.0", "absolute", 40e9),
    ("THRESHOLD_HIGH", "50Gi", "absolute", 50 * 2**30),  # extension: units
    ("THRESHOLD_HIGH", "200G", "absolute", 200e9),
    ("THRESHOLD_HIGH", "1.5 TiB", "absolute", 1.5 * 2**40),
    ("THRESHOLD_HIGH", "1e9", "absolute", 1e9),  # extension: the old floor was 1 GiB, ours is 1 MiB
    ("THRESHOLD_HIGH", "1Mi", "absolute", 2**20),
    ("THRESHOLD_HIGH", "1048575", "absolute", "below 1 MiB"),
    ("THRESHOLD_HIGH", "40", "absolute", "below 1 MiB"),
    ("THRESHOLD_HIGH", "0", "absolute", "below 1 MiB"),
    ("THRESHOLD_HIGH", "nan", "absolute", "not a size in bytes"),
    ("THRESHOLD_HIGH", "inf", "absolute", "not a size in bytes"),  # old: accepted, never cleans
    ("THRESHOLD_HIGH", "-40e9", "absolute", "not a size in bytes"),
    ("THRESHOLD_HIGH", "1e400", "absolute", "not a size in bytes"),
    ("THRESHOLD_HIGH", "40 GB of disk", "absolute", "not a size in bytes"),
    ("THRESHOLD_LOW", "0", "absolute", 0.0),  # remove every unused image
    ("THRESHOLD_HIGH", "80.0", "relative", 80.0),
    ("THRESHOLD_HIGH", " 85\n", "relative", 85.0),
    ("THRESHOLD_HIGH", "8e1", "relative", 80.0),
    ("THRESHOLD_HIGH", "1_00", "relative", 100.0),
    ("THRESHOLD_HIGH", "nan", "relative", "not a percentage"),  # old: accepted, never cleans
    ("THRESHOLD_HIGH", "-inf", "relative", "not a percentage"),  # old: accepted, always cleans
    ("THRESHOLD_HIGH", "100.5", "relative", "not a percentage"),  # old: accepted, never cleans
    ("THRESHOLD_HIGH", "40e9", "relative", "not a percentage"),
    ("INTERVAL_SECONDS", "300.0", "relative", 300.0),
    ("INTERVAL_SECONDS", " 3e2 ", "relative", 300.0),
    ("INTERVAL_SECONDS", "1_800", "relative", 1800.0),
    ("INTERVAL_SECONDS", "0.5", "relative", "out of range"),  # old: accepted; a measuring hot loop
    ("INTERVAL_SECONDS", "nan", "relative", "out of range"),  # old: accepted, then time.sleep raised
    ("INTERVAL_SECONDS", "infinity", "relative", "out of range"),  # old: accepted, never measured again
    ("DELAY_SECONDS", "0", "relative", 0.0),
    ("DELAY_SECONDS", "2.5", "relative", 2.5),
    ("DELAY_SECONDS", "-1", "relative", "out of range"),  # old: accepted, meaningless
    ("TIMEOUT_SECONDS", "300", "relative", 300.0),
    ("TIMEOUT_SECONDS", " +600 ", "relative", 600.0),
    ("TIMEOUT_SECONDS", "1_200", "relative", 1200.0),
    ("TIMEOUT_SECONDS", "300.0", "relative", 300.0),  # extension: int() refused it
    ("TIMEOUT_SECONDS", "0", "relative", "out of range"),  # old: accepted; every Docker call times out
]


@pytest.mark.parametrize("name,raw,kind,ours", OLD_TOOL_TABLE,
                         ids=[f"{r[0]}={r[1]!r} {r[2]}" for r in OLD_TOOL_TABLE])
def test_the_old_tools_values_keep_their_meaning(tmp_path, name, raw, kind, ours) -> None:
    env = {"DOCKER_IMAGE_CLEANER_THRESHOLD_TYPE": kind, f"DOCKER_IMAGE_CLEANER_{name}": raw}
    if kind == "absolute" and name != "THRESHOLD_HIGH":
        env["DOCKER_IMAGE_CLEANER_THRESHOLD_HIGH"] = "1e12"
    old = old_tool_parse(name, raw, kind)
    if isinstance(ours, str):
        with pytest.raises(ConfigError) as err:
            load(tmp_path, **env)
        message = str(err.value)
        assert f"{name}={raw!r}" in message and ours in message and "accepted:" in message
        return
    assert getattr(load(tmp_path, **env), name.lower()) == ours
    if old is not None and name != "THRESHOLD_LOW":  # what the old tool accepted keeps its meaning
        assert old == ours


@pytest.mark.parametrize("name", ["Node-1", "node_1", "pool/node-1", "-node", "node-", "node..1", "a" * 254,
                                  "nöde", "node 1"])
def test_a_node_name_kubernetes_cannot_have_is_refused(tmp_path, name: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, DOCKER_IMAGE_CLEANER_NODE_NAME=name)
    assert f"DOCKER_IMAGE_CLEANER_NODE_NAME={name!r} is not a Kubernetes node name" in str(err.value)
    assert "accepted: a DNS-1123 subdomain" in str(err.value)


@pytest.mark.parametrize("name", ["n1", "node-1", "ip-10-0-0-7.ec2.internal", "gke-pool-1-a2b3", "a" * 253,
                                  " node-1 "])
def test_real_node_names_are_accepted(tmp_path, name: str) -> None:
    assert load(tmp_path, FSM_CLEANER_NODE_NAME=name).node_name == name.strip()


@pytest.mark.parametrize("value", ["0", "0.1", "-1"])
def test_a_retry_max_wait_below_the_floor_is_refused(tmp_path, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, FSM_CLEANER_RETRY_MAX_WAIT_SECONDS=value)
    assert f"FSM_CLEANER_RETRY_MAX_WAIT_SECONDS={value!r}" in str(err.value)
    assert f"accepted: a number >= {config.RETRY_MIN_WAIT_SECONDS:g}" in str(err.value)


@pytest.mark.parametrize("api,stop,ok", [("15", "25", True), ("20", "25", True), ("1.5", "10", True),
                                         ("40", "25", False), ("20.5", "25", False), ("15", "10", False)])
def test_the_api_timeout_must_leave_room_inside_the_stop_bound(tmp_path, api: str, stop: str,
                                                               ok: bool) -> None:
    env = {"FSM_CLEANER_API_TIMEOUT_SECONDS": api, "FSM_CLEANER_STOP_TIMEOUT_SECONDS": stop}
    if ok:
        assert load(tmp_path, **env).api_timeout_seconds == float(api)
        return
    with pytest.raises(ConfigError) as err:
        load(tmp_path, **env)
    message = str(err.value)
    assert f"FSM_CLEANER_API_TIMEOUT_SECONDS={api!r}" in message
    assert f"FSM_CLEANER_STOP_TIMEOUT_SECONDS={stop!r}" in message
    assert "accepted: API_TIMEOUT_SECONDS <= STOP_TIMEOUT_SECONDS - 5" in message


@pytest.mark.parametrize("env, count, percent, critical, namespace", [
    ({}, 1, False, 95, "default"),
    ({"FSM_CLEANER_MAX_CORDONED": "3"}, 3, False, 95, "default"),
    ({"FSM_CLEANER_MAX_CORDONED": " 20% "}, 20, True, 95, "default"),
    ({"DOCKER_IMAGE_CLEANER_THRESHOLD_HIGH": "97"}, 1, False, 97, "default"),  # never below the high
    ({"FSM_CLEANER_CRITICAL_THRESHOLD": "90"}, 1, False, 90, "default"),
    ({"POD_NAMESPACE": "fsm-cleaner"}, 1, False, 95, "fsm-cleaner"),
    ({"POD_NAMESPACE": "fsm-cleaner", "FSM_CLEANER_NAMESPACE": "ops"}, 1, False, 95, "ops"),
], ids=["defaults", "count", "percent", "high-above-95", "critical", "pod-namespace", "namespace-wins"])
def test_the_cordon_budgets_settings(tmp_path, env, count, percent, critical, namespace) -> None:
    cfg = load(tmp_path, **env)
    assert (cfg.max_cordoned, cfg.max_cordoned_percent, cfg.critical_threshold, cfg.namespace) == (
        count, percent, critical, namespace)
    assert cfg.cordon is True


def test_absolute_mode_has_no_critical_level_unless_set(tmp_path) -> None:
    absolute = {"DOCKER_IMAGE_CLEANER_THRESHOLD_TYPE": "absolute",
                "DOCKER_IMAGE_CLEANER_THRESHOLD_HIGH": "50Gi"}
    assert load(tmp_path, **absolute).critical_threshold is None
    assert load(tmp_path, **absolute, FSM_CLEANER_CRITICAL_THRESHOLD="60Gi").critical_threshold == 60 * 2**30
