"""Many guests in one process, one thread each: for the load test and the benchmark.

Usage: ``python -m testbed.guest_swarm JOBS.json OUT.json``.  Each job is
``{"name": domain, "link": device path, "kind": "good" | "garbage" | "oversized" | "silent"}``.
A good guest runs the whole guest flow (open, handshake, fetch, verify, ack) and records
``done``, the ``time.monotonic()`` at which it held the verified bundle (CLOCK_MONOTONIC
is system-wide on Linux, so the parent compares it with its own clock).  The hostile
kinds attack the agent for a bounded time.  Results go to a file, not stdout: hundreds of
results can exceed what a pipe holds before the parent reads it.
"""

import json
import os
import sys
import threading
import time
from typing import Any, Callable, Dict, List

from xenchannel import protocol as P
from xenchannel.guest import ChannelDevice, ClientConfig, GuestClient

CONFIG = ClientConfig(
    wait_timeout=30,
    lock_timeout=5,
    connect_timeout=120,
    hello_interval=1.0,
    hello_max_interval=5.0,
    idle_timeout=30,
    transfer_timeout=200,
    ack_timeout=30,
)
HOSTILE_SECONDS = 5.0
SWARM_DEADLINE = 240.0


def good(job: Dict[str, Any]) -> Dict[str, Any]:
    started = time.monotonic()
    with GuestClient.open(job["link"], CONFIG) as client:
        bundle = client.fetch_bundle()
        done = time.monotonic()
        hellos = client.session.hellos if client.session else 0
    return {"sha256": bundle.digest(), "started": started, "done": done, "hellos": hellos}


def garbage(job: Dict[str, Any]) -> Dict[str, Any]:
    """A flood of random bytes and AT probes, with 0xFF in it (candidate frames)."""
    sent = 0
    with ChannelDevice.open(job["link"], 30, 5) as device:
        deadline = time.monotonic() + HOSTILE_SECONDS
        while time.monotonic() < deadline:
            chunk = os.urandom(16384) + b"AT\rATE0\rAT+GCAP\r"
            device.write(chunk, 10)
            sent += len(chunk)
            device.read(0)
    return {"sent": sent}


def oversized(job: Dict[str, Any]) -> Dict[str, Any]:
    """Frames whose headers announce far more than the agent accepts."""
    frame = P.encode_frame(P.MessageType.STATUS, b"\x00" * 600_000, 1, max_payload=1 << 30)
    sent = 0
    with ChannelDevice.open(job["link"], 30, 5) as device:
        deadline = time.monotonic() + HOSTILE_SECONDS
        while time.monotonic() < deadline and sent < 8 * len(frame):
            device.write(frame, 30)
            sent += len(frame)
    return {"sent": sent}


def silent(job: Dict[str, Any]) -> Dict[str, Any]:
    """Never opens the device: the agent's KNOCKs go unanswered."""
    return {}


KINDS: Dict[str, Callable[[Dict[str, Any]], Dict[str, Any]]] = {
    "good": good,
    "garbage": garbage,
    "oversized": oversized,
    "silent": silent,
}


def run_guests(
    jobs: List[Dict[str, Any]], guest: Callable[[int], Dict[str, Any]], deadline: float
) -> List[Dict[str, Any]]:
    """``guest(i)`` for every job at once, a thread each, for at most ``deadline`` seconds:
    each job with its result (``ok``, or the one-sentence ``error`` it failed with)."""
    results: List[Dict[str, Any]] = [
        dict(job, ok=False, error="did not finish in time") for job in jobs
    ]

    def run(index: int) -> None:
        try:
            result = guest(index)
            result["ok"] = True
        except (P.ChannelError, OSError) as exc:
            result = {"ok": False, "error": str(exc)}
        results[index] = dict(jobs[index], **result)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    end = time.monotonic() + deadline
    for thread in threads:
        thread.join(max(0.0, end - time.monotonic()))
    return results


def main() -> int:
    with open(sys.argv[1]) as handle:
        jobs = json.load(handle)
    results = run_guests(
        jobs, lambda i: KINDS[jobs[i].get("kind", "good")](jobs[i]), SWARM_DEADLINE
    )
    with open(sys.argv[2], "w") as handle:
        json.dump(results, handle)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
