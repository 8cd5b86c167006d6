"""plugins/module_utils/interfaces.py: stable vif MACs and the network-config matching them.

The network-config it writes is also read by the in-guest agent's own parser and
rendered for networkd and ifupdown here, the path of a template without cloud-init:
both must find the NICs by the MACs of the vifs, whatever the guest calls them.
"""

import os
import uuid as uuidlib
from typing import Any, Dict, List

import pytest
from ansible_collections.xenchannel.provision.plugins.module_utils.domain_config import (
    foreign_macs,
    normalise_mac,
    parse_vif,
    vif_list,
)
from ansible_collections.xenchannel.provision.plugins.module_utils.interfaces import (
    domain_interfaces,
    name_matched_interfaces,
    xen_mac,
)
from ansible_collections.xenchannel.provision.plugins.module_utils.xl_config import XlConfig

from tests.guest_root import make_root, write
from xenchannel.guest.apply import network as network_step

UUID = "4ebc6093-8026-5090-bb95-a592e5a6aec3"
STATIC = {
    "bridge": "xenbr0",
    "addresses": ["192.0.2.11/24", "2001:db8::11/64"],
    "gateway4": "192.0.2.1",
    "gateway6": "2001:db8::1",
    "nameservers": ["192.0.2.53"],
    "search": ["example.com"],
}
DHCP = {"bridge": "xenbr1", "dhcp4": True}


# ------------------------------------------------------------------------ xen_mac


def test_xen_mac_is_the_same_on_every_run_and_in_any_case() -> None:
    # Pinned: a change here would give every existing VM a new MAC on the next run.
    assert xen_mac(UUID, 0) == "00:16:3e:62:c8:7e"
    assert xen_mac(UUID, 1) == "00:16:3e:11:9c:5d"
    assert xen_mac(UUID.upper(), 0) == xen_mac(UUID, 0)


def test_xen_mac_is_a_unicast_mac_in_the_half_of_xens_oui_xl_uses() -> None:
    macs = set()
    for number in range(300):
        uuid = str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, f"vm{number}"))
        for index in range(2):
            mac = xen_mac(uuid, index)
            assert normalise_mac(mac, "mac") == mac  # six lower-case pairs, unicast
            octets = [int(part, 16) for part in mac.split(":")]
            assert octets[:3] == [0x00, 0x16, 0x3E] and octets[3] < 0x80, mac
            macs.add(mac)
    # Index and UUID both count. 23 random bits meet by chance (a pair in 2000 VMs is
    # likely), which is why the role refuses a MAC another domain config has.
    assert len(macs) == 600


@pytest.mark.parametrize(
    ("uuid", "index", "sentence"),
    [
        ("web1", 0, "uuid 'web1' is not a UUID"),
        (UUID, -1, "the vif index -1 is not a whole number from 0 up"),
        (UUID, True, "the vif index True is not a whole number from 0 up"),
    ],
)
def test_xen_mac_refuses_what_is_no_uuid_or_index(uuid: Any, index: Any, sentence: str) -> None:
    with pytest.raises(ValueError, match="^" + sentence.replace("(", r"\(")):
        xen_mac(uuid, index)


# --------------------------------------------------------------- domain_interfaces


def test_one_static_and_one_dhcp_interface_match_their_vifs_by_mac() -> None:
    result = domain_interfaces([STATIC, DHCP], UUID)
    mac0, mac1 = xen_mac(UUID, 0), xen_mac(UUID, 1)
    assert result == {
        "vifs": [{"mac": mac0, "bridge": "xenbr0"}, {"mac": mac1, "bridge": "xenbr1"}],
        "network_config": {
            "version": 2,
            "ethernets": {
                "nic0": {
                    "match": {"macaddress": mac0},
                    "addresses": ["192.0.2.11/24", "2001:db8::11/64"],
                    "routes": [
                        {"to": "0.0.0.0/0", "via": "192.0.2.1"},
                        {"to": "::/0", "via": "2001:db8::1"},
                    ],
                    "nameservers": {"addresses": ["192.0.2.53"], "search": ["example.com"]},
                },
                "nic1": {"match": {"macaddress": mac1}, "dhcp4": True},
            },
        },
        "errors": [],
    }
    # The vifs are ones xl_domain_config writes as they are.
    assert [parse_vif(v)["mac"] for v in vif_list(result["vifs"])] == [mac0, mac1]


def test_a_given_mac_and_name_are_used_and_only_a_name_gives_set_name() -> None:
    given = dict(DHCP, mac="00:16:3E:AA:BB:CC", name="lan")
    result = domain_interfaces([{"dhcp6": True}, given], UUID)
    ethernets = result["network_config"]["ethernets"]
    assert result["vifs"] == [
        {"mac": xen_mac(UUID, 0)},
        {"mac": "00:16:3e:aa:bb:cc", "bridge": "xenbr1"},
    ]
    assert ethernets["lan"] == {
        "match": {"macaddress": "00:16:3e:aa:bb:cc"},
        "set-name": "lan",
        "dhcp4": True,
    }
    assert "set-name" not in ethernets["nic0"]


@pytest.mark.parametrize(
    ("interfaces", "sentence"),
    [
        ([dict(DHCP, adresses=["192.0.2.1/24"])], "interfaces[0] has an unknown key 'adresses'"),
        ([{"bridge": "xenbr0"}], "interfaces[0] has no addresses and neither dhcp4 nor dhcp6"),
        ([{"addresses": ["192.0.2.11"]}], "interfaces[0] has address '192.0.2.11'; write an IPv4"),
        (
            [{"dhcp4": True, "gateway4": "192.0.2.1"}],
            "interfaces[0] has gateway4 192.0.2.1 but no static IPv4 address",
        ),
        ([{"addresses": ["192.0.2.11/24"], "gateway4": "2001:db8::1"}], "give an IPv4 address"),
        ([{"dhcp4": "yes"}], "interfaces[0] has dhcp4 'yes'; write true or false."),
        ([{"dhcp4": True, "mac": "01:00:5e:00:00:01"}], "a multicast address a NIC cannot have"),
        (
            [dict(DHCP, mac="00:16:3e:00:00:01"), dict(DHCP, mac="00:16:3e:00:00:01")],
            "interfaces[1] has mac 00:16:3e:00:00:01, which interfaces[0] has too",
        ),
        ([dict(DHCP, name="lan"), dict(DHCP, name="lan")], "interfaces[1] has name 'lan'"),
        ([dict(DHCP, bridge="xen br0")], "interfaces[0] has bridge 'xen br0'"),
        ([dict(DHCP, nameservers=["dns.example"])], "nameservers must be a list of IP addresses"),
        ([], "interfaces must be a non-empty list of interfaces"),
        ([None], "interfaces[0] is null; give a mapping"),
    ],
)
def test_a_bad_interface_gives_one_sentence_and_nothing_to_write(
    interfaces: List[Any], sentence: str
) -> None:
    result = domain_interfaces(interfaces, UUID)
    assert result["vifs"] == [] and result["network_config"] == {}
    assert any(sentence in error for error in result["errors"]), result["errors"]


# ---------------------------------------------------------- name_matched_interfaces


@pytest.mark.parametrize(
    ("config", "names"),
    [
        ({"version": 2, "ethernets": {"eth0": {"dhcp4": True}}}, ["eth0"]),
        ({"version": 2, "ethernets": {"e": {"match": {"name": "en*"}, "dhcp4": True}}}, ["e"]),
        ({"version": 2, "ethernets": {"e": {"match": {"macaddress": "00:16:3e:00:00:01"}}}}, []),
        ({"version": 1, "config": [{"type": "physical", "name": "eth0"}]}, ["eth0"]),
        (
            {
                "version": 1,
                "config": [
                    {"type": "physical", "name": "eth0", "mac_address": "00:16:3e:00:00:01"}
                ],
            },
            [],
        ),
        ({"version": 1, "config": [{"type": "nameserver", "address": ["192.0.2.53"]}]}, []),
        (None, []),
    ],
)
def test_name_matched_interfaces(config: Any, names: List[str]) -> None:
    assert name_matched_interfaces(config) == names


def test_the_role_s_own_network_config_never_matches_by_name() -> None:
    config = domain_interfaces([STATIC, dict(DHCP, name="lan")], UUID)["network_config"]
    assert name_matched_interfaces(config) == []


# ------------------------------------------------------ the in-guest agent's renderers


def _guest(tmp_path: Any, kind: str) -> str:
    """A guest whose udev named the vifs enX0 and enX1 (trixie), not eth0."""
    root = make_root(tmp_path, kind, owners=False)
    write(f"{root}/sys/class/net/enX0/address", xen_mac(UUID, 0) + "\n")
    write(f"{root}/sys/class/net/enX1/address", xen_mac(UUID, 1) + "\n")
    return root


def _planned(root: str, config: Dict[str, Any]) -> Dict[str, str]:
    step = network_step.plan(root, config)
    return {os.path.basename(c.shown): c.data.decode() for c in step.files if c.data}


def test_the_agent_renders_networkd_files_that_match_the_vifs_macs(tmp_path: Any) -> None:
    config = domain_interfaces([STATIC, DHCP], UUID)["network_config"]
    files = _planned(_guest(tmp_path, "networkd"), config)
    assert sorted(files) == ["10-xenchannel-nic0.network", "10-xenchannel-nic1.network"]
    static, dhcp = files["10-xenchannel-nic0.network"], files["10-xenchannel-nic1.network"]
    assert f"[Match]\nMACAddress={xen_mac(UUID, 0)}\n" in static and "Name=" not in static
    assert "Address=192.0.2.11/24\nAddress=2001:db8::11/64\n" in static
    assert "Gateway=192.0.2.1\nGateway=2001:db8::1\nDNS=192.0.2.53\nDomains=example.com" in static
    assert f"[Match]\nMACAddress={xen_mac(UUID, 1)}\n" in dhcp and "DHCP=ipv4" in dhcp


def test_the_agent_finds_the_vifs_by_mac_for_ifupdown(tmp_path: Any) -> None:
    config = domain_interfaces([STATIC, DHCP], UUID)["network_config"]
    text = _planned(_guest(tmp_path, "ifupdown"), config)["xenchannel"]
    assert "auto enX0\niface enX0 inet static\n    address 192.0.2.11/24\n" in text, text
    assert "    gateway 192.0.2.1\n" in text and "iface enX0 inet6 static" in text, text
    assert "auto enX1\niface enX1 inet dhcp\n" in text, text
    assert "eth0" not in text


# ------------------------------------------------------- MACs of the host's other VMs


def test_foreign_macs_names_the_other_vm_and_skips_this_one_s_own_copies() -> None:
    others = [
        (
            "/etc/xen/web1.cfg.bak",
            XlConfig.parse('name = "web1"\nvif = [ "mac=00:16:3e:00:00:01" ]\n'),
        ),
        (
            "/etc/xen/db1.cfg",
            XlConfig.parse('name = "db1"\nvif = [ "bridge=xenbr0,mac=00:16:3E:00:00:02" ]\n'),
        ),
        ("/etc/xen/old", XlConfig.parse('vif = [ "mac=00:16:3e:00:00:03" ]\n')),
    ]
    vifs = [
        "mac=00:16:3e:00:00:01",
        "mac=00:16:3e:00:00:02",
        "mac=00:16:3e:00:00:03",
        "bridge=xenbr0",
    ]
    assert foreign_macs(vifs, "web1", others) == [
        "vifs item 2 has mac 00:16:3e:00:00:02, which domain db1 already uses (/etc/xen/db1.cfg); "
        "give this vif another MAC.",
        "vifs item 3 has mac 00:16:3e:00:00:03, which domain /etc/xen/old already uses "
        "(/etc/xen/old); give this vif another MAC.",
    ]
