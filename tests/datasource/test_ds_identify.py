"""dscheck_XenChannel inside the REAL ds-identify of each tested cloud-init, run against
a fake root (PATH_ROOT) the way cloud-init's own ds-identify tests do: the commands it
would ask about the machine (systemd-detect-virt, blkid) are stand-ins on PATH.

Each fake root has ds-identify where that version's install put it, beside the systemd
generator that runs it: /usr/lib/cloud-init (Debian's packages, 26.2 built for a
Debian-family variant) or /usr/libexec/cloud-init (23.4 and 24.4 as RHEL builds them)."""

import os
import shutil
import subprocess
from typing import Dict, List, Tuple

import pytest

from testbed.cloud_init_trees import REPO, VERSIONS, ds_identify, generator, tree

INSTALL = os.path.join(REPO, "datasource", "install-ds-identify-check.sh")
CHANNEL = "org.xenchannel.provision.0"
MARKER = "# >>> xenchannel dscheck_XenChannel >>>"


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def make_root(base: str, version: str, virt: str = "none") -> str:
    root = os.path.join(base, "root")
    for installed in (ds_identify(version), generator(version)):
        copy = os.path.join(root, os.path.relpath(installed, tree(version)))
        os.makedirs(os.path.dirname(copy), exist_ok=True)
        shutil.copy2(installed, copy)
    os.makedirs(os.path.join(root, "etc/cloud/cloud.cfg.d"))
    with open(os.path.join(root, "etc/cloud/cloud.cfg.d/90-xenchannel.cfg"), "w") as f:
        f.write("datasource_list: [XenChannel, NoCloud, None]\n")
    # DMI present, so the default policy (not the no-DMI one) applies.
    dmi = os.path.join(root, "sys/class/dmi/id")
    os.makedirs(dmi)
    for name, value in (("sys_vendor", "Xen"), ("product_name", "HVM domU")):
        with open(os.path.join(dmi, name), "w") as f:
            f.write(value + "\n")
    os.makedirs(os.path.join(root, "proc/1"))
    for name, value in (
        ("proc/cmdline", "root=/dev/xvda1\n"),
        ("proc/1/cmdline", "init"),
        ("proc/1/environ", ""),
        ("proc/uptime", "5.00 4.00\n"),
    ):
        with open(os.path.join(root, name), "w") as f:
            f.write(value)
    os.makedirs(os.path.join(root, "run/systemd"))  # so systemd-detect-virt is asked
    bindir = os.path.join(base, "bin")
    os.makedirs(bindir)
    for name, body in (
        ("systemd-detect-virt", f"echo {virt}; [ {virt} != none ]"),
        ("blkid", "exit 2"),
    ):
        path = os.path.join(bindir, name)
        with open(path, "w") as f:
            f.write("#!/bin/sh\n" + body + "\n")
        os.chmod(path, 0o755)
    return root


def install(root: str) -> None:
    subprocess.run(["sh", INSTALL, root], check=True, timeout=30)


def installed_ds_identify(root: str) -> str:
    """The fake root's ds-identify, in either layout."""
    found = [
        os.path.join(root, rel, "ds-identify")
        for rel in ("usr/lib/cloud-init", "usr/libexec/cloud-init")
        if os.path.isfile(os.path.join(root, rel, "ds-identify"))
    ]
    assert len(found) == 1, found
    return found[0]


def run(base: str, root: str, **extra_env: str) -> Tuple[int, str, str]:
    env: Dict[str, str] = {
        "PATH": os.path.join(base, "bin") + ":/usr/sbin:/usr/bin:/sbin:/bin",
        "PATH_ROOT": root,
        "DI_LOG": "stderr",
        **extra_env,
    }
    result = subprocess.run(  # noqa: PLW1510 - the return code is asserted
        ["sh", installed_ds_identify(root), "--force"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    cfg = os.path.join(root, "run/cloud-init/cloud.cfg")
    written = read(cfg) if os.path.exists(cfg) else ""
    return result.returncode, written, result.stderr


def touch_link(root: str, kind: str) -> None:
    path = os.path.join(root, "dev", kind, CHANNEL)
    os.makedirs(os.path.dirname(path))
    os.symlink("../hvc1", path)  # dangling here, as before udev's node: -e would fail
    open(os.path.join(root, "dev", "hvc1"), "w").close()


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("how", ["xen-link", "virtio-link", "virtio-sysfs", "xen-sysfs"])
def test_found(tmp_path, version: str, how: str) -> None:
    base = str(tmp_path)
    root = make_root(base, version, virt="xen" if how.startswith("xen") else "kvm")
    install(root)
    if how == "xen-link":
        touch_link(root, "xen-channel")
    elif how == "virtio-link":
        touch_link(root, "virtio-ports")
    elif how == "virtio-sysfs":
        port = os.path.join(root, "sys/class/virtio-ports/vport1p1")
        os.makedirs(port)
        with open(os.path.join(port, "name"), "w") as f:
            f.write(CHANNEL + "\n")
    else:
        xen_guest(root, consoles=["console-1"])
    rc, written, log = run(base, root)
    assert rc == 0, log
    assert "check for 'XenChannel' returned found" in log
    assert "datasource_list: [ XenChannel, None ]" in written, (written, log)


def xen_guest(root: str, consoles: List[str]) -> None:
    """What the kernel shows of a Xen guest before udev: the hypervisor, and each
    secondary PV console as a xenbus device (a link into /sys/devices, as in sysfs)."""
    os.makedirs(os.path.join(root, "sys/hypervisor"))
    with open(os.path.join(root, "sys/hypervisor/type"), "w") as f:
        f.write("xen\n")
    bus = os.path.join(root, "sys/bus/xen/devices")
    os.makedirs(bus)
    for name in consoles:
        device = os.path.join(root, "sys/devices/xen", name)
        os.makedirs(device)
        os.symlink(os.path.relpath(device, bus), os.path.join(bus, name))


@pytest.mark.parametrize("version", VERSIONS)
def test_a_xen_guest_without_a_channel_is_not_claimed(tmp_path, version: str) -> None:
    """A clone created without the channel (with a NoCloud disk instead, say) must not
    be claimed by XenChannel: NoCloud is then found alone, with no 2 s wait first."""
    base = str(tmp_path)
    root = make_root(base, version, virt="xen")
    install(root)
    xen_guest(root, consoles=[])
    os.makedirs(os.path.join(root, "sys/bus/xen/devices/vbd-51712"))
    rc, written, log = run(base, root)
    assert "DSLIST=XenChannel" in log, log
    assert "check for 'XenChannel' returned found" not in log, log
    assert "XenChannel" not in written, written
    assert rc != 0  # no other source here either: the default policy disables cloud-init


@pytest.mark.parametrize("version", VERSIONS)
def test_not_found(tmp_path, version: str) -> None:
    base = str(tmp_path)
    root = make_root(base, version, virt="kvm")
    install(root)
    port = os.path.join(root, "sys/class/virtio-ports/vport1p1")
    os.makedirs(port)
    with open(os.path.join(port, "name"), "w") as f:
        f.write("org.qemu.guest_agent.0\n")
    rc, written, log = run(base, root)
    assert "check for 'XenChannel' returned found" not in log, log
    assert "No ds found" in log, log
    assert "XenChannel" not in written
    assert rc != 0  # nothing found: the default policy disables cloud-init


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", ["../../../etc/passwd", "Org.Example.0", "org.x.0 $(id)"])
def test_a_name_against_the_channel_name_rule_is_a_warning_never_a_path(
    tmp_path, version: str, name: str
) -> None:
    """DI_XENCHANNEL_NAME is checked by the channel-name rule before it is used in a
    path: a bad value is one warning naming the variable and the fix, and not found,
    even where a file by that path exists."""
    base = str(tmp_path)
    root = make_root(base, version, virt="xen")
    install(root)
    os.makedirs(os.path.join(root, "dev/xen-channel"))
    os.makedirs(os.path.join(root, "etc"), exist_ok=True)
    open(os.path.join(root, "etc/passwd"), "w").close()
    xen_guest(root, consoles=["console-1"])  # would be found with a good name
    rc, written, log = run(base, root, DI_XENCHANNEL_NAME=name)
    assert "WARN: XenChannel: DI_XENCHANNEL_NAME '" in log, log
    assert "is not a channel name; set it to a versioned reverse domain name" in log, log
    assert "$(id)" not in log and "uid=" not in log
    assert "check for 'XenChannel' returned found" not in log, log
    assert "XenChannel" not in written
    assert rc != 0  # nothing else found either: the default policy disables cloud-init


@pytest.mark.parametrize("version", VERSIONS)
def test_without_the_check_ds_identify_skips_xenchannel(tmp_path, version: str) -> None:
    base = str(tmp_path)
    root = make_root(base, version, virt="xen")
    touch_link(root, "xen-channel")
    _rc, written, log = run(base, root)
    assert "No check method 'dscheck_XenChannel'" in log
    assert "XenChannel" not in written


@pytest.mark.parametrize("version", VERSIONS)
def test_install_is_idempotent_and_keeps_main_last(tmp_path, version: str) -> None:
    root = make_root(str(tmp_path), version)
    target = installed_ds_identify(root)
    assert target == os.path.join(root, os.path.relpath(ds_identify(version), tree(version)))
    install(root)
    once = read(target)
    install(root)
    assert read(target) == once
    assert once.count(MARKER) == 1
    assert once.index("dscheck_XenChannel() {") < once.index("\nnoop() {")
    assert os.access(target, os.X_OK)
    # a newer copy of the check replaces the old block
    with open(target, "w") as f:
        f.write(once.replace("dscheck_XenChannel() {", "dscheck_XenChannel() { : old;", 1))
    install(root)
    assert read(target) == once


def test_install_refuses_an_unknown_layout(tmp_path) -> None:
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "usr/lib/cloud-init"))
    with open(os.path.join(root, "usr/lib/cloud-init/ds-identify"), "w") as f:
        f.write("#!/bin/sh\nmain\n")
    result = subprocess.run(
        ["sh", INSTALL, root], check=False, stderr=subprocess.PIPE, text=True, timeout=30
    )
    assert result.returncode == 1
    assert "unknown ds-identify layout" in result.stderr


LAYOUTS = {"debian": "usr/lib/cloud-init", "rhel": "usr/libexec/cloud-init"}


def _generator_naming(root: str, named: str) -> None:
    path = os.path.join(root, "usr/lib/systemd/system-generators/cloud-init-generator")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(f'#!/bin/sh\n# start: template section\n    dsidentify="{named}"\n')


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("with_generator", [True, False], ids=["generator", "no-generator"])
def test_install_finds_either_layout(tmp_path, layout: str, with_generator: bool) -> None:
    """Debian's /usr/lib/cloud-init and RHEL's /usr/libexec/cloud-init, found through the
    generator's own line or, without a generator, where it exists."""
    root = str(tmp_path)
    target = os.path.join(root, LAYOUTS[layout], "ds-identify")
    os.makedirs(os.path.dirname(target))
    shutil.copy2(ds_identify("24.4"), target)
    if with_generator:
        _generator_naming(root, "/" + LAYOUTS[layout] + "/ds-identify")
    located = subprocess.run(
        ["sh", INSTALL, "--locate", root], capture_output=True, text=True, timeout=30, check=True
    )
    assert located.stdout.strip() == target
    install(root)
    assert read(target).count(MARKER) == 1


def test_install_follows_the_generator_not_a_stray_copy(tmp_path) -> None:
    """A leftover /usr/lib copy beside RHEL's layout: the generator runs libexec's."""
    root = str(tmp_path)
    for rel in LAYOUTS.values():
        os.makedirs(os.path.join(root, rel))
        shutil.copy2(ds_identify("24.4"), os.path.join(root, rel, "ds-identify"))
    _generator_naming(root, "/usr/libexec/cloud-init/ds-identify")
    install(root)
    assert MARKER in read(os.path.join(root, LAYOUTS["rhel"], "ds-identify"))
    assert MARKER not in read(os.path.join(root, LAYOUTS["debian"], "ds-identify"))


def test_install_refuses_when_the_generator_runs_a_missing_ds_identify(tmp_path) -> None:
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "usr/lib/cloud-init"))
    shutil.copy2(ds_identify("22.4"), os.path.join(root, "usr/lib/cloud-init/ds-identify"))
    _generator_naming(root, "/usr/libexec/cloud-init/ds-identify")
    result = subprocess.run(
        ["sh", INSTALL, root], check=False, stderr=subprocess.PIPE, text=True, timeout=30
    )
    assert result.returncode == 3
    assert "runs /usr/libexec/cloud-init/ds-identify, which is not in" in result.stderr
    assert MARKER not in read(os.path.join(root, "usr/lib/cloud-init/ds-identify"))


def test_locate_without_any_ds_identify_exits_3(tmp_path) -> None:
    result = subprocess.run(
        ["sh", INSTALL, "--locate", str(tmp_path)],
        check=False, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 3 and result.stdout == ""
    assert "is cloud-init installed in" in result.stderr
