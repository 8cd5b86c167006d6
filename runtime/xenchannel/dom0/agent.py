"""The dom0 agent: one asyncio process serving every domain of a host.

For each domain in the store (``store.py``) a ``DomainLink`` connects to the domain's
channel socket - which exists only while the domain runs, and which QEMU serves to one
client at a time - with back-off, KNOCKs, answers the guest's HELLO, GET_BUNDLE,
BUNDLE_ACK and STATUS, and records what happened (``state.py``).  The ``Agent`` rescans
the store every second, starting, updating and stopping links, and answers ``query`` and
``ping`` requests on a Unix control socket.

Isolation is the rule everything here is built around: a link serves only the bundle of
the store entry that names its socket, read from the store at the moment the guest asks.
Nothing a guest sends (a domain name, an instance-id) is ever used to choose what to send.

Every wire byte goes through ``xenchannel.protocol``; this module only moves frames.
"""

import asyncio
import collections
import json
import logging
import os
import random
import re
import signal
import socket as socketlib
import stat
import time
from dataclasses import dataclass
from typing import (
    Any,
    Callable,
    Deque,
    Dict,
    Iterable,
    Iterator,
    List,
    NamedTuple,
    Optional,
    Set,
    Tuple,
    TypeVar,
)

from xenchannel import __version__
from xenchannel.dom0 import LOG, log_event
from xenchannel.dom0.state import StateRecorder, now_iso
from xenchannel.dom0.store import (
    DomainEntry,
    Signature,
    StoreError,
    domain_file,
    load_domain,
    scan_store,
    signature_of,
)
from xenchannel.protocol import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_PAYLOAD,
    ERR_NO_BUNDLE,
    ERR_VERSION,
    PROTOCOL_VERSIONS,
    ChannelClosed,
    ChannelError,
    ChannelTimeout,
    FrameDecoder,
    Skipped,
    new_nonce,
)
from xenchannel.session import (
    MAX_INSTANCE_ID,
    BundleRequested,
    Delivered,
    DeliveryReported,
    Echoed,
    Event,
    Greeted,
    GuestError,
    HostSession,
    HostState,
    QueryAnswered,
    QueryFailed,
    Refused,
    StatusReported,
    printable,
)

T = TypeVar("T")

DEFAULT_STORE_DIR = "/etc/xenchannel/domains"
DEFAULT_STATE_DIR = "/var/lib/xenchannel/state"
DEFAULT_SOCKET_ROOT = "/run/xenchannel"
DEFAULT_CONTROL_SOCKET = "/run/xenchannel/agent.sock"

READ_SIZE = 64 * 1024
# Replies queued for a guest that does not read them: past this the guest is stuck or
# hostile, and the connection is dropped rather than buffering without bound.
MAX_QUEUED_FRAMES = 256
SKIP_LOG_INTERVAL = 10.0
# A connection that lasted this long (or carried a valid frame) resets the back-off;
# a socket that accepts and hangs up at once keeps backing off.
STABLE_CONNECTION = 1.0
CONTROL_MAX_REQUEST = 64 * 1024
CONTROL_READ_TIMEOUT = 5.0
MAX_QUERY_TIMEOUT = 300.0
MAX_QUERY_KEYS = 64
SHUTDOWN_TIMEOUT = 3.0
LOAD_BATCH = 16

MSG_NO_BUNDLE = "dom0 has no usable metadata for this domain; the agent's status says why"


class AgentError(ChannelError):
    """The agent cannot start or run as configured; str() is one sentence."""


@dataclass
class AgentConfig:
    """Everything the agent's behaviour depends on; every wait is bounded by one of these."""

    store_dir: str
    state_dir: str
    socket_root: str
    control_socket: Optional[str]  # None: no control socket
    rescan_interval: float = 1.0
    connect_timeout: float = 2.0
    backoff_initial: float = 0.1
    backoff_max: float = 5.0
    knock_interval: float = 10.0
    query_timeout: float = 5.0
    max_guest_frame: int = 262144
    chunk_size: int = DEFAULT_CHUNK_SIZE

    def validate(self) -> None:
        """Raise AgentError naming the first unusable setting."""
        for key in ("store_dir", "state_dir", "socket_root"):
            value = getattr(self, key)
            if not isinstance(value, str) or not os.path.isabs(value):
                raise AgentError(f"{key} must be an absolute path, not {value!r}")
        if self.control_socket is not None and not os.path.isabs(self.control_socket):
            raise AgentError(
                f"control_socket must be an absolute path, not {self.control_socket!r}"
            )
        for key in (
            "rescan_interval",
            "connect_timeout",
            "backoff_initial",
            "backoff_max",
            "knock_interval",
            "query_timeout",
        ):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or not 0 < value <= 3600:
                raise AgentError(f"{key} must be a number of seconds above 0, not {value!r}")
        if self.backoff_initial > self.backoff_max:
            raise AgentError("backoff_initial must not exceed backoff_max")
        if not 4096 <= self.max_guest_frame <= DEFAULT_MAX_PAYLOAD:
            raise AgentError(
                f"max_guest_frame must be between 4096 and {DEFAULT_MAX_PAYLOAD} bytes"
            )
        # A chunk frame carries a 4-byte sequence number before the chunk's bytes.
        if not 1 <= self.chunk_size <= DEFAULT_MAX_PAYLOAD - 4:
            raise AgentError(f"chunk_size must be between 1 and {DEFAULT_MAX_PAYLOAD - 4} bytes")


class BundleInfo(NamedTuple):
    """What a link keeps of its domain's bundle: never the bundle itself."""

    digest: str
    instance_id: str
    size: int
    hostname: Optional[str]


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _load_encoded(store_dir: str, name: str, socket_root: str) -> Tuple[DomainEntry, bytes]:
    entry = load_domain(store_dir, name, socket_root)
    return entry, entry.bundle.encode()


# --------------------------------------------------------------------------- outbox


class _Outbox:
    """Frames waiting for one connection's writer task.

    Short messages go first; a bundle transfer is pulled one frame at a time, each
    written only after the previous one drained.  So the reader never waits for the
    channel (a tty echoing our bytes back could otherwise deadlock us), the write side
    has backpressure, and at most one chunk per transfer is in memory beyond the
    encoded bundle.
    """

    def __init__(self) -> None:
        self._control: Deque[bytes] = collections.deque()
        self._transfer: Optional[Iterator[bytes]] = None
        self._on_done: Optional[Callable[[], None]] = None
        self.ready = asyncio.Event()
        self.overflow = False
        self.progress_at = 0.0  # monotonic time of the last transfer frame taken

    def put(self, frame: bytes) -> None:
        if len(self._control) >= MAX_QUEUED_FRAMES:
            self.overflow = True
        else:
            self._control.append(frame)
        self.ready.set()

    def start_transfer(self, frames: Iterable[bytes], on_done: Callable[[], None]) -> None:
        # A new GET_BUNDLE supersedes one still streaming: the guest started over.
        self._transfer = iter(frames)
        self._on_done = on_done
        self.ready.set()

    def cancel_transfer(self) -> None:
        self._transfer = None
        self._on_done = None

    @property
    def transferring(self) -> bool:
        return self._transfer is not None

    def next_frame(self) -> Optional[bytes]:
        if self._control:
            return self._control.popleft()
        while self._transfer is not None:
            self.progress_at = time.monotonic()
            try:
                return next(self._transfer)
            except StopIteration:
                # The previous frame, the last, has drained: the transfer is complete.
                done, self._transfer, self._on_done = self._on_done, None, None
                if done is not None:
                    done()
        return None


# --------------------------------------------------------------------------- links


class DomainLink:
    """One domain's channel: connect, handshake, serve its own bundle, record events."""

    def __init__(self, agent: "Agent", name: str, socket: str) -> None:
        self.agent = agent
        self.config = agent.config
        self.name = name
        self.socket = socket
        self.bundle: Optional[BundleInfo] = None
        self.store_error: Optional[str] = None
        # The session rules of the current connection; None while not connected.
        self.machine: Optional[HostSession] = None
        self.connected = False
        self._task: Optional[asyncio.Task[None]] = None
        self._wake = asyncio.Event()
        self._closing = False
        self._close_reason = "stopped"
        self._writer: Optional[asyncio.StreamWriter] = None
        self._outbox: Optional[_Outbox] = None
        self._drop_reason: Optional[str] = None
        self._reset_backoff = False
        self._pending: Dict[int, asyncio.Future[Dict[str, Any]]] = {}
        self._phase = ""
        self._loaded_once = False
        self._skip_bytes = 0
        self._skip_notes = 0
        self._skip_reasons: Dict[str, int] = {}
        self._skip_logged = -1e9
        self.echoes_ignored = 0

    @property
    def session(self) -> Optional[str]:
        """The id of the current connection's session, if the guest greeted."""
        return self.machine.session_id if self.machine is not None else None

    # ------------------------------------------------------------- control from the agent

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    @property
    def task(self) -> Optional["asyncio.Task[None]"]:
        return self._task

    def closing(self) -> bool:
        return self._closing

    def request_close(self, reason: str) -> None:
        """Stop the link: closes an open connection at once, cancels the task."""
        self._closing = True
        self._close_reason = reason
        self._drop(reason)
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def set_entry(self, entry: DomainEntry) -> None:
        """The store entry was (re)loaded and is valid."""
        self._move(entry.socket)
        info = BundleInfo(entry.digest, entry.instance_id, entry.size, entry.hostname)
        changed = info != self.bundle
        self.bundle = info
        self.store_error = None
        if not changed and self._loaded_once:
            return
        state = self.agent.recorder.ensure(self.name)
        recorded = state.get("bundle") or {}
        fields: Dict[str, Any] = {
            "socket": self.socket,
            "sha256": info.digest,
            "instance_id": info.instance_id,
            "hostname": info.hostname,
            "size": info.size,
        }
        if not self._loaded_once:
            log_event(self.name, "loaded", **fields)
        else:
            log_event(self.name, "bundle-changed", **fields)
        self._loaded_once = True
        if recorded.get("sha256") != info.digest or not state.get("active", True):
            self._record(
                socket=self.socket,
                active=True,
                bundle={"sha256": info.digest, "instance_id": info.instance_id, "size": info.size},
            )

    def set_invalid(self, message: str, socket: str) -> None:
        """The store entry names a valid socket but holds no valid bundle."""
        self._move(socket)
        self.bundle = None
        self.store_error = message
        self._loaded_once = True
        log_event(self.name, "store-error", logging.ERROR, error=message)
        self._record(socket=self.socket, active=True, bundle=None, last_error=self._err(message))

    def _move(self, socket: str) -> None:
        if socket == self.socket:
            return
        log_event(self.name, "socket-changed", old=self.socket, new=socket)
        self.socket = socket
        self._record(socket=socket)
        self._reset_backoff = True
        self._drop("socket-changed")
        self._wake.set()

    def _drop(self, reason: str) -> None:
        """Close the current connection; the session loop ends with ``reason``."""
        if self._writer is not None:
            self._drop_reason = reason
            self._writer.close()

    # ------------------------------------------------------------- recording

    def _record(self, **fields: Any) -> None:
        self.agent.recorder.update(self.name, **fields)

    @staticmethod
    def _err(message: str) -> Dict[str, Any]:
        return {"at": now_iso(), "message": message}

    def _record_error(self, message: str) -> None:
        self._record(last_error=self._err(message))

    def _phase_change(
        self, phase: str, event: str, level: int = logging.INFO, **fields: Any
    ) -> None:
        """Log a connection state change once, not on every retry."""
        if phase == self._phase:
            log_event(self.name, event, logging.DEBUG, **fields)
            return
        self._phase = phase
        log_event(self.name, event, level, **fields)

    def _note_skipped(self, item: Skipped) -> None:
        self._skip_bytes += item.size
        self._skip_notes += 1
        # Reasons carry sizes ("oversized HELLO frame of 300000 bytes"); fold the
        # numbers so a flood of varied frames still gives a few distinct reasons.
        reason = re.sub(r"\d+", "N", item.reason)
        if reason not in self._skip_reasons and len(self._skip_reasons) >= 8:
            reason = "other"
        self._skip_reasons[reason] = self._skip_reasons.get(reason, 0) + item.size

    def _log_skipped(self, force: bool = False) -> None:
        """At most one line per SKIP_LOG_INTERVAL summarising what the decoder dropped."""
        if not self._skip_bytes:
            return
        now = time.monotonic()
        if not force and now - self._skip_logged < SKIP_LOG_INTERVAL:
            return
        reasons = ",".join(
            f"{reason}:{size}" for reason, size in sorted(self._skip_reasons.items())
        )
        log_event(
            self.name,
            "skipped",
            logging.WARNING,
            bytes=self._skip_bytes,
            notes=self._skip_notes,
            reasons=reasons,
        )
        self._skip_bytes = self._skip_notes = 0
        self._skip_reasons = {}
        self._skip_logged = now

    # ------------------------------------------------------------- connection loop

    async def _run(self) -> None:
        config = self.config
        backoff = config.backoff_initial
        try:
            while not self._closing:
                self._log_skipped()
                if self._reset_backoff:
                    self._reset_backoff = False
                    backoff = config.backoff_initial
                path = self.socket
                if not _is_socket(path):
                    self._phase_change("waiting", "waiting", socket=path)
                else:
                    try:
                        reader, writer = await asyncio.wait_for(
                            asyncio.open_unix_connection(path), config.connect_timeout
                        )
                    except asyncio.TimeoutError:
                        self._phase_change(
                            "unreachable",
                            "connect-failed",
                            logging.WARNING,
                            socket=path,
                            error=f"no answer within {config.connect_timeout:g} s",
                        )
                    except OSError as exc:
                        self._phase_change(
                            "unreachable",
                            "connect-failed",
                            logging.WARNING,
                            socket=path,
                            error=exc.strerror or str(exc),
                        )
                    else:
                        if await self._serve(reader, writer):
                            backoff = config.backoff_initial
                        # (A method, not the attribute: mypy would keep the narrowing
                        # from the loop condition across the await.)
                        if self.closing():
                            break
                        if self._reset_backoff:
                            continue
                await self._pause(backoff)
                backoff = min(backoff * 2, config.backoff_max)
        except asyncio.CancelledError:
            if not self._closing:
                raise
        finally:
            self._fail_pending(ChannelClosed(f"domain {self.name}'s link was stopped"))
            self._log_skipped(force=True)

    async def _pause(self, delay: float) -> None:
        """Sleep ``delay`` with jitter (so 1000 links do not retry in step), or until woken."""
        if self._wake.is_set():
            self._wake.clear()
            return
        try:
            await asyncio.wait_for(self._wake.wait(), delay * random.uniform(0.5, 1.0))  # noqa: S311
        except asyncio.TimeoutError:
            pass
        self._wake.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Run one connection until it ends; True if it was worth resetting the back-off."""
        config = self.config
        started = time.monotonic()
        outbox = _Outbox()
        self._writer, self._outbox = writer, outbox
        self._drop_reason = None
        decoder = FrameDecoder(config.max_guest_frame)
        # A new connection id per connect: a guest tells a late KNOCK of the connection
        # its session lives on from one of a new connection (the agent or QEMU restarted).
        machine = HostSession(PROTOCOL_VERSIONS, new_nonce()[:16], now=started)
        self.machine = machine
        self.connected = True
        self._phase_change("connected", "connected", socket=self.socket)
        self._record(connected=True, connected_at=now_iso(), socket=self.socket)
        write_task = asyncio.ensure_future(self._write_loop(writer, outbox))
        read_task: Optional[asyncio.Future[bytes]] = None
        useful = False
        reason = "eof"
        try:
            self._knock(machine, outbox)
            last_activity = time.monotonic()
            while True:
                if write_task.done():
                    reason = self._drop_reason or "write-failed"
                    break
                # While a transfer streams the guest is busy receiving and sends nothing;
                # a KNOCK then would make it abandon the transfer and greet again.
                if outbox.transferring:
                    last_activity = time.monotonic()
                last_activity = max(last_activity, outbox.progress_at)
                wait = last_activity + config.knock_interval - time.monotonic()
                if wait <= 0:
                    # No guest traffic for a while: a guest that (re)started its client
                    # may be waiting for a hint to greet.
                    self._knock(machine, outbox)
                    last_activity = time.monotonic()
                    self._log_skipped()
                    continue
                if read_task is None:
                    read_task = asyncio.ensure_future(reader.read(READ_SIZE))
                # asyncio.wait, not wait_for: a timeout must not cancel a read that
                # already holds data.
                waiting: List[asyncio.Future[Any]] = [read_task, write_task]
                done, _ = await asyncio.wait(
                    waiting, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                )
                if read_task not in done:
                    continue
                try:
                    data = read_task.result()
                except (ConnectionError, OSError) as exc:
                    reason = self._drop_reason or f"reset ({exc.strerror or exc})"
                    break
                finally:
                    read_task = None
                if not data:
                    reason = self._drop_reason or "eof"
                    break
                for item in decoder.feed(data):
                    if isinstance(item, Skipped):
                        self._note_skipped(item)
                        answer = machine.oversized(item)
                        if answer is not None:
                            outbox.put(answer)
                        continue
                    event = machine.receive(item, time.monotonic())
                    if isinstance(event, Echoed):
                        # Our own frames echoed by a guest tty in cooked mode.
                        self.echoes_ignored += 1
                        continue
                    if machine.state is not HostState.SENDING:
                        # A new handshake or a refused one ended the session's transfer.
                        outbox.cancel_transfer()
                    useful = True
                    last_activity = time.monotonic()
                    await self._handle(event, machine, outbox)
                self._log_skipped()
                if outbox.overflow:
                    reason = "guest is not reading its replies"
                    break
        except asyncio.CancelledError:
            reason = self._close_reason
            raise
        finally:
            if read_task is not None:
                read_task.cancel()
            write_task.cancel()
            outbox.cancel_transfer()
            writer.close()
            self._writer = self._outbox = None
            self.machine = None
            self.connected = False
            self._fail_pending(ChannelClosed(f"domain {self.name} disconnected"))
            self._log_skipped()
            self._record(connected=False, disconnected_at=now_iso())
            self._phase_change("disconnected", "disconnected", reason=reason)
        return useful or time.monotonic() - started >= STABLE_CONNECTION

    async def _write_loop(self, writer: asyncio.StreamWriter, outbox: _Outbox) -> None:
        try:
            while not outbox.overflow:
                frame = outbox.next_frame()
                if frame is None:
                    outbox.ready.clear()
                    await outbox.ready.wait()
                    continue
                writer.write(frame)
                await writer.drain()
        except (ConnectionError, OSError) as exc:
            if self._drop_reason is None:
                self._drop_reason = f"write failed ({exc.strerror or exc})"
        writer.close()

    def _knock(self, machine: HostSession, outbox: _Outbox) -> None:
        log_event(self.name, "knock", logging.DEBUG)
        outbox.put(machine.knock())

    def _fail_pending(self, exc: Exception) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(exc)
        self._pending.clear()

    # ------------------------------------------------------------- messages

    async def _handle(self, event: Event, machine: HostSession, outbox: _Outbox) -> None:
        """Act on what the session machine made of a guest frame."""
        try:
            if isinstance(event, Greeted):
                self._on_greeted(event, outbox)
            elif isinstance(event, Refused):
                self._on_refused(event, outbox)
            elif isinstance(event, BundleRequested):
                await self._on_bundle_requested(event, machine, outbox)
            elif isinstance(event, DeliveryReported):
                await self._on_delivery(event, machine, outbox)
            elif isinstance(event, StatusReported):
                await self._on_status(event, machine, outbox)
            elif isinstance(event, QueryAnswered):
                self._settle(event.request_id, event.answers, None)
            elif isinstance(event, QueryFailed):
                self._settle(event.request_id, None, event.error)
            elif isinstance(event, GuestError):
                log_event(
                    self.name, "guest-error", logging.WARNING, code=event.code, error=event.message
                )
                self._record_error(f"guest reported {event.code}: {event.message}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A bug here must cost one request, never the domain's connection.
            log_event(
                self.name,
                "internal-error",
                logging.ERROR,
                message=type(event).__name__,
                error=f"{type(exc).__name__}: {exc}",
            )
            LOG.debug("traceback of the internal error", exc_info=True)

    def _on_greeted(self, event: Greeted, outbox: _Outbox) -> None:
        outbox.put(event.reply)
        if event.repeated:
            log_event(self.name, "hello-repeated", logging.DEBUG)
            return
        guest_agent = event.guest_agent
        self._record(
            handshake={"at": now_iso(), "version": event.version, "guest_agent": guest_agent}
        )
        log_event(self.name, "handshake", version=event.version, guest_agent=guest_agent)

    def _on_refused(self, event: Refused, outbox: _Outbox) -> None:
        outbox.put(event.reply)
        if event.code == ERR_VERSION:
            log_event(self.name, "version-mismatch", logging.WARNING, error=event.message)
            self._record_error(event.message)
            return
        level = logging.WARNING if event.record else logging.INFO
        log_event(
            self.name,
            "refused",
            level,
            message=event.message_type,
            code=event.code,
            error=event.message,
        )
        if event.record:
            self._record_error(f"{event.message_type}: {event.message}")

    async def _on_bundle_requested(
        self, event: BundleRequested, machine: HostSession, outbox: _Outbox
    ) -> None:
        if event.delay > 0:
            await asyncio.sleep(event.delay)
        try:
            entry, encoded = await self.agent.load_for(self)
        except StoreError as exc:
            # The full sentence (with dom0's paths) is in the log and the state record.
            message = exc.guest_message or MSG_NO_BUNDLE
            self._on_refused(
                machine.refuse(event.request_id, ERR_NO_BUNDLE, message, "GET_BUNDLE"), outbox
            )
            return
        if self._outbox is not outbox:
            return  # the connection ended while the store was read
        if entry.socket != self.socket:
            message = (
                "this domain's store entry now names another socket; the agent is moving there"
            )
            self._on_refused(
                machine.refuse(event.request_id, ERR_NO_BUNDLE, message, "GET_BUNDLE"), outbox
            )
            return
        sending = machine.send_bundle(event, encoded, entry.digest, self.config.chunk_size)
        if sending is None:
            return  # the session ended while the store was read
        frames, first, chunks = sending
        started = time.monotonic()
        digest, size = entry.digest, len(encoded)

        def sent() -> None:
            machine.transfer_done()
            log_event(
                self.name,
                "bundle-sent",
                sha256=digest,
                size=size,
                first=first,
                chunks=chunks,
                seconds=f"{time.monotonic() - started:.3f}",
            )

        log_event(self.name, "bundle-requested", logging.DEBUG, sha256=digest, first=first)
        outbox.start_transfer(frames, sent)

    async def _on_delivery(
        self, event: DeliveryReported, machine: HostSession, outbox: _Outbox
    ) -> None:
        await self.agent.refresh(self)
        bundle = self.bundle
        result = machine.confirm_delivery(event, bundle.digest if bundle is not None else None)
        if not isinstance(result, Delivered) or bundle is None:
            assert isinstance(result, Refused)
            self._on_refused(result, outbox)
            return
        state = self.agent.recorder.ensure(self.name)
        previous = state.get("delivered") or {}
        count = previous.get("count", 0)
        count = (count if isinstance(count, int) else 0) + 1
        self._record(
            delivered={
                "at": now_iso(),
                "sha256": result.sha256,
                "instance_id": bundle.instance_id,
                "count": count,
            }
        )
        outbox.put(result.reply)
        log_event(
            self.name,
            "delivered",
            sha256=result.sha256,
            instance_id=bundle.instance_id,
            count=count,
        )

    async def _on_status(
        self, event: StatusReported, machine: HostSession, outbox: _Outbox
    ) -> None:
        status = event.status
        state, reason, instance_id = status.state, status.reason, status.instance_id
        await self.agent.refresh(self)
        ours = self.bundle.instance_id if self.bundle is not None else None
        mismatch = instance_id is not None and instance_id != ours
        self._record(
            status={
                "at": now_iso(),
                "state": state,
                "reason": reason,
                "instance_id": instance_id,
                "mismatch": mismatch,
            }
        )
        if mismatch:
            assert instance_id is not None
            shown = printable(instance_id, MAX_INSTANCE_ID)
            if ours is None:
                message = f"guest reported instance-id {shown} but this domain has no valid bundle"
            else:
                message = f"guest reported instance-id {shown} but this domain's bundle has {ours}"
            self._record_error(message)
            log_event(self.name, "status-mismatch", logging.WARNING, error=message)
        outbox.put(machine.acknowledge(event.request_id))
        log_event(
            self.name,
            "status",
            logging.INFO if state != "failed" else logging.WARNING,
            state=state,
            instance_id=instance_id,
            reason=printable(reason, 200) if reason else None,
        )

    def _settle(
        self, request_id: int, answers: Optional[Dict[str, Any]], error: Optional[Exception]
    ) -> None:
        future = self._pending.get(request_id)
        if future is None or future.done():
            return  # a reply nobody waits for any more
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(answers or {})

    # ------------------------------------------------------------- queries

    async def query(self, what: List[str], timeout: float) -> Dict[str, Any]:
        """Ask the in-guest agent; its QUERY_REPLY body, or ChannelError (one sentence)."""
        outbox, machine = self._outbox, self.machine
        if outbox is None or machine is None:
            raise ChannelClosed(
                f"domain {self.name} is not connected (is it running, with socket {self.socket}?)"
            )
        rid, frame = machine.query(what)
        future: asyncio.Future[Dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        outbox.put(frame)
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise ChannelTimeout(
                f"domain {self.name} did not answer the query within {timeout:g} s; "
                "is the in-guest agent running?"
            ) from None
        finally:
            if self._pending.get(rid) is future:
                del self._pending[rid]
            machine.forget_query(rid)


# --------------------------------------------------------------------------- agent


class Agent:
    """All links of a host, the store rescan, the state recorder and the control socket."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.recorder = StateRecorder(config.state_dir)
        self.links: Dict[str, DomainLink] = {}
        self._seen: Dict[str, Signature] = {}
        self._problems: Set[str] = set()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop_event: Optional[asyncio.Event] = None
        self._stop_requested = False
        self._stopping = False
        self._control_server: Optional[asyncio.AbstractServer] = None
        self._control_tasks: Set[asyncio.Task[Any]] = set()
        self._first_scan = True
        self.ready = False

    # ------------------------------------------------------------- lifecycle

    def stop(self) -> None:
        """Ask run() to return; safe from any thread and before run() started."""
        self._stop_requested = True
        loop, event = self._loop, self._stop_event
        if loop is None or event is None:
            return
        try:
            running: Optional[asyncio.AbstractEventLoop] = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            event.set()
        else:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:
                pass  # the loop already closed

    async def run(self) -> None:
        """Serve until stop(); then close every connection and flush state."""
        self.config.validate()
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        if self._stop_requested:
            self._stop_event.set()
        try:
            problems = self.recorder.restore()
        except OSError as exc:
            raise AgentError(
                f"cannot use the state directory {self.config.state_dir} ({exc.strerror}); "
                "create it or fix its permissions"
            ) from None
        for problem in problems:
            log_event("-", "state-problem", logging.WARNING, error=problem)
        for name, state in self.recorder.states.items():
            if state.get("connected"):
                # The previous agent did not record its disconnect (it was killed).
                self.recorder.update(name, connected=False)
        try:
            await self._start_control()
            log_event(
                "-",
                "started",
                version=__version__,
                store=self.config.store_dir,
                state=self.config.state_dir,
                socket_root=self.config.socket_root,
                control_socket=self.config.control_socket,
                restored=len(self.recorder.states),
            )
            while not self._stop_event.is_set():
                try:
                    await self.rescan()
                except Exception as exc:
                    # A bug or an I/O error in one rescan must not take every domain down.
                    log_event(
                        "-", "rescan-failed", logging.ERROR, error=f"{type(exc).__name__}: {exc}"
                    )
                    LOG.debug("traceback of the rescan failure", exc_info=True)
                self.ready = True
                try:
                    await asyncio.wait_for(self._stop_event.wait(), self.config.rescan_interval)
                except asyncio.TimeoutError:
                    pass
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        self._stopping = True
        if self._control_server is not None:
            self._control_server.close()
            for task in list(self._control_tasks):
                task.cancel()
            if self._control_tasks:
                await asyncio.wait(list(self._control_tasks), timeout=1.0)
            self._remove_control_socket()
        links = list(self.links.values())
        for link in links:
            link.request_close("shutdown")
        tasks = [link.task for link in links if link.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_TIMEOUT)
            if pending:
                log_event("-", "shutdown-slow", logging.WARNING, links=len(pending))
        await self.recorder.flush()
        log_event("-", "stopped", domains=len(links))

    # ------------------------------------------------------------- store

    async def rescan(self) -> None:
        """Start, update and stop links to match the store."""
        problems: List[str] = []
        current = scan_store(self.config.store_dir, problems)
        fresh = set(problems)
        for problem in sorted(fresh - self._problems):
            log_event("-", "store-problem", logging.WARNING, error=problem)
        self._problems = fresh

        for name in [name for name in self._seen if name not in current]:
            self._remove(name)
        if self._first_scan:
            self._first_scan = False
            for name, state in self.recorder.states.items():
                if name not in current and state.get("active", True):
                    self.recorder.update(name, active=False, connected=False)
        changed = [name for name, sig in sorted(current.items()) if self._seen.get(name) != sig]
        for start in range(0, len(changed), LOAD_BATCH):
            if self._stopping or self._stop_requested:
                return  # a big first scan must not delay shutdown
            batch = changed[start : start + LOAD_BATCH]
            await asyncio.gather(*(self._reload(name, current[name]) for name in batch))

    async def _reload(self, name: str, scanned: Signature) -> Optional[Tuple[DomainEntry, bytes]]:
        """Load one entry off the loop and apply it; the entry, or None if unusable."""
        config = self.config
        try:
            loaded = await self._in_thread(
                _load_encoded, config.store_dir, name, config.socket_root
            )
        except StoreError as exc:
            if not self._stopping:
                self._apply_error(name, exc, scanned)
            return None
        except Exception as exc:
            # Not a validation failure (an I/O error, a bug): report it like one.
            if not self._stopping:
                error = StoreError(f"cannot load domain {name}: {type(exc).__name__}: {exc}")
                self._apply_error(name, error, scanned)
            return None
        if not self._stopping:
            self._apply_entry(loaded[0])
        return loaded

    async def _in_thread(self, func: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, func, *args)

    def _new_link(self, name: str, socket: str) -> DomainLink:
        link = DomainLink(self, name, socket)
        self.links[name] = link
        self.recorder.update(name, socket=socket, active=True)
        link.start()
        return link

    def _apply_entry(self, entry: DomainEntry) -> None:
        self._seen[entry.name] = entry.signature
        link = self.links.get(entry.name)
        if link is None:
            link = self._new_link(entry.name, entry.socket)
        link.set_entry(entry)

    def _apply_error(self, name: str, exc: StoreError, scanned: Signature) -> None:
        self._seen[name] = scanned
        message = str(exc)
        link = self.links.get(name)
        if exc.socket is not None:
            if link is None:
                link = self._new_link(name, exc.socket)
            link.set_invalid(message, exc.socket)
            return
        # No trustworthy socket (unsafe file, bad JSON): serve nothing on any socket.
        if link is not None:
            del self.links[name]
            link.request_close("store-error")
        log_event(name, "store-error", logging.ERROR, error=message)
        self.recorder.update(
            name, active=True, bundle=None, last_error={"at": now_iso(), "message": message}
        )

    def _remove(self, name: str) -> None:
        self._seen.pop(name, None)
        link = self.links.pop(name, None)
        if link is not None:
            link.request_close("removed")
        log_event(name, "removed")
        if name in self.recorder.states:
            self.recorder.update(name, active=False, connected=False)

    async def load_for(self, link: DomainLink) -> Tuple[DomainEntry, bytes]:
        """The link's store entry and encoded bundle, read now (for GET_BUNDLE)."""
        config = self.config
        try:
            entry, encoded = await self._in_thread(
                _load_encoded, config.store_dir, link.name, config.socket_root
            )
        except StoreError as exc:
            signature = self._stat(link.name)
            # A vanished file is a removal, which the rescan handles; not an error.
            if (
                signature is not None
                and self.links.get(link.name) is link
                and link.store_error != str(exc)
            ):
                self._apply_error(link.name, exc, signature)
            raise
        if self.links.get(link.name) is link and self._seen.get(link.name) != entry.signature:
            self._apply_entry(entry)
        return entry, encoded

    async def refresh(self, link: DomainLink) -> None:
        """Reload the link's entry if its file changed since the last scan (one stat)."""
        signature = self._stat(link.name)
        if signature is None or self._seen.get(link.name) == signature:
            return  # unchanged, or gone: the rescan handles removal
        if self.links.get(link.name) is link:
            await self._reload(link.name, signature)

    def _stat(self, name: str) -> Optional[Signature]:
        try:
            return signature_of(
                os.stat(domain_file(self.config.store_dir, name), follow_symlinks=False)
            )
        except (OSError, StoreError):
            return None

    # ------------------------------------------------------------- control socket

    async def _start_control(self) -> None:
        path = self.config.control_socket
        if not path:
            return
        try:
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            self._clear_stale_socket(path)
            sock = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
            try:
                # The socket must never exist with a wider mode, not even briefly.
                old_umask = os.umask(0o177)
                try:
                    sock.bind(path)
                finally:
                    os.umask(old_umask)
                os.chmod(path, 0o600)
                sock.listen(64)
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
        except OSError as exc:
            raise AgentError(
                f"cannot create the control socket {path} ({exc.strerror or exc}); "
                "check the directory or choose another path"
            ) from None
        self._control_server = await asyncio.start_unix_server(self._on_control, sock=sock)

    @staticmethod
    def _clear_stale_socket(path: str) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise AgentError(f"{path} exists and is not a socket; remove it or choose another path")
        probe = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: left over from an agent that died
            return
        finally:
            probe.close()
        raise AgentError(f"another agent is already listening on {path}; stop it first")

    def _remove_control_socket(self) -> None:
        path = self.config.control_socket
        if not path:
            return
        try:
            os.unlink(path)
        except OSError:
            pass

    async def _on_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._control_tasks.add(task)
        try:
            try:
                raw = await asyncio.wait_for(_read_request(reader), CONTROL_READ_TIMEOUT)
            except asyncio.TimeoutError:
                reply: Dict[str, Any] = _control_error(
                    f"no complete request within {CONTROL_READ_TIMEOUT:g} s; send one JSON "
                    "object followed by a newline"
                )
            except _ControlError as exc:
                reply = _control_error(str(exc))
            else:
                reply = await self._control_request(raw)
            writer.write(json.dumps(reply, sort_keys=True).encode("utf-8") + b"\n")
            await asyncio.wait_for(writer.drain(), CONTROL_READ_TIMEOUT)
        except (asyncio.TimeoutError, ConnectionError, OSError):
            pass  # the client went away; nothing to tell it
        finally:
            writer.close()
            if task is not None:
                self._control_tasks.discard(task)

    async def _control_request(self, raw: bytes) -> Dict[str, Any]:
        try:
            request = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return _control_error("the request is not valid JSON")
        if not isinstance(request, dict):
            return _control_error("the request must be a JSON object with an op key")
        op = request.get("op")
        if op == "ping":
            return {"ok": True, "version": __version__, "domains": len(self.links)}
        if op == "query":
            return await self._control_query(request)
        return _control_error(f"unknown op {_short(op)}; use ping or query")

    async def _control_query(self, request: Dict[str, Any]) -> Dict[str, Any]:
        domain = request.get("domain")
        if not isinstance(domain, str):
            return _control_error("a query needs the domain's name")
        link = self.links.get(domain)
        if link is None:
            return _control_error(
                f"unknown domain {_short(domain)}; it is not in the store {self.config.store_dir}"
            )
        what = request.get("what", [])
        if (
            not isinstance(what, list)
            or len(what) > MAX_QUERY_KEYS
            or not all(isinstance(key, str) and 0 < len(key) <= 64 for key in what)
        ):
            return _control_error(
                f"what must be a list of at most {MAX_QUERY_KEYS} names of 1 to 64 characters"
            )
        timeout = request.get("timeout", self.config.query_timeout)
        if (
            not isinstance(timeout, (int, float))
            or isinstance(timeout, bool)
            or not 0 < timeout <= MAX_QUERY_TIMEOUT
        ):
            return _control_error(
                f"timeout must be a number of seconds, 0 to {MAX_QUERY_TIMEOUT:g}"
            )
        started = time.monotonic()
        try:
            reply = await link.query(what, float(timeout))
        except ChannelError as exc:
            log_event(domain, "query-failed", logging.WARNING, what=",".join(what), error=str(exc))
            return _control_error(str(exc))
        log_event(
            domain,
            "query",
            what=",".join(what),
            seconds=f"{time.monotonic() - started:.3f}",
        )
        return {"ok": True, "reply": reply}


class _ControlError(Exception):
    pass


def _control_error(message: str) -> Dict[str, Any]:
    return {"ok": False, "error": message}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 66 else text[:63] + "..."


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    """One request: bytes up to a newline or EOF, at most CONTROL_MAX_REQUEST."""
    data = bytearray()
    while True:
        chunk = await reader.read(4096)
        if not chunk:
            break
        data.extend(chunk)
        if b"\n" in chunk:
            data = data[: data.index(b"\n")]
            break
        if len(data) > CONTROL_MAX_REQUEST:
            raise _ControlError(f"the request exceeds {CONTROL_MAX_REQUEST // 1024} KiB")
    if len(data) > CONTROL_MAX_REQUEST:
        raise _ControlError(f"the request exceeds {CONTROL_MAX_REQUEST // 1024} KiB")
    return bytes(data)


async def _read_all(reader: asyncio.StreamReader, limit: int) -> bytes:
    data = bytearray()
    while len(data) <= limit:
        chunk = await reader.read(64 * 1024)
        if not chunk:
            break
        data.extend(chunk)
    return bytes(data)


async def control_request(path: str, request: Dict[str, Any], timeout: float) -> Dict[str, Any]:
    """Send one request to a running agent's control socket; its reply (for the CLI)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), 5.0)
    except FileNotFoundError:
        raise AgentError(
            f"the control socket {path} does not exist; is the agent running?"
        ) from None
    except (OSError, asyncio.TimeoutError) as exc:
        detail = getattr(exc, "strerror", None) or "timed out"
        raise AgentError(f"cannot connect to the control socket {path} ({detail})") from None
    try:
        writer.write(json.dumps(request).encode("utf-8") + b"\n")
        await asyncio.wait_for(writer.drain(), 5.0)
        try:
            raw = await asyncio.wait_for(_read_all(reader, 16 * 1024 * 1024), timeout)
        except asyncio.TimeoutError:
            raise AgentError(f"the agent did not answer within {timeout:g} s") from None
    finally:
        writer.close()
    try:
        reply = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise AgentError("the agent's reply is not valid JSON") from None
    if not isinstance(reply, dict):
        raise AgentError("the agent's reply is not a JSON object")
    return reply


def run_agent(config: AgentConfig, install_signals: bool = True) -> None:
    """Run an agent until SIGTERM/SIGINT (asyncio.run; for the CLI)."""
    asyncio.run(_main(config, install_signals))


async def _main(config: AgentConfig, install_signals: bool) -> None:
    agent = Agent(config)
    if install_signals:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, agent.stop)
    await agent.run()
