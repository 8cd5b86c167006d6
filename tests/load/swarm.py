"""Many guests in one process, for the load test and the benchmark.

Usage: python -m tests.load.swarm JOBS.json  ->  one JSON list of results on stdout.
Each job is {"link": device path, "kind": "good" | "garbage" | "oversized" | "silent"}:
a good guest fetches its bundle; the hostile ones attack the agent for a bounded time.
"""

import json
import os
import sys
import threading
import time
from typing import Any, Dict, List

from xenchannel import protocol as P
from xenchannel.guest import ChannelDevice, ClientConfig, GuestClient

CONFIG = ClientConfig(
    wait_timeout=30,
    lock_timeout=5,
    connect_timeout=120,
    hello_interval=1.0,
    hello_max_interval=5.0,
    idle_timeout=30,
    transfer_timeout=240,
    ack_timeout=30,
)
HOSTILE_SECONDS = 5.0


def good(job: Dict[str, Any]) -> Dict[str, Any]:
    started = time.monotonic()
    with GuestClient.open(job["link"], CONFIG) as client:
        bundle = client.fetch_bundle()
    return {"sha256": bundle.digest(), "seconds": time.monotonic() - started}


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


KINDS = {"good": good, "garbage": garbage, "oversized": oversized, "silent": silent}


def main() -> int:
    with open(sys.argv[1]) as handle:
        jobs = json.load(handle)
    results: List[Dict[str, Any]] = [{}] * len(jobs)

    def run(index: int, job: Dict[str, Any]) -> None:
        try:
            result = KINDS[job["kind"]](job)
            result["ok"] = True
        except P.ChannelError as exc:
            result = {"ok": False, "error": str(exc)}
        result.update(job)
        results[index] = result

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
