"""plugins/modules/channel_status.py, driven through the real AnsibleModule machinery."""

import os
import threading
import time
from typing import Any, Dict, Iterator, Optional

import pytest
from ansible_collections.xenchannel.provision.plugins.modules import channel_status

from tests.unit.plugins.modules._harness import fail_module, run_module
from xenchannel.dom0.state import new_state, save_state
from xenchannel.dom0.store import load_domain, write_domain
from xenchannel.protocol import Bundle


@pytest.fixture
def dirs(tmp_path: Any) -> Dict[str, str]:
    run = tmp_path / "run"
    run.mkdir()
    return {
        "store_dir": str(tmp_path / "store"),
        "state_dir": str(tmp_path / "state"),
        "socket_root": str(run),
    }


@pytest.fixture
def digest(dirs: Dict[str, str]) -> str:
    """The store holds vm1's bundle; its digest."""
    bundle = Bundle({"instance-id": "iid-vm1", "local-hostname": "vm1"}, b"#cloud-config\n")
    write_domain(dirs["store_dir"], "vm1", os.path.join(dirs["socket_root"], "vm1.sock"), bundle)
    return load_domain(dirs["store_dir"], "vm1", dirs["socket_root"]).digest


def record(
    dirs: Dict[str, str],
    bundle_sha: Optional[str] = None,
    delivered_sha: Optional[str] = None,
    status: Optional[Dict[str, Any]] = None,
    error: Optional[str] = None,
    report: Optional[Dict[str, Any]] = None,
) -> None:
    """Write vm1's state record as the agent would."""
    state = new_state("vm1", os.path.join(dirs["socket_root"], "vm1.sock"))
    state["connected"] = True
    state["handshake"] = {"at": "2026-01-01T00:00:00.000Z", "version": 1, "guest_agent": "t"}
    if bundle_sha:
        state["bundle"] = {"sha256": bundle_sha, "instance_id": "iid-vm1", "size": 10}
    if delivered_sha:
        state["delivered"] = {
            "at": "2026-01-01T00:00:01.000Z",
            "sha256": delivered_sha,
            "instance_id": "iid-vm1",
            "count": 1,
        }
    if status:
        state["status"] = {"at": "2026-01-01T00:00:02.000Z", "instance_id": "iid-vm1", **status}
    if report is not None:
        # Sent with the STATUS: the agent records both at the same moment.
        state["report"] = {"at": "2026-01-01T00:00:02.000Z", "instance_id": "iid-vm1", **report}
    if error:
        state["last_error"] = {"at": "2026-01-01T00:00:03.000Z", "message": error}
    state["updated_at"] = "2026-01-01T00:00:04.000Z"
    save_state(dirs["state_dir"], state)


def args(dirs: Dict[str, str], **extra: Any) -> Dict[str, Any]:
    return {"domain": "vm1", **dirs, **extra}


@pytest.fixture
def later() -> Iterator[Any]:
    """later(delay, fn): run fn in a thread after delay seconds; joined at the end."""
    threads = []

    def start(delay: float, fn: Any) -> None:
        def run() -> None:
            time.sleep(delay)
            fn()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)

    yield start
    for thread in threads:
        thread.join(timeout=10)


def test_reads_the_record_and_its_summary(dirs: Dict[str, str], digest: str) -> None:
    record(dirs, bundle_sha=digest, delivered_sha=digest, status={"state": "applied"})
    result = run_module(channel_status.main, args(dirs))
    assert result["changed"] is False
    assert result["reached"] is True
    assert result["store_sha256"] == digest
    assert result["record"]["delivered"]["sha256"] == digest
    assert result["summary"]["delivered"] == "yes"
    assert result["summary"]["status"] == "applied"
    assert result["summary"]["connected"] == "yes"


def test_no_record_yet_reads_as_nothing_happened(dirs: Dict[str, str]) -> None:
    result = run_module(channel_status.main, args(dirs, _ansible_check_mode=True))
    assert result["changed"] is False
    assert result["summary"]["delivered"] == "no"
    assert result["summary"]["connected"] == "no"
    assert result["store_sha256"] is None
    assert not os.path.exists(dirs["state_dir"])


def test_wait_for_delivered_is_reached_when_the_agent_records_it(
    dirs: Dict[str, str], digest: str, later: Any
) -> None:
    record(dirs, bundle_sha=digest)
    later(0.3, lambda: record(dirs, bundle_sha=digest, delivered_sha=digest))
    start = time.monotonic()
    result = run_module(
        channel_status.main, args(dirs, wait_for="delivered", timeout=10, poll_interval=0.05)
    )
    assert result["reached"] is True
    assert result["summary"]["delivered"] == "yes"
    assert 0.25 < time.monotonic() - start < 5


def test_delivered_means_the_bundle_the_store_holds_now(dirs: Dict[str, str], digest: str) -> None:
    # The agent has not yet noticed a new bundle: its record still says the old one was
    # delivered, which summarise() calls "yes"; the store holds another one.
    record(dirs, bundle_sha="0" * 64, delivered_sha="0" * 64)
    result = fail_module(
        channel_status.main, args(dirs, wait_for="delivered", timeout=0.3, poll_interval=0.05)
    )
    assert result["summary"]["delivered"] == "yes"
    assert result["reached"] is False
    assert result["msg"].startswith("timed out after 0.3 s waiting for vm1 to be delivered")


def test_timeout_is_bounded_and_names_the_agents_last_error(
    dirs: Dict[str, str], digest: str
) -> None:
    record(dirs, bundle_sha=digest, error="cannot connect to /run/x/vm1.sock: refused")
    start = time.monotonic()
    result = fail_module(
        channel_status.main, args(dirs, wait_for="applied", timeout=0.5, poll_interval=0.2)
    )
    elapsed = time.monotonic() - start
    assert 0.5 <= elapsed < 2
    assert result["msg"] == (
        "timed out after 0.5 s waiting for vm1 to be applied; last error from the agent: "
        "cannot connect to /run/x/vm1.sock: refused"
    )
    assert result["changed"] is False


@pytest.mark.parametrize("wait_for", ["connected", "delivered", "applied"])
def test_without_a_store_entry_a_wait_fails_at_once_naming_the_fix(
    dirs: Dict[str, str], wait_for: str
) -> None:
    """The agent serves only domains of its store: waiting for one without an entry
    would only ever time out."""
    start = time.monotonic()
    result = fail_module(
        channel_status.main, args(dirs, wait_for=wait_for, timeout=30, poll_interval=0.1)
    )
    assert time.monotonic() - start < 5
    entry = os.path.join(dirs["store_dir"], "vm1", "domain.json")
    assert result["msg"] == (
        f"vm1 has no entry in the agent's store ({entry} does not exist), so the agent "
        f"does not serve it and it can never be {wait_for}; write the entry first with "
        "xenchannel.provision.channel_metadata, or check the domain and store_dir options"
    )
    assert result["reached"] is False and result["store_sha256"] is None


def test_an_unusable_store_entry_fails_at_once_with_the_stores_sentence(
    dirs: Dict[str, str], digest: str
) -> None:
    entry = os.path.join(dirs["store_dir"], "vm1", "domain.json")
    os.chmod(entry, 0o644)
    start = time.monotonic()
    result = fail_module(
        channel_status.main, args(dirs, wait_for="delivered", timeout=30, poll_interval=0.1)
    )
    assert time.monotonic() - start < 5
    assert result["msg"].startswith(
        "the agent does not serve vm1, so it can never be delivered: its store entry is "
        f"unusable: {entry} is readable or writable by group or others (mode 0644)"
    ), result["msg"]


def test_reading_once_without_a_store_entry_is_not_a_failure(dirs: Dict[str, str]) -> None:
    result = run_module(channel_status.main, args(dirs))
    assert result["reached"] is True and result["store_sha256"] is None


def test_a_failed_report_fails_at_once_with_its_reason(dirs: Dict[str, str], digest: str) -> None:
    record(
        dirs,
        bundle_sha=digest,
        delivered_sha=digest,
        status={"state": "failed", "reason": "netplan apply failed: eth9 not found"},
    )
    start = time.monotonic()
    result = fail_module(
        channel_status.main, args(dirs, wait_for="applied", timeout=30, poll_interval=0.1)
    )
    assert time.monotonic() - start < 2
    assert "reported that applying instance-id iid-vm1 failed" in result["msg"]
    assert "netplan apply failed: eth9 not found" in result["msg"]


def test_an_earlier_failure_does_not_count_for_a_new_delivery(
    dirs: Dict[str, str], digest: str
) -> None:
    record(dirs, bundle_sha=digest, delivered_sha=digest, status={"state": "failed"})
    # Redelivered after the failure report: that report is about the previous delivery.
    state_file = os.path.join(dirs["state_dir"], "vm1.json")
    with open(state_file) as handle:
        text = handle.read()
    with open(state_file, "w") as handle:
        handle.write(text.replace("2026-01-01T00:00:01.000Z", "2026-01-01T00:00:09.000Z"))
    result = fail_module(
        channel_status.main, args(dirs, wait_for="applied", timeout=0.2, poll_interval=0.05)
    )
    assert result["msg"].startswith("timed out after 0.2 s waiting for vm1 to be applied")


def test_wait_for_applied_and_connected(dirs: Dict[str, str], digest: str) -> None:
    record(dirs, bundle_sha=digest, delivered_sha=digest, status={"state": "applied"})
    for level in ("connected", "delivered", "applied"):
        result = run_module(channel_status.main, args(dirs, wait_for=level, timeout=1))
        assert result["reached"] is True, level


HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEIdFCfqlznO98dpr+EHwLcE6nJGWY+PMvU+slK45pQB"


def a_report(**extra: Any) -> Dict[str, Any]:
    return {
        "hostname": "vm1",
        "cloud_init": "done",
        "interfaces": [
            {"name": "enX0", "mac": "00:16:3e:00:00:01", "addresses": ["fe80::1/64", "10.0.0.5/24"]}
        ],
        "host_keys": [HOST_KEY],
        "missing": [],
        **extra,
    }


def test_wait_for_ready_returns_the_report_and_the_address(
    dirs: Dict[str, str], digest: str, later: Any
) -> None:
    record(dirs, bundle_sha=digest, delivered_sha=digest)
    applied = {"state": "applied"}
    later(0.3, lambda: record(dirs, digest, digest, status=applied, report=a_report()))
    result = run_module(
        channel_status.main, args(dirs, wait_for="ready", timeout=10, poll_interval=0.05)
    )
    assert result["reached"] is True
    assert result["ready"] == {"state": "yes", "why": None}
    assert result["address"] == "10.0.0.5"  # not the link-local one
    assert result["report"]["host_keys"] == [HOST_KEY]
    assert result["summary"]["ready"] == "yes"


def test_reading_once_says_why_a_clone_is_not_ready(dirs: Dict[str, str], digest: str) -> None:
    record(dirs, bundle_sha=digest, delivered_sha=digest)
    result = run_module(channel_status.main, args(dirs))
    assert result["ready"] == {
        "state": "no",
        "why": "the guest has not reported on instance-id iid-vm1 yet",
    }
    assert result["report"] == {} and result["address"] is None


@pytest.mark.parametrize(
    ("status", "report", "sentence"),
    [
        pytest.param(
            {"state": "applied"},
            a_report(missing=["10.0.0.7"]),
            "vm1 is not usable: the guest reported without the static address(es) 10.0.0.7 "
            "up (it has enX0 00:16:3e:00:00:01 fe80::1/64 10.0.0.5/24); make the "
            "network-config match the clone's interfaces by MAC",
            id="address-missing",
        ),
        pytest.param(
            {"state": "applied"},
            a_report(cloud_init="error", errors=["module x failed"]),
            "vm1 is not usable: cloud-init finished with errors: module x failed",
            id="cloud-init-error",
        ),
        pytest.param(
            {"state": "failed", "reason": "cloud-init: boom"},
            a_report(cloud_init="error", errors=["boom"]),
            "the guest vm1 reported that applying instance-id iid-vm1 failed: cloud-init: boom",
            id="failed",
        ),
    ],
)
def test_a_clone_that_cannot_become_ready_fails_at_once(
    dirs: Dict[str, str], digest: str, status: Dict[str, Any], report: Dict[str, Any], sentence: str
) -> None:
    record(dirs, bundle_sha=digest, delivered_sha=digest, status=status, report=report)
    start = time.monotonic()
    result = fail_module(
        channel_status.main, args(dirs, wait_for="ready", timeout=30, poll_interval=0.1)
    )
    assert time.monotonic() - start < 5
    assert result["msg"].startswith(sentence), result["msg"]
    assert result["reached"] is False


def test_a_guest_without_reports_times_out_saying_why(dirs: Dict[str, str], digest: str) -> None:
    record(dirs, bundle_sha=digest, delivered_sha=digest, status={"state": "applied"})
    result = fail_module(
        channel_status.main, args(dirs, wait_for="ready", timeout=0.2, poll_interval=0.05)
    )
    assert result["msg"].startswith("timed out after 0.2 s waiting for vm1 to be ready")
    assert result["msg"].endswith(
        "not ready because the guest reported applied without a report of its addresses "
        "and host keys: its xenchannel runtime predates reports; update the template's "
        "guest role"
    )


@pytest.mark.parametrize(
    ("extra", "sentence"),
    [
        pytest.param({"domain": "a/b"}, "is not valid", id="domain"),
        pytest.param({"timeout": -1}, "timeout must be 0 or more", id="timeout"),
        pytest.param({"poll_interval": 0}, "poll_interval must be more than 0", id="poll"),
        pytest.param({"wait_for": "booted"}, "value of wait_for must be one of", id="wait_for"),
    ],
)
def test_bad_options_fail_with_a_sentence(
    dirs: Dict[str, str], extra: Dict[str, Any], sentence: str
) -> None:
    assert sentence in fail_module(channel_status.main, args(dirs, **extra))["msg"]
