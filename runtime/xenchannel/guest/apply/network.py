"""The network step: cloud-init network-config v1 or v2 rendered for the guest's stack.

Which stack (first rule that holds, paths inside the root):

1. netplan installed (``/usr/sbin/netplan``) or configured (``/etc/netplan/*.yaml``):
   refused with a clear failure; netplan is not handled.
2. systemd-networkd enabled (``/etc/systemd/system/multi-user.target.wants/
   systemd-networkd.service`` exists): networkd.
3. ``/etc/network/interfaces`` exists and ``ifup`` is installed (``/sbin/ifup`` or
   ``/usr/sbin/ifup``): ifupdown.
4. systemd-networkd installed (``/lib/systemd/systemd-networkd`` or the ``/usr/lib`` one)
   and no ``/etc/network/interfaces``: networkd.
5. Otherwise: a failure naming what was looked for.

What is rendered: one ``/etc/systemd/network/10-xenchannel-<id>.network`` per interface
(networkd) or one ``/etc/network/interfaces.d/xenchannel`` (ifupdown).  Supported:
physical interfaces (v1 ``physical``, v2 ``ethernets``) matched by name (v2 also by
``macaddress``), static IPv4/IPv6 addresses, gateways and routes, DHCPv4/DHCPv6,
nameservers and search domains, MTU.  Anything else - bonds, bridges, VLANs, Wi-Fi,
renaming, unknown keys - is refused with a sentence naming it: a partial network
configuration is worse than none.  Every value written into a file is validated first,
so nothing from the bundle can inject a line.

Standard library only; runs on Python 3.6 to 3.13.
"""

import glob
import ipaddress
import os
import re
import time
from typing import Any, Dict, List, Optional, Set, Tuple, Union

from xenchannel.protocol import BundleError, network_config_version

from .files import ApplyError, DirChange, FileChange, Step, under

NETWORKD_DIR = "/etc/systemd/network"
NETWORKD_PREFIX = "10-xenchannel-"
IFUPDOWN_DIR = "/etc/network/interfaces.d"
IFUPDOWN_FILE = IFUPDOWN_DIR + "/xenchannel"
HEADER = (
    "# Written by the xenchannel guest agent from this instance's network-config.\n"
    "# Replaced or removed whenever a new instance is applied: do not edit.\n"
)

IPInterface = Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

# ifupdown names interfaces; one matched by MAC is named only once udev is done with it,
# since udev renames a new NIC (eth0 -> enX0) while it processes the device: udevd runs
# where its control socket is, and it has processed a device once its database entry
# n<ifindex> exists.  Bounded: a NIC that is still missing or unprocessed after this is
# named as it is then (or reported missing).
UDEV_CONTROL = "/run/udev/control"
UDEV_DATA = "/run/udev/data"
NAME_WAIT = 30.0
_IFNAME = re.compile(r"^[A-Za-z0-9_.:-]{1,15}\Z")  # a kernel interface name (IFNAMSIZ)
_PATTERN = re.compile(r"^[A-Za-z0-9_.:*?\[\]-]{1,64}\Z")  # networkd Name= globs
_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,64}\Z")  # v2 ids, used in file names
_MAC = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}\Z")
_DOMAIN = re.compile(
    r"^(?=.{1,253}\Z)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*\.?\Z"
)

_V2_SECTIONS = ("bonds", "bridges", "vlans", "wifis")
_V2_KEYS = {
    "match",
    "dhcp4",
    "dhcp6",
    "addresses",
    "gateway4",
    "gateway6",
    "routes",
    "nameservers",
    "mtu",
    "optional",
    "renderer",
}
_V1_UNSUPPORTED = ("bond", "bridge", "vlan", "infiniband")


class Route:
    def __init__(self, to: Optional[IPNetwork], via: IPAddress, metric: Optional[int]) -> None:
        self.to = to  # None: the default route
        self.via = via
        self.metric = metric

    @property
    def version(self) -> int:
        return self.via.version


class Interface:
    """One interface's configuration, whichever version it was written in."""

    def __init__(self, key: str, name: Optional[str], mac: Optional[str] = None) -> None:
        self.key = key  # names the networkd file
        self.name = name  # a kernel name, or a networkd glob (v2 match.name)
        self.mac = mac
        self.dhcp4 = False
        self.dhcp6 = False
        self.addresses: List[IPInterface] = []
        self.gateways: Dict[int, IPAddress] = {}  # IP version -> gateway
        self.routes: List[Route] = []
        self.nameservers: List[IPAddress] = []
        self.search: List[str] = []
        self.mtu: Optional[int] = None
        self.optional = False

    def where(self) -> str:
        return f"interface {self.key}"

    def set_gateway(self, gateway: IPAddress) -> None:
        old = self.gateways.get(gateway.version)
        if old is not None and old != gateway:
            raise ApplyError(
                f"network: {self.where()} has two IPv{gateway.version} gateways ({old} and "
                f"{gateway}); keep one"
            )
        self.gateways[gateway.version] = gateway

    def families(self) -> Set[int]:
        found: Set[int] = {a.version for a in self.addresses}
        if self.dhcp4:
            found.add(4)
        if self.dhcp6:
            found.add(6)
        return found


# --------------------------------------------------------------------------- values


def _fail(message: str) -> ApplyError:
    return ApplyError("network: " + message)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(f"{where} must be true or false")
    return value


def _mtu(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 68 <= value <= 65535:
        raise _fail(f"{where} mtu must be a number from 68 to 65535")
    return value


def _metric(value: Any, where: str) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 4294967295:
        raise _fail(f"{where} has an invalid route metric {value!r}")
    return value


def _address(value: Any, where: str) -> IPAddress:
    if not isinstance(value, str):
        raise _fail(f"{where} has an address that is not a string")
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise _fail(f"{where} has an invalid IP address {value!r}") from None


def _interface_address(value: Any, where: str, netmask: Any = None) -> IPInterface:
    if not isinstance(value, str) or (netmask is not None and not isinstance(netmask, (str, int))):
        raise _fail(f"{where} has an address that is not a string")
    text = value if netmask is None or "/" in value else f"{value}/{netmask}"
    if "/" not in text:
        raise _fail(f"{where} address {value!r} has no prefix length; write it as address/prefix")
    try:
        return ipaddress.ip_interface(text)
    except ValueError:
        raise _fail(f"{where} has an invalid address {text!r}") from None


def _network(value: Any, where: str, netmask: Any = None) -> Optional[IPNetwork]:
    """A route destination; None for the default route."""
    if value in ("default", "0.0.0.0/0", "::/0"):
        return None
    if not isinstance(value, str):
        raise _fail(f"{where} has a route destination that is not a string")
    text = value if netmask is None or "/" in value else f"{value}/{netmask}"
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise _fail(f"{where} has an invalid route destination {text!r}") from None
    return None if network.prefixlen == 0 else network


def _strings(value: Any, where: str) -> List[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return value.split() if " " in value else [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise _fail(f"{where} must be a string or a list of strings")


def _domains(value: Any, where: str) -> List[str]:
    domains = _strings(value, where)
    for domain in domains:
        if not _DOMAIN.match(domain):
            raise _fail(f"{where} has an invalid search domain {domain!r}")
    return domains


def _ifname(value: Any, where: str, pattern: bool = False) -> str:
    regex = _PATTERN if pattern else _IFNAME
    if not isinstance(value, str) or not regex.match(value):
        raise _fail(f"{where} has an invalid interface name {value!r}")
    return value


def _check_keys(item: Dict[str, Any], allowed: Set[str], where: str) -> None:
    unknown = sorted(set(item) - allowed)
    if unknown:
        raise _fail(
            "{} uses {}, which the agent does not render; use cloud-init for it".format(
                where, ", ".join(repr(k) for k in unknown)
            )
        )


def _add_route(iface: Interface, route: Route) -> None:
    """A default route without a metric is the interface's gateway; others are routes."""
    if route.to is None and route.metric is None:
        iface.set_gateway(route.via)
        return
    if route.to is not None and route.to.version != route.via.version:
        raise _fail(f"{iface.where()} has a route to {route.to} via {route.via}: mixed families")
    iface.routes.append(route)


# --------------------------------------------------------------------------- v1


def _from_v1(config: Dict[str, Any]) -> List[Interface]:
    items = config.get("config")
    if not isinstance(items, list):
        raise _fail("version 1 needs a 'config' list")
    interfaces: Dict[str, Interface] = {}
    global_dns: List[Tuple[Optional[str], List[IPAddress], List[str]]] = []
    global_routes: List[Tuple[Route, str]] = []
    for n, item in enumerate(items):
        where = f"version 1 config entry {n + 1}"
        if not isinstance(item, dict):
            raise _fail(f"{where} is not a mapping")
        kind = item.get("type")
        if kind == "physical":
            _check_keys(item, {"type", "name", "mac_address", "mtu", "subnets"}, where)
            name = _ifname(item.get("name"), where)
            iface = Interface(name, name)
            if item.get("mtu") is not None:
                iface.mtu = _mtu(item["mtu"], where)
            subnets = item.get("subnets") or []
            if not isinstance(subnets, list):
                raise _fail(f"{where} subnets must be a list")
            for m, subnet in enumerate(subnets):
                _v1_subnet(iface, subnet, f"{where} ({name}) subnet {m + 1}")
            interfaces[name] = iface
        elif kind == "nameserver":
            _check_keys(item, {"type", "address", "search", "interface"}, where)
            addresses = [_address(a, where) for a in _strings(item.get("address"), where)]
            target = item.get("interface")
            global_dns.append(
                (
                    None if target is None else _ifname(target, where),
                    addresses,
                    _domains(item.get("search"), where),
                )
            )
        elif kind == "route":
            _check_keys(
                item, {"type", "destination", "network", "netmask", "gateway", "metric"}, where
            )
            destination = item.get("destination", item.get("network"))
            route = Route(
                _network(destination, where, item.get("netmask")),
                _address(item.get("gateway"), where),
                _metric(item.get("metric"), where),
            )
            global_routes.append((route, where))
        elif kind in _V1_UNSUPPORTED:
            raise _fail(
                f"{where} is a {kind}; the agent renders physical interfaces only - use "
                f"cloud-init for a {kind}"
            )
        else:
            raise _fail(f"{where} has type {kind!r}, which the agent does not render")
    ordered = list(interfaces.values())
    for route, where in global_routes:
        owner = [i for i in ordered if any(route.via in a.network for a in i.addresses)]
        if not owner:
            raise _fail(
                f"{where}: no interface has an address on the network of gateway {route.via}"
            )
        _add_route(owner[0], route)
    for target, addresses, search in global_dns:
        chosen = ordered if target is None else [i for i in ordered if i.name == target]
        if not chosen:
            raise _fail(f"nameservers name interface {target!r}, which is not configured")
        for iface in chosen:
            iface.nameservers.extend(a for a in addresses if a not in iface.nameservers)
            iface.search.extend(s for s in search if s not in iface.search)
    return ordered


def _v1_subnet(iface: Interface, subnet: Any, where: str) -> None:
    if not isinstance(subnet, dict):
        raise _fail(f"{where} is not a mapping")
    kind = subnet.get("type")
    if kind in ("dhcp", "dhcp4"):
        _check_keys(subnet, {"type"}, where)
        iface.dhcp4 = True
        return
    if kind == "dhcp6":
        _check_keys(subnet, {"type"}, where)
        iface.dhcp6 = True
        return
    if kind not in ("static", "static6"):
        raise _fail(f"{where} has type {kind!r}; supported: static, static6, dhcp, dhcp4, dhcp6")
    _check_keys(
        subnet,
        {"type", "address", "netmask", "gateway", "dns_nameservers", "dns_search", "routes"},
        where,
    )
    address = _interface_address(subnet.get("address"), where, subnet.get("netmask"))
    iface.addresses.append(address)
    if subnet.get("gateway") is not None:
        gateway = _address(subnet["gateway"], where)
        if gateway.version != address.version:
            raise _fail(f"{where} has gateway {gateway} for address {address}: mixed families")
        iface.set_gateway(gateway)
    for value in _strings(subnet.get("dns_nameservers"), where):
        ns = _address(value, where)
        if ns not in iface.nameservers:
            iface.nameservers.append(ns)
    iface.search.extend(
        d for d in _domains(subnet.get("dns_search"), where) if d not in iface.search
    )
    routes = subnet.get("routes") or []
    if not isinstance(routes, list):
        raise _fail(f"{where} routes must be a list")
    for route in routes:
        if not isinstance(route, dict):
            raise _fail(f"{where} has a route that is not a mapping")
        _check_keys(route, {"network", "destination", "netmask", "gateway", "metric"}, where)
        _add_route(
            iface,
            Route(
                _network(
                    route.get("network", route.get("destination")), where, route.get("netmask")
                ),
                _address(route.get("gateway"), where),
                _metric(route.get("metric"), where),
            ),
        )


# --------------------------------------------------------------------------- v2


def _from_v2(config: Dict[str, Any]) -> List[Interface]:
    for section in _V2_SECTIONS:
        if config.get(section):
            names = ", ".join(sorted(str(k) for k in config[section]))
            raise _fail(
                f"version 2 defines {section} ({names}); the agent renders ethernets only - "
                f"use cloud-init for {section}"
            )
    ethernets = config.get("ethernets") or {}
    if not isinstance(ethernets, dict):
        raise _fail("version 2 ethernets must be a mapping")
    result: List[Interface] = []
    for key, item in ethernets.items():
        where = f"ethernet {key!r}"
        if not isinstance(key, str) or not _KEY.match(key):
            raise _fail(f"{where} has a name that cannot name a file; use letters, digits, .-_:")
        if not isinstance(item, dict):
            raise _fail(f"{where} is not a mapping")
        _check_keys(item, _V2_KEYS, where)
        match = item.get("match")
        if match is None:
            iface = Interface(key, _ifname(key, where))
        else:
            if not isinstance(match, dict) or not match:
                raise _fail(f"{where} match must be a mapping with name or macaddress")
            _check_keys(match, {"name", "macaddress"}, where + " match")
            name = match.get("name")
            mac = match.get("macaddress")
            if mac is not None and (not isinstance(mac, str) or not _MAC.match(mac)):
                raise _fail(f"{where} has an invalid macaddress {mac!r}")
            iface = Interface(
                key,
                None if name is None else _ifname(name, where, pattern=True),
                None if mac is None else mac.lower(),
            )
        iface.dhcp4 = _bool(item.get("dhcp4", False), where + " dhcp4")
        iface.dhcp6 = _bool(item.get("dhcp6", False), where + " dhcp6")
        iface.optional = _bool(item.get("optional", False), where + " optional")
        if item.get("mtu") is not None:
            iface.mtu = _mtu(item["mtu"], where)
        addresses = item.get("addresses") or []
        if not isinstance(addresses, list):
            raise _fail(f"{where} addresses must be a list")
        iface.addresses = [_interface_address(a, where) for a in addresses]
        for family in ("gateway4", "gateway6"):
            if item.get(family) is not None:
                gateway = _address(item[family], where)
                if gateway.version != int(family[-1]):
                    raise _fail(f"{where} {family} {gateway} is not an IPv{family[-1]} address")
                iface.set_gateway(gateway)
        routes = item.get("routes") or []
        if not isinstance(routes, list):
            raise _fail(f"{where} routes must be a list")
        for route in routes:
            if not isinstance(route, dict):
                raise _fail(f"{where} has a route that is not a mapping")
            _check_keys(route, {"to", "via", "metric"}, where + " route")
            _add_route(
                iface,
                Route(
                    _network(route.get("to"), where),
                    _address(route.get("via"), where),
                    _metric(route.get("metric"), where),
                ),
            )
        nameservers = item.get("nameservers") or {}
        if not isinstance(nameservers, dict):
            raise _fail(f"{where} nameservers must be a mapping")
        _check_keys(nameservers, {"addresses", "search"}, where + " nameservers")
        iface.nameservers = [
            _address(a, where) for a in _strings(nameservers.get("addresses"), where)
        ]
        iface.search = _domains(nameservers.get("search"), where)
        result.append(iface)
    return result


def parse(network_config: Dict[str, Any]) -> List[Interface]:
    """The interfaces of a v1 or v2 network-config, bare or under ``network``."""
    config = network_config
    if set(config) == {"network"} and isinstance(config["network"], dict):
        config = config["network"]
    try:
        version = network_config_version(config)
    except BundleError as exc:
        raise _fail(str(exc)) from None
    if version == 1:
        return _from_v1(config)
    return _from_v2(config)


# --------------------------------------------------------------------------- stacks


def detect_stack(root: str) -> str:
    """'networkd' or 'ifupdown' (see the module docstring for the rule)."""

    def has(path: str) -> bool:
        return os.path.lexists(under(root, path))

    if has("/usr/sbin/netplan") or glob.glob(under(root, "/etc/netplan") + "/*.yaml"):
        raise _fail(
            "this guest uses netplan, which the agent does not render; use cloud-init, or "
            "remove netplan so systemd-networkd or ifupdown is used"
        )
    if has("/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"):
        return "networkd"
    interfaces = has("/etc/network/interfaces")
    if interfaces and (has("/sbin/ifup") or has("/usr/sbin/ifup")):
        return "ifupdown"
    if not interfaces and (
        has("/lib/systemd/systemd-networkd") or has("/usr/lib/systemd/systemd-networkd")
    ):
        return "networkd"
    raise _fail(
        "no supported network stack found: neither systemd-networkd (enabled, or installed "
        "without /etc/network/interfaces) nor ifupdown (/etc/network/interfaces and ifup)"
    )


def render_networkd(interfaces: List[Interface]) -> Dict[str, str]:
    """File name -> content, one .network file per interface."""
    files: Dict[str, str] = {}
    for iface in interfaces:
        lines = [HEADER.rstrip("\n"), "[Match]"]
        if iface.name is not None:
            lines.append(f"Name={iface.name}")
        if iface.mac is not None:
            lines.append(f"MACAddress={iface.mac}")
        link: List[str] = []
        if iface.mtu is not None:
            link.append(f"MTUBytes={iface.mtu}")
        if iface.optional:
            link.append("RequiredForOnline=no")
        if link:
            lines += ["", "[Link]", *link]
        lines += ["", "[Network]"]
        dhcp = {(True, True): "yes", (True, False): "ipv4", (False, True): "ipv6"}.get(
            (iface.dhcp4, iface.dhcp6)
        )
        if dhcp:
            lines.append(f"DHCP={dhcp}")
        lines += [f"Address={a}" for a in iface.addresses]
        lines += [f"Gateway={iface.gateways[v]}" for v in sorted(iface.gateways)]
        lines += [f"DNS={a}" for a in iface.nameservers]
        if iface.search:
            lines.append("Domains=" + " ".join(iface.search))
        for route in iface.routes:
            lines += ["", "[Route]"]
            if route.to is not None:
                lines.append(f"Destination={route.to}")
            lines.append(f"Gateway={route.via}")
            if route.metric is not None:
                lines.append(f"Metric={route.metric}")
        files[f"{NETWORKD_PREFIX}{iface.key}.network"] = "\n".join(lines) + "\n"
    return files


def _mac_names(root: str) -> Dict[str, str]:
    """MAC address -> interface name, from ``<root>/sys/class/net/*/address``."""
    found: Dict[str, str] = {}
    for path in sorted(glob.glob(under(root, "/sys/class/net") + "/*/address")):
        try:
            with open(path) as handle:
                mac = handle.read().strip().lower()
        except OSError:
            continue
        found.setdefault(mac, os.path.basename(os.path.dirname(path)))
    return found


def _udev_done(root: str, name: str) -> bool:
    """Whether udev has processed net device ``name`` (so its rename, if any, is done);
    True where no udevd runs in ``root``."""
    if not os.path.exists(under(root, UDEV_CONTROL)):
        return True
    try:
        with open(under(root, f"/sys/class/net/{name}/ifindex")) as handle:
            ifindex = int(handle.read().strip())
    except (OSError, ValueError):
        return False  # renamed or gone meanwhile: read the names again
    return os.path.exists(under(root, f"{UDEV_DATA}/n{ifindex}"))


def _settled_mac_names(root: str, wanted: List[str], timeout: float = NAME_WAIT) -> Dict[str, str]:
    """``_mac_names`` once every MAC in ``wanted`` is there and udev is done with it, or
    as it is at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        macs = _mac_names(root)
        pending = [m for m in wanted if m not in macs or not _udev_done(root, macs[m])]
        if not pending or time.monotonic() >= deadline:
            return macs
        time.sleep(0.1)


def _ifupdown_names(root: str, interfaces: List[Interface]) -> List[str]:
    """The kernel name of each interface: ifupdown knows no patterns and no MACs."""
    macs: Optional[Dict[str, str]] = None
    names: List[str] = []
    wanted = [i.mac for i in interfaces if i.name is None and i.mac is not None]
    for iface in interfaces:
        if iface.name is not None:
            if not _IFNAME.match(iface.name):
                raise _fail(
                    f"{iface.where()} matches the pattern {iface.name!r}; ifupdown needs one "
                    "interface name"
                )
            names.append(iface.name)
            continue
        if macs is None:
            macs = _settled_mac_names(root, wanted)
        name = macs.get(iface.mac or "")
        if name is None:
            raise _fail(
                f"{iface.where()} matches macaddress {iface.mac}, which no interface in "
                f"/sys/class/net has (after {NAME_WAIT:g} s)"
            )
        names.append(name)
    return names


def render_ifupdown(interfaces: List[Interface], names: List[str]) -> str:
    out = [HEADER.rstrip("\n")]
    for iface, name in zip(interfaces, names):
        out.append("")
        out.append(("allow-hotplug " if iface.optional else "auto ") + name)
        first = True
        for family, dhcp, inet in ((4, iface.dhcp4, "inet"), (6, iface.dhcp6, "inet6")):
            addresses = [a for a in iface.addresses if a.version == family]
            if dhcp and addresses:
                raise _fail(
                    f"{iface.where()} combines DHCP and static IPv{family} addresses, which "
                    "ifupdown cannot express"
                )
            stanzas: List[Optional[IPInterface]] = [None] if dhcp else list(addresses)
            for index, address in enumerate(stanzas):
                method = "dhcp" if address is None else "static"
                out.append(f"iface {name} {inet} {method}")
                if address is not None:
                    out.append(f"    address {address}")
                if index == 0 and family in iface.gateways:
                    out.append(f"    gateway {iface.gateways[family]}")
                if first:
                    first = False
                    if iface.mtu is not None:
                        out.append(f"    pre-up ip link set dev {name} mtu {iface.mtu}")
                    if iface.nameservers:
                        out.append(
                            "    dns-nameservers " + " ".join(str(a) for a in iface.nameservers)
                        )
                    if iface.search:
                        out.append("    dns-search " + " ".join(iface.search))
                if index == 0:
                    for route in (r for r in iface.routes if r.version == family):
                        target = "default" if route.to is None else str(route.to)
                        metric = "" if route.metric is None else f" metric {route.metric}"
                        out.append(
                            f"    up ip -{family} route add {target} via {route.via}{metric} "
                            f"dev {name}"
                        )
        if first:
            raise _fail(f"{iface.where()} has neither addresses nor DHCP")
    return "\n".join(out) + "\n"


_SOURCE = re.compile(
    r"^\s*(source\s+(/etc/network/)?interfaces\.d/(\*|xenchannel)|"
    r"source-directory\s+(/etc/network/)?interfaces\.d/?)\s*$"
)
_IFACE = re.compile(r"^\s*iface\s+(\S+)\s+(inet6?)\s")


def _check_ifupdown(root: str, interfaces: List[Interface], names: List[str]) -> None:
    """Refuse when ifupdown would not read our file, or would see a second stanza."""
    main = under(root, "/etc/network/interfaces")
    with open(main, encoding="utf-8", errors="replace") as handle:
        main_lines = handle.read().splitlines()
    if not any(_SOURCE.match(line) for line in main_lines):
        raise _fail(
            "/etc/network/interfaces does not read /etc/network/interfaces.d; add the line "
            "'source /etc/network/interfaces.d/*'"
        )
    wanted: Dict[Tuple[str, str], str] = {}
    for iface, name in zip(interfaces, names):
        for family in iface.families():
            wanted[(name, "inet" if family == 4 else "inet6")] = iface.key
    others = [("/etc/network/interfaces", main_lines)]
    for path in sorted(glob.glob(under(root, IFUPDOWN_DIR) + "/*")):
        if os.path.basename(path) == "xenchannel" or not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as handle:
            others.append((IFUPDOWN_DIR + "/" + os.path.basename(path), handle.read().splitlines()))
    for shown, lines in others:
        for line in lines:
            found = _IFACE.match(line)
            if found and (found.group(1), found.group(2)) in wanted:
                raise _fail(
                    f"{shown} already configures {found.group(1)} ({found.group(2)}); remove "
                    "that stanza from the template so the instance's configuration applies"
                )


# --------------------------------------------------------------------------- the step


def plan(root: str, network_config: Optional[Dict[str, Any]]) -> Step:
    """The network step.  Without network-config it only removes files of an earlier
    instance: what the agent rendered always mirrors the current instance."""
    step = Step("network")
    networkd_dir = under(root, NETWORKD_DIR)
    ifupdown_file = under(root, IFUPDOWN_FILE)
    desired: Dict[str, str] = {}  # guest path -> content
    stack: Optional[str] = None
    interfaces: List[Interface] = []
    if network_config is not None:
        interfaces = parse(network_config)
        stack = detect_stack(root)
        if stack == "networkd":
            for name, content in render_networkd(interfaces).items():
                desired[NETWORKD_DIR + "/" + name] = content
            step.dirs.append(DirChange(networkd_dir, NETWORKD_DIR, 0o755))
        else:
            names = _ifupdown_names(root, interfaces)
            _check_ifupdown(root, interfaces, names)
            desired[IFUPDOWN_FILE] = render_ifupdown(interfaces, names)
            step.dirs.append(DirChange(under(root, IFUPDOWN_DIR), IFUPDOWN_DIR, 0o755))
    for guest_path, content in desired.items():
        step.files.append(
            FileChange(
                under(root, guest_path),
                content.encode("utf-8"),
                guest_path,
                mode=0o644,
                uid=0,
                gid=0,
            )
        )
    stale = sorted(glob.glob(os.path.join(networkd_dir, NETWORKD_PREFIX + "*.network")))
    if os.path.lexists(ifupdown_file):
        stale.append(ifupdown_file)
    removed: List[str] = []
    for path in stale:
        guest_path = "/" + os.path.relpath(path, root).lstrip("/")
        if guest_path not in desired:
            step.files.append(FileChange(path, None, guest_path))
            removed.append(guest_path)
    if stack is None:
        step.summary = "network: no network-config" + (
            f"; removing {len(removed)} file(s) of an earlier instance" if removed else ""
        )
    else:
        step.summary = "network: {} for {} interface(s): {}".format(
            stack, len(interfaces), ", ".join(sorted(desired)) or "nothing to write"
        )
    step.record = {"stack": stack, "files": sorted(desired), "removed": removed}
    return step
