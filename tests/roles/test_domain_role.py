"""xenchannel.provision.domain on a simulated dom0: a real agent, a fake xl, simulated guests.

Each sandbox first gets the dom0_agent role for real.  Then the real agent runs from the
installed files, and the domain role runs beside it in the same namespaces.  ``xl`` is a
shell script in the sandbox: ``xl list`` answers from marker files under /run, and ``xl
create`` logs its call, marks the domain running and starts a simulated guest (QEMU's
socket and a guest client, tests/roles/simulated_guest.py) on the socket path it reads
from the config the role wrote.
"""

import json
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Set

import pytest

from testbed import ansible_run
from testbed.host_sandbox import Running
from tests.roles.test_dom0_agent_role import AGENT, CLEAN_ENV, START_AGENT, Dom0Box, Play

REPO = Path(__file__).resolve().parents[2]
GUEST = REPO / "tests" / "roles" / "simulated_guest.py"
XL_LOG = "/var/log/fake-xl.log"
TEMPLATE = "/etc/xen/template.cfg"
TEMPLATE_TEXT = """\
# The template VM, as an admin wrote it.
name = "template"
type = "pvh"
kernel = "/boot/vmlinuz"
memory = 512
vcpus = 1
disk = [ "format=raw, vdev=xvda, access=ro, target=/srv/xen/template.img" ]
on_crash = "restart"
"""
# report: what the simulated guest reports after fetching (applied, none), or "absent"
# for a domain whose guest never comes up.
FAKE_XL = """\
#!/bin/sh
echo "$*" >> {log}
case "$1" in
list)
    if [ -e "/run/fake-xl/$2" ]; then
        printf 'Name ID Mem VCPUs State Time(s)\\n%s 7 1024 1 -b---- 1.0\\n' "$2"
        exit 0
    fi
    echo "$2 is an invalid domain identifier (rc=-6)" >&2
    exit 1
    ;;
create)
    name=$(sed -n 's/^name *= *"\\(.*\\)"$/\\1/p' "$2")
    socket=$(sed -n 's/.*path=\\([^,"]*\\.sock\\).*/\\1/p' "$2")
    [ -n "$name" ] && [ -n "$socket" ] || {{ echo "fake xl: no name or socket in $2" >&2; exit 1; }}
    mkdir -p /run/fake-xl
    touch "/run/fake-xl/$name"
    if [ "{report}" != absent ]; then
        /usr/bin/python3 -I {guest} --socket "$socket" --report {report} \\
            --timeout 120 --linger 600 >"/var/log/fake-xl-$name.log" 2>&1 </dev/null &
    fi
    exit 0
    ;;
esac
echo "fake xl: $1 is not simulated" >&2
exit 2
"""


def domain(name: str, **extra: Any) -> Dict[str, Any]:
    return dict(
        {
            "role": "xenchannel.provision.domain",
            "domain_name": name,
            "domain_template_config": TEMPLATE,
        },
        **extra,
    )


def prepare(role: Dom0Box, report: str) -> None:
    """The agent's files (the role, for real), a template config and the fake xl."""
    role.play([AGENT]).check()
    install_template_and_xl(role, report)


def install_template_and_xl(role: Dom0Box, report: str) -> None:
    script = FAKE_XL.format(log=XL_LOG, report=report, guest=GUEST)
    setup = (
        f"mkdir -p /etc/xen && cat > {TEMPLATE} <<'EOF'\n{TEMPLATE_TEXT}EOF\n"
        f"cat > /usr/local/sbin/xl <<'EOF'\n{script}EOF\n"
        "chmod 0755 /usr/local/sbin/xl"
    )
    role.box.run(["sh", "-ec", setup], env=CLEAN_ENV).check()


def new_files(before: Set[str], after: Set[str]) -> List[str]:
    """Files written in between, but for Ansible's and the fake xl's own bookkeeping."""
    return sorted(p for p in after - before if p != XL_LOG and not p.startswith("/root/.ansible"))


def creates(role: Dom0Box) -> List[str]:
    if not role.box.exists(XL_LOG):
        return []
    return [line for line in role.box.read(XL_LOG).splitlines() if line.startswith("create ")]


def agent_session(role: Dom0Box) -> Running:
    session = role.box.start(["sh", "-c", START_AGENT], env=CLEAN_ENV, timeout=900)
    session.wait_for(
        lambda: (
            session.run(["test", "-S", "/run/xenchannel/agent.sock"], env=CLEAN_ENV, timeout=10).rc
            == 0
        ),
        20,
        "the agent's control socket",
    )
    return session


@pytest.fixture
def dom0box(tmp_path):
    made: List[Dom0Box] = []

    def make(name: str = "box") -> Dom0Box:
        made.append(Dom0Box(tmp_path / name))
        return made[-1]

    yield make
    for role in made:
        role.close()


def provision(role: Dom0Box, vms: List[Dict[str, Any]], within: Running) -> Play:
    """The collection's provisioning playbook, by its FQCN, for a dom0 group of localhost."""
    host = {
        "ansible_connection": "local",
        "ansible_python_interpreter": "/usr/bin/python3",
        "xenchannel_become": False,
        "dom0_agent_manage_service": False,
        "xenchannel_vms": vms,
    }
    inventory = role.share / "inventory.json"
    inventory.write_text(json.dumps({"dom0": {"hosts": {"localhost": host}}}))
    argv = [ansible_run.PLAYBOOK, "-i", str(inventory), "xenchannel.provision.provision"]
    return Play(within.run(argv, env=role.env, timeout=600, cwd=str(role.share)))


def test_provision_playbook_creates_two_domains_once_and_waits_for_applied(dom0box) -> None:
    role = dom0box()
    prepare(role, report="applied")
    common = {"template_config": TEMPLATE, "wait": "applied", "wait_timeout": 90}
    vms = [
        dict(
            common,
            name="vm1",
            memory=1024,
            user_data="#cloud-config\npassword: s3cret-do-not-log\n",
        ),
        # The same keys with the role's prefix, as the demo's inventory writes them.
        {
            "domain_name": "vm2",
            "domain_template_config": TEMPLATE,
            "domain_vcpus": 2,
            "domain_metadata": {"public-keys": ["ssh-ed25519 AAAAC3Nzavm2 root@vm2"]},
            "domain_wait": "applied",
            "domain_wait_timeout": 90,
        },
    ]
    with agent_session(role) as agent:
        first = provision(role, vms, agent).check()
        assert first.changed > 0, first.output
        second = provision(role, vms, agent).check()
        assert second.changed == 0, second.output
        table = agent.run(["xenchannel-dom0", "status"], env=CLEAN_ENV).check().stdout
    box = role.box
    # xl create exactly once per domain across both runs, with the role's config path.
    assert creates(role) == ["create /etc/xen/vm1.cfg", "create /etc/xen/vm2.cfg"]
    assert "s3cret-do-not-log" not in first.stdout + first.stderr + second.stdout

    # Different sockets, UUIDs and bundles; the UUID is the instance-id.
    configs = {name: box.read(f"/etc/xen/{name}.cfg") for name in ("vm1", "vm2")}
    stores = {
        name: json.loads(box.read(f"/etc/xenchannel/domains/{name}/domain.json"))
        for name in ("vm1", "vm2")
    }
    uuids = {}
    for name in ("vm1", "vm2"):
        cfg = configs[name]
        assert f'name = "{name}"' in cfg
        assert f"path=/run/xenchannel/{name}.sock" in cfg
        assert "name=org.xenchannel.provision.0" in cfg and "connection=socket" in cfg
        assert 'on_crash = "restart"' in cfg  # the template's other settings are kept
        uuid_line = next(line for line in cfg.splitlines() if line.startswith("uuid"))
        uuids[name] = uuid_line.split('"')[1]
        assert box.mode(f"/etc/xenchannel/domains/{name}/domain.json") == 0o600
        assert stores[name]["socket"] == f"/run/xenchannel/{name}.sock"
        meta = stores[name]["meta-data"]
        assert meta["instance-id"] == uuids[name]
        assert meta["local-hostname"] == name
    assert uuids["vm1"] != uuids["vm2"]
    assert "memory = 1024" in configs["vm1"] and "vcpus = 2" in configs["vm2"]
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
    for name in ("vm1", "vm2"):
        # READY no, ADDRESS -: the simulated guests send no report of themselves.
        assert rows[name][3:8] == ["yes", "applied", "no", "-", uuids[name]], table


def test_wait_times_out_with_the_agents_last_error(dom0box) -> None:
    role = dom0box()
    prepare(role, report="absent")  # xl create "starts" it, but no socket ever appears
    with agent_session(role) as agent:
        failed = role.play(
            [domain("vm3", domain_wait="delivered", domain_wait_timeout=4)], within=agent
        )
    assert failed.rc != 0 and failed.failed == 1, failed.output
    assert "timed out after 4 s waiting for vm3" in failed.stdout, failed.output
    assert "last error from the agent:" in failed.stdout, failed.output
    assert creates(role) == ["create /etc/xen/vm3.cfg"]


def test_check_mode_changes_nothing(dom0box) -> None:
    role = dom0box()
    prepare(role, report="applied")
    before = {p for top in role.box.overlaid for p in role.box.written(top)}
    check = role.play([domain("vm4"), domain("vm5")], "--check").check()
    assert check.changed > 0, check.output
    after = {p for top in role.box.overlaid for p in role.box.written(top)}
    assert new_files(before, after) == [], check.output
    assert creates(role) == []


def test_check_mode_on_a_fresh_dom0_with_the_agent_role(dom0box) -> None:
    """The provisioning play in check mode before anything is installed must not fail."""
    role = dom0box()
    install_template_and_xl(role, report="absent")
    before = {p for top in role.box.overlaid for p in role.box.written(top)}
    check = role.play([AGENT, domain("vm6")], "--check").check()
    after = {p for top in role.box.overlaid for p in role.box.written(top)}
    assert new_files(before, after) == [], check.output
    assert "the bundle of vm6 was not checked" in check.stdout


def test_starting_without_xl_is_refused_with_the_fix(dom0box) -> None:
    role = dom0box()
    role.play([AGENT]).check()
    role.box.run(
        ["sh", "-ec", f"mkdir -p /etc/xen && cat > {TEMPLATE} <<'EOF'\n{TEMPLATE_TEXT}EOF"],
        env=CLEAN_ENV,
    ).check()
    failed = role.play([domain("vm7")])
    assert failed.rc != 0, failed.output
    assert "install Xen's tools (xen-utils) or set domain_start to false" in failed.stdout, (
        failed.output
    )
    # Without starting, the config and the bundle are still written.
    done = role.play([domain("vm7", domain_start=False)]).check()
    assert role.box.exists("/etc/xen/vm7.cfg") and role.box.exists(
        "/etc/xenchannel/domains/vm7/domain.json"
    ), done.output


def test_the_documented_inventory_parses_and_the_playbook_checks(tmp_path) -> None:
    """docs/dom0-agent.md's example inventory, read by ansible-inventory; the playbook
    passes ansible-playbook --syntax-check against it (neither touches a host)."""
    doc = (REPO / "docs" / "dom0-agent.md").read_text()
    block = doc.split("An example inventory", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(block)
    with ansible_run.collection_tree() as collections:
        env = ansible_run.playbook_env(collections, str(tmp_path))
        bindir = Path(ansible_run.PLAYBOOK).parent
        listed = subprocess.run(
            [str(bindir / "ansible-inventory"), "-i", str(inventory), "--list"],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        hostvars = json.loads(listed.stdout)["_meta"]["hostvars"]
        vms = hostvars["xen1.example.net"]["xenchannel_vms"]
        assert [vm["name"] for vm in vms] == ["web1", "db1"]
        playbook = "xenchannel.provision.provision"
        syntax = subprocess.run(
            [ansible_run.PLAYBOOK, "-i", str(inventory), "--syntax-check", playbook],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert syntax.returncode == 0, syntax.stdout + syntax.stderr
