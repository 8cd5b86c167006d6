"""AgentConfig: every setting checked in one place, each refusal one sentence naming it,
and the role's list of settings the same as the agent's."""

import dataclasses
import os
from typing import Any

import pytest
import yaml

from xenchannel.dom0.config import COUNTS, SECONDS, AgentConfig, AgentError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PATHS = ("store_dir", "state_dir", "socket_root", "control_socket", "metrics_file")


def config(**overrides: Any) -> AgentConfig:
    base = AgentConfig("/etc/xc", "/var/lib/xc", "/run/xc", "/run/xc/agent.sock")
    return dataclasses.replace(base, **overrides)


def test_the_defaults_are_valid() -> None:
    config().validate()


def test_every_setting_but_the_paths_is_checked() -> None:
    checked = set(SECONDS) | {key for key, *_bounds in COUNTS} | {"get_bundle_rate"}
    assert checked == {f.name for f in dataclasses.fields(AgentConfig)} - set(PATHS)


@pytest.mark.parametrize("key", SECONDS)
@pytest.mark.parametrize("value", [0, -1, 3601, "soon", True])
def test_a_wait_out_of_bounds_is_refused_by_name(key: str, value: Any) -> None:
    with pytest.raises(AgentError, match=f"^{key} must be a number of seconds above 0"):
        config(**{key: value}).validate()


@pytest.mark.parametrize(("key", "low", "high", "unit"), COUNTS)
def test_a_count_out_of_bounds_is_refused_by_name(key: str, low: int, high: int, unit: str) -> None:
    for value in (low - 1, high + 1, float(low), "many", True):
        with pytest.raises(AgentError, match=f"^{key} must be between {low} and {high} {unit}"):
            config(**{key: value}).validate()
    config(**{key: low}).validate()
    config(**{key: high}).validate()


@pytest.mark.parametrize("value", [0, -4, 1001, "fast", False])
def test_the_get_bundle_rate_is_checked(value: Any) -> None:
    with pytest.raises(AgentError, match=r"^get_bundle_rate must be a number of requests"):
        config(get_bundle_rate=value).validate()


@pytest.mark.parametrize(
    ("overrides", "sentence"),
    [
        ({"store_dir": "relative"}, "store_dir must be an absolute path"),
        ({"control_socket": "agent.sock"}, "control_socket must be an absolute path"),
        ({"backoff_initial": 6.0}, "backoff_initial must not exceed backoff_max"),
        ({"knock_interval": 400.0}, "knock_interval must not exceed knock_max_interval"),
        ({"query_timeout": 400.0}, "query_timeout must not exceed max_query_timeout"),
    ],
)
def test_settings_that_must_agree(overrides: Any, sentence: str) -> None:
    with pytest.raises(AgentError, match=sentence):
        config(**overrides).validate()


def test_the_role_lets_users_set_exactly_the_agents_settings() -> None:
    with open(os.path.join(ROOT, "roles", "dom0_agent", "vars", "main.yml")) as handle:
        role_keys = yaml.safe_load(handle)["__dom0_agent_config_keys"]
    assert sorted(role_keys) == sorted(
        f.name for f in dataclasses.fields(AgentConfig) if f.name not in PATHS
    )
