"""What the agent does with each guest request the host's session machine reports:
answer a HELLO, refuse, send the bundle (now, on its paced turn, or once the store is
read), record a delivery or a status report, settle a query.

``GuestRequests`` is the half of a ``Connection`` (``connection.py``) that knows what
requests mean; the other half moves bytes and time.  Every handler is synchronous
unless it must wait (for a thread reading the store): then it returns the rest of its
work, and the connection reads nothing more from that guest until it is done.
"""

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Awaitable, Dict, List, Optional

from xenchannel.dom0.outbox import Outbox
from xenchannel.dom0.state import now_iso
from xenchannel.dom0.store import StoreError
from xenchannel.protocol import ERR_NO_BUNDLE, ERR_VERSION, ChannelError, ChannelTimeout
from xenchannel.session import (
    MAX_INSTANCE_ID,
    BundleRequested,
    Delivered,
    DeliveryReported,
    Dropped,
    Event,
    Greeted,
    GuestError,
    HostSession,
    QueryAnswered,
    QueryFailed,
    Refused,
    StatusReported,
    printable,
)

if TYPE_CHECKING:  # pragma: no cover - types only
    from xenchannel.dom0.config import AgentConfig
    from xenchannel.dom0.link import DomainLink
    from xenchannel.dom0.store import Signature

MSG_NO_BUNDLE = "dom0 has no usable metadata for this domain; the agent's status says why"
MSG_MOVING = "this domain's store entry now names another socket; the agent is moving there"
MSG_NOT_READING = "guest is not reading its replies"

# What a handler returns: None when it finished at once, else the rest of its work.
Work = Optional[Awaitable[None]]


class ChannelBusy(ChannelError):
    """The guest's channel has as many replies waiting as it may; str() is a sentence."""


class GuestRequests:
    """Request handlers of a ``Connection``, which provides what is declared here (the
    methods below are its, declared for the type checker)."""

    link: "DomainLink"
    name: str
    config: "AgentConfig"
    machine: HostSession
    outbox: Outbox
    ended: "asyncio.Future[str]"
    _busy: "Optional[asyncio.Future[None]]"
    _paced: List[asyncio.TimerHandle]
    _pending: Dict[int, "asyncio.Future[Dict[str, Any]]"]

    def _put(self, frame: bytes) -> bool:
        raise NotImplementedError

    def _pump(self) -> None:
        raise NotImplementedError

    def _wait_for(self, work: Awaitable[None]) -> None:
        raise NotImplementedError

    def _internal_error(self, what: str, exc: Exception) -> None:
        raise NotImplementedError

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
        at = now_iso()
        report = None
        if status.report is not None:
            # Judged here, against the bundle the guest applied, so that "ready" is a
            # reading of the record alone (status, channel_status) and needs no bundle.
            static = () if mismatch or link.bundle is None else link.bundle.static_addresses
            up = set(status.report.addresses())
            missing = [a for a in static if a not in up]
            report = dict(status.report.body(), at=at, instance_id=instance_id, missing=missing)
        link.record(
            status={
                "at": at,
                "state": state,
                "reason": reason,
                "instance_id": instance_id,
                "mismatch": mismatch,
            },
            # A STATUS without one (a guest older than reports) leaves no stale report.
            report=report,
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
