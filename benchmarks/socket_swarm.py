"""Guests for the scale benchmark that are not ptys: ``python -m benchmarks.socket_swarm JOBS OUT``.

The kernel allows 4096 ptys (``/proc/sys/kernel/pty/max``), so 10,000 simulated guests
cannot each have one.  The scale section does not test the tty (the channel simulator's
tests and the load test do), only the dom0 side, so each guest here stands in for QEMU
and ``/dev/hvcN`` at once: it listens on the domain's channel socket, as QEMU does, and
speaks the protocol with the real guest client over the connection the agent makes,
wrapped as a ``ChannelDevice``.  The agent cannot tell the difference: either way it has
a connected Unix socket.

Each job is ``{"name": domain, "socket": path}``.  The parent drives the phases with one
line each way (every step is bounded by the parent's deadlines and by ``LIFETIME``):

* binds every socket, then prints ``ready``;
* on ``go``, one thread per guest accepts the agent's connection and runs the whole guest
  flow (handshake, fetch, verify, ack); when all are done (or ``FETCH_DEADLINE`` passed)
  it writes the results to OUT and prints ``done``;
* keeps every connection open and silent (the idle measurement) until ``stop`` or the
  end of its input, then closes them and exits.
"""

import json
import signal
import socket
import sys
import threading
import time
from typing import Any, Dict, List

from testbed.guest_swarm import CONFIG, run_guests
from xenchannel.guest import ChannelDevice, GuestClient

ACCEPT_TIMEOUT = 120.0
FETCH_DEADLINE = 300.0
LIFETIME = 900  # seconds: the process ends even if its parent never says stop
THREAD_STACK = 512 * 1024  # thousands of guest threads: the default 8 MiB is waste


def _line(expected: str) -> None:
    got = sys.stdin.readline().strip()
    if got != expected:
        raise SystemExit(f"socket_swarm: expected {expected!r} on stdin, got {got!r}")


def _say(word: str) -> None:
    sys.stdout.write(word + "\n")
    sys.stdout.flush()


def main() -> int:
    signal.alarm(LIFETIME)
    threading.stack_size(THREAD_STACK)
    with open(sys.argv[1]) as handle:
        jobs: List[Dict[str, Any]] = json.load(handle)
    listeners = []
    for job in jobs:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(job["socket"])
        listener.listen(1)
        listener.settimeout(ACCEPT_TIMEOUT)
        listeners.append(listener)
    _say("ready")
    _line("go")

    held: List[GuestClient] = []
    held_lock = threading.Lock()

    def guest(index: int) -> Dict[str, Any]:
        job, listener = jobs[index], listeners[index]
        started = time.monotonic()
        conn, _peer = listener.accept()
        conn.setblocking(False)
        client = GuestClient(ChannelDevice(job["socket"], conn.detach(), None), CONFIG)
        with held_lock:
            held.append(client)  # closed at "stop": connected and silent until then
        bundle = client.fetch_bundle()
        done = time.monotonic()
        hellos = client.session.hellos if client.session else 0
        return {"sha256": bundle.digest(), "started": started, "done": done, "hellos": hellos}

    results = run_guests(jobs, guest, FETCH_DEADLINE)
    with open(sys.argv[2], "w") as handle:
        json.dump(results, handle)
    _say("done")

    sys.stdin.readline()  # "stop", or EOF when the parent went away
    with held_lock:
        for client in held:
            client.close()
    for listener in listeners:
        listener.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
