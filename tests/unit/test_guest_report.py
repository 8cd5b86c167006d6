"""xenchannel.guest.report: the facts a guest reports, from a prepared root and, as root,
from real network namespaces (veth pairs with real addresses)."""

import base64
import builtins
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List

import pytest

from testbed.stack import runtime_env
from tests.guest_root import HOST_KEY as ED25519
from tests.guest_root import HOST_PRIVATE_KEY as PRIVATE
from tests.guest_root import write
from xenchannel.guest import report
from xenchannel.session import Report


def public_key(kind: str, body: bytes = b"\x01" * 32) -> str:
    """A public key line of ``kind`` whose blob names its type, as OpenSSH writes it."""
    name = kind.encode()
    blob = struct.pack(">I", len(name)) + name + struct.pack(">I", len(body)) + body
    return kind + " " + base64.b64encode(blob).decode()


ECDSA = public_key("ecdsa-sha2-nistp256")


def net(root: str, name: str, mac: str, kind: str = "1") -> None:
    write(f"{root}/sys/class/net/{name}/address", mac + "\n")
    write(f"{root}/sys/class/net/{name}/type", kind + "\n")


@pytest.fixture
def root(tmp_path: Any) -> str:
    top = str(tmp_path / "root")
    net(top, "lo", "00:00:00:00:00:00", "772")
    net(top, "eth0", "00:16:3E:12:34:56")
    net(top, "eth1", "not-a-mac")
    net(top, "sit0", "00:00:00:00", "776")  # a tunnel: not Ethernet-like
    write(f"{top}/proc/sys/kernel/hostname", "web1\n")
    write(f"{top}/etc/ssh/ssh_host_ed25519_key.pub", ED25519 + " root@template\n")
    write(f"{top}/etc/ssh/ssh_host_ed25519_key", PRIVATE, 0o600)
    write(f"{top}/etc/ssh/ssh_host_ecdsa_key.pub", ECDSA + "\n")
    write(f"{top}/etc/ssh/ssh_host_ecdsa_key", PRIVATE, 0o600)
    return top


# ---------------------------------------------------------------- a prepared root


class TestCollect:
    def test_everything_read_from_the_root(self, root: str) -> None:
        addresses = {"eth0": ["192.0.2.10/24", "2001:db8::10/64"], "lo": ["127.0.0.1/8"]}
        got = report.collect(root, "done", addresses=addresses)
        assert got.hostname == "web1"
        assert [(i.name, i.mac, i.addresses) for i in got.interfaces] == [
            ("eth0", "00:16:3E:12:34:56", ["192.0.2.10/24", "2001:db8::10/64"]),
            ("eth1", None, []),
        ]
        # Sorted by file name, comments dropped.
        assert got.host_keys == [ECDSA, ED25519]
        body = got.body()
        assert body["interfaces"][0]["mac"] == "00:16:3e:12:34:56"
        assert body["cloud_init"] == "done"
        # What dom0 parses is what was sent.
        assert Report.parse(json.loads(json.dumps(body))).body() == body

    def test_a_root_that_is_not_slash_is_not_live(self, root: str) -> None:
        os.remove(f"{root}/proc/sys/kernel/hostname")
        got = report.collect(root)
        assert got.hostname is None  # not this machine's
        assert all(i.addresses == [] for i in got.interfaces)
        assert report.collect(root, live=True, addresses={}).hostname == report.socket.gethostname()

    def test_nothing_readable_is_an_empty_report_and_a_warning(
        self, tmp_path: Any, caplog: Any
    ) -> None:
        caplog.set_level(logging.DEBUG, logger="xenchannel.guest.report")
        got = report.collect(str(tmp_path), "error", ["boom"])
        assert got.body() == {
            "interfaces": [],
            "host_keys": [],
            "cloud_init": "error",
            "errors": ["boom"],
        }
        assert "cannot list" in caplog.text

    def test_an_unreadable_interface_is_left_out(self, root: str) -> None:
        os.remove(f"{root}/sys/class/net/eth1/type")
        assert [i.name for i in report.interfaces(root, {})] == ["eth0"]


class TestHostKeys:
    def test_a_private_key_beside_is_never_opened(self, root: str, monkeypatch: Any) -> None:
        opened: List[str] = []
        real_open, real_os_open = builtins.open, os.open

        def spy_open(path: Any, *args: Any, **kwargs: Any) -> Any:
            opened.append(str(path))
            return real_open(path, *args, **kwargs)

        def spy_os_open(path: Any, *args: Any, **kwargs: Any) -> Any:
            opened.append(str(path))
            return real_os_open(path, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", spy_open)
        monkeypatch.setattr(os, "open", spy_os_open)
        body = json.dumps(report.collect(root, addresses={}).body())
        assert any(p.endswith("ssh_host_ed25519_key.pub") for p in opened), opened
        assert not [p for p in opened if p.endswith("_key")], opened
        assert "PRIVATE" not in body and "SECRET" not in body

    def test_a_symlink_to_the_private_key_is_refused(self, root: str, caplog: Any) -> None:
        os.remove(f"{root}/etc/ssh/ssh_host_ecdsa_key.pub")
        os.symlink("ssh_host_ecdsa_key", f"{root}/etc/ssh/ssh_host_ecdsa_key.pub")
        assert report.host_keys(root) == [ED25519]
        assert "ssh_host_ecdsa_key.pub" in caplog.text

    def test_what_is_not_a_public_key_file_is_left_out(self, root: str) -> None:
        os.remove(f"{root}/etc/ssh/ssh_host_ecdsa_key.pub")
        os.mkfifo(f"{root}/etc/ssh/ssh_host_ecdsa_key.pub")  # opening must not block
        write(f"{root}/etc/ssh/ssh_host_rsa_key.pub", ECDSA + "\n" + "#" * report.MAX_KEY_FILE)
        write(f"{root}/etc/ssh/ssh_host_dsa_key.pub", "garbage\n" + PRIVATE)
        assert report.host_keys(root) == [ED25519]


# ---------------------------------------------------------------- parsing addresses

IPROUTE2 = """\
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
1: lo    inet6 ::1/128 scope host \\       valid_lft forever preferred_lft forever
2: eth0    inet 192.0.2.10/24 brd 192.0.2.255 scope global eth0\\       valid_lft forever
2: eth0    inet 10.1.0.1 peer 10.1.0.2/32 scope global eth0:1\\       valid_lft forever
2: eth0    inet6 2001:db8::10/64 scope global \\       valid_lft forever preferred_lft forever
2: eth0    inet6 2001:db8::99/64 scope global tentative \\       valid_lft forever
2: eth0    inet6 2001:db8::98/64 scope global dadfailed tentative \\       valid_lft forever
3: veth0@if4    inet 198.51.100.1/24 scope global veth0\\       valid_lft forever
Warning: something odd
4: eth1    inet 999.1.1.1/24 scope global eth1
5: eth2    link/ether 00:16:3e:00:00:01 brd ff:ff:ff:ff:ff:ff
"""
BUSYBOX = """\
1: lo    inet 127.0.0.1/8 scope host lo
2: eth0    inet 192.0.2.10/24 brd 192.0.2.255 scope global eth0
2: eth0    inet6 fe80::216:3eff:fe12:3456/64 scope link
"""
IF_INET6 = """\
00000000000000000000000000000001 01 80 10 80       lo
20010db8000000000000000000000010 02 40 00 80     eth0
20010db8000000000000000000000099 02 40 00 c0     eth0
nonsense
"""


def test_ip_addr_of_iproute2() -> None:
    assert report.parse_ip_addr(IPROUTE2) == {
        "lo": ["127.0.0.1/8", "::1/128"],
        "eth0": ["192.0.2.10/24", "10.1.0.1/32", "2001:db8::10/64"],
        "veth0": ["198.51.100.1/24"],
    }


def test_ip_addr_of_busybox() -> None:
    assert report.parse_ip_addr(BUSYBOX) == {
        "lo": ["127.0.0.1/8"],
        "eth0": ["192.0.2.10/24", "fe80::216:3eff:fe12:3456/64"],
    }


def test_if_inet6_leaves_out_tentative_addresses() -> None:
    assert report.parse_if_inet6(IF_INET6) == {"lo": ["::1/128"], "eth0": ["2001:db8::10/64"]}


def test_no_ip_command_is_not_an_error(monkeypatch: Any) -> None:
    monkeypatch.setattr(report, "IP_COMMAND", "/nonexistent/ip")
    assert report._ip_addresses() is None
    assert isinstance(report.live_addresses(["eth0"]), dict)  # the fallback's answer


# ---------------------------------------------------------------- cloud-init's result


@pytest.mark.parametrize(
    ("result", "status", "expected"),
    [
        pytest.param(
            {"v1": {"datasource": "DataSourceXenChannel", "errors": []}},
            None,
            ("done", [], []),
            id="old-result-json-without-status-json",
        ),
        pytest.param(
            {"v1": {"errors": [], "recoverable_errors": {}}},
            {"v1": {"init": {"errors": [], "recoverable_errors": {}}, "stage": None}},
            ("done", [], []),
            id="done",
        ),
        pytest.param(
            {"v1": {"errors": [], "recoverable_errors": {"WARNING": ["no route"]}}},
            {
                "v1": {
                    "init": {"errors": [], "recoverable_errors": {"WARNING": ["no route"]}},
                    "modules-final": {"recoverable_errors": {"DEPRECATED": ["key x"]}},
                    "stage": None,
                    "datasource": "xenchannel",
                }
            },
            ("degraded", [], ["WARNING: no route", "DEPRECATED: key x"]),
            id="degraded-from-both-files-each-once",
        ),
        pytest.param(
            {"v1": {"errors": ["module a failed"]}},
            {"v1": {"modules-final": {"errors": ["module b failed"]}}},
            ("error", ["module a failed", "module b failed"], []),
            id="error",
        ),
        pytest.param("garbage", [1, 2], ("done", [], []), id="unreadable-shapes"),
    ],
)
def test_cloud_init_result(result: Any, status: Any, expected: Any) -> None:
    assert report.cloud_init_result(result, status) == expected


def test_cloud_init_result_from_files(tmp_path: Any) -> None:
    root = str(tmp_path)
    assert report.read_cloud_init_result(root) is None
    write(f"{root}/run/cloud-init/result.json", json.dumps({"v1": {"errors": ["x"]}}))
    write(f"{root}/run/cloud-init/status.json", "{not json")
    assert report.read_cloud_init_result(root) == ("error", ["x"], [])


# ---------------------------------------------------------------- waiting


def test_wait_returns_once_every_address_is_up() -> None:
    polls: List[int] = []

    def source() -> Dict[str, List[str]]:
        polls.append(1)
        if len(polls) < 3:
            return {"eth0": ["192.0.2.10/24"]}
        return {"eth0": ["192.0.2.10/24", "2001:db8::10/64"]}

    # 2001:0db8::0010 is the same address written another way.
    missing = report.wait_for_addresses(["192.0.2.10", "2001:0db8::0010"], 30, source, 0.01)
    assert missing == [] and len(polls) == 3


def test_wait_is_bounded_and_says_what_is_missing() -> None:
    start = time.monotonic()
    missing = report.wait_for_addresses(
        ["192.0.2.10", "192.0.2.11", "nonsense"], 0.3, lambda: {"eth0": ["192.0.2.10/24"]}, 0.05
    )
    assert missing == ["192.0.2.11"]
    assert 0.3 <= time.monotonic() - start < 10


def test_host_keys_are_waited_for_where_sshd_is_installed(tmp_path: Any) -> None:
    """A first boot makes the host keys while the network comes up: the report waits for
    them (bounded) where sshd is installed, and not at all where it is not."""
    root = str(tmp_path)
    assert report.wait_for_host_keys(root, 30.0) is True  # no sshd: nothing to wait for
    write(f"{root}/usr/sbin/sshd", "#!/bin/sh\n", 0o755)
    start = time.monotonic()
    assert report.wait_for_host_keys(root, 0.3) is False  # bounded: no key ever came
    assert time.monotonic() - start < 10
    pub = f"{root}/etc/ssh/ssh_host_ed25519_key.pub"
    timer = threading.Timer(0.3, write, (pub, ED25519 + " root@clone\n"))
    timer.start()
    try:
        assert report.wait_for_host_keys(root, 30.0) is True
    finally:
        timer.join()
    assert report.host_keys(root) == [ED25519]


def test_wait_for_nothing_does_not_wait() -> None:
    assert report.wait_for_addresses([], 3600, lambda: {}) == []


# ---------------------------------------------------------------- real namespaces (root)

# Run inside a fresh network and mount namespace with sysfs mounted again (so
# /sys/class/net is the namespace's): a veth pair with real addresses, one of them
# added a second later, and the report and the wait of the real code.
NAMESPACE_SETUP = """
set -e
mount -t sysfs sysfs /sys
ip link set lo up
ip link add veth0 type veth peer name veth1
ip link set veth0 address 00:16:3e:00:00:0a
ip link set veth0 up
ip link set veth1 up
ip addr add 192.0.2.10/24 dev veth0
ip addr add 2001:db8::10/64 dev veth0 nodad
(sleep 1; ip addr add 2001:db8::11/64 dev veth0 nodad) &
ip addr add 192.0.2.11/24 dev veth0
exec "$@"
"""
IN_NAMESPACE = """
import json, sys
from xenchannel.guest import report
if sys.argv[1] == "nofallback":
    report.IP_COMMAND = "/nonexistent/ip"
missing = report.wait_for_addresses(["192.0.2.10", "2001:db8::10", "2001:db8::11"], 30)
never = report.wait_for_addresses(["192.0.2.99"], 0.5)
body = report.collect("/").body()
print(json.dumps({"missing": missing, "never": never, "report": body}))
"""


def in_namespace(mode: str) -> Dict[str, Any]:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.fail("the namespace tests need unshare and ip (iproute2)")
    done = subprocess.run(
        [
            "unshare", "--net", "--mount", "--", "sh", "-c", NAMESPACE_SETUP, "setup",
            sys.executable, "-c", IN_NAMESPACE, mode,
        ],
        capture_output=True, text=True, timeout=60, env=runtime_env(), check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert isinstance(result, dict)
    return result


@pytest.mark.root
@pytest.mark.parametrize("mode", ["ip", "nofallback"])
def test_addresses_of_a_real_namespace(mode: str) -> None:
    result = in_namespace(mode)
    assert result["missing"] == [] and result["never"] == ["192.0.2.99"]
    by_name = {i["name"]: i for i in result["report"]["interfaces"]}
    assert sorted(by_name) == ["veth0", "veth1"]  # lo left out
    veth0 = by_name["veth0"]
    assert veth0["mac"] == "00:16:3e:00:00:0a"
    # Link-local addresses may still be in duplicate address detection: not up yet.
    addresses = sorted(a for a in veth0["addresses"] if not a.startswith("fe80:"))
    if mode == "ip":
        assert addresses == ["192.0.2.10/24", "192.0.2.11/24", "2001:db8::10/64", "2001:db8::11/64"]
    else:
        # Without ip: the primary IPv4 address (ioctl) and IPv6 from /proc/net/if_inet6.
        assert addresses == ["192.0.2.10/24", "2001:db8::10/64", "2001:db8::11/64"]
