"""The dom0 agent: one asyncio process serving every domain of a host.

The ``Supervisor`` keeps one ``DomainLink`` (``link.py``) per domain of the store
(``store.py``): it follows the store (what ``watch.py``'s inotify reports, at most every
``rescan_interval``, and all of it every ``full_rescan_interval``), starting, updating and
stopping links, reads a link's entry when its guest asks for the bundle, owns the state
recorder (``state.py``) and the control socket (``control.py``), and shuts everything
down within bounds.  ``run_agent`` runs it until SIGTERM or SIGINT.

Every wire byte goes through ``xenchannel.protocol`` and ``xenchannel.session``.
"""

import asyncio
import logging
import os
import resource
import signal
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Set, Tuple, TypeVar

from xenchannel import __version__
from xenchannel.dom0 import LOG, log_event, metrics
from xenchannel.dom0.config import AgentConfig, AgentError
from xenchannel.dom0.control import ControlServer
from xenchannel.dom0.link import DomainLink, LinkState
from xenchannel.dom0.state import StateDirBusy, StateRecorder, now_iso
from xenchannel.dom0.store import (
    DomainEntry,
    Signature,
    StoreError,
    domain_file,
    load_domain,
    scan_names,
    scan_store,
    signature_of,
)
from xenchannel.dom0.watch import StoreWatch
from xenchannel.domain_name import valid_domain_name

T = TypeVar("T")
# Open files the agent needs besides one socket per domain: state writes, store reads in
# load_batch threads, the control socket and its clients, inotify, the log.
SPARE_FILES = 256


async def _first_of(waits: List[Awaitable[Any]], timeout: float) -> None:
    """Wait for the first of ``waits`` or ``timeout`` seconds; the others are cancelled."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


class Supervisor:
    """All links of a host: the store rescan, the state recorder, the control socket."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.recorder = StateRecorder(config.state_dir)
        self.links: Dict[str, DomainLink] = {}
        self._seen: Dict[str, Signature] = {}
        # Encoded bundles kept for GET_BUNDLE, each with the signature of the file it
        # came from, within config.bundle_cache_bytes: a request for an unchanged file
        # is answered without reading, parsing and hashing it again.
        self._cache: Dict[str, Tuple[Signature, bytes]] = {}
        self._cache_bytes = 0
        # Which domains name each socket: one socket serves one domain, so two entries
        # naming one are both refused until one of them changes (then the other is
        # looked at again: ``_retry``).
        self._claims: Dict[str, str] = {}
        self._by_socket: Dict[str, Set[str]] = {}
        self._shared_refused: Dict[str, str] = {}
        self._retry: Set[str] = set()
        self._unstarted: List[DomainLink] = []
        self._problems: Set[str] = set()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop_event: Optional[asyncio.Event] = None
        self._stop_requested = False
        self._stopping = False
        self.control = ControlServer(self)
        self.watch = StoreWatch(config.store_dir, config.max_store_watches)
        self._warned_files = False
        self._first_scan = True
        self.ready = False

    # ------------------------------------------------------------- lifecycle

    def stop(self) -> None:
        """Ask run() to return; safe from any thread and before run() started."""
        self._stop_requested = True
        loop, event = self._loop, self._stop_event
        if loop is None or event is None:
            return
        try:
            running: Optional[asyncio.AbstractEventLoop] = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            event.set()
        else:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:
                pass  # the loop already closed

    async def run(self) -> None:
        """Serve until stop(); then close every connection and flush state."""
        self.config.validate()
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        if self._stop_requested:
            self._stop_event.set()
        try:
            problems = self.recorder.restore()
        except StateDirBusy as exc:
            raise AgentError(str(exc)) from None
        except OSError as exc:
            raise AgentError(
                f"cannot use the state directory {self.config.state_dir} ({exc.strerror}); "
                "create it or fix its permissions"
            ) from None
        for problem in problems:
            log_event("-", "state-problem", logging.WARNING, error=problem)
        for name, state in self.recorder.states.items():
            if state.get("connected"):
                # The previous agent did not record its disconnect (it was killed).
                self.recorder.update(name, connected=False, link=LinkState.STOPPED.value)
        try:
            await self.control.start()
            log_event(
                "-",
                "started",
                version=__version__,
                store=self.config.store_dir,
                state=self.config.state_dir,
                socket_root=self.config.socket_root,
                control_socket=self.config.control_socket,
                restored=len(self.recorder.states),
            )
            metrics = asyncio.ensure_future(self._write_metrics(self._stop_event))
            try:
                await self._follow_store(self._stop_event)
            finally:
                metrics.cancel()
        finally:
            self.watch.close()
            await self._shutdown()

    async def _follow_store(self, stop: asyncio.Event) -> None:
        """Keep the links matching the store until ``stop``: what changed, as inotify
        says, at most once per rescan_interval; everything at the start, when the watch
        cannot tell, and every full_rescan_interval."""
        config, watch = self.config, self.watch
        watch.start()
        last_full = -float("inf")
        while not stop.is_set():
            full, dirty = watch.take()
            started = time.monotonic()
            try:
                if full or started - last_full >= config.full_rescan_interval:
                    last_full = started
                    await self.rescan()
                elif dirty:
                    await self.rescan_names(dirty)
                while self._retry:
                    retry, self._retry = self._retry, set()
                    await self.rescan_names(retry)
            except Exception as exc:
                # A bug or an I/O error in one rescan must not take every domain down.
                log_event("-", "rescan-failed", logging.ERROR, error=f"{type(exc).__name__}: {exc}")
                LOG.debug("traceback of the rescan failure", exc_info=True)
            self.ready = True
            # Never look more often than rescan_interval: a burst of writes is one look.
            await _first_of([stop.wait()], config.rescan_interval)
            if watch.active and not watch.changed.is_set():
                until_full = last_full + config.full_rescan_interval - time.monotonic()
                await _first_of([stop.wait(), watch.changed.wait()], until_full)

    async def _write_metrics(self, stop: asyncio.Event) -> None:
        """The counters for node_exporter every metrics_interval, if configured."""
        path = self.config.metrics_file
        if path is None:
            return
        failing = False
        while not stop.is_set():
            try:
                # Rendered here, written in a thread: the loop changes the records.
                text = metrics.render(self.recorder.states.values())
                await self._in_thread(metrics.write, path, text)
                failing = False
            except OSError as exc:
                if not failing:  # one line per failure, not one per interval
                    failing = True
                    log_event(
                        "-",
                        "metrics-write-failed",
                        logging.ERROR,
                        error=f"cannot write {path} ({exc.strerror}); create its directory "
                        "or allow the agent to write there (ReadWritePaths=)",
                    )
            await _first_of([stop.wait()], self.config.metrics_interval)

    async def _shutdown(self) -> None:
        self._stopping = True
        await self.control.close()
        links = list(self.links.values())
        for link in links:
            link.request_close("shutdown")
        tasks = [link.task for link in links if link.task is not None]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=self.config.shutdown_timeout)
            if pending:
                log_event("-", "shutdown-slow", logging.WARNING, links=len(pending))
        await self.recorder.flush()
        if self.config.metrics_file is not None:
            try:
                text = metrics.render(self.recorder.states.values())
                metrics.write(self.config.metrics_file, text)
            except OSError:
                pass  # said while running
        self.recorder.close()
        log_event("-", "stopped", domains=len(links))

    # ------------------------------------------------------------- store

    async def rescan(self) -> None:
        """Start, update and stop links to match the whole store."""
        problems: List[str] = []
        directories: Set[str] = set()
        current = scan_store(self.config.store_dir, problems, directories)
        self.watch.track(directories)
        fresh = set(problems)
        for problem in sorted(fresh - self._problems):
            log_event("-", "store-problem", logging.WARNING, error=problem)
        self._problems = fresh

        for name in [name for name in self._seen if name not in current]:
            self._remove(name)
        if self._first_scan:
            self._first_scan = False
            for name, state in self.recorder.states.items():
                if name not in current and state.get("active", True):
                    self.recorder.update(name, active=False, connected=False)
        await self._apply_scan(current)

    def _check_open_files(self, domains: int) -> None:
        """One socket per domain: raise the soft limit on open files as far as the hard
        one allows, and say once, in a sentence, when even that is too few."""
        need = domains + SPARE_FILES
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY or soft >= need:
            return
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (OSError, ValueError):
                pass
        if soft < need and not self._warned_files:
            self._warned_files = True
            log_event(
                "-",
                "too-many-domains",
                logging.WARNING,
                error=f"the store has {domains} domains but the agent may open only {soft} "
                f"files; domains past that cannot connect: raise LimitNOFILE= to at least "
                f"{need} in the agent's service",
            )

    async def rescan_names(self, names: Set[str]) -> None:
        """``rescan`` for the entries the watch reported, and only those."""
        for name in names:
            if valid_domain_name(name):
                self.watch.track_one(name)  # before the stat: no change slips between
        problems: List[str] = []
        current = scan_names(self.config.store_dir, sorted(names), problems)
        for problem in sorted(set(problems) - self._problems):
            log_event("-", "store-problem", logging.WARNING, error=problem)
            self._problems.add(problem)
        for name in [name for name in names if name in self._seen and name not in current]:
            self._remove(name)
        await self._apply_scan(current)

    async def _apply_scan(self, current: Dict[str, Signature]) -> None:
        """Load the scanned entries whose signature changed, a batch at a time."""
        # Every look, full or not: domains added between full scans need sockets too.
        self._check_open_files(len(self._seen.keys() | current.keys()))
        changed = [name for name, sig in sorted(current.items()) if self._seen.get(name) != sig]
        batch_size = self.config.load_batch
        try:
            for start in range(0, len(changed), batch_size):
                if self._stopping or self._stop_requested:
                    return  # a big first scan must not delay shutdown
                batch = changed[start : start + batch_size]
                await asyncio.gather(*(self._reload(name, current[name]) for name in batch))
                # A batch's links start together, not a whole store's: 10,000 connects
                # at once would outlast connect_timeout on a busy loop.
                self._start_new_links()
        finally:
            self._start_new_links()

    async def _reload(self, name: str, scanned: Signature) -> Optional[DomainEntry]:
        """Load one entry off the loop and apply it; the entry, or None if unusable."""
        config = self.config
        try:
            loaded = await self._in_thread(load_domain, config.store_dir, name, config.socket_root)
        except StoreError as exc:
            if not self._stopping:
                self._apply_error(name, exc, scanned)
            return None
        except Exception as exc:
            # Not a validation failure (an I/O error, a bug): report it like one.
            if not self._stopping:
                error = StoreError(f"cannot load domain {name}: {type(exc).__name__}: {exc}")
                self._apply_error(name, error, scanned)
            return None
        if not self._stopping:
            self._apply_entry(loaded)
        return loaded

    async def _in_thread(self, func: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, func, *args)

    def _new_link(self, name: str, socket: str) -> DomainLink:
        link = DomainLink(self, name, socket)
        self.links[name] = link
        self.recorder.update(name, socket=socket, active=True)
        self._unstarted.append(link)  # started once the whole look is applied
        return link

    def _start_new_links(self) -> None:
        """Start the links a batch of the look created, once every entry of it is
        applied: so two entries naming one socket are both refused before either
        connects (and if the second comes in a later batch, the first link is closed
        then, before its guest can have asked for anything but a greeting)."""
        unstarted, self._unstarted = self._unstarted, []
        if self._stopping or self._stop_requested:
            return
        for link in unstarted:
            if self.links.get(link.name) is link and not link.closing():
                link.start()

    def _apply_entry(self, entry: DomainEntry) -> None:
        self._seen[entry.name] = entry.signature
        if self._claim(entry.name, entry.socket):
            return
        link = self.links.get(entry.name)
        if link is None:
            link = self._new_link(entry.name, entry.socket)
        link.set_entry(entry)
        self._uncache(entry.name)
        if self._cache_bytes + entry.size <= self.config.bundle_cache_bytes:
            self._cache[entry.name] = (entry.signature, entry.encoded)
            self._cache_bytes += entry.size

    def _uncache(self, name: str) -> None:
        cached = self._cache.pop(name, None)
        if cached is not None:
            self._cache_bytes -= len(cached[1])

    def cached_bundle(self, link: DomainLink) -> Optional[Tuple[str, str, bytes]]:
        """(socket, digest, encoded bundle) of the link's entry, if the agent holds it
        and the file is still the one it came from (one stat); else None: load_for."""
        cached = self._cache.get(link.name)
        bundle = link.bundle
        if cached is None or bundle is None or self.links.get(link.name) is not link:
            return None
        if self._stat(link.name) != cached[0]:
            return None
        return link.socket, bundle.digest, cached[1]

    def _apply_error(self, name: str, exc: StoreError, scanned: Signature) -> None:
        self._seen[name] = scanned
        self._uncache(name)
        message = str(exc)
        if exc.socket is not None and self._claim(name, exc.socket):
            return
        if exc.socket is None:
            self._release(name)
        link = self.links.get(name)
        if exc.socket is not None:
            if link is None:
                link = self._new_link(name, exc.socket)
            link.set_invalid(message, exc.socket)
            return
        # No trustworthy socket (unsafe file, bad JSON): serve nothing on any socket.
        self._refuse(name, message)

    def _refuse(self, name: str, message: str) -> None:
        """Serve ``name`` nothing, on any socket, until its entry changes."""
        self._uncache(name)
        link = self.links.pop(name, None)
        if link is not None:
            link.request_close("store-error")
        log_event(name, "store-error", logging.ERROR, error=message)
        self.recorder.update(
            name, active=True, bundle=None, last_error={"at": now_iso(), "message": message}
        )

    def _claim(self, name: str, socket: str) -> bool:
        """Record that ``name``'s entry names ``socket``; True if another domain's entry
        names it too, and every one of them has been refused."""
        if self._claims.get(name) != socket:
            self._release(name)
            self._claims[name] = socket
            self._by_socket.setdefault(socket, set()).add(name)
        holders = self._by_socket[socket]
        if len(holders) < 2:
            self._shared_refused.pop(name, None)
            return False
        names = sorted(holders)
        message = (
            f"the store entries of {', '.join(names)} all name socket {socket}; give each "
            "domain a socket of its own (QEMU serves a channel to one domain)"
        )
        for holder in names:
            if self._shared_refused.get(holder) != message:
                self._shared_refused[holder] = message
                self._refuse(holder, message)
        return True

    def _release(self, name: str) -> None:
        """``name``'s entry no longer names its socket; a domain left alone on a socket
        that was shared is looked at again."""
        self._shared_refused.pop(name, None)
        socket = self._claims.pop(name, None)
        if socket is None:
            return
        holders = self._by_socket[socket]
        holders.discard(name)
        if not holders:
            del self._by_socket[socket]
        elif len(holders) == 1:
            (left,) = holders
            if left in self._shared_refused:
                self._seen.pop(left, None)
                self._retry.add(left)

    def _remove(self, name: str) -> None:
        self._seen.pop(name, None)
        self._uncache(name)
        self._release(name)
        link = self.links.pop(name, None)
        if link is not None:
            link.request_close("removed")
        log_event(name, "removed")
        if name in self.recorder.states:
            self.recorder.update(name, active=False, connected=False)

    async def load_for(self, link: DomainLink) -> DomainEntry:
        """The link's store entry, read now (for GET_BUNDLE)."""
        config = self.config
        try:
            entry = await self._in_thread(
                load_domain, config.store_dir, link.name, config.socket_root
            )
        except StoreError as exc:
            signature = self._stat(link.name)
            # A vanished file is a removal, which the rescan handles; not an error.
            if (
                signature is not None
                and self.links.get(link.name) is link
                and link.store_error != str(exc)
            ):
                self._apply_error(link.name, exc, signature)
            raise
        if self.links.get(link.name) is link and self._seen.get(link.name) != entry.signature:
            self._apply_entry(entry)
        return entry

    def changed(self, link: DomainLink) -> Optional[Signature]:
        """The signature of the link's file if it changed since it was last loaded (one
        stat); None if unchanged, or gone (the rescan handles removal)."""
        signature = self._stat(link.name)
        if signature is None or self._seen.get(link.name) == signature:
            return None
        return signature if self.links.get(link.name) is link else None

    async def reload(self, link: DomainLink, signature: Signature) -> None:
        """Load the link's changed entry (``changed`` said so) and apply it."""
        if self.links.get(link.name) is link:
            await self._reload(link.name, signature)

    def _stat(self, name: str) -> Optional[Signature]:
        try:
            return signature_of(
                os.stat(domain_file(self.config.store_dir, name), follow_symlinks=False)
            )
        except (OSError, StoreError):
            return None


def run_agent(config: AgentConfig, install_signals: bool = True) -> None:
    """Run an agent until SIGTERM/SIGINT (asyncio.run; for the CLI)."""
    asyncio.run(_main(config, install_signals))


async def _main(config: AgentConfig, install_signals: bool) -> None:
    supervisor = Supervisor(config)
    if install_signals:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, supervisor.stop)
    await supervisor.run()
