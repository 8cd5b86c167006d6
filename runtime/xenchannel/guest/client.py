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
from typing import Any, Callable, Dict, List, Optional

from xenchannel import __version__
from xenchannel.protocol import (
    DEFAULT_MAX_PAYLOAD,
    MAX_BUNDLE_SIZE,
    PROTOCOL_VERSIONS,
    STATUS_STATES,
    Bundle,
    BundleError,
    ChannelError,
    ChannelTimeout,
    Frame,
    FrameDecoder,
    ProtocolError,
    RemoteError,
    Skipped,
    new_request_id,
)
from xenchannel.session import (
    Acknowledged,
    BundleAck,
    BundleProgress,
    BundleReceived,
    BundleReceiver,
    Busy,
    Event,
    GuestSession,
    Ignored,
    Knocked,
    Message,
    QueryReceived,
    Report,
    SessionInfo,
    SessionLost,
    Status,
    Welcomed,
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
        self.validate()

    # Every wait, with the range it may take (0: do not wait at all).
    SECONDS = (
        ("wait_timeout", 0.0),
        ("lock_timeout", 0.0),
        ("connect_timeout", 0.01),
        ("hello_interval", 0.01),
        ("hello_max_interval", 0.01),
        ("idle_timeout", 0.01),
        ("transfer_timeout", 0.01),
        ("ack_timeout", 0.01),
    )
    MAX_SECONDS = 3600.0

    def validate(self) -> None:
        """Raise ClientConfigError naming the first unusable setting."""
        for key, low in self.SECONDS:
            value = getattr(self, key)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not low <= value <= self.MAX_SECONDS:
                raise ClientConfigError(
                    f"{key} must be a number of seconds from {low:g} to "
                    f"{self.MAX_SECONDS:g}, not {value!r}"
                )
        counts = (
            ("retries", 0, 100),
            ("max_bundle_size", 1, MAX_BUNDLE_SIZE),
            ("max_frame", 4096, DEFAULT_MAX_PAYLOAD),
        )
        for key, low, high in counts:
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ClientConfigError(
                    f"{key} must be a whole number from {low} to {high}, not {value!r}"
                )
        # Any version numbers: negotiation with the host, not this check, decides which.
        if not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 < v < 256 for v in self.versions
        ):
            raise ClientConfigError(
                f"versions must be protocol version numbers, not {self.versions!r}"
            )


class ClientConfigError(ChannelError):
    """A ``ClientConfig`` setting is unusable; str() names it and its range."""


class Session:
    """What a completed handshake agreed on, and how long it took."""

    def __init__(self, info: SessionInfo, elapsed: float) -> None:
        self.session_id = info.session_id
        self.link = info.link  # the host connection this session lives on
        self.version = info.version
        self.nonce = info.nonce
        self.hellos = info.hellos
        self.elapsed = elapsed


class _Restart(Exception):
    """Internal: the host lost our session (it restarted); greet it again."""


class GuestClient:
    """The guest's end of one channel.  Use as a context manager.

    A driver of ``GuestSession`` (xenchannel.session), which holds every rule of the
    guest's half of a session: this class moves bytes and keeps time.
    """

    def __init__(
        self, device: ChannelDevice, config: Optional[ClientConfig] = None, agent: str = AGENT_NAME
    ) -> None:
        self.device = device
        self.config = config or ClientConfig()
        self.agent = agent
        self.machine = GuestSession(self.config.versions, agent, new_request_id())
        self._session = None  # type: Optional[Session]
        self._decoder = FrameDecoder(self.config.max_frame)
        self._pending = []  # type: List[Frame]
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

    @property
    def session(self) -> Optional[Session]:
        """The current session, or None (never made, or lost since)."""
        return self._session if self.machine.session is not None else None

    # ------------------------------------------------------------------ plumbing

    def _send(self, data: bytes, what: str) -> None:
        LOG.debug("--> %s id=%08x", what, self.machine.request_id)
        self.device.write(data, self.config.ack_timeout)

    def _recv(self, deadline: float) -> Optional[Frame]:
        """The next frame, or None at the deadline."""
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
                else:
                    self._pending.append(item)
        frame = self._pending.pop(0)
        LOG.debug("<-- %s id=%08x", _type_name(frame), frame.request_id)
        return frame

    def _event(self, deadline: float) -> Optional[Event]:
        """What the next frame means to the session machine, or None at the deadline.

        Frames it ignores (echoes, stale replies, junk) are counted and skipped.
        """
        while True:
            frame = self._recv(deadline)
            if frame is None:
                return None
            event = self.machine.receive(frame)
            if not isinstance(event, Ignored):
                return event
            LOG.debug("ignored: %s", event.reason)
            self.frames_ignored += 1

    # ------------------------------------------------------------------ handshake

    def handshake(self, timeout: Optional[float] = None) -> Session:
        """Greet the dom0 agent; returns the session (also kept on ``self``).

        ``timeout`` defaults to ``connect_timeout``.
        """
        config = self.config
        machine = self.machine
        limit = config.connect_timeout if timeout is None else timeout
        start = time.monotonic()
        deadline = start + limit
        machine.lose_session()  # every handshake greets with a fresh nonce
        interval = config.hello_interval
        next_hello = start
        last_hello = 0.0
        while True:
            now = time.monotonic()
            if now >= next_hello:
                self._send(machine.hello(), "HELLO")
                last_hello = now
                next_hello = now + interval
                interval = min(interval * 1.5, config.hello_max_interval)
            if now >= deadline:
                raise ChannelTimeout(
                    f"no answer from the dom0 agent on {self.device.path} within "
                    f"{limit:g} s ({machine.hellos_sent} HELLOs sent); check "
                    "that the agent runs on dom0 and serves this domain"
                )
            event = self._event(min(next_hello, deadline))
            if isinstance(event, Knocked):
                # The host just (re)connected: greet now rather than at the next tick,
                # but not more than five times a second whatever a peer sends.
                next_hello = max(time.monotonic(), last_hello + 0.2)
            elif isinstance(event, Welcomed):
                elapsed = time.monotonic() - start
                self._session = Session(event.session, elapsed)
                LOG.info(
                    "handshake done: version %d after %d HELLO(s), %.3f s",
                    event.session.version,
                    event.session.hellos,
                    elapsed,
                )
                return self._session

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
            if self.session is None:
                self.handshake()
            try:
                received = self._transfer(receiver, deadline)
            except _Restart:
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
            self._acknowledge(
                functools.partial(BundleAck, sha256=received.sha256), "bundle receipt"
            )
            return received.bundle

    def _transfer(self, receiver: BundleReceiver, deadline: float) -> BundleReceived:
        self._send(self.machine.get_bundle(receiver), "GET_BUNDLE")
        idle = self.config.idle_timeout
        last_progress = time.monotonic()
        while True:
            event = self._event(min(last_progress + idle, deadline))
            if event is None:
                got, total = receiver.progress
                raise ChannelTimeout(
                    f"the bundle transfer stalled for {idle:g} s at {got} of {total} bytes"
                )
            if isinstance(event, SessionLost):
                raise _Restart()
            if isinstance(event, Busy):
                # dom0 paces requests (we resumed often, or another request crossed):
                # wait as asked, within our own deadline, and ask again.
                time.sleep(max(0.0, min(event.retry_after, deadline - time.monotonic())))
                self._send(self.machine.get_bundle(receiver), "GET_BUNDLE")
                last_progress = time.monotonic()
            elif isinstance(event, BundleProgress):
                last_progress = time.monotonic()
            elif isinstance(event, BundleReceived):
                LOG.info(
                    "bundle received: %d bytes, sha256 %s, instance-id %s",
                    receiver.progress[0],
                    event.sha256,
                    event.bundle.instance_id,
                )
                return event
            else:
                self.frames_ignored += 1

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
                if self.session is None:
                    self.handshake(timeout=config.ack_timeout)
            except ChannelError as exc:
                LOG.warning("could not reach dom0 to deliver the %s: %s", what, exc)
                return False
            self._send(self.machine.report(report), what)
            deadline = time.monotonic() + config.ack_timeout
            try:
                while True:
                    event = self._event(deadline)
                    if event is None or isinstance(event, SessionLost):
                        break
                    if isinstance(event, Acknowledged):
                        return True
                    self.frames_ignored += 1
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
        report: Optional[Report] = None,
    ) -> bool:
        """Tell dom0 how applying the bundle went, and with ``report`` what the clone is
        now (``xenchannel.guest.report.collect``); True once dom0 recorded it."""
        if state not in STATUS_STATES:
            raise ValueError(f"status {state!r} is not one of {', '.join(STATUS_STATES)}")
        return self._acknowledge(
            lambda session: Status(session, state, reason, instance_id, report),
            f"status {state!r}",
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
            event = self._event(min(deadline, time.monotonic() + 0.5))
            if event is None:
                if time.monotonic() >= deadline:
                    return answered
                continue
            if not isinstance(event, QueryReceived):
                self.frames_ignored += 1
                continue
            try:
                reply = handler(event.query.what)
            except ChannelError as exc:
                reply = {"error": str(exc)}
            self._send(self.machine.answer(event, reply), "QUERY_REPLY")
            answered += 1
        return answered


def fetch(path: str, config: Optional[ClientConfig] = None) -> Bundle:
    """Open ``path``, fetch and acknowledge the bundle, close: the whole guest flow."""
    with GuestClient.open(path, config) as client:
        return client.fetch_bundle()


def _no_progress(receiver: BundleReceiver, before: int) -> int:
    """1 if an attempt received no new bundle bytes (a failure to count), else 0."""
    return 0 if receiver.progress[0] > before else 1


def _type_name(frame: Frame) -> str:
    mtype = frame.message_type()
    return mtype.name if mtype is not None else f"type-0x{frame.type:02x}"
