"""xenchannel.provision.cloud_init_datasource against a real Debian cloud-init install.

Debian bookworm's cloud-init 22.4 .deb (fetched by tests/setup-cloud-init.sh) is
installed with apt inside a host sandbox, once per module, into a base whose overlay
uppers each test then copies: so every test starts from a true Debian install (dpkg
database, ds-identify, /usr/bin/cloud-init) and the machine itself never gets cloud-init.
"""

import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Tuple

import pytest
import yaml

from tests.datasource import test_ds_identify as ds_identify_test
from tests.roles.test_guest_role import CLEAN_ENV, REPO, SLOW, RoleBox, islink_to

DEB_DIR = REPO / ".cache" / "cloud-init" / "22.4"
SETUP_CLOUD_INIT = REPO / "tests" / "setup-cloud-init.sh"
DS_IDENTIFY = "/usr/lib/cloud-init/ds-identify"
MARKER = "# >>> xenchannel dscheck_XenChannel >>>"
SOURCES = "/usr/lib/python3/dist-packages/cloudinit/sources"
CFG = "/etc/cloud/cloud.cfg.d/90-xenchannel.cfg"
DATASOURCE = {"role": "xenchannel.provision.cloud_init_datasource"}
# Discovery the way `cloud-init init --local` does it, by cloud-init's own code.
DISCOVER = (
    "from cloudinit import sources; from cloudinit.sources import DataSourceXenChannel; "
    "found = sources.list_sources("
    "['XenChannel'], (sources.DEP_FILESYSTEM,), ['cloudinit.sources']); "
    "print([c.__module__ + '.' + c.__name__ for c in found])"
)


def cloud_init_deb() -> Path:
    debs = sorted(DEB_DIR.glob("cloud-init_22.4*.deb"))
    if not debs:
        raise AssertionError(
            f"no cloud-init 22.4 .deb in {DEB_DIR}; run `sh {SETUP_CLOUD_INIT}` to fetch it"
        )
    return debs[-1]


def apt_install(role: RoleBox, *args: str, timeout: float = 900):
    """apt-get inside the sandbox, with downloads kept in the repository's cache."""
    return role.box.run(
        ["apt-get", "-y", "--no-install-recommends", "-o", "Dpkg::Use-Pty=0", *args],
        env={
            **CLEAN_ENV,
            "APT_CONFIG": role.env["APT_CONFIG"],
            "DEBIAN_FRONTEND": "noninteractive",
        },
        timeout=timeout,
    )


def from_base(base: Path, target: Path, net: bool = True) -> RoleBox:
    """A new sandbox starting from a copy of ``base``'s uppers (xattrs and whiteouts kept)."""
    target.mkdir(parents=True)
    subprocess.run(
        ["cp", "-a", str(base / "upper"), str(target / "upper")], check=True, timeout=300
    )
    return RoleBox(target, net=net)


def snapshot(role: RoleBox) -> Dict[str, Tuple[int, int]]:
    """(size, mtime) of every file written into the sandbox: to see that nothing changes."""
    found = {}
    for path in role.written_everywhere():
        st = Path(role.box.host_path(path)).lstat()
        found[path] = (st.st_size, st.st_mtime_ns)
    return found


@pytest.mark.timeout(SLOW)
def test_datasource_role_on_debian_cloud_init(installed_base: Path, tmp_path: Path) -> None:
    role = from_base(installed_base, tmp_path / "box", net=False)
    box = role.box
    try:
        assert MARKER not in box.read(DS_IDENTIFY), "the fresh install must not have the check yet"
        first = role.play([DATASOURCE]).check()
        assert first.changed > 0, first.output

        module = f"{SOURCES}/DataSourceXenChannel.py"
        assert box.read(module) == (REPO / "datasource/DataSourceXenChannel.py").read_text()
        assert box.mode(module) == 0o644
        assert yaml.safe_load(box.read(CFG)) == {
            "datasource_list": ["XenChannel", "NoCloud", "None"],
            "datasource": {"XenChannel": {"channel_name": "org.xenchannel.provision.0"}},
        }
        assert box.mode(CFG) == 0o644
        assert box.read(DS_IDENTIFY).splitlines().count(MARKER) == 1
        assert box.mode("/usr/lib/xenchannel/install-ds-identify-check.sh") == 0o755
        assert box.exists("/etc/apt/apt.conf.d/90xenchannel")
        assert box.mode("/usr/lib/xenchannel/xenchannel-report-status") == 0o755
        assert islink_to(
            box,
            "/etc/systemd/system/cloud-init.target.wants/xenchannel-report-status.service",
            "/etc/systemd/system/xenchannel-report-status.service",
        )
        # The guest role came along (dependency): the runtime the datasource imports.
        assert box.exists("/usr/lib/python3/dist-packages/xenchannel/guest/client.py")

        # The installed cloud-init finds and imports the datasource; its CLI works, its
        # schema accepts our configuration, and the edited ds-identify is valid sh.
        found = box.run(["/usr/bin/python3", "-I", "-c", DISCOVER], env=CLEAN_ENV).check()
        assert "cloudinit.sources.DataSourceXenChannel.DataSourceXenChannel" in found.stdout, found
        version = box.run(["cloud-init", "--version"], env=CLEAN_ENV).check()
        assert re.search(r"\b22\.4", version.stdout + version.stderr), version
        schema = box.run(["cloud-init", "schema", "--config-file", CFG], env=CLEAN_ENV).check()
        assert "Valid cloud-config" in schema.stdout, schema
        box.run(["sh", "-n", DS_IDENTIFY], env=CLEAN_ENV).check()
        # What the role wrote, read by the edited ds-identify as at boot (a fake root on a
        # Xen guest with the channel's link): it must keep cloud-init enabled and put
        # XenChannel first. ds-identify reads datasource_list only in its one-line form.
        fake = tmp_path / "ds-identify"
        root = ds_identify_test.make_root(str(fake), "22.4", virt="xen")
        Path(root, "usr/lib/cloud-init/ds-identify").write_text(box.read(DS_IDENTIFY))
        Path(root, "etc/cloud/cloud.cfg.d/90-xenchannel.cfg").write_text(box.read(CFG))
        ds_identify_test.touch_link(root, "xen-channel")
        rc, written, log = ds_identify_test.run(str(fake), root)
        assert rc == 0, log
        assert "datasource_list: [ XenChannel, None ]" in written, (written, log)

        second = role.play([DATASOURCE]).check()
        assert second.changed == 0, second.output
        assert box.read(DS_IDENTIFY).splitlines().count(MARKER) == 1

        # An upgrade (a reinstall: dpkg replaces ds-identify): apt's hook puts the check
        # back, and the datasource module, which dpkg does not own, stays.
        deb = shutil.copy(cloud_init_deb(), role.share)
        reinstall = apt_install(role, "install", "--reinstall", deb).check()
        assert "Unpacking cloud-init" in reinstall.stdout, reinstall.stdout
        assert box.read(DS_IDENTIFY).splitlines().count(MARKER) == 1
        assert box.exists(module)

        # Without the hook the reinstall drops the check; the role puts it back (changed).
        role.sh("mv /etc/apt/apt.conf.d/90xenchannel /root/90xenchannel.off").check()
        apt_install(role, "install", "--reinstall", deb).check()
        assert MARKER not in box.read(DS_IDENTIFY)
        again = role.play([DATASOURCE]).check()
        assert again.changed > 0, again.output
        assert box.read(DS_IDENTIFY).splitlines().count(MARKER) == 1
        assert "dscheck_XenChannel inserted into" in again.stdout
    finally:
        role.close()


@pytest.mark.timeout(SLOW)
def test_datasource_role_on_the_rhel_layout(installed_base: Path, tmp_path: Path) -> None:
    """RHEL's packages (and meson's default) put ds-identify in /usr/libexec/cloud-init,
    and their generator runs it from there: the role inserts the check into that one.
    Built from the Debian install by moving ds-identify and editing the generator's line
    as RHEL's render of the same template has it."""
    role = from_base(installed_base, tmp_path / "box", net=False)
    libexec = "/usr/libexec/cloud-init/ds-identify"
    generator = "/usr/lib/systemd/system-generators/cloud-init-generator"  # /lib: a link
    try:
        role.sh(
            f"mkdir -p /usr/libexec/cloud-init && mv {DS_IDENTIFY} {libexec} && "
            f'sed -i \'s|dsidentify="{DS_IDENTIFY}"|dsidentify="{libexec}"|\' {generator}'
        ).check()
        assert f'dsidentify="{libexec}"' in role.box.read(generator)
        first = role.play([DATASOURCE]).check()
        assert role.box.read(libexec).splitlines().count(MARKER) == 1
        assert not role.box.exists(DS_IDENTIFY)
        assert f"dscheck_XenChannel inserted into {libexec}" in first.stdout, first.output
    finally:
        role.close()


@pytest.mark.timeout(SLOW)
def test_datasource_role_check_mode_changes_nothing(installed_base: Path, tmp_path: Path) -> None:
    role = from_base(installed_base, tmp_path / "box")
    try:
        before = snapshot(role)
        run = role.play([DATASOURCE], "--check").check()
        assert run.changed > 0, run.output
        assert snapshot(role) == before
        assert MARKER not in role.box.read(DS_IDENTIFY)
    finally:
        role.close()


@pytest.mark.timeout(SLOW)
def test_datasource_role_refuses_too_old_cloud_init(installed_base: Path, tmp_path: Path) -> None:
    role = from_base(installed_base, tmp_path / "box")
    try:
        # A STUB standing in for an old cloud-init: only version.py is replaced, which is
        # all the role reads. Not a real cloud-init 21.4.
        role.sh(
            "printf '%s\\n' '# TEST STUB: pretends to be cloud-init 21.4' "
            "'__VERSION__ = \"21.4\"' 'def version_string():' '    return __VERSION__' "
            f"> {SOURCES}/../version.py"
        ).check()
        run = role.play([DATASOURCE], variables={"guest_install_xenstore_utils": False})
        assert run.rc != 0, run.output
        assert (
            "cloud-init 21.4 (in /usr/lib/python3/dist-packages/cloudinit) is older than 22.4, "
            "the oldest the XenChannel datasource works with; upgrade cloud-init" in run.stdout
        ), run.output
        assert not role.box.exists(CFG)
        assert not role.box.exists(f"{SOURCES}/DataSourceXenChannel.py")
        assert MARKER not in role.box.read(DS_IDENTIFY)
    finally:
        role.close()


def test_datasource_role_refuses_a_host_without_cloud_init(tmp_path: Path) -> None:
    role = RoleBox(tmp_path / "box")
    try:
        run = role.play([DATASOURCE], variables={"guest_install_xenstore_utils": False})
        assert run.rc != 0, run.output
        assert (
            "cloud-init is not installed: /usr/bin/python3 cannot import cloudinit" in run.stdout
        ), run.output
        assert not role.box.exists(CFG)
    finally:
        role.close()
