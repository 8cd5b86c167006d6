"""The guest client against a tiny scripted host on a real pty.

The guest opens the pty slave by path through ``ChannelDevice`` (raw mode, lock, flush)
and runs ``GuestClient``; a thread plays the dom0 agent on the master fd with
``xenchannel.protocol`` only, following a per-test script.  The test keeps its own slave
fd open so the master never reads EIO.  Every wait is bounded.
"""

import hashlib
import os
import pty
import select
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from xenchannel.guest import ChannelDevice, ClientConfig, GuestClient
from xenchannel.protocol import (
    Bundle,
    ChannelError,
    ChannelTimeout,
    Frame,
    FrameDecoder,
    MessageType,
    RemoteError,
    VersionMismatch,
    encode_message,
)
from xenchannel.session import encode_chunk, error_message

SLACK = 0.75  # scheduling slack on a busy test machine
STEP = 2.0  # how long the host waits for the guest's next frame
CHUNK = 1024
BUNDLE = Bundle(
    {"instance-id": "i-0123456789", "local-hostname": "guest1"},
    user_data=b"#cloud-config\n" + bytes(range(256)) * 20,  # 0xFF and 0xFE: stuffing
    network_config={"version": 2, "ethernets": {}},
)
ENCODED = BUNDLE.encode()
DIGEST = hashlib.sha256(ENCODED).hexdigest()
CHUNKS = (len(ENCODED) + CHUNK - 1) // CHUNK
assert CHUNKS >= 4


def config(**overrides: Any) -> ClientConfig:
    values: Dict[str, Any] = {
        "wait_timeout": 1.0,
        "lock_timeout": 1.0,
        "connect_timeout": 2.0,
        "hello_interval": 0.2,
        "hello_max_interval": 0.5,
        "idle_timeout": 1.0,
        "transfer_timeout": 10.0,
        "ack_timeout": 0.5,
        "retries": 2,
    }
    values.update(overrides)
    return ClientConfig(**values)


# ----------------------------------------------------------------------------- the host


class _Stop(Exception):
    """The test is over: the host script ends."""


class Host:
    """The dom0 side of the pty: reads guest frames with deadlines, writes frames."""

    def __init__(self, master: int) -> None:
        self.fd = master
        self.decoder = FrameDecoder()
        self.frames: List[Tuple[float, Frame]] = []  # every guest frame, as it arrived
        self._queue: List[Frame] = []
        self.echo = False  # send every received byte straight back, like a cooked tty
        self.stop = threading.Event()
        self.error: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None

    # -- running a script

    def run(self, script: Callable[["Host"], None]) -> None:
        def main() -> None:
            try:
                script(self)
            except _Stop:
                pass
            except BaseException as exc:
                self.error = exc

        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()

    def join(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
            assert not self._thread.is_alive(), "the host script did not finish"
            self._thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    # -- reading

    def _fill(self, deadline: float) -> None:
        if self.stop.is_set():
            raise _Stop()
        remaining = min(deadline - time.monotonic(), 0.1)
        if remaining <= 0 or not select.select([self.fd], [], [], remaining)[0]:
            return
        try:
            data = os.read(self.fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        if self.echo:
            self.send(data)
        now = time.monotonic()
        for item in self.decoder.feed(data):
            if isinstance(item, Frame):
                self.frames.append((now, item))
                self._queue.append(item)

    def next_frame(self, timeout: float = STEP) -> Optional[Frame]:
        deadline = time.monotonic() + timeout
        while not self._queue:
            if time.monotonic() >= deadline:
                return None
            self._fill(deadline)
        return self._queue.pop(0)

    def expect(self, mtype: MessageType, timeout: float = STEP) -> Frame:
        """The guest's next frame of type ``mtype``; frames of other types are passed."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.next_frame(max(0.0, deadline - time.monotonic()))
            if frame is None:
                raise AssertionError(f"no {mtype.name} from the guest within {timeout:g} s")
            if frame.type == mtype:
                return frame

    def quiet(self, seconds: float) -> List[Frame]:
        """Read (without answering) for ``seconds``; returns what arrived."""
        out = []
        deadline = time.monotonic() + seconds
        while True:
            frame = self.next_frame(max(0.0, deadline - time.monotonic()))
            if frame is None:
                return out
            out.append(frame)

    def received(self, mtype: MessageType) -> List[Frame]:
        return [frame for _, frame in self.frames if frame.type == mtype]

    # -- writing

    def send(self, data: bytes, timeout: float = STEP) -> None:
        deadline = time.monotonic() + timeout
        view = memoryview(data)
        while view:
            if self.stop.is_set():
                raise _Stop()
            assert time.monotonic() < deadline, "the guest stopped reading the channel"
            if not select.select([], [self.fd], [], 0.05)[1]:
                continue
            try:
                view = view[os.write(self.fd, view) :]
            except BlockingIOError:
                continue

    def msg(self, mtype: MessageType, body: Dict[str, Any], request_id: int) -> None:
        self.send(encode_message(mtype, body, request_id))

    def knock(self, link: str) -> None:
        self.msg(MessageType.KNOCK, {"versions": [1], "link": link}, 0)

    def welcome(
        self, hello: Frame, session: str = "session-1", link: str = "link-1", nonce: str = ""
    ) -> None:
        body = {
            "nonce": nonce or hello.json()["nonce"],
            "session": session,
            "version": 1,
            "versions": [1],
            "link": link,
        }
        self.msg(MessageType.WELCOME, body, hello.request_id)

    def greet(self, session: str = "session-1", link: str = "link-1") -> Frame:
        hello = self.expect(MessageType.HELLO)
        self.welcome(hello, session, link)
        return hello

    def begin(self, get: Frame, first: int = 0) -> None:
        body = {
            "size": len(ENCODED),
            "chunk_size": CHUNK,
            "chunks": CHUNKS,
            "first": first,
            "sha256": DIGEST,
        }
        self.msg(MessageType.BUNDLE_BEGIN, body, get.request_id)

    def chunks(self, get: Frame, first: int, upto: int = CHUNKS, corrupt: bool = False) -> None:
        for seq in range(first, upto):
            data = ENCODED[seq * CHUNK : (seq + 1) * CHUNK]
            if corrupt and seq == 1:
                data = bytes([data[0] ^ 0x01]) + data[1:]
            self.send(encode_chunk(seq, data, get.request_id))

    def end(self, get: Frame, digest: str = DIGEST) -> None:
        self.msg(MessageType.BUNDLE_END, {"sha256": digest}, get.request_id)

    def serve(self, get: Frame, first: int = 0) -> None:
        self.begin(get, first)
        self.chunks(get, first)
        self.end(get)

    def ack(self, request: Frame) -> None:
        self.msg(MessageType.STATUS_ACK, {"recorded": True}, request.request_id)

    def expect_bundle_ack(self) -> Frame:
        ack = self.expect(MessageType.BUNDLE_ACK)
        assert ack.json()["sha256"] == DIGEST
        self.ack(ack)
        return ack


class Rig:
    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.host = Host(self.master)
        self._clients: List[GuestClient] = []

    def client(self, cfg: Optional[ClientConfig] = None) -> GuestClient:
        cfg = cfg or config()
        device = ChannelDevice.open(self.path, cfg.wait_timeout, cfg.lock_timeout)
        client = GuestClient(device, cfg)
        self._clients.append(client)
        return client

    def close(self) -> None:
        self.host.stop.set()
        try:
            self.host.join()
        finally:
            for client in self._clients:
                client.close()
            os.close(self.master)
            os.close(self.slave)


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    try:
        yield r
    finally:
        r.close()


def timed(fn: Callable[..., Any], *args: Any) -> Tuple[Any, float]:
    start = time.monotonic()
    result = fn(*args)
    return result, time.monotonic() - start


def raises_within(exc_type: type, bound: float, fn: Callable[[], Any]) -> Tuple[Any, float]:
    start = time.monotonic()
    with pytest.raises(exc_type) as info:
        fn()
    elapsed = time.monotonic() - start
    assert elapsed <= bound, f"took {elapsed:.2f} s, bound {bound:.2f} s"
    return info.value, elapsed


# ----------------------------------------------------------------------------- handshake


def test_handshake_drops_a_welcome_with_another_nonce(rig: Rig) -> None:
    client = rig.client(config(hello_interval=1.0))

    def script(host: Host) -> None:
        hello = host.expect(MessageType.HELLO)
        host.welcome(hello, session="stale-session", nonce="0" * 32)
        host.welcome(hello, session="good-session")

    rig.host.run(script)
    session = client.handshake()
    rig.host.join()
    hello = rig.host.received(MessageType.HELLO)[0]
    assert session.session_id == "good-session"
    assert session.nonce == hello.json()["nonce"]
    assert session.link == "link-1"
    assert session.version == 1
    assert client.frames_ignored >= 1
    assert client.session is session


def test_hellos_are_resent_with_back_off_until_answered(rig: Rig) -> None:
    client = rig.client(config(hello_interval=0.15, hello_max_interval=0.3))

    def script(host: Host) -> None:
        host.expect(MessageType.HELLO)
        host.expect(MessageType.HELLO)
        third = host.expect(MessageType.HELLO)
        host.welcome(third)

    rig.host.run(script)
    session = client.handshake()
    rig.host.join()
    hellos = rig.host.received(MessageType.HELLO)
    assert session.hellos == 3 == len(hellos)
    assert len({h.json()["nonce"] for h in hellos}) == 1  # same nonce every time
    assert len({h.request_id for h in hellos}) == 3
    times = [t for t, f in rig.host.frames if f.type == MessageType.HELLO]
    assert times[1] - times[0] >= 0.1
    assert times[2] - times[1] > times[1] - times[0]  # back-off


def test_knock_brings_a_prompt_hello_but_a_flood_is_rate_limited(rig: Rig) -> None:
    # A 6 s hello interval, so that a HELLO within 3 s of the KNOCK can only be its answer,
    # however busy the machine.
    client = rig.client(config(hello_interval=6.0, hello_max_interval=6.0, connect_timeout=12.0))
    flood: Dict[str, Any] = {}

    def script(host: Host) -> None:
        host.expect(MessageType.HELLO)
        time.sleep(0.3)  # past the 0.2 s rate limit
        knocked = time.monotonic()
        host.knock("link-1")
        host.expect(MessageType.HELLO, timeout=3.0)
        flood["prompt"] = time.monotonic() - knocked

        start = time.monotonic()
        hellos = []
        while time.monotonic() - start < 1.0:
            host.knock("link-1")
            frame = host.next_frame(0.01)
            if frame is not None and frame.type == MessageType.HELLO:
                hellos.append(frame)
        flood["hellos"] = len(hellos)
        host.welcome(hellos[-1])

    rig.host.run(script)
    session = client.handshake()
    rig.host.join()
    assert flood["prompt"] < 3.0  # well before the 6 s hello interval
    # At most five a second, plus the boundary; at least one (a slow machine may send
    # fewer KNOCKs in the second than the client could answer).
    assert 1 <= flood["hellos"] <= 6
    assert session.hellos == len(rig.host.received(MessageType.HELLO))


def test_handshake_times_out_when_nobody_answers(rig: Rig) -> None:
    client = rig.client(config(connect_timeout=0.6))
    error, elapsed = raises_within(ChannelTimeout, 0.6 + 1.0, client.handshake)
    assert elapsed >= 0.55
    assert "no answer from the dom0 agent" in str(error)
    assert rig.path in str(error)


def test_version_mismatch_names_both_sides(rig: Rig) -> None:
    client = rig.client()
    refusal = "no common protocol version: this side speaks 7, 8, the guest speaks 1"

    def script(host: Host) -> None:
        hello = host.expect(MessageType.HELLO)
        # An ERROR for a request the guest never made is not the answer.
        host.send(error_message("version-mismatch", "stale", (hello.request_id + 99) or 1))
        host.send(error_message("version-mismatch", refusal, hello.request_id))

    rig.host.run(script)
    error, _ = raises_within(VersionMismatch, 2.0, client.handshake)
    rig.host.join()
    message = str(error)
    assert "this side speaks 7, 8" in message
    assert "this guest speaks 1" in message
    assert "stale" not in message


# ----------------------------------------------------------------------------- fetch


def test_echoed_frames_are_ignored(rig: Rig) -> None:
    client = rig.client()

    def script(host: Host) -> None:
        host.echo = True
        host.greet()
        get = host.expect(MessageType.GET_BUNDLE)
        host.serve(get)
        host.expect_bundle_ack()

    rig.host.run(script)
    bundle = client.fetch_bundle()
    rig.host.join()
    assert bundle == BUNDLE
    assert client.frames_ignored >= 3  # the echoed HELLO, GET_BUNDLE and BUNDLE_ACK


def test_plain_fetch_acknowledges_once(rig: Rig) -> None:
    client = rig.client()

    def script(host: Host) -> None:
        host.greet(session="s-plain")
        get = host.expect(MessageType.GET_BUNDLE)
        assert get.json() == {"session": "s-plain"}
        host.serve(get)
        ack = host.expect_bundle_ack()
        assert ack.json() == {"session": "s-plain", "sha256": DIGEST}
        assert host.quiet(0.3) == []

    rig.host.run(script)
    assert client.fetch_bundle() == BUNDLE
    rig.host.join()
    assert len(rig.host.received(MessageType.BUNDLE_ACK)) == 1


def test_stale_knock_of_the_same_link_does_not_restart(rig: Rig) -> None:
    client = rig.client()

    def script(host: Host) -> None:
        host.greet(link="link-A")
        get = host.expect(MessageType.GET_BUNDLE)
        host.begin(get)
        host.chunks(get, 0, 2)
        host.knock("link-A")  # sent before the guest greeted, delivered late
        host.chunks(get, 2)
        host.end(get)
        host.expect_bundle_ack()

    rig.host.run(script)
    bundle = client.fetch_bundle()
    rig.host.join()
    assert bundle == BUNDLE
    assert len(rig.host.received(MessageType.HELLO)) == 1
    assert len(rig.host.received(MessageType.GET_BUNDLE)) == 1


def test_knock_of_a_new_link_greets_again_and_resumes(rig: Rig) -> None:
    client = rig.client()

    def script(host: Host) -> None:
        host.greet(session="s-old", link="link-A")
        get = host.expect(MessageType.GET_BUNDLE)
        host.begin(get)
        host.chunks(get, 0, 2)
        host.knock("link-B")  # the agent restarted: the old session is gone
        hello = host.expect(MessageType.HELLO)
        host.welcome(hello, session="s-new", link="link-B")
        again = host.expect(MessageType.GET_BUNDLE)
        assert again.json() == {"session": "s-new", "resume": {"sha256": DIGEST, "chunk": 2}}
        host.serve(again, first=2)
        host.expect_bundle_ack()

    rig.host.run(script)
    bundle = client.fetch_bundle()
    rig.host.join()
    assert bundle == BUNDLE
    first, second = rig.host.received(MessageType.HELLO)
    assert first.json()["nonce"] != second.json()["nonce"]
    assert client.session is not None
    assert client.session.session_id == "s-new"
    assert client.session.link == "link-B"


def test_stalled_transfer_resumes(rig: Rig) -> None:
    client = rig.client(config(idle_timeout=0.3))

    def script(host: Host) -> None:
        host.greet()
        get = host.expect(MessageType.GET_BUNDLE)
        host.begin(get)
        host.chunks(get, 0, 1)
        again = host.expect(MessageType.GET_BUNDLE)  # after idle_timeout
        assert again.request_id != get.request_id
        assert again.json()["resume"] == {"sha256": DIGEST, "chunk": 1}
        # The rest of the first answer, delivered late: its request id is dropped.
        host.chunks(get, 1)
        host.end(get, digest="0" * 64)
        host.serve(again, first=1)
        host.expect_bundle_ack()

    rig.host.run(script)
    bundle, elapsed = timed(client.fetch_bundle)
    rig.host.join()
    assert bundle == BUNDLE
    assert elapsed >= 0.3
    assert client.frames_ignored >= CHUNKS
    assert len(rig.host.received(MessageType.HELLO)) == 1  # same session throughout
    times = [t for t, f in rig.host.frames if f.type == MessageType.GET_BUNDLE]
    assert 0.25 <= times[1] - times[0] <= 0.3 + SLACK


def test_a_host_that_stalls_forever_gives_up_after_retries(rig: Rig) -> None:
    cfg = config(idle_timeout=0.25, retries=2, connect_timeout=1.0)
    client = rig.client(cfg)

    def script(host: Host) -> None:
        host.greet()
        get = host.expect(MessageType.GET_BUNDLE)
        host.begin(get)  # and never a chunk: no attempt makes progress
        host.quiet(5.0)

    rig.host.run(script)
    # One prompt handshake, then retries + 1 transfers of idle_timeout each.
    bound = 0.5 + (cfg.retries + 1) * cfg.idle_timeout + SLACK
    error, elapsed = raises_within(ChannelTimeout, bound, client.fetch_bundle)
    assert elapsed >= (cfg.retries + 1) * cfg.idle_timeout - 0.05
    assert f"failed {cfg.retries + 1} times" in str(error)
    assert "stalled" in str(error)
    assert len(rig.host.received(MessageType.GET_BUNDLE)) == cfg.retries + 1


def test_attempts_that_make_progress_are_not_counted_as_failures(rig: Rig) -> None:
    # retries=0, yet a host that stalls after every chunk still delivers the bundle:
    # each attempt moves the transfer forward, and transfer_timeout bounds them all.
    # idle_timeout is what each attempt waits for the host's next chunk: long enough for a
    # busy machine to run the host's script, short against transfer_timeout.
    cfg = config(idle_timeout=0.6, retries=0, transfer_timeout=20.0)
    client = rig.client(cfg)

    def script(host: Host) -> None:
        host.greet()
        for seq in range(CHUNKS):
            get = host.expect(MessageType.GET_BUNDLE)
            expected = {"session": "session-1"}
            if seq:
                expected["resume"] = {"sha256": DIGEST, "chunk": seq}
            assert get.json() == expected
            host.begin(get, first=seq)
            host.chunks(get, seq, seq + 1)
        host.end(get)
        host.expect_bundle_ack()

    rig.host.run(script)
    bundle, elapsed = timed(client.fetch_bundle)
    rig.host.join()
    assert bundle == BUNDLE
    assert len(rig.host.received(MessageType.GET_BUNDLE)) == CHUNKS
    assert elapsed <= CHUNKS * (cfg.idle_timeout + 0.1) + SLACK


def test_a_missing_chunk_resumes_from_the_gap(rig: Rig) -> None:
    client = rig.client(config(retries=0))

    def script(host: Host) -> None:
        host.greet()
        get = host.expect(MessageType.GET_BUNDLE)
        host.begin(get)
        host.chunks(get, 0, 2)
        host.chunks(get, 3)  # chunk 2 lost on the way (its frame failed a checksum)
        host.end(get)
        again = host.expect(MessageType.GET_BUNDLE)
        assert again.json()["resume"] == {"sha256": DIGEST, "chunk": 2}
        host.serve(again, first=2)
        host.expect_bundle_ack()

    rig.host.run(script)
    assert client.fetch_bundle() == BUNDLE
    rig.host.join()


def test_bad_digest_refetches_from_the_start(rig: Rig) -> None:
    client = rig.client()

    def script(host: Host) -> None:
        host.greet()
        get = host.expect(MessageType.GET_BUNDLE)
        host.begin(get)
        host.chunks(get, 0)
        host.end(get, digest="0" * 64)
        again = host.expect(MessageType.GET_BUNDLE)
        assert "resume" not in again.json()
        host.serve(again)
        host.expect_bundle_ack()

    rig.host.run(script)
    assert client.fetch_bundle() == BUNDLE
    rig.host.join()
    assert len(rig.host.received(MessageType.GET_BUNDLE)) == 2


def test_corrupt_chunk_refetches_from_the_start(rig: Rig) -> None:
    client = rig.client()

    def script(host: Host) -> None:
        host.greet()
        get = host.expect(MessageType.GET_BUNDLE)
        host.begin(get)
        host.chunks(get, 0, corrupt=True)  # right length, wrong bytes
        host.end(get)
        again = host.expect(MessageType.GET_BUNDLE)
        assert "resume" not in again.json()
        host.serve(again)
        host.expect_bundle_ack()

    rig.host.run(script)
    assert client.fetch_bundle() == BUNDLE
    rig.host.join()


def test_a_host_that_always_corrupts_fails_after_retries(rig: Rig) -> None:
    cfg = config(retries=2)
    client = rig.client(cfg)

    def script(host: Host) -> None:
        host.greet()
        for _ in range(cfg.retries + 1):
            get = host.expect(MessageType.GET_BUNDLE)
            assert "resume" not in get.json()
            host.begin(get)
            host.chunks(get, 0)
            host.end(get, digest="f" * 64)
        assert host.quiet(0.3) == []

    rig.host.run(script)
    error, _ = raises_within(ChannelTimeout, 3.0, client.fetch_bundle)
    rig.host.join()
    assert f"failed {cfg.retries + 1} times" in str(error)
    assert "SHA-256" in str(error)
    assert rig.host.received(MessageType.BUNDLE_ACK) == []


def test_no_bundle_is_a_remote_error(rig: Rig) -> None:
    client = rig.client()
    reason = "no bundle is stored for this domain; run the xenchannel role for it"

    def script(host: Host) -> None:
        host.greet()
        get = host.expect(MessageType.GET_BUNDLE)
        host.send(error_message("no-bundle", reason, get.request_id))

    rig.host.run(script)
    error, _ = raises_within(RemoteError, 2.0, client.fetch_bundle)
    rig.host.join()
    assert error.code == "no-bundle"
    assert error.remote_message == reason
    assert reason in str(error)


def test_a_busy_host_is_asked_again_when_it_says_without_using_a_retry(rig: Rig) -> None:
    client = rig.client(config(retries=0))
    asked_at: List[float] = []

    def script(host: Host) -> None:
        host.greet()
        for _ in range(3):
            get = host.expect(MessageType.GET_BUNDLE)
            asked_at.append(time.monotonic())
            host.send(error_message("busy", "too many GET_BUNDLE requests", get.request_id, 2, 0.2))
        get = host.expect(MessageType.GET_BUNDLE)
        asked_at.append(time.monotonic())
        host.serve(get)
        host.ack(host.expect_bundle_ack())

    rig.host.run(script)
    bundle = client.fetch_bundle()
    rig.host.join()
    assert bundle.instance_id == BUNDLE.instance_id
    gaps = [b - a for a, b in zip(asked_at, asked_at[1:])]
    assert len(gaps) == 3 and all(gap >= 0.19 for gap in gaps)


def test_unacknowledged_bundle_is_still_returned(rig: Rig) -> None:
    cfg = config(ack_timeout=0.2, retries=2)
    client = rig.client(cfg)

    def script(host: Host) -> None:
        host.greet(session="s-ack")
        get = host.expect(MessageType.GET_BUNDLE)
        host.serve(get)
        host.quiet(0.8)  # never a STATUS_ACK

    rig.host.run(script)
    bundle, elapsed = timed(client.fetch_bundle)
    assert bundle == BUNDLE
    assert elapsed <= cfg.ack_timeout * (cfg.retries + 1) + SLACK
    rig.host.join()
    acks = rig.host.received(MessageType.BUNDLE_ACK)
    assert len(acks) == cfg.retries + 1
    assert all(a.json() == {"session": "s-ack", "sha256": DIGEST} for a in acks)


def test_host_restart_during_the_ack_still_returns_the_bundle(rig: Rig) -> None:
    cfg = config(ack_timeout=0.2, retries=1, connect_timeout=0.6)
    client = rig.client(cfg)

    def script(host: Host) -> None:
        host.greet(link="link-A")
        get = host.expect(MessageType.GET_BUNDLE)
        host.serve(get)
        host.expect(MessageType.BUNDLE_ACK)
        host.knock("link-B")  # the agent restarted, then went away again
        host.quiet(1.5)

    rig.host.run(script)
    bundle, elapsed = timed(client.fetch_bundle)
    assert bundle == BUNDLE
    assert elapsed <= cfg.ack_timeout * (cfg.retries + 1) + cfg.connect_timeout + SLACK


def test_an_error_answering_the_ack_still_returns_the_bundle(rig: Rig) -> None:
    client = rig.client(config(ack_timeout=0.2, retries=1))

    def script(host: Host) -> None:
        host.greet()
        get = host.expect(MessageType.GET_BUNDLE)
        host.serve(get)
        ack = host.expect(MessageType.BUNDLE_ACK)
        message = "guest acknowledged a bundle with a different digest"
        host.send(error_message("bad-request", message, ack.request_id))

    rig.host.run(script)
    assert client.fetch_bundle() == BUNDLE


# ----------------------------------------------------------------------------- status, queries


def test_report_status_is_acknowledged(rig: Rig) -> None:
    client = rig.client()
    seen: List[Dict[str, Any]] = []

    def script(host: Host) -> None:
        host.greet(session="s-status")
        for _ in range(2):
            status = host.expect(MessageType.STATUS)
            seen.append(status.json())
            host.ack(status)

    rig.host.run(script)
    assert client.report_status("failed", "x" * 800, "i-0123456789") is True
    assert client.report_status("applied") is True
    rig.host.join()
    failed, applied = seen
    assert failed == {
        "session": "s-status",
        "state": "failed",
        "reason": "x" * 500,
        "instance_id": "i-0123456789",
    }
    assert applied == {"session": "s-status", "state": "applied"}


def test_report_status_rejects_an_unknown_state(rig: Rig) -> None:
    client = rig.client()
    with pytest.raises(ValueError, match="finished"):
        client.report_status("finished")
    assert client.session is None  # nothing was sent


def test_unacknowledged_status_returns_false(rig: Rig) -> None:
    cfg = config(ack_timeout=0.2, retries=1)
    client = rig.client(cfg)

    def script(host: Host) -> None:
        host.greet()
        host.quiet(0.6)

    rig.host.run(script)
    result, elapsed = timed(client.report_status, "applied")
    assert result is False
    assert elapsed <= 0.5 + cfg.ack_timeout * (cfg.retries + 1) + SLACK
    rig.host.join()
    assert len(rig.host.received(MessageType.STATUS)) == cfg.retries + 1


def test_serve_queries_answers_under_the_same_request_id(rig: Rig) -> None:
    client = rig.client()
    replies: List[Tuple[int, Frame]] = []
    asked: List[List[str]] = []

    def handler(keys: List[str]) -> Dict[str, Any]:
        asked.append(keys)
        if "broken" in keys:
            raise ChannelError("cloud-init status is unavailable")
        return {key: f"answer-{key}" for key in keys}

    def script(host: Host) -> None:
        for request_id, what in ((0x1234, ["version", "uptime"]), (0x5678, ["broken"])):
            host.msg(MessageType.QUERY, {"what": what}, request_id)
            replies.append((request_id, host.expect(MessageType.QUERY_REPLY)))
        host.knock("link-1")  # not a QUERY: ignored

    rig.host.run(script)
    answered, elapsed = timed(client.serve_queries, handler, 0.8)
    rig.host.join()
    assert answered == 2
    assert 0.75 <= elapsed <= 0.8 + SLACK
    assert asked == [["version", "uptime"], ["broken"]]
    (id1, reply1), (id2, reply2) = replies
    assert reply1.request_id == id1
    assert reply1.json() == {"version": "answer-version", "uptime": "answer-uptime"}
    assert reply2.request_id == id2
    assert reply2.json() == {"error": "cloud-init status is unavailable"}


def test_serve_queries_stops_when_asked(rig: Rig) -> None:
    client = rig.client()
    answered, elapsed = timed(client.serve_queries, lambda keys: {}, 30.0, lambda: True)
    assert answered == 0
    assert elapsed < 5.0  # at once, not after the 30 s
