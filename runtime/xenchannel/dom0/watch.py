"""Which store entries may have changed, from inotify, so the agent need not stat them all.

Rescanning 10,000 entries every second costs a tenth of a core; watching costs nothing
until something changes.  One watch on the store directory sees entries added, removed
and renamed; one on each domain's directory sees its ``domain.json`` replaced (the
store's writers rename into place) or rewritten.  Each event marks a name dirty, and the
supervisor looks at the dirty names only.  When inotify cannot tell (its queue overflowed,
the store directory itself was replaced, the watch limit was reached) the supervisor
scans everything, and a full scan still runs every ``full_rescan_interval`` as a net
under whatever inotify cannot see (an NFS store, a change made by another host).
"""

import asyncio
import errno
import logging
import os
from typing import Dict, Iterable, Optional, Set, Tuple

from xenchannel.dom0 import log_event
from xenchannel.inotify import (
    IN_ATTRIB,
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_DONT_FOLLOW,
    IN_IGNORED,
    IN_MODIFY,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_ONLYDIR,
    IN_Q_OVERFLOW,
    Inotify,
)

_ENTRY_EVENTS = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_ATTRIB
_STORE_MASK = _ENTRY_EVENTS | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW
_DOMAIN_MASK = _STORE_MASK | IN_CLOSE_WRITE | IN_MODIFY


class StoreWatch:
    """inotify on the store: ``take()`` says what to look at; ``changed`` wakes the waiter."""

    def __init__(self, store_dir: str, max_watches: int) -> None:
        self.store_dir = store_dir
        self.max_watches = max_watches
        self.changed = asyncio.Event()
        self._inotify: Optional[Inotify] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._store_wd: Optional[int] = None
        self._names: Dict[int, str] = {}  # watch descriptor -> domain name
        self._wds: Dict[str, int] = {}  # domain name -> watch descriptor
        self._dirty: Set[str] = set()
        self._full = True

    @property
    def active(self) -> bool:
        """Watching the store: a change will be reported (without this, look every time)."""
        return self._inotify is not None and self._store_wd is not None

    def start(self) -> None:
        """Watch the store directory; if it cannot, ``active`` stays false (and says why)."""
        if self.max_watches < 1:
            return  # the operator's choice: no warning
        try:
            self._inotify = Inotify()
        except OSError as exc:
            self._give_up(f"inotify is not available ({exc.strerror})")
            return
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._inotify.fd, self._on_readable)
        self._watch_store()

    def _watch_store(self) -> None:
        assert self._inotify is not None
        try:
            self._store_wd = self._inotify.add_watch(self.store_dir, _STORE_MASK)
        except OSError:
            # Not there yet (or not a directory): the full scans report it; try again then.
            self._store_wd = None

    def take(self) -> Tuple[bool, Set[str]]:
        """(scan everything?, the names to look at) since the last call; resets both."""
        full, dirty = self._full or self._store_wd is None, self._dirty
        self._full, self._dirty = False, set()
        self.changed.clear()
        if self._inotify is not None and self._store_wd is None:
            self._watch_store()
        return full, dirty

    def track(self, directories: Iterable[str]) -> None:
        """Watch exactly these domain directories (a full scan's valid directory names)."""
        if self._inotify is None:
            return
        wanted = set(directories)
        if len(wanted) >= self.max_watches:
            self._give_up(
                f"the store has {len(wanted)} domains and max_store_watches is "
                f"{self.max_watches} (one watch each, and one for the store)"
            )
            return
        for name in [name for name in self._wds if name not in wanted]:
            self._forget(name, remove=True)
        for name in wanted:
            if name not in self._wds:
                self.track_one(name)

    def track_one(self, name: str) -> None:
        """Watch one domain directory (added since the last full scan)."""
        if self._inotify is None or name in self._wds:
            return
        if len(self._wds) + 1 >= self.max_watches:
            self._give_up(f"the store outgrew max_store_watches ({self.max_watches})")
            return
        try:
            wd = self._inotify.add_watch(os.path.join(self.store_dir, name), _DOMAIN_MASK)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                self._give_up(
                    f"the kernel's inotify watch limit is reached at {len(self._wds)} domains "
                    "(raise fs.inotify.max_user_watches)"
                )
            return  # gone again, or not a directory: the scan that follows says so
        self._names[wd] = name
        self._wds[name] = wd

    def _forget(self, name: str, remove: bool) -> None:
        wd = self._wds.pop(name, None)
        if wd is None:
            return
        self._names.pop(wd, None)
        if remove and self._inotify is not None:
            self._inotify.rm_watch(wd)

    def _on_readable(self) -> None:
        if self._inotify is None:
            return
        try:
            events = self._inotify.read_events()
        except OSError as exc:
            self._give_up(f"reading inotify events failed ({exc.strerror})")
            return
        for event in events:
            if event.mask & IN_Q_OVERFLOW:
                self._full = True
            elif event.wd == self._store_wd:
                if event.mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
                    self._store_wd = None  # the store directory went: rescan, rewatch
                    self._full = True
                elif event.name and not event.name.startswith("."):
                    # The entry was made, removed or renamed: a watch held for that name
                    # may follow another directory now, so drop it; the look that
                    # follows watches whatever directory has the name.
                    self._forget(event.name, remove=True)
                    self._dirty.add(event.name)
            else:
                name = self._names.get(event.wd)
                if name is None:
                    continue
                if event.mask & IN_IGNORED:
                    self._forget(name, remove=False)  # the kernel dropped it: dir gone
                self._dirty.add(name)
        if events:
            self.changed.set()

    def _give_up(self, reason: str) -> None:
        log_event(
            "-",
            "store-watch-off",
            logging.WARNING,
            error=f"{reason}; scanning the whole store every rescan_interval instead",
        )
        self.close()
        self._full = True

    def close(self) -> None:
        inotify, self._inotify = self._inotify, None
        if inotify is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(inotify.fd)
        inotify.close()
        self._names.clear()
        self._wds.clear()
        self._store_wd = None
