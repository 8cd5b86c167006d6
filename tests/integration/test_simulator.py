"""Tests of the channel simulator on its own.

The "host" is a raw Unix socket client, the "guest" opens the pty slave with os.open,
exactly as the dom0 agent and the guest client will.  Every wait is bounded.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import termios
import threading
import time
import tty
from pathlib import Path
from typing import Callable, Iterator, List

import pytest

from testbed.simulator import SimulatedChannel, SimulatorOptions, SimulatorThread

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"
TIMEOUT = 5.0


# ----------------------------------------------------------------------------- helpers


@pytest.fixture
def short_dir() -> Iterator[str]:
    # pytest's tmp_path can exceed the 108-byte sun_path limit.
    path = tempfile.mkdtemp(prefix="xcsim", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sim() -> Iterator[SimulatorThread]:
    with SimulatorThread(timeout=10.0) as thread:
        yield thread


@pytest.fixture
def closer() -> Iterator[Callable[[object], None]]:
    """Register sockets and fds to close at the end of a test."""
    things: List[object] = []
    yield things.append
    for thing in reversed(things):
        try:
            if isinstance(thing, int):
                os.close(thing)
            elif isinstance(thing, socket.socket):
                thing.close()
        except OSError:
            pass


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    sock.connect(path)
    return sock


def open_guest(path: str, raw: bool = True) -> int:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    if raw:
        # A guest program sets raw mode itself; the test does the same.  TCSANOW, not
        # tty.setraw's default TCSAFLUSH, which would discard bytes already delivered.
        tty.setraw(fd, termios.TCSANOW)
    return fd


def recv_exact(sock: socket.socket, n: int, timeout: float = TIMEOUT) -> bytes:
    buf = bytearray()
    deadline = time.monotonic() + timeout
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            break
        chunk = sock.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def recv_for(sock: socket.socket, duration: float) -> bytes:
    """Everything that arrives within ``duration`` seconds."""
    buf = bytearray()
    deadline = time.monotonic() + duration
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            break
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def read_exact(fd: int, n: int, timeout: float = TIMEOUT) -> bytes:
    buf = bytearray()
    deadline = time.monotonic() + timeout
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        try:
            buf += os.read(fd, n - len(buf))
        except BlockingIOError:
            continue
    return bytes(buf)


def read_for(fd: int, duration: float) -> bytes:
    buf = bytearray()
    deadline = time.monotonic() + duration
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        try:
            buf += os.read(fd, 65536)
        except BlockingIOError:
            continue
    return bytes(buf)


def write_all(fd: int, data: bytes, timeout: float = TIMEOUT) -> None:
    view = memoryview(data)
    deadline = time.monotonic() + timeout
    while view:
        left = deadline - time.monotonic()
        assert left > 0, "guest write timed out"
        select.select([], [fd], [], left)
        try:
            written = os.write(fd, view[:4096])
        except BlockingIOError:
            continue
        view = view[written:]


def is_subsequence(needle: bytes, haystack: bytes) -> bool:
    pos = 0
    for byte in haystack:
        if pos < len(needle) and needle[pos] == byte:
            pos += 1
    return pos == len(needle)


def unthrottled(**kwargs: object) -> SimulatorOptions:
    return SimulatorOptions(rate=None, **kwargs)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- tests


def test_both_directions_byte_exact_all_values(sim, short_dir, closer):
    ch = sim.add_channel(f"{short_dir}/s", options=unthrottled())
    host = connect(ch.socket_path)
    closer(host)
    guest = open_guest(ch.device_path)
    closer(guest)
    wait_until(lambda: ch.guest_is_open, "guest open")
    payload = bytes(range(256)) * 64

    host.sendall(payload)
    assert read_exact(guest, len(payload)) == payload

    write_all(guest, payload[::-1])
    assert recv_exact(host, len(payload)) == payload[::-1]

    assert read_for(guest, 0.1) == b""
    assert recv_for(host, 0.1) == b""
    stats = ch.stats
    assert stats.host_to_guest == len(payload)
    assert stats.guest_to_host == len(payload)
    assert stats.host_connections == 1
    assert stats.guest_opens == 1


def test_early_host_bytes_kept_until_guest_opens(sim, short_dir, closer):
    ch = sim.add_channel(f"{short_dir}/s")
    host = connect(ch.socket_path)
    closer(host)
    host.sendall(b"early bytes\n")
    wait_until(lambda: ch.stats.pending_host_to_guest == 12, "early bytes buffered")
    assert not ch.guest_is_open

    guest = open_guest(ch.device_path)
    closer(guest)
    assert read_exact(guest, 12) == b"early bytes\n"
    host.sendall(b"later")
    assert read_exact(guest, 5) == b"later"
    assert ch.stats.dropped_host_to_guest == 0


def test_early_host_bytes_dropped_when_not_kept(sim, short_dir, closer):
    ch = sim.add_channel(f"{short_dir}/s", options=SimulatorOptions(keep_host_bytes=False))
    host = connect(ch.socket_path)
    closer(host)
    host.sendall(b"early bytes\n")
    wait_until(lambda: ch.stats.dropped_host_to_guest == 12, "early bytes dropped")

    guest = open_guest(ch.device_path)
    closer(guest)
    wait_until(lambda: ch.guest_is_open, "guest open")
    assert read_for(guest, 0.3) == b""
    host.sendall(b"later")
    assert read_exact(guest, 5) == b"later"


def test_guest_bytes_kept_until_client_connects(sim, short_dir, closer):
    ch = sim.add_channel(f"{short_dir}/s")
    guest = open_guest(ch.device_path)
    closer(guest)
    write_all(guest, b"hello from the guest")
    wait_until(lambda: ch.stats.pending_guest_to_host == 20, "guest bytes buffered")

    host = connect(ch.socket_path)
    closer(host)
    assert recv_exact(host, 20) == b"hello from the guest"
    assert recv_for(host, 0.1) == b""


def test_guest_bytes_dropped_when_not_kept(sim, short_dir, closer):
    ch = sim.add_channel(f"{short_dir}/s", options=SimulatorOptions(keep_guest_bytes=False))
    guest = open_guest(ch.device_path)
    closer(guest)
    write_all(guest, b"lost")
    wait_until(lambda: ch.stats.dropped_guest_to_host == 4, "guest bytes dropped")
    host = connect(ch.socket_path)
    closer(host)
    assert recv_for(host, 0.3) == b""
    write_all(guest, b"seen")
    assert recv_exact(host, 4) == b"seen"


def test_one_client_at_a_time(sim, short_dir, closer):
    ch = sim.add_channel(f"{short_dir}/s")
    guest = open_guest(ch.device_path)
    closer(guest)
    first = connect(ch.socket_path)
    closer(first)
    wait_until(lambda: ch.stats.host_connections == 1, "first client accepted")
    # connect() succeeds: the second client sits in the listen backlog, as with QEMU.
    second = connect(ch.socket_path)
    closer(second)
    second.sendall(b"from second")

    write_all(guest, b"one")
    assert recv_exact(first, 3) == b"one"
    assert recv_for(second, 0.3) == b""
    assert read_for(guest, 0.2) == b""
    assert ch.stats.host_connections == 1

    first.close()
    assert read_exact(guest, 11) == b"from second"
    write_all(guest, b"two")
    assert recv_exact(second, 3) == b"two"
    assert ch.stats.host_connections == 2


def test_disconnect_host_drops_client_and_accepts_next(sim, short_dir, closer):
    ch = sim.add_channel(f"{short_dir}/s")
    guest = open_guest(ch.device_path)
    closer(guest)
    first = connect(ch.socket_path)
    closer(first)
    wait_until(lambda: ch.stats.host_connections == 1, "first client accepted")
    sim.disconnect_host(ch)
    assert recv_for(first, 1.0) == b""  # EOF, not a timeout: recv_for stops on EOF
    write_all(guest, b"kept")
    wait_until(lambda: ch.stats.pending_guest_to_host == 4, "guest bytes kept")
    second = connect(ch.socket_path)
    closer(second)
    assert recv_exact(second, 4) == b"kept"


@pytest.mark.parametrize("direction", ["host_to_guest", "guest_to_host"])
def test_throttle_rate(sim, short_dir, closer, direction):
    rate = 100000
    ch = sim.add_channel(f"{short_dir}/s", options=SimulatorOptions(rate=float(rate)))
    host = connect(ch.socket_path)
    closer(host)
    guest = open_guest(ch.device_path)
    closer(guest)
    wait_until(lambda: ch.guest_is_open, "guest open")
    payload = os.urandom(150000)
    to_guest = direction == "host_to_guest"

    done = threading.Event()

    def produce() -> None:
        view = memoryview(payload)
        deadline = time.monotonic() + TIMEOUT
        target = host if to_guest else guest
        # Short selects so the producer notices `done` soon after the measurement.
        while view and not done.is_set() and time.monotonic() < deadline:
            _, writable, _ = select.select([], [target], [], 0.05)
            if not writable:
                continue
            try:
                if to_guest:
                    sent = host.send(view[:4096], socket.MSG_DONTWAIT)
                else:
                    sent = os.write(guest, view[:4096])
            except BlockingIOError:
                continue
            except OSError:
                return
            view = view[sent:]

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        first = read_exact(guest, 1) if to_guest else recv_exact(host, 1)
        assert first
        start = time.monotonic()
        received = read_for(guest, 0.5) if to_guest else recv_for(host, 0.5)
        elapsed = time.monotonic() - start
    finally:
        done.set()
        producer.join(TIMEOUT)
    measured = len(received) / elapsed
    assert 0.6 * rate <= measured <= 1.4 * rate, f"{measured:.0f} B/s at rate {rate}"


def test_echo_on_until_guest_sets_raw(sim, short_dir, closer):
    ch = sim.add_channel(f"{short_dir}/s", options=unthrottled(echo=True))
    host = connect(ch.socket_path)
    closer(host)
    guest = open_guest(ch.device_path, raw=False)
    closer(guest)
    wait_until(lambda: ch.guest_is_open, "guest open")

    host.sendall(b"hello\n")
    # The kernel line discipline echoes with ONLCR: \n comes back as \r\n.
    assert recv_exact(host, 7) == b"hello\r\n"

    tty.setraw(guest, termios.TCSANOW)
    assert read_exact(guest, 6) == b"hello\n"
    host.sendall(b"raw\n")
    assert read_exact(guest, 4) == b"raw\n"
    assert recv_for(host, 0.3) == b""
    assert ch.stats.guest_to_host == 7


def test_echo_restored_after_last_guest_close(sim, short_dir, closer):
    ch = sim.add_channel(f"{short_dir}/s", options=unthrottled(echo=True))
    guest = open_guest(ch.device_path)  # raw
    wait_until(lambda: ch.guest_is_open, "guest open")
    os.close(guest)
    wait_until(lambda: not ch.guest_is_open, "guest closed")
    guest = open_guest(ch.device_path, raw=False)
    closer(guest)
    lflag = termios.tcgetattr(guest)[3]
    assert lflag & termios.ECHO
    assert lflag & termios.ICANON


def test_echo_off(sim, short_dir, closer):
    ch = sim.add_channel(f"{short_dir}/s", options=unthrottled())
    host = connect(ch.socket_path)
    closer(host)
    guest = open_guest(ch.device_path, raw=False)  # the simulator made it raw already
    closer(guest)
    wait_until(lambda: ch.guest_is_open, "guest open")
    host.sendall(b"hello\r\n")
    assert read_exact(guest, 7) == b"hello\r\n"  # no ICRNL mapping either
    assert recv_for(host, 0.3) == b""

    # Even if a guest leaves the tty cooked, the next opener finds it raw again.
    attrs = termios.tcgetattr(guest)
    attrs[3] |= termios.ECHO | termios.ICANON
    termios.tcsetattr(guest, termios.TCSANOW, attrs)
    os.close(guest)
    wait_until(lambda: not ch.guest_is_open, "guest closed")
    guest = open_guest(ch.device_path, raw=False)
    closer(guest)
    assert not termios.tcgetattr(guest)[3] & (termios.ECHO | termios.ICANON)


def test_garbage_both_directions(sim, short_dir, closer):
    options = unthrottled(garbage="both", garbage_interval=0.05, garbage_seed=7)
    ch = sim.add_channel(f"{short_dir}/s", options=options)
    host = connect(ch.socket_path)
    closer(host)
    guest = open_guest(ch.device_path)
    closer(guest)
    wait_until(lambda: ch.guest_is_open, "guest open")

    # Hex payloads cannot contain "AT\r" or a "[ 1.000000] hvc" log line.
    down = os.urandom(8000).hex().encode()
    up = os.urandom(8000).hex().encode()
    at_guest = bytearray()
    at_host = bytearray()
    for i in range(0, len(down), 1000):
        host.sendall(down[i : i + 1000])
        write_all(guest, up[i : i + 1000])
        at_guest += read_for(guest, 0.02)
        at_host += recv_for(host, 0.02)
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and not (
        is_subsequence(down, bytes(at_guest)) and is_subsequence(up, bytes(at_host))
    ):
        at_guest += read_for(guest, 0.05)
        at_host += recv_for(host, 0.05)

    assert is_subsequence(down, bytes(at_guest))
    assert is_subsequence(up, bytes(at_host))
    assert len(at_guest) > len(down)
    assert len(at_host) > len(up)
    assert re.search(rb"\[ *\d+\.\d{6}\] hvc\d+: ", at_guest)
    assert re.search(rb"AT(E0|\+GCAP|I|\+CGMI)?\r", at_host)
    stats = ch.stats
    assert stats.garbage_to_guest > 0
    assert stats.garbage_to_host > 0
    assert stats.host_to_guest == len(down)
    assert stats.guest_to_host == len(up)


def test_cut_host_after(sim, short_dir, closer):
    ch = sim.add_channel(f"{short_dir}/s", options=unthrottled(cut_host_after=1000))
    guest = open_guest(ch.device_path)
    closer(guest)
    wait_until(lambda: ch.guest_is_open, "guest open")
    payload = os.urandom(5000)

    host = connect(ch.socket_path)
    closer(host)
    try:
        host.sendall(payload)
    except OSError:
        pass  # the simulator may already have hung up
    try:
        assert recv_for(host, TIMEOUT) == b""
    except ConnectionResetError:
        pass  # closing with unread data resets the peer
    assert read_exact(guest, 1000) == payload[:1000]
    assert read_for(guest, 0.2) == b""
    assert ch.stats.host_cuts == 1

    # The cut happens once per simulator unless cut_every_connection is set.
    again = connect(ch.socket_path)
    closer(again)
    again.sendall(payload)
    assert read_exact(guest, 5000) == payload
    assert ch.stats.host_cuts == 1


def test_cut_every_connection(sim, short_dir, closer):
    options = unthrottled(cut_host_after=10, cut_every_connection=True)
    ch = sim.add_channel(f"{short_dir}/s", options=options)
    guest = open_guest(ch.device_path)
    closer(guest)
    for _ in range(2):
        host = connect(ch.socket_path)
        closer(host)
        host.sendall(b"0123456789abcdef")
        try:
            assert recv_for(host, TIMEOUT) == b""
        except ConnectionResetError:
            pass
        assert read_exact(guest, 10) == b"0123456789"
    assert ch.stats.host_cuts == 2


def test_buffer_limit_bounds_both_buffers(sim, short_dir, closer):
    limit = 65536
    options = unthrottled(buffer_limit=limit)

    down = sim.add_channel(f"{short_dir}/d", options=options)
    host = connect(down.socket_path)
    closer(host)
    payload = os.urandom(3 * limit)
    host.sendall(payload)
    wait_until(
        lambda: down.stats.dropped_host_to_guest + down.stats.pending_host_to_guest == 3 * limit,
        "host bytes accounted",
    )
    assert down.stats.pending_host_to_guest == limit
    assert down.stats.dropped_host_to_guest == 2 * limit
    guest = open_guest(down.device_path)
    closer(guest)
    assert read_exact(guest, limit) == payload[:limit]
    assert read_for(guest, 0.2) == b""

    up = sim.add_channel(f"{short_dir}/u", options=options)
    guest = open_guest(up.device_path)
    closer(guest)
    write_all(guest, payload)
    wait_until(
        lambda: up.stats.dropped_guest_to_host + up.stats.pending_guest_to_host == 3 * limit,
        "guest bytes accounted",
    )
    assert up.stats.pending_guest_to_host == limit
    assert up.stats.dropped_guest_to_host == 2 * limit
    host = connect(up.socket_path)
    closer(host)
    assert recv_exact(host, limit) == payload[:limit]
    assert recv_for(host, 0.2) == b""


def test_fifty_channels_in_one_thread(short_dir, closer):
    with SimulatorThread(timeout=10.0) as sim:
        channels = [
            sim.add_channel(f"{short_dir}/s{i}", f"{short_dir}/links/hvc{i}") for i in range(50)
        ]
        assert len({ch.device_path for ch in channels}) == 50
        pairs = []
        for ch in channels:
            host = connect(ch.socket_path)
            closer(host)
            guest = open_guest(f"{short_dir}/links/hvc{channels.index(ch)}")
            closer(guest)
            pairs.append((host, guest))
        wait_until(lambda: all(ch.guest_is_open for ch in channels), "all guests open")
        for i, (host, guest) in enumerate(pairs):
            host.sendall(b"down%03d" % i)
            write_all(guest, b"up%03d" % i)
        for i, (host, guest) in enumerate(pairs):
            assert read_exact(guest, 7) == b"down%03d" % i
            assert recv_exact(host, 5) == b"up%03d" % i
        sim.remove_channel(channels[0])
        assert not os.path.exists(channels[0].socket_path)
        assert len(sim.channels) == 49
    for i, ch in enumerate(channels):
        assert not os.path.exists(ch.socket_path)
        assert not os.path.lexists(f"{short_dir}/links/hvc{i}")


def test_stop_removes_socket_and_link(sim, short_dir):
    sock_path = f"{short_dir}/s"
    link = f"{short_dir}/a/b/hvc1"
    Path(sock_path).touch()
    with pytest.raises(FileExistsError):
        sim.add_channel(sock_path)
    os.unlink(sock_path)

    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()  # leaves a stale socket file behind, as a crashed QEMU would
    ch = sim.add_channel(sock_path, link)
    assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    assert stat.S_IMODE(os.lstat(sock_path).st_mode) == 0o600
    assert os.readlink(link) == ch.device_path
    assert ch.device_path.startswith("/dev/pts/")
    connect(sock_path).close()

    sim.remove_channel(ch)
    assert not os.path.lexists(sock_path)
    assert not os.path.lexists(link)


def test_stop_leaves_a_replaced_link_alone(short_dir):
    link = f"{short_dir}/hvc0"
    with SimulatorThread() as sim:
        sim.add_channel(f"{short_dir}/s", link)
        os.unlink(link)
        os.symlink("/dev/null", link)
    assert os.readlink(link) == "/dev/null"


def test_cli_ready_line_and_sigterm(short_dir, closer):
    sock_path = f"{short_dir}/cli.sock"
    link = f"{short_dir}/dev/hvc2"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(RUNTIME), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "testbed.simulator", "--unthrottled"]
    proc = subprocess.Popen(
        [*command, "--socket", sock_path, "--link", link],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10.0)
        assert ready, "no ready line"
        line = proc.stdout.readline().decode()
        match = re.fullmatch(r"device=(/dev/pts/\d+) socket=(\S+)\n", line)
        assert match, line
        assert match.group(2) == sock_path
        assert os.readlink(link) == match.group(1)

        host = connect(sock_path)
        closer(host)
        guest = open_guest(link)
        closer(guest)
        host.sendall(b"ping")
        assert read_exact(guest, 4) == b"ping"

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10.0) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5.0)
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()
    assert not os.path.lexists(sock_path)
    assert not os.path.lexists(link)


def test_options_are_validated():
    with pytest.raises(ValueError):
        SimulatorOptions(garbage="sideways")
    with pytest.raises(ValueError):
        SimulatorOptions(rate=0)
    with pytest.raises(ValueError):
        SimulatorOptions(buffer_limit=0)
    assert SimulatorOptions().rate == 256000.0
    assert isinstance(SimulatedChannel("/tmp/x").options, SimulatorOptions)


def test_two_guests_open_at_once(sim, short_dir, closer):
    # inotify merges back-to-back identical events; the open state must still be right.
    ch = sim.add_channel(f"{short_dir}/s", options=unthrottled(echo=True))
    host = connect(ch.socket_path)
    closer(host)
    first = open_guest(ch.device_path, raw=False)
    second = open_guest(ch.device_path)  # sets raw for both: it is one tty
    closer(second)
    wait_until(lambda: ch.guest_is_open, "guest open")
    os.close(first)
    time.sleep(0.2)
    assert ch.guest_is_open
    assert not termios.tcgetattr(second)[3] & termios.ECHO  # not reset under the guest
    host.sendall(b"still here")
    assert read_exact(second, 10) == b"still here"
    assert recv_for(host, 0.2) == b""

    third = open_guest(ch.device_path)
    os.close(second)
    os.close(third)
    wait_until(lambda: not ch.guest_is_open, "both guests closed")
    again = open_guest(ch.device_path, raw=False)
    closer(again)
    assert termios.tcgetattr(again)[3] & termios.ECHO
