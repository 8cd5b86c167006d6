"""The guest's channel device on real ptys: waiting, locking, raw mode, bounded I/O.

The guest opens the pty slave by path, exactly as it opens /dev/hvcN; the test holds
the master (the host's end) and keeps a slave fd of its own open so that the master
never reads EIO.  Every wait is bounded.
"""

import os
import pty
import select
import subprocess
import sys
import termios
import threading
import time
import tty
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from xenchannel.guest import device
from xenchannel.guest.device import ChannelDevice, wait_for_path
from xenchannel.protocol import ChannelError, ChannelTimeout

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"
SLACK = 0.5  # scheduling slack on a busy test machine


# ----------------------------------------------------------------------------- helpers


class Pty:
    """A pty pair: ``master`` is the host's end, ``path`` what the guest opens."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)

    def write_master(self, data: bytes, timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        view = memoryview(data)
        while view:
            assert time.monotonic() < deadline, "writing to the pty master stalled"
            if not select.select([], [self.master], [], 0.05)[1]:
                continue
            try:
                view = view[os.write(self.master, view) :]
            except BlockingIOError:
                continue

    def read_master(self, size: int, timeout: float = 2.0) -> bytes:
        deadline = time.monotonic() + timeout
        out = b""
        while len(out) < size and time.monotonic() < deadline:
            if select.select([self.master], [], [], 0.05)[0]:
                try:
                    out += os.read(self.master, size - len(out))
                except BlockingIOError:
                    pass
        return out

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def tty_pair() -> Iterator[Pty]:
    pair = Pty()
    yield pair
    pair.close()


@pytest.fixture
def later() -> Iterator[List[threading.Timer]]:
    """Timers that create paths later; all joined (bounded) at the end."""
    timers: List[threading.Timer] = []
    yield timers
    for timer in timers:
        timer.cancel()
        timer.join(5.0)


def run_later(timers: List[threading.Timer], delay: float, action) -> None:
    timer = threading.Timer(delay, action)
    timer.daemon = True
    timers.append(timer)
    timer.start()


def read_exactly(dev: ChannelDevice, size: int, timeout: float = 2.0) -> bytes:
    deadline = time.monotonic() + timeout
    out = b""
    while len(out) < size:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {len(out)} of {size} bytes arrived"
        out += dev.read(min(remaining, 0.2))
    return out


def timed(fn, *args, **kwargs) -> Tuple[object, float]:
    start = time.monotonic()
    result = fn(*args, **kwargs)
    return result, time.monotonic() - start


# ----------------------------------------------------------------------------- wait_for_path


def test_wait_for_existing_path_returns_at_once(tmp_path: Path) -> None:
    target = tmp_path / "hvc0"
    target.write_bytes(b"")
    waited, elapsed = timed(wait_for_path, str(target), 5.0)
    assert waited == 0.0
    assert elapsed < 0.1


def test_wait_for_file_created_later(tmp_path: Path, later) -> None:
    target = tmp_path / "hvc0"
    run_later(later, 0.3, target.touch)
    waited, elapsed = timed(wait_for_path, str(target), 5.0)
    assert target.exists()
    # inotify wakes it on the event itself, not at the next 0.5 s re-check.
    assert 0.25 <= waited <= 0.3 + 0.15 + SLACK / 2
    assert elapsed >= waited


def test_wait_for_file_whose_parent_directory_appears_later(tmp_path: Path, later) -> None:
    # Like /dev/xen-channel/<name>: the directory only appears with the first udev event.
    parent = tmp_path / "xen-channel" / "nested"
    target = parent / "org.example.0"

    def make_dir() -> None:
        parent.mkdir(parents=True)

    run_later(later, 0.2, make_dir)
    run_later(later, 0.5, target.touch)
    waited, _ = timed(wait_for_path, str(target), 5.0)
    assert target.exists()
    assert 0.45 <= waited <= 0.5 + device._RECHECK + SLACK


def test_wait_for_symlink_created_atomically(tmp_path: Path, later) -> None:
    real = tmp_path / "hvc3"
    real.write_bytes(b"")
    (tmp_path / "xen-channel").mkdir()
    link = tmp_path / "xen-channel" / "org.example.0"

    def make_link() -> None:
        tmp = tmp_path / "xen-channel" / ".org.example.0.tmp"
        os.symlink(str(real), str(tmp))
        os.replace(str(tmp), str(link))  # IN_MOVED_TO, as udev does it

    run_later(later, 0.3, make_link)
    waited, _ = timed(wait_for_path, str(link), 5.0)
    assert link.is_symlink()
    assert 0.25 <= waited <= 0.3 + 0.15 + SLACK / 2


def test_wait_for_symlink_whose_target_appears_later(tmp_path: Path, later) -> None:
    # No event reaches the watched directory when a symlink's target appears elsewhere:
    # the periodic re-check must find it.
    (tmp_path / "dev").mkdir()
    (tmp_path / "elsewhere").mkdir()
    target = tmp_path / "elsewhere" / "hvc1"
    link = tmp_path / "dev" / "chan"
    os.symlink(str(target), str(link))
    run_later(later, 0.2, target.touch)
    waited, _ = timed(wait_for_path, str(link), 5.0)
    assert 0.15 <= waited <= 0.2 + device._RECHECK + SLACK


def test_wait_times_out_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "xen-channel" / "never"
    start = time.monotonic()
    with pytest.raises(ChannelTimeout) as info:
        wait_for_path(str(missing), 0.6)
    elapsed = time.monotonic() - start
    assert 0.55 <= elapsed <= 0.6 + SLACK
    assert str(missing) in str(info.value)


def test_wait_without_inotify_falls_back_to_polling(
    tmp_path: Path, later, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_inotify() -> None:
        raise OSError(38, "inotify_init1 failed")

    monkeypatch.setattr(device, "_Inotify", no_inotify)
    target = tmp_path / "sub" / "hvc0"

    def make() -> None:
        target.parent.mkdir()
        target.touch()

    run_later(later, 0.25, make)
    waited, _ = timed(wait_for_path, str(target), 5.0)
    assert 0.2 <= waited <= 0.25 + SLACK

    start = time.monotonic()
    with pytest.raises(ChannelTimeout, match="never"):
        wait_for_path(str(tmp_path / "never"), 0.3)
    assert 0.25 <= time.monotonic() - start <= 0.3 + SLACK


# ----------------------------------------------------------------------------- raw mode


def test_open_puts_the_tty_in_raw_mode(tty_pair: Pty) -> None:
    with ChannelDevice.open(tty_pair.path, wait_timeout=1.0, lock_timeout=1.0):
        iflag, oflag, cflag, lflag, _, _, cc = termios.tcgetattr(tty_pair.slave)
        for name in ("ECHO", "ICANON", "ISIG", "IEXTEN", "ECHOE", "ECHOK", "ECHONL"):
            assert not lflag & getattr(termios, name), name
        for name in ("ICRNL", "INLCR", "IGNCR", "IXON", "IXOFF", "IXANY", "ISTRIP", "PARMRK"):
            assert not iflag & getattr(termios, name), name
        assert not oflag & termios.OPOST
        assert cflag & termios.CSIZE == termios.CS8
        assert not cflag & termios.PARENB
        assert cc[termios.VMIN] == 1
        assert cc[termios.VTIME] == 0


def test_every_byte_value_passes_unmodified_both_ways(tty_pair: Pty) -> None:
    every = bytes(range(256))
    special = b"\r\n\x03\x04\x11\x13\x1a\x7f\r\r\n\n"
    with ChannelDevice.open(tty_pair.path, wait_timeout=1.0, lock_timeout=1.0) as dev:
        tty_pair.write_master(every + special)
        assert read_exactly(dev, len(every) + len(special)) == every + special
        # Nothing was echoed back to the host either.
        assert tty_pair.read_master(1, timeout=0.2) == b""

        dev.write(every + special, timeout=2.0)
        assert tty_pair.read_master(len(every) + len(special)) == every + special
        assert tty_pair.read_master(1, timeout=0.1) == b""  # no \n -> \r\n expansion


def test_close_restores_the_original_termios(tty_pair: Pty) -> None:
    before = termios.tcgetattr(tty_pair.slave)
    assert before[3] & termios.ICANON and before[3] & termios.ECHO  # starts cooked
    dev = ChannelDevice.open(tty_pair.path, wait_timeout=1.0, lock_timeout=1.0)
    assert termios.tcgetattr(tty_pair.slave) != before
    dev.close()
    assert termios.tcgetattr(tty_pair.slave) == before
    dev.close()  # idempotent
    with pytest.raises(ChannelError):
        dev.read(0.01)


def test_open_drops_stale_input(tty_pair: Pty) -> None:
    tty.setraw(tty_pair.slave)  # so the stale bytes are not echoed to the host
    tty_pair.write_master(b"stale reply from an earlier boot\r\n")
    # Make sure the bytes reached the line discipline before the guest opens.
    assert select.select([tty_pair.slave], [], [], 2.0)[0]
    with ChannelDevice.open(tty_pair.path, wait_timeout=1.0, lock_timeout=1.0) as dev:
        assert dev.read(0.3) == b""
        tty_pair.write_master(b"fresh")
        assert read_exactly(dev, 5) == b"fresh"


# ----------------------------------------------------------------------------- lock

HOLDER = """
import sys
from xenchannel.guest.device import ChannelDevice
dev = ChannelDevice.open(sys.argv[1], wait_timeout=2.0, lock_timeout=2.0)
print("locked", flush=True)
sys.stdin.readline()
dev.close()
print("closed", flush=True)
sys.stdin.readline()
"""


def read_line(proc: "subprocess.Popen[bytes]", timeout: float = 10.0) -> bytes:
    assert proc.stdout is not None
    ready = select.select([proc.stdout], [], [], timeout)[0]
    assert ready, "the lock holder did not report in time"
    return proc.stdout.readline().strip()


def test_lock_names_the_holder_and_is_released_on_close(tty_pair: Pty, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(RUNTIME))
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, tty_pair.path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert read_line(proc) == b"locked"
        link = tmp_path / "org.example.0"
        os.symlink(tty_pair.path, str(link))
        for path in (tty_pair.path, str(link)):
            start = time.monotonic()
            with pytest.raises(ChannelTimeout) as info:
                ChannelDevice.open(path, wait_timeout=1.0, lock_timeout=0.4)
            elapsed = time.monotonic() - start
            assert 0.35 <= elapsed <= 0.4 + SLACK
            message = str(info.value)
            assert f"pid {proc.pid}" in message
            assert path in message

        assert proc.stdin is not None
        proc.stdin.write(b"close\n")
        proc.stdin.flush()
        assert read_line(proc) == b"closed"
        assert proc.poll() is None  # still running: close() released the lock
        dev, elapsed = timed(ChannelDevice.open, str(link), wait_timeout=1.0, lock_timeout=1.0)
        assert isinstance(dev, ChannelDevice)
        dev.close()
        assert elapsed < 0.3
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5.0)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


# ----------------------------------------------------------------------------- bounded I/O


def test_read_returns_empty_after_its_timeout(tty_pair: Pty) -> None:
    with ChannelDevice.open(tty_pair.path, wait_timeout=1.0, lock_timeout=1.0) as dev:
        data, elapsed = timed(dev.read, 0.3)
        assert data == b""
        assert 0.28 <= elapsed <= 0.3 + SLACK


def test_write_to_a_host_that_does_not_read_times_out(tty_pair: Pty) -> None:
    with ChannelDevice.open(tty_pair.path, wait_timeout=1.0, lock_timeout=1.0) as dev:
        start = time.monotonic()
        with pytest.raises(ChannelTimeout) as info:
            dev.write(b"x" * (1024 * 1024), timeout=0.5)
        elapsed = time.monotonic() - start
        assert 0.45 <= elapsed <= 0.5 + SLACK
        assert "stalled" in str(info.value)
        assert tty_pair.path in str(info.value)


# ----------------------------------------------------------------------------- unopenable


def test_opening_a_directory_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ChannelError) as info:
        ChannelDevice.open(str(tmp_path), wait_timeout=0.2, lock_timeout=0.2)
    assert str(tmp_path) in str(info.value)


def test_opening_a_missing_path_times_out_naming_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "xen-channel" / "org.example.0")
    start = time.monotonic()
    with pytest.raises(ChannelError) as info:
        ChannelDevice.open(missing, wait_timeout=0.2, lock_timeout=0.2)
    assert time.monotonic() - start <= 0.2 + SLACK
    assert isinstance(info.value, ChannelTimeout)
    assert missing in str(info.value)
