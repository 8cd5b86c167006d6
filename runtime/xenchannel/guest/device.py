"""The guest's end of a channel: a tty device opened the way a channel needs.

A Xen channel appears in the guest as ``/dev/hvcN`` (linked as
``/dev/xen-channel/<name>`` by the udev rule); a KVM channel as a virtio-serial port.
This module waits for the device to appear (inotify, bounded), takes an exclusive lock
so the datasource and the in-guest agent never read each other's replies, puts a tty
in raw mode (a cooked tty echoes what dom0 sends back to dom0, maps CR/LF and obeys
XON/XOFF) and restores it afterwards, and drops stale input.  Every read and write has
a deadline.

Standard library only; runs on Python 3.6 to 3.13.
"""

import errno
import fcntl
import os
import select
import termios
import time
from typing import Any, List, Optional

from xenchannel.inotify import (
    IN_ATTRIB,
    IN_CREATE,
    IN_DELETE_SELF,
    IN_MOVE_SELF,
    IN_MOVED_TO,
    Inotify,
)
from xenchannel.protocol import ChannelClosed, ChannelError, ChannelTimeout

_WATCH_MASK = IN_ATTRIB | IN_MOVED_TO | IN_CREATE | IN_DELETE_SELF | IN_MOVE_SELF
# Re-check the path at least this often even with inotify: a symlink whose target
# appears later, or a watch placed on a directory that was just replaced, sends no event.
_RECHECK = 0.5
_READ_SIZE = 65536


class _Inotify:
    """Wake up when something happens to a path (any event will do: the caller looks)."""

    def __init__(self) -> None:
        self._inotify = Inotify()
        self.fd = self._inotify.fd

    def watch(self, path: str) -> bool:
        try:
            self._inotify.add_watch(path, _WATCH_MASK)
        except OSError:
            return False
        return True

    def wait(self, timeout: float) -> None:
        """Wait for any event (or the timeout) and discard what was read."""
        if _poll(self.fd, select.POLLIN, timeout):
            try:
                self._inotify.read_events()
            except OSError:
                pass

    def close(self) -> None:
        self._inotify.close()


def _poll(fd: int, events: int, timeout: float) -> bool:
    """Whether ``fd`` is ready within ``timeout`` seconds.

    poll, not select: select cannot watch descriptors above 1023, and a process that
    serves many channels (the load test, an agent in a busy guest) has such descriptors.
    HUP and ERR count as ready so that the following read or write reports them.
    """
    poller = select.poll()
    poller.register(fd, events)
    return bool(poller.poll(max(0.0, timeout) * 1000.0))


def _nearest_existing_dir(path: str) -> str:
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(parent):
        up = os.path.dirname(parent)
        if up == parent:
            break
        parent = up
    return parent


def wait_for_path(path: str, timeout: float) -> float:
    """Wait until ``path`` exists (a symlink must resolve); returns seconds waited.

    Uses inotify on the nearest existing ancestor, so it also waits for
    ``/dev/xen-channel`` itself to be created by the first udev event.
    """
    start = time.monotonic()
    if os.path.exists(path):
        return 0.0
    deadline = start + timeout
    try:
        notifier = _Inotify()  # type: Optional[_Inotify]
    except (OSError, AttributeError):
        notifier = None  # no inotify (odd kernels, seccomp): fall back to polling
    try:
        while not os.path.exists(path):
            now = time.monotonic()
            if now >= deadline:
                raise ChannelTimeout(
                    f"{path} did not appear within {timeout:g} s; check that the domain "
                    "declares this channel and that the udev rule for Xen consoles is "
                    "installed"
                )
            if notifier is not None and notifier.watch(_nearest_existing_dir(path)):
                notifier.wait(min(deadline - now, _RECHECK))
            else:
                time.sleep(min(deadline - now, 0.05))
    finally:
        if notifier is not None:
            notifier.close()
    return time.monotonic() - start


def _lock_holder(fd: int) -> str:
    """Who holds a lock on the same file as ``fd``, from /proc/locks (best effort)."""
    st = os.fstat(fd)
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as locks:
            for line in locks:
                fields = line.split()
                if len(fields) > 5 and fields[5] == ident:
                    pid = fields[4]
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as cmd:
                            name = cmd.read().replace(b"\0", b" ").decode(errors="replace")
                    except OSError:
                        name = "?"
                    return f"pid {pid} ({name.strip()[:80]})"
    except OSError:
        pass
    return "another process"


def _lock(fd: int, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise ChannelError(f"cannot lock {path}: {exc.strerror}") from None
        if time.monotonic() >= deadline:
            raise ChannelTimeout(
                f"{path} is held by {_lock_holder(fd)} for more than {timeout:g} s; only "
                "one program may use a channel at a time - stop the other one or wait "
                "for it to finish"
            )
        time.sleep(0.05)


def raw_attrs(current: List[Any]) -> List[Any]:
    """``current`` termios attributes made raw, as cfmakeraw(3) and then some: 8 bits,
    no echo, no CR/LF mapping, no flow control (software or hardware), no signals.

    The one definition of "raw" in the project: the guest client applies it, and the
    channel simulator gives it to a tty that is not meant to start cooked.
    """
    attrs = list(current)
    attrs[0] = int(attrs[0]) & ~(
        termios.IGNBRK
        | termios.BRKINT
        | termios.PARMRK
        | termios.ISTRIP
        | termios.INLCR
        | termios.IGNCR
        | termios.ICRNL
        | termios.IXON
        | termios.IXOFF
        | termios.IXANY
        | termios.INPCK
    )
    attrs[1] = int(attrs[1]) & ~termios.OPOST
    attrs[2] = int(attrs[2]) & ~(termios.CSIZE | termios.PARENB | getattr(termios, "CRTSCTS", 0))
    attrs[2] |= termios.CS8 | termios.CREAD | termios.CLOCAL
    attrs[3] = int(attrs[3]) & ~(
        termios.ECHO
        | termios.ECHOE
        | termios.ECHOK
        | termios.ECHONL
        | termios.ICANON
        | termios.ISIG
        | termios.IEXTEN
    )
    cc = list(attrs[6])
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    attrs[6] = cc
    return attrs


def make_raw(fd: int) -> None:
    """Put the tty ``fd`` in raw mode now (TCSANOW: nothing queued is flushed)."""
    termios.tcsetattr(fd, termios.TCSANOW, raw_attrs(termios.tcgetattr(fd)))


class ChannelDevice:
    """An open, locked, raw channel device with deadline-bounded reads and writes."""

    def __init__(self, path: str, fd: int, saved_termios: Optional[List[Any]]) -> None:
        self.path = path
        self.fd = fd  # type: Optional[int]
        self._saved = saved_termios
        self.waited = 0.0  # seconds spent waiting for the device to appear

    @classmethod
    def open(
        cls, path: str, wait_timeout: float = 30.0, lock_timeout: float = 10.0
    ) -> "ChannelDevice":
        waited = wait_for_path(path, wait_timeout)
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise ChannelError(f"cannot open {path}: {exc.strerror}") from None
        saved = None
        try:
            _lock(fd, path, lock_timeout)
            if os.isatty(fd):
                saved = termios.tcgetattr(fd)
                make_raw(fd)
                # Drop what the line discipline already holds: bytes sent before we
                # opened (a previous boot, an earlier agent) are stale by definition.
                termios.tcflush(fd, termios.TCIOFLUSH)
        except BaseException:
            os.close(fd)
            raise
        device = cls(path, fd, saved)
        device.waited = waited
        return device

    def _fd(self) -> int:
        if self.fd is None:
            raise ChannelClosed(f"{self.path} is closed")
        return self.fd

    def read(self, timeout: float) -> bytes:
        """Up to 64 KiB, or b"" if nothing arrived within ``timeout`` seconds."""
        fd = self._fd()
        if not _poll(fd, select.POLLIN, timeout):
            return b""
        try:
            data = os.read(fd, _READ_SIZE)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EINTR):
                return b""
            raise ChannelClosed(f"reading {self.path} failed: {exc.strerror}") from None
        if not data:
            # A virtio-serial port reads EOF while no host is connected: not an end,
            # just nothing yet.  Sleep so the caller's loop does not spin.
            time.sleep(min(max(0.0, timeout), 0.05))
        return data

    def write(self, data: bytes, timeout: float) -> None:
        """Write all of ``data`` or raise ChannelTimeout after ``timeout`` seconds."""
        fd = self._fd()
        view = memoryview(data)
        deadline = time.monotonic() + timeout
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChannelTimeout(
                    f"writing to {self.path} stalled for {timeout:g} s with {len(view)} "
                    "bytes left; nothing on the host side is reading the channel"
                )
            if not _poll(fd, select.POLLOUT, remaining):
                continue
            try:
                written = os.write(fd, view)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EINTR):
                    continue
                raise ChannelClosed(f"writing {self.path} failed: {exc.strerror}") from None
            view = view[written:]

    def close(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            if self._saved is not None:
                # TCSANOW: TCSADRAIN would block for as long as the host is not reading.
                termios.tcsetattr(fd, termios.TCSANOW, self._saved)
        except termios.error:
            pass
        finally:
            os.close(fd)  # also releases the flock

    def __enter__(self) -> "ChannelDevice":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
