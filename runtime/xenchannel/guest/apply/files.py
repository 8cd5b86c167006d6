"""Atomic, reversible file changes: what every apply step is made of.

A ``Step`` is planned without touching anything (its directories and files are listed
with their full new content), then ``apply()``:

1. creates missing directories and fixes modes/owners it is told to enforce;
2. writes every new file to a temporary file next to its target (phase one: nothing
   visible has changed yet, so a failure here leaves the step's old state untouched);
3. renames each temporary file over its target and removes files that must go
   (phase two), remembering the old content, mode, owner and times of each;
4. runs its live action (setting the running hostname), if any.

Any failure rolls the step back to its previous state: replaced files get their old
content, mode, owner and times back, new files and directories are removed, the live
action is undone.  ``rollback()`` does the same for a step that succeeded when a later
step of the same run fails.  The old content is held in memory (these files are small);
if the guest loses power half way, the applied record was not written either, so the
next boot applies the whole instance again.

A file whose directory is read-only but which is itself writable (the unit's
``ReadWritePaths=/etc/hostname`` bind-mounts the file alone, and a rename onto a mount
point fails with EBUSY) is rewritten in place instead; that is the one non-atomic write.

Standard library only; runs on Python 3.6 to 3.13.
"""

import errno
import logging
import os
import stat
from typing import Any, Callable, Dict, List, Optional, Tuple

LOG = logging.getLogger("xenchannel.guest.apply")

_TMP_SUFFIX = ".xenchannel-new"
# Errors meaning "this directory cannot take a new file or a rename onto that target",
# after which a file that exists and is writable is rewritten in place.
_IN_PLACE_ERRORS = (errno.EROFS, errno.EACCES, errno.EPERM, errno.EBUSY, errno.EXDEV)


class ApplyError(Exception):
    """A step cannot be applied; str() is one sentence naming what and why."""


def under(root: str, guest_path: str) -> str:
    """``guest_path`` (absolute, as the guest sees it) inside ``root``."""
    path = os.path.normpath(os.path.join(root, guest_path.lstrip("/")))
    base = os.path.normpath(root)
    if path != base and not path.startswith(base.rstrip("/") + "/"):
        raise ApplyError(f"{guest_path} leaves the root directory {root}")
    return path


class FileChange:
    """The whole new content of one file, or its removal (``data`` None).

    ``mode``, ``uid`` and ``gid`` of None keep what an existing file has (0644 and
    root for a new one).
    """

    def __init__(
        self,
        path: str,
        data: Optional[bytes],
        shown: str,
        *,
        mode: Optional[int] = None,
        uid: Optional[int] = None,
        gid: Optional[int] = None,
    ) -> None:
        self.path = path
        self.data = data
        self.shown = shown  # the path as the guest sees it, for messages
        self.mode = mode
        self.uid = uid
        self.gid = gid


class DirChange:
    """A directory that must exist; ``enforce`` also sets mode and owner if it does."""

    def __init__(
        self,
        path: str,
        shown: str,
        mode: int,
        *,
        uid: int = 0,
        gid: int = 0,
        enforce: bool = False,
    ) -> None:
        self.path = path
        self.shown = shown
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.enforce = enforce


class _Saved:
    """A file's state before a step changed it."""

    def __init__(self, path: str) -> None:
        self.exists = False
        self.data = b""
        self.mode = 0o644
        self.uid = 0
        self.gid = 0
        self.times = (0, 0)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISREG(st.st_mode):
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
            raise ApplyError(f"{path} is {kind}; refusing to replace it")
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            self.data = handle.read()
        self.exists = True
        self.mode = stat.S_IMODE(st.st_mode)
        self.uid = st.st_uid
        self.gid = st.st_gid
        self.times = (st.st_atime_ns, st.st_mtime_ns)


def _fill(fd: int, data: bytes, mode: int, uid: int, gid: int) -> None:
    """Write all of ``data`` to ``fd``, set owner then mode, flush to disk, close."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.ftruncate(fd, len(data))
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)  # after chown: chown clears set-id bits
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_for(path: str, data: bytes, mode: int, uid: int, gid: int) -> Optional[str]:
    """A finished temporary copy next to ``path``; None if the directory is read-only."""
    tmp = os.path.join(
        os.path.dirname(path),
        "." + os.path.basename(path) + "." + os.urandom(4).hex() + _TMP_SUFFIX,
    )
    try:
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
    except OSError as exc:
        if exc.errno in _IN_PLACE_ERRORS and os.path.isfile(path):
            return None
        raise
    try:
        _fill(fd, data, mode, uid, gid)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


def _install(tmp: Optional[str], path: str, data: bytes, *, mode: int, uid: int, gid: int) -> None:
    """Put ``tmp`` in place of ``path``; rewrite ``path`` in place when that cannot be."""
    if tmp is not None:
        try:
            os.replace(tmp, path)
            return
        except OSError as exc:
            _unlink_quietly(tmp)
            if exc.errno not in _IN_PLACE_ERRORS:
                raise
    LOG.debug("%s: its directory takes no new files; rewriting it in place", path)
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    _fill(fd, data, mode, uid, gid)


def write_file(path: str, data: bytes, mode: int, uid: int = 0, gid: int = 0) -> None:
    """Replace one file atomically (temporary file, fsync, rename)."""
    _install(_temp_for(path, data, mode, uid, gid), path, data, mode=mode, uid=uid, gid=gid)
    _sync_dir(os.path.dirname(path))


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _sync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _os_error(step: str, what: str, exc: OSError) -> ApplyError:
    return ApplyError(f"{step}: cannot {what}: {exc.strerror or exc}")


class Step:
    """One unit of the apply transaction: all of it happens, or none of it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.summary = name  # one log line saying what was applied (never secrets)
        self.record: Dict[str, Any] = {}  # what goes into applied.json
        self.dirs: List[DirChange] = []
        self.files: List[FileChange] = []
        # (do, undo): a change outside the file system, made after the files.
        self.live: Optional[Tuple[Callable[[], None], Callable[[], None]]] = None
        self.changed = 0  # files written or removed by apply()
        self._replaced: List[Tuple[FileChange, _Saved]] = []
        self._made_dirs: List[DirChange] = []
        self._fixed_dirs: List[Tuple[DirChange, int, int, int]] = []
        self._live_done = False

    # ------------------------------------------------------------------ apply

    def apply(self) -> None:
        try:
            self._ensure_dirs()
            pending = self._prepare()
            self._swap(pending)
            if self.live is not None:
                try:
                    self.live[0]()
                except OSError as exc:
                    raise _os_error(
                        self.name, "apply the change to the running system", exc
                    ) from None
                self._live_done = True
        except BaseException:
            problems = self.rollback()
            if problems:
                raise ApplyError(
                    f"{self.name}: failed, and restoring its previous state also failed: "
                    + "; ".join(problems)
                ) from None
            raise

    def _ensure_dirs(self) -> None:
        for change in self.dirs:
            try:
                st = os.lstat(change.path)
            except FileNotFoundError:
                try:
                    os.mkdir(change.path, change.mode)
                    self._made_dirs.append(change)
                    os.chown(change.path, change.uid, change.gid)
                    os.chmod(change.path, change.mode)
                except OSError as exc:
                    raise _os_error(self.name, f"create {change.shown}", exc) from None
                continue
            except OSError as exc:
                raise _os_error(self.name, f"inspect {change.shown}", exc) from None
            if not stat.S_ISDIR(st.st_mode):
                kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
                raise ApplyError(f"{self.name}: {change.shown} is {kind}; refusing to use it")
            mode = stat.S_IMODE(st.st_mode)
            if change.enforce and (mode, st.st_uid, st.st_gid) != (
                change.mode,
                change.uid,
                change.gid,
            ):
                self._fixed_dirs.append((change, mode, st.st_uid, st.st_gid))
                try:
                    os.chown(change.path, change.uid, change.gid, follow_symlinks=False)
                    os.chmod(change.path, change.mode)
                except OSError as exc:
                    raise _os_error(self.name, f"set the owner of {change.shown}", exc) from None

    def _prepare(self) -> List[Tuple[FileChange, _Saved, Optional[str], int, int, int]]:
        """Phase one: temporary copies of every new file; nothing visible changes."""
        pending: List[Tuple[FileChange, _Saved, Optional[str], int, int, int]] = []
        try:
            for change in self.files:
                saved = _Saved(change.path)
                mode = change.mode if change.mode is not None else saved.mode
                uid = change.uid if change.uid is not None else saved.uid
                gid = change.gid if change.gid is not None else saved.gid
                if change.data is None:
                    if saved.exists:
                        pending.append((change, saved, None, mode, uid, gid))
                    continue
                if saved.exists and (saved.data, saved.mode, saved.uid, saved.gid) == (
                    change.data,
                    mode,
                    uid,
                    gid,
                ):
                    continue  # already so: leave it (and its mtime) alone
                try:
                    tmp = _temp_for(change.path, change.data, mode, uid, gid)
                except OSError as exc:
                    raise _os_error(self.name, f"write {change.shown}", exc) from None
                pending.append((change, saved, tmp, mode, uid, gid))
        except BaseException:
            for _change, _saved, tmp, _mode, _uid, _gid in pending:
                if tmp is not None:
                    _unlink_quietly(tmp)
            raise
        return pending

    def _swap(self, pending: List[Tuple[FileChange, _Saved, Optional[str], int, int, int]]) -> None:
        """Phase two: every temporary copy renamed into place, removals done."""
        try:
            while pending:
                change, saved, tmp, mode, uid, gid = pending[0]
                try:
                    if change.data is None:
                        os.unlink(change.path)
                    else:
                        _install(tmp, change.path, change.data, mode=mode, uid=uid, gid=gid)
                except OSError as exc:
                    what = "remove" if change.data is None else "replace"
                    raise _os_error(self.name, f"{what} {change.shown}", exc) from None
                pending.pop(0)
                self._replaced.append((change, saved))
                self.changed += 1
        finally:
            for _change, _saved, tmp, _mode, _uid, _gid in pending:
                if tmp is not None:
                    _unlink_quietly(tmp)
            for directory in sorted({os.path.dirname(c.path) for c, _ in self._replaced}):
                _sync_dir(directory)

    # ------------------------------------------------------------------ rollback

    def rollback(self) -> List[str]:
        """Restore the state from before ``apply()``; returns what could not be."""
        problems: List[str] = []
        if self._live_done and self.live is not None:
            try:
                self.live[1]()
            except OSError as exc:
                problems.append(f"undoing the live change failed: {exc.strerror or exc}")
            self._live_done = False
        while self._replaced:
            change, saved = self._replaced.pop()
            try:
                if saved.exists:
                    write_file(change.path, saved.data, saved.mode, saved.uid, saved.gid)
                    os.utime(change.path, ns=saved.times, follow_symlinks=False)
                else:
                    os.unlink(change.path)
            except OSError as exc:
                problems.append(f"restoring {change.shown} failed: {exc.strerror or exc}")
        while self._fixed_dirs:
            dchange, mode, uid, gid = self._fixed_dirs.pop()
            try:
                os.chown(dchange.path, uid, gid, follow_symlinks=False)
                os.chmod(dchange.path, mode)
            except OSError as exc:
                problems.append(f"restoring {dchange.shown} failed: {exc.strerror or exc}")
        while self._made_dirs:
            made = self._made_dirs.pop()
            try:
                os.rmdir(made.path)
            except OSError as exc:
                problems.append(f"removing {made.shown} failed: {exc.strerror or exc}")
        return problems


def commit(steps: List[Step], on_applied: Callable[[Step], None]) -> None:
    """Apply ``steps`` in order; on a failure roll back the ones already applied.

    Raises ApplyError with one sentence: what failed, and that the rest was undone.
    """
    done: List[Step] = []
    for step in steps:
        try:
            step.apply()
        except (ApplyError, OSError) as exc:
            message = str(exc) if isinstance(exc, ApplyError) else f"{step.name}: {exc}"
            problems: List[str] = []
            for previous in reversed(done):
                problems.extend(previous.rollback())
            if problems:
                raise ApplyError(
                    message + "; rolling back the earlier steps also failed: " + "; ".join(problems)
                ) from None
            undone = [s.name for s in done]
            if undone:
                message += "; " + ", ".join(undone) + " rolled back"
            raise ApplyError(message + "; nothing was changed") from None
        done.append(step)
        on_applied(step)
