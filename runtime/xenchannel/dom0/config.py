"""The dom0 agent's configuration: every setting and bound, checked in one place.

``AgentConfig`` holds everything the agent's behaviour depends on; ``validate()`` names the
first unusable setting in one sentence.  The INI file and the command line (``cli.py``)
and the Ansible role set these same names.
"""

import os
from dataclasses import dataclass
from typing import Optional, Tuple

from xenchannel.protocol import DEFAULT_CHUNK_SIZE, DEFAULT_MAX_PAYLOAD, ChannelError
from xenchannel.session import GET_BUNDLE_BURST, GET_BUNDLE_RATE

DEFAULT_STORE_DIR = "/etc/xenchannel/domains"
DEFAULT_STATE_DIR = "/var/lib/xenchannel/state"
DEFAULT_SOCKET_ROOT = "/run/xenchannel"
DEFAULT_CONTROL_SOCKET = "/run/xenchannel/agent.sock"


class AgentError(ChannelError):
    """The agent cannot start or run as configured; str() is one sentence."""


@dataclass
class AgentConfig:
    """Everything the agent's behaviour depends on; every wait is bounded by one of these."""

    store_dir: str
    state_dir: str
    socket_root: str
    control_socket: Optional[str]  # None: no control socket
    # node_exporter's textfile collector: the counters as Prometheus text, replaced
    # atomically every metrics_interval (e.g. /var/lib/prometheus/node-exporter/
    # xenchannel.prom); None writes none.
    metrics_file: Optional[str] = None
    metrics_interval: float = 15.0
    rescan_interval: float = 1.0
    # With inotify watching the store, only changed entries are looked at (at most once
    # per rescan_interval); everything is still rescanned this often, as a safety net.
    full_rescan_interval: float = 60.0
    # inotify watches the agent may hold (one per domain, plus the store); 0 turns
    # watching off, and a bigger store falls back to rescanning everything each time.
    max_store_watches: int = 65536
    connect_timeout: float = 2.0
    backoff_initial: float = 0.1
    backoff_max: float = 5.0
    knock_interval: float = 10.0
    knock_max_interval: float = 300.0
    query_timeout: float = 5.0
    max_guest_frame: int = 262144
    chunk_size: int = DEFAULT_CHUNK_SIZE
    # GET_BUNDLE pacing per connection: a burst, then this many a second.
    get_bundle_burst: int = GET_BUNDLE_BURST
    get_bundle_rate: float = GET_BUNDLE_RATE
    # Replies queued for a guest that does not read them: past this the guest is stuck
    # or hostile, and the connection is dropped rather than buffering without bound.
    max_queued_frames: int = 256
    read_size: int = 64 * 1024
    # What the agent handles from one guest, in frames a second past a burst: a guest
    # that behaves sends a dozen per boot, and a flood costs no more than this.
    guest_frame_rate: int = 200
    guest_frame_burst: int = 1000
    # At most one log line this often summarising what the decoder dropped; and what a
    # guest's traffic makes the agent log is held, past a burst of log_burst lines, to
    # one line this often (the rest are counted and summarised).
    skip_log_interval: float = 10.0
    log_burst: int = 20
    # A connection that lasted this long (or carried a valid frame) resets the back-off;
    # a socket that accepts and hangs up at once keeps backing off.
    stable_connection: float = 1.0
    shutdown_timeout: float = 3.0
    # Store entries read at once in a rescan (each in a thread).
    load_batch: int = 16
    # Encoded bundles the agent keeps between requests, in bytes in all; a bundle past
    # this is read from the store at each request instead.  0 keeps none.
    bundle_cache_bytes: int = 64 * 1024 * 1024
    control_max_request: int = 64 * 1024
    control_read_timeout: float = 5.0
    max_query_timeout: float = 300.0
    max_query_keys: int = 64

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
        if self.metrics_file is not None and not (
            os.path.isabs(self.metrics_file) and self.metrics_file.endswith(".prom")
        ):
            raise AgentError(
                f"metrics_file must be an absolute path ending in .prom (node_exporter reads "
                f"only those), not {self.metrics_file!r}"
            )
        for key in SECONDS:
            value = getattr(self, key)
            if not _number(value) or not 0 < value <= 3600:
                raise AgentError(f"{key} must be a number of seconds above 0, not {value!r}")
        if self.backoff_initial > self.backoff_max:
            raise AgentError("backoff_initial must not exceed backoff_max")
        if self.rescan_interval > self.full_rescan_interval:
            raise AgentError("rescan_interval must not exceed full_rescan_interval")
        if self.knock_interval > self.knock_max_interval:
            raise AgentError("knock_interval must not exceed knock_max_interval")
        if self.query_timeout > self.max_query_timeout:
            raise AgentError("query_timeout must not exceed max_query_timeout")
        if not _number(self.get_bundle_rate) or not 0 < self.get_bundle_rate <= 1000:
            raise AgentError(
                f"get_bundle_rate must be a number of requests a second, above 0 and at most "
                f"1000, not {self.get_bundle_rate!r}"
            )
        for key, low, high, unit in COUNTS:
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise AgentError(f"{key} must be between {low} and {high} {unit}, not {value!r}")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# The settings that are waits, and the counted ones with their bounds.
SECONDS: Tuple[str, ...] = (
    "rescan_interval",
    "full_rescan_interval",
    "connect_timeout",
    "backoff_initial",
    "backoff_max",
    "knock_interval",
    "knock_max_interval",
    "query_timeout",
    "skip_log_interval",
    "stable_connection",
    "shutdown_timeout",
    "control_read_timeout",
    "max_query_timeout",
    "metrics_interval",
)
COUNTS: Tuple[Tuple[str, int, int, str], ...] = (
    ("max_guest_frame", 4096, DEFAULT_MAX_PAYLOAD, "bytes"),
    # A chunk frame carries a 4-byte sequence number before the chunk's bytes.
    ("chunk_size", 1, DEFAULT_MAX_PAYLOAD - 4, "bytes"),
    ("get_bundle_burst", 1, 1000, "requests"),
    ("max_queued_frames", 16, 65536, "frames"),
    ("log_burst", 1, 10000, "lines"),
    ("read_size", 4096, 16 * 1024 * 1024, "bytes"),
    ("guest_frame_rate", 10, 1000000, "frames a second"),
    ("guest_frame_burst", 10, 1000000, "frames"),
    ("load_batch", 1, 1024, "entries"),
    ("bundle_cache_bytes", 0, 1 << 40, "bytes"),
    ("control_max_request", 1024, 16 * 1024 * 1024, "bytes"),
    ("max_query_keys", 1, 1024, "names"),
    ("max_store_watches", 0, 1000000, "watches"),
)
