# Copyright (c) xenchannel contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A VM's network interfaces as the domain role takes them: vifs and network-config.

One list of interfaces (bridge, optional MAC and name, static addresses with gateways
and DNS, or DHCP) gives both halves that must agree: the xl ``vif`` items and the
cloud-init network-config (version 2) that finds each of those NICs by its MAC. Matching
by MAC, not by name, is the point: the name a guest gives a NIC depends on its udev
(a Debian trixie clone calls its first vif ``enX0``, an older one ``eth0``), its MAC is
what dom0 wrote.

A vif without a MAC gets one from ``xen_mac``: Xen's OUI 00:16:3e and three bytes of the
SHA-256 of the domain's UUID and the vif's index, so a rerun, a rebuild of the same VM and
the config file all agree, and two VMs differ unless their hashes meet (the fourth byte
keeps to 00-7f, the half of Xen's space xl itself draws from, so about 8 million values).

Pure functions, no I/O: the interfaces filter plugin calls them on the controller.
"""

import hashlib
import ipaddress
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ansible_collections.xenchannel.provision.plugins.module_utils.domain_config import (
    DomainConfigError,
    normalise_mac,
    normalise_uuid,
)

__all__ = [
    "INTERFACE_KEYS",
    "XEN_OUI",
    "domain_interfaces",
    "name_matched_interfaces",
    "xen_mac",
]

XEN_OUI = "00:16:3e"
INTERFACE_KEYS = (
    "bridge",
    "mac",
    "name",
    "dhcp4",
    "dhcp6",
    "addresses",
    "gateway4",
    "gateway6",
    "nameservers",
    "search",
)
# A kernel interface name (IFNAMSIZ) for set-name; a bridge name on dom0 likewise.
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}\Z")
_DOMAIN = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*\.?\Z"
)


def xen_mac(uuid: Any, index: Any) -> str:
    """The MAC of vif number ``index`` (0 first) of the domain with ``uuid``.

    Unicast, in Xen's OUI, the fourth byte below 0x80 as libxl's own random MACs; the same
    for the same UUID (any case) and index. ValueError for a bad UUID or index.
    """
    try:
        text = normalise_uuid(uuid)
    except DomainConfigError as exc:
        raise ValueError(str(exc)) from None
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"the vif index {index!r} is not a whole number from 0 up")
    digest = hashlib.sha256(f"xenchannel-vif:{text}:{index}".encode()).digest()
    return f"{XEN_OUI}:{digest[0] & 0x7F:02x}:{digest[1]:02x}:{digest[2]:02x}"


def _strings(value: Any) -> Optional[List[str]]:
    """A list of strings, or None when ``value`` is not one (a lone string is one item)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def _ifname(
    item: Mapping[str, Any], key: str, where: str, fix: str, problems: List[str]
) -> Optional[str]:
    """item[key] when it is an interface name; None when unset or, with a problem, not one."""
    value = item.get(key)
    if value is None or (isinstance(value, str) and _IFNAME.match(value)):
        return value
    problems.append(
        f"{where} has {key} {value!r}; {fix} (1 to 15 letters, digits, '_', '.' and '-')."
    )
    return None


def _interface(
    item: Any, index: int, uuid: str, where: str
) -> Tuple[Optional[Dict[str, str]], Optional[Tuple[str, Dict[str, Any]]], List[str]]:
    """(vif dict, (ethernet id, ethernet), problems) for one interface."""
    if not isinstance(item, Mapping):
        kind = "null" if item is None else type(item).__name__
        return (
            None,
            None,
            [f"{where} is {kind}; give a mapping such as {{bridge: xenbr0, dhcp4: true}}."],
        )
    problems: List[str] = []
    for key in item:
        if key not in INTERFACE_KEYS:
            problems.append(
                f"{where} has an unknown key {str(key)!r}; the known keys are "
                f"{', '.join(INTERFACE_KEYS)}."
            )
    vif: Dict[str, str] = {}
    bridge = _ifname(item, "bridge", where, "give the name of a bridge on dom0", problems)
    if bridge is not None:
        vif["bridge"] = bridge
    if item.get("mac") is None:
        mac = xen_mac(uuid, index)
    else:
        try:
            mac = normalise_mac(item["mac"], where)
        except DomainConfigError as exc:
            problems.extend(exc.problems)
            mac = ""
    ethernet: Dict[str, Any] = {"match": {"macaddress": mac}}
    name = _ifname(
        item,
        "name",
        where,
        "leave it out to keep the guest's own, or give the interface name the guest should use",
        problems,
    )
    if name is not None:
        ethernet["set-name"] = name
    for key in ("dhcp4", "dhcp6"):
        value = item.get(key, False)
        if not isinstance(value, bool):
            problems.append(f"{where} has {key} {value!r}; write true or false.")
        elif value:
            ethernet[key] = True
    addresses = _strings(item.get("addresses", []))
    families = set()
    if addresses is None:
        problems.append(f"{where} addresses must be a list of addresses with their prefix length.")
        addresses = []
    for text in addresses:
        try:
            if "/" not in text:
                raise ValueError
            families.add(ipaddress.ip_interface(text).version)
        except ValueError:
            problems.append(
                f"{where} has address {text!r}; write an IPv4 or IPv6 address with its "
                "prefix length, such as 192.0.2.10/24 or 2001:db8::10/64."
            )
    if addresses:
        ethernet["addresses"] = addresses
    routes = []
    # A default route, as the e2e bundles write it: every cloud-init renderer and the
    # in-guest agent read "0.0.0.0/0" and "::/0" (gateway4/gateway6 are deprecated).
    for key, version, default in (("gateway4", 4, "0.0.0.0/0"), ("gateway6", 6, "::/0")):
        value = item.get(key)
        if value is None:
            continue
        try:
            gateway = ipaddress.ip_address(value) if isinstance(value, str) else None
        except ValueError:
            gateway = None
        if gateway is None or gateway.version != version:
            problems.append(f"{where} has {key} {value!r}; give an IPv{version} address.")
        elif version not in families:
            problems.append(
                f"{where} has {key} {value} but no static IPv{version} address; add one to "
                "addresses, or drop the gateway (DHCP brings its own)."
            )
        else:
            routes.append({"to": default, "via": str(gateway)})
    if routes:
        ethernet["routes"] = routes
    nameservers: Dict[str, List[str]] = {}
    servers = _strings(item.get("nameservers", []))
    for text in servers or []:
        try:
            ipaddress.ip_address(text)
        except ValueError:
            servers = None
    if servers is None:
        problems.append(f"{where} nameservers must be a list of IP addresses.")
    elif servers:
        nameservers["addresses"] = servers
    search = _strings(item.get("search", []))
    if search is None or not all(_DOMAIN.match(s) for s in search):
        problems.append(f"{where} search must be a list of domain names.")
    elif search:
        nameservers["search"] = search
    if nameservers:
        ethernet["nameservers"] = nameservers
    if not (addresses or ethernet.get("dhcp4") or ethernet.get("dhcp6")):
        problems.append(
            f"{where} has no addresses and neither dhcp4 nor dhcp6; give static addresses, "
            "or set dhcp4 (or dhcp6) to true."
        )
    if problems:
        return None, None, problems
    # mac first, as xl_domain_config writes it: it is what an admin looks for.
    return {"mac": mac, **vif}, (name or f"nic{index}", ethernet), []


def domain_interfaces(interfaces: Any, uuid: Any, name: str = "interfaces") -> Dict[str, Any]:
    """{"vifs": [...], "network_config": {...}, "errors": [...]} for a VM's interfaces.

    The vifs are dicts for xl_domain_config's vifs option, in order (vif N is DEVID N);
    the network-config is version 2 with one ethernet per vif matched by its MAC, named
    by ``set-name`` only where the interface gives a name. With any error, vifs and
    network_config are empty and errors holds one sentence per problem.
    """
    empty: Dict[str, Any] = {"vifs": [], "network_config": {}, "errors": []}
    if not isinstance(interfaces, (list, tuple)) or not interfaces:
        empty["errors"] = [
            f"{name} must be a non-empty list of interfaces such as "
            "[{bridge: xenbr0, dhcp4: true}]."
        ]
        return empty
    try:
        text = normalise_uuid(uuid)
    except DomainConfigError as exc:
        empty["errors"] = list(exc.problems)
        return empty
    errors: List[str] = []
    vifs: List[Dict[str, str]] = []
    ethernets: Dict[str, Dict[str, Any]] = {}
    macs: Dict[str, int] = {}
    for index, item in enumerate(interfaces):
        where = f"{name}[{index}]"
        vif, ethernet, problems = _interface(item, index, text, where)
        errors.extend(problems)
        if vif is None or ethernet is None:
            continue
        key, body = ethernet
        if key in ethernets:
            errors.append(
                f"{where} has name {key!r}, which another interface has; give each its own."
            )
        if vif["mac"] in macs:
            errors.append(
                f"{where} has mac {vif['mac']}, which {name}[{macs[vif['mac']]}] has too; give "
                "each interface its own MAC (or leave mac out to derive one)."
            )
        macs.setdefault(vif["mac"], index)
        vifs.append(vif)
        ethernets[key] = body
    if errors:
        empty["errors"] = errors
        return empty
    return {"vifs": vifs, "network_config": {"version": 2, "ethernets": ethernets}, "errors": []}


def name_matched_interfaces(network_config: Any) -> List[str]:
    """The interfaces of a network-config that only a name finds (no MAC), in order.

    v2 ethernets without ``match`` (their id is the name) or whose match has no
    ``macaddress``; v1 ``physical`` entries without ``mac_address``. Anything else -
    not a mapping, another version, bonds and bridges - gives none: the store checks
    the rest.
    """
    if not isinstance(network_config, Mapping):
        return []
    found: List[str] = []
    if network_config.get("version") == 2:
        ethernets = network_config.get("ethernets")
        if isinstance(ethernets, Mapping):
            for key, item in ethernets.items():
                match = item.get("match") if isinstance(item, Mapping) else None
                if not isinstance(match, Mapping) or not match.get("macaddress"):
                    found.append(str(key))
    elif network_config.get("version") == 1:
        entries = network_config.get("config")
        if isinstance(entries, Sequence) and not isinstance(entries, str):
            for item in entries:
                if (
                    isinstance(item, Mapping)
                    and item.get("type") == "physical"
                    and not item.get("mac_address")
                ):
                    found.append(str(item.get("name")))
    return found
