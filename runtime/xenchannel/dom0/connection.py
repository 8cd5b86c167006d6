"""One connect to a domain's channel socket: read and write loops around the host's
session machine (``session.HostSession``), which holds every rule of what to answer.

A ``Connection`` lives as long as the socket connection: it KNOCKs, feeds what it
reads to the machine, acts on the events that come back (reading the store through the
supervisor, recording through its link) and writes the answers through an ``Outbox``.
It ends on EOF, a read or write error, an overflowing outbox or a drop by its link.
"""

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from xenchannel.dom0 import LOG, log_event
from xenchannel.dom0.outbox import Outbox
from xenchannel.dom0.state import now_iso
from xenchannel.dom0.store import StoreError
from xenchannel.protocol import (
    ERR_NO_BUNDLE,
    ERR_VERSION,
    PROTOCOL_VERSIONS,
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

if TYPE_CHECKING:  # pragma: no cover - types only
    from xenchannel.dom0.link import DomainLink

MSG_NO_BUNDLE = "dom0 has no usable metadata for this domain; the agent's status says why"
MSG_MOVING = "this domain's store entry now names another socket; the agent is moving there"


class Connection:
    """One connection of a domain's link, from connect to close."""

    def __init__(
        self, link: "DomainLink", reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        config = link.config
        self.link = link
        self.name = link.name
        self.config = config
        self.reader, self.writer = reader, writer
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
        self._pending: Dict[int, asyncio.Future[Dict[str, Any]]] = {}

    def drop(self, reason: str) -> None:
        """Close the connection; ``run`` ends with ``reason``."""
        self.drop_reason = reason
        self.writer.close()

    # ------------------------------------------------------------- loops

    async def run(self) -> str:
        """Serve until the connection ends; why it ended."""
        config, outbox, machine = self.config, self.outbox, self.machine
        decoder = FrameDecoder(config.max_guest_frame)
        write_task = asyncio.ensure_future(self._write_loop())
        read_task: Optional[asyncio.Future[bytes]] = None
        try:
            self._knock()
            last_activity = time.monotonic()
            # KNOCKs repeat only while no guest has greeted on this connection (one that
            # has knows the host is there), each unanswered one doubling the wait for the
            # next up to the maximum: thousands of silent guests cost little.
            knock_gap = config.knock_interval
            while True:
                if write_task.done():
                    return self.drop_reason or "write-failed"
                # Timed: the next KNOCK (only while no session: a transfer never streams
                # then), and a summary of skipped bytes held back by its rate limit.
                now = time.monotonic()
                knock_at = None
                if machine.state is HostState.KNOCKED:
                    knock_at = last_activity + knock_gap
                due = [t for t in (knock_at, self.link.skipped_due()) if t is not None]
                wait = min(due) - now if due else None
                if wait is not None and wait <= 0:
                    if knock_at is not None and knock_at <= now:
                        # No guest traffic for a while: a guest that (re)started its
                        # client may be waiting for a hint to greet.
                        self._knock()
                        last_activity = now
                        knock_gap = min(knock_gap * 2, config.knock_max_interval)
                    self.link.log_skipped()
                    continue
                try:
                    if wait is None and read_task is None:
                        # With a session there is nothing to time: read, no task and no
                        # wait set per frame. A failed write closes the transport, and
                        # that ends this read.
                        data = await self.reader.read(config.read_size)
                    else:
                        if read_task is None:
                            read_task = asyncio.ensure_future(self.reader.read(config.read_size))
                        # asyncio.wait, not wait_for: a timeout must not cancel a read that
                        # already holds data.
                        waiting: List[asyncio.Future[Any]] = [read_task, write_task]
                        done, _pending = await asyncio.wait(
                            waiting, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                        )
                        if read_task not in done:
                            continue
                        task, read_task = read_task, None
                        data = task.result()
                except (ConnectionError, OSError) as exc:
                    return self.drop_reason or f"reset ({exc.strerror or exc})"
                if not data:
                    return self.drop_reason or "eof"
                for item in decoder.feed(data):
                    if isinstance(item, Skipped):
                        self.link.note_skipped(item)
                        answer = machine.oversized(item)
                        if answer is not None:
                            outbox.put(answer)
                        continue
                    event = machine.receive(item, time.monotonic())
                    if isinstance(event, Echoed):
                        # Our own frames echoed by a guest tty in cooked mode.
                        self.link.echoes_ignored += 1
                        continue
                    if machine.state is not HostState.SENDING:
                        # A new handshake or a refused one ended the session's transfer.
                        outbox.cancel_transfer()
                    self.useful = True
                    last_activity = time.monotonic()
                    knock_gap = config.knock_interval
                    await self._handle(event)
                    self.link.session_state(machine.state)
                self.link.log_skipped()
                if outbox.overflow:
                    return "guest is not reading its replies"
        finally:
            if read_task is not None:
                read_task.cancel()
            write_task.cancel()
            outbox.cancel_transfer()
            self.writer.close()

    async def _write_loop(self) -> None:
        outbox, writer = self.outbox, self.writer
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
            if self.drop_reason is None:
                self.drop_reason = f"write failed ({exc.strerror or exc})"
        writer.close()

    def _knock(self) -> None:
        log_event(self.name, "knock", logging.DEBUG)
        self.outbox.put(self.machine.knock())

    def close(self, exc: Exception) -> None:
        """Fail every query still waiting for this connection with ``exc``."""
        for future in self._pending.values():
            if not future.done():
                future.set_exception(exc)
        self._pending.clear()

    # ------------------------------------------------------------- messages

    async def _handle(self, event: Event) -> None:
        """Act on what the session machine made of a guest frame."""
        try:
            if isinstance(event, Greeted):
                self._on_greeted(event)
            elif isinstance(event, Refused):
                self._on_refused(event)
            elif isinstance(event, BundleRequested):
                await self._on_bundle_requested(event)
            elif isinstance(event, DeliveryReported):
                await self._on_delivery(event)
            elif isinstance(event, StatusReported):
                await self._on_status(event)
            elif isinstance(event, QueryAnswered):
                self._settle(event.request_id, event.answers, None)
            elif isinstance(event, QueryFailed):
                self._settle(event.request_id, None, event.error)
            elif isinstance(event, GuestError):
                log_event(
                    self.name, "guest-error", logging.WARNING, code=event.code, error=event.message
                )
                self.link.record_error(f"guest reported {event.code}: {event.message}")
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

    def _on_greeted(self, event: Greeted) -> None:
        self.outbox.put(event.reply)
        if event.repeated:
            log_event(self.name, "hello-repeated", logging.DEBUG)
            return
        guest_agent = event.guest_agent
        self.link.record(
            handshake={"at": now_iso(), "version": event.version, "guest_agent": guest_agent}
        )
        log_event(self.name, "handshake", version=event.version, guest_agent=guest_agent)

    def _on_refused(self, event: Refused) -> None:
        self.outbox.put(event.reply)
        if event.code == ERR_VERSION:
            log_event(self.name, "version-mismatch", logging.WARNING, error=event.message)
            self.link.record_error(event.message)
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
            self.link.record_error(f"{event.message_type}: {event.message}")

    async def _on_bundle_requested(self, event: BundleRequested) -> None:
        machine, link = self.machine, self.link
        if event.delay > 0:
            await asyncio.sleep(event.delay)
        try:
            entry, encoded = await link.supervisor.load_for(link)
        except StoreError as exc:
            # The full sentence (with dom0's paths) is in the log and the state record.
            message = exc.guest_message or MSG_NO_BUNDLE
            self._on_refused(machine.refuse(event.request_id, ERR_NO_BUNDLE, message, "GET_BUNDLE"))
            return
        if link.connection is not self:
            return  # the connection ended while the store was read
        if entry.socket != link.socket:
            self._on_refused(
                machine.refuse(event.request_id, ERR_NO_BUNDLE, MSG_MOVING, "GET_BUNDLE")
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
            link.session_state(machine.state)
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
        self.outbox.start_transfer(frames, sent)

    async def _on_delivery(self, event: DeliveryReported) -> None:
        link = self.link
        await link.supervisor.refresh(link)
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
        self.outbox.put(result.reply)
        log_event(
            self.name,
            "delivered",
            sha256=result.sha256,
            instance_id=bundle.instance_id,
            count=count,
        )

    async def _on_status(self, event: StatusReported) -> None:
        link = self.link
        status = event.status
        state, reason, instance_id = status.state, status.reason, status.instance_id
        await link.supervisor.refresh(link)
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
            link.record_error(message)
            log_event(self.name, "status-mismatch", logging.WARNING, error=message)
        self.outbox.put(self.machine.acknowledge(event.request_id))
        log_event(
            self.name,
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
        self.outbox.put(frame)
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
