"""The guest client: what the datasource and the in-guest agent call.

``GuestClient`` runs the guest's half of the protocol over a ``ChannelDevice``:

1. ``handshake()``: HELLO with a fresh nonce, repeated with back-off until a WELCOME
   echoes that nonce (anything else - stale replies from an earlier boot, echoes,
   garbage - is dropped); the highest common version wins.
2. ``fetch_bundle()``: GET_BUNDLE, then BEGIN / CHUNK... / END; the bundle is verified
   against its SHA-256 digest before it is returned, then acknowledged.  A stalled
   transfer is resumed from the last chunk received, a host that restarted is
   greeted again, each bounded by ``retries``.
3. ``report_status()``: applied / failed with a reason, acknowledged by dom0.
4. ``serve_queries()``: answer dom0's QUERY messages for a bounded time.

Every wait has a deadline from ``ClientConfig``; every failure is a ``ChannelError``
whose message is one sentence naming what was waited for.  Secrets never reach the
log: only message types, request ids, sizes and digests do.

Standard library only; runs on Python 3.6 to 3.13.
"""

import functools
import logging
import time
from typing import Any, Callable, Dict, List, Optional, Type, TypeVar

from xenchannel import __version__
from xenchannel.protocol import (
    DEFAULT_MAX_PAYLOAD,
    ERR_BAD_REQUEST,
    ERR_VERSION,
    MAX_BUNDLE_SIZE,
    PROTOCOL_VERSIONS,
    STATUS_STATES,
    Bundle,
    BundleError,
    ChannelError,
    ChannelTimeout,
    Frame,
    FrameDecoder,
    MessageType,
    ProtocolError,
    RemoteError,
    Sender,
    Skipped,
    VersionMismatch,
    new_nonce,
    new_request_id,
    next_request_id,
)
from xenchannel.session import (
    BundleAck,
    BundleBegin,
    BundleEnd,
    BundleReceiver,
    Error,
    GetBundle,
    Hello,
    Knock,
    Message,
    Query,
    QueryReply,
    Status,
    Welcome,
)

from .device import ChannelDevice

LOG = logging.getLogger("xenchannel.guest")

AGENT_NAME = "xenchannel-guest/" + __version__


class ClientConfig:
    """Bounds for every wait, in seconds.  The defaults suit a service; the
    datasource passes much shorter ones so a boot never stalls for long."""

    def __init__(
        self,
        *,
        wait_timeout: float = 30.0,
        lock_timeout: float = 10.0,
        connect_timeout: float = 30.0,
        hello_interval: float = 0.5,
        hello_max_interval: float = 3.0,
        idle_timeout: float = 10.0,
        transfer_timeout: float = 300.0,
        ack_timeout: float = 3.0,
        retries: int = 3,
        max_bundle_size: int = MAX_BUNDLE_SIZE,
        max_frame: int = DEFAULT_MAX_PAYLOAD,
        versions: Optional[List[int]] = None,
    ) -> None:
        self.wait_timeout = wait_timeout
        self.lock_timeout = lock_timeout
        self.connect_timeout = connect_timeout
        self.hello_interval = hello_interval
        self.hello_max_interval = hello_max_interval
        self.idle_timeout = idle_timeout
        self.transfer_timeout = transfer_timeout
        self.ack_timeout = ack_timeout
        self.retries = retries
        self.max_bundle_size = max_bundle_size
        self.max_frame = max_frame
        self.versions = sorted(versions or PROTOCOL_VERSIONS)


class Session:
    """What a completed handshake agreed on."""

    def __init__(
        self, session_id: str, version: int, nonce: str, *, elapsed: float, hellos: int, link: str
    ) -> None:
        self.session_id = session_id
        self.link = link  # the host connection this session lives on
        self.version = version
        self.nonce = nonce
        self.elapsed = elapsed
        self.hellos = hellos


class _Restart(Exception):
    """Internal: the host lost our session (it restarted); greet it again."""


class GuestClient:
    """The guest's end of one channel.  Use as a context manager."""

    def __init__(
        self, device: ChannelDevice, config: Optional[ClientConfig] = None, agent: str = AGENT_NAME
    ) -> None:
        self.device = device
        self.config = config or ClientConfig()
        self.agent = agent
        self.session = None  # type: Optional[Session]
        self._decoder = FrameDecoder(self.config.max_frame)
        self._pending = []  # type: List[Frame]
        self._request_id = new_request_id()
        self.frames_ignored = 0
        self.bytes_skipped = 0

    @classmethod
    def open(cls, path: str, config: Optional[ClientConfig] = None) -> "GuestClient":
        config = config or ClientConfig()
        device = ChannelDevice.open(path, config.wait_timeout, config.lock_timeout)
        return cls(device, config)

    def close(self) -> None:
        self.device.close()

    def __enter__(self) -> "GuestClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def _next_id(self) -> int:
        self._request_id = next_request_id(self._request_id)
        return self._request_id

    def _send(self, message: Message, request_id: int) -> None:
        version = self.session.version if self.session else self.config.versions[-1]
        LOG.debug("--> %s id=%08x", message.TYPE.name, request_id)
        self.device.write(message.encode(request_id, version), self.config.ack_timeout)

    def _recv(self, deadline: float) -> Optional[Frame]:
        """The next frame the host may send, or None at the deadline."""
        while not self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            data = self.device.read(remaining)
            if not data:
                continue
            for item in self._decoder.feed(data):
                if isinstance(item, Skipped):
                    self.bytes_skipped += item.size
                    LOG.debug("skipped %d bytes: %s", item.size, item.reason)
                elif item.is_from(Sender.HOST):
                    self._pending.append(item)
                else:
                    # Our own frames echoed by a tty that was still cooked, or junk.
                    self.frames_ignored += 1
        frame = self._pending.pop(0)
        LOG.debug("<-- %s id=%08x", _type_name(frame), frame.request_id)
        return frame

    # ------------------------------------------------------------------ handshake

    def handshake(self, timeout: Optional[float] = None) -> Session:
        """Greet the dom0 agent; returns the session (also kept on ``self``).

        ``timeout`` defaults to ``connect_timeout``.
        """
        config = self.config
        limit = config.connect_timeout if timeout is None else timeout
        start = time.monotonic()
        deadline = start + limit
        nonce = new_nonce()
        hello_ids = set()
        interval = config.hello_interval
        next_hello = start
        last_hello = 0.0
        while True:
            now = time.monotonic()
            if now >= next_hello:
                request_id = self._next_id()
                hello_ids.add(request_id)
                self._send(Hello(nonce, config.versions, self.agent), request_id)
                last_hello = now
                next_hello = now + interval
                interval = min(interval * 1.5, config.hello_max_interval)
            if now >= deadline:
                raise ChannelTimeout(
                    f"no answer from the dom0 agent on {self.device.path} within "
                    f"{limit:g} s ({len(hello_ids)} HELLOs sent); check "
                    "that the agent runs on dom0 and serves this domain"
                )
            frame = self._recv(min(next_hello, deadline))
            if frame is None:
                continue
            if frame.type == MessageType.KNOCK:
                # The host just (re)connected: greet now rather than at the next tick,
                # but not more than five times a second whatever a peer sends.
                next_hello = max(time.monotonic(), last_hello + 0.2)
            elif frame.type == MessageType.WELCOME:
                session = self._accept_welcome(frame, nonce, start, len(hello_ids))
                if session is not None:
                    return session
            elif frame.type == MessageType.ERROR and frame.request_id in hello_ids:
                error = _error(frame)
                if error.code == ERR_VERSION:
                    raise VersionMismatch(
                        f"the dom0 agent refused the handshake: {error.message} (this guest "
                        f"speaks {_fmt(config.versions)})"
                    )
                raise error.exception()
            else:
                self.frames_ignored += 1

    def _accept_welcome(
        self, frame: Frame, nonce: str, start: float, hellos: int
    ) -> Optional[Session]:
        welcome = _parsed(Welcome, frame)
        if welcome is None or welcome.nonce != nonce:
            self.frames_ignored += 1  # a WELCOME meant for an earlier session or boot
            return None
        version = welcome.version
        session_id = welcome.session
        if version not in self.config.versions or session_id is None:
            raise ProtocolError(
                f"the dom0 agent chose protocol version {version!r}, which this guest "
                f"does not speak ({_fmt(self.config.versions)})"
            )
        assert version is not None
        elapsed = time.monotonic() - start
        self.session = Session(
            session_id, version, nonce, elapsed=elapsed, hellos=hellos, link=welcome.link
        )
        LOG.info("handshake done: version %d after %d HELLO(s), %.3f s", version, hellos, elapsed)
        return self.session

    # ------------------------------------------------------------------ bundle

    def fetch_bundle(self) -> Bundle:
        """Fetch, verify and acknowledge this domain's bundle."""
        config = self.config
        deadline = time.monotonic() + config.transfer_timeout
        receiver = BundleReceiver(config.max_bundle_size)
        failures = 0
        last_error = ""
        while True:
            # A failed attempt that still moved the transfer forward (a chunk lost to
            # noise, then resumed) is not held against ``retries``: progress bounds it,
            # and ``transfer_timeout`` bounds it all.
            progress_before = receiver.progress[0]
            if failures > config.retries:
                raise ChannelTimeout(
                    f"fetching the bundle from {self.device.path} failed {failures} times "
                    f"(last: {last_error}); check the dom0 agent's log for this domain"
                )
            if time.monotonic() >= deadline:
                raise ChannelTimeout(
                    f"fetching the bundle from {self.device.path} took longer than "
                    f"{config.transfer_timeout:g} s; raise transfer_timeout for a slow channel"
                )
            session = self.session or self.handshake()
            try:
                bundle = self._transfer(session, receiver, deadline)
            except _Restart:
                self.session = None
                failures += _no_progress(receiver, progress_before)
                last_error = "the dom0 agent restarted or lost the session"
                continue
            except ChannelTimeout as exc:
                failures += _no_progress(receiver, progress_before)
                last_error = str(exc)
                continue
            except (ProtocolError, BundleError) as exc:
                # A corrupt transfer (the digest or a chunk sequence is off): retry;
                # the receiver has dropped what it held where it could not be trusted.
                failures += _no_progress(receiver, progress_before)
                last_error = str(exc)
                LOG.warning("bundle transfer failed, retrying: %s", exc)
                continue
            digest = receiver.sha256
            assert digest is not None  # end() succeeded, so the digest was checked
            self._acknowledge(functools.partial(BundleAck, sha256=digest), "bundle receipt")
            return bundle

    def _transfer(self, session: Session, receiver: BundleReceiver, deadline: float) -> Bundle:
        request_id = self._next_id()
        self._send(GetBundle(session.session_id, receiver.resume()), request_id)
        idle = self.config.idle_timeout
        last_progress = time.monotonic()
        while True:
            frame = self._recv_reply(request_id, min(last_progress + idle, deadline))
            if frame is None:
                got, total = receiver.progress
                raise ChannelTimeout(
                    f"the bundle transfer stalled for {idle:g} s at {got} of {total} bytes"
                )
            last_progress = time.monotonic()
            if frame.type == MessageType.BUNDLE_BEGIN:
                receiver.begin(BundleBegin.from_frame(frame))
            elif frame.type == MessageType.BUNDLE_CHUNK:
                receiver.chunk(frame.payload)
            elif frame.type == MessageType.BUNDLE_END:
                bundle = receiver.end(BundleEnd.from_frame(frame))
                LOG.info(
                    "bundle received: %d bytes, sha256 %s, instance-id %s",
                    receiver.progress[0],
                    receiver.sha256,
                    bundle.instance_id,
                )
                return bundle
            elif frame.type == MessageType.ERROR:
                self._raise_remote(frame)
            else:
                self.frames_ignored += 1

    def _recv_reply(self, request_id: int, deadline: float) -> Optional[Frame]:
        """The next frame answering ``request_id``, or None at the deadline.

        Frames for other request ids (stale replies) are dropped; a KNOCK is judged by
        ``_on_knock``, which raises ``_Restart`` if the host restarted.
        """
        while True:
            frame = self._recv(deadline)
            if frame is None:
                return None
            if frame.type == MessageType.KNOCK:
                self._on_knock(frame)
            elif frame.request_id == request_id:
                return frame
            else:
                self.frames_ignored += 1

    def _on_knock(self, frame: Frame) -> None:
        """A KNOCK mid-request: greet again only if it comes from a new connection.

        A KNOCK of the connection our session lives on was sent before we greeted and
        delivered late (stale bytes are normal); one from another connection means the
        agent or QEMU restarted and our session is gone.
        """
        knock = _parsed(Knock, frame)
        link = knock.link if knock is not None else ""
        if self.session is not None and link == self.session.link and link:
            self.frames_ignored += 1
            return
        raise _Restart()

    def _raise_remote(self, frame: Frame) -> None:
        error = _error(frame)
        if error.code == ERR_BAD_REQUEST and "session" in error.message:
            raise _Restart()
        raise error.exception()

    def _acknowledge(self, report: Callable[[str], Message], what: str) -> bool:
        """Send a report and wait for STATUS_ACK, re-greeting a restarted host.

        Never raises for dom0's sake: an unreachable or refusing dom0 gives False (and a
        warning), so a verified bundle is never lost to its acknowledgement.
        """
        config = self.config
        for _attempt in range(config.retries + 1):
            try:
                # Re-greeting a restarted host here is bounded like the ack itself, so a
                # report never holds a boot for the whole connect_timeout.
                session = self.session or self.handshake(timeout=config.ack_timeout)
            except ChannelError as exc:
                LOG.warning("could not reach dom0 to deliver the %s: %s", what, exc)
                return False
            request_id = self._next_id()
            self._send(report(session.session_id), request_id)
            deadline = time.monotonic() + config.ack_timeout
            try:
                while True:
                    frame = self._recv_reply(request_id, deadline)
                    if frame is None:
                        break
                    if frame.type == MessageType.STATUS_ACK:
                        return True
                    if frame.type == MessageType.ERROR:
                        self._raise_remote(frame)
            except _Restart:
                self.session = None
            except RemoteError as exc:
                # e.g. the bundle changed on dom0 after we verified ours: a report, not a
                # reason to throw away what we hold.
                LOG.warning("dom0 refused the %s: %s", what, exc)
                return False
        LOG.warning("dom0 did not acknowledge the %s after %d tries", what, config.retries + 1)
        return False

    # ------------------------------------------------------------------ status, queries

    def report_status(
        self,
        state: str,
        reason: Optional[str] = None,
        instance_id: Optional[str] = None,
    ) -> bool:
        """Tell dom0 how applying the bundle went; True once dom0 recorded it."""
        if state not in STATUS_STATES:
            raise ValueError(f"status {state!r} is not one of {', '.join(STATUS_STATES)}")
        return self._acknowledge(
            lambda session: Status(session, state, reason, instance_id), f"status {state!r}"
        )

    def serve_queries(
        self,
        handler: Callable[[List[str]], Dict[str, Any]],
        duration: float,
        should_stop: Optional[Callable[[], bool]] = None,
    ) -> int:
        """Answer QUERY messages for ``duration`` seconds; returns how many."""
        deadline = time.monotonic() + duration
        answered = 0
        while not (should_stop and should_stop()):
            frame = self._recv(min(deadline, time.monotonic() + 0.5))
            if frame is None:
                if time.monotonic() >= deadline:
                    return answered
                continue
            if frame.type != MessageType.QUERY:
                self.frames_ignored += 1
                continue
            query = _parsed(Query, frame)
            try:
                reply = handler(query.what if query is not None else [])
            except ChannelError as exc:
                reply = {"error": str(exc)}
            self._send(QueryReply(reply), frame.request_id)
            answered += 1
        return answered


def fetch(path: str, config: Optional[ClientConfig] = None) -> Bundle:
    """Open ``path``, fetch and acknowledge the bundle, close: the whole guest flow."""
    with GuestClient.open(path, config) as client:
        return client.fetch_bundle()


def _no_progress(receiver: BundleReceiver, before: int) -> int:
    """1 if an attempt received no new bundle bytes (a failure to count), else 0."""
    return 0 if receiver.progress[0] > before else 1


M = TypeVar("M", bound=Message)


def _parsed(kind: Type[M], frame: Frame) -> Optional[M]:
    """The frame's message, or None if its body is unreadable (garbage is dropped)."""
    try:
        return kind.from_frame(frame)
    except ProtocolError:
        return None


def _error(frame: Frame) -> Error:
    return _parsed(Error, frame) or Error("error", "")


def _type_name(frame: Frame) -> str:
    mtype = frame.message_type()
    return mtype.name if mtype is not None else f"type-0x{frame.type:02x}"


def _fmt(versions: List[int]) -> str:
    return ", ".join(str(v) for v in versions)
