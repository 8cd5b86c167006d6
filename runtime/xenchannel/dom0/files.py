"""Files the agent replaces atomically (store entries, state records, metrics), and the
temporary files a writer killed in the middle leaves behind."""

import os
import re

# atomic_write's temporary files: ".<name>.<12 hex digits>.tmp", beside the file.
TEMP_SUFFIX = ".tmp"
TEMP_NAME_RE = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp\Z", re.DOTALL)


def atomic_write(path: str, data: bytes, sync: bool = True, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically; the file has ``mode`` (0600) from its
    creation.

    The temporary file lives in the same directory (os.replace is atomic only within a
    file system) and is created O_EXCL with mode 0600, so the data is never readable by
    others, not even for a moment.
    """
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.urandom(6).hex()}{TEMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    if mode != 0o600:
        os.fchmod(fd, mode)  # not through the umask: exactly what the caller asked
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if sync:
        _fsync_dir(directory)


def is_temporary(filename: str) -> bool:
    """Whether ``filename`` is one of atomic_write's temporary files (a writer killed
    between creating and renaming it leaves one behind)."""
    return TEMP_NAME_RE.match(filename) is not None


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a directory; the replace still happened
    finally:
        os.close(fd)
