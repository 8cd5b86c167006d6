"""One connect to a domain's channel socket: an asyncio protocol around the host's
session machine (``session.HostSession``), which holds every rule of what to answer.

A ``Connection`` lives as long as the socket connection: it KNOCKs, feeds what it
reads to the machine, acts on the events that come back (reading the store through the
supervisor, recording through its link) and writes the answers through an ``Outbox``.
It ends on EOF, a read or write error or a drop by its link; replies a guest does not
read are dropped past a bound, not queued, and the connection goes on.

It is a protocol, not a pair of stream tasks, because an agent holds one per running
domain: thousands of them, mostly silent.  A silent connection costs its transport, its
machine and at most one timer; it reads into one buffer shared by every connection (a
callback runs to completion before the next read, so nothing else can be using it).  A
task exists only while a guest's request waits for a thread or a pacing delay, and
reading pauses meanwhile, so the guest's frames are still handled in order.
"""

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Awaitable, Dict, List, Optional, Union

from xenchannel.dom0 import LOG
from xenchannel.dom0.outbox import Outbox
from xenchannel.dom0.state import now_iso
from xenchannel.dom0.store import StoreError
from xenchannel.protocol import (
    ERR_NO_BUNDLE,
    ERR_VERSION,
    PROTOCOL_VERSIONS,
    ChannelError,
    ChannelTimeout,
    Frame,
    FrameDecoder,
    Skipped,
    new_nonce,
)
from xenchannel.session import (
    MAX_INSTANCE_ID,
    BundleRequested,
    Delivered,
    DeliveryReported,
    Dropped,
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

if TYPE_CHECKING:  # pragma: no cover - types only
    from xenchannel.dom0.link import DomainLink
    from xenchannel.dom0.store import Signature

MSG_NO_BUNDLE = "dom0 has no usable metadata for this domain; the agent's status says why"
MSG_MOVING = "this domain's store entry now names another socket; the agent is moving there"
MSG_NOT_READING = "guest is not reading its replies"


class ChannelBusy(ChannelError):
    """The guest's channel has as many replies waiting as it may; str() is a sentence."""


# The read buffer every connection shares, by size (see the module's docstring).
_READ_BUFFERS: Dict[int, memoryview] = {}

# What a handler returns: None when it finished at once, else the rest of its work.
Work = Optional[Awaitable[None]]


def _read_buffer(size: int) -> memoryview:
    buffer = _READ_BUFFERS.get(size)
    if buffer is None:
        buffer = _READ_BUFFERS[size] = memoryview(bytearray(size))
    return buffer


class Connection(asyncio.BufferedProtocol):
    """One connection of a domain's link, from connect to close."""

    def __init__(self, link: "DomainLink") -> None:
        config = link.config
        self.link = link
        self.name = link.name
        self.config = config
        self.started = time.monotonic()
        self.outbox = Outbox(config.max_queued_frames)
        # A new id per connect: a guest tells a late KNOCK of the connection its session
        # lives on from one of a new connection (the agent or QEMU restarted).
        self.machine = HostSession(
            PROTOCOL_VERSIONS,
            new_nonce()[:16],
            config.get_bundle_burst,
            config.get_bundle_rate,
            now=self.started,
        )
        self.drop_reason: Optional[str] = None
        self.useful = False  # a valid frame arrived: worth resetting the back-off
        self.transport: Optional[asyncio.Transport] = None
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._buffer = _read_buffer(config.read_size)
        self._decoder = FrameDecoder(config.max_guest_frame)
        # What one read decoded, and how far it is handled (a list and an index, not a
        # deque: most connections hold none, and an empty deque is ten times a list).
        self._items: List[Union[Frame, Skipped]] = []
        self._next_item = 0
        self._busy: Optional[asyncio.Future[None]] = None
        self._writing_paused = False
        self._timer: Optional[asyncio.TimerHandle] = None
        self._paced: List[asyncio.TimerHandle] = []  # at most a burst: session.Dropped
        self._read_tokens = float(config.guest_frame_burst)
        self._read_tokens_at = self.started
        self._over_rate = 0  # frames dropped past the rate since the last count
        self._last_activity = self.started
        # KNOCKs repeat only while no guest has greeted on this connection (one that has
        # knows the host is there), each unanswered one doubling the wait for the next up
        # to the maximum: thousands of silent guests cost little.
        self._knock_gap = config.knock_interval
        self._pending: Dict[int, asyncio.Future[Dict[str, Any]]] = {}

    def drop(self, reason: str) -> None:
        """Close the connection; ``ended`` gets ``reason``."""
        if self.drop_reason is None:
            self.drop_reason = reason
        if self.transport is not None:
            self.transport.close()

    async def run(self) -> str:
        """Wait until the connection ends; why it ended."""
        return await self.ended

    # ------------------------------------------------------------- the transport's calls

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # The link owns the connection from now: the guest's first frames may be read
        # before the coroutine that connected runs again.
        self.link.attach(self)
        self._knock()
        self._arm_timer()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        items = self._decoder.feed(bytes(self._buffer[:nbytes]))
        if self._next_item < len(self._items):
            self._items.extend(items)  # only while a request waits (reading is paused)
        else:
            self._items, self._next_item = items, 0
        self._process()

    def eof_received(self) -> bool:
        return False  # close: QEMU closed its end (the VM shut down)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._busy is not None:
            self._busy.cancel()
        for handle in self._paced:
            handle.cancel()
        self.outbox.cancel_transfer()
        self._items, self._next_item = [], 0
        if exc is None:
            reason = self.drop_reason or "eof"
        else:
            reason = self.drop_reason or f"reset ({getattr(exc, 'strerror', None) or exc})"
        if not self.ended.done():
            self.ended.set_result(reason)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._pump()

    # ------------------------------------------------------------- reading

    def _process(self) -> None:
        """Handle the frames read so far, in order, until one needs to wait."""
        machine, link = self.machine, self.link
        while self._next_item < len(self._items) and self._busy is None:
            if self.ended.done():
                return
            item = self._items[self._next_item]
            self._next_item += 1
            if not self._spend():
                continue
            if isinstance(item, Skipped):
                link.note_skipped(item)
                answer = machine.oversized(item)
                if answer is not None:
                    self._put(answer)
                continue
            event = machine.receive(item, time.monotonic())
            if isinstance(event, Echoed):
                # Our own frames echoed by a guest tty in cooked mode.
                link.echoes_ignored += 1
                continue
            if machine.state is not HostState.SENDING:
                # A new handshake or a refused one ended the session's transfer.
                self.outbox.cancel_transfer()
            self.useful = True
            self._last_activity = time.monotonic()
            self._knock_gap = self.config.knock_interval
            work = self._handle(event)
            if work is not None:
                self._wait_for(work)
                return
            link.session_state(machine.state)
        if self.ended.done() or self._busy is not None:
            return
        self._items, self._next_item = [], 0
        if self._over_rate:
            link.count("dropped_requests", "over-rate", self._over_rate)
            link.log("frames-dropped", logging.WARNING, frames=self._over_rate,
                     reason="past guest_frame_rate")  # fmt: skip
            self._over_rate = 0
        link.log_summaries()
        self._arm_timer()

    def _spend(self) -> bool:
        """One frame's turn: what one guest sends is handled at most guest_frame_rate
        frames a second past a burst (a run of bytes that were not a frame counts as
        one, however long).  Past that, frames are dropped and counted, not queued: a
        flood costs the agent its decoding only, every other guest keeps its turn, and
        nothing is left to handle once the flood stops.  A guest that behaves sends a
        dozen frames a boot."""
        config, now = self.config, time.monotonic()
        self._read_tokens = min(
            float(config.guest_frame_burst),
            self._read_tokens + (now - self._read_tokens_at) * config.guest_frame_rate,
        )
        self._read_tokens_at = now
        if self._read_tokens >= 1.0:
            self._read_tokens -= 1.0
            return True
        self._over_rate += 1
        return False

    def _resume_reading(self) -> None:
        """Read again, unless a request still waits."""
        transport = self.transport
        if transport is not None and not transport.is_closing() and self._busy is None:
            transport.resume_reading()

    def _wait_for(self, work: Awaitable[None]) -> None:
        """Run the rest of a request's handling; read nothing more until it is done."""
        assert self.transport is not None
        self.transport.pause_reading()
        self._busy = asyncio.ensure_future(self._finish(work))

    async def _finish(self, work: Awaitable[None]) -> None:
        try:
            await self._guarded(work)
        finally:
            self._busy = None
        if self.ended.done() or self.transport is None:
            return
        self.link.session_state(self.machine.state)
        self._resume_reading()
        self._process()

    async def _guarded(self, work: Awaitable[None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._internal_error("request", exc)

    def _internal_error(self, what: str, exc: Exception) -> None:
        # A bug here must cost one request, never the domain's connection.
        self.link.log(
            "internal-error",
            logging.ERROR,
            message=what,
            error=f"{type(exc).__name__}: {exc}",
        )
        LOG.debug("traceback of the internal error", exc_info=True)

    # ------------------------------------------------------------- timer

    def _arm_timer(self) -> None:
        """One timer: the next KNOCK (only while no session: a transfer never streams
        then), and a summary of skipped bytes held back by its rate limit."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        knock_at = None
        if self.machine.state is HostState.KNOCKED:
            knock_at = self._last_activity + self._knock_gap
        due = [t for t in (knock_at, self.link.summary_due()) if t is not None]
        if due:
            # The loop's clock is time.monotonic(), the clock of every time here.
            self._timer = asyncio.get_running_loop().call_at(min(due), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.ended.done():
            return
        now = time.monotonic()
        knocked = self.machine.state is HostState.KNOCKED
        if knocked and self._last_activity + self._knock_gap <= now:
            # No guest traffic for a while: a guest that (re)started its client may be
            # waiting for a hint to greet.
            self._knock()
            self._last_activity = now
            self._knock_gap = min(self._knock_gap * 2, self.config.knock_max_interval)
        self.link.log_summaries()
        self._arm_timer()

    # ------------------------------------------------------------- writing

    def _put(self, frame: bytes) -> bool:
        """Queue a reply; False (and counted) if the guest has not read the ones before
        it: it is dropped, not queued without bound, and the connection goes on."""
        if not self.outbox.put(frame):
            self.link.count("dropped_requests", "replies-unread")
            self.link.log("reply-dropped", logging.WARNING, reason=MSG_NOT_READING)
            return False
        self._pump()
        return True

    def _pump(self) -> None:
        """Hand the transport what waits, while it takes more (its buffer below the
        high-water mark): so a transfer holds one frame at a time beyond the bundle."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        outbox = self.outbox
        while not self._writing_paused:
            frame = outbox.next_frame()
            if frame is None:
                return
            transport.write(frame)

    def _knock(self) -> None:
        self.link.log("knock", logging.DEBUG)
        self._put(self.machine.knock())

    def close(self, exc: Exception) -> None:
        """Fail every query still waiting for this connection with ``exc``."""
        for future in self._pending.values():
            if not future.done():
                future.set_exception(exc)
        self._pending.clear()

    # ------------------------------------------------------------- messages

    def _handle(self, event: Event) -> Work:
        """Act on what the session machine made of a guest frame; the rest of the work
        if it must wait (for the store, or for a paced request's turn)."""
        try:
            if isinstance(event, Greeted):
                self._on_greeted(event)
            elif isinstance(event, Refused):
                self._on_refused(event)
            elif isinstance(event, BundleRequested):
                return self._on_bundle_requested(event)
            elif isinstance(event, DeliveryReported):
                return self._after_refresh(self._on_delivery, event)
            elif isinstance(event, StatusReported):
                return self._after_refresh(self._on_status, event)
            elif isinstance(event, QueryAnswered):
                self._settle(event.request_id, event.answers, None)
            elif isinstance(event, QueryFailed):
                self._settle(event.request_id, None, event.error)
            elif isinstance(event, Dropped):
                self.link.count("dropped_requests", "paced")
                self.link.log("request-dropped", message=event.message_type, reason=event.reason)
            elif isinstance(event, GuestError):
                self.link.log("guest-error", logging.WARNING, code=event.code, error=event.message)
                self.link.record_error(
                    f"guest reported {event.code}: {event.message}", "guest-error"
                )
        except Exception as exc:
            self._internal_error(type(event).__name__, exc)
        return None

    def _after_refresh(self, handler: Any, event: Event) -> Work:
        """``handler(event)`` once the link's store entry is current: at once if its file
        is unchanged (one stat), else after reloading it."""
        supervisor = self.link.supervisor
        changed = supervisor.changed(self.link)
        if changed is None:
            handler(event)
            return None
        return self._reload_then(changed, handler, event)

    async def _reload_then(self, changed: "Signature", handler: Any, event: Event) -> None:
        await self.link.supervisor.reload(self.link, changed)
        if not self.ended.done():
            handler(event)

    def _on_greeted(self, event: Greeted) -> None:
        self._put(event.reply)
        if event.repeated:
            self.link.log("hello-repeated", logging.DEBUG)
            return
        guest_agent = event.guest_agent
        self.link.record(
            handshake={"at": now_iso(), "version": event.version, "guest_agent": guest_agent}
        )
        self.link.log("handshake", version=event.version, guest_agent=guest_agent)

    def _on_refused(self, event: Refused) -> None:
        self._put(event.reply)
        self.link.count("refusals", event.code)
        if event.code == ERR_VERSION:
            self.link.log("version-mismatch", logging.WARNING, error=event.message)
            self.link.record_error(event.message, f"refused:{event.code}")
            return
        level = logging.WARNING if event.record else logging.INFO
        self.link.log(
            "refused", level, message=event.message_type, code=event.code, error=event.message
        )
        if event.record:
            self.link.record_error(
                f"{event.message_type}: {event.message}", f"refused:{event.code}"
            )

    def _on_bundle_requested(self, event: BundleRequested) -> Work:
        if event.delay > 0:
            # Paced (a version-1 guest cannot be told busy): answered when its turn
            # comes, while reading goes on, so requests past the bound the session
            # machine keeps are seen, and dropped, as they arrive.
            loop = asyncio.get_running_loop()
            self._paced.append(loop.call_later(event.delay, self._paced_turn, event))
            return None
        cached = self.link.supervisor.cached_bundle(self.link)
        if cached is None:
            return self._bundle_from_store(event)
        self._send_bundle(event, *cached)
        return None

    def _paced_turn(self, event: BundleRequested) -> None:
        self._paced = [handle for handle in self._paced if not handle.cancelled()]
        if self.ended.done():
            return
        if self._busy is not None:
            # Another request waits for the store: this one's turn comes right after.
            loop = asyncio.get_running_loop()
            self._paced.append(loop.call_later(0.05, self._paced_turn, event))
            return
        cached = self.link.supervisor.cached_bundle(self.link)
        if cached is None:
            self._wait_for(self._bundle_from_store(event))
        else:
            self._send_bundle(event, *cached)

    async def _bundle_from_store(self, event: BundleRequested) -> None:
        link = self.link
        try:
            entry = await link.supervisor.load_for(link)
        except StoreError as exc:
            # The full sentence (with dom0's paths) is in the log and the state record.
            message = exc.guest_message or MSG_NO_BUNDLE
            self._on_refused(
                self.machine.refuse(event.request_id, ERR_NO_BUNDLE, message, "GET_BUNDLE")
            )
            return
        if not self.ended.done():
            self._send_bundle(event, entry.socket, entry.digest, entry.encoded)

    def _send_bundle(
        self, event: BundleRequested, socket: str, digest: str, encoded: bytes
    ) -> None:
        machine, link = self.machine, self.link
        if link.connection is not self:
            return  # the connection ended while the store was read
        if socket != link.socket:
            self._on_refused(
                machine.refuse(event.request_id, ERR_NO_BUNDLE, MSG_MOVING, "GET_BUNDLE")
            )
            return
        sending = machine.send_bundle(event, encoded, digest, self.config.chunk_size)
        if sending is None:
            return  # the session ended while the store was read
        frames, first, chunks = sending
        started = time.monotonic()
        size = len(encoded)

        def sent() -> None:
            machine.transfer_done()
            link.session_state(machine.state)
            link.log(
                "bundle-sent",
                sha256=digest,
                size=size,
                first=first,
                chunks=chunks,
                seconds=f"{time.monotonic() - started:.3f}",
            )

        link.log("bundle-requested", logging.DEBUG, sha256=digest, first=first)
        self.outbox.start_transfer(frames, sent)
        self._pump()

    def _on_delivery(self, event: DeliveryReported) -> None:
        link = self.link
        bundle = link.bundle
        result = self.machine.confirm_delivery(event, bundle.digest if bundle else None)
        if not isinstance(result, Delivered) or bundle is None:
            assert isinstance(result, Refused)
            self._on_refused(result)
            return
        state = link.supervisor.recorder.ensure(self.name)
        previous = state.get("delivered") or {}
        count = previous.get("count", 0)
        count = (count if isinstance(count, int) else 0) + 1
        link.record(
            delivered={
                "at": now_iso(),
                "sha256": result.sha256,
                "instance_id": bundle.instance_id,
                "count": count,
            }
        )
        self._put(result.reply)
        link.count("deliveries")
        link.log(
            "delivered",
            sha256=result.sha256,
            instance_id=bundle.instance_id,
            count=count,
        )

    def _on_status(self, event: StatusReported) -> None:
        link = self.link
        status = event.status
        state, reason, instance_id = status.state, status.reason, status.instance_id
        ours = link.bundle.instance_id if link.bundle is not None else None
        mismatch = instance_id is not None and instance_id != ours
        link.record(
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
            link.record_error(message, "status-mismatch")
            link.log("status-mismatch", logging.WARNING, error=message)
        self._put(self.machine.acknowledge(event.request_id))
        link.log(
            "status",
            logging.INFO if state != "failed" else logging.WARNING,
            state=state,
            instance_id=instance_id,
            reason=printable(reason, 200) if reason else None,
        )

    # ------------------------------------------------------------- queries

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

    async def query(self, what: List[str], timeout: float) -> Dict[str, Any]:
        """Ask the in-guest agent; its QUERY_REPLY body, or ChannelError (one sentence)."""
        rid, frame = self.machine.query(what)
        future: asyncio.Future[Dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        if not self._put(frame):
            del self._pending[rid]
            self.machine.forget_query(rid)
            raise ChannelBusy(
                f"domain {self.name}'s guest has not read the agent's last "
                f"{self.config.max_queued_frames} replies; try the query again later"
            )
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
            self.machine.forget_query(rid)
