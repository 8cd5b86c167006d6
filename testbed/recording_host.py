"""A stand-in for dom0's agent on one simulated channel that keeps what the guest sent.

The dom0 agent records a STATUS in its state file as it sees fit; a test of the guest
side wants the message itself, report included, exactly as it arrived.  This host runs
the host's own session machine (``session.HostSession``) over the channel simulator's
socket in a thread: it greets, serves one bundle, acknowledges every delivery and
status, keeps each ``session.Status`` it parsed, and asks queries.  Bounded and stopped
by ``close()``.
"""

import select
import socket
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, TypeVar

from xenchannel.protocol import DEFAULT_CHUNK_SIZE, PROTOCOL_VERSIONS, Bundle, Frame, FrameDecoder
from xenchannel.session import (
    BundleRequested,
    Delivered,
    DeliveryReported,
    Greeted,
    HostSession,
    QueryAnswered,
    Refused,
    Status,
    StatusReported,
)

T = TypeVar("T")


class RecordingHost:
    def __init__(self, socket_path: str, bundle: Bundle, connect_timeout: float = 10.0) -> None:
        self.bundle = bundle
        self._encoded = bundle.encode()
        self._digest = bundle.digest()
        self.machine = HostSession(PROTOCOL_VERSIONS, "recording-host", burst=100, rate=100.0)
        self.statuses: List[Status] = []
        self.answers: Dict[int, Dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stop = False
        self._sock = self._connect(socket_path, connect_timeout)
        self._sock.sendall(self.machine.knock())
        self._thread = threading.Thread(target=self._run, name="recording-host", daemon=True)
        self._thread.start()

    @staticmethod
    def _connect(path: str, timeout: float) -> socket.socket:
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(path)
                return sock
            except OSError:
                sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _send(self, data: bytes) -> None:
        with self._lock:
            self._sock.sendall(data)

    def _run(self) -> None:
        decoder = FrameDecoder()
        while not self._stop:
            readable = select.select([self._sock], [], [], 0.1)[0]
            if not readable:
                continue
            data = self._sock.recv(65536)
            if not data:
                return
            for item in decoder.feed(data):
                if isinstance(item, Frame):
                    self._handle(item)

    def _handle(self, frame: Frame) -> None:
        machine = self.machine
        event = machine.receive(frame, time.monotonic())
        if isinstance(event, (Greeted, Refused)):
            self._send(event.reply)
        elif isinstance(event, BundleRequested):
            sent = machine.send_bundle(event, self._encoded, self._digest, DEFAULT_CHUNK_SIZE)
            if sent is not None:
                for data in sent[0]:
                    self._send(data)
                machine.transfer_done()
        elif isinstance(event, DeliveryReported):
            answer = machine.confirm_delivery(event, self._digest)
            if isinstance(answer, (Delivered, Refused)):
                self._send(answer.reply)
        elif isinstance(event, StatusReported):
            self._send(machine.acknowledge(event.request_id))
            with self._changed:
                self.statuses.append(event.status)
                self._changed.notify_all()
        elif isinstance(event, QueryAnswered):
            with self._changed:
                self.answers[event.request_id] = event.answers
                self._changed.notify_all()

    def _wait(self, ready: Callable[[], Optional[T]], timeout: float, what: str) -> T:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = ready()
                if found is not None:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {what} within {timeout} s")
                self._changed.wait(remaining)

    def wait_status(self, timeout: float = 30.0) -> Status:
        """The first STATUS the guest sent (waits for one)."""
        return self._wait(lambda: self.statuses[0] if self.statuses else None, timeout, "STATUS")

    def query(self, what: Sequence[str], timeout: float = 10.0) -> Dict[str, Any]:
        """Ask the guest a QUERY; its answers."""
        with self._lock:
            request_id, frame = self.machine.query(what)
            self._sock.sendall(frame)
        return self._wait(lambda: self.answers.get(request_id), timeout, "QUERY_REPLY")

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        self._sock.close()
