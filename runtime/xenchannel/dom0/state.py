"""Per-domain state records of the dom0 agent: what happened on each domain's channel.

One JSON file per domain, ``<state_dir>/<domain>.json``, mode 0600, replaced atomically::

    {"domain": "web1", "socket": "/run/xenchannel/web1.sock",
     "active": true,                  false once the domain left the store
     "connected": false, "connected_at": "...Z" | null, "disconnected_at": "...Z" | null,
     "handshake": {"at", "version", "guest_agent"},
     "bundle": {"sha256", "instance_id", "size"},      the store's current valid bundle
     "delivered": {"at", "sha256", "instance_id", "count"},
     "status": {"at", "state", "reason", "instance_id", "mismatch"},
     "report": {"at", "instance_id", "hostname", "cloud_init", "errors",
                "recoverable_errors", "interfaces": [{"name", "mac", "addresses"}],
                "host_keys", "settling", "missing"},   what the clone is, sent with
                                                   its last STATUS
     "last_error": {"at", "message"},
     "updated_at": "...Z"}

Times are ISO-8601 UTC with milliseconds and a ``Z``.  The nested records are
absent until they first happen (``bundle`` also while the store entry is invalid), so a
reader can write ``state.get("status", {}).get("state")``; in memory they are None.

The agent writes these files through a ``StateRecorder``, which coalesces bursts (at
most one write per domain per 0.2 s, each event on disk within about that bound);
``status`` reads them, also while the agent is down.  ``summarise`` is the one
definition of what the status table shows, in particular of "delivered": the guest
acknowledged the bundle the store holds *now*; ``readiness`` the one definition of
"ready": the clone reported, after applying that bundle, with every static address of
its network-config up.
"""

import asyncio
import datetime
import fcntl
import ipaddress
import json
import logging
import os
import time
from typing import Any, Dict, List, Optional, Set, Tuple

from xenchannel.dom0 import log_event
from xenchannel.dom0.files import atomic_write, is_temporary
from xenchannel.domain_name import valid_domain_name
from xenchannel.protocol import ChannelError

STATE_SUFFIX = ".json"
# Held (flock) by the agent that owns the state directory, for as long as it runs.
LOCK_FILE = ".agent.lock"
# Every field of a record, with its value for a domain nothing has happened to yet.
_DEFAULTS: Dict[str, Any] = {
    "domain": "",
    "socket": None,
    "active": True,
    "connected": False,
    "connected_at": None,
    "disconnected_at": None,
    "link": None,  # the link's run state (dom0/link.py LinkState), e.g. "serving"
    "handshake": None,
    "bundle": None,
    "delivered": None,
    "status": None,
    "report": None,
    "last_error": None,
    # Per-domain counters (dom0/link.py COUNTERS): connects, deliveries, refusals by
    # code, dropped requests by reason, log lines held back, skipped bytes, and the kind
    # of the last error; also exported for Prometheus when the agent is told to.
    "counters": None,
    "updated_at": None,
}
STATE_FIELDS = tuple(_DEFAULTS)
NESTED_FIELDS = (
    "handshake",
    "bundle",
    "delivered",
    "status",
    "report",
    "last_error",
    "counters",
)
MAX_STATE_FILE = 1024 * 1024


def now_iso() -> str:
    """The current time as ISO-8601 UTC, e.g. 2024-05-01T12:00:00.123Z."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def new_state(domain: str, socket: Optional[str] = None) -> Dict[str, Any]:
    state = dict(_DEFAULTS)
    state["domain"] = domain
    state["socket"] = socket
    return state


def state_path(state_dir: str, domain: str) -> str:
    if not valid_domain_name(domain):
        raise ValueError(f"{domain!r} is not a valid domain name")
    return os.path.join(state_dir, domain + STATE_SUFFIX)


def _normalise(domain: str, value: Any) -> Optional[Dict[str, Any]]:
    """A record read from disk with every field present; None if it is not a record."""
    if not isinstance(value, dict):
        return None
    state = new_state(domain)
    for key in STATE_FIELDS:
        if key in value:
            state[key] = value[key]
    state["domain"] = domain  # the file name is authoritative
    for key in NESTED_FIELDS:
        if not isinstance(state[key], dict):
            state[key] = None
    return state


def load_state(state_dir: str, domain: str) -> Optional[Dict[str, Any]]:
    """One domain's record, or None if there is none (or it is unreadable)."""
    path = state_path(state_dir, domain)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_STATE_FILE + 1)
    except FileNotFoundError:
        return None
    if len(data) > MAX_STATE_FILE:
        return None
    try:
        return _normalise(domain, json.loads(data.decode("utf-8")))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def load_states(state_dir: str, problems: Optional[List[str]] = None) -> Dict[str, Dict[str, Any]]:
    """Every record in ``state_dir`` by domain; unreadable files are reported and skipped.

    Raises OSError (e.g. PermissionError) if the directory itself cannot be listed;
    a missing directory simply holds no records.
    """
    states: Dict[str, Dict[str, Any]] = {}
    try:
        names = sorted(os.listdir(state_dir))
    except FileNotFoundError:
        return states
    for filename in names:
        if filename.startswith(".") or not filename.endswith(STATE_SUFFIX):
            continue
        domain = filename[: -len(STATE_SUFFIX)]
        if not valid_domain_name(domain):
            continue
        try:
            state = load_state(state_dir, domain)
        except OSError as exc:
            state = None
            if problems is not None:
                problems.append(f"cannot read {os.path.join(state_dir, filename)}: {exc}")
                continue
        if state is None:
            if problems is not None:
                problems.append(
                    f"{os.path.join(state_dir, filename)} is not a valid state record; "
                    "it is ignored and will be rewritten"
                )
            continue
        states[domain] = state
    return states


def public_record(state: Dict[str, Any]) -> Dict[str, Any]:
    """A record as written and printed: nested records that never happened are absent."""
    return {
        key: value for key, value in state.items() if not (key in NESTED_FIELDS and value is None)
    }


def encode_state(state: Dict[str, Any]) -> bytes:
    # One line: without ``indent`` json uses its C encoder, a tenth of the CPU, and a
    # busy agent writes thousands of these a second (``status --json`` pretty-prints).
    return json.dumps(public_record(state), sort_keys=True, separators=(",", ":")).encode() + b"\n"


def save_state(state_dir: str, state: Dict[str, Any], sync: bool = True) -> None:
    """Write one record atomically (0600); creates ``state_dir`` (0700) if needed."""
    path = state_path(state_dir, str(state["domain"]))
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    atomic_write(path, encode_state(state), sync=sync)


READY_WORDS = ("yes", "no", "failed")


def _nested(state: Dict[str, Any], key: str) -> Dict[str, Any]:
    value = state.get(key)
    return value if isinstance(value, dict) else {}


def current_status(state: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The guest's last STATUS if it is about the bundle the agent holds: for its
    instance-id, without a mismatch, and sent after that bundle's delivery; else None
    (not reported yet, or a report of an earlier delivery)."""
    bundle, status, delivered = (_nested(state, k) for k in ("bundle", "status", "delivered"))
    if not bundle.get("sha256") or delivered.get("sha256") != bundle.get("sha256"):
        return None
    fresh = (
        status.get("instance_id") == bundle.get("instance_id")
        and not status.get("mismatch")
        and str(status.get("at") or "") >= str(delivered.get("at") or "")
    )
    return status if fresh else None


def readiness(state: Dict[str, Any]) -> Tuple[str, str]:
    """(word, why): whether the clone is ready to be used, and a sentence saying why not.

    "yes": after acknowledging the bundle the agent holds, the guest reported it applied,
    cloud-init (where it ran) without errors, and every static address of the bundle's
    network-config up.  "failed": it reported otherwise for that bundle; nothing changes
    until the guest is fixed and reports again.  "no": it has not reported on that bundle
    yet, it said it is still waiting for an address or its host keys (``settling``: it
    reports again), or it cannot (a guest runtime older than reports).
    """
    bundle, delivered, report = (_nested(state, k) for k in ("bundle", "delivered", "report"))
    instance_id = bundle.get("instance_id")
    if not bundle.get("sha256") or delivered.get("sha256") != bundle.get("sha256"):
        return "no", "the guest has not acknowledged the current bundle yet"
    status = current_status(state)
    if status is None:
        return "no", f"the guest has not reported on instance-id {instance_id} yet"
    if status.get("state") == "failed":
        return "failed", "applying failed: " + str(status.get("reason") or "no reason given")
    if status.get("state") != "applied":
        return "no", f"the guest reported {status.get('state')!r}, not applied, so far"
    if report.get("instance_id") != instance_id or report.get("at") != status.get("at"):
        return "no", (
            "the guest reported applied without a report of its addresses and host keys: "
            "its xenchannel runtime predates reports; update the template's guest role"
        )
    if report.get("cloud_init") == "error":
        errors = "; ".join(str(e) for e in report.get("errors") or []) or "no errors listed"
        return "failed", "cloud-init finished with errors: " + errors
    missing = report.get("missing") or []
    settling = report.get("settling")
    if settling:
        lacking = (
            ["the static address(es) " + ", ".join(str(a) for a in missing)] if missing else []
        )
        if not report.get("host_keys"):
            lacking.append("its SSH host keys")
        return "no", "the guest is still waiting for {} (it has {}) and reports again by {}".format(
            " and ".join(lacking) or "its network",
            interfaces_text(report),
            _later(str(report.get("at") or ""), settling),
        )
    if missing:
        return "failed", (
            "the guest reported without the static address(es) {} up (it has {}); make "
            "the network-config match the clone's interfaces by MAC".format(
                ", ".join(str(a) for a in missing), interfaces_text(report)
            )
        )
    return "yes", "ready"


def _later(at: str, seconds: Any) -> str:
    """``at`` (now_iso) plus ``seconds``, in the same form; the bare count if unreadable."""
    try:
        when = datetime.datetime.strptime(at, "%Y-%m-%dT%H:%M:%S.%fZ")
        return (when + datetime.timedelta(seconds=float(seconds))).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (TypeError, ValueError, OverflowError):
        return f"{seconds} s after its report"


def interfaces_text(report: Dict[str, Any]) -> str:
    """The reported interfaces in one line: ``enX0 00:16:3e:..:.. 10.0.0.5/24, ...``."""
    parts = []
    for interface in report.get("interfaces") or []:
        if isinstance(interface, dict):
            words = [str(interface.get("name"))]
            if interface.get("mac"):
                words.append(str(interface["mac"]))
            words.extend(str(a) for a in interface.get("addresses") or [])
            parts.append(" ".join(words))
    return "; ".join(parts) or "no interfaces"


def primary_address(report: Dict[str, Any]) -> Optional[str]:
    """The address to reach the clone at: the first static address of its network-config
    that is up, else the first reported address that is not link-local."""
    addresses = [
        str(a).split("/", maxsplit=1)[0]
        for interface in report.get("interfaces") or []
        if isinstance(interface, dict)
        for a in interface.get("addresses") or []
    ]
    missing = set(report.get("missing") or [])
    usable = [a for a in addresses if a not in missing and not _link_local(a)]
    return usable[0] if usable else None


def _link_local(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return True
    return ip.is_link_local or ip.is_loopback


def summarise(state: Dict[str, Any]) -> Dict[str, Any]:
    """The status table's view of a record: short strings, plus the delivered count.

    ``delivered`` is "yes" only if the guest acknowledged the bundle the store holds
    now, "stale" if it acknowledged some other (older) bundle, "no" if it never did.
    """
    bundle = state.get("bundle") if isinstance(state.get("bundle"), dict) else None
    delivered = state.get("delivered") if isinstance(state.get("delivered"), dict) else None
    handshake = state.get("handshake") if isinstance(state.get("handshake"), dict) else None
    status = state.get("status") if isinstance(state.get("status"), dict) else None
    last_error = state.get("last_error") if isinstance(state.get("last_error"), dict) else None

    if delivered is None or not delivered.get("sha256"):
        delivered_text = "no"
    elif bundle is not None and delivered.get("sha256") == bundle.get("sha256"):
        delivered_text = "yes"
    else:
        delivered_text = "stale"
    if state.get("active", True) is False:
        connected = "removed"
    else:
        connected = "yes" if state.get("connected") else "no"
    if status is None:
        status_text = "-"
    else:
        status_text = str(status.get("state", "?"))
        if status.get("mismatch"):
            status_text += " (mismatch)"
    count = delivered.get("count", 0) if delivered is not None else 0
    ready, _why = readiness(state)
    report = _nested(state, "report")
    return {
        "domain": state.get("domain", ""),
        "active": state.get("active", True) is not False,
        "connected": connected,
        "handshake": f"v{handshake.get('version')}" if handshake is not None else "no",
        "delivered": delivered_text,
        "delivered_count": count if isinstance(count, int) else 0,
        "status": status_text,
        "ready": ready,
        "address": primary_address(report) or "-",
        "hostname": report.get("hostname") or "-",
        "instance_id": (bundle.get("instance_id") if bundle is not None else None) or "-",
        "last_error": (last_error.get("message") if last_error is not None else None) or "-",
        "updated_at": state.get("updated_at"),
    }


class StateDirBusy(ChannelError):
    """Another agent holds the state directory; str() is one sentence."""


def _lock(state_dir: str) -> int:
    """An fd holding the state directory's lock; StateDirBusy if another agent has it."""
    path = os.path.join(state_dir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateDirBusy(
            f"another agent is using the state directory {state_dir}; stop it, or give "
            "this agent a state directory of its own (--state)"
        ) from None
    return fd


def remove_temporaries(state_dir: str) -> int:
    """Remove the temporary files a killed writer left in ``state_dir``; how many."""
    removed = 0
    for filename in os.listdir(state_dir):
        if is_temporary(filename):
            try:
                os.unlink(os.path.join(state_dir, filename))
                removed += 1
            except FileNotFoundError:
                pass
    return removed


class StateRecorder:
    """The agent's in-memory records, written to disk coalesced and off the event loop.

    ``update()`` changes a record and schedules its write: at once if the domain was
    not written in the last ``min_interval`` seconds, else when that interval ends, so a
    burst of events costs one write.  Writes run in the loop's executor (fsync must not
    stall 1000 channels); at most one write per domain is in flight, and a newer change
    waits for it, so an older snapshot can never overwrite a newer one.  Without a running
    event loop (tests, tools) ``update()`` writes synchronously.
    """

    def __init__(self, state_dir: str, min_interval: float = 0.2) -> None:
        self.state_dir = state_dir
        self.min_interval = min_interval
        self.states: Dict[str, Dict[str, Any]] = {}
        self._dirty: Set[str] = set()
        self._last_write: Dict[str, float] = {}
        self._timers: Dict[str, asyncio.TimerHandle] = {}
        self._inflight: Dict[str, asyncio.Future[None]] = {}
        self._failing = False
        self._lock_fd: Optional[int] = None

    def restore(self) -> List[str]:
        """Load the records on disk; returns sentences about files that were skipped."""
        problems: List[str] = []
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        if self._lock_fd is None:
            self._lock_fd = _lock(self.state_dir)
        # Only the lock's holder writes here: what a killed agent left half-written is
        # garbage now, and nothing else would ever remove it.
        removed = remove_temporaries(self.state_dir)
        if removed:
            problems.append(
                f"removed {removed} temporary file(s) from {self.state_dir} that an agent "
                "stopped in the middle of a write left behind"
            )
        self.states = load_states(self.state_dir, problems)
        return problems

    def close(self) -> None:
        """Give up the state directory (after the last flush)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def get(self, domain: str) -> Optional[Dict[str, Any]]:
        return self.states.get(domain)

    def ensure(self, domain: str) -> Dict[str, Any]:
        state = self.states.get(domain)
        if state is None:
            state = self.states[domain] = new_state(domain)
        return state

    def update(self, domain: str, **fields: Any) -> Dict[str, Any]:
        state = self.ensure(domain)
        for key, value in fields.items():
            if key not in _DEFAULTS:
                raise KeyError(f"{key!r} is not a state field")
            state[key] = value
        state["updated_at"] = now_iso()
        self._dirty.add(domain)
        self._schedule(domain)
        return state

    @property
    def pending(self) -> int:
        """Records changed in memory but not yet on disk."""
        return len(self._dirty) + len(self._inflight)

    def _schedule(self, domain: str) -> None:
        if domain in self._timers or domain in self._inflight:
            return  # the pending timer or write completion picks the change up
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write_sync(domain)
            return
        delay = self._last_write.get(domain, -1e9) + self.min_interval - time.monotonic()
        self._timers[domain] = loop.call_later(max(0.0, delay), self._start_write, domain)

    def _start_write(self, domain: str) -> None:
        self._timers.pop(domain, None)
        if domain not in self._dirty:
            return
        self._dirty.discard(domain)
        state = self.states.get(domain)
        if state is None:
            return
        data = encode_state(state)
        path = state_path(self.state_dir, domain)
        self._last_write[domain] = time.monotonic()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, self._write_file, path, data)
        self._inflight[domain] = future
        future.add_done_callback(lambda done: self._written(domain, done))

    def _write_file(self, path: str, data: bytes) -> None:
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        atomic_write(path, data, sync=True)

    def _written(self, domain: str, future: "asyncio.Future[None]") -> None:
        self._inflight.pop(domain, None)
        exc = None if future.cancelled() else future.exception()
        if exc is not None:
            self._dirty.add(domain)
            # Retry a second later; one log line while writes keep failing.
            self._last_write[domain] = time.monotonic() + 1.0
            if not self._failing:
                self._failing = True
                log_event(
                    "-", "state-write-failed", logging.ERROR, state_dir=self.state_dir, error=exc
                )
        elif self._failing:
            self._failing = False
            log_event("-", "state-write-recovered", state_dir=self.state_dir)
        if domain in self._dirty:
            try:
                self._schedule(domain)
            except RuntimeError:
                pass  # the loop is closing; flush() writes what is left

    def _write_sync(self, domain: str) -> None:
        state = self.states.get(domain)
        self._dirty.discard(domain)
        if state is not None:
            save_state(self.state_dir, state)
            self._last_write[domain] = time.monotonic()

    async def flush(self) -> None:
        """Write every pending change now (at shutdown); waits for writes in flight."""
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        while self._inflight:
            await asyncio.gather(*list(self._inflight.values()), return_exceptions=True)
            # Completion callbacks run on the next loop iteration.
            await asyncio.sleep(0)
            for handle in self._timers.values():
                handle.cancel()
            self._timers.clear()
        self.flush_sync()

    def flush_sync(self) -> None:
        """Write every pending change synchronously (no writes may be in flight)."""
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for domain in sorted(self._dirty):
            try:
                self._write_sync(domain)
            except OSError as exc:
                log_event(domain, "state-write-failed", logging.ERROR, error=exc.strerror)
