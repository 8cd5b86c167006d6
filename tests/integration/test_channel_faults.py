"""The whole core under faults: real agent process, real simulator, real guest client.

Each test names the fault it injects; each asserts what the guest received and what the
agent recorded.  Every wait is bounded by the client's config or by ``wait_state``.
"""

import json
import os
import signal
import socket as socketlib
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional

import pytest

from testbed.simulator import SimulatorOptions
from testbed.stack import Stack, delivered, delivered_count, runtime_env, sample_bundle
from xenchannel import protocol as P
from xenchannel import session as S
from xenchannel.dom0.store import remove_domain, write_domain
from xenchannel.guest import ChannelDevice, ClientConfig
from xenchannel.session import BundleBegin, BundleEnd


@pytest.fixture
def stack():
    s = Stack()
    yield s
    s.close()


def big_bundle(name: str, size: int) -> P.Bundle:
    return sample_bundle(name, user_data=os.urandom(size))


class RawGuest:
    """A guest that speaks frames directly, to send what GuestClient never would."""

    def __init__(self, path: str) -> None:
        self.device = ChannelDevice.open(path, 5.0, 2.0)
        self.decoder = P.FrameDecoder()
        self.request_id = P.new_request_id()

    def send(self, mtype: P.MessageType, body: Dict[str, Any], request_id: int = 0) -> int:
        request_id = request_id or P.next_request_id(self.request_id)
        self.request_id = request_id
        self.device.write(P.encode_message(mtype, body, request_id), 5.0)
        return request_id

    def frames(self, until: float, want: Optional[P.MessageType] = None) -> List[P.Frame]:
        got: List[P.Frame] = []
        deadline = time.monotonic() + until
        while time.monotonic() < deadline:
            for item in self.decoder.feed(self.device.read(deadline - time.monotonic())):
                if isinstance(item, P.Frame) and item.is_from(P.Sender.HOST):
                    got.append(item)
                    if want is not None and item.type == want:
                        return got
        return got

    def hello(self, extra: Optional[Dict[str, Any]] = None) -> str:
        body = {"nonce": P.new_nonce(), "versions": [1], "agent": "raw-test"}
        body.update(extra or {})
        for _ in range(20):
            rid = self.send(P.MessageType.HELLO, body)
            for frame in self.frames(0.5, P.MessageType.WELCOME):
                if frame.type == P.MessageType.WELCOME and frame.request_id == rid:
                    session = frame.json()["session"]
                    assert isinstance(session, str)
                    return session
        raise AssertionError("no WELCOME")

    def close(self) -> None:
        self.device.close()


# ---------------------------------------------------------------- the happy path


def test_first_boot_delivers_verifies_and_records(stack: Stack) -> None:
    stack.add_domain("vm1")
    stack.start_agent()
    with stack.client("vm1") as client:
        bundle = client.fetch_bundle()
        assert client.report_status("applied", instance_id="iid-vm1")
    assert bundle == sample_bundle("vm1")
    state = stack.wait_state("vm1", lambda s: s.get("status", {}).get("state") == "applied")
    assert delivered(state)
    assert state["delivered"]["count"] == 1
    assert state["delivered"]["instance_id"] == "iid-vm1"
    assert state["handshake"]["version"] == P.CURRENT_VERSION
    assert state["connected"] is True


def test_three_boots_in_a_row_get_the_same_bundle(stack: Stack) -> None:
    bundle = big_bundle("vm1", 50_000)
    stack.add_domain("vm1", bundle)
    stack.start_agent()
    for boot in range(1, 4):
        assert stack.fetch("vm1") == bundle
        stack.wait_state("vm1", delivered_count(boot))


# ---------------------------------------------------------------- channel faults


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(SimulatorOptions(rate=None, echo=True), id="cooked-tty-echo"),
        pytest.param(
            SimulatorOptions(rate=None, garbage="both", garbage_interval=0.005, garbage_seed=7),
            id="garbage-both-ways",
        ),
        pytest.param(SimulatorOptions(rate=128 * 1024), id="throttled-128KiB"),
        pytest.param(SimulatorOptions(rate=None, keep_host_bytes=False), id="early-bytes-dropped"),
        pytest.param(
            SimulatorOptions(rate=None, echo=True, garbage="to_host", garbage_seed=1),
            id="echo-and-modem-probes",
        ),
    ],
)
def test_delivery_survives_channel_behaviour(stack: Stack, options: SimulatorOptions) -> None:
    bundle = big_bundle("vm1", 200_000)
    stack.add_domain("vm1", bundle, options)
    stack.start_agent()
    assert stack.fetch("vm1") == bundle
    stack.wait_state("vm1", delivered)


def test_stale_frames_of_an_interrupted_boot_are_ignored(stack: Stack) -> None:
    """A guest that died mid-transfer leaves the rest of it in the ring for the next boot."""
    bundle = big_bundle("vm1", 300_000)
    stack.add_domain("vm1", bundle, SimulatorOptions(rate=None))
    stack.start_agent()
    raw = RawGuest(stack.domains["vm1"].link)
    session = raw.hello()
    raw.send(P.MessageType.GET_BUNDLE, {"session": session})
    first = raw.frames(2.0, P.MessageType.BUNDLE_BEGIN)
    assert any(f.type == P.MessageType.BUNDLE_BEGIN for f in first)
    raw.close()  # the guest "crashes"; the agent's remaining chunks pile up in the ring
    time.sleep(0.5)
    with stack.client("vm1") as client:
        assert client.fetch_bundle() == bundle
    stack.wait_state("vm1", delivered_count(1))


def test_connection_cut_mid_frame_is_resumed(stack: Stack) -> None:
    bundle = big_bundle("vm1", 200_000)
    stack.add_domain("vm1", bundle, SimulatorOptions(rate=None, cut_host_after=70_000))
    stack.start_agent()
    assert stack.fetch("vm1") == bundle
    stack.wait_state("vm1", delivered)
    assert stack.domains["vm1"].channel.stats.host_connections >= 2


def test_agent_restart_mid_transfer(stack: Stack) -> None:
    bundle = big_bundle("vm1", 400_000)  # about 3 s at 128 KiB/s
    stack.add_domain("vm1", bundle, SimulatorOptions(rate=128 * 1024))
    stack.start_agent()
    result: Dict[str, Any] = {}

    def guest() -> None:
        try:
            result["bundle"] = stack.fetch("vm1")
        except P.ChannelError as exc:  # pragma: no cover - reported by the assert below
            result["error"] = exc

    thread = threading.Thread(target=guest)
    thread.start()
    stack.wait_state("vm1", lambda s: bool(s.get("handshake")))
    time.sleep(1.0)
    stack.stop_agent(signal.SIGKILL)
    stack.start_agent()
    thread.join(60)
    assert not thread.is_alive()
    assert result.get("bundle") == bundle, result.get("error")
    stack.wait_state("vm1", delivered)


def test_one_client_at_a_time_like_qemu(stack: Stack) -> None:
    """A second client (a stray socat) holds nothing up once it is gone."""
    stack.add_domain("vm1")
    intruder = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    intruder.connect(stack.domains["vm1"].socket)  # first client: the agent must wait
    stack.start_agent()
    time.sleep(0.5)
    intruder.close()
    assert stack.fetch("vm1") == sample_bundle("vm1")


# ---------------------------------------------------------------- domains come and go


def test_socket_absent_until_the_domain_starts(stack: Stack) -> None:
    stack.add_domain("vm1", start_channel=False)
    stack.start_agent()
    time.sleep(1.0)
    assert not stack.state_of("vm1").get("connected")
    stack.start_channel("vm1")
    assert stack.fetch("vm1") == sample_bundle("vm1")
    stack.wait_state("vm1", delivered)


def test_domain_removed_while_connected(stack: Stack) -> None:
    stack.add_domain("vm1")
    stack.start_agent()
    stack.wait_state("vm1", lambda s: s.get("connected") is True)
    remove_domain(stack.store, "vm1")
    stack.wait_state("vm1", lambda s: s.get("active") is False and not s.get("connected"))
    config = ClientConfig(wait_timeout=1, connect_timeout=1.5, hello_interval=0.2)
    started = time.monotonic()
    with pytest.raises(P.ChannelTimeout, match="no answer from the dom0 agent"):
        stack.fetch("vm1", config)
    assert time.monotonic() - started < 5


def test_bundle_changed_while_running_is_served_next_boot(stack: Stack) -> None:
    stack.add_domain("vm1")
    stack.start_agent()
    assert stack.fetch("vm1") == sample_bundle("vm1")
    changed = sample_bundle("vm1", user_data=b"#cloud-config\nnew: true\n")
    write_domain(stack.store, "vm1", stack.domains["vm1"].socket, changed)
    stack.wait_state("vm1", lambda s: s.get("bundle", {}).get("sha256") == changed.digest())
    assert stack.fetch("vm1") == changed


# ---------------------------------------------------------------- peers that misbehave


def test_no_agent_guest_gives_up_within_its_bound(stack: Stack) -> None:
    stack.add_domain("vm1")
    config = ClientConfig(wait_timeout=1, connect_timeout=1.0, hello_interval=0.2)
    started = time.monotonic()
    with pytest.raises(P.ChannelTimeout, match="no answer from the dom0 agent"):
        stack.fetch("vm1", config)
    assert time.monotonic() - started < 3


def test_query_to_a_guest_that_never_answers_is_bounded(stack: Stack) -> None:
    stack.add_domain("vm1")
    stack.start_agent()
    stack.wait_state("vm1", lambda s: s.get("connected") is True)
    started = time.monotonic()
    out = _query("vm1", stack, timeout=1.0)
    assert out.returncode == 1
    assert "vm1" in out.stderr
    assert time.monotonic() - started < 8


def test_query_answered_by_the_guest(stack: Stack) -> None:
    stack.add_domain("vm1")
    stack.start_agent()
    stack.wait_state("vm1", lambda s: s.get("connected") is True)
    answered: Dict[str, int] = {}

    def guest() -> None:
        with stack.client("vm1") as client:
            answered["n"] = client.serve_queries(
                lambda keys: {k: f"answer-{k}" for k in keys}, 8.0, lambda: "n" in answered
            )

    thread = threading.Thread(target=guest)
    thread.start()
    time.sleep(0.5)
    out = _query("vm1", stack, timeout=5.0, what="version,uptime")
    answered.setdefault("n", -1)
    thread.join(15)
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    assert reply == {"version": "answer-version", "uptime": "answer-uptime"}


def _query(name: str, stack: Stack, timeout: float, what: str = "version") -> Any:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "xenchannel.dom0",
            "query",
            name,
            "--what",
            what,
            "--timeout",
            str(timeout),
            "--control-socket",
            stack.control,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=runtime_env(),
        check=False,
    )


def test_oversized_frame_from_a_guest_is_refused_and_service_goes_on(stack: Stack) -> None:
    stack.add_domain("vm1")
    stack.start_agent()
    raw = RawGuest(stack.domains["vm1"].link)
    huge = P.encode_frame(P.MessageType.STATUS, b"x" * 2_000_000, 5, max_payload=4_000_000)
    raw.device.write(huge, 30.0)
    raw.close()
    assert stack.fetch("vm1") == sample_bundle("vm1")
    stack.stop_agent()
    assert "oversized" in stack.log()


def test_version_mismatch_is_a_clear_error_on_both_sides(stack: Stack) -> None:
    stack.add_domain("vm1")
    stack.start_agent()
    # A guest newer than the agent: it speaks only versions the agent does not.
    newer = [P.CURRENT_VERSION + 1, P.CURRENT_VERSION + 2]
    config = ClientConfig(wait_timeout=2, connect_timeout=5, hello_interval=0.2, versions=newer)
    with pytest.raises(P.VersionMismatch) as caught:
        stack.fetch("vm1", config)
    message = str(caught.value)
    ours = ", ".join(str(v) for v in P.PROTOCOL_VERSIONS)
    assert ours in message and f"{newer[0]}, {newer[1]}" in message
    state = stack.wait_state("vm1", lambda s: bool(s.get("last_error")))
    assert "version" in state["last_error"]["message"]


def test_guests_cannot_claim_each_others_identity(stack: Stack) -> None:
    stack.add_domain("vm-a")
    stack.add_domain("vm-b")
    stack.start_agent()
    for me, other in (("vm-a", "vm-b"), ("vm-b", "vm-a")):
        raw = RawGuest(stack.domains[me].link)
        claim = {"domain": other, "instance-id": f"iid-{other}", "name": other}
        session = raw.hello(claim)
        body = {"session": session}
        body.update(claim)
        rid = raw.send(P.MessageType.GET_BUNDLE, body)
        receiver = S.BundleReceiver()
        bundle = None
        for frame in raw.frames(5.0, P.MessageType.BUNDLE_END):
            if frame.request_id != rid:
                continue
            if frame.type == P.MessageType.BUNDLE_BEGIN:
                receiver.begin(BundleBegin.parse(frame.json()))
            elif frame.type == P.MessageType.BUNDLE_CHUNK:
                receiver.chunk(frame.payload)
            elif frame.type == P.MessageType.BUNDLE_END:
                bundle = receiver.end(BundleEnd.parse(frame.json()))
        assert bundle == sample_bundle(me)
        raw.send(
            P.MessageType.STATUS,
            {"session": session, "state": "applied", "instance_id": f"iid-{other}"},
        )
        assert any(
            f.type == P.MessageType.STATUS_ACK for f in raw.frames(3.0, P.MessageType.STATUS_ACK)
        )
        raw.close()
    for me, other in (("vm-a", "vm-b"), ("vm-b", "vm-a")):
        state = stack.wait_state(me, lambda s: bool(s.get("status")))
        assert state["status"]["mismatch"] is True
        assert f"iid-{other}" in state["last_error"]["message"]
        assert state["bundle"]["instance_id"] == f"iid-{me}"


# ---------------------------------------------------------------- secrets


def test_no_secret_reaches_any_log_or_a_world_readable_file(stack: Stack, caplog: Any) -> None:
    """user-data, vendor-data and keys travel the whole stack and leave no trace."""
    secret_user = b"#cloud-config\npassword: user-SECRET-31337\n"
    secret_vendor = b"vendor-SECRET-4242"
    bundle = P.Bundle(
        {"instance-id": "iid-s", "local-hostname": "s1", "api-token": "meta-SECRET-777"},
        secret_user,
        secret_vendor,
        None,
    )
    stack.add_domain("s1", bundle, SimulatorOptions(rate=None, echo=True, garbage="both"))
    stack.start_agent()  # verbose: debug events logged too
    caplog.set_level("DEBUG")
    with stack.client("s1") as client:
        assert client.fetch_bundle() == bundle
        client.report_status("failed", reason="could not apply", instance_id="iid-s")
    stack.wait_state("s1", lambda s: s.get("status", {}).get("state") == "failed")
    stack.stop_agent()
    texts = {"agent log": stack.log(), "guest log": caplog.text}
    for root in (stack.state, stack.store):
        for directory, _, files in os.walk(root):
            for name in files:
                path = os.path.join(directory, name)
                mode = os.stat(path).st_mode & 0o777
                assert mode & 0o077 == 0, f"{path} is readable by others ({oct(mode)})"
                if root == stack.state:
                    with open(path) as handle:
                        texts[path] = handle.read()
    # The logs are not empty: they recorded the very events that carried the secrets.
    assert "event=delivered" in texts["agent log"] and "instance_id=iid-s" in texts["agent log"]
    assert "event=bundle-requested" in texts["agent log"]  # a debug event: verbose was on
    assert "bundle received" in texts["guest log"]
    for where, text in texts.items():
        for marker in ("user-SECRET", "vendor-SECRET", "meta-SECRET"):
            assert marker not in text, f"{marker} leaked into {where}"


def test_guest_cli_fetch_writes_private_seed_files(stack: Stack) -> None:
    """`python -m xenchannel.guest fetch --output DIR`: NoCloud-style files, 0600."""
    bundle = sample_bundle("vm1", user_data=b"#cloud-config\npassword: cli-SECRET\n")
    stack.add_domain("vm1", bundle)
    stack.start_agent()
    seed = os.path.join(stack.root, "seed")
    out = subprocess.run(
        [sys.executable, "-m", "xenchannel.guest", "--device", stack.domains["vm1"].link,
         "--connect-timeout", "10", "fetch", "--output", seed],
        capture_output=True, text=True, timeout=60, env=runtime_env(), check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["sha256"] == bundle.digest()
    assert "cli-SECRET" not in out.stdout  # shown as size and digest without --show-user-data
    assert sorted(os.listdir(seed)) == ["meta-data", "network-config", "user-data"]
    for name in os.listdir(seed):
        assert os.stat(os.path.join(seed, name)).st_mode & 0o777 == 0o600
    with open(os.path.join(seed, "user-data"), "rb") as handle:
        assert handle.read() == bundle.user_data
    with open(os.path.join(seed, "meta-data")) as handle:
        assert json.load(handle)["instance-id"] == "iid-vm1"
