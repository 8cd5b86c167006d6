"""Just enough of inotify(7), through ctypes: the standard library has none.

Used by the guest to wait for its channel device to appear and by the dom0 agent to
learn which store entries changed without stating every one of them every second.

Standard library only; runs on Python 3.6 to 3.13.
"""

import ctypes
import ctypes.util
import os
import struct
from typing import List, NamedTuple

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len
_READ_SIZE = 65536


class Event(NamedTuple):
    wd: int
    mask: int
    name: str  # the entry's name inside a watched directory; "" for the directory itself


class Inotify:
    """One non-blocking inotify instance; ``fd`` is for poll() or an event loop."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        self._add_watch = libc.inotify_add_watch
        self._add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._rm_watch = libc.inotify_rm_watch
        self._rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, "inotify_init1: " + os.strerror(errno))
        self.fd = fd  # type: int

    def add_watch(self, path: str, mask: int) -> int:
        """The watch descriptor, or OSError (ENOSPC: the user's watch limit is reached)."""
        wd = int(self._add_watch(self.fd, os.fsencode(path), mask))
        if wd < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno), path)
        return wd

    def rm_watch(self, wd: int) -> None:
        self._rm_watch(self.fd, wd)  # an already removed watch is no error worth raising

    def read_events(self) -> List[Event]:
        """The events queued now (none if there are none); never blocks."""
        try:
            data = os.read(self.fd, _READ_SIZE)
        except BlockingIOError:
            return []
        events = []
        offset = 0
        while offset + _HEADER.size <= len(data):
            wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
            offset += _HEADER.size
            raw = data[offset : offset + length].split(b"\0", 1)[0]
            offset += length
            events.append(Event(wd, mask, os.fsdecode(raw)))
        return events

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
