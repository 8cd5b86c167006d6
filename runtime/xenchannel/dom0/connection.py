"""One connect to a domain's channel socket: an asyncio protocol around the host's
session machine (``session.HostSession``), which holds every rule of what to answer.

A ``Connection`` lives as long as the socket connection: it KNOCKs, feeds what it
reads to the machine, hands the events that come back to its request handlers
(``requests.py``) and writes the answers through an ``Outbox``.
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
from xenchannel.dom0.requests import MSG_NOT_READING, GuestRequests
from xenchannel.protocol import (
    PROTOCOL_VERSIONS,
    Frame,
    FrameDecoder,
    Skipped,
    new_nonce,
)
from xenchannel.session import (
    Echoed,
    HostSession,
    HostState,
)

if TYPE_CHECKING:  # pragma: no cover - types only
    from xenchannel.dom0.link import DomainLink

# The read buffer every connection shares, by size (see the module's docstring).
_READ_BUFFERS: Dict[int, memoryview] = {}


def _read_buffer(size: int) -> memoryview:
    buffer = _READ_BUFFERS.get(size)
    if buffer is None:
        buffer = _READ_BUFFERS[size] = memoryview(bytearray(size))
    return buffer


class Connection(GuestRequests, asyncio.BufferedProtocol):
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
        self._frame_tokens = float(config.guest_frame_burst)
        self._frame_tokens_at = self.started
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
        self._frame_tokens = min(
            float(config.guest_frame_burst),
            self._frame_tokens + (now - self._frame_tokens_at) * config.guest_frame_rate,
        )
        self._frame_tokens_at = now
        if self._frame_tokens >= 1.0:
            self._frame_tokens -= 1.0
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
