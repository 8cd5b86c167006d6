"""A stand-in for QEMU's Xen PV channel backend and the guest's ``/dev/hvcN`` tty.

On a real host a channel is a private byte stream: in dom0 QEMU listens on a Unix
socket (the dom0 agent connects to it), in the guest the stream is a tty ``/dev/hvcN``
with a real kernel line discipline.  This module recreates both ends on a machine
without Xen so the dom0 agent and the guest client can be tested together:

* the dom0 end is a Unix socket that this simulator *listens* on, serving ONE client
  at a time; further clients wait in the listen backlog until the first one leaves,
  exactly like QEMU's ``server=on`` chardev;
* the guest end is the slave of a pseudo-terminal (``/dev/pts/N``, optionally reached
  through a symlink such as ``.../hvc1``), so the guest code runs against a genuine
  kernel tty with termios, echo and CR/LF mapping.

Guest open/close is observed with inotify (IN_OPEN / IN_CLOSE_*) on the slave node.
The simulator keeps its own slave fd open so the master never sees EIO/hangup when the
guest closes, just as the hvc ring outlives any guest process.

Each switch of :class:`SimulatorOptions` mimics one real behaviour:

``rate``
    a real channel moves about 250 KiB/s per direction; a token bucket paces writes in
    ~10 ms slices.  ``None`` disables pacing.
``keep_host_bytes``
    bytes dom0 writes before any guest process has the tty open wait in the ring and are
    delivered on open ("stale bytes are normal").  ``False`` drops them, as an old QEMU.
``keep_guest_bytes``
    bytes the guest writes while no dom0 client is connected are kept and handed to the
    next client.  ``False`` drops them.
``buffer_limit``
    QEMU buffers at most ``limit=1048576`` bytes; overflow is dropped and counted.
``echo``
    a fresh guest tty is cooked with ECHO, so until the guest program sets raw mode the
    kernel echoes whatever dom0 sends back to dom0 (with ``\\n`` -> ``\\r\\n`` and so on).
    The termios are reset every time the last guest closes, as a fresh hvc open would be.
``garbage``
    other writers share the wire: kernel log lines and line noise towards the guest,
    ModemManager's AT probes and noise towards dom0.  Garbage is inserted only between
    forwarded chunks (possibly in the middle of a peer's frame), never inside them.
``cut_host_after``
    the dom0 connection drops mid-stream (agent crash, QEMU restart).

Run ``python -m testbed.simulator --socket PATH [--link PATH] ...`` for a standalone
channel; it prints ``device=/dev/pts/N socket=PATH`` once ready and cleans up on
SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import ctypes
import errno
import logging
import os
import random
import signal
import socket
import stat
import struct
import sys
import termios
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, replace
from typing import (
    Any,
    Callable,
    Coroutine,
    Deque,
    Dict,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
    TypeVar,
)

from xenchannel.guest.device import raw_attrs

__all__ = [
    "ChannelStats",
    "SimulatedChannel",
    "SimulatorOptions",
    "SimulatorThread",
    "main",
]

LOG = logging.getLogger(__name__)

T = TypeVar("T")

GARBAGE_MODES = ("to_guest", "to_host", "both")

# Pacing slice: small enough to look smooth to a reader, large enough that a thousand
# channels do not drown the event loop in timers.
_TICK = 0.01
# Bytes held in userspace per direction while the far end is present but slow; beyond
# this the source is no longer read, so back-pressure reaches the writer as on a full ring.
_HIGH_WATER = 65536
_READ_SIZE = 65536
# When a pty write would block despite poll() saying writable (canonical mode with a
# full line buffer does this), retry after a short pause instead of spinning.
_EAGAIN_BACKOFF = 0.002
_LISTEN_BACKLOG = 16

_IN_CLOSE_WRITE = 0x00000008
_IN_CLOSE_NOWRITE = 0x00000010
_IN_OPEN = 0x00000020
_IN_Q_OVERFLOW = 0x00004000
_IN_IGNORED = 0x00008000
_INOTIFY_EVENT = struct.Struct("iIII")


@dataclass
class SimulatorOptions:
    """Behaviour switches; see the module docstring for what each one mimics."""

    rate: Optional[float] = 256000.0
    keep_host_bytes: bool = True
    keep_guest_bytes: bool = True
    buffer_limit: int = 1048576
    echo: bool = False
    garbage: Optional[str] = None
    garbage_interval: float = 0.2
    garbage_seed: Optional[int] = None
    cut_host_after: Optional[int] = None
    cut_every_connection: bool = False

    def __post_init__(self) -> None:
        if self.rate is not None and not self.rate > 0:
            raise ValueError("rate must be positive or None")
        if self.buffer_limit <= 0:
            raise ValueError("buffer_limit must be positive")
        if self.garbage is not None and self.garbage not in GARBAGE_MODES:
            raise ValueError("garbage must be None or one of " + ", ".join(GARBAGE_MODES))
        if not self.garbage_interval > 0:
            raise ValueError("garbage_interval must be positive")
        if self.cut_host_after is not None and self.cut_host_after <= 0:
            raise ValueError("cut_host_after must be positive or None")


@dataclass
class ChannelStats:
    """Counters of one channel.  Data and garbage are counted separately."""

    host_to_guest: int = 0  # data bytes written into the guest tty
    guest_to_host: int = 0  # data bytes (including kernel echo) sent to dom0 clients
    dropped_host_to_guest: int = 0
    dropped_guest_to_host: int = 0
    garbage_to_guest: int = 0  # garbage bytes written into the guest tty
    garbage_to_host: int = 0  # garbage bytes sent to dom0 clients
    guest_opens: int = 0  # IN_OPEN events seen; inotify merges back-to-back duplicates
    host_connections: int = 0
    host_cuts: int = 0
    pending_host_to_guest: int = 0  # bytes waiting in userspace for the guest
    pending_guest_to_host: int = 0  # bytes waiting in userspace for a dom0 client
    inotify_overflows: int = 0


# --------------------------------------------------------------------------- helpers


class _Queue:
    """FIFO of byte chunks, each tagged as data or garbage, so garbage only ever sits
    between forwarded chunks and delivered bytes can be attributed correctly."""

    def __init__(self) -> None:
        self._chunks: Deque[Tuple[bytes, bool]] = deque()
        self._offset = 0  # consumed bytes of the first chunk
        self.size = 0

    def push(self, data: bytes, garbage: bool = False) -> None:
        if data:
            self._chunks.append((data, garbage))
            self.size += len(data)

    def peek(self, n: int) -> bytes:
        parts: List[bytes] = []
        want = n
        offset = self._offset
        for data, _ in self._chunks:
            piece = data[offset : offset + want]
            offset = 0
            parts.append(piece)
            want -= len(piece)
            if want <= 0:
                break
        return b"".join(parts)

    def consume(self, n: int) -> Tuple[int, int]:
        """Remove ``n`` bytes; return (data bytes, garbage bytes) removed."""
        data_n = garbage_n = 0
        while n > 0 and self._chunks:
            chunk, garbage = self._chunks[0]
            take = min(n, len(chunk) - self._offset)
            if garbage:
                garbage_n += take
            else:
                data_n += take
            n -= take
            self._offset += take
            self.size -= take
            if self._offset >= len(chunk):
                self._chunks.popleft()
                self._offset = 0
        return data_n, garbage_n

    def clear(self) -> Tuple[int, int]:
        return self.consume(self.size)


class _Bucket:
    """Token bucket.  Writes wait for one slice worth of tokens; the bucket holds two
    slices so late timer wake-ups do not lose throughput."""

    def __init__(self, rate: Optional[float]) -> None:
        self.rate = rate
        if rate is None:
            self.quantum = float("inf")
            self.capacity = float("inf")
        else:
            self.quantum = max(1.0, rate * _TICK)
            self.capacity = 2 * self.quantum
        self.tokens = self.capacity
        self._stamp = time.monotonic()

    def _refill(self) -> None:
        if self.rate is None:
            return
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def allowance(self, pending: int) -> int:
        if self.rate is None:
            return pending
        self._refill()
        return min(pending, int(self.tokens))

    def delay_for(self, pending: int) -> float:
        """Seconds until a write of ``pending`` bytes (up to one slice) may start."""
        if self.rate is None:
            return 0.0
        self._refill()
        need = min(float(pending), self.quantum)
        if self.tokens >= need:
            return 0.0
        return (need - self.tokens) / self.rate

    def consume(self, n: int) -> None:
        if self.rate is not None:
            self.tokens -= n


_KERNEL_MESSAGES = (
    b"hvc_open: port %d opened",
    b"hvc_close: port %d closed",
    b"xen:console: hvc%d ring event channel bound",
    b"xenconsole: buffer overrun on port %d, flushing",
    b"tty hvc%d: resizing to 80x25",
)
_AT_PROBES = (b"AT\r", b"ATE0\r", b"AT+GCAP\r", b"ATI\r", b"AT+CGMI\r")


class _GarbageMaker:
    def __init__(self, seed: Optional[int], port: int) -> None:
        # Not security relevant: reproducible noise for tests.
        self._rng = random.Random(seed)
        self._port = port
        self._clock = 3.0 + self._rng.random()

    def _noise(self) -> bytes:
        rng = self._rng
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(8, 48)))

    def to_guest(self) -> bytes:
        rng = self._rng
        parts: List[bytes] = []
        for _ in range(rng.randint(1, 3)):
            self._clock += rng.uniform(0.0005, 0.5)
            sec = int(self._clock)
            usec = int((self._clock - sec) * 1000000)
            msg = rng.choice(_KERNEL_MESSAGES) % self._port
            parts.append(b"[%5d.%06d] hvc%d: %s\r\n" % (sec, usec, self._port, msg))
        parts.insert(rng.randint(0, len(parts)), self._noise())
        return b"".join(parts)

    def to_host(self) -> bytes:
        rng = self._rng
        parts = [rng.choice(_AT_PROBES) for _ in range(rng.randint(1, 4))]
        parts.insert(rng.randint(0, len(parts)), self._noise())
        return b"".join(parts)


# ------------------------------------------------------------------------ termios


def _fresh_tty_attrs(current: List[Any]) -> List[Any]:
    """What a freshly opened hvc tty looks like: the kernel's tty_std_termios."""
    attrs = list(current)
    attrs[0] = termios.ICRNL | termios.IXON
    attrs[1] = termios.OPOST | termios.ONLCR
    cflag = int(attrs[2]) & ~(termios.CSIZE | termios.PARENB | termios.CSTOPB)
    attrs[2] = cflag | termios.CS8 | termios.CREAD | termios.HUPCL
    attrs[3] = (
        termios.ISIG
        | termios.ICANON
        | termios.ECHO
        | termios.ECHOE
        | termios.ECHOK
        | termios.ECHOCTL
        | termios.ECHOKE
        | termios.IEXTEN
    )
    cc = list(attrs[6])
    defaults = {
        termios.VINTR: 0x03,
        termios.VQUIT: 0x1C,
        termios.VERASE: 0x7F,
        termios.VKILL: 0x15,
        termios.VEOF: 0x04,
        termios.VTIME: 0,
        termios.VMIN: 1,
        termios.VSTART: 0x11,
        termios.VSTOP: 0x13,
        termios.VSUSP: 0x1A,
        termios.VEOL: 0,
        termios.VREPRINT: 0x12,
        termios.VDISCARD: 0x0F,
        termios.VWERASE: 0x17,
        termios.VLNEXT: 0x16,
        termios.VEOL2: 0,
    }
    for index, value in defaults.items():
        if index < len(cc):
            cc[index] = value
    attrs[6] = cc
    return attrs


# ------------------------------------------------------------------------ inotify


class _Libc:
    _lib: Optional[ctypes.CDLL] = None

    @classmethod
    def get(cls) -> ctypes.CDLL:
        if cls._lib is None:
            lib = ctypes.CDLL(None, use_errno=True)
            lib.inotify_init1.argtypes = [ctypes.c_int]
            lib.inotify_init1.restype = ctypes.c_int
            lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
            lib.inotify_add_watch.restype = ctypes.c_int
            lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
            lib.inotify_rm_watch.restype = ctypes.c_int
            cls._lib = lib
        return cls._lib


class _InotifyHub:
    """One inotify instance per event loop, shared by all its channels: the default
    fs.inotify.max_user_instances is 128, far below the thousand channels tests use."""

    _hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _InotifyHub] = (
        weakref.WeakKeyDictionary()
    )

    @classmethod
    def for_loop(cls, loop: asyncio.AbstractEventLoop) -> _InotifyHub:
        hub = cls._hubs.get(loop)
        if hub is None or hub.fd < 0:
            hub = cls(loop)
            cls._hubs[loop] = hub
        return hub

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        lib = _Libc.get()
        fd = int(lib.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd = fd
        self._loop = loop
        self._watches: Dict[int, SimulatedChannel] = {}
        loop.add_reader(fd, self._on_readable)

    def add(self, path: str, channel: SimulatedChannel) -> int:
        mask = _IN_OPEN | _IN_CLOSE_WRITE | _IN_CLOSE_NOWRITE
        wd = int(_Libc.get().inotify_add_watch(self.fd, os.fsencode(path), mask))
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}")
        self._watches[wd] = channel
        return wd

    def remove(self, wd: int) -> None:
        if self._watches.pop(wd, None) is not None and self.fd >= 0:
            _Libc.get().inotify_rm_watch(self.fd, wd)
        if not self._watches:
            self.close()

    def close(self) -> None:
        if self.fd >= 0:
            self._loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
        if self._hubs.get(self._loop) is self:
            del self._hubs[self._loop]

    def _on_readable(self) -> None:
        try:
            buf = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        to_verify: Dict[SimulatedChannel, None] = {}  # ordered set
        offset = 0
        while offset + _INOTIFY_EVENT.size <= len(buf):
            wd, mask, _cookie, name_len = _INOTIFY_EVENT.unpack_from(buf, offset)
            offset += _INOTIFY_EVENT.size + name_len
            if mask & _IN_Q_OVERFLOW:
                # Events were lost, so every open count must be re-established.
                for each in self._watches.values():
                    each._stats.inotify_overflows += 1
                    each._note_close()
                    to_verify[each] = None
                continue
            channel = self._watches.get(wd)
            # Events queued before a watch was removed still arrive; ignore them.
            if channel is None or mask & _IN_IGNORED:
                continue
            if mask & _IN_OPEN:
                channel._note_open()
            if mask & (_IN_CLOSE_WRITE | _IN_CLOSE_NOWRITE):
                channel._note_close()
                to_verify[channel] = None
        if to_verify:
            # inotify merges identical consecutive unread events (two opens, or two
            # closes, of the same tty), so after a close the count is re-read from /proc
            # once for the whole batch instead of trusting the arithmetic.
            counts, complete = _scan_fd_targets({ch._device_path for ch in to_verify})
            for channel in to_verify:
                try:
                    channel._reconcile_openers(counts.get(channel._device_path, 0), complete)
                except Exception:
                    LOG.exception("open-state update failed for %s", channel.socket_path)


def _scan_fd_targets(paths: Set[str]) -> Tuple[Dict[str, int], bool]:
    """Count fds of all processes that point at one of ``paths``.

    Returns the counts and whether every process could be inspected (an unprivileged
    simulator cannot see other users' fds).
    """
    counts: Dict[str, int] = {}
    complete = True
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return counts, False
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            names = os.listdir(fd_dir)
        except FileNotFoundError:
            continue  # exited meanwhile
        except OSError:
            complete = False
            continue
        for name in names:
            try:
                target = os.readlink(f"{fd_dir}/{name}")
            except OSError:
                continue  # closed meanwhile
            if target in paths:
                counts[target] = counts.get(target, 0) + 1
    return counts, complete


# ------------------------------------------------------------------------ channel


class SimulatedChannel:
    """One channel: a Unix socket server for dom0 and a pty slave for the guest.

    All methods except the properties must be called from the event loop thread that
    ran :meth:`start`.
    """

    def __init__(
        self,
        socket_path: str,
        device_link: Optional[str] = None,
        options: Optional[SimulatorOptions] = None,
    ) -> None:
        self._socket_path = socket_path
        self._device_link = device_link
        self.options = options if options is not None else SimulatorOptions()
        self._stats = ChannelStats()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._master = -1
        self._slave = -1  # held open for the simulator's lifetime; never read from
        self._device_path = ""
        self._listen: Optional[socket.socket] = None
        self._socket_id: Optional[Tuple[int, int]] = None
        self._client: Optional[socket.socket] = None
        self._client_bytes = 0
        self._cut_done = False
        self._hub: Optional[_InotifyHub] = None
        self._wd = -1
        self._openers = 0  # guest opens in effect
        self._arith_openers = 0  # opens minus closes as inotify reported them
        self._verify_pending = False
        self._opens_after_close = 0
        self._h2g = _Queue()
        self._g2h = _Queue()
        self._h2g_bucket = _Bucket(self.options.rate)
        self._g2h_bucket = _Bucket(self.options.rate)
        self._h2g_timer: Optional[asyncio.TimerHandle] = None
        self._g2h_timer: Optional[asyncio.TimerHandle] = None
        self._garbage_timer: Optional[asyncio.TimerHandle] = None
        self._garbage: Optional[_GarbageMaker] = None
        self._readers: Set[int] = set()
        self._writers: Set[int] = set()
        self._started = False
        self._closed = False

    # ---------------------------------------------------------------- properties

    @property
    def socket_path(self) -> str:
        return self._socket_path

    @property
    def device_link(self) -> Optional[str]:
        return self._device_link

    @property
    def device_path(self) -> str:
        if not self._device_path:
            raise RuntimeError("channel not started")
        return self._device_path

    @property
    def guest_is_open(self) -> bool:
        return self._openers > 0

    @property
    def host_is_connected(self) -> bool:
        return self._client is not None

    @property
    def stats(self) -> ChannelStats:
        """A snapshot of the counters."""
        return replace(
            self._stats,
            pending_host_to_guest=self._h2g.size,
            pending_guest_to_host=self._g2h.size,
        )

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        if self._started or self._closed:
            raise RuntimeError("channel already started or stopped")
        self._started = True
        self._loop = asyncio.get_running_loop()
        try:
            self._start()
        except BaseException:
            self._shutdown()
            raise

    def _start(self) -> None:
        loop = self._loop
        assert loop is not None
        self._master, self._slave = os.openpty()
        self._device_path = os.ttyname(self._slave)
        os.set_blocking(self._master, False)
        self._reset_termios()
        self._listen = self._bind_socket()
        # The held slave fd was opened before the watch exists, so it is never counted.
        self._hub = _InotifyHub.for_loop(loop)
        self._wd = self._hub.add(self._device_path, self)
        if self._device_link:
            self._make_link(self._device_link)
        if self.options.garbage is not None:
            digits = "".join(c for c in os.path.basename(self._device_path) if c.isdigit())
            self._garbage = _GarbageMaker(self.options.garbage_seed, int(digits or "0"))
            self._garbage_timer = loop.call_later(
                self.options.garbage_interval, self._on_garbage_tick
            )
        self._sync()

    async def stop(self) -> None:
        self._shutdown()

    async def disconnect_host(self) -> None:
        """Drop the current dom0 client now (agent restart, domain stopped...)."""
        if self._client is not None:
            self._drop_client()

    def _shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = self._loop
        for timer in (self._h2g_timer, self._g2h_timer, self._garbage_timer):
            if timer is not None:
                timer.cancel()
        self._h2g_timer = self._g2h_timer = self._garbage_timer = None
        if self._hub is not None and self._wd >= 0:
            self._hub.remove(self._wd)
        self._hub = None
        self._wd = -1
        if loop is not None:
            for fd in list(self._readers):
                loop.remove_reader(fd)
            for fd in list(self._writers):
                loop.remove_writer(fd)
        self._readers.clear()
        self._writers.clear()
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._listen is not None:
            self._listen.close()
            self._listen = None
            self._unlink_socket()
        if self._device_link and self._device_path:
            try:
                if os.readlink(self._device_link) == self._device_path:
                    os.unlink(self._device_link)
            except OSError:
                pass
        for fd in (self._master, self._slave):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1

    def _bind_socket(self) -> socket.socket:
        path = self._socket_path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise FileExistsError(errno.EEXIST, "exists and is not a socket", path)
            os.unlink(path)  # a stale socket from a previous run
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.bind(path)
            # Nobody can connect before listen(), so tightening the mode here is race-free.
            os.chmod(path, 0o600)
            st = os.lstat(path)
            self._socket_id = (st.st_dev, st.st_ino)
            sock.listen(_LISTEN_BACKLOG)
        except BaseException:
            sock.close()
            raise
        return sock

    def _unlink_socket(self) -> None:
        # Only remove the file if it is still ours, not one a successor bound since.
        try:
            st = os.lstat(self._socket_path)
        except OSError:
            return
        if (st.st_dev, st.st_ino) == self._socket_id:
            try:
                os.unlink(self._socket_path)
            except OSError:
                pass

    def _make_link(self, link: str) -> None:
        parent = os.path.dirname(link)
        if parent:
            os.makedirs(parent, exist_ok=True)
        tmp = f"{link}.tmp.{os.getpid()}.{id(self)}"
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        os.symlink(self._device_path, tmp)
        try:
            os.replace(tmp, link)
        except BaseException:
            os.unlink(tmp)
            raise

    def _reset_termios(self) -> None:
        if self._slave < 0:
            return
        current = termios.tcgetattr(self._slave)
        attrs = _fresh_tty_attrs(current) if self.options.echo else raw_attrs(current)
        termios.tcsetattr(self._slave, termios.TCSANOW, attrs)

    # ---------------------------------------------------------------- guest open state

    def _note_open(self) -> None:
        if self._closed:
            return
        self._stats.guest_opens += 1
        self._arith_openers += 1
        if self._verify_pending:
            self._opens_after_close += 1
        else:
            self._set_openers(self._openers + 1)

    def _note_close(self) -> None:
        # The effect waits for _reconcile_openers at the end of the inotify batch.
        self._arith_openers = max(0, self._arith_openers - 1)
        self._verify_pending = True
        self._opens_after_close = 0

    def _reconcile_openers(self, fd_count: int, complete: bool) -> None:
        if self._closed:
            return
        # An IN_OPEN is queued before the opener's fd is installed, so an open seen after
        # the close may be missing from /proc yet: take the larger of the two.
        count = max(fd_count - 1, self._opens_after_close)  # minus our own held fd
        if not complete:
            count = max(count, self._arith_openers)
        self._verify_pending = False
        self._opens_after_close = 0
        self._arith_openers = count
        self._set_openers(count)

    def _set_openers(self, count: int) -> None:
        was_open = self._openers > 0
        if count == 0 and was_open:
            # A real hvc tty is torn down on last close and comes back with default
            # termios; our held fd keeps the tty alive, so reset it by hand. Before the
            # count is published: another thread that sees guest_is_open go false may
            # reopen at once, and must find the reset tty (CI saw it find the old one).
            try:
                self._reset_termios()
            except termios.error:
                LOG.exception("cannot reset termios on %s", self._device_path)
            if not self.options.keep_host_bytes:
                data_n, _ = self._h2g.clear()
                self._stats.dropped_host_to_guest += data_n
        self._openers = count
        if count > 0 and not was_open and self._garbage is not None:
            self._inject_garbage()
        self._sync()

    # ---------------------------------------------------------------- garbage

    def _on_garbage_tick(self) -> None:
        assert self._loop is not None
        self._garbage_timer = self._loop.call_later(
            self.options.garbage_interval, self._on_garbage_tick
        )
        if self._openers > 0:
            self._inject_garbage()
            self._sync()

    def _inject_garbage(self) -> None:
        maker = self._garbage
        mode = self.options.garbage
        if maker is None or mode is None:
            return
        if mode in ("to_guest", "both"):
            junk = maker.to_guest()
            if self._h2g.size + len(junk) <= max(self.options.buffer_limit, _HIGH_WATER):
                self._h2g.push(junk, garbage=True)
        if mode in ("to_host", "both"):
            self._accept_g2h(maker.to_host(), garbage=True)

    # ---------------------------------------------------------------- scheduling

    def _set_reader(self, fd: int, want: bool, callback: Callable[[], None]) -> None:
        assert self._loop is not None
        if want and fd not in self._readers:
            self._loop.add_reader(fd, callback)
            self._readers.add(fd)
        elif not want and fd in self._readers:
            self._loop.remove_reader(fd)
            self._readers.discard(fd)

    def _set_writer(self, fd: int, want: bool, callback: Callable[[], None]) -> None:
        assert self._loop is not None
        if want and fd not in self._writers:
            self._loop.add_writer(fd, callback)
            self._writers.add(fd)
        elif not want and fd in self._writers:
            self._loop.remove_writer(fd)
            self._writers.discard(fd)

    def _room(self) -> int:
        return min(_HIGH_WATER, self.options.buffer_limit)

    def _h2g_read_size(self) -> int:
        # No guest: read on and keep or drop, like the ring filling up.
        size = _READ_SIZE
        if self._openers > 0:
            size = min(size, self._room() - self._h2g.size)
        cut = self._cut_limit()
        if cut is not None:
            size = min(size, cut - self._client_bytes)
        return size

    def _cut_limit(self) -> Optional[int]:
        cut = self.options.cut_host_after
        if cut is None or (self._cut_done and not self.options.cut_every_connection):
            return None
        return cut

    def _g2h_read_size(self) -> int:
        if self._client is None:
            return _READ_SIZE
        return min(_READ_SIZE, self._room() - self._g2h.size)

    def _ready_to_write(self, bucket: _Bucket, queue: _Queue, h2g: bool) -> bool:
        if queue.size == 0:
            return False
        if (self._h2g_timer if h2g else self._g2h_timer) is not None:
            return False
        delay = bucket.delay_for(queue.size)
        if delay <= 0:
            return True
        self._arm_timer(h2g, delay)
        return False

    def _arm_timer(self, h2g: bool, delay: float) -> None:
        assert self._loop is not None
        handle = self._loop.call_later(max(delay, 0.001), self._on_timer, h2g)
        if h2g:
            self._h2g_timer = handle
        else:
            self._g2h_timer = handle

    def _on_timer(self, h2g: bool) -> None:
        if h2g:
            self._h2g_timer = None
        else:
            self._g2h_timer = None
        self._sync()

    def _sync(self) -> None:
        """Register exactly the fd callbacks the current state calls for."""
        if self._closed or self._listen is None:
            return
        self._set_reader(self._listen.fileno(), self._client is None, self._on_accept)
        client = self._client
        if client is not None:
            fd = client.fileno()
            self._set_reader(fd, self._h2g_read_size() > 0, self._on_client_readable)
            want = self._ready_to_write(self._g2h_bucket, self._g2h, h2g=False)
            self._set_writer(fd, want, self._on_client_writable)
        self._set_reader(self._master, self._g2h_read_size() > 0, self._on_master_readable)
        want = self._openers > 0 and self._ready_to_write(self._h2g_bucket, self._h2g, h2g=True)
        self._set_writer(self._master, want, self._on_master_writable)

    # ---------------------------------------------------------------- dom0 side

    def _on_accept(self) -> None:
        if self._listen is None or self._client is not None:
            return
        try:
            conn, _ = self._listen.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            LOG.exception("accept failed on %s", self._socket_path)
            return
        conn.setblocking(False)
        self._client = conn
        self._client_bytes = 0
        self._stats.host_connections += 1
        self._sync()

    def _drop_client(self) -> None:
        client = self._client
        if client is None:
            return
        fd = client.fileno()
        self._set_reader(fd, False, self._on_client_readable)
        self._set_writer(fd, False, self._on_client_writable)
        client.close()
        self._client = None
        if not self.options.keep_guest_bytes:
            data_n, _ = self._g2h.clear()
            self._stats.dropped_guest_to_host += data_n
        self._sync()

    def _on_client_readable(self) -> None:
        client = self._client
        if client is None:
            return
        size = self._h2g_read_size()
        if size <= 0:
            self._sync()
            return
        try:
            data = client.recv(size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop_client()
            return
        if not data:
            self._drop_client()
            return
        self._client_bytes += len(data)
        self._accept_h2g(data)
        cut = self._cut_limit()
        if cut is not None and self._client_bytes >= cut:
            self._cut_done = True
            self._stats.host_cuts += 1
            self._drop_client()
            return
        self._sync()

    def _accept_h2g(self, data: bytes) -> None:
        if self._openers > 0:
            self._h2g.push(data)
            return
        if not self.options.keep_host_bytes:
            self._stats.dropped_host_to_guest += len(data)
            return
        room = max(0, self.options.buffer_limit - self._h2g.size)
        self._h2g.push(data[:room])
        self._stats.dropped_host_to_guest += max(0, len(data) - room)

    def _on_client_writable(self) -> None:
        client = self._client
        if client is None:
            return
        n = self._g2h_bucket.allowance(self._g2h.size)
        if n <= 0:
            self._set_writer(client.fileno(), False, self._on_client_writable)
            self._sync()
            return
        try:
            sent = client.send(self._g2h.peek(n), socket.MSG_NOSIGNAL)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._drop_client()
            return
        if sent > 0:
            self._g2h_bucket.consume(sent)
            data_n, garbage_n = self._g2h.consume(sent)
            self._stats.guest_to_host += data_n
            self._stats.garbage_to_host += garbage_n
        else:
            self._set_writer(client.fileno(), False, self._on_client_writable)
            self._arm_timer(False, _EAGAIN_BACKOFF)
        self._sync()

    # ---------------------------------------------------------------- guest side

    def _on_master_readable(self) -> None:
        size = self._g2h_read_size()
        if size <= 0:
            self._sync()
            return
        try:
            data = os.read(self._master, size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            # Cannot happen while the slave is held open; stop reading rather than spin.
            LOG.exception("read from pty master %s failed", self._device_path)
            self._set_reader(self._master, False, self._on_master_readable)
            return
        if data:
            self._accept_g2h(data)
        self._sync()

    def _accept_g2h(self, data: bytes, garbage: bool = False) -> None:
        if self._client is not None:
            self._g2h.push(data, garbage)
            return
        if not self.options.keep_guest_bytes:
            if not garbage:
                self._stats.dropped_guest_to_host += len(data)
            return
        room = max(0, self.options.buffer_limit - self._g2h.size)
        self._g2h.push(data[:room], garbage)
        if not garbage:
            self._stats.dropped_guest_to_host += max(0, len(data) - room)

    def _on_master_writable(self) -> None:
        if self._openers <= 0:
            self._sync()
            return
        n = self._h2g_bucket.allowance(self._h2g.size)
        if n <= 0:
            self._set_writer(self._master, False, self._on_master_writable)
            self._sync()
            return
        try:
            written = os.write(self._master, self._h2g.peek(n))
        except (BlockingIOError, InterruptedError):
            written = 0
        except OSError:
            LOG.exception("write to pty master %s failed", self._device_path)
            written = 0
        if written > 0:
            self._h2g_bucket.consume(written)
            data_n, garbage_n = self._h2g.consume(written)
            self._stats.host_to_guest += data_n
            self._stats.garbage_to_guest += garbage_n
        else:
            self._set_writer(self._master, False, self._on_master_writable)
            self._arm_timer(True, _EAGAIN_BACKOFF)
        self._sync()


# ------------------------------------------------------------------------ thread host


class SimulatorThread:
    """Runs one asyncio loop in a daemon thread hosting any number of channels.

    Every blocking call waits at most ``timeout`` seconds.
    """

    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._channels: Set[SimulatedChannel] = set()
        self._lock = threading.Lock()

    def __enter__(self) -> SimulatorThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def channels(self) -> List[SimulatedChannel]:
        with self._lock:
            return list(self._channels)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        thread = threading.Thread(
            target=self._run, args=(loop,), name="xenchannel-simulator", daemon=True
        )
        self._thread = thread
        thread.start()

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    def call(
        self,
        coro_fn: Callable[..., Coroutine[Any, Any, T]],
        *args: Any,
        timeout: Optional[float] = None,
    ) -> T:
        """Run ``coro_fn(*args)`` on the simulator loop and wait (bounded) for it."""
        loop = self._loop
        thread = self._thread
        if loop is None or thread is None or not thread.is_alive():
            raise RuntimeError("simulator thread is not running")
        if threading.current_thread() is thread:
            raise RuntimeError("call() from the simulator thread would deadlock")
        future = asyncio.run_coroutine_threadsafe(coro_fn(*args), loop)
        try:
            return future.result(self.timeout if timeout is None else timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def add_channel(
        self,
        socket_path: str,
        device_link: Optional[str] = None,
        options: Optional[SimulatorOptions] = None,
    ) -> SimulatedChannel:
        channel = SimulatedChannel(socket_path, device_link, options)
        try:
            self.call(channel.start)
        except BaseException:
            # After a timeout the start may still run later; make sure it cannot leak.
            try:
                self.call(channel.stop)
            except Exception:
                LOG.exception("cleaning up channel %s failed", socket_path)
            raise
        with self._lock:
            self._channels.add(channel)
        return channel

    def remove_channel(self, channel: SimulatedChannel) -> None:
        with self._lock:
            self._channels.discard(channel)
        self.call(channel.stop)

    def disconnect_host(self, channel: SimulatedChannel) -> None:
        self.call(channel.disconnect_host)

    async def _stop_channels(self, channels: Sequence[SimulatedChannel]) -> None:
        for channel in channels:
            try:
                await channel.stop()
            except Exception:
                LOG.exception("stopping channel %s failed", channel.socket_path)

    def stop(self) -> None:
        loop = self._loop
        thread = self._thread
        if loop is None or thread is None:
            return
        with self._lock:
            channels = list(self._channels)
            self._channels.clear()
        if thread.is_alive():
            try:
                self.call(self._stop_channels, channels)
            except Exception:
                LOG.exception("stopping channels failed")
            loop.call_soon_threadsafe(loop.stop)
            thread.join(self.timeout)
        if thread.is_alive():
            LOG.error("simulator thread did not stop within %.1fs", self.timeout)
        self._thread = None
        self._loop = None


# ------------------------------------------------------------------------ CLI


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m testbed.simulator",
        description="Simulate one Xen PV channel: a QEMU-like Unix socket and an hvc-like pty.",
    )
    parser.add_argument("--socket", required=True, help="Unix socket path to listen on")
    parser.add_argument("--link", help="symlink to create pointing at the pty slave")
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--rate", type=float, default=256000.0, help="bytes/s per direction")
    speed.add_argument("--unthrottled", action="store_true", help="no rate limit")
    parser.add_argument("--echo", action="store_true", help="guest tty starts cooked with ECHO")
    parser.add_argument("--garbage", choices=GARBAGE_MODES, help="inject garbage")
    parser.add_argument("--garbage-interval", type=float, default=0.2)
    parser.add_argument("--garbage-seed", type=int)
    parser.add_argument("--cut-host-after", type=int, metavar="N")
    parser.add_argument("--cut-every-connection", action="store_true")
    parser.add_argument("--buffer-limit", type=int, default=1048576)
    parser.add_argument(
        "--drop-early-bytes",
        action="store_true",
        help="drop dom0 bytes sent while no guest has the device open",
    )
    parser.add_argument(
        "--drop-guest-bytes",
        action="store_true",
        help="drop guest bytes sent while no dom0 client is connected",
    )
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> int:
    options = SimulatorOptions(
        rate=None if args.unthrottled else args.rate,
        keep_host_bytes=not args.drop_early_bytes,
        keep_guest_bytes=not args.drop_guest_bytes,
        buffer_limit=args.buffer_limit,
        echo=args.echo,
        garbage=args.garbage,
        garbage_interval=args.garbage_interval,
        garbage_seed=args.garbage_seed,
        cut_host_after=args.cut_host_after,
        cut_every_connection=args.cut_every_connection,
    )
    channel = SimulatedChannel(args.socket, args.link, options)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await channel.start()
    try:
        print(f"device={channel.device_path} socket={channel.socket_path}", flush=True)
        await stopping.wait()
    finally:
        await channel.stop()
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    args = _parse_args(argv)
    try:
        return asyncio.run(_serve(args))
    except (OSError, ValueError) as exc:
        print(f"testbed.simulator: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
