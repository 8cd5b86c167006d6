"""The dom0 agent against real Unix sockets.

The test plays QEMU (an asyncio Unix socket server at the domain's socket path) and the
guest behind it (speaking protocol.py frames on the accepted connection).  The agent
runs in the same event loop.  Every wait is bounded.
"""

import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import (
    Any,
    AsyncIterator,
    Callable,
    Dict,
    Iterator,
    List,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
)

import pytest

from xenchannel.dom0 import cli, state
from xenchannel.dom0.agent import Supervisor
from xenchannel.dom0.config import AgentConfig, AgentError
from xenchannel.dom0.control import control_request
from xenchannel.dom0.state import load_state
from xenchannel.dom0.store import remove_domain, write_domain
from xenchannel.protocol import (
    ERR_BAD_REQUEST,
    ERR_BUSY,
    ERR_NO_BUNDLE,
    ERR_NOT_ALLOWED,
    ERR_TOO_LARGE,
    ERR_UNKNOWN_SESSION,
    ERR_VERSION,
    PROTOCOL_VERSIONS,
    Bundle,
    Frame,
    FrameDecoder,
    MessageType,
    encode_frame,
    encode_message,
    new_nonce,
)
from xenchannel.session import (
    GET_BUNDLE_BURST,
    GET_BUNDLE_RATE,
    BundleBegin,
    BundleEnd,
    BundleReceiver,
)

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"
TIMEOUT = 5.0


# ----------------------------------------------------------------------------- helpers


class Env(NamedTuple):
    root: str
    store: str
    state: str
    sockets: str
    control: str

    def sock(self, name: str) -> str:
        return os.path.join(self.sockets, name + ".sock")

    def config(self, **overrides: Any) -> AgentConfig:
        values: Dict[str, Any] = {
            "store_dir": self.store,
            "state_dir": self.state,
            "socket_root": self.sockets,
            "control_socket": self.control,
            "rescan_interval": 0.05,
            "connect_timeout": 1.0,
            "backoff_initial": 0.02,
            "backoff_max": 0.2,
            "query_timeout": 1.0,
            "chunk_size": 1024,
        }
        values.update(overrides)
        return AgentConfig(**values)


@pytest.fixture
def env() -> Iterator[Env]:
    # pytest's tmp_path can exceed the 108-byte sun_path limit.
    root = tempfile.mkdtemp(prefix="xcd0", dir="/tmp")
    sockets = os.path.join(root, "s")
    os.makedirs(sockets)
    yield Env(
        root,
        os.path.join(root, "store"),
        os.path.join(root, "state"),
        sockets,
        os.path.join(root, "c.sock"),
    )
    shutil.rmtree(root, ignore_errors=True)


def make_bundle(iid: str, hostname: str, size: int = 3000) -> Bundle:
    user_data = ("#cloud-config\n# " + "x" * size + "\n").encode()
    return Bundle({"instance-id": iid, "local-hostname": hostname}, user_data)


def run(coro: Any, timeout: float = 30.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def wait_until(predicate: Callable[[], Any], timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def state_of(env: Env, domain: str) -> Dict[str, Any]:
    return load_state(env.state, domain) or {}


class GuestConn:
    """One accepted connection: the guest's side of the channel."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.frames: asyncio.Queue[Optional[Frame]] = asyncio.Queue()
        self.seen: List[Frame] = []
        self.eof = asyncio.Event()
        self.reading = asyncio.Event()  # clear it to stop reading, as a slow guest would
        self.reading.set()
        self.link = ""  # set from the first KNOCK by FakeQemu.accept
        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        decoder = FrameDecoder()
        try:
            while True:
                await self.reading.wait()
                data = await self.reader.read(65536)
                if not data:
                    break
                for item in decoder.feed(data):
                    if isinstance(item, Frame):
                        self.seen.append(item)
                        self.frames.put_nowait(item)
        except (ConnectionError, OSError):
            pass
        self.eof.set()
        self.frames.put_nowait(None)

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def send(self, mtype: MessageType, body: Dict[str, Any], rid: int, version: int = 1) -> None:
        # A version-1 guest unless told otherwise: every guest released before version 2
        # speaks it, and what the agent answers it must not change.
        self.send_raw(encode_message(mtype, body, rid, version))

    async def recv(self, *types: MessageType, timeout: float = TIMEOUT) -> Frame:
        """The next frame of one of ``types`` (others, such as KNOCKs, are passed over)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {[t.name for t in types]} frame in time")
            try:
                frame = await asyncio.wait_for(self.frames.get(), left)
            except asyncio.TimeoutError:
                continue
            if frame is None:
                raise AssertionError("the agent closed the connection")
            if not types or frame.message_type() in types:
                return frame

    async def hello(self, rid: int = 7, **extra: Any) -> str:
        nonce = new_nonce()
        self.send(MessageType.HELLO, dict({"nonce": nonce, "versions": [1]}, **extra), rid)
        frame = await self.recv(MessageType.WELCOME, MessageType.ERROR)
        assert frame.message_type() is MessageType.WELCOME, frame.json()
        body = frame.json()
        assert frame.request_id == rid
        assert body["nonce"] == nonce
        assert body["version"] == 1
        assert body["versions"] == list(PROTOCOL_VERSIONS)
        assert body["link"] == self.link  # the KNOCK's link: this connection
        return str(body["session"])

    async def fetch(self, session: str, rid: int = 8, **extra: Any) -> Tuple[Bundle, str]:
        self.send(MessageType.GET_BUNDLE, dict({"session": session}, **extra), rid)
        receiver = BundleReceiver()
        while True:
            frame = await self.recv(
                MessageType.BUNDLE_BEGIN,
                MessageType.BUNDLE_CHUNK,
                MessageType.BUNDLE_END,
                MessageType.ERROR,
            )
            assert frame.request_id == rid
            mtype = frame.message_type()
            if mtype is MessageType.ERROR:
                raise AssertionError(f"ERROR {frame.json()}")
            if mtype is MessageType.BUNDLE_BEGIN:
                receiver.begin(BundleBegin.parse(frame.json()))
            elif mtype is MessageType.BUNDLE_CHUNK:
                receiver.chunk(frame.payload)
            else:
                bundle = receiver.end(BundleEnd.parse(frame.json()))
                assert receiver.sha256 is not None
                return bundle, receiver.sha256

    async def ack(self, session: str, digest: str, rid: int = 9) -> Frame:
        self.send(MessageType.BUNDLE_ACK, {"session": session, "sha256": digest}, rid)
        frame = await self.recv(MessageType.STATUS_ACK, MessageType.ERROR)
        assert frame.request_id == rid
        return frame

    async def status(self, session: str, rid: int = 10, **body: Any) -> Frame:
        self.send(MessageType.STATUS, dict({"session": session}, **body), rid)
        frame = await self.recv(MessageType.STATUS_ACK, MessageType.ERROR)
        assert frame.request_id == rid
        return frame

    async def error(self, rid: int) -> Dict[str, Any]:
        frame = await self.recv(MessageType.ERROR)
        assert frame.request_id == rid
        return frame.json()

    def close(self) -> None:
        self._task.cancel()
        self.writer.close()


class FakeQemu:
    """A Unix socket server at a domain's socket path, as QEMU's chardev would be."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.conns: asyncio.Queue[GuestConn] = asyncio.Queue()
        self.all: List[GuestConn] = []
        self.server: Optional[asyncio.AbstractServer] = None

    async def start(self) -> "FakeQemu":
        self.server = await asyncio.start_unix_server(self._accept, self.path)
        return self

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = GuestConn(reader, writer)
        self.all.append(conn)
        self.conns.put_nowait(conn)

    async def accept(self, timeout: float = TIMEOUT) -> GuestConn:
        conn = await asyncio.wait_for(self.conns.get(), timeout)
        # Every connect starts with a KNOCK listing the versions.
        knock = await conn.recv(MessageType.KNOCK)
        body = knock.json()
        assert body["versions"] == list(PROTOCOL_VERSIONS)
        # The connection's link id: WELCOMEs on this connection carry the same one.
        assert isinstance(body["link"], str) and len(body["link"]) == 16
        assert knock.request_id == 0
        conn.link = body["link"]
        return conn

    async def close(self) -> None:
        for conn in self.all:
            conn.close()
        if self.server is not None:
            self.server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


@contextlib.asynccontextmanager
async def running_agent(config: AgentConfig) -> AsyncIterator[Supervisor]:
    agent = Supervisor(config)
    task = asyncio.ensure_future(agent.run())
    await wait_until(lambda: agent.ready or task.done())
    if task.done():
        task.result()
    try:
        yield agent
    finally:
        agent.stop()
        await asyncio.wait_for(task, 5.0)


@contextlib.asynccontextmanager
async def qemu(path: str) -> AsyncIterator[FakeQemu]:
    server = await FakeQemu(path).start()
    try:
        yield server
    finally:
        await server.close()


# ----------------------------------------------------------------------------- tests


def test_handshake_bundle_delivery_and_ack(env: Env) -> None:
    bundle = make_bundle("iid-web1", "web1")
    write_domain(env.store, "web1", env.sock("web1"), bundle)

    async def scenario() -> None:
        async with qemu(env.sock("web1")) as server, running_agent(env.config()) as agent:
            guest = await server.accept()
            session = await guest.hello(agent="xenchannel-guest/0.1.0\n\x1b[31m")
            # The link's run state follows the session: greeted, then streaming, then
            # serving again once the transfer is over.
            await wait_until(lambda: state_of(env, "web1").get("link") == "serving")
            received, digest = await guest.fetch(session)
            assert received == bundle
            assert digest == bundle.digest()
            begin = next(f for f in guest.seen if f.type == MessageType.BUNDLE_BEGIN)
            assert begin.json()["chunks"] > 2  # chunk_size 1024: several chunks

            ack = await guest.ack(session, digest)
            assert ack.message_type() is MessageType.STATUS_ACK
            assert ack.json() == {"recorded": True}

            state = await wait_until(lambda: state_of(env, "web1").get("delivered"))
            assert state["sha256"] == digest
            assert state["instance_id"] == "iid-web1"
            assert state["count"] == 1
            full = state_of(env, "web1")
            assert full["connected"] is True
            assert full["handshake"]["version"] == 1
            # Truncated to printable characters: no newline or escape reaches the record.
            assert full["handshake"]["guest_agent"] == "xenchannel-guest/0.1.0[31m"
            assert full["bundle"] == {
                "sha256": digest,
                "instance_id": "iid-web1",
                "size": len(bundle.encode()),
            }
            assert agent.links["web1"].session == session

            # Resume from chunk 2 of the same digest: BEGIN says first=2.
            guest.seen.clear()
            guest.send(
                MessageType.GET_BUNDLE,
                {"session": session, "resume": {"sha256": digest, "chunk": 2}},
                11,
            )
            begin2 = await guest.recv(MessageType.BUNDLE_BEGIN)
            assert begin2.json()["first"] == 2
            end = await guest.recv(MessageType.BUNDLE_END)
            assert end.json()["sha256"] == digest
            seqs = [f.payload[:4] for f in guest.seen if f.type == MessageType.BUNDLE_CHUNK]
            assert int.from_bytes(seqs[0], "big") == 2
            # A resume naming another digest starts over.
            guest.send(
                MessageType.GET_BUNDLE,
                {"session": session, "resume": {"sha256": "0" * 64, "chunk": 2}},
                12,
            )
            assert (await guest.recv(MessageType.BUNDLE_BEGIN)).json()["first"] == 0

        final = state_of(env, "web1")
        assert final["connected"] is False
        assert final["disconnected_at"]
        assert final["link"] == "stopped"  # the agent stopped

    run(scenario())


def test_status_recorded_in_a_later_session(env: Env) -> None:
    bundle = make_bundle("iid-web1", "web1")
    write_domain(env.store, "web1", env.sock("web1"), bundle)

    async def scenario() -> None:
        async with qemu(env.sock("web1")) as server, running_agent(env.config()):
            guest = await server.accept()
            session = await guest.hello()
            _, digest = await guest.fetch(session)
            await guest.ack(session, digest)
            # cloud-init reports at the end of boot, from a new session.
            later = await guest.hello(rid=20)
            assert later != session
            reply = await guest.status(later, state="applied", instance_id="iid-web1")
            assert reply.json() == {"recorded": True}
            # The old session is gone.
            old = await guest.status(session, rid=21, state="applied")
            assert old.json()["message"] == "unknown session; send HELLO first"

            status = await wait_until(lambda: state_of(env, "web1").get("status"))
            assert status["state"] == "applied"
            assert status["instance_id"] == "iid-web1"
            assert status["mismatch"] is False
            assert status["reason"] is None

            failed = await guest.status(later, rid=22, state="failed", reason="r" * 900)
            assert failed.message_type() is MessageType.STATUS_ACK
            status = await wait_until(
                lambda: (
                    (state_of(env, "web1").get("status") or {}).get("state") == "failed"
                    and state_of(env, "web1")["status"]
                )
            )
            assert len(status["reason"]) == 500
            assert state_of(env, "web1")["last_error"] is None

    run(scenario())


def test_a_resent_hello_keeps_its_session(env: Env) -> None:
    write_domain(env.store, "web1", env.sock("web1"), make_bundle("iid-1", "web1"))

    async def scenario() -> None:
        async with qemu(env.sock("web1")) as server, running_agent(env.config()):
            guest = await server.accept()
            # The guest resends HELLO (same nonce) before the first WELCOME arrived.
            nonce = new_nonce()
            guest.send(MessageType.HELLO, {"nonce": nonce, "versions": [1]}, 1)
            guest.send(MessageType.HELLO, {"nonce": nonce, "versions": [1]}, 2)
            first = await guest.recv(MessageType.WELCOME)
            second = await guest.recv(MessageType.WELCOME)
            assert (first.request_id, second.request_id) == (1, 2)
            session = first.json()["session"]
            assert second.json()["session"] == session
            bundle, _ = await guest.fetch(session)
            assert bundle.instance_id == "iid-1"
            # A new nonce is a new session; the old one is forgotten.
            assert await guest.hello(rid=3) != session
            guest.send(MessageType.GET_BUNDLE, {"session": session}, 4)
            assert (await guest.error(4))["message"] == "unknown session; send HELLO first"

    run(scenario())


def test_version_mismatch_is_an_error_with_code_and_recorded(env: Env) -> None:
    write_domain(env.store, "web1", env.sock("web1"), make_bundle("iid-1", "web1"))

    async def scenario() -> None:
        async with qemu(env.sock("web1")) as server, running_agent(env.config()):
            guest = await server.accept()
            guest.send(MessageType.HELLO, {"nonce": new_nonce(), "versions": [7, 9]}, 31)
            error = await guest.error(31)
            assert error["code"] == ERR_VERSION
            assert "no common protocol version" in error["message"]
            assert "the guest speaks 7, 9" in error["message"]
            last = await wait_until(lambda: state_of(env, "web1").get("last_error"))
            assert last["message"] == error["message"]
            # The connection stays; a guest that speaks version 1 gets its session.
            assert await guest.hello(rid=32)

    run(scenario())


def test_bad_requests_get_errors_and_never_kill_the_connection(env: Env) -> None:
    write_domain(env.store, "web1", env.sock("web1"), make_bundle("iid-1", "web1"))

    async def scenario() -> None:
        async with qemu(env.sock("web1")) as server, running_agent(env.config()):
            guest = await server.accept()
            guest.send(MessageType.GET_BUNDLE, {"session": "nope"}, 41)
            error = await guest.error(41)
            assert error == {
                "code": ERR_BAD_REQUEST,
                "message": "unknown session; send HELLO first",
            }

            guest.send_raw(encode_frame(MessageType.HELLO, b"{not json", 42))
            error = await guest.error(42)
            assert error["code"] == ERR_BAD_REQUEST
            assert "not valid UTF-8 JSON" in error["message"]

            guest.send(MessageType.HELLO, {"versions": [1]}, 43)
            assert "nonce" in (await guest.error(43))["message"]
            guest.send(MessageType.HELLO, {"nonce": "n"}, 44)
            assert "versions" in (await guest.error(44))["message"]

            session = await guest.hello(rid=45)
            guest.send(MessageType.STATUS, {"session": session, "state": "bogus"}, 46)
            assert "STATUS state must be one of" in (await guest.error(46))["message"]
            guest.send(MessageType.BUNDLE_ACK, {"session": session}, 47)
            assert "sha256" in (await guest.error(47))["message"]
            guest.send(MessageType.GET_BUNDLE, {"session": session, "resume": {"chunk": "x"}}, 48)
            assert "resume" in (await guest.error(48))["message"]

            wrong = await guest.ack(session, "f" * 64, rid=49)
            assert wrong.json() == {
                "code": ERR_BAD_REQUEST,
                "message": "guest acknowledged a bundle with a different digest",
            }
            last = await wait_until(
                lambda: (
                    "different digest"
                    in ((state_of(env, "web1").get("last_error") or {}).get("message") or "")
                )
            )
            assert last
            assert state_of(env, "web1")["delivered"] is None
            # Still served after all that.
            bundle, _ = await guest.fetch(session, rid=50)
            assert bundle.instance_id == "iid-1"

    run(scenario())


def test_echo_and_garbage_are_ignored(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="xenchannel.dom0")
    write_domain(env.store, "web1", env.sock("web1"), make_bundle("iid-1", "web1"))

    async def scenario() -> None:
        async with qemu(env.sock("web1")) as server, running_agent(env.config()) as agent:
            guest = await server.accept()
            # A cooked-mode tty echoes everything the host sent, mangled or not.
            for frame in list(guest.seen):
                guest.send_raw(encode_frame(frame.type, frame.payload, frame.request_id))
            guest.send_raw(encode_message(MessageType.WELCOME, {"nonce": "x", "session": "y"}, 5))
            guest.send_raw(b"AT\r\nATE0\r\n[   12.345] kernel: hello\n")
            # A garbage flood: many chunks, one summary log line at most.
            for _ in range(50):
                guest.send_raw(b"\xff" + os.urandom(4000).replace(b"\xff", b"\x00"))
            session = await guest.hello(rid=61)
            _, digest = await guest.fetch(session, rid=62)
            assert (await guest.ack(session, digest, rid=63)).json() == {"recorded": True}
            assert agent.links["web1"].echoes_ignored >= 2
            errors = [f for f in guest.seen if f.type == MessageType.ERROR]
            assert errors == []
            assert state_of(env, "web1").get("last_error") is None

    run(scenario())
    skipped = [r for r in caplog.records if "event=skipped" in r.getMessage()]
    assert 1 <= len(skipped) <= 2  # the first flood line, and the summary at disconnect
    assert "garbage" in skipped[0].getMessage()


def test_skipped_bytes_held_back_are_logged_when_due(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage within skip_log_interval of the last summary is summarised when the
    interval is over, even if the guest then says nothing at all."""
    caplog.set_level(logging.INFO, logger="xenchannel.dom0")
    write_domain(env.store, "web1", env.sock("web1"), make_bundle("iid-1", "web1"))

    def lines() -> List[str]:
        return [r.getMessage() for r in caplog.records if "event=skipped" in r.getMessage()]

    async def scenario() -> None:
        config = env.config(skip_log_interval=0.5)
        async with qemu(env.sock("web1")) as server, running_agent(config):
            guest = await server.accept()
            await guest.hello()  # a session: no KNOCK timer to piggyback on
            guest.send_raw(b"first burst of noise\n")
            await wait_until(lambda: len(lines()) == 1)
            guest.send_raw(b"second burst, within the interval\n")  # held back
            await wait_until(lambda: len(lines()) == 2)  # then silence: logged when due
            assert "bytes=34" in lines()[1], lines()

    run(scenario())


def test_a_guest_claiming_another_identity_gets_only_its_own_bundle(env: Env) -> None:
    bundle_a = make_bundle("iid-aaa", "alpha")
    bundle_b = make_bundle("iid-bbb", "bravo")
    write_domain(env.store, "alpha", env.sock("alpha"), bundle_a)
    write_domain(env.store, "bravo", env.sock("bravo"), bundle_b)

    async def scenario() -> None:
        async with qemu(env.sock("alpha")) as qa, qemu(env.sock("bravo")) as qb, running_agent(
            env.config()
        ):
            guest_a, guest_b = await qa.accept(), await qb.accept()
            # Each guest claims to be the other one.
            session_a = await guest_a.hello(domain="bravo", **{"instance-id": "iid-bbb"})
            session_b = await guest_b.hello(domain="alpha", **{"instance-id": "iid-aaa"})
            got_a, digest_a = await guest_a.fetch(session_a, domain="bravo")
            got_b, digest_b = await guest_b.fetch(session_b, domain="alpha")
            assert got_a == bundle_a
            assert got_b == bundle_b
            # Acknowledging the other domain's digest is refused.
            refused = await guest_a.ack(session_a, bundle_b.digest())
            assert refused.message_type() is MessageType.ERROR
            await guest_a.ack(session_a, digest_a, rid=13)
            await guest_b.ack(session_b, digest_b, rid=13)
            await guest_a.status(session_a, state="applied", instance_id="iid-bbb")
            await guest_b.status(session_b, state="applied", instance_id="iid-aaa")

            def mismatches() -> bool:
                a, b = state_of(env, "alpha"), state_of(env, "bravo")
                return bool(
                    (a.get("status") or {}).get("mismatch")
                    and (b.get("status") or {}).get("mismatch")
                )

            await wait_until(mismatches)
            a, b = state_of(env, "alpha"), state_of(env, "bravo")
            assert a["last_error"]["message"] == (
                "guest reported instance-id iid-bbb but this domain's bundle has iid-aaa"
            )
            assert b["last_error"]["message"] == (
                "guest reported instance-id iid-aaa but this domain's bundle has iid-bbb"
            )
            assert a["delivered"]["sha256"] == bundle_a.digest()
            assert b["delivered"]["sha256"] == bundle_b.digest()
            assert a["status"]["instance_id"] == "iid-bbb"  # recorded for its own domain only

    run(scenario())


# How the agent follows the store: inotify alone (the full rescan an hour away), no
# watching at all (every entry every rescan_interval), and a store bigger than the
# watches allowed (falls back to full scans, and says so).
FOLLOWING = {
    "inotify": {"full_rescan_interval": 3600.0},
    "polling": {"max_store_watches": 0},
    "over-the-watch-limit": {"max_store_watches": 2, "full_rescan_interval": 3600.0},
}


@pytest.mark.parametrize("following", sorted(FOLLOWING))
def test_domains_added_changed_and_removed_while_running(
    env: Env, following: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="xenchannel.dom0")
    write_domain(env.store, "alpha", env.sock("alpha"), make_bundle("iid-a1", "alpha"))
    write_domain(env.store, "zulu", env.sock("zulu"), make_bundle("iid-z", "zulu"))

    async def scenario() -> None:
        config = env.config(**FOLLOWING[following])
        async with qemu(env.sock("alpha")) as qa, qemu(env.sock("bravo")) as qb, qemu(
            env.sock("alpha2")
        ) as qa2, running_agent(config) as agent:
            assert agent.watch.active is (following == "inotify")
            guest_a = await qa.accept()
            session = await guest_a.hello()
            _, first_digest = await guest_a.fetch(session)
            await guest_a.ack(session, first_digest)

            # Added: the agent connects to the new domain's socket.
            write_domain(env.store, "bravo", env.sock("bravo"), make_bundle("iid-b", "bravo"))
            guest_b = await qb.accept()
            assert "bravo" in agent.links

            # Changed bundle: the new digest is served and recorded; delivery is stale.
            changed = make_bundle("iid-a2", "alpha", size=5000)
            write_domain(env.store, "alpha", env.sock("alpha"), changed)
            await wait_until(
                lambda: (
                    (state_of(env, "alpha").get("bundle") or {}).get("sha256") == changed.digest()
                )
            )
            assert cli.summarise(state_of(env, "alpha"))["delivered"] == "stale"
            got, digest = await guest_a.fetch(session, rid=30)
            assert got == changed
            await guest_a.ack(session, digest, rid=31)
            await wait_until(lambda: cli.summarise(state_of(env, "alpha"))["delivered"] == "yes")
            assert state_of(env, "alpha")["delivered"]["count"] == 2

            # Changed socket: the old connection closes, the new socket is served.
            write_domain(env.store, "alpha", env.sock("alpha2"), changed)
            await asyncio.wait_for(guest_a.eof.wait(), TIMEOUT)
            guest_a2 = await qa2.accept()
            session2 = await guest_a2.hello()
            got2, _ = await guest_a2.fetch(session2)
            assert got2 == changed

            # Removed: the open connection closes at once; the record says inactive.
            remove_domain(env.store, "bravo")
            await asyncio.wait_for(guest_b.eof.wait(), TIMEOUT)
            await wait_until(lambda: state_of(env, "bravo").get("active") is False)
            assert "bravo" not in agent.links
            assert state_of(env, "bravo")["link"] == "stopped"
            assert state_of(env, "alpha")["link"] == "serving"
            assert cli.summarise(state_of(env, "bravo"))["connected"] == "removed"

    run(scenario())
    off = [r.getMessage() for r in caplog.records if "event=store-watch-off" in r.getMessage()]
    if following == "over-the-watch-limit":
        assert len(off) == 1, off  # one warning, naming the setting
        assert "the store has 2 domains and max_store_watches is 2" in off[0], off
        assert "scanning the whole store every rescan_interval instead" in off[0], off
    else:
        assert off == []  # turning it off is a choice, not a problem


def test_a_domain_directory_made_before_its_entry_is_followed(env: Env) -> None:
    """inotify sees the directory first (its watch is added then) and the entry later."""

    async def scenario() -> None:
        config = env.config(full_rescan_interval=3600.0)
        async with qemu(env.sock("late")) as server, running_agent(config) as agent:
            await wait_until(lambda: agent.ready)
            # The store appears after the agent started, then a domain directory in it.
            os.mkdir(env.store, 0o700)
            await asyncio.sleep(0.3)
            os.mkdir(os.path.join(env.store, "late"), 0o700)
            await asyncio.sleep(0.3)  # looked at: no domain.json yet
            assert "late" not in agent.links
            write_domain(env.store, "late", env.sock("late"), make_bundle("iid-l", "late"))
            guest = await server.accept()
            session = await guest.hello()
            got, _ = await guest.fetch(session)
            assert got == make_bundle("iid-l", "late")

    run(scenario())


def test_a_domain_directory_replaced_under_its_name_is_followed(env: Env) -> None:
    """A directory renamed away and a new one made under the same name: the watch must
    follow the new directory, not the one that left."""
    write_domain(env.store, "web1", env.sock("web1"), make_bundle("iid-1", "web1"))

    async def scenario() -> None:
        config = env.config(full_rescan_interval=3600.0)
        async with running_agent(config) as agent:
            await wait_until(lambda: "web1" in agent.links)
            os.rename(os.path.join(env.store, "web1"), os.path.join(env.store, ".old-web1"))
            await wait_until(lambda: "web1" not in agent.links)
            os.mkdir(os.path.join(env.store, "web1"), 0o700)
            await asyncio.sleep(0.3)  # looked at (no domain.json yet) and watched
            # The new entry arrives the way a writer puts it there: a file renamed into the
            # directory, and nothing else touched (write_domain would also chmod the
            # directory, an event on the store that hides a missing watch).
            scratch = env.store + "-scratch"
            write_domain(scratch, "web1", env.sock("web1"), make_bundle("iid-2", "web1"))
            fresh = os.path.join(env.store, "web1", ".domain.json.tmp")
            shutil.copy2(os.path.join(scratch, "web1", "domain.json"), fresh)
            os.replace(fresh, os.path.join(env.store, "web1", "domain.json"))
            await wait_until(
                lambda: (state_of(env, "web1").get("bundle") or {}).get("instance_id") == "iid-2"
            )

    run(scenario())


@pytest.mark.parametrize("cache_bytes", [64 * 1024 * 1024, 0], ids=["cached", "uncached"])
def test_a_bundle_changed_before_the_agent_looked_is_served_new(env: Env, cache_bytes: int) -> None:
    """The kept copy is used only while the file is the one it came from: a request
    that comes before any rescan noticed a change gets the store's bundle of now."""
    first = make_bundle("iid-c1", "cached")
    write_domain(env.store, "cached", env.sock("cached"), first)

    async def scenario() -> None:
        # No watch and no rescan within the test: only the request can notice.
        config = env.config(
            max_store_watches=0,
            rescan_interval=3600.0,
            full_rescan_interval=3600.0,
            bundle_cache_bytes=cache_bytes,
        )
        async with qemu(env.sock("cached")) as q, running_agent(config) as agent:
            guest = await q.accept()
            session = await guest.hello()
            link = agent.links["cached"]
            assert (agent.cached_bundle(link) is not None) is (cache_bytes > 0)
            got, digest = await guest.fetch(session)
            assert got == first
            await guest.ack(session, digest)

            changed = make_bundle("iid-c2", "cached", size=4000)
            write_domain(env.store, "cached", env.sock("cached"), changed)
            assert agent.cached_bundle(link) is None  # the file is not the kept one's
            got, digest = await guest.fetch(session, rid=30)
            assert got == changed
            await guest.ack(session, digest, rid=31)
            assert (agent.cached_bundle(link) is not None) is (cache_bytes > 0)
            await wait_until(lambda: cli.summarise(state_of(env, "cached"))["delivered"] == "yes")

    run(scenario())


def test_bundles_past_the_cache_budget_are_read_at_each_request(env: Env) -> None:
    small, large = make_bundle("iid-s", "small", 1000), make_bundle("iid-l", "large", 9000)
    write_domain(env.store, "small", env.sock("small"), small)
    write_domain(env.store, "large", env.sock("large"), large)

    async def scenario() -> None:
        config = env.config(bundle_cache_bytes=len(small.encode()) + 100)
        async with qemu(env.sock("small")) as qs, qemu(env.sock("large")) as ql, running_agent(
            config
        ) as agent:
            guests = {"small": await qs.accept(), "large": await ql.accept()}
            assert agent.cached_bundle(agent.links["small"]) is not None
            assert agent.cached_bundle(agent.links["large"]) is None
            for name, expected in (("small", small), ("large", large)):
                session = await guests[name].hello()
                got, _ = await guests[name].fetch(session)
                assert got == expected
            # Removing a kept bundle's domain gives its bytes back to the budget.
            remove_domain(env.store, "small")
            await asyncio.wait_for(guests["small"].eof.wait(), TIMEOUT)
            write_domain(env.store, "small", env.sock("small"), small)
            await wait_until(lambda: "small" in agent.links)
            await wait_until(lambda: agent.cached_bundle(agent.links["small"]) is not None)

    run(scenario())


def test_two_entries_naming_one_socket_are_both_refused_until_fixed(env: Env) -> None:
    write_domain(env.store, "alpha", env.sock("shared"), make_bundle("iid-a", "alpha"))
    write_domain(env.store, "bravo", env.sock("shared"), make_bundle("iid-b", "bravo"))
    write_domain(env.store, "other", env.sock("other"), make_bundle("iid-o", "other"))

    async def scenario() -> None:
        # Only inotify tells the agent what changed: the freed entry must be looked at
        # again without a full rescan.
        config = env.config(full_rescan_interval=3600.0)
        async with qemu(env.sock("shared")) as shared, qemu(
            env.sock("other")
        ) as other, running_agent(config) as agent:
            await other.accept()  # the other domains are unaffected
            assert "alpha" not in agent.links and "bravo" not in agent.links
            for name in ("alpha", "bravo"):
                # Records are written a little after the event (coalesced writes).
                await wait_until(lambda n=name: state_of(env, n).get("last_error"))  # type: ignore[misc]
                message = state_of(env, name)["last_error"]["message"]
                assert message == (
                    f"the store entries of alpha, bravo all name socket {env.sock('shared')}; "
                    "give each domain a socket of its own (QEMU serves a channel to one domain)"
                )
            # Fixed: bravo gets a socket of its own, and alpha is served on the shared one.
            write_domain(env.store, "bravo", env.sock("bravo"), make_bundle("iid-b", "bravo"))
            guest = await shared.accept()
            session = await guest.hello()
            got, _ = await guest.fetch(session)
            assert got == make_bundle("iid-a", "alpha")
            await wait_until(lambda: agent.links.get("bravo") is not None)
            assert agent.links["bravo"].socket == env.sock("bravo")

    run(scenario())


def test_a_socket_replaced_by_a_symlink_is_not_connected(env: Env) -> None:
    write_domain(env.store, "web1", env.sock("web1"), make_bundle("iid-web1", "web1"))

    async def scenario() -> None:
        async with qemu(env.sock("web2")), running_agent(env.config()) as agent:
            # After the entry was loaded: a symlink to another domain's socket appears.
            os.symlink(env.sock("web2"), env.sock("web1"))
            link = agent.links["web1"]
            await wait_until(lambda: state_of(env, "web1").get("link") == "refused")
            message = state_of(env, "web1")["last_error"]["message"]
            entry = os.path.join(env.store, "web1", "domain.json")
            assert message.startswith(f"{entry} names socket {env.sock('web1')}, which is")
            assert f"a symlink (to {env.sock('web2')})" in message
            # Fixed: the symlink goes, QEMU's own socket is there, the link connects.
            os.unlink(env.sock("web1"))
            assert link.connection is None
            async with qemu(env.sock("web1")) as q:
                guest = await q.accept()
                session = await guest.hello()
                got, _ = await guest.fetch(session)
                assert got == make_bundle("iid-web1", "web1")

    run(scenario())


def test_invalid_bundle_is_reported_to_the_guest(env: Env) -> None:
    directory = os.path.join(env.store, "web1")
    write_domain(env.store, "web1", env.sock("web1"), make_bundle("iid-1", "web1"))
    path = os.path.join(directory, "domain.json")

    async def scenario() -> None:
        async with qemu(env.sock("web1")) as server, running_agent(env.config()):
            guest = await server.accept()
            session = await guest.hello()
            # The entry loses its instance-id: a valid socket, an invalid bundle.
            text = Path(path).read_text(encoding="utf-8").replace('"instance-id"', '"iid"')
            Path(path).write_text(text, encoding="utf-8")
            guest.send(MessageType.GET_BUNDLE, {"session": session}, 70)
            error = await guest.error(70)
            assert error["code"] == ERR_NO_BUNDLE
            assert "meta-data has no instance-id" in error["message"]
            assert env.store not in error["message"]  # dom0's paths stay on dom0
            await wait_until(lambda: state_of(env, "web1").get("bundle") is None)
            assert "no instance-id" in state_of(env, "web1")["last_error"]["message"]
            # A world-readable entry is not served at all: the connection closes.
            os.chmod(path, 0o644)
            await asyncio.wait_for(guest.eof.wait(), TIMEOUT)
            await wait_until(
                lambda: (
                    "chmod 600"
                    in ((state_of(env, "web1").get("last_error") or {}).get("message") or "")
                )
            )

    run(scenario())


def test_a_flood_of_get_bundle_requests_is_paced(env: Env) -> None:
    """Each GET_BUNDLE costs a store read and a SHA-256: a hostile guest gets them paced."""
    write_domain(env.store, "web1", env.sock("web1"), make_bundle("iid-1", "web1"))

    async def scenario() -> None:
        async with qemu(env.sock("web1")) as server, running_agent(env.config()):
            guest = await server.accept()
            session = await guest.hello()
            for rid in range(100, 140):
                guest.send(MessageType.GET_BUNDLE, {"session": session}, rid)
            window = 1.0
            deadline = time.monotonic() + window
            begins = 0
            while time.monotonic() < deadline:
                try:
                    await guest.recv(MessageType.BUNDLE_BEGIN, timeout=deadline - time.monotonic())
                except AssertionError:
                    break
                begins += 1
            # 40 requests at once: the burst, then GET_BUNDLE_RATE a second.
            assert GET_BUNDLE_BURST <= begins <= GET_BUNDLE_BURST + window * GET_BUNDLE_RATE + 1

    run(scenario())


def test_version_1_get_bundles_past_the_pace_are_dropped_not_queued(env: Env) -> None:
    """A flood must not delay the next honest request: what a burst cannot wait for is
    dropped and counted, not queued behind the ones before it."""
    write_domain(env.store, "web1", env.sock("web1"), make_bundle("iid-1", "web1"))

    async def scenario() -> None:
        async with qemu(env.sock("web1")) as server, running_agent(env.config()):
            guest = await server.accept()
            session = await guest.hello()
            for rid in range(100, 340):
                guest.send(MessageType.GET_BUNDLE, {"session": session}, rid)
            await wait_until(
                lambda: (
                    (state_of(env, "web1").get("counters") or {})
                    .get("dropped_requests", {})
                    .get("paced", 0)
                    >= 200
                )
            )
            # The requests that were kept have been answered within a burst's wait.
            await asyncio.sleep(2.5)
            while not guest.frames.empty():
                guest.frames.get_nowait()  # the bundles the kept requests got
            # After the flood, one request is answered at once (queued, it would wait
            # behind the 240 before it: a minute at four a second).
            started = time.monotonic()
            got, _ = await guest.fetch(session, rid=999)
            assert got == make_bundle("iid-1", "web1")
            assert time.monotonic() - started < 1.0
            counters = state_of(env, "web1")["counters"]
            served = sum(1 for f in guest.seen if f.message_type() is MessageType.BUNDLE_BEGIN)
            assert counters["dropped_requests"]["paced"] + served == 241, (counters, served)

    run(scenario())


def test_a_hello_flood_costs_bounded_log_lines_and_keeps_the_connection(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="xenchannel.dom0")
    write_domain(env.store, "web1", env.sock("web1"), make_bundle("iid-1", "web1"))

    async def scenario() -> None:
        config = env.config(skip_log_interval=0.5, log_burst=5)
        async with qemu(env.sock("web1")) as server, running_agent(config):
            guest = await server.accept()
            for rid in range(1, 401):  # a fresh nonce each: a new session each
                nonce = new_nonce()
                guest.send(MessageType.HELLO, {"nonce": nonce, "versions": [1]}, rid)
            await wait_until(lambda: sum(f.message_type() is MessageType.WELCOME
                                         for f in guest.seen) == 400)  # fmt: skip
            await asyncio.sleep(0.6)  # one summary interval
            while not guest.frames.empty():
                guest.frames.get_nowait()  # the WELCOMEs counted above
            session = await guest.hello(rid=500)  # served, on the same connection
            got, _ = await guest.fetch(session, rid=501)
            assert got == make_bundle("iid-1", "web1")
            assert not guest.eof.is_set()
            await wait_until(
                lambda: (
                    (state_of(env, "web1").get("counters") or {}).get("log_lines_suppressed", 0)
                    >= 390
                )
            )

    run(scenario())
    lines = [r.getMessage() for r in caplog.records if "domain=web1" in r.getMessage()]
    handshakes = [line for line in lines if "event=handshake" in line]
    assert len(handshakes) <= 5 + 3, len(handshakes)  # the burst, and one per 0.5 s
    summaries = [line for line in lines if "event=log-suppressed" in line]
    assert summaries and "events=handshake:" in summaries[0], lines[-5:]
    assert len(lines) < 40, len(lines)


def test_replies_a_guest_does_not_read_are_dropped_and_the_connection_goes_on(
    env: Env,
) -> None:
    write_domain(env.store, "web1", env.sock("web1"), make_bundle("iid-1", "web1"))

    async def scenario() -> None:
        # Every frame handled: what is tested is the replies' bound.
        config = env.config(max_queued_frames=16, guest_frame_rate=1000000,
                            guest_frame_burst=1000000)  # fmt: skip
        async with qemu(env.sock("web1")) as server, running_agent(config) as agent:
            guest = await server.accept()
            session = await guest.hello()
            guest.reading.clear()  # reads nothing more: its socket buffers fill
            for rid in range(1000, 11000):  # WELCOMEs far beyond the socket buffers
                guest.send(MessageType.HELLO, {"nonce": new_nonce(), "versions": [1]}, rid)
            await wait_until(
                lambda: (
                    (state_of(env, "web1").get("counters") or {})
                    .get("dropped_requests", {})
                    .get("replies-unread", 0)
                    > 0
                ),
                timeout=20,
            )
            connection = agent.links["web1"].connection
            assert connection is not None and len(connection.outbox._control) <= 16
            guest.reading.set()
            # The agent may still be answering the backlog of HELLOs (a busy machine):
            # drain until the channel has been quiet for half a second, bounded.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                if guest.frames.empty():
                    break
                while not guest.frames.empty():
                    guest.frames.get_nowait()
            session = await guest.hello(rid=20000)
            got, _ = await guest.fetch(session, rid=20001)
            assert got == make_bundle("iid-1", "web1")
            assert not guest.eof.is_set()

    run(scenario())


def test_frames_past_a_guests_rate_are_dropped_and_counted(env: Env) -> None:
    """A flood costs the agent its decoding, not its handling: past guest_frame_rate,
    frames are dropped and counted, not queued, so none is left once it stops."""
    write_domain(env.store, "web1", env.sock("web1"), make_bundle("iid-1", "web1"))

    async def scenario() -> None:
        config = env.config(guest_frame_rate=1000, guest_frame_burst=500)
        async with qemu(env.sock("web1")) as server, running_agent(config):
            guest = await server.accept()
            # 2,500 truncated frames (each a frame's turn), then a HELLO past the budget.
            guest.send_raw(b"\xff" * 2500)
            guest.send(MessageType.HELLO, {"nonce": new_nonce(), "versions": [1]}, 5)
            with pytest.raises(AssertionError, match=r"no \[.WELCOME.\] frame in time"):
                await guest.recv(MessageType.WELCOME, timeout=0.5)
            await wait_until(
                lambda: (
                    (state_of(env, "web1").get("counters") or {})
                    .get("dropped_requests", {})
                    .get("over-rate", 0)
                    >= 1900
                )
            )
            await asyncio.sleep(0.6)  # the budget refills at its rate
            session = await guest.hello(rid=6)
            got, _ = await guest.fetch(session)
            assert got == make_bundle("iid-1", "web1")

    run(scenario())


def test_counters_are_exported_for_node_exporter(env: Env) -> None:
    write_domain(env.store, "web1", env.sock("web1"), make_bundle("iid-1", "web1"))
    prom = os.path.join(env.root, "textfile", "xenchannel.prom")
    os.makedirs(os.path.dirname(prom))

    async def scenario() -> None:
        config = env.config(metrics_file=prom, metrics_interval=0.1)
        async with qemu(env.sock("web1")) as server, running_agent(config):
            guest = await server.accept()
            session = await guest.hello()
            _, digest = await guest.fetch(session)
            await guest.ack(session, digest)
            guest.send(MessageType.GET_BUNDLE, {"session": "not-ours"}, 77)
            await guest.error(77)

            def exported() -> str:
                try:
                    return Path(prom).read_text(encoding="utf-8")
                except OSError:
                    return ""

            await wait_until(lambda: 'xenchannel_deliveries_total{domain="web1"} 1' in exported())
            text = exported()
            assert 'xenchannel_connects_total{domain="web1"} 1' in text
            assert 'xenchannel_refusals_total{domain="web1",code="unknown-session"} 1' in text
            assert 'xenchannel_link_state{domain="web1",state="serving"} 1' in text
        # Written once more at shutdown: the link stopped.
        assert 'xenchannel_link_state{domain="web1",state="stopped"} 1' in exported()
        # And status --json shows the same numbers.
        counters = state_of(env, "web1")["counters"]
        assert counters["deliveries"] == 1 and counters["connects"] == 1
        assert counters["refusals"] == {"unknown-session": 1}

    run(scenario())


def test_a_version_2_guest_gets_the_codes_it_acts_on(env: Env) -> None:
    """unknown-session, busy with when to ask again, too-large, not-allowed: no English."""
    write_domain(env.store, "web1", env.sock("web1"), make_bundle("iid-1", "web1"))

    async def scenario() -> None:
        config = env.config(max_guest_frame=4096)
        async with qemu(env.sock("web1")) as server, running_agent(config):
            guest = await server.accept()
            guest.send(MessageType.GET_BUNDLE, {"session": "from-before"}, 20, version=2)
            assert (await guest.error(20))["code"] == ERR_UNKNOWN_SESSION

            nonce = new_nonce()
            guest.send(MessageType.HELLO, {"nonce": nonce, "versions": [1, 2]}, 21, version=2)
            welcome = await guest.recv(MessageType.WELCOME)
            assert (welcome.version, welcome.json()["version"]) == (2, 2)
            session = welcome.json()["session"]

            # A flood is answered at once: the burst is served, the rest told to wait.
            for rid in range(100, 100 + GET_BUNDLE_BURST + 6):
                guest.send(MessageType.GET_BUNDLE, {"session": session}, rid, version=2)
            busy = [(await guest.error(rid)) for rid in range(100 + GET_BUNDLE_BURST, 110)]
            assert all(e["code"] == ERR_BUSY for e in busy)
            assert all(0 < e["retry_after"] <= 1 / GET_BUNDLE_RATE for e in busy)

            big = {"session": session, "state": "failed", "reason": "r" * 8000}
            guest.send(MessageType.STATUS, big, 30, version=2)
            too_large = await guest.error(30)
            assert too_large["code"] == ERR_TOO_LARGE and "4096" in too_large["message"]

            other = {"session": session, "sha256": "f" * 64}
            guest.send(MessageType.BUNDLE_ACK, other, 31, version=2)
            assert (await guest.error(31))["code"] == ERR_NOT_ALLOWED
            # And the connection serves on.
            assert (await guest.status(session, 32, state="applied")).type == MessageType.STATUS_ACK

    run(scenario())


def test_socket_absent_then_appears(env: Env) -> None:
    write_domain(env.store, "web1", env.sock("web1"), make_bundle("iid-1", "web1"))

    async def scenario() -> None:
        async with running_agent(env.config(backoff_max=0.3)):
            await asyncio.sleep(0.8)  # the back-off reaches its maximum
            assert state_of(env, "web1").get("connected") is False
            assert state_of(env, "web1")["link"] == "waiting"  # no socket yet
            # A socket nobody listens on (QEMU gone, its file left): refused, backing off.
            stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                stale.bind(env.sock("web1"))
                await wait_until(lambda: state_of(env, "web1").get("link") == "unreachable")
            finally:
                stale.close()
                os.unlink(env.sock("web1"))
            async with qemu(env.sock("web1")) as server:
                started = time.monotonic()
                guest = await server.accept(timeout=2.0)
                assert time.monotonic() - started < 0.3 + 0.2  # one back-off step
                assert await guest.hello()
                await wait_until(lambda: state_of(env, "web1").get("connected") is True)
            # The domain stops: the socket disappears; the agent notices and waits.
            await wait_until(lambda: state_of(env, "web1").get("connected") is False)
            async with qemu(env.sock("web1")) as server:
                await server.accept(timeout=2.0)

    run(scenario())


def test_agent_restart_keeps_the_delivered_count(env: Env) -> None:
    bundle = make_bundle("iid-1", "web1")
    write_domain(env.store, "web1", env.sock("web1"), bundle)

    async def deliver_once() -> None:
        async with qemu(env.sock("web1")) as server, running_agent(env.config()):
            guest = await server.accept()
            session = await guest.hello()
            _, digest = await guest.fetch(session)
            await guest.ack(session, digest)
            await guest.status(session, state="applied", instance_id="iid-1")

    async def scenario() -> None:
        await deliver_once()
        first = state_of(env, "web1")
        assert first["delivered"]["count"] == 1
        assert first["connected"] is False
        await deliver_once()
        second = state_of(env, "web1")
        assert second["delivered"]["count"] == 2
        assert second["status"]["state"] == "applied"
        assert second["handshake"]["version"] == 1

    run(scenario())


def test_removed_while_agent_was_down_is_marked_inactive(env: Env) -> None:
    write_domain(env.store, "web1", env.sock("web1"), make_bundle("iid-1", "web1"))

    async def scenario() -> None:
        async with running_agent(env.config()):
            await wait_until(lambda: state_of(env, "web1").get("bundle"))
        remove_domain(env.store, "web1")
        async with running_agent(env.config()):
            await wait_until(lambda: state_of(env, "web1").get("active") is False)

    run(scenario())


def test_knock_repeats_while_idle(env: Env) -> None:
    write_domain(env.store, "web1", env.sock("web1"), make_bundle("iid-1", "web1"))

    async def scenario() -> None:
        config = env.config(knock_interval=0.2, knock_max_interval=0.8)
        async with qemu(env.sock("web1")) as server, running_agent(config):
            guest = await server.accept()  # (takes the KNOCK sent on connect)
            await guest.recv(MessageType.KNOCK, timeout=1.0)  # 0.2 s of silence later
            knocks = [time.monotonic()]
            for _ in range(4):
                await guest.recv(MessageType.KNOCK, timeout=3.0)
                knocks.append(time.monotonic())
            # Unanswered, each waits twice as long as the one before, up to the maximum:
            # 0.4, 0.8, 0.8, 0.8 s (without the cap the last would be 3.2 s).
            gaps = [b - a for a, b in zip(knocks, knocks[1:])]
            assert 0.3 < gaps[0] < 0.7, gaps
            assert all(0.7 < gap < 1.6 for gap in gaps[1:]), gaps
            # Once the guest greets it knows the host is there: no more KNOCKs on this
            # connection (a guest that starts a new client greets by itself).
            await guest.hello()
            guest.seen.clear()
            await asyncio.sleep(2.0)  # more than twice the longest wait
            assert MessageType.KNOCK not in [f.message_type() for f in guest.seen]

    run(scenario())


def test_no_knock_while_a_slow_transfer_streams(env: Env) -> None:
    big = make_bundle("iid-1", "web1", size=3 * 1024 * 1024)  # more than socket buffers
    write_domain(env.store, "web1", env.sock("web1"), big)

    async def scenario() -> None:
        config = env.config(knock_interval=0.2, chunk_size=32 * 1024)
        async with qemu(env.sock("web1")) as server, running_agent(config):
            guest = await server.accept()
            session = await guest.hello()
            guest.seen.clear()
            guest.send(MessageType.GET_BUNDLE, {"session": session}, 8)
            await guest.recv(MessageType.BUNDLE_BEGIN)
            guest.reading.clear()  # the guest stalls: the agent's writes back up
            await asyncio.sleep(1.0)
            guest.reading.set()
            await guest.recv(MessageType.BUNDLE_END, timeout=10)
            types = [f.message_type() for f in guest.seen]
            assert MessageType.KNOCK not in types
            # Nor afterwards: the guest has a session, it knows the host is there.
            guest.seen.clear()
            await asyncio.sleep(0.6)  # three times knock_interval
            assert MessageType.KNOCK not in [f.message_type() for f in guest.seen]

    run(scenario())


def test_query_through_the_control_socket(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    write_domain(env.store, "web1", env.sock("web1"), make_bundle("iid-1", "web1"))
    write_domain(env.store, "web2", env.sock("web2"), make_bundle("iid-2", "web2"))

    async def answer(guest: GuestConn) -> None:
        frame = await guest.recv(MessageType.QUERY)
        assert frame.json() == {"what": ["version", "uptime"]}
        # A reply with another request id is ignored; the right one answers.
        guest.send(MessageType.QUERY_REPLY, {"version": "wrong"}, frame.request_id ^ 1)
        guest.send(MessageType.QUERY_REPLY, {"version": "1.0", "uptime": 12}, frame.request_id)

    async def scenario() -> None:
        async with qemu(env.sock("web1")) as server, running_agent(env.config()):
            guest = await server.accept()
            assert (await control_request(env.control, {"op": "ping"}, 5))["ok"] is True
            answering = asyncio.ensure_future(answer(guest))
            reply = await control_request(
                env.control,
                {"op": "query", "domain": "web1", "what": ["version", "uptime"]},
                5,
            )
            await answering
            assert reply == {"ok": True, "reply": {"version": "1.0", "uptime": 12}}

            # The same through the CLI (it runs its own event loop: use a thread).
            answering = asyncio.ensure_future(answer(guest))
            argv = ["query", "web1", "--what", "version,uptime", "--control-socket", env.control]
            code = await asyncio.get_running_loop().run_in_executor(None, cli.main, argv)
            await answering
            assert code == 0
            assert json.loads(capsys.readouterr().out) == {"version": "1.0", "uptime": 12}

            # Nobody answers: a bounded wait and an error naming the domain.
            started = time.monotonic()
            reply = await control_request(
                env.control, {"op": "query", "domain": "web1", "timeout": 0.3}, 5
            )
            assert time.monotonic() - started < 2.0
            assert reply["ok"] is False
            assert reply["error"].startswith("domain web1 did not answer the query within 0.3 s")
            # Its late answer is dropped: nobody waits for that request id any more.
            late = await guest.recv(MessageType.QUERY)
            guest.send(MessageType.QUERY_REPLY, {"late": True}, late.request_id)

            # A guest ERROR answers the query too.
            async def refuse() -> None:
                frame = await guest.recv(MessageType.QUERY)
                guest.send(
                    MessageType.ERROR,
                    {"code": "unsupported", "message": "no agent here"},
                    frame.request_id,
                )

            refusing = asyncio.ensure_future(refuse())
            reply = await control_request(env.control, {"op": "query", "domain": "web1"}, 5)
            await refusing
            assert reply == {
                "ok": False,
                "error": "the peer reported unsupported: no agent here",
            }

            reply = await control_request(env.control, {"op": "query", "domain": "web2"}, 5)
            assert reply["ok"] is False
            assert "domain web2 is not connected" in reply["error"]
            reply = await control_request(env.control, {"op": "query", "domain": "nope"}, 5)
            assert "unknown domain 'nope'" in reply["error"]
            argv = ["query", "nope", "--control-socket", env.control]
            code = await asyncio.get_running_loop().run_in_executor(None, cli.main, argv)
            assert code == 1
            assert "error: unknown domain 'nope'" in capsys.readouterr().err
            reply = await control_request(env.control, {"op": "launch"}, 5)
            assert "unknown op 'launch'" in reply["error"]

            # A client that sends nothing gets an answer within the read bound.
            reader, writer = await asyncio.open_unix_connection(env.control)
            writer.write(b"{")
            writer.write_eof()
            raw = await asyncio.wait_for(reader.read(), 6)
            writer.close()
            assert b"not valid JSON" in raw

            # Nested past what json can read: a sentence, and the server goes on.
            reader, writer = await asyncio.open_unix_connection(env.control)
            writer.write(b"[" * 30000 + b"]" * 30000 + b"\n")  # within the 64 KiB bound
            writer.write_eof()
            raw = await asyncio.wait_for(reader.read(), 6)
            writer.close()
            assert b"JSON nested too deeply; send a flat object" in raw
            assert (await control_request(env.control, {"op": "ping"}, 5))["ok"] is True

    run(scenario())
    assert not os.path.exists(env.control)  # removed at shutdown


def test_control_socket_is_private_and_a_second_agent_refuses(env: Env) -> None:
    async def scenario() -> None:
        async with running_agent(env.config()):
            assert os.stat(env.control).st_mode & 0o777 == 0o600
            # Its own state directory, the same control socket.
            second = Supervisor(env.config(state_dir=os.path.join(env.root, "state2")))
            with pytest.raises(Exception, match="another agent is already listening"):
                await asyncio.wait_for(second.run(), 5)
            # The same state directory: refused before it touches anything there.
            third = Supervisor(env.config(control_socket=os.path.join(env.root, "c3.sock")))
            with pytest.raises(AgentError, match="another agent is using the state directory"):
                await asyncio.wait_for(third.run(), 5)
            assert not os.path.exists(os.path.join(env.root, "c3.sock"))

    run(scenario())


def test_sigkill_at_any_moment_leaves_nothing_behind(env: Env) -> None:
    """Killed mid-write (SIGKILL, at random moments of a start with hundreds of domains),
    the agent leaves temporary files; the next start removes them, and every record it
    finds is valid."""
    for i in range(300):
        name = f"vm{i:03d}"
        write_domain(env.store, name, env.sock(name), make_bundle(f"iid-{name}", name, 300))
    rng = random.Random(7)
    log_path = os.path.join(env.root, "agent.log")
    for _ in range(8):
        with open(log_path, "w") as log:
            proc = start_agent_process(env, stderr=log)
            time.sleep(rng.uniform(0.0, 0.3))
            proc.kill()
            proc.wait(timeout=10)
        os.unlink(env.control)  # stale: so that the next start's own socket is seen
    # What a kill between creating and renaming a temporary file leaves, for certain.
    planted = os.path.join(env.state, ".vm000.json.0123456789ab.tmp")
    Path(planted).write_text('{"domain": "vm0', encoding="utf-8")
    with open(log_path, "w") as log:
        proc = start_agent_process(env, stderr=log)
        try:
            deadline = time.monotonic() + 30

            def links() -> int:
                reply = asyncio.run(control_request(env.control, {"op": "ping"}, 5))
                return int(reply["domains"])

            while links() < 300:
                assert time.monotonic() < deadline, "not every domain followed within 30 s"
                time.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    err = Path(log_path).read_text(encoding="utf-8")
    assert proc.returncode == 0, err[-3000:]
    problems = [line for line in err.splitlines() if "event=state-problem" in line]
    assert len(problems) == 1 and "temporary file(s)" in problems[0], problems
    left = sorted(n for n in os.listdir(env.state) if not n.endswith(".json"))
    assert left == [".agent.lock"], left
    for name in os.listdir(env.state):
        if name.endswith(".json"):
            record = json.loads(Path(env.state, name).read_text(encoding="utf-8"))
            assert record["domain"] == name[: -len(".json")]
            assert record["active"] is True and record["link"] == "stopped", record


# An OpenSSH ed25519 public key, and what ``ssh-keygen -l`` says of it.
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEIdFCfqlznO98dpr+EHwLcE6nJGWY+PMvU+slK45pQB"
HOST_KEY_FINGERPRINT = (
    "SHA256:HcVCIlx4Qy9tcRKrkGmVTb81WlY+Gr2oQ4eW9gcfvcg"  # as OpenSSH 9.2's ssh-keygen -l prints it
)
NETWORK_CONFIG = {
    "version": 2,
    "ethernets": {
        "lan": {"match": {"macaddress": "00:16:3e:00:00:01"}, "addresses": ["10.0.0.5/24"]},
        "wan": {"match": {"macaddress": "00:16:3e:00:00:02"}, "dhcp4": True},
    },
}


def report_body(*addresses: str, **extra: Any) -> Dict[str, Any]:
    return dict(
        {
            "hostname": "web1",
            "cloud_init": "done",
            "interfaces": [
                {"name": "enX0", "mac": "00:16:3e:00:00:01", "addresses": list(addresses)},
                {"name": "enX1", "mac": "00:16:3e:00:00:02", "addresses": ["192.168.7.9/24"]},
            ],
            "host_keys": [HOST_KEY + " root@web1"],
        },
        **extra,
    )


def test_a_report_makes_the_clone_ready_once_its_static_addresses_are_up(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = Bundle(
        {"instance-id": "iid-web1", "local-hostname": "web1"}, None, None, NETWORK_CONFIG
    )
    write_domain(env.store, "web1", env.sock("web1"), bundle)

    async def scenario() -> None:
        async with qemu(env.sock("web1")) as server, running_agent(env.config()):
            guest = await server.accept()
            session = await guest.hello()
            _, digest = await guest.fetch(session)
            await guest.ack(session, digest)
            # The static address is not up: the report is kept, and says what is missing.
            body = report_body("fe80::216:3eff:fe00:1/64")
            await guest.status(session, state="applied", instance_id="iid-web1", report=body)
            report = await wait_until(lambda: state_of(env, "web1").get("report"))
            assert report["missing"] == ["10.0.0.5"]
            assert report["host_keys"] == [HOST_KEY]  # the comment is not kept
            assert report["instance_id"] == "iid-web1"
            assert state.readiness(state_of(env, "web1"))[0] == "failed"
            # A later report (the guest reported again) with the address up: ready.
            body = report_body("10.0.0.5/24", "fe80::216:3eff:fe00:1/64")
            await guest.status(session, 11, state="applied", instance_id="iid-web1", report=body)
            await wait_until(lambda: not state_of(env, "web1")["report"]["missing"])

    run(scenario())
    assert state.readiness(state_of(env, "web1")) == ("yes", "ready")
    assert cli.main(["status", "--state", env.state]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[5:7] == ["yes", "10.0.0.5"]
    assert cli.main(["status", "web1", "--state", env.state]) == 0
    shown = capsys.readouterr().out
    assert "ready: yes\n" in shown
    assert "hostname: web1" in shown
    assert "enX0 00:16:3e:00:00:01 10.0.0.5/24 fe80::216:3eff:fe00:1/64" in shown
    assert f"{HOST_KEY_FINGERPRINT} (ssh-ed25519)" in shown
    assert cli.main(["status", "web1", "--json", "--state", env.state]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["summary"]["ready"] == "yes"
    assert record["report"]["interfaces"][1]["addresses"] == ["192.168.7.9/24"]


@pytest.mark.parametrize(
    "report,sentence",
    [
        ({"host_keys": ["-----BEGIN OPENSSH PRIVATE KEY-----"]}, "public key lines"),
        ({"interfaces": [{"name": "e", "addresses": ["300.1.1.1/8"]}]}, "is not ip/prefix"),
        ({"cloud_init": "fine"}, "cloud_init must be one of"),
    ],
)
def test_a_malformed_report_is_refused_and_not_recorded(
    env: Env, report: Dict[str, Any], sentence: str
) -> None:
    write_domain(env.store, "web1", env.sock("web1"), make_bundle("iid-web1", "web1"))

    async def scenario() -> None:
        async with qemu(env.sock("web1")) as server, running_agent(env.config()):
            guest = await server.accept()
            session = await guest.hello()
            reply = await guest.status(session, state="applied", report=report)
            assert reply.message_type() is MessageType.ERROR
            assert sentence in reply.json()["message"]
            # The same session still works.
            assert (await guest.status(session, 11, state="applied")).json() == {"recorded": True}

    run(scenario())
    assert state_of(env, "web1").get("report") is None


def test_cloud_init_errors_and_failed_status_are_not_ready() -> None:
    at = "2026-01-01T00:00:01.000Z"
    base = state.new_state("web1")
    base.update(
        bundle={"sha256": "b" * 64, "instance_id": "iid-1", "size": 1},
        delivered={"at": "2026-01-01T00:00:00.000Z", "sha256": "b" * 64, "count": 1},
        status={"at": at, "state": "applied", "instance_id": "iid-1", "mismatch": False},
    )
    report = dict(report_body("10.0.0.5/24"), at=at, instance_id="iid-1", missing=[])
    assert state.readiness(dict(base, report=report)) == ("yes", "ready")
    errors = dict(report, cloud_init="error", errors=["a module failed"])
    assert state.readiness(dict(base, report=errors)) == (
        "failed",
        "cloud-init finished with errors: a module failed",
    )
    failed = dict(base, status=dict(base["status"], state="failed", reason="boom"))
    assert state.readiness(dict(failed, report=report)) == ("failed", "applying failed: boom")
    # A report of an earlier instance, or before the delivery, does not count.
    older = dict(base["status"], at="2025-12-31T23:59:59.000Z")
    assert state.readiness(dict(base, status=older, report=report))[0] == "no"
    other = dict(base, bundle=dict(base["bundle"], instance_id="iid-2"))
    assert "has not reported on instance-id iid-2" in state.readiness(other)[1]
    # A guest still waiting for an address is "not yet", and says until when; the same
    # gap in a final report is a failure that names the fix.
    waiting = dict(report, missing=["10.0.0.6"], settling=120)
    assert state.readiness(dict(base, report=waiting)) == (
        "no",
        "the guest is still waiting for the static address(es) 10.0.0.6 (it has enX0 "
        "00:16:3e:00:00:01 10.0.0.5/24; enX1 00:16:3e:00:00:02 192.168.7.9/24) and reports "
        "again by 2026-01-01T00:02:01Z",
    )
    keyless = dict(report, host_keys=[], settling=60)
    assert "waiting for its SSH host keys" in state.readiness(dict(base, report=keyless))[1]
    final = dict(report, missing=["10.0.0.6"])
    word, why = state.readiness(dict(base, report=final))
    assert word == "failed" and "match the clone's interfaces by MAC" in why


def test_status_cli_table_and_json(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = make_bundle("iid-web1", "web1")
    write_domain(env.store, "web1", env.sock("web1"), bundle)
    write_domain(env.store, "web2", env.sock("web2"), make_bundle("iid-web2", "web2"))

    async def scenario() -> None:
        async with qemu(env.sock("web1")) as server, running_agent(env.config()):
            guest = await server.accept()
            session = await guest.hello()
            _, digest = await guest.fetch(session)
            await guest.ack(session, digest)
            await guest.status(session, state="applied", instance_id="iid-web1")
            await wait_until(lambda: state_of(env, "web1").get("status"))

    run(scenario())
    # The agent is down now: status reads the files.
    assert cli.main(["status", "--state", env.state]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "DOMAIN", "CONNECTED", "HANDSHAKE", "DELIVERED", "STATUS", "READY", "ADDRESS",
        "INSTANCE-ID", "LAST", "ERROR",
    ]  # fmt: skip
    # Applied, but by a guest that sent no report: not ready (the single view says why).
    assert lines[1].split() == ["web1", "no", "v1", "yes", "applied", "no", "-", "iid-web1", "-"]
    assert lines[2].split() == ["web2", "no", "no", "no", "-", "no", "-", "iid-web2", "-"]
    assert cli.main(["status", "web1", "--state", env.state]) == 0
    assert "ready: no (the guest reported applied without a report" in capsys.readouterr().out

    assert cli.main(["status", "web1", "--json", "--state", env.state]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["domain"] == "web1"
    assert record["delivered"]["count"] == 1
    assert record["summary"]["delivered"] == "yes"

    assert cli.main(["status", "--json", "--state", env.state]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["domain"] for r in records] == ["web1", "web2"]

    assert cli.main(["status", "nosuch", "--state", env.state]) == 1
    err = capsys.readouterr().err
    assert "no state recorded for domain 'nosuch'" in err

    assert cli.main(["query", "web1", "--control-socket", env.control]) == 1
    assert "does not exist; is the agent running?" in capsys.readouterr().err


def test_config_file_and_cli_overrides(env: Env) -> None:
    path = os.path.join(env.root, "agent.ini")
    Path(path).write_text(
        "[agent]\nstore_dir = /srv/store\nknock_interval = 3\nmax_guest_frame = 65536\n"
        "control_socket =\n",
        encoding="utf-8",
    )
    args = cli.make_parser().parse_args(["run", "--config", path, "--state", "/srv/state"])
    config = cli.build_config(args)
    assert config.store_dir == "/srv/store"
    assert config.state_dir == "/srv/state"
    assert config.knock_interval == 3.0
    assert config.max_guest_frame == 65536
    assert config.control_socket is None
    Path(path).write_text("[agent]\nknock = 3\n", encoding="utf-8")
    with pytest.raises(cli.UsageError, match="unknown key 'knock'"):
        cli.build_config(args)


def test_an_empty_control_socket_on_the_command_line_turns_it_off(env: Env) -> None:
    parser = cli.make_parser()
    args = parser.parse_args(["run", "--store", env.store, "--control-socket", ""])
    assert cli.build_config(args).control_socket is None
    with pytest.raises(cli.UsageError, match="--store needs a path; give the directory"):
        cli.build_config(parser.parse_args(["run", "--store", ""]))
    # And the agent runs without one (it used to bind the current directory and exit 1).
    write_domain(env.store, "web1", env.sock("web1"), make_bundle("iid-web1", "web1"))
    environ = dict(os.environ, PYTHONPATH=str(RUNTIME))
    command = [
        sys.executable, "-m", "xenchannel.dom0", "run", "--store", env.store,
        "--state", env.state, "--socket-root", env.sockets, "--control-socket", "",
    ]  # fmt: skip
    proc = subprocess.Popen(command, env=environ, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(os.path.join(env.state, "web1.json")):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no state record within 10 s"
            time.sleep(0.05)
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "control_socket=- " in err, err


def start_agent_process(
    env: Env, prefix: Sequence[str] = (), stderr: Any = subprocess.PIPE
) -> "subprocess.Popen[str]":
    """``python -m xenchannel.dom0 run`` on ``env``, once its control socket is there.
    (With many domains, pass a file as ``stderr``: an unread pipe fills and stalls it.)"""
    environ = dict(os.environ, PYTHONPATH=str(RUNTIME))
    command = [
        *prefix, sys.executable, "-m", "xenchannel.dom0", "run", "--store", env.store,
        "--state", env.state, "--socket-root", env.sockets, "--control-socket", env.control,
    ]  # fmt: skip
    proc = subprocess.Popen(command, env=environ, stderr=stderr, text=True)
    deadline = time.monotonic() + 10
    while not os.path.exists(env.control):
        if proc.poll() is not None:
            raise AssertionError(proc.communicate()[1])
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the agent did not start: {proc.communicate()[1]}")
        time.sleep(0.05)
    return proc


def test_sigterm_exits_cleanly(env: Env) -> None:
    write_domain(env.store, "web1", env.sock("web1"), make_bundle("iid-1", "web1"))
    proc = start_agent_process(env)
    try:
        reply = asyncio.run(control_request(env.control, {"op": "ping"}, 5))
        assert reply["ok"] is True
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=5)
        assert time.monotonic() - started < 5
        assert proc.returncode == 0, stderr
        assert "event=started" in stderr
        assert "event=stopped" in stderr
        assert "domain=web1 event=loaded" in stderr
        assert not os.path.exists(env.control)
        assert state_of(env, "web1")["bundle"]["instance_id"] == "iid-1"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_more_domains_than_open_files_is_one_sentence(env: Env) -> None:
    """The agent raises its soft limit as far as the hard one goes, then says what to set."""
    for i in range(40):
        name = f"vm{i:02d}"
        write_domain(env.store, name, env.sock(name), make_bundle(f"iid-{i}", name))
    # util-linux's prlimit sets the limits for the agent alone: 40 domains need 296 files.
    proc = start_agent_process(env, ["prlimit", "--nofile=64:128", "--"])
    try:
        time.sleep(1.5)  # a few rescans: the warning comes once
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    warnings = [line for line in stderr.splitlines() if "event=too-many-domains" in line]
    assert len(warnings) == 1, stderr[-3000:]
    assert (
        "the store has 40 domains but the agent may open only 128 files; domains past that "
        "cannot connect: raise LimitNOFILE= to at least 296" in warnings[0]
    )
