"""The guest agent's appliers without root: what they parse, refuse and would write.

A step's plan reads the guest root and lists every file's new content without touching
anything, so everything here runs in `make check`; applying the steps (writing, owners,
rollback, the live hostname) needs root and is tested end to end, in namespaces, by
tests/integration/test_guest_agent.py over the same root and instances
(tests/guest_root.py).
"""

import os
import threading
from typing import Any, Dict
from unittest import mock

import pytest

from tests.guest_root import (
    ALICE,
    IFUPDOWN_V1,
    IFUPDOWN_V2,
    NETWORKD_ETH0,
    NETWORKD_MGMT,
    NETWORKD_V1,
    TEMPLATE_HOSTS,
    USER_KEY,
    V1_STATIC,
    V2_STATIC,
    make_root,
    write,
)
from xenchannel.guest.apply import ApplyError
from xenchannel.guest.apply import hostname as hostname_step
from xenchannel.guest.apply import keys as keys_step
from xenchannel.guest.apply import network as network_step

# ---------------------------------------------------------------- network


@pytest.mark.parametrize(
    ("kind", "config", "expected"),
    [
        pytest.param(
            "networkd",
            V2_STATIC,
            {
                "10-xenchannel-eth0.network": NETWORKD_ETH0,
                "10-xenchannel-mgmt.network": NETWORKD_MGMT,
            },
            id="v2-networkd",
        ),
        pytest.param("networkd", V1_STATIC, NETWORKD_V1, id="v1-networkd"),
        pytest.param("ifupdown", V1_STATIC, {"xenchannel": IFUPDOWN_V1}, id="v1-ifupdown"),
        pytest.param("ifupdown", V2_STATIC, {"xenchannel": IFUPDOWN_V2}, id="v2-ifupdown-mac"),
    ],
)
def test_network_plan_renders_for_each_stack(
    tmp_path: Any, kind: str, config: Dict[str, Any], expected: Dict[str, str]
) -> None:
    root = make_root(tmp_path, kind, owners=False)
    where = network_step.NETWORKD_DIR if kind == "networkd" else network_step.IFUPDOWN_DIR
    step = network_step.plan(root, config)
    planned = {}
    for change in step.files:
        assert os.path.dirname(change.shown) == where, change.shown
        assert (change.mode, change.uid, change.gid) == (0o644, 0, 0)
        assert change.data is not None
        planned[os.path.basename(change.shown)] = change.data.decode("utf-8")
    assert planned == expected
    assert step.record == {
        "stack": kind,
        "files": sorted(f"{where}/{name}" for name in expected),
        "removed": [],
    }
    assert os.listdir(network_step.under(root, where)) == []  # planning wrote nothing


def test_network_plan_without_config_removes_an_earlier_instances_files(tmp_path: Any) -> None:
    root = make_root(tmp_path, owners=False)
    earlier = f"{root}/etc/systemd/network/10-xenchannel-eth0.network"
    write(earlier, NETWORKD_ETH0)
    write(f"{root}/etc/systemd/network/50-admin.network", "[Match]\nName=eth9\n")
    step = network_step.plan(root, None)
    assert [(change.path, change.data) for change in step.files] == [(earlier, None)]
    assert step.record == {
        "stack": None,
        "files": [],
        "removed": ["/etc/systemd/network/10-xenchannel-eth0.network"],
    }
    assert step.summary == "network: no network-config; removing 1 file(s) of an earlier instance"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"version": 2, "bridges": {"br0": {}}}, "bridges (br0)"),
        ({"version": 2, "vlans": {"v10": {"id": 10, "link": "eth0"}}}, "vlans (v10)"),
        ({"version": 2, "ethernets": {"e": {"match": {"macaddress": "52:54:00:00:00:09"},
                                            "set-name": "lan"}}}, "'set-name'"),
        ({"version": 2, "ethernets": {"eth0": {"addresses": ["192.0.2.1/24\nDNS=6.6.6.6"]}}},
         "invalid address"),
        ({"version": 2, "ethernets": {"eth0": {"nameservers": {"search": ["a.com\n[Route]"]}}}},
         "invalid search domain"),
        ({"version": 2, "ethernets": {"eth0\n": {"dhcp4": True}}}, "cannot name a file"),
        ({"version": 1, "config": [{"type": "bond", "name": "bond0"}]}, "is a bond"),
        ({"version": 1, "config": [{"type": "physical", "name": "eth0",
                                    "subnets": [{"type": "manual"}]}]}, "'manual'"),
        ({"version": 1, "config": [{"type": "route", "destination": "10.0.0.0/8",
                                    "gateway": "10.9.9.9"}]}, "no interface has an address"),
        # The protocol's sentences (protocol.network_config_version), not "version None".
        ({"ethernets": {"eth0": {"dhcp4": True}}}, "network-config has no version key; add"),
        ({"version": "2", "ethernets": {}}, "version is the string '2'; write the number"),
    ],
)  # fmt: skip
def test_unsupported_network_constructs_fail_clearly(config: Dict[str, Any], message: str) -> None:
    with pytest.raises(ApplyError, match="network: ") as info:
        network_step.parse(config)
    assert message in str(info.value)


def test_ifupdown_names_a_nic_matched_by_mac_only_once_udev_renamed_it(tmp_path: Any) -> None:
    """Where udevd runs, a new NIC is eth0 until udev renames it (enX0 on a Xen clone):
    the name written for ifupdown is the one udev settled on, never the kernel's first.
    Here the "rename" happens in a thread only after planning started waiting."""
    root = make_root(tmp_path, "ifupdown", owners=False)
    write(f"{root}/run/udev/control", "")  # udevd runs; it has not processed ens5 yet
    write(f"{root}/sys/class/net/ens5/ifindex", "3\n")
    config = {"version": 2, "ethernets": {"lan": {"match": {"macaddress": "52:54:00:12:34:56"},
                                                  "dhcp4": True}}}  # fmt: skip
    waiting = threading.Event()
    real_sleep = network_step.time.sleep

    def sleep(seconds: float) -> None:
        waiting.set()
        real_sleep(seconds)

    def udev() -> None:
        waiting.wait(30)
        os.rename(f"{root}/sys/class/net/ens5", f"{root}/sys/class/net/enX1")
        write(f"{root}/run/udev/data/n3", "E:ID_NET_NAME_PATH=enX1\n")

    renamer = threading.Thread(target=udev)
    renamer.start()
    try:
        with mock.patch.object(network_step.time, "sleep", sleep):
            step = network_step.plan(root, config)
    finally:
        renamer.join(30)
    assert waiting.is_set()
    text = step.files[0].data.decode()
    assert "iface enX1 inet dhcp" in text and "ens5" not in text, text


def test_ifupdown_refusals(tmp_path: Any) -> None:
    root = make_root(tmp_path, "ifupdown", owners=False)
    both = {"version": 2, "ethernets": {"eth0": {"dhcp4": True, "addresses": ["192.0.2.5/24"]}}}
    with pytest.raises(ApplyError, match="combines DHCP and static IPv4"):
        network_step.plan(root, both)
    glob_name = {"version": 2, "ethernets": {"lan": {"match": {"name": "en*"}, "dhcp4": True}}}
    with pytest.raises(ApplyError, match="ifupdown needs one interface name"):
        network_step.plan(root, glob_name)
    write(f"{root}/etc/network/interfaces.d/setup", "allow-hotplug eth0\niface eth0 inet dhcp\n")
    with pytest.raises(ApplyError, match=r"interfaces\.d/setup already configures eth0"):
        network_step.plan(root, {"version": 2, "ethernets": {"eth0": {"dhcp4": True}}})
    os.unlink(f"{root}/etc/network/interfaces.d/setup")
    write(f"{root}/etc/network/interfaces", "auto lo\niface lo inet loopback\n")
    with pytest.raises(ApplyError, match=r"add the line 'source /etc/network/interfaces\.d/"):
        network_step.plan(root, {"version": 2, "ethernets": {"eth0": {"dhcp4": True}}})
    write(f"{root}/etc/netplan/50-cloud.yaml", "network: {}\n")
    with pytest.raises(ApplyError, match="netplan"):
        network_step.plan(root, {"version": 2, "ethernets": {"eth0": {"dhcp4": True}}})


def test_ssh_keys_plan_for_a_user_and_its_refusals(tmp_path: Any) -> None:
    root = make_root(tmp_path, owners=False)
    step = keys_step.plan(root, "alice", ["ssh-ed25519 AAAAC3NzaKEY1 ops@a"])
    assert step is not None
    [ssh] = step.dirs
    assert (ssh.shown, ssh.mode, ssh.uid, ssh.gid, ssh.enforce) == (
        "/home/alice/.ssh",
        0o700,
        *ALICE,
        True,
    )
    [change] = step.files
    assert (change.shown, change.mode, change.uid, change.gid) == (
        "/home/alice/.ssh/authorized_keys",
        0o600,
        *ALICE,
    )
    # Her own key stays, first; the managed block follows it.
    assert (
        change.data
        == (
            f"{USER_KEY}\n{keys_step.BEGIN}\nssh-ed25519 AAAAC3NzaKEY1 ops@a\n{keys_step.END}\n"
        ).encode()
    )
    assert step.record == {"user": "alice", "count": 1, "file": "/home/alice/.ssh/authorized_keys"}
    assert "AAAAC3Nza" not in step.summary
    # No keys, and none managed before: nothing to do.
    assert keys_step.plan(root, "root", []) is None

    with pytest.raises(ApplyError, match="user 'bob' is not in /etc/passwd; pass --user"):
        keys_step.plan(root, "bob", ["k"])
    with open(f"{root}/etc/passwd", "a") as passwd:
        passwd.write("carol:x:1001:1001::/home/carol:/bin/sh\n")
    with pytest.raises(ApplyError, match="home directory /home/carol of 'carol' does not exist"):
        keys_step.plan(root, "carol", ["k"])
    os.symlink("/etc", f"{root}/root/.ssh")
    with pytest.raises(ApplyError, match=r"/root/\.ssh or its authorized_keys is a symlink"):
        keys_step.plan(root, "root", ["k"])


def test_public_keys_in_every_form() -> None:
    assert keys_step.collect_keys("ssh-rsa A x\n\n# note\nssh-ed25519 B y\n") == [
        "ssh-rsa A x",
        "ssh-ed25519 B y",
    ]
    assert keys_step.collect_keys(["k1", "k2", "k1"]) == ["k1", "k2"]
    assert keys_step.collect_keys({"a": "k1", "b": ["k2", "k3"]}) == ["k1", "k2", "k3"]
    assert keys_step.collect_keys(None) == []
    with pytest.raises(ApplyError, match="control characters"):
        keys_step.collect_keys(["ssh-rsa A\x1b[2Jx"])
    # The user's own keys are kept around the managed block, in place.
    old = f"mine-1\n{keys_step.BEGIN}\nold\n{keys_step.END}\nmine-2\n"
    assert keys_step.replace_block(old, ["new"]) == (
        f"mine-1\n{keys_step.BEGIN}\nnew\n{keys_step.END}\nmine-2\n"
    )
    assert keys_step.replace_block(old, []) == "mine-1\nmine-2\n"
    with pytest.raises(ApplyError, match="broken xenchannel markers"):
        keys_step.replace_block(f"{keys_step.BEGIN}\nold\n", ["new"])


def test_hosts_file_keeps_every_other_line() -> None:
    assert hostname_step.render_hosts(TEMPLATE_HOSTS, "db") == TEMPLATE_HOSTS.replace(
        "127.0.1.1\ttemplate", "127.0.1.1\tdb"
    )
    no_line = "127.0.0.1 localhost\n::1 localhost\n"
    assert hostname_step.render_hosts(no_line, "db.lan") == (
        "127.0.0.1 localhost\n127.0.1.1\tdb.lan db\n::1 localhost\n"
    )
    assert "127.0.1.1\tdb\n" in hostname_step.render_hosts(None, "db")
