"""channel_metadata and channel_status in a real ansible-playbook run against localhost.

The modules run as Ansible runs them on dom0: packaged by AnsiballZ, executed by the
target's Python (here the venv's, which has the runtime on its path as dom0's system
Python has it once the dom0_agent role ran). channel_metadata is run the
community.crypto way - check, real, check again, real again - and then a real dom0
agent, the channel simulator and a guest fetch deliver the bundle, which channel_status
waits for. No output of any run, with -vvv and --diff included, may contain user-data.
"""

import json
import os
import stat
import subprocess
import sys
from typing import Any, Dict, Iterator, List

import pytest

from testbed.ansible_run import collection_tree, playbook_env, run_tasks, saved_results
from testbed.stack import RUNTIME, Domain, Stack

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
MARKER = "TOPSECRET-user-data-4f9c2a"
DOMAIN = "vm1"


@pytest.fixture(scope="module")
def collections() -> Iterator[str]:
    with collection_tree() as top:
        yield top


@pytest.fixture
def stack() -> Iterator[Stack]:
    stack = Stack()
    try:
        yield stack
    finally:
        stack.close()


def playbook(
    collections: str, workdir: str, tasks: List[Dict[str, Any]], *options: str
) -> "subprocess.CompletedProcess[str]":
    """Run the tasks on localhost with the runtime importable, as on dom0."""
    pythonpath = RUNTIME + os.pathsep + os.environ.get("PYTHONPATH", "")
    env = playbook_env(collections, workdir, PYTHONPATH=pythonpath)
    return run_tasks(collections, workdir, tasks, *options, env=env)


results = saved_results


def test_metadata_four_runs_then_delivery(collections: str, stack: Stack) -> None:
    socket = os.path.join(stack.run, f"{DOMAIN}.sock")
    entry = os.path.join(stack.store, DOMAIN, "domain.json")
    metadata = {
        "domain": DOMAIN,
        "socket": socket,
        "store_dir": stack.store,
        "socket_root": stack.run,
        "meta_data": {"instance-id": "iid-vm1", "local-hostname": DOMAIN},
        "user_data": f"#cloud-config\nchpasswd: {{list: 'root:{MARKER}'}}\n",
        "network_config": {"version": 2, "ethernets": {"eth0": {"dhcp4": True}}},
    }
    module = "xenchannel.provision.channel_metadata"
    stat_task = {"ansible.builtin.stat": {"path": entry}}
    tasks = [
        {"name": "check 1", module: metadata, "check_mode": True},
        {"name": "stat after check 1", **stat_task},
        {"name": "real 1", module: metadata},
        {"name": "check 2", module: metadata, "check_mode": True},
        {"name": "real 2", module: metadata},
    ]
    run = playbook(collections, stack.root, tasks, "--diff")
    assert MARKER not in run.stdout + run.stderr
    by_name = results(run, stack.root)
    assert by_name["check 1"]["changed"] is True
    assert by_name["stat after check 1"]["stat"]["exists"] is False
    assert by_name["real 1"]["changed"] is True, by_name["real 1"]
    assert by_name["real 1"]["path"] == entry
    assert by_name["real 1"]["instance_id"] == "iid-vm1"
    assert "bytes, sha256" in by_name["real 1"]["diff"]["after"]["user-data"]
    assert by_name["check 2"]["changed"] is False
    assert by_name["real 2"]["changed"] is False
    assert stat.S_IMODE(os.stat(entry).st_mode) == 0o600
    digest = by_name["real 1"]["sha256"]

    # The domain boots: QEMU's socket appears, the agent serves it, the guest fetches.
    stack.domains[DOMAIN] = Domain(
        DOMAIN,
        socket,
        os.path.join(stack.dev, DOMAIN),
        stack.simulator.add_channel(socket, os.path.join(stack.dev, DOMAIN), stack.default_options),
    )
    stack.start_agent()
    bundle = stack.fetch(DOMAIN)
    assert bundle.digest() == digest
    assert MARKER.encode() in (bundle.user_data or b"")

    status = {
        "domain": DOMAIN,
        "state_dir": stack.state,
        "store_dir": stack.store,
        "socket_root": stack.run,
        "wait_for": "delivered",
        "timeout": 30,
        "poll_interval": 0.2,
    }
    run = playbook(
        collections,
        stack.root,
        [{"name": "delivered", "xenchannel.provision.channel_status": status}],
    )
    delivered = results(run, stack.root)["delivered"]
    assert delivered["changed"] is False
    assert delivered["reached"] is True
    assert delivered["store_sha256"] == digest
    assert delivered["summary"]["delivered"] == "yes"
    assert delivered["record"]["delivered"]["sha256"] == digest

    # A change of user-data only, with everything Ansible can show: -vvv and --diff.
    changed = dict(metadata, user_data=metadata["user_data"] + f"# {MARKER} again\n")
    tasks = [
        {"name": "change user-data", module: changed},
        {"name": "status", "xenchannel.provision.channel_status": dict(status, wait_for="none")},
    ]
    run = playbook(collections, stack.root, tasks, "-vvv", "--diff")
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "changed: [localhost]" in output
    assert "bytes, sha256" in output
    # -vvv shows the module's arguments: user_data is there, masked by no_log.
    assert "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER" in output
    assert MARKER not in output


def test_secret_meta_data_never_shows_with_diff_and_vvv(collections: str, stack: Stack) -> None:
    """Secret meta-data (by the built-in rule, and a key the user marks) is in no output
    of a create, a change and an argument error, with --diff and -vvv; the diff says that
    a secret changed; what is not secret stays visible."""
    secrets = {
        "password": "PW-7d1e-first",
        "api-token": "TOK-93ab",
        "service": {"client_secret": "CS-51fe"},
        "ssh_keys": {"rsa_private": "PRIV-0c77"},
        "enrolment": "ENR-66d2",  # not secret by name: marked with secret_keys
    }
    public = "ssh-ed25519 AAAAC3Nza-public-4411 admin@example"
    metadata = {
        "domain": DOMAIN,
        "socket": os.path.join(stack.run, f"{DOMAIN}.sock"),
        "store_dir": stack.store,
        "socket_root": stack.run,
        "meta_data": {"instance-id": "iid-vm1", "public-keys": [public], **secrets},
        "secret_keys": ["enrolment"],
    }
    module = "xenchannel.provision.channel_metadata"
    changed = dict(metadata, meta_data=dict(metadata["meta_data"], password="PW-2b9c-second"))
    tasks = [
        {"name": "create", module: metadata},
        {"name": "change the password", module: changed},
        {"name": "unchanged", module: changed},
        {"name": "argument error", module: dict(changed, state="presnt"), "ignore_errors": True},
    ]
    run = playbook(collections, stack.root, tasks, "--diff", "-vvv")
    output = run.stdout + run.stderr
    values = ["PW-7d1e-first", "PW-2b9c-second", "TOK-93ab", "CS-51fe", "PRIV-0c77", "ENR-66d2"]
    for value in values:
        assert value not in output, value
    by_name = results(run, stack.root)
    assert not [value for value in values if value in json.dumps(by_name)]
    # The entry holds them all the same: the guest gets its secrets.
    with open(os.path.join(stack.store, DOMAIN, "domain.json")) as handle:
        stored = json.load(handle)["meta-data"]
    assert stored["password"] == "PW-2b9c-second" and stored["enrolment"] == "ENR-66d2"
    # The diff says which secret changed, and shows what is not secret.
    diff = by_name["change the password"]["diff"]
    assert diff["before"]["meta-data"]["password"] == "<secret>"
    assert diff["after"]["meta-data"]["password"] == "<secret, changed>"
    assert diff["after"]["meta-data"]["api-token"] == "<secret>"
    assert diff["after"]["meta-data"]["public-keys"] == [public]
    assert '+        "password": "<secret, changed>"' in output
    assert public in output and "iid-vm1" in output
    assert by_name["unchanged"]["changed"] is False
    assert by_name["argument error"]["failed"] is True
    assert "presnt" in by_name["argument error"]["msg"]
