"""plugins/filter/channel_spec.py: channel_spec and parse_channel_spec.

The filters in real templates, loaded by name, are tested by
tests/integration/test_xl_channel_playbook.py.
"""

from typing import Any

import pytest
from ansible_collections.xenchannel.provision.plugins.module_utils.channel_spec import (
    format_spec,
    parse_spec,
)

from tests.oracle import libxlutil
from tests.unit.plugins.filter._controller import controller_module

plugin_module = controller_module(
    "ansible_collections.xenchannel.provision.plugins.filter.channel_spec"
)
errors_module = controller_module("ansible.errors")


@pytest.fixture
def plugin(plugin_module: Any) -> Any:
    return plugin_module


AGENT = {"name": "org.xenchannel.provision.0", "connection": "socket", "path": "/run/xc/vm1.sock"}
AGENT_SPEC = "connection=socket, name=org.xenchannel.provision.0, path=/run/xc/vm1.sock"


def test_registered(plugin: Any) -> None:
    filters = plugin.FilterModule().filters()
    assert filters == {
        "channel_spec": plugin.channel_spec,
        "parse_channel_spec": plugin.parse_channel_spec,
        "channel_name_problem": plugin.channel_name_problem,
    }


@pytest.mark.parametrize(
    ("name", "sentence"),
    [
        ("org.xenchannel.provision.0", ""),
        ("org." + "a" * 122 + ".0", ""),
        (
            "org." + "a" * 123 + ".0",
            "guest_channel_name 'org."
            + "a" * 123
            + ".0' is 129 characters long, over the 128 a channel name may have (the guest "
            "would never link it); use a shorter name.",
        ),
        (
            "My-Channel",
            "guest_channel_name 'My-Channel' is not a versioned reverse domain name; use two "
            "or more lower-case labels and a numeric version, e.g. org.xenchannel.provision.0.",
        ),
        ("../evil", "guest_channel_name '../evil' is not a versioned reverse domain name"),
        (7, "guest_channel_name 7 is not a string"),
    ],
)
def test_channel_name_problem_is_the_one_rule(plugin: Any, name: Any, sentence: str) -> None:
    found = plugin.channel_name_problem(name, "guest_channel_name")
    assert found.startswith(sentence) and bool(found) == bool(sentence)


def test_channel_spec_is_format_spec(plugin: Any, xl_oracle: Any) -> None:
    assert plugin.channel_spec(AGENT) == AGENT_SPEC == format_spec(AGENT)
    assert plugin.channel_spec(dict(AGENT, backend=None)) == AGENT_SPEC
    assert plugin.channel_spec(AGENT, socket_dir="/run/xc") == AGENT_SPEC
    # Written into a config, Xen's parser reads the item back unchanged.
    seen = libxlutil.parse(f'channel = [ "{AGENT_SPEC}" ]\n')
    assert seen.values["channel"] == [AGENT_SPEC]


def test_parse_channel_spec_is_parse_spec(plugin: Any) -> None:
    spec = " name = org.qemu.guest_agent.0 ,, connection=pty,"
    assert plugin.parse_channel_spec(spec) == parse_spec(spec)
    assert plugin.parse_channel_spec(spec) == {
        "name": "org.qemu.guest_agent.0",
        "connection": "pty",
    }
    assert plugin.parse_channel_spec(AGENT_SPEC, socket_dir="/run/xc") == AGENT


@pytest.mark.parametrize(
    ("call", "sentence"),
    [
        (lambda plugin: plugin.channel_spec(dict(AGENT, backend="a,b")), "contains ','"),
        (lambda plugin: plugin.channel_spec(dict(AGENT, colour="red")), "unknown key 'colour'"),
        (lambda plugin: plugin.channel_spec("name=x"), "needs a dict"),
        (lambda plugin: plugin.channel_spec(AGENT, socket_dir="/run/other"), "outside /run/other"),
        (lambda plugin: plugin.parse_channel_spec("connection"), "without '='"),
        (lambda plugin: plugin.parse_channel_spec("name=a, name=b"), "gives name twice"),
        (lambda plugin: plugin.parse_channel_spec(42), "needs a string"),
        (
            lambda plugin: plugin.parse_channel_spec(
                "name=agent.0, connection=pty", socket_dir="/run"
            ),
            "not a versioned reverse domain name",
        ),
    ],
)
def test_errors_are_the_module_utils_sentences(
    plugin: Any, errors_module: Any, call: Any, sentence: str
) -> None:
    with pytest.raises(errors_module.AnsibleFilterError, match=sentence):
        call(plugin)
