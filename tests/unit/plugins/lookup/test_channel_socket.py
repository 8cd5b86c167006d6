"""plugins/lookup/channel_socket.py: the deterministic per-domain socket path.

The lookup loaded by name in a real play is tested by
tests/integration/test_xl_channel_playbook.py.
"""

import os
import pathlib
from typing import Any

import pytest
from ansible_collections.xenchannel.provision.plugins.module_utils import domain_name
from ansible_collections.xenchannel.provision.plugins.module_utils.channel_spec import (
    check_channels,
)

from tests.unit.plugins.filter._controller import controller_module
from xenchannel.dom0 import store

REPO = str(pathlib.Path(__file__).resolve().parents[4])

channel_socket_module = controller_module(
    "ansible_collections.xenchannel.provision.plugins.lookup.channel_socket"
)
errors_module = controller_module("ansible.errors")


@pytest.fixture
def channel_socket(channel_socket_module: Any) -> Any:
    return channel_socket_module


def test_path_per_domain(channel_socket: Any) -> None:
    assert channel_socket.socket_path("vm1") == "/run/xenchannel/vm1.sock"
    assert (
        channel_socket.socket_path("web-1.example_a", "/srv/xc/") == "/srv/xc/web-1.example_a.sock"
    )
    assert channel_socket.socket_path("A" * 64, "/run/x") == "/run/x/" + "A" * 64 + ".sock"


def test_result_passes_xl_channel_validation(channel_socket: Any) -> None:
    for domain in ("vm1", "x", "Z" * 64, "a.b-c_d"):
        path = channel_socket.socket_path(domain, "/run/xenchannel")
        channel = {"name": "org.xenchannel.provision.0", "connection": "socket", "path": path}
        assert check_channels([channel], "/run/xenchannel") == [channel]


@pytest.mark.parametrize(
    ("domain", "socket_dir", "sentence"),
    [
        ("../etc/passwd", "/run/xenchannel", "is not valid"),
        ("a..b", "/run/xenchannel", "is not valid"),
        ("a/b", "/run/xenchannel", "is not valid"),
        ("-h", "/run/xenchannel", "is not valid"),
        ("", "/run/xenchannel", "is not valid"),
        ("a" * 65, "/run/xenchannel", "is not valid"),
        ("vm1\n", "/run/xenchannel", "is not valid"),
        ("vm1", "run/xenchannel", "not an absolute path"),
        ("vm1", "/", "must not be /"),
        ("a" * 60, "/" + "d" * 45, "over the 107"),
    ],
)
def test_refused(channel_socket: Any, domain: str, socket_dir: str, sentence: str) -> None:
    with pytest.raises(ValueError, match=sentence):
        channel_socket.socket_path(domain, socket_dir)


def test_run_one_path_per_term(channel_socket: Any, errors_module: Any, monkeypatch: Any) -> None:
    """run() with the option machinery stubbed (the real loader runs in the playbook test)."""
    lookup = channel_socket.LookupModule()
    options = {}
    monkeypatch.setattr(
        lookup, "set_options", lambda var_options=None, direct=None: options.update(direct)
    )
    monkeypatch.setattr(lookup, "get_option", lambda name: options.get(name, "/run/xenchannel"))
    assert lookup.run(["vm1", "vm2"], variables={}) == [
        "/run/xenchannel/vm1.sock",
        "/run/xenchannel/vm2.sock",
    ]
    assert lookup.run(["vm1"], variables={}, socket_dir="/srv/xc") == ["/srv/xc/vm1.sock"]
    with pytest.raises(errors_module.AnsibleLookupError, match="is not valid"):
        lookup.run(["../x"], variables={})


def test_one_domain_name_rule_for_the_controller_the_modules_and_the_agent(
    channel_socket: Any,
) -> None:
    """The lookup (and so the domain role), the xl modules and the agent's store all ask
    one file (module_utils/domain_name.py is a link to runtime/xenchannel/domain_name.py),
    and agree on every class of input: each character, each position, each length."""
    assert os.path.samefile(
        domain_name.__file__, os.path.join(REPO, "runtime", "xenchannel", "domain_name.py")
    )
    samples = ["", "a" * 63, "a" * 64, "a" * 65, "a..b", "a.b", "a.", "a-", "a_", "vm1\n"]
    for code in range(0x20, 0x7F):
        char = chr(code)
        samples += [char, "a" + char, char + "a", "a" + char + "b"]
    samples += ["é", "aé", "a\x00", "a\tb", "a\u2028"]
    for name in samples:
        agent = domain_name.valid_domain_name(name)
        refused = pytest.raises(store.StoreError)
        if agent:
            store.check_domain_name(name)
        else:
            with refused:
                store.check_domain_name(name)
        try:
            channel_socket.socket_path(name, "/run/xenchannel")
            looked_up = True
        except ValueError:
            looked_up = False
        assert looked_up == agent, repr(name)
