"""xl_domain_config in a real ansible-playbook run: check, real, check, real.

A clone's config is written from a template, then changed in place; Xen's own parser
reads the result.
"""

import os
import sys
from typing import Any, Dict, Iterator, List

import pytest

from testbed.ansible_run import collection_tree, playbook_env, run_tasks, saved_results
from tests.oracle import libxlutil

TEMPLATE = (
    "# the Debian template\n"
    'name = "debian"\n'
    'uuid = "11111111-2222-3333-4444-555555555555"\n'
    'type = "pvh"\n'
    "memory = 512\n"
    'disk = [ "phy:/dev/vg0/debian,xvda,w" ]\n'
)
MODULE = "xenchannel.provision.xl_domain_config"


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


def play(collections: str, workdir: str, tasks: List[Dict[str, Any]]) -> Dict[str, Any]:
    # No xl on the PATH: running is "unknown" whatever the host is.
    env = playbook_env(
        collections, workdir, PATH=os.path.dirname(sys.executable) + ":/usr/bin:/bin"
    )
    return saved_results(run_tasks(collections, workdir, tasks, "--diff", env=env), workdir)


def four(name: str, options: Dict[str, Any]) -> List[Dict[str, Any]]:
    return [
        {"name": f"{name} check 1", MODULE: options, "check_mode": True},
        {"name": f"{name} real 1", MODULE: options},
        {"name": f"{name} check 2", MODULE: options, "check_mode": True},
        {"name": f"{name} real 2", MODULE: options},
    ]


def test_clone_check_real_check_real(collections: str, tmp_path: Any, xl_oracle: Any) -> None:
    template = tmp_path / "debian.cfg"
    template.write_text(TEMPLATE)
    path = tmp_path / "web1.cfg"
    clone = {
        "path": str(path),
        "template": str(template),
        "name": "web1",
        "uuid": "{{ 'web1' | ansible.builtin.to_uuid }}",
        "memory": 1024,
        "vcpus": 2,
        "disks": [{"target": "/dev/vg0/web1", "vdev": "xvda", "access": "rw"}],
        "vifs": [{"mac": "00:16:3e:00:00:11", "bridge": "xenbr0"}],
        "channels": [
            {
                "name": "org.xenchannel.provision.0",
                "connection": "socket",
                "path": "{{ lookup('xenchannel.provision.channel_socket', 'web1') }}",
            }
        ],
        "backup": True,
    }
    bigger = dict(clone, memory=2048)
    results = play(collections, str(tmp_path), four("clone", clone) + four("grow", bigger))
    for name in ("clone", "grow"):
        assert results[f"{name} check 1"]["changed"] is True, name
        assert results[f"{name} real 1"]["changed"] is True, name
        assert results[f"{name} check 2"]["changed"] is False, name
        assert results[f"{name} real 2"]["changed"] is False, name
    assert results["clone check 1"]["created"] is True
    assert results["clone check 1"]["diff"]["after"] == results["clone real 1"]["diff"]["after"]
    assert results["clone real 1"]["backup_file"] is None  # nothing to back up yet
    assert "memory = 1024" in results["grow check 1"]["diff"]["before"]
    with open(results["grow real 1"]["backup_file"]) as handle:
        assert "memory = 1024" in handle.read()
    seen = libxlutil.parse(path.read_text())
    uuid = results["grow real 2"]["config"]["uuid"]
    assert uuid != "11111111-2222-3333-4444-555555555555"
    assert seen.values == {
        "name": "web1",
        "uuid": uuid,
        "type": "pvh",
        "memory": "2048",
        "vcpus": "2",
        "disk": ["vdev=xvda, access=rw, target=/dev/vg0/web1"],
        "vif": ["mac=00:16:3e:00:00:11, bridge=xenbr0"],
        "channel": [
            "connection=socket, name=org.xenchannel.provision.0, path=/run/xenchannel/web1.sock"
        ],
    }
    assert template.read_text() == TEMPLATE
