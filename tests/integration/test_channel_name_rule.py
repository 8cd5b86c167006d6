"""The one channel-name rule (runtime/xenchannel/channel_name.py) in the parts that are
not Python modules of their own: the guest role's validation, in a real ansible-playbook
run, and xl_channel loaded through Ansible (its module_utils/channel_name.py is a link to
the runtime's file). The udev helper's agreement is tests/integration/test_udev_setup.py.
"""

import os
import sys
from typing import Any, Iterator

import pytest

from testbed.ansible_run import collection_tree, playbook_env, run_tasks
from xenchannel.channel_name import MAX_CHANNEL_NAME, channel_name_problem

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def collections() -> Iterator[str]:
    with collection_tree() as top:
        yield top


def _run(collections: str, workdir: str, task: Any) -> Any:
    env = playbook_env(
        collections, workdir, PATH=os.path.dirname(sys.executable) + ":/usr/bin:/bin"
    )
    return run_tasks(collections, workdir, [task], env=env)


def test_the_module_utils_rule_is_the_runtime_file() -> None:
    shared = os.path.join(ROOT, "plugins", "module_utils", "channel_name.py")
    assert os.path.islink(shared)
    assert os.path.samefile(shared, os.path.join(ROOT, "runtime", "xenchannel", "channel_name.py"))


def _validate(name: str) -> Any:
    return {
        "name": "validate",
        "ansible.builtin.include_role": {
            "name": "xenchannel.provision.guest",
            "tasks_from": "validate",
        },
        "vars": {"guest_channel_name": name},
    }


@pytest.mark.parametrize(
    "name",
    [
        "org." + "a" * (MAX_CHANNEL_NAME - 5) + ".0",  # 129: xl_channel used to take it
        "org.example.agent",  # no version: the role used to take it
        "Org.Example.0",  # upper case: the role used to take it
        "../evil",
    ],
)
def test_the_guest_role_refuses_what_the_rule_refuses(
    collections: str, tmp_path: Any, name: str
) -> None:
    run = _run(collections, str(tmp_path), _validate(name))
    assert run.returncode != 0
    sentence = f"guest_channel_name {name!r} {channel_name_problem(name)}."
    assert sentence in run.stdout, run.stdout
    assert "Validate | Agent settings" not in run.stdout  # refused at the first check


def test_xl_channel_refuses_a_name_the_guest_would_never_link(
    collections: str, tmp_path: Any
) -> None:
    cfg = tmp_path / "vm1.cfg"
    cfg.write_text('name = "vm1"\n')
    name = "org." + "a" * (MAX_CHANNEL_NAME - 5) + ".0"
    task = {
        "name": "xl_channel",
        "xenchannel.provision.xl_channel": {
            "path": str(cfg),
            "channels": [{"name": name, "connection": "pty"}],
        },
    }
    run = _run(collections, str(tmp_path), task)
    assert run.returncode != 0
    assert "is 129 characters long, over the 128 a channel name may have" in run.stdout
    assert cfg.read_text() == 'name = "vm1"\n'
