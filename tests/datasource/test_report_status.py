"""datasource/xenchannel-report-status against a live Stack (real dom0 agent)."""

import json
import os
import subprocess
import sys
import time
from typing import Iterator, Tuple

import pytest

from testbed.stack import Stack, delivered, runtime_env

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "datasource", "xenchannel-report-status")


@pytest.fixture
def stack() -> Iterator[Stack]:
    s = Stack()
    try:
        yield s
    finally:
        s.close()


def guest_root(tmp_path, link: str, v1: dict) -> str:
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "run/cloud-init"))
    os.makedirs(os.path.join(root, "var/lib/cloud/data"))
    with open(os.path.join(root, "run/cloud-init/result.json"), "w") as f:
        json.dump({"v1": v1}, f)
    with open(os.path.join(root, "var/lib/cloud/data/xenchannel.json"), "w") as f:
        json.dump({"instance-id": "iid-vm1", "channel": link, "platform-uuid": None}, f)
    return root


def run(root: str, *extra: str) -> Tuple[int, str]:
    result = subprocess.run(  # noqa: PLW1510 - the return code is asserted
        [sys.executable, SCRIPT, "--root", root, "--timeout", "3", *extra],
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
