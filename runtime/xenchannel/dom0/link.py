"""A domain's link: the agent's lasting tie to one domain's channel socket.

The socket exists only while the domain runs, and QEMU serves it to one client at a
time.  A ``DomainLink`` waits for it, connects with back-off (jittered, so a thousand
links do not retry in step), runs one ``Connection`` per connect, follows the store
entry (its socket, its bundle's digest), and records what happens for ``status``.
Its run state (``LinkState``) is in the state record as ``link``.

Isolation is the rule everything here is built around: a link serves only the bundle of
the store entry that names its socket, read from the store at the moment the guest
asks.  Nothing a guest sends (a domain name, an instance-id) is ever used to choose
what to send.
"""

import asyncio
import enum
import logging
import os
import random
import re
import stat
import time
from typing import TYPE_CHECKING, Any, Dict, List, NamedTuple, Optional, Tuple

from xenchannel.dom0 import LOG, log_event
from xenchannel.dom0.connection import Connection
from xenchannel.dom0.state import now_iso
from xenchannel.dom0.store import DomainEntry, domain_file, resolved_socket_problem
from xenchannel.protocol import ChannelClosed, Skipped, static_addresses
from xenchannel.session import HostState

if TYPE_CHECKING:  # pragma: no cover - types only
    from xenchannel.dom0.agent import Supervisor


class LinkState(enum.Enum):
    """Where a domain's link is (``link`` in its state record and ``status --json``)."""

    WAITING = "waiting"  # no socket: the domain is not running
    UNREACHABLE = "unreachable"  # the socket refused or did not answer: backing off
    DISCONNECTED = "disconnected"  # a connection ended: backing off before the next
    REFUSED = "refused"  # the socket resolves somewhere unsafe: not connecting
    KNOCKED = "knocked"  # connected, KNOCK sent, no session yet
    SERVING = "serving"  # connected, the guest greeted: a session
    SENDING = "sending"  # connected, the bundle streams
    STOPPED = "stopped"  # the domain left the store, or the agent stopped


# While connected, the link's state is its session machine's.
_CONNECTED = {
    HostState.KNOCKED: LinkState.KNOCKED,
    HostState.SERVING: LinkState.SERVING,
    HostState.SENDING: LinkState.SENDING,
}


class BundleInfo(NamedTuple):
    """What a link keeps of its domain's bundle: never the bundle itself."""

    digest: str
    instance_id: str
    size: int
    hostname: Optional[str]
    # What its network-config assigns, for judging the guest's report ("ready").
    static_addresses: Tuple[str, ...]


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


class DomainLink:
    """One domain's channel: connect, handshake, serve its own bundle, record events."""

    def __init__(self, supervisor: "Supervisor", name: str, socket: str) -> None:
        self.supervisor = supervisor
        self.config = supervisor.config
        self.name = name
        self.socket = socket
        self.bundle: Optional[BundleInfo] = None
        self.store_error: Optional[str] = None
        self.connection: Optional[Connection] = None
        # None until the first step, so that step is logged and recorded like any change.
        self.state: Optional[LinkState] = None
        self.echoes_ignored = 0
        self._task: Optional[asyncio.Task[None]] = None
        # Set to cut a back-off short (the socket moved); a future only while pausing: an
        # asyncio.Event per link would cost a deque each, for thousands of links.
        self._woken = False
        self._waker: Optional[asyncio.Future[None]] = None
        self._closing = False
        self._close_reason = "stopped"
        self._reset_backoff = False
        self._loaded_once = False
        self._skip_bytes = 0
        self._skip_notes = 0
        self._skip_reasons: Dict[str, int] = {}
        self._skip_logged = -1e9
        # What a guest can make the agent log is bounded: a burst of log_burst lines,
        # then one per skip_log_interval; the rest are counted and summarised.
        self._log_tokens = float(self.config.log_burst)
        self._log_tokens_at = time.monotonic()
        self._suppressed: Dict[str, int] = {}
        self.counters = _restored_counters(supervisor.recorder.ensure(name).get("counters"))

    @property
    def connected(self) -> bool:
        return self.connection is not None

    @property
    def session(self) -> Optional[str]:
        """The id of the current connection's session, if the guest greeted."""
        return self.connection.machine.session_id if self.connection is not None else None

    # ------------------------------------------------------------- control from the supervisor

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
        info = BundleInfo(
            entry.digest,
            entry.instance_id,
            entry.size,
            entry.hostname,
            tuple(static_addresses(entry.bundle.network_config)),
        )
        changed = info != self.bundle
        self.bundle = info
        self.store_error = None
        if not changed and self._loaded_once:
            return
        state = self.supervisor.recorder.ensure(self.name)
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
            self.record(
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
        self.counters["last_error_class"] = "store-error"
        self.record(
            socket=self.socket,
            active=True,
            bundle=None,
            last_error=_err(message),
            counters=self.counters,
        )

    def _move(self, socket: str) -> None:
        if socket == self.socket:
            return
        log_event(self.name, "socket-changed", old=self.socket, new=socket)
        self.socket = socket
        self.record(socket=socket)
        self._reset_backoff = True
        self._drop("socket-changed")
        self._wake()

    def _drop(self, reason: str) -> None:
        """Close the current connection; it ends with ``reason``."""
        if self.connection is not None:
            self.connection.drop(reason)

    # ------------------------------------------------------------- recording

    def record(self, **fields: Any) -> None:
        self.supervisor.recorder.update(self.name, **fields)

    def record_error(self, message: str, kind: str) -> None:
        self.counters["last_error_class"] = kind
        self.record(last_error=_err(message), counters=self.counters)

    def _enter(
        self, state: LinkState, event: str, level: int = logging.INFO, **fields: Any
    ) -> None:
        """Log a change of run state once, not on every retry, and record it."""
        if state == self.state:
            log_event(self.name, event, logging.DEBUG, **fields)
            return
        self.state = state
        log_event(self.name, event, level, **fields)
        self.record(link=state.value)

    def session_state(self, state: HostState) -> None:
        """The connection's session machine is in ``state`` now."""
        link_state = _CONNECTED[state]
        if link_state != self.state:
            self.state = link_state
            self.record(link=link_state.value)

    def log(self, event: str, level: int = logging.INFO, **fields: Any) -> None:
        """A log line the guest's traffic caused: within the link's budget, or counted
        and summarised later (``log_summaries``)."""
        if not LOG.isEnabledFor(level):
            return  # (debug lines without --verbose): nothing to spend
        now = time.monotonic()
        interval = self.config.skip_log_interval
        self._log_tokens = min(
            float(self.config.log_burst), self._log_tokens + (now - self._log_tokens_at) / interval
        )
        self._log_tokens_at = now
        if self._log_tokens >= 1.0:
            self._log_tokens -= 1.0
            log_event(self.name, event, level, **fields)
            return
        if len(self._suppressed) < 16 or event in self._suppressed:
            self._suppressed[event] = self._suppressed.get(event, 0) + 1
        else:
            self._suppressed["other"] = self._suppressed.get("other", 0) + 1
        self.count("log_lines_suppressed")

    def count(self, counter: str, key: Optional[str] = None, n: int = 1) -> None:
        """``n`` more of ``counter`` (of ``key``, for the counters kept by reason)."""
        if key is None:
            self.counters[counter] = self.counters.get(counter, 0) + n
        else:
            by_key = self.counters.setdefault(counter, {})
            if key in by_key or len(by_key) < 32:
                by_key[key] = by_key.get(key, 0) + n
        self.record(counters=self.counters)

    def error_class(self, name: str) -> None:
        """The kind of the last error (a word: ``refused:busy``, ``store-error``)."""
        if self.counters.get("last_error_class") != name:
            self.counters["last_error_class"] = name
            self.record(counters=self.counters)

    def note_skipped(self, item: Skipped) -> None:
        self._skip_bytes += item.size
        self._skip_notes += 1
        # Reasons carry sizes ("oversized HELLO frame of 300000 bytes"); fold the
        # numbers so a flood of varied frames still gives a few distinct reasons.
        reason = re.sub(r"\d+", "N", item.reason)
        if reason not in self._skip_reasons and len(self._skip_reasons) >= 8:
            reason = "other"
        self._skip_reasons[reason] = self._skip_reasons.get(reason, 0) + item.size

    def summary_due(self) -> Optional[float]:
        """When a held-back summary (skipped bytes, suppressed lines) may be logged; None
        if none is held."""
        if not self._skip_bytes and not self._suppressed:
            return None
        return self._skip_logged + self.config.skip_log_interval

    def log_summaries(self, force: bool = False) -> None:
        """At most one line per skip_log_interval summarising what the decoder dropped,
        and one summarising the log lines the budget held back."""
        due = self.summary_due()
        if due is None:
            return
        now = time.monotonic()
        if not force and now < due:
            return
        self._skip_logged = now
        if self._suppressed:
            events = ",".join(f"{event}:{n}" for event, n in sorted(self._suppressed.items()))
            log_event(
                self.name,
                "log-suppressed",
                logging.WARNING,
                lines=sum(self._suppressed.values()),
                events=events,
            )
            self._suppressed = {}
        if not self._skip_bytes:
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
        self.counters["skipped_bytes"] = self.counters.get("skipped_bytes", 0) + self._skip_bytes
        self._skip_bytes = self._skip_notes = 0
        self._skip_reasons = {}
        self.record(counters=self.counters)

    # ------------------------------------------------------------- connection loop

    async def _run(self) -> None:
        config = self.config
        backoff = config.backoff_initial
        try:
            while not self._closing:
                self.log_summaries()
                if self._reset_backoff:
                    self._reset_backoff = False
                    backoff = config.backoff_initial
                path = self.socket
                # Checked again at each connect: a symlink may appear after the entry
                # was loaded, and connecting through it would serve this domain's bundle
                # to another domain's guest.
                problem = resolved_socket_problem(path, config.socket_root)
                if problem is not None:
                    message = f"{domain_file(config.store_dir, self.name)} names {problem}"
                    if self.state != LinkState.REFUSED:
                        self.record_error(message, "socket-refused")
                    self._enter(LinkState.REFUSED, "socket-refused", logging.ERROR, error=message)
                elif not _is_socket(path):
                    self._enter(LinkState.WAITING, "waiting", socket=path)
                else:
                    try:
                        connection = await self._connect(path)
                    except asyncio.TimeoutError:
                        self._enter(
                            LinkState.UNREACHABLE,
                            "connect-failed",
                            logging.WARNING,
                            socket=path,
                            error=f"no answer within {config.connect_timeout:g} s",
                        )
                    except OSError as exc:
                        self._enter(
                            LinkState.UNREACHABLE,
                            "connect-failed",
                            logging.WARNING,
                            socket=path,
                            error=exc.strerror or str(exc),
                        )
                    else:
                        if await self._serve(connection):
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
            self.state = LinkState.STOPPED
            self.record(link=LinkState.STOPPED.value)
            self.log_summaries(force=True)

    async def _pause(self, delay: float) -> None:
        """Sleep ``delay`` with jitter (so 1000 links do not retry in step), or until woken."""
        if self._woken:
            self._woken = False
            return
        loop = asyncio.get_running_loop()
        waker = self._waker = loop.create_future()
        timer = loop.call_later(delay * random.uniform(0.5, 1.0), self._wake)  # noqa: S311
        try:
            await waker
        finally:
            timer.cancel()
            self._waker = None
            self._woken = False

    def _wake(self) -> None:
        """End a pause now, or the next one at once."""
        if self._waker is not None and not self._waker.done():
            self._waker.set_result(None)
        else:
            self._woken = True

    async def _connect(self, path: str) -> Connection:
        """Connect to the socket, within connect_timeout; the connection has KNOCKed."""
        made: List[Connection] = []

        def factory() -> Connection:
            made.append(Connection(self))
            return made[-1]

        loop = asyncio.get_running_loop()
        try:
            _transport, connection = await asyncio.wait_for(
                loop.create_unix_connection(factory, path), self.config.connect_timeout
            )
        except BaseException:
            # Connected just as the wait ended: no connection may stay open unowned.
            for orphan in made:
                orphan.drop("connect-abandoned")
                if self.connection is orphan:
                    self.connection = None
                    self.record(connected=False, disconnected_at=now_iso())
            raise
        return connection

    def attach(self, connection: Connection) -> None:
        """``connection`` is open (it calls this before it reads anything)."""
        self.connection = connection
        self.count("connects")
        self._enter(LinkState.KNOCKED, "connected", socket=self.socket)
        self.record(connected=True, connected_at=now_iso(), socket=self.socket)

    async def _serve(self, connection: Connection) -> bool:
        """Run one connection until it ends; True if it was worth resetting the back-off."""
        reason = "eof"
        try:
            reason = await connection.run()
        except asyncio.CancelledError:
            reason = self._close_reason
            raise
        finally:
            self.connection = None
            if self._closing:
                connection.close(ChannelClosed(f"domain {self.name}'s link was stopped"))
            else:
                connection.close(ChannelClosed(f"domain {self.name} disconnected"))
            self.log_summaries()
            self.record(connected=False, disconnected_at=now_iso())
            self._enter(LinkState.DISCONNECTED, "disconnected", reason=reason)
        return connection.useful or time.monotonic() - connection.started >= (
            self.config.stable_connection
        )

    # ------------------------------------------------------------- queries

    async def query(self, what: List[str], timeout: float) -> Dict[str, Any]:
        """Ask the in-guest agent; its QUERY_REPLY body, or ChannelError (one sentence)."""
        connection = self.connection
        if connection is None:
            raise ChannelClosed(
                f"domain {self.name} is not connected (is it running, with socket {self.socket}?)"
            )
        return await connection.query(what, timeout)


# The counters a state record keeps (``counters``), as numbers or, for those kept by
# reason, mappings of reason to number; ``last_error_class`` is a word.
COUNTERS = (
    "connects",
    "deliveries",
    "refusals",
    "dropped_requests",
    "log_lines_suppressed",
    "skipped_bytes",
)


def _restored_counters(recorded: Any) -> Dict[str, Any]:
    """The counters of a record read from disk, kept only where they have the right shape
    (a file the agent wrote, or one it must not trust)."""
    counters: Dict[str, Any] = {}
    if not isinstance(recorded, dict):
        return counters
    for key in COUNTERS:
        value = recorded.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            counters[key] = value
        elif isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
            for k, v in value.items()
        ):
            counters[key] = dict(list(value.items())[:32])
    if isinstance(recorded.get("last_error_class"), str):
        counters["last_error_class"] = recorded["last_error_class"][:64]
    return counters


def _err(message: str) -> Dict[str, Any]:
    return {"at": now_iso(), "message": message}
