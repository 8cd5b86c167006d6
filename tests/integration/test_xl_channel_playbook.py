"""xl_channel, the channel_spec filters and the channel_socket lookup in real ansible-playbook runs.

xl_channel runs check, real, check, real against a copy of a domain config; the file it
writes is read back by Xen's own parser. Then a play uses the filters and the lookup,
loaded by their collection names.
"""

import os
import sys
from typing import Any, Dict, Iterator, List

import pytest

from testbed.ansible_run import collection_tree, playbook_env, run_tasks, saved_results
from tests.oracle import libxlutil

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
CONFIG = 'name = "vm1"\nmemory = 1024\ndisk = [ "phy:/dev/vg0/vm1,xvda,w" ]\n'
AGENT_SPEC = "connection=socket, name=org.xenchannel.provision.0, path=/run/xenchannel/vm1.sock"


@pytest.fixture(scope="module")
def xl_oracle() -> Any:
    """Xen's parser; fails (never skips) when it has not been fetched."""
    try:
        libxlutil.load()
    except libxlutil.OracleMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    return libxlutil


@pytest.fixture(scope="module")
def collections() -> Iterator[str]:
    with collection_tree() as top:
        yield top


def play(
    collections: str, workdir: str, tasks: List[Dict[str, Any]], *options: str
) -> Dict[str, Dict[str, Any]]:
    """Run the tasks on localhost; each task's registered result, by task name."""
    # No xl on the PATH: running is "unknown" whatever the host is.
    env = playbook_env(
        collections, workdir, PATH=os.path.dirname(sys.executable) + ":/usr/bin:/bin"
    )
    return saved_results(run_tasks(collections, workdir, tasks, *options, env=env), workdir)


def test_xl_channel_check_real_check_real(collections: str, tmp_path: Any, xl_oracle: Any) -> None:
    cfg = tmp_path / "vm1.cfg"
    cfg.write_text(CONFIG)
    options = {
        "path": str(cfg),
        "domain": "vm1",
        "backup": True,
        "channels": [
            {
                "name": "org.xenchannel.provision.0",
                "connection": "socket",
                "path": "{{ lookup('xenchannel.provision.channel_socket', 'vm1') }}",
            }
        ],
    }
    module = "xenchannel.provision.xl_channel"
    tasks = [
        {"name": "check 1", module: options, "check_mode": True},
        {"name": "real 1", module: options},
        {"name": "check 2", module: options, "check_mode": True},
        {"name": "real 2", module: options},
    ]
    results = play(collections, str(tmp_path), tasks, "--diff")
    assert results["check 1"]["changed"] is True
    assert AGENT_SPEC in results["check 1"]["diff"]["after"]
    assert results["real 1"]["changed"] is True
    assert results["real 1"]["backup_file"]
    assert results["real 1"]["running"] == "unknown"
    assert results["real 1"]["restart_required"] is None
    assert results["check 2"]["changed"] is False
    assert results["real 2"]["changed"] is False
    assert results["real 2"]["channels"] == [
        {
            "connection": "socket",
            "name": "org.xenchannel.provision.0",
            "path": "/run/xenchannel/vm1.sock",
        }
    ]
    with open(results["real 1"]["backup_file"]) as handle:
        assert handle.read() == CONFIG
    seen = libxlutil.parse(cfg.read_text())
    assert seen.values == {
        "name": "vm1",
        "memory": "1024",
        "disk": ["phy:/dev/vg0/vm1,xvda,w"],
        "channel": [AGENT_SPEC],
    }


def test_filters_and_lookup_in_a_play(collections: str, tmp_path: Any) -> None:
    channel = {"name": "org.qemu.guest_agent.0", "connection": "pty"}
    tasks = [
        {
            "name": "spec",
            "ansible.builtin.set_fact": {
                "spec": "{{ ch | xenchannel.provision.channel_spec }}",
                "checked": "{{ ch | xenchannel.provision.channel_spec(socket_dir='/run/x') }}",
                "parsed": f"{{{{ {AGENT_SPEC!r} | xenchannel.provision.parse_channel_spec }}}}",
                "sockets": "{{ query('xenchannel.provision.channel_socket', 'vm1', 'vm2',"
                " socket_dir='/srv/xc') }}",
            },
            "vars": {"ch": channel},
        },
        {
            "name": "bad filter",
            "ansible.builtin.debug": {
                "msg": "{{ 'name=a,name=b' | xenchannel.provision.parse_channel_spec }}"
            },
            "ignore_errors": True,
        },
        {
            "name": "bad lookup",
            "ansible.builtin.debug": {
                "msg": "{{ lookup('xenchannel.provision.channel_socket', '../etc') }}"
            },
            "ignore_errors": True,
        },
    ]
    results = play(collections, str(tmp_path), tasks)
    facts = results["spec"]["ansible_facts"]
    assert facts["spec"] == facts["checked"] == "connection=pty, name=org.qemu.guest_agent.0"
    assert facts["parsed"] == {
        "connection": "socket",
        "name": "org.xenchannel.provision.0",
        "path": "/run/xenchannel/vm1.sock",
    }
    assert facts["sockets"] == ["/srv/xc/vm1.sock", "/srv/xc/vm2.sock"]
    assert results["bad filter"]["failed"] is True
    assert "gives name twice" in results["bad filter"]["msg"]
    assert results["bad lookup"]["failed"] is True
    assert "is not valid" in results["bad lookup"]["msg"]
