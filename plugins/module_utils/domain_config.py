# Copyright (c) xenchannel contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Whole xl domain configs for clones: the rules for name, uuid, sizes, disks and vifs.

`build_config(doc, wanted, ...)` brings an `XlConfig` (a domain's existing file, its
template, or an empty document) to the settings a clone needs. It sets only the keys it
manages, each through `XlConfig.set`, so every other byte of the file stays as written.
Items of `disk`, `vif` and `channel` that already mean what is asked keep their text.

What is validated, and what is not (xl remains the judge of the rest):

* `uuid`: the 8-4-4-4-12 hex form libxl_uuid_from_string reads; written lower-case.
* `memory`, `maxmem`, `vcpus`: positive integers; `maxmem` not below `memory`.
* disks (xl-disk-configuration(5)): a spec is split as libxlutil's disk lexer does
  (comma-separated; `target=` takes the rest of the string; bare words fill the
  positional slots target, format, vdev, access; a deprecated `phy:`-style target prefix
  fills the format slot). Keys must be ones libxlutil knows, `access` r/ro/w/rw, a vdev
  must be present, vdevs unique, no quote characters or control characters. Formats,
  backends and whether the target exists are left to xl.
* vifs (xl-network-configuration(5)): `KEY=VALUE` pieces with keys xl knows, a `mac` of
  six hex pairs that is unicast, MACs unique across the list, no `"` `'` or control
  characters, no `,` or `=` inside a value.
* channels: `channel_spec.check_channels`, the same rules as xl_channel.

Standard library only; runs on Python 3.8+ (Ansible module_utils on dom0).
"""

import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ansible_collections.xenchannel.provision.plugins.module_utils.channel_spec import (
    ChannelSpecError,
    check_channels,
    format_spec,
    parse_spec,
)
from ansible_collections.xenchannel.provision.plugins.module_utils.domain_name import (
    domain_name_problem,
)
from ansible_collections.xenchannel.provision.plugins.module_utils.xl_config import (
    XlConfig,
    is_setting_name,
)

__all__ = [
    "MANAGED_KEYS",
    "DomainConfigError",
    "build_config",
    "check_template",
    "disk_spec",
    "disk_writable",
    "foreign_macs",
    "normalise_mac",
    "normalise_uuid",
    "parse_disk",
    "parse_vif",
    "vif_spec",
]

# The settings this module owns, in the order a config written from scratch has them;
# `settings` keys go between vcpus and disk.
MANAGED_KEYS = ("name", "uuid", "memory", "maxmem", "vcpus", "disk", "vif", "channel")

_UUID = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\Z")
_MAC = re.compile(r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}\Z")
_QUOTES_AND_CONTROLS = re.compile(r"[\"'\x00-\x1f\x7f]")

# libxlutil 4.17's disk lexer (tools/libs/util/libxlu_disk_l.l): named parameters and
# bare flags; anything else with '=' is "unknown parameter".
DISK_KEYS = (
    "target",
    "format",
    "vdev",
    "access",
    "devtype",
    "backendtype",
    "backend",
    "script",
    "specification",
    "colo-host",
    "colo-port",
    "colo-export",
    "active-disk",
    "hidden-disk",
)
DISK_FLAGS = ("cdrom", "discard", "no-discard", "direct-io-safe", "colo")
# The order of keys in a spec written from a dict; target last, because it takes the
# rest of the string (so it may hold ',' and '=').
DISK_DICT_KEYS = ("format", "vdev", "access", "devtype", "backendtype", "backend", "script")
DISK_ACCESS = ("r", "ro", "w", "rw")
DISK_FORMATS = ("raw", "qcow", "qcow2", "vhd", "qed", "empty")
# A target prefix that libxlutil reads as the (deprecated) format/backend, so the next
# bare word is the vdev: "phy:/dev/vg0/vm1,xvda,w".
_DEPRECATED_PREFIX = re.compile(
    r"(?:(?:raw|qcow2?|vhd|phy|file|tap2?|aio|tapdisk|iscsi|e?nbd|drbd):)+"
)
_POSITIONAL = ("target", "format", "vdev", "access")

# xl-network-configuration(5), Xen 4.17: the keys xl's parse_nic_config reads.
VIF_KEYS = (
    "mac",
    "bridge",
    "netdev",
    "ip",
    "type",
    "model",
    "vifname",
    "script",
    "backend",
    "rate",
    "devid",
    "mtu",
    "gatewaydev",
    "forwarddev",
    "accel",
)

Item = Union[str, Mapping[str, Any]]


class DomainConfigError(ValueError):
    """One or more problems, each a sentence naming the input and the fix."""

    def __init__(self, problems: Union[str, Sequence[str]]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__(" ".join(self.problems))


# -- single values -------------------------------------------------------------------


def normalise_uuid(value: Any) -> str:
    """`value` as the lower-case 8-4-4-4-12 form; DomainConfigError if it is not a UUID."""
    if not isinstance(value, str) or not _UUID.match(value):
        raise DomainConfigError(
            f"uuid {value!r} is not a UUID; give 32 hex digits as 8-4-4-4-12, e.g. "
            "'4a1f0c3e-7d2b-4c8e-9f61-0b5a2d7e3c19' (the lookup "
            "ansible.builtin.password or the to_uuid filter can make a stable one)"
        )
    return value.lower()


def normalise_mac(value: Any, where: str) -> str:
    """A unicast MAC as lower-case xx:xx:xx:xx:xx:xx; DomainConfigError otherwise."""
    if not isinstance(value, str) or not _MAC.match(value):
        raise DomainConfigError(
            f"{where} has mac={value!r}, which is not six hex pairs separated by ':'; write it "
            "like 00:16:3e:12:34:56"
        )
    mac = value.lower()
    if int(mac[:2], 16) & 1:
        raise DomainConfigError(
            f"{where} has mac={value}, a multicast address a NIC cannot have; clear the "
            "lowest bit of the first octet (Xen's own prefix is 00:16:3e)"
        )
    return mac


def _size(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DomainConfigError(f"{name} {value!r} is not a positive integer; give one")
    return value


def _plain_value(value: Any, where: str, key: str, commas: bool = False) -> List[str]:
    """Problems with one spec value: quotes, controls, blanks at the ends, ',' '='."""
    if not isinstance(value, str):
        return [f"{where} has {key} of type {type(value).__name__}; give it as a string."]
    if not value:
        return [f"{where} has an empty {key}; give it a value or leave it out."]
    if _QUOTES_AND_CONTROLS.search(value):
        return [
            f"{where} has {key}={value!r}, which contains a quote or a control character; "
            "remove it (the module quotes the whole spec itself)."
        ]
    if value.strip() != value:
        return [f"{where} has {key}={value!r} with blanks at its ends; remove them."]
    if not commas and ("," in value or "=" in value):
        return [
            f"{where} has {key}={value!r}, which contains ',' or '='; xl splits specs there, "
            "so remove them."
        ]
    return []


# -- disks ---------------------------------------------------------------------------


def parse_disk(spec: str, where: str = "disk") -> Dict[str, str]:
    """A disk spec's parameters by name, split as libxlutil's disk lexer splits it.

    Positional words are named (target, format, vdev, access); flags map to ""; a
    deprecated target prefix such as `phy:` is split off into "prefix". Raises
    DomainConfigError for what libxlutil refuses among the basics checked here.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise DomainConfigError(f"{where} {spec!r} is empty or not a string; give a disk spec.")
    if _QUOTES_AND_CONTROLS.search(spec):
        raise DomainConfigError(
            f"{where} {spec!r} contains a quote or a control character; remove it (the module "
            "quotes the whole spec itself)."
        )
    result: Dict[str, str] = {}
    rest = spec
    slot = 0
    while rest:
        rest = rest.lstrip(" \t")
        if rest.startswith("target="):
            value = rest[len("target=") :]
            # libxlutil's lexer drops one trailing comma (its STRIP(',')).
            value = value[:-1] if value.endswith(",") else value
            if "target" in result:
                raise DomainConfigError(f"{where} {spec!r} gives target twice; keep one.")
            result["target"] = value
            break
        piece, _comma, rest = rest.partition(",")
        if "=" in piece:
            key, value = piece.split("=", 1)
            if key not in DISK_KEYS:
                raise DomainConfigError(
                    f"{where} {spec!r} has the parameter {key!r}, which xl does not know; "
                    "see xl-disk-configuration(5) (" + ", ".join(DISK_KEYS) + ")."
                )
        elif piece in DISK_FLAGS:
            key, value = piece, ""
        else:
            if slot == 1 and "prefix" in result:
                slot = 2
            while slot < len(_POSITIONAL) and _POSITIONAL[slot] in result:
                slot += 1
            if slot == len(_POSITIONAL):
                raise DomainConfigError(
                    f"{where} {spec!r} has too many positional parameters ({piece!r}); "
                    "name them, e.g. vdev=xvdb."
                )
            key, value = _POSITIONAL[slot], piece
            slot += 1
            # An empty positional keeps the default but, as in libxlutil, fills its slot.
            prefix = _DEPRECATED_PREFIX.match(value)
            if prefix and key != "target":
                raise DomainConfigError(
                    f"{where} {spec!r} has the prefix {prefix.group(0)!r} on its {key} "
                    f"({piece!r}); such a prefix belongs on the target only, so move or drop it."
                )
            if prefix:
                # libxlutil takes the prefix as format/backend and the rest as target.
                result["prefix"] = prefix.group(0)
                value = value[prefix.end() :]
            if key == "vdev" and value.endswith(":cdrom"):
                # The deprecated "hdc:cdrom" form: libxlutil strips it and marks a CD-ROM.
                value = value[: -len(":cdrom")]
                result["cdrom"] = ""
        if key in result:
            raise DomainConfigError(f"{where} {spec!r} gives {key} twice; keep one.")
        result[key] = value
    if not result.get("vdev"):
        raise DomainConfigError(
            f"{where} {spec!r} names no vdev; add vdev=xvda (or the third positional "
            "parameter: target,format,vdev,access)."
        )
    cdrom = "cdrom" in result or result.get("devtype") == "cdrom"
    if not result.get("target") and not cdrom:
        raise DomainConfigError(
            f"{where} {spec!r} names no target, which xl allows only for a CD-ROM drive; add "
            "target=<device or image path> (last) or make it the first positional parameter."
        )
    fmt = result.get("format")
    if fmt and fmt not in DISK_FORMATS:
        raise DomainConfigError(
            f"{where} {spec!r} has the format {fmt!r}, which xl does not know; use "
            + ", ".join(DISK_FORMATS)
            + " (a bare vdev in the second place needs a prefix such as phy: on the target, "
            "or an empty format: /dev/vg0/vm1,,xvda)."
        )
    access = result.get("access")
    if access and access not in DISK_ACCESS:
        raise DomainConfigError(f"{where} {spec!r} has access={access!r}; use r, ro, w or rw.")
    return result


def disk_spec(item: Item, where: str = "disk") -> str:
    """The spec text for a disk given as text (checked, kept) or as a dict (written)."""
    if isinstance(item, str):
        parse_disk(item, where)
        return item
    if not isinstance(item, Mapping):
        raise DomainConfigError(
            f"{where} has type {type(item).__name__}; give a disk spec string or a dict with "
            "target and vdev."
        )
    unknown = sorted(set(item) - set(DISK_DICT_KEYS) - {"target"})
    if unknown:
        raise DomainConfigError(
            f"{where} has the unknown key(s) {', '.join(unknown)}; use "
            + ", ".join(("target", *DISK_DICT_KEYS))
            + " (or give the disk as an xl spec string)."
        )
    items = {k: v for k, v in item.items() if v is not None}
    problems = []
    for key in DISK_DICT_KEYS:
        if key in items:
            problems.extend(_plain_value(items[key], where, key))
    if "target" in items:
        problems.extend(_plain_value(items["target"], where, "target", commas=True))
    elif items.get("devtype") != "cdrom":
        problems.append(f"{where} has no target; add target=<device or image path>.")
    if "vdev" not in items:
        problems.append(f"{where} has no vdev; add vdev, e.g. xvda.")
    if problems:
        raise DomainConfigError(problems)
    pieces = [f"{key}={items[key]}" for key in DISK_DICT_KEYS if key in items]
    if "target" in items:
        pieces.append(f"target={items['target']}")
    spec = ", ".join(pieces)
    parse_disk(spec, where)
    return spec


# -- vifs ----------------------------------------------------------------------------


def parse_vif(spec: str, where: str = "vif") -> Dict[str, str]:
    """A vif spec's KEY=VALUE pieces as xl splits them (mac lower-cased), checked."""
    if not isinstance(spec, str):
        raise DomainConfigError(f"{where} {spec!r} is not a string; give KEY=VALUE, ...")
    if _QUOTES_AND_CONTROLS.search(spec):
        raise DomainConfigError(
            f"{where} {spec!r} contains a quote or a control character; remove it (the module "
            "quotes the whole spec itself)."
        )
    result: Dict[str, str] = {}
    for raw in spec.split(","):
        piece = raw.strip()
        if not piece:
            continue
        if "=" not in piece:
            raise DomainConfigError(
                f"{where} {spec!r} has the piece {piece!r} without '='; write KEY=VALUE pairs."
            )
        key, value = (part.strip() for part in piece.split("=", 1))
        if key not in VIF_KEYS:
            raise DomainConfigError(
                f"{where} {spec!r} has the key {key!r}, which xl does not know; see "
                "xl-network-configuration(5) (" + ", ".join(VIF_KEYS) + ")."
            )
        if key in result:
            raise DomainConfigError(f"{where} {spec!r} gives {key} twice; keep one.")
        if key == "mac":
            value = normalise_mac(value, f"{where} {spec!r}")
        result[key] = value
    return result


def vif_spec(item: Item, where: str = "vif") -> str:
    """The spec text for a vif given as text (checked, kept) or as a dict (written)."""
    if isinstance(item, str):
        parse_vif(item, where)
        return item
    if not isinstance(item, Mapping):
        raise DomainConfigError(
            f"{where} has type {type(item).__name__}; give a vif spec string or a dict such "
            "as {mac: 00:16:3e:12:34:56, bridge: xenbr0}."
        )
    items = {k: v for k, v in item.items() if v is not None}
    unknown = sorted(set(items) - set(VIF_KEYS))
    if unknown:
        raise DomainConfigError(
            f"{where} has the unknown key(s) {', '.join(unknown)}; use " + ", ".join(VIF_KEYS) + "."
        )
    problems = []
    for key in VIF_KEYS:
        if key in items:
            problems.extend(_plain_value(items[key], where, key))
    if problems:
        raise DomainConfigError(problems)
    if "mac" in items:
        items["mac"] = normalise_mac(items["mac"], where)
    # mac first: it is what an admin looks for in a vif line.
    spec = ", ".join(f"{key}={items[key]}" for key in VIF_KEYS if key in items)
    parse_vif(spec, where)
    return spec


# -- lists ---------------------------------------------------------------------------


def _keep_equal(wanted: List[str], existing: Any, parse: Any) -> List[str]:
    """`wanted`, but an item whose meaning equals the existing item at its index keeps
    the existing text, so hand-written specs are not rewritten for style alone."""
    if not isinstance(existing, list):
        return wanted
    result = []
    for index, text in enumerate(wanted):
        old = existing[index] if index < len(existing) else None
        keep = False
        if isinstance(old, str) and old != text:
            try:
                keep = parse(old) == parse(text)
            except (DomainConfigError, ChannelSpecError):
                keep = False
        result.append(old if keep else text)
    return result


def disk_list(items: Sequence[Item]) -> List[str]:
    """Every disk as spec text; DomainConfigError with every problem, incl. repeated vdevs."""
    problems: List[str] = []
    texts: List[str] = []
    seen: Dict[str, int] = {}
    for number, item in enumerate(items, 1):
        where = f"disks item {number}"
        try:
            text = disk_spec(item, where)
        except DomainConfigError as exc:
            problems.extend(exc.problems)
            continue
        texts.append(text)
        vdev = parse_disk(text, where)["vdev"].split(":", 1)[0]
        if vdev in seen:
            problems.append(
                f"disks items {seen[vdev]} and {number} both use vdev {vdev}; give each disk "
                "its own vdev."
            )
        seen.setdefault(vdev, number)
    if problems:
        raise DomainConfigError(problems)
    return texts


def vif_list(items: Sequence[Item]) -> List[str]:
    """Every vif as spec text; DomainConfigError with every problem, incl. repeated MACs."""
    problems: List[str] = []
    texts: List[str] = []
    seen: Dict[str, int] = {}
    for number, item in enumerate(items, 1):
        where = f"vifs item {number}"
        try:
            text = vif_spec(item, where)
        except DomainConfigError as exc:
            problems.extend(exc.problems)
            continue
        texts.append(text)
        mac = parse_vif(text, where).get("mac")
        if mac is None:
            continue
        if mac in seen:
            problems.append(
                f"vifs items {seen[mac]} and {number} both have mac {mac}; give each vif its "
                "own MAC."
            )
        seen.setdefault(mac, number)
    if problems:
        raise DomainConfigError(problems)
    return texts


def foreign_macs(
    vifs: Sequence[str], name: Optional[str], others: Sequence[Tuple[str, XlConfig]]
) -> List[str]:
    """One sentence per vif (spec text, as vif_list gives) whose MAC another domain has.

    `others` are (path, parsed config) of the host's other domain configs. A config whose
    `name` is `name` is this domain's own (a backup copy, a link), not another VM's; one
    without a name is named by its file.
    """
    owners: Dict[str, Tuple[str, str]] = {}
    for path, doc in others:
        other = doc.get("name")
        if isinstance(other, str) and other == name:
            continue
        label = other if isinstance(other, str) else path
        for spec in _strings(doc.get("vif")):
            try:
                mac = parse_vif(spec).get("mac")
            except DomainConfigError:
                continue  # that domain's own problem; xl reports it when it starts
            if mac is not None:
                owners.setdefault(mac, (label, path))
    problems = []
    for number, spec in enumerate(vifs, 1):
        mac = parse_vif(spec).get("mac")
        if mac in owners:
            label, path = owners[mac]
            problems.append(
                f"vifs item {number} has mac {mac}, which domain {label} already uses "
                f"({path}); give this vif another MAC."
            )
    return problems


def channel_list(items: Sequence[Mapping[str, Any]], socket_dir: str) -> List[str]:
    """The channels as spec text, through channel_spec's rules (as xl_channel)."""
    cleaned = [{k: v for k, v in item.items() if v is not None} for item in items]
    try:
        return [format_spec(channel) for channel in check_channels(cleaned, socket_dir)]
    except ChannelSpecError as exc:
        raise DomainConfigError(exc.problems) from None


# -- templates -----------------------------------------------------------------------


def check_template(template: XlConfig, given: Mapping[str, Any], source: str) -> List[str]:
    """What a clone would share with its template unless overridden, as sentences.

    `given` holds the options the caller set (disks, vifs, channels, settings). The
    template's uuid and name are not in this list: the caller replaces or drops them.
    """
    problems = []
    settings = given.get("settings") or {}
    if given.get("vifs") is None:
        for number, spec in enumerate(_strings(template.get("vif")), 1):
            if "mac=" in spec.replace(" ", ""):
                problems.append(
                    f"template {source} gives vif {number} a fixed MAC ({spec!r}), which the "
                    "clone would share; give the clone's own vifs."
                )
    if given.get("disks") is None:
        for number, spec in enumerate(_strings(template.get("disk")), 1):
            if disk_writable(spec):
                problems.append(
                    f"template {source} has the writable disk {spec!r} (disk {number}), which "
                    "the clone would write to as well; give the clone's own disks."
                )
    if given.get("channels") is None:
        for spec in _strings(template.get("channel")):
            try:
                socket = parse_spec(spec).get("connection") == "socket"
            except ChannelSpecError:
                socket = True
            if socket:
                problems.append(
                    f"template {source} has the socket channel {spec!r}, whose socket belongs "
                    "to the template's domain; give the clone's own channels."
                )
    if "pci" in template and "pci" not in settings:
        problems.append(
            f"template {source} passes PCI devices through (pci), which two domains cannot "
            "share; set settings.pci for the clone (null drops it)."
        )
    return problems


def _strings(value: Any) -> List[str]:
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def disk_writable(spec: str) -> bool:
    """Whether xl would attach the disk read-write (True for a spec it cannot read)."""
    try:
        disk = parse_disk(spec)
    except DomainConfigError:
        return True  # not understood: assume the worst
    if "cdrom" in disk or disk.get("devtype") == "cdrom":
        return False
    return (disk.get("access") or "rw") in ("w", "rw")


# -- the whole config ----------------------------------------------------------------


def wanted_settings(
    *,
    name: Optional[str] = None,
    uuid: Optional[str] = None,
    memory: Optional[int] = None,
    maxmem: Optional[int] = None,
    vcpus: Optional[int] = None,
    disks: Optional[Sequence[Item]] = None,
    vifs: Optional[Sequence[Item]] = None,
    channels: Optional[Sequence[Mapping[str, Any]]] = None,
    settings: Optional[Mapping[str, Any]] = None,
    socket_dir: str = "/run/xenchannel",
) -> List[Tuple[str, Any]]:
    """The (key, value) pairs to set, in file order; a value of None removes the key.

    Raises DomainConfigError with every problem found.
    """
    problems: List[str] = []
    out: List[Tuple[str, Any]] = []

    def collect(key: str, make: Any, *args: Any) -> None:
        try:
            out.append((key, make(*args)))
        except DomainConfigError as exc:
            problems.extend(exc.problems)

    if name is not None:
        collect("name", _name, name)
    if uuid is not None:
        collect("uuid", normalise_uuid, uuid)
    for key, value in (("memory", memory), ("maxmem", maxmem), ("vcpus", vcpus)):
        if value is not None:
            collect(key, _size, key, value)
    if _is_size(memory) and _is_size(maxmem) and maxmem < memory:  # type: ignore[operator]
        problems.append(f"maxmem {maxmem} is below memory {memory}; raise maxmem or lower memory.")
    for key, value in (settings or {}).items():
        if key in MANAGED_KEYS:
            option = {"disk": "disks", "vif": "vifs", "channel": "channels"}.get(key, key)
            problems.append(
                f"settings.{key} is managed by the {option} option; set it there and drop it "
                "from settings."
            )
        elif not is_setting_name(key):
            problems.append(
                f"settings key {key!r} is not an xl setting name; use lower-case letters, "
                "digits, '_' and '.', starting with a letter."
            )
        else:
            out.append((key, value))
    if disks is not None:
        collect("disk", disk_list, disks)
    if vifs is not None:
        collect("vif", vif_list, vifs)
    if channels is not None:
        collect("channel", channel_list, channels, socket_dir)
    if problems:
        raise DomainConfigError(problems)
    return out


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _name(value: Any) -> str:
    # The dom0 agent's rule: the same name keys the store entry and the channel socket.
    problem = domain_name_problem(value)
    if problem is not None:
        raise DomainConfigError(problem)
    return value


_PARSERS = {"disk": parse_disk, "vif": parse_vif, "channel": parse_spec}


def build_config(doc: XlConfig, wanted: Sequence[Tuple[str, Any]], anchored: bool = True) -> bool:
    """Set every (key, value) of `wanted` in `doc`; returns whether the text changed.

    A key not in the document goes on a new line after the nearest managed key before it
    in MANAGED_KEYS order that the document has (a new `channel` after `vif`, a new
    `uuid` after `name`), else at the end; with `anchored=False` (a config written from
    scratch, in `wanted` order) always at the end. Values are as `XlConfig.set` takes them;
    None removes the key. `ValueError` (one sentence) for a value xl cannot hold.
    """
    changed = False
    for key, value in wanted:
        if value is None:
            changed = doc.remove(key) or changed
            continue
        if key in _PARSERS:
            value = _keep_equal(value, doc.get(key), _PARSERS[key])  # noqa: PLW2901
        after = None
        if anchored and key not in doc and key in MANAGED_KEYS:
            before = MANAGED_KEYS[: MANAGED_KEYS.index(key)]
            present = [k for k in before if k in doc]
            after = present[-1] if present else None
        changed = doc.set(key, value, after=after) or changed
    return changed
