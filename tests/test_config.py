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
]


@pytest.mark.parametrize("env,names,accepted", BAD, ids=[next(iter(b[0].values())) for b in BAD])
def test_bad_values_name_the_setting_and_what_is_accepted(tmp_path, env, names, accepted) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, **env)
    assert names in str(err.value)
    assert accepted in str(err.value)
