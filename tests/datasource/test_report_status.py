"""datasource/xenchannel-report-status against a live Stack (real dom0 agent)."""

import json
import os
import socket
import subprocess
import sys
import time
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import pytest

from testbed.stack import Stack, delivered, runtime_env, sample_bundle
from tests.guest_root import HOST_KEY as ED25519
from tests.guest_root import HOST_PRIVATE_KEY as PRIVATE
from tests.guest_root import write

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "datasource", "xenchannel-report-status")


@pytest.fixture
def stack() -> Iterator[Stack]:
    s = Stack()
    try:
        yield s
    finally:
        s.close()


def guest_root(
    tmp_path, link: str, v1: dict, status: Any = None, addresses: Sequence[str] = ()
) -> str:
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "run/cloud-init"))
    os.makedirs(os.path.join(root, "var/lib/cloud/data"))
    with open(os.path.join(root, "run/cloud-init/result.json"), "w") as f:
        json.dump({"v1": v1}, f)
    if status is not None:
        write(os.path.join(root, "run/cloud-init/status.json"), json.dumps(status))
    record = {"instance-id": "iid-vm1", "channel": link, "platform-uuid": None}
    record["static-addresses"] = list(addresses)
    with open(os.path.join(root, "var/lib/cloud/data/xenchannel.json"), "w") as f:
        json.dump(record, f)
    return root


def run(root: str, *extra: str, prefix: Sequence[str] = ()) -> Tuple[int, str]:
    result = subprocess.run(  # noqa: PLW1510 - the return code is asserted
        [*prefix, sys.executable, SCRIPT, "--root", root, "--timeout", "3", *extra],
        env=runtime_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
    )
    return result.returncode, result.stdout


def ready_stack(stack: Stack) -> str:
    domain = stack.add_domain("vm1")
    stack.start_agent()
    stack.fetch("vm1")  # what the datasource did in cloud-init-local
    stack.wait_state("vm1", delivered)
    return domain.link


def test_reports_applied(stack: Stack, tmp_path) -> None:
    link = ready_stack(stack)
    root = guest_root(tmp_path, link, {"datasource": "DataSourceXenChannel [...]", "errors": []})
    rc, out = run(root)
    assert rc == 0, out
    status = stack.wait_state("vm1", lambda s: bool(s.get("status")))["status"]
    assert status["state"] == "applied"
    assert status["instance_id"] == "iid-vm1"
    # The marker the in-guest agent waits for before it takes the device for good.
    assert os.path.exists(os.path.join(root, "run/xenchannel/report-status.done"))


def test_reports_failed_with_the_errors(stack: Stack, tmp_path) -> None:
    link = ready_stack(stack)
    v1 = {"datasource": "DataSourceXenChannel", "errors": ["module foo failed", "x" * 900]}
    rc, out = run(guest_root(tmp_path, link, v1))
    assert rc == 0, out
    status = stack.wait_state("vm1", lambda s: bool(s.get("status")))["status"]
    assert status["state"] == "failed"
    assert status["reason"].startswith("cloud-init: module foo failed; xxx")


def test_other_datasource_reports_nothing(tmp_path) -> None:
    root = guest_root(tmp_path, "/nonexistent", {"datasource": "DataSourceNoCloud", "errors": []})
    rc, out = run(root)
    assert rc == 0 and "nothing to report" in out


def test_missing_result_is_an_error(tmp_path) -> None:
    rc, out = run(str(tmp_path))
    assert rc == 2 and "has cloud-final run?" in out
    # Done all the same: the agent must not wait for a report that will never come.
    assert os.path.exists(os.path.join(str(tmp_path), "run/xenchannel/report-status.done"))


def test_silent_dom0_is_bounded(stack: Stack, tmp_path) -> None:
    domain = stack.add_domain("vm1")  # no agent
    root = guest_root(tmp_path, domain.link, {"datasource": "DataSourceXenChannel", "errors": []})
    start = time.monotonic()
    rc, out = run(root, "--timeout", "1")
    assert rc == 1 and ("could not report" in out or "did not acknowledge" in out), out
    assert time.monotonic() - start < 15
    assert os.path.exists(os.path.join(root, "run/xenchannel/report-status.done"))


def test_help_does_not_show_the_test_only_root() -> None:
    """--root is a hook for these tests (docs/datasource.md): a user never needs it, so
    --help shows the options a user has and not that one."""
    result = subprocess.run(
        [sys.executable, SCRIPT, "--help"],
        env=runtime_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--device" in result.stdout and "--timeout" in result.stdout, result.stdout
    assert "--root" not in result.stdout, result.stdout


# ---------------------------------------------------------------- the report dom0 gets

XENCHANNEL = "DataSourceXenChannel [xen-channel (/dev/xen-channel/org.xenchannel.provision.0)]"


class Recorded:
    """What the real dom0 agent recorded of vm1's last STATUS and its report."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    def wait_status(self) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        state = self.stack.wait_state("vm1", lambda s: bool(s.get("status")), timeout=30)
        return state["status"], state.get("report") or {}


@pytest.fixture
def host(stack: Stack) -> Iterator[Tuple[str, Recorded]]:
    """A domain served by the real dom0 agent, after the datasource's fetch."""
    domain = stack.add_domain("vm1", sample_bundle("vm1"))
    stack.start_agent()
    stack.fetch("vm1")
    yield domain.link, Recorded(stack)


def with_guest_facts(root: str, interface: str = "eth0") -> str:
    write(f"{root}/etc/ssh/ssh_host_ed25519_key.pub", ED25519 + " root@template\n")
    write(f"{root}/etc/ssh/ssh_host_ed25519_key", PRIVATE, 0o600)
    write(f"{root}/sys/class/net/{interface}/type", "1\n")
    write(f"{root}/sys/class/net/{interface}/address", "00:16:3e:00:00:01\n")
    return root


def test_the_report_says_degraded_with_the_recoverable_errors(host, tmp_path) -> None:
    link, recorder = host
    v1 = {"datasource": XENCHANNEL, "errors": [], "recoverable_errors": {"WARNING": ["w1"]}}
    status = {
        "v1": {
            "datasource": "xenchannel",
            "init": {"errors": [], "recoverable_errors": {"WARNING": ["w1"]}},
            "modules-final": {"errors": [], "recoverable_errors": {"DEPRECATED": ["d1"]}},
            "stage": None,
        }
    }
    root = with_guest_facts(guest_root(tmp_path, link, v1, status))
    rc, out = run(root)
    assert rc == 0, out
    status, body = recorder.wait_status()
    assert (status["state"], status["instance_id"]) == ("applied", "iid-vm1")
    assert body["cloud_init"] == "degraded"
    assert body["recoverable_errors"] == ["WARNING: w1", "DEPRECATED: d1"]
    assert "errors" not in body
    assert body["host_keys"] == [ED25519]
    assert body["interfaces"][0]["name"] == "eth0"
    assert body["interfaces"][0]["mac"] == "00:16:3e:00:00:01"
    assert body["hostname"] == socket.gethostname()  # the running one, not the tree's
    assert "SECRET" not in json.dumps(body)


def test_the_report_says_error_and_the_state_is_failed(host, tmp_path) -> None:
    link, recorder = host
    v1 = {"datasource": XENCHANNEL, "errors": ["module foo failed"]}
    rc, out = run(guest_root(tmp_path, link, v1))
    assert rc == 0, out
    status, report = recorder.wait_status()
    assert status["state"] == "failed" and status["reason"] == "cloud-init: module foo failed"
    assert report["cloud_init"] == "error" and report["errors"] == ["module foo failed"]


def test_an_old_result_json_without_status_json_says_done(host, tmp_path) -> None:
    link, recorder = host
    rc, out = run(guest_root(tmp_path, link, {"datasource": XENCHANNEL, "errors": []}))
    assert rc == 0, out
    status, report = recorder.wait_status()
    assert status["state"] == "applied" and report["cloud_init"] == "done"
    assert "errors" not in report and "recoverable_errors" not in report


@pytest.mark.root
def test_waits_for_the_static_addresses_then_reports_them(host, tmp_path) -> None:
    """In a network namespace: the bundle's address comes up a second after the script
    starts; the script waits for it and the report shows it; one that never comes up
    costs at most --address-wait and is reported without."""
    link, recorder = host
    v1 = {"datasource": XENCHANNEL, "errors": []}
    addresses = ["192.0.2.10", "2001:db8::10", "192.0.2.99"]
    root = with_guest_facts(guest_root(tmp_path, link, v1, addresses=addresses), "veth0")
    setup = (
        "set -e; ip link add veth0 type veth peer name veth1; ip link set veth0 up; "
        "ip link set veth1 up; ip addr add 2001:db8::10/64 dev veth0 nodad; "
        '(sleep 1; ip addr add 192.0.2.10/24 dev veth0) & exec "$@"'
    )
    start = time.monotonic()
    rc, out = run(
        root,
        *("--address-wait", "3", "--settle-wait", "0"),
        prefix=["unshare", "--net", "--", "sh", "-c", setup, "sh"],
    )
    assert rc == 0, out
    assert "network: not up after 3 s: 192.0.2.99; reporting anyway" in out, out
    assert time.monotonic() - start < 30
    veth0 = recorder.wait_status()[1]["interfaces"][0]
    assert veth0["name"] == "veth0"
    assert {"192.0.2.10/24", "2001:db8::10/64"} <= set(veth0["addresses"]), veth0


@pytest.mark.root
@pytest.mark.parametrize("comes_up", [True, False], ids=["late", "never"])
def test_a_report_without_an_address_is_settling_then_reported_once_more(
    host, tmp_path, comes_up: bool
) -> None:
    """The address comes up only when the test says so ($GO), after the first report:
    that one says "settling" and dom0 holds it as not ready yet; the script watches and
    reports again, with the address, or at --settle-wait without it, as final."""
    link, recorder = host
    v1 = {"datasource": XENCHANNEL, "errors": []}
    root = with_guest_facts(guest_root(tmp_path, link, v1, addresses=["192.0.2.10"]), "veth0")
    go = os.path.join(root, "go")
    setup = (
        "set -e; ip link add veth0 type veth peer name veth1; ip link set veth0 up; "
        "ip link set veth1 up; "
        '(for i in $(seq 600); do [ -e "$GO" ] && break; sleep 0.1; done; '
        '[ -e "$GO" ] && ip addr add 192.0.2.10/24 dev veth0) >/dev/null 2>&1 & exec "$@"'
    )
    settle = "30" if comes_up else "2"
    argv = [sys.executable, SCRIPT, "--root", root, "--timeout", "3"]
    argv += ["--address-wait", "0.5", "--settle-wait", settle]
    script = subprocess.Popen(
        ["unshare", "--net", "--", "sh", "-c", setup, "sh", *argv],
        env=dict(runtime_env(), GO=go), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        first = recorder.stack.wait_state("vm1", lambda s: bool(s.get("report")), timeout=30)
        assert first["report"]["settling"] == int(settle)
        assert "192.0.2.10/24" not in addresses(first["report"])
        if comes_up:
            write(go, "")
        final = recorder.stack.wait_state(
            "vm1", lambda s: not (s.get("report") or {}).get("settling"), timeout=40
        )
        out = script.communicate(timeout=40)[0]
    finally:
        if script.poll() is None:
            script.kill()
            script.communicate()
        write(go, "")  # ends the background loop in every case
    assert script.returncode == 0, out
    assert final["status"]["state"] == "applied"
    assert ("192.0.2.10/24" in addresses(final["report"])) is comes_up, final["report"]
    if not comes_up:
        assert "still without 192.0.2.10 after 2 s; reporting so" in out, out


def addresses(report: Dict[str, Any]) -> List[str]:
    return [a for i in report["interfaces"] for a in i["addresses"]]
