"""What the domain and dom0_agent roles and the provision playbook make of users' input.

Real ansible-playbook runs on localhost, without root: the domain role with every path
under a temporary directory and without starting the domain (no xl), so it writes only
there; the dom0_agent role and the provision playbook only as far as their checks, which
must fail before anything is written. What they must hold:

* secret meta-data is in no output, with --diff and -vvv, when the role passes it;
* an unknown key in a VM entry or in dom0_agent_config fails naming the key and the
  nearest known one, a VM entry without a name fails naming ``name``, before anything
  is written;
* a domain name with ``_`` gives a valid hostname (``_`` as ``-``); a name that gives
  none, or an invalid network-config, fails before the xl config is written.
"""

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
import yaml

from testbed.ansible_run import PLAYBOOK, collection_tree, playbook_argv, playbook_env
from testbed.stack import RUNTIME

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = 'name = "template"\ntype = "pvh"\nkernel = "/boot/vmlinuz"\nmemory = 512\n'


@pytest.fixture(scope="module")
def collections() -> Iterator[str]:
    with collection_tree() as top:
        yield top


class Dom0Dir:
    """A dom0 under a temporary directory: xl configs, the agent's store and sockets."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.xen = root / "xen"
        self.store = root / "store"
        self.run = root / "run"
        for path in (self.xen, self.run, root / "tmp"):
            path.mkdir(parents=True, exist_ok=True)
        (self.xen / "template.cfg").write_text(TEMPLATE)

    def vm(self, name: str, **extra: Any) -> Dict[str, Any]:
        """A VM entry as an inventory's xenchannel_vms item holds it."""
        return {
            "name": name,
            "template_config": str(self.xen / "template.cfg"),
            "config_path": str(self.xen / f"{name}.cfg"),
            "start": False,
            "wait": "none",
            **extra,
        }

    def role_vars(self) -> Dict[str, Any]:
        return {"domain_store_dir": str(self.store), "domain_socket_root": str(self.run)}

    def written(self) -> List[str]:
        """What the roles wrote: xl configs beside the template, store entries."""
        files = [p for p in self.xen.iterdir() if p.name != "template.cfg"]
        if self.store.exists():
            files += [p for p in self.store.rglob("*") if p.is_file()]
        return sorted(str(p) for p in files)


@pytest.fixture
def dom0(tmp_path: Path) -> Dom0Dir:
    return Dom0Dir(tmp_path)


def play(collections: str, dom0: Dom0Dir, plays: List[Dict[str, Any]], *options: str) -> Any:
    path = dom0.root / "play.yml"
    path.write_text(json.dumps(plays))
    env = playbook_env(collections, str(dom0.root), PYTHONPATH=RUNTIME)
    return subprocess.run(
        playbook_argv(str(path), *options),
        cwd=str(dom0.root), env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def domain_play(dom0: Dom0Dir, vms: List[Dict[str, Any]], **extra: Any) -> List[Dict[str, Any]]:
    """The domain role for each VM, as the provision playbook includes it."""
    include = {
        "name": "provision",
        "ansible.builtin.include_role": {"name": "xenchannel.provision.domain"},
        "vars": {"domain_vm": "{{ item }}", **dom0.role_vars(), **extra},
        "loop": vms,
        "loop_control": {"label": "{{ item.name | default('?') }}"},
    }
    return [{"hosts": "localhost", "gather_facts": False, "tasks": [include]}]


def output(run: Any) -> str:
    return run.stdout + run.stderr


# ------------------------------------------------------------------------ secrets


def test_the_role_shows_no_secret_meta_data_with_diff_and_vvv(
    collections: str, dom0: Dom0Dir
) -> None:
    secrets = {"password": "PW-a1c9-first", "api-token": "TOK-e2f4", "enrolment": "ENR-77b1"}
    vm = dom0.vm("web1", metadata=dict(secrets), secret_keys=["enrolment"])
    first = play(collections, dom0, domain_play(dom0, [vm]), "--diff", "-vvv")
    assert first.returncode == 0, output(first)
    changed = dict(vm, metadata=dict(secrets, password="PW-5d0e-second"))
    second = play(collections, dom0, domain_play(dom0, [changed]), "--diff", "-vvv")
    assert second.returncode == 0, output(second)
    for value in ("PW-a1c9-first", "PW-5d0e-second", "TOK-e2f4", "ENR-77b1"):
        assert value not in output(first) + output(second), value
    assert '+        "password": "<secret, changed>"' in second.stdout, second.stdout
    stored = json.loads((dom0.store / "web1" / "domain.json").read_text())["meta-data"]
    assert stored["password"] == "PW-5d0e-second" and stored["enrolment"] == "ENR-77b1"


# ------------------------------------------------------------------ unknown and missing keys


@pytest.mark.parametrize(
    ("extra", "sentence"),
    [
        pytest.param(
            {"memroy": 4096},
            "domain_vm has an unknown key 'memroy'; did you mean 'memory'?",
            id="misspelt",
        ),
        pytest.param(
            {"metdata": {"password": "x"}},
            "domain_vm has an unknown key 'metdata'; did you mean 'metadata'?",
            id="misspelt-metadata",
        ),
        pytest.param(
            {"store_dir": "/srv/store"},  # a setting of the role, not of a VM
            "domain_vm has an unknown key 'store_dir'; the known keys are name, uuid,",
            id="nothing-near",
        ),
    ],
)
def test_an_unknown_vm_key_fails_with_the_nearest_before_anything_is_written(
    collections: str, dom0: Dom0Dir, extra: Dict[str, Any], sentence: str
) -> None:
    run = play(collections, dom0, domain_play(dom0, [dom0.vm("web1", **extra)]))
    assert run.returncode != 0
    assert sentence in run.stdout, output(run)
    assert dom0.written() == []


def test_a_vm_without_a_name_fails_naming_the_key(collections: str, dom0: Dom0Dir) -> None:
    vm = dom0.vm("web1")
    del vm["name"]
    run = play(collections, dom0, domain_play(dom0, [vm]))
    assert run.returncode != 0
    assert "domain_vm has no 'name', which is required; add it." in run.stdout, output(run)
    assert "has no attribute" not in output(run)
    assert dom0.written() == []


def test_domain_name_given_apart_needs_no_name_key(collections: str, dom0: Dom0Dir) -> None:
    vm = dom0.vm("web1")
    del vm["name"]
    run = play(collections, dom0, domain_play(dom0, [vm], domain_name="web1"))
    assert run.returncode == 0, output(run)
    assert (dom0.store / "web1" / "domain.json").exists()


def test_the_provision_playbook_checks_every_vm_before_installing_anything(
    collections: str, dom0: Dom0Dir
) -> None:
    inventory = dom0.root / "inventory.json"
    vms = [dom0.vm("web1"), {"domain_name": "web2", "domain_memroy": 1024}]
    host = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "xenchannel_become": False,
        "xenchannel_vms": vms,
        "dom0_agent_manage_service": False,
        "dom0_agent_python_dir": str(dom0.root / "python"),
        "dom0_agent_store_dir": str(dom0.store),
        "dom0_agent_state_dir": str(dom0.root / "state"),
        "dom0_agent_socket_root": str(dom0.run),
        # A tripwire: should the VMs' check not come first, the dom0_agent role stops at
        # its own checks, before it installs anything on this machine.
        "dom0_agent_config": {"not_a_setting": 1},
    }
    inventory.write_text(json.dumps({"dom0": {"hosts": {"localhost": host}}}))
    env = playbook_env(collections, str(dom0.root), PYTHONPATH=RUNTIME)
    argv = [PLAYBOOK, "-i", str(inventory), "xenchannel.provision.provision"]
    run = subprocess.run(
        argv, cwd=str(dom0.root), env=env, capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    assert run.returncode != 0
    assert "xenchannel_vms[1] has an unknown key 'memroy'; did you mean 'memory'?" in run.stdout, (
        output(run)
    )
    # The check ran before the dom0_agent role, which never started.
    assert "dom0_agent : " not in run.stdout and "not_a_setting" not in run.stdout, run.stdout
    assert dom0.written() == [] and not (dom0.root / "python").exists()


def test_a_misspelt_agent_setting_fails_with_the_nearest(collections: str, dom0: Dom0Dir) -> None:
    agent = {
        "role": "xenchannel.provision.dom0_agent",
        "dom0_agent_manage_service": False,
        "dom0_agent_python_dir": str(dom0.root / "python"),
        "dom0_agent_store_dir": str(dom0.store),
        "dom0_agent_state_dir": str(dom0.root / "state"),
        "dom0_agent_socket_root": str(dom0.run),
        "dom0_agent_config": {"rescan_intervall": 2, "backof_max": 30},
    }
    run = play(collections, dom0, [{"hosts": "localhost", "gather_facts": False, "roles": [agent]}])
    assert run.returncode != 0
    assert (
        "dom0_agent_config has an unknown key 'rescan_intervall'; did you mean "
        "'rescan_interval'? dom0_agent_config has an unknown key 'backof_max'; did you mean "
        "'backoff_max'?" in " ".join(run.stdout.split())
    ), output(run)
    assert not (dom0.root / "python").exists() and not dom0.store.exists()


def test_the_vm_keys_are_those_the_role_reads_and_documents() -> None:
    role = REPO / "roles" / "domain"
    defaults = (role / "defaults" / "main.yml").read_text()
    read = set(re.findall(r"domain_vm\['([a-z_]+)'\]", defaults))
    known = yaml.safe_load((role / "vars" / "main.yml").read_text())["__domain_vm_keys"]
    spec = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())
    options = spec["argument_specs"]["main"]["options"]
    listed = re.findall(r"C\(([a-z_]+)\)", options["domain_vm"]["description"][0])
    assert sorted(known) == sorted(read) == sorted(listed)
    assert {f"domain_{key}" for key in known} <= set(options)


# ------------------------------------------------------------ names, hostnames, the bundle


def test_a_domain_name_with_an_underscore_gets_a_valid_hostname(
    collections: str, dom0: Dom0Dir
) -> None:
    run = play(collections, dom0, domain_play(dom0, [dom0.vm("web_1")]))
    assert run.returncode == 0, output(run)
    assert 'name = "web_1"' in (dom0.xen / "web_1.cfg").read_text()
    stored = json.loads((dom0.store / "web_1" / "domain.json").read_text())
    assert stored["meta-data"]["local-hostname"] == "web-1"
    assert stored["socket"] == str(dom0.run / "web_1.sock")


@pytest.mark.parametrize(
    ("vm", "sentence"),
    [
        pytest.param(
            {"name": "web_"},
            "local-hostname 'web-' is not a valid hostname; use letters, digits and hyphens "
            "in dot-separated labels of at most 63 characters; local-hostname defaults to "
            "domain_name with each _ as -, so set local-hostname in domain_metadata",
            id="name-ending-in-underscore",
        ),
        pytest.param(
            {"name": "web._1"},
            "local-hostname defaults to domain_name with each _ as -",
            id="label-starting-with-underscore",
        ),
        pytest.param(
            {"name": "web1", "metadata": {"local-hostname": "bad_host"}},
            "local-hostname 'bad_host' is not a valid hostname",
            id="given-hostname",
        ),
        pytest.param(
            {"name": "web1", "network_config": {"ethernets": {"eth0": {"dhcp4": True}}}},
            "the bundle for domain web1 is invalid: network-config has no version key",
            id="network-config-without-version",
        ),
        pytest.param(
            {"name": "web1", "network_config": {"version": "2", "ethernets": {}}},
            "network-config version is the string '2'; write the number",
            id="network-config-quoted-version",
        ),
    ],
)
def test_a_bundle_the_agent_would_refuse_fails_before_the_xl_config_is_written(
    collections: str, dom0: Dom0Dir, vm: Dict[str, Any], sentence: str
) -> None:
    entry = dom0.vm(vm["name"], **{k: v for k, v in vm.items() if k != "name"})
    run = play(collections, dom0, domain_play(dom0, [entry]))
    assert run.returncode != 0
    assert sentence in " ".join(run.stdout.split()), output(run)
    assert dom0.written() == []
    if "metadata" in vm:  # the user's own hostname: no hint about the default
        assert "defaults to domain_name" not in run.stdout


# ------------------------------------------------------------------------ interfaces

NICS = [
    {"bridge": "xenbr0", "addresses": ["192.0.2.11/24"], "gateway4": "192.0.2.1",
     "nameservers": ["192.0.2.53"]},
    {"bridge": "xenbr1", "dhcp4": True, "name": "lan1"},
]  # fmt: skip


# xen_mac of web1's UUID (to_uuid of "web1") for vifs 0 and 1, as pinned by
# tests/unit/plugins/module_utils/test_interfaces.py.
WEB1_MACS = ("00:16:3e:62:c8:7e", "00:16:3e:11:9c:5d")


def test_interfaces_give_vifs_with_stable_macs_and_a_network_config_matching_them(
    collections: str, dom0: Dom0Dir
) -> None:
    vm = dom0.vm("web1", interfaces=NICS)
    first = play(collections, dom0, domain_play(dom0, [vm]))
    assert first.returncode == 0, output(first)
    mac0, mac1 = WEB1_MACS
    config = (dom0.xen / "web1.cfg").read_text()
    assert (
        f'vif = [\n    "mac={mac0}, bridge=xenbr0",\n    "mac={mac1}, bridge=xenbr1",\n    ]'
        in config
    )
    stored = json.loads((dom0.store / "web1" / "domain.json").read_text())["network-config"]
    assert stored == {
        "version": 2,
        "ethernets": {
            "nic0": {
                "match": {"macaddress": mac0},
                "addresses": ["192.0.2.11/24"],
                "routes": [{"to": "0.0.0.0/0", "via": "192.0.2.1"}],
                "nameservers": {"addresses": ["192.0.2.53"]},
            },
            "lan1": {"match": {"macaddress": mac1}, "set-name": "lan1", "dhcp4": True},
        },
    }
    assert "[WARNING]" not in first.stdout
    again = play(collections, dom0, domain_play(dom0, [vm]))
    assert again.returncode == 0 and re.search(r"localhost\s*: ok=\d+\s+changed=0", again.stdout), (
        output(again)
    )


def test_a_mac_another_vm_uses_is_refused_naming_that_vm(collections: str, dom0: Dom0Dir) -> None:
    mac = WEB1_MACS[1]
    other = dom0.xen / "db1.cfg"
    other.write_text(f'name = "db1"\nvif = [ "mac={mac.upper()},bridge=xenbr1" ]\n')
    run = play(collections, dom0, domain_play(dom0, [dom0.vm("web1", interfaces=NICS)]))
    assert run.returncode != 0
    assert (
        f"vifs item 2 has mac {mac}, which domain db1 already uses ({other}); give this vif "
        "another MAC." in " ".join(run.stdout.split())
    ), output(run)
    assert dom0.written() == [str(other)]


@pytest.mark.parametrize(
    ("extra", "sentence"),
    [
        pytest.param(
            {"interfaces": [{"bridge": "xenbr0", "dhcp4": True, "adresses": []}]},
            "web1: interfaces[0] has an unknown key 'adresses'",
            id="unknown-key",
        ),
        pytest.param(
            {"interfaces": [{"bridge": "xenbr0", "dhcp4": True, "gateway4": "192.0.2.1"}]},
            "web1: interfaces[0] has gateway4 192.0.2.1 but no static IPv4 address",
            id="gateway-without-address",
        ),
        pytest.param(
            {"interfaces": NICS, "vifs": ["bridge=xenbr0"]},
            "web1: interfaces and vifs are both set",
            id="with-vifs",
        ),
        pytest.param(
            {"interfaces": NICS, "network_config": {"version": 2, "ethernets": {}}},
            "web1: interfaces and network_config are both set",
            id="with-network-config",
        ),
        pytest.param(
            {"interface": NICS},
            "domain_vm has an unknown key 'interface'; did you mean 'interfaces'?",
            id="misspelt-key",
        ),
    ],
)
def test_bad_interfaces_fail_before_anything_is_written(
    collections: str, dom0: Dom0Dir, extra: Dict[str, Any], sentence: str
) -> None:
    run = play(collections, dom0, domain_play(dom0, [dom0.vm("web1", **extra)]))
    assert run.returncode != 0
    assert sentence in " ".join(run.stdout.split()), output(run)
    assert dom0.written() == []


@pytest.mark.parametrize(
    ("match", "warned"),
    [
        pytest.param({"name": "eth0"}, True, id="by-name"),
        pytest.param(None, True, id="by-id"),
        pytest.param({"macaddress": "00:16:3e:00:00:11"}, False, id="by-mac"),
    ],
)
def test_a_network_config_matching_by_name_gets_a_warning_that_says_why(
    collections: str, dom0: Dom0Dir, match: Any, warned: bool
) -> None:
    eth0: Dict[str, Any] = {"dhcp4": True}
    if match is not None:
        eth0["match"] = match
    vm = dom0.vm("web1", network_config={"version": 2, "ethernets": {"eth0": eth0}})
    run = play(collections, dom0, domain_play(dom0, [vm]))
    assert run.returncode == 0, output(run)
    text = " ".join(run.stdout.split())
    warning = (
        "[WARNING] web1: network_config finds eth0 only by name, and the name depends on the "
        "guest (predictable interface names: a Debian trixie clone calls its first vif enX0, "
        "not eth0), so the clone may come up without network. Match each by its MAC instead"
    )
    assert (warning in text) is warned, output(run)
    assert (dom0.store / "web1" / "domain.json").exists()  # a warning, not a refusal
