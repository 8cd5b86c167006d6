"""What the clone is once applying finished: the facts a guest reports to dom0.

``collect`` gathers them into a ``session.Report`` (sent inside STATUS, and the answer
to the ``report`` query): the running hostname, each Ethernet-like interface's name, MAC
and addresses, the SSH host public keys, and cloud-init's result where cloud-init ran
(``cloud_init_result``).  ``wait_for_addresses`` waits, bounded, until the addresses a
bundle's network-config assigns are up, so the report shows them.

Only public facts: host keys are read from ``ssh_host_*_key.pub`` files alone (never a
private key file), no user-data and no meta-data.  Every read is bounded and a failure
to read something leaves that fact out with a log line: never an exception.

Files are read under ``root``; addresses and, where the root has no
``/proc/sys/kernel/hostname``, the hostname are the running system's (``live``).
Standard library only; Python 3.6 to 3.13.
"""

import errno
import fcntl
import glob
import ipaddress
import json
import logging
import os
import re
import socket
import stat
import struct
import subprocess
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from xenchannel.session import MAX_ADDRESSES, MAX_INTERFACES, Interface, Report, host_key_line

LOG = logging.getLogger("xenchannel.guest.report")

NET_DIR = "/sys/class/net"
HOSTNAME_FILE = "/proc/sys/kernel/hostname"
HOST_KEYS = "/etc/ssh/ssh_host_*_key.pub"
CLOUD_INIT_RESULT = "/run/cloud-init/result.json"  # written when cloud-final is done
CLOUD_INIT_STATUS = "/run/cloud-init/status.json"
# ARPHRD_ETHER in <root>/sys/class/net/<name>/type: Xen's vif, virtio, bonds, bridges.
ARPHRD_ETHER = 1
# A public key line is at most session.MAX_HOST_KEY; a file beyond this is not a key.
MAX_KEY_FILE = 16384
MAX_SMALL_FILE = 4096
MAX_JSON_FILE = 1 << 20
# Well under dom0's query timeout (5 s), since the report query runs it too.
IP_TIMEOUT = 2.0
IP_COMMAND = "ip"
# Flags of addresses not usable yet or ever: IPv6 duplicate address detection.
NOT_UP_FLAGS = ("tentative", "dadfailed")
_IFA_F_DADFAILED = 0x08
_IFA_F_TENTATIVE = 0x40
_SIOCGIFADDR = 0x8915
_SIOCGIFNETMASK = 0x891B
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def _under(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def _read_small(path: str, limit: int = MAX_SMALL_FILE) -> Optional[str]:
    """A small text file's content, stripped; None (with a debug line) if unreadable."""
    try:
        with open(path, "rb") as handle:
            return handle.read(limit).decode("utf-8", "replace").strip()
    except OSError as exc:
        LOG.debug("report: cannot read %s: %s", path, exc.strerror or exc)
        return None


def hostname(root: str = "/", live: Optional[bool] = None) -> Optional[str]:
    """The running hostname: ``<root>/proc/sys/kernel/hostname``, else the syscall's."""
    name = _read_small(_under(root, HOSTNAME_FILE), 256)
    if name:
        return name
    if live is None:
        live = _is_slash(root)
    if live:
        try:
            return socket.gethostname() or None
        except OSError as exc:
            LOG.warning("report: no hostname: %s", exc)
    return None


def _is_slash(root: str) -> bool:
    return os.path.normpath(root) == "/"


# ------------------------------------------------------------------ addresses


def parse_ip_addr(text: str) -> Dict[str, List[str]]:
    """``ip -o addr show`` output (iproute2 or busybox) as {interface: ["ip/prefix"]}.

    Lines it cannot read are skipped, and so are addresses still in (or failed)
    duplicate address detection: they are not usable.
    """
    found = {}  # type: Dict[str, List[str]]
    for line in text.splitlines():
        # iproute2 ends the line at a "\" before valid_lft; the flags come before it.
        fields = line.split("\\")[0].split()
        if len(fields) < 4 or not fields[0].endswith(":"):
            continue
        name = fields[1].rstrip(":").split("@")[0]
        if fields[2] not in ("inet", "inet6") or not name:
            continue
        if any(flag in fields[4:] for flag in NOT_UP_FLAGS):
            continue
        text_address = fields[3]
        if "/" not in text_address:
            # "inet 10.0.0.1 peer 10.0.0.2/32": the prefix is the peer's.
            prefix = next(
                (f.split("/")[1] for f in fields[4:6] if "/" in f),
                "32" if fields[2] == "inet" else "128",
            )
            text_address += "/" + prefix
        try:
            address = str(ipaddress.ip_interface(text_address))
        except ValueError:
            continue
        entries = found.setdefault(name, [])
        if address not in entries:
            entries.append(address)
    return found


def _ip_addresses() -> Optional[Dict[str, List[str]]]:
    """Addresses from ``ip -o addr show``; None if it cannot run or failed."""
    try:
        done = subprocess.run(  # noqa: UP022 - capture_output is Python 3.7+
            [IP_COMMAND, "-o", "addr", "show"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=IP_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        LOG.warning("report: '%s -o addr show' took longer than %g s", IP_COMMAND, IP_TIMEOUT)
        return None
    except OSError as exc:
        LOG.debug("report: cannot run %s: %s", IP_COMMAND, exc.strerror or exc)
        return None
    if done.returncode:
        LOG.debug(
            "report: '%s -o addr show' exited with %d: %s",
            IP_COMMAND,
            done.returncode,
            done.stderr.decode("utf-8", "replace").strip()[:200],
        )
        return None
    return parse_ip_addr(done.stdout.decode("utf-8", "replace"))


def parse_if_inet6(text: str) -> Dict[str, List[str]]:
    """/proc/net/if_inet6 as {interface: ["ip/prefix"]}, without addresses in DAD."""
    found = {}  # type: Dict[str, List[str]]
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 6 or len(fields[0]) != 32:
            continue
        try:
            ip = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
            prefix, flags = int(fields[2], 16), int(fields[4], 16)
            address = str(ipaddress.ip_interface(f"{ip}/{prefix}"))
        except ValueError:
            continue
        if flags & (_IFA_F_TENTATIVE | _IFA_F_DADFAILED):
            continue
        found.setdefault(fields[5], []).append(address)
    return found


def _ipv4_by_ioctl(name: str) -> Optional[str]:
    """The primary IPv4 address of ``name`` as ip/prefix (SIOCGIFADDR), or None."""
    request = struct.pack("256s", name.encode("utf-8")[:15])
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            address = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)[20:24]
            netmask = fcntl.ioctl(sock.fileno(), _SIOCGIFNETMASK, request)[20:24]
    except OSError as exc:
        if exc.errno != errno.EADDRNOTAVAIL:  # what an interface without IPv4 gives
            LOG.debug("report: no IPv4 address of %s: %s", name, exc.strerror or exc)
        return None
    try:
        return str(
            ipaddress.ip_interface(f"{socket.inet_ntoa(address)}/{socket.inet_ntoa(netmask)}")
        )
    except ValueError:
        return None


def _fallback_addresses(names: Iterable[str]) -> Dict[str, List[str]]:
    """Without ``ip``: /proc/net/if_inet6 for IPv6, an ioctl for the primary IPv4."""
    found = {}  # type: Dict[str, List[str]]
    for name in names:
        ipv4 = _ipv4_by_ioctl(name)
        if ipv4:
            found[name] = [ipv4]
    text = _read_small("/proc/net/if_inet6", 1 << 16)
    for name, addresses in parse_if_inet6(text or "").items():
        found.setdefault(name, []).extend(addresses)
    return found


def live_addresses(names: Optional[Iterable[str]] = None) -> Dict[str, List[str]]:
    """The running system's addresses by interface: ``ip -o addr show``, else the
    fallback (``names``: the interfaces to ask by ioctl, default those in sysfs)."""
    found = _ip_addresses()
    if found is not None:
        return found
    return _fallback_addresses(names if names is not None else _net_names("/"))


def _address_set(addresses: Dict[str, List[str]]) -> List[str]:
    return [a.split("/")[0] for entries in addresses.values() for a in entries]


# ------------------------------------------------------------------ interfaces


def _net_names(root: str) -> List[str]:
    try:
        return sorted(os.listdir(_under(root, NET_DIR)))
    except OSError as exc:
        LOG.warning("report: cannot list %s: %s", _under(root, NET_DIR), exc.strerror or exc)
        return []


def interfaces(
    root: str = "/", addresses: Optional[Dict[str, List[str]]] = None
) -> List[Interface]:
    """The Ethernet-like interfaces in ``<root>/sys/class/net`` (not ``lo``), by name,
    with their MAC and their ``addresses`` (``live_addresses()`` when None)."""
    found = []  # type: List[Interface]
    names = []  # type: List[str]
    for name in _net_names(root):
        if name == "lo":
            continue
        directory = _under(root, NET_DIR + "/" + name)
        kind = _read_small(os.path.join(directory, "type"), 64)
        if kind != str(ARPHRD_ETHER):
            if kind is not None:
                LOG.debug("report: %s is not Ethernet-like (type %s); left out", name, kind)
            continue
        names.append(name)
    if addresses is None:
        addresses = live_addresses(names)
    for name in names[:MAX_INTERFACES]:
        mac = _read_small(_under(root, f"{NET_DIR}/{name}/address"), 64)
        if mac is not None and not _is_mac(mac):
            LOG.debug("report: %s has no usable MAC (%r)", name, mac[:40])
            mac = None
        found.append(Interface(name, mac, addresses.get(name, [])[:MAX_ADDRESSES]))
    return found


def _is_mac(text: str) -> bool:
    return _MAC_RE.match(text.lower()) is not None


# ------------------------------------------------------------------ host keys


def host_keys(root: str = "/") -> List[str]:
    """The SSH host public keys, ``"<type> <base64>"``, from ``ssh_host_*_key.pub``.

    Only regular files by that name are opened (a symlink is refused, so the name
    cannot lead to a private key), at most MAX_KEY_FILE bytes each, and only lines that
    are public keys (``session.host_key_line``) are kept.
    """
    keys = []  # type: List[str]
    for path in sorted(glob.glob(_under(root, HOST_KEYS))):
        if not path.endswith(".pub"):  # the pattern ends so; this says it cannot change
            continue
        text = _read_regular(path, MAX_KEY_FILE)
        if text is None:
            continue
        for line in text.splitlines():
            key = host_key_line(line)
            if key is not None and key not in keys:
                keys.append(key)
    return keys


def _read_regular(path: str, limit: int) -> Optional[str]:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        LOG.warning("report: cannot open %s: %s", path, exc.strerror or exc)
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            LOG.warning("report: %s is not a regular file; left out", path)
            return None
        try:
            data = handle.read(limit + 1)
        except OSError as exc:
            LOG.warning("report: cannot read %s: %s", path, exc.strerror or exc)
            return None
    if len(data) > limit:
        LOG.warning("report: %s is larger than %d bytes; left out", path, limit)
        return None
    return data.decode("utf-8", "replace")


# ------------------------------------------------------------------ cloud-init


def _read_json(path: str) -> Any:
    text = _read_small(path, MAX_JSON_FILE)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        LOG.warning("report: %s is not JSON: %s", path, exc)
        return None


def _messages(value: Any) -> List[str]:
    """Errors as cloud-init writes them: a list of messages, or (recoverable errors,
    cloud-init >= 23.4) ``{level: [messages]}``, flattened as ``"LEVEL: message"``."""
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, dict):
        return [
            f"{level}: {message}"
            for level, messages in value.items()
            for message in (messages if isinstance(messages, list) else [messages])
        ]
    return []


def cloud_init_result(result: Any, status: Any = None) -> Tuple[str, List[str], List[str]]:
    """(result, errors, recoverable errors) from result.json's and status.json's content.

    result is ``error`` with errors, ``degraded`` with only recoverable errors, else
    ``done``.  status.json (absent before cloud-final on old versions) adds its stages'
    errors; each message counts once.
    """
    errors = []  # type: List[str]
    recoverable = []  # type: List[str]

    def add(into: List[str], messages: List[str]) -> None:
        into.extend(m for m in messages if m not in into)

    v1 = result.get("v1") if isinstance(result, dict) else None
    if isinstance(v1, dict):
        add(errors, _messages(v1.get("errors")))
        add(recoverable, _messages(v1.get("recoverable_errors")))
    v1 = status.get("v1") if isinstance(status, dict) else None
    for stage in v1.values() if isinstance(v1, dict) else ():
        if isinstance(stage, dict):
            add(errors, _messages(stage.get("errors")))
            add(recoverable, _messages(stage.get("recoverable_errors")))
    if errors:
        return "error", errors, recoverable
    return ("degraded" if recoverable else "done"), errors, recoverable


def read_cloud_init_result(root: str = "/") -> Optional[Tuple[str, List[str], List[str]]]:
    """``cloud_init_result`` of the files under ``root``; None before cloud-final."""
    result = _read_json(_under(root, CLOUD_INIT_RESULT))
    if result is None:
        return None
    return cloud_init_result(result, _read_json(_under(root, CLOUD_INIT_STATUS)))


# ------------------------------------------------------------------ the report


def collect(
    root: str = "/",
    cloud_init: Optional[str] = None,
    errors: Sequence[str] = (),
    recoverable_errors: Sequence[str] = (),
    *,
    live: Optional[bool] = None,
    addresses: Optional[Dict[str, List[str]]] = None,
) -> Report:
    """The report of the clone under ``root``, as complete as it can be read.

    ``live`` (default: ``root`` is ``/``): the running system's hostname and addresses
    stand for the root's.  ``addresses`` ({interface: ["ip/prefix"]}) replaces reading
    them; without it and not live, interfaces have none.
    """
    if live is None:
        live = _is_slash(root)
    if addresses is None and not live:
        addresses = {}
    return Report(
        hostname(root, live),
        interfaces(root, addresses),
        host_keys(root),
        cloud_init=cloud_init,
        errors=errors,
        recoverable_errors=recoverable_errors,
    )


def wait_for_addresses(
    wanted: Sequence[str],
    timeout: float,
    source: Optional[Callable[[], Dict[str, List[str]]]] = None,
    interval: float = 0.25,
) -> List[str]:
    """Wait at most ``timeout`` seconds until every address in ``wanted`` (no prefix,
    ``protocol.static_addresses``) is up on some interface; what is still missing.

    Never raises on timeout: the caller reports anyway and dom0 judges.  ``source``
    gives the addresses by interface (default ``live_addresses``).
    """
    read = source or live_addresses
    want = []  # type: List[str]
    for text in wanted:
        try:
            want.append(str(ipaddress.ip_address(text)))
        except ValueError:
            LOG.debug("report: %r is not an address; not waited for", text)
    deadline = time.monotonic() + timeout
    while True:
        up = set(_address_set(read()))
        missing = [a for a in want if a not in up]
        remaining = deadline - time.monotonic()
        if not missing or remaining <= 0:
            return missing
        time.sleep(min(interval, remaining))


SSHD = "/usr/sbin/sshd"


def wait_for_host_keys(root: str, timeout: float, interval: float = 0.25) -> bool:
    """Where sshd is installed, wait at most ``timeout`` seconds until the clone has a
    host public key: on a first boot they are made while the network comes up (by
    cloud-init, or xenchannel-ssh-host-keys.service), and a report without them leaves
    dom0 nothing to pin.  True when there are keys or no sshd; never raises."""
    if not os.path.exists(_under(root, SSHD)):
        return True
    deadline = time.monotonic() + timeout
    while not host_keys(root):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(interval, remaining))
    return True


def lacking(root: str, wanted: Sequence[str], report: Report) -> List[str]:
    """What ``report`` lacks that the clone should soon have, in words for a log line:
    each address of ``wanted`` not in it, and the SSH host keys where sshd is installed
    (``wait_for_host_keys``'s rule).  Empty: the report is complete."""
    up = set(report.addresses())
    gaps = [a for a in wanted if a not in up]
    if not report.host_keys and os.path.exists(_under(root, SSHD)):
        gaps.append("SSH host keys")
    return gaps


def settle(
    root: str,
    wanted: Sequence[str],
    build: Callable[[], Report],
    timeout: float,
    interval: float = 1.0,
) -> Tuple[Report, List[str]]:
    """After a "settling" report: build the report (``build``) again every ``interval``
    until it ``lacking`` nothing, at most ``timeout`` seconds; that report and what it
    still lacks.  Never raises on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        report = build()
        gaps = lacking(root, wanted, report)
        remaining = deadline - time.monotonic()
        if not gaps or remaining <= 0:
            return report, gaps
        time.sleep(min(interval, remaining))


def wait_and_log(wanted: Sequence[str], timeout: float) -> List[str]:
    """``wait_for_addresses`` with the log lines of both reporters; nothing to wait for
    (no static address, no time) returns at once."""
    if not wanted or timeout <= 0:
        return []
    LOG.info("network: waiting up to %g s for %s", timeout, ", ".join(wanted))
    missing = wait_for_addresses(wanted, timeout)
    if missing:
        LOG.warning("network: not up after %g s: %s; reporting anyway", timeout, ", ".join(missing))
    else:
        LOG.info("network: every static address is up")
    return missing
