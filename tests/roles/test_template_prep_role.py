"""xenchannel.provision.template_prep and playbooks/template.yml, in a host sandbox.

The sandbox starts from Debian's cloud-init installed by apt (the cloud-init role test's
base), so `cloud-init clean` runs for real; the state a template must not hand on is
seeded into it, then the role is refused, previewed, run, and run again.
"""

from pathlib import Path
from typing import List

import pytest
import yaml

from tests.roles.test_cloud_init_datasource_role import CFG, from_base, snapshot
from tests.roles.test_guest_role import REPO, SLOW, RoleBox

PREP = {"role": "xenchannel.provision.template_prep"}
CONFIRMED = {**PREP, "template_prep_confirm": True}
# path -> content; each is per-instance state the role must clear.
REMOVED = {
    "/var/lib/dbus/machine-id": "0123456789abcdef0123456789abcdef\n",
    "/etc/ssh/ssh_host_ed25519_key": "PRIVATE KEY (test)\n",
    "/etc/ssh/ssh_host_ed25519_key.pub": "ssh-ed25519 AAAA test\n",
    "/etc/udev/rules.d/70-persistent-net.rules": "# eth0 of the template\n",
    "/var/lib/xenchannel/applied.json": '{"instance-id": "template"}\n',
    "/var/lib/systemd/random-seed": "seed\n",
    "/var/lib/dhcp/dhclient.eth0.leases": "lease {}\n",
    "/var/lib/NetworkManager/internal-eth0.lease": "ADDRESS=192.0.2.5\n",
    "/root/.bash_history": "secret command\n",
    "/home/alice/.bash_history": "ls\n",
    "/var/log/syslog.1": "old\n",
    "/var/log/journal/0123/system@0005f-0001.journal": "archived journal\n",
    "/var/lib/cloud/instances/i-template/obj.pkl": "pickle\n",
    "/var/lib/cloud/seed/nocloud/meta-data": "instance-id: template\n",
    "/var/log/cloud-init.log": "boot of the template\n",
}
TRUNCATED = {
    "/etc/machine-id": "0123456789abcdef0123456789abcdef\n",
    "/var/log/test-service.log": "log line\n",
    "/var/log/wtmp": "login record\n",
}
KEPT = {
    "/etc/hostname": "template\n",
    "/root/.ssh/authorized_keys": "ssh-ed25519 AAAA admin\n",
    # The active journal: journald would recreate it at once, so the role never settled.
    "/var/log/journal/0123/system.journal": "journal\n",
}


def listed(path: str) -> str:
    """How the role lists ``path``: cloud-init's state by its top-level entry, which
    `cloud-init clean` removes whole."""
    if path.startswith("/var/lib/cloud/"):
        return "/".join(path.split("/")[:5])
    return path


def seed(role: RoleBox) -> None:
    lines = []
    for path, content in {**REMOVED, **TRUNCATED, **KEPT}.items():
        lines.append(f"mkdir -p '{Path(path).parent}' && printf '%s' '{content}' > '{path}'")
    role.sh("\n".join(lines)).check()


def present(role: RoleBox, paths: List[str]) -> List[str]:
    return [path for path in paths if role.box.exists(path)]


@pytest.mark.timeout(SLOW)
def test_template_prep_refuses_previews_removes_and_is_idempotent(installed_base, tmp_path) -> None:
    role = from_base(installed_base, tmp_path / "box")
    box = role.box
    try:
        seed(role)

        refused = role.play([PREP])
        assert refused.rc != 0, refused.output
        assert "template_prep would remove this host's identity and history (" in refused.stdout
        assert "set template_prep_confirm=true to do it" in refused.stdout, refused.output
        assert present(role, list(REMOVED)) == list(REMOVED), "a refused run must remove nothing"

        before = snapshot(role)
        preview = role.play([PREP], "--check").check()
        assert preview.changed > 0, preview.output
        for path in [*REMOVED, *TRUNCATED]:
            assert f'"{listed(path)}"' in preview.stdout, f"{path} not listed\n{preview.output}"
        assert "Would remove" in preview.stdout
        assert snapshot(role) == before, "check mode must write nothing"

        done = role.play([CONFIRMED]).check()
        assert done.changed > 0, done.output
        for path in [*REMOVED, *TRUNCATED]:
            assert f'"{listed(path)}"' in done.stdout, f"{path} not reported\n{done.output}"
        assert present(role, list(REMOVED)) == []
        for path in TRUNCATED:
            assert box.exists(path) and box.read(path) == "", path
        for path, content in KEPT.items():
            assert box.read(path) == content, path
        # cloud-init clean ran for real: its directory stays, empty.
        assert box.exists("/var/lib/cloud")
        assert box.written("/var/lib/cloud") == []

        again = role.play([CONFIRMED]).check()
        assert again.changed == 0, again.output
        assert "Removed 0 item(s): this host carries no per-instance state" in again.stdout
    finally:
        role.close()


def test_template_prep_refuses_bad_extra_paths(tmp_path) -> None:
    role = RoleBox(tmp_path / "box")
    try:
        run = role.play([{**CONFIRMED, "template_prep_extra_paths": ["/srv/*.img"]}])
        assert run.rc != 0, run.output
        assert "template_prep_extra_paths must hold absolute paths without globs" in run.stdout
        assert role.written_everywhere() == []
    finally:
        role.close()


TEMPLATE_OPTIONS = ("-e", "xenchannel_template_hosts=localhost", "-e", "xenchannel_become=false")


@pytest.mark.timeout(SLOW)
def test_template_playbook_check_then_converge_then_idempotent(installed_base, tmp_path) -> None:
    role = from_base(installed_base, tmp_path / "box", net=False)
    box = role.box
    playbook = str(REPO / "playbooks" / "template.yml")
    try:
        seed(role)
        before = snapshot(role)
        check = role.playbook(playbook, *TEMPLATE_OPTIONS, "--check").check()
        assert check.changed > 0, check.output
        assert snapshot(role) == before, "check mode must write nothing"

        confirm = ("-e", "template_prep_confirm=true")
        role.playbook(playbook, *TEMPLATE_OPTIONS, *confirm).check()
        # cloud-init is installed, so the datasource came with the guest side.
        assert yaml.safe_load(box.read(CFG))["datasource_list"][0] == "XenChannel"
        assert box.exists("/etc/udev/rules.d/90-xenchannel.rules")
        assert present(role, list(REMOVED)) == []
        assert box.read("/etc/machine-id") == ""

        again = role.playbook(playbook, *TEMPLATE_OPTIONS, *confirm).check()
        assert again.changed == 0, again.output
    finally:
        role.close()
