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
import subprocess
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


def _greet(device: ChannelDevice, deadline: float) -> str:
    """A version-1 handshake by hand; the session id."""
    nonce = P.new_nonce()
    device.write(P.encode_message(P.MessageType.HELLO, {"nonce": nonce, "versions": [1]}, 1), 10)
    decoder = P.FrameDecoder()
    while time.monotonic() < deadline:
        for item in decoder.feed(device.read(0.5)):
            if isinstance(item, P.Frame) and item.type == P.MessageType.WELCOME:
                body = item.json()
                if body.get("nonce") == nonce:
                    return str(body["session"])
    raise P.ChannelTimeout("no WELCOME to the hostile guest's HELLO")


def _flood(job: Dict[str, Any], frames: Callable[[int], bytes], read: bool) -> Dict[str, Any]:
    """``frames(n)`` written as fast as the channel takes them for HOSTILE_SECONDS,
    reading (and discarding) the replies or not."""
    sent = 0
    with ChannelDevice.open(job["link"], 30, 5) as device:
        deadline = time.monotonic() + HOSTILE_SECONDS
        batch = 0
        while time.monotonic() < deadline:
            chunk = frames(batch)
            batch += 1
            try:
                device.write(chunk, max(0.1, deadline - time.monotonic()))
            except P.ChannelTimeout:
                break  # the channel is full: what a guest that does not read gets
            sent += len(chunk)
            if read:
                device.read(0)
    return {"sent": sent}


def hello_flood(job: Dict[str, Any]) -> Dict[str, Any]:
    """HELLOs with a fresh nonce each: a new session each, as fast as the channel goes."""

    def frames(batch: int) -> bytes:
        return b"".join(
            P.encode_message(
                P.MessageType.HELLO, {"nonce": P.new_nonce(), "versions": [1]}, batch % 60000 + 1
            )
            for _frame in range(32)
        )

    return _flood(job, frames, read=True)


def bundle_flood(job: Dict[str, Any]) -> Dict[str, Any]:
    """A version-1 session asking for its bundle again and again (each answer is the
    whole bundle: the reads of the replies are what the channel spends)."""
    with ChannelDevice.open(job["link"], 30, 5) as device:
        session = _greet(device, time.monotonic() + 20)
    frame = P.encode_message(P.MessageType.GET_BUNDLE, {"session": session}, 2)
    return _flood(job, lambda batch: frame * 32, read=True)


def not_reading(job: Dict[str, Any]) -> Dict[str, Any]:
    """HELLOs whose replies it never reads, until the channel is full."""
    frame = P.encode_message(P.MessageType.HELLO, {"nonce": P.new_nonce(), "versions": [1]}, 3)
    return _flood(job, lambda batch: frame * 32, read=False)


KINDS: Dict[str, Callable[[Dict[str, Any]], Dict[str, Any]]] = {
    "good": good,
    "garbage": garbage,
    "oversized": oversized,
    "silent": silent,
    "hello-flood": hello_flood,
    "bundle-flood": bundle_flood,
    "not-reading": not_reading,
}
HOSTILE_KINDS = tuple(kind for kind in KINDS if kind != "good")


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


def run_swarms(
    root: str, batches: List[List[Dict[str, Any]]], env: Dict[str, str]
) -> List[Dict[str, Any]]:
    """Each batch of jobs run by a process of this module (a thread per job), all at
    once; every job's result.  Each process is bounded by SWARM_DEADLINE, and its exit
    by that plus a margin.  (Hostile guests in processes of their own do not take the
    good guests' interpreter lock: what the good ones wait for is then the agent.)"""
    procs, outputs = [], []
    for n, batch in enumerate(batches):
        path = os.path.join(root, f"jobs{n}.json")
        with open(path, "w") as handle:
            json.dump(batch, handle)
        outputs.append(os.path.join(root, f"results{n}.json"))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "testbed.guest_swarm", path, outputs[-1]],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    results: List[Dict[str, Any]] = []
    for proc, output in zip(procs, outputs):
        _out, err = proc.communicate(timeout=SWARM_DEADLINE + 60)
        if proc.returncode != 0:
            raise RuntimeError(f"a guest swarm failed (exit {proc.returncode}): {err[-3000:]}")
        with open(output) as handle:
            results.extend(json.load(handle))
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
