"""A guest root directory and the instances the guest agent tests apply to it.

One definition for the tests that run the agent in namespaces as root
(tests/integration/test_guest_agent.py) and the tests of its appliers' pure logic that
run in `make check` (tests/unit/test_guest_apply.py): both see the same template, the
same network-config and the same rendered files.
"""

import os
from typing import Any

ALICE = (1000, 1000)
USER_KEY = "ssh-ed25519 AAAAC3NzaUSERKEY alice@laptop"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEIdFCfqlznO98dpr+EHwLcE6nJGWY+PMvU+slK45pQB"
HOST_PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nTEMPLATE-HOST-SECRET\n"

TEMPLATE_HOSTS = (
    "127.0.0.1\tlocalhost\n"
    "127.0.1.1\ttemplate\n"
    "192.0.2.200\tbackup.example.com backup\n"
    "\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
)

V2_STATIC = {
    "version": 2,
    "ethernets": {
        "eth0": {
            "addresses": ["192.0.2.10/24", "2001:db8::10/64"],
            "gateway4": "192.0.2.1",
            "gateway6": "2001:db8::1",
            "nameservers": {"addresses": ["192.0.2.53"], "search": ["example.com"]},
            "routes": [{"to": "198.51.100.0/24", "via": "192.0.2.254", "metric": 100}],
            "mtu": 1500,
        },
        "mgmt": {"match": {"macaddress": "52:54:00:12:34:56"}, "dhcp4": True, "optional": True},
    },
}
V1_STATIC = {
    "network": {
        "version": 1,
        "config": [
            {
                "type": "physical",
                "name": "eth0",
                "subnets": [
                    {
                        "type": "static",
                        "address": "192.0.2.20",
                        "netmask": "255.255.255.0",
                        "gateway": "192.0.2.1",
                        "dns_nameservers": ["192.0.2.53"],
                    },
                    {"type": "static6", "address": "2001:db8::20/64"},
                ],
            },
            {"type": "physical", "name": "eth1", "subnets": [{"type": "dhcp"}]},
            {"type": "nameserver", "address": ["192.0.2.54"], "search": ["lab.example.com"]},
            {"type": "route", "destination": "203.0.113.0/24", "gateway": "192.0.2.254"},
        ],
    }
}

# What the network step renders from V2_STATIC and V1_STATIC, for each stack.
NETWORKD_ETH0 = """\
# Written by the xenchannel guest agent from this instance's network-config.
# Replaced or removed whenever a new instance is applied: do not edit.
[Match]
Name=eth0

[Link]
MTUBytes=1500

[Network]
Address=192.0.2.10/24
Address=2001:db8::10/64
Gateway=192.0.2.1
Gateway=2001:db8::1
DNS=192.0.2.53
Domains=example.com

[Route]
Destination=198.51.100.0/24
Gateway=192.0.2.254
Metric=100
"""
NETWORKD_MGMT = """\
# Written by the xenchannel guest agent from this instance's network-config.
# Replaced or removed whenever a new instance is applied: do not edit.
[Match]
MACAddress=52:54:00:12:34:56

[Link]
RequiredForOnline=no

[Network]
DHCP=ipv4
"""
IFUPDOWN_V2 = """\
# Written by the xenchannel guest agent from this instance's network-config.
# Replaced or removed whenever a new instance is applied: do not edit.

auto eth0
iface eth0 inet static
    address 192.0.2.10/24
    gateway 192.0.2.1
    pre-up ip link set dev eth0 mtu 1500
    dns-nameservers 192.0.2.53
    dns-search example.com
    up ip -4 route add 198.51.100.0/24 via 192.0.2.254 metric 100 dev eth0
iface eth0 inet6 static
    address 2001:db8::10/64
    gateway 2001:db8::1

allow-hotplug ens5
iface ens5 inet dhcp
"""
IFUPDOWN_V1 = """\
# Written by the xenchannel guest agent from this instance's network-config.
# Replaced or removed whenever a new instance is applied: do not edit.

auto eth0
iface eth0 inet static
    address 192.0.2.20/24
    gateway 192.0.2.1
    dns-nameservers 192.0.2.53 192.0.2.54
    dns-search lab.example.com
    up ip -4 route add 203.0.113.0/24 via 192.0.2.254 dev eth0
iface eth0 inet6 static
    address 2001:db8::20/64

auto eth1
iface eth1 inet dhcp
    dns-nameservers 192.0.2.54
    dns-search lab.example.com
"""
NETWORKD_V1 = {
    "10-xenchannel-eth0.network": """\
# Written by the xenchannel guest agent from this instance's network-config.
# Replaced or removed whenever a new instance is applied: do not edit.
[Match]
Name=eth0

[Network]
Address=192.0.2.20/24
Address=2001:db8::20/64
Gateway=192.0.2.1
DNS=192.0.2.53
DNS=192.0.2.54
Domains=lab.example.com

[Route]
Destination=203.0.113.0/24
Gateway=192.0.2.254
""",
    "10-xenchannel-eth1.network": """\
# Written by the xenchannel guest agent from this instance's network-config.
# Replaced or removed whenever a new instance is applied: do not edit.
[Match]
Name=eth1

[Network]
DHCP=ipv4
DNS=192.0.2.54
Domains=lab.example.com
""",
}


def write(path: str, text: str, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)
    os.chmod(path, mode)


def make_root(
    tmp_path: Any, stack_kind: str = "networkd", alice_keys: bool = True, owners: bool = True
) -> str:
    """A minimal guest root: passwd, hostname, hosts, homes, one network stack.

    ``owners``: alice owns her home, as on a guest; handing a file to another user needs
    root, so the tests without it pass False (the network step never looks at owners).
    """
    root = str(tmp_path / "root")
    write(
        f"{root}/etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000:Alice:/home/alice:/bin/bash\n",
    )
    write(f"{root}/etc/hostname", "template\n")
    write(f"{root}/etc/hosts", TEMPLATE_HOSTS)
    os.makedirs(f"{root}/root", mode=0o700)
    os.makedirs(f"{root}/home/alice")
    if owners:
        os.chown(f"{root}/home/alice", *ALICE)
    if alice_keys:
        os.makedirs(f"{root}/home/alice/.ssh", mode=0o755)
        write(f"{root}/home/alice/.ssh/authorized_keys", USER_KEY + "\n", 0o644)
        if owners:
            os.chown(f"{root}/home/alice/.ssh", *ALICE)
            os.chown(f"{root}/home/alice/.ssh/authorized_keys", *ALICE)
    for name, mac in (("eth0", "52:54:00:00:00:01"), ("ens5", "52:54:00:12:34:56")):
        write(f"{root}/sys/class/net/{name}/address", mac + "\n")
        write(f"{root}/sys/class/net/{name}/type", "1\n")  # ARPHRD_ETHER
    # Host keys as sshd writes them, the private one beside: only .pub may be reported.
    write(f"{root}/etc/ssh/ssh_host_ed25519_key.pub", HOST_KEY + " root@template\n")
    write(f"{root}/etc/ssh/ssh_host_ed25519_key", HOST_PRIVATE_KEY, 0o600)
    if stack_kind == "networkd":
        os.makedirs(f"{root}/etc/systemd/network")
        wants = f"{root}/etc/systemd/system/multi-user.target.wants"
        os.makedirs(wants)
        os.symlink(
            "/lib/systemd/system/systemd-networkd.service", f"{wants}/systemd-networkd.service"
        )
    else:
        write(
            f"{root}/etc/network/interfaces",
            "auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n",
        )
        os.makedirs(f"{root}/etc/network/interfaces.d")
        write(f"{root}/sbin/ifup", "#!/bin/sh\nexit 0\n", 0o755)
    return root
