"""xenchannel benchmarks: ``python -m benchmarks.run [--quick] [--domains N[,N...]] [--rate B/s]``.

Everything runs on this machine: the real dom0 agent (a subprocess), the channel
simulator (Unix socket + pty, standing in for QEMU + /dev/hvcN) and the real guest
client.  Every ratio is against a baseline measured in the same run with the same
simulator options, so the figures compare like with like on whatever machine runs
them.  Nothing here asserts on time: it prints figures, and targets are shown beside
them with "met" / "NOT met".

(a) Delivery time and goodput, at ``--rate`` (default 256000 B/s, the ~250 KiB/s of
    a real Xen channel).  A 4 KiB and a 1 MiB bundle (random user-data), 3 times each:
    *end to end* is the guest opening the device up to holding the verified bundle
    (it includes the handshake and the BUNDLE_ACK round trip); *transfer* is
    ``fetch_bundle()`` after ``handshake()`` (GET_BUNDLE .. END, verify, ack).
    *raw* is the same channel with no protocol: a Unix socket client pushes as many
    random bytes as the bundle and the guest reads them from the raw device.
    goodput = bundle bytes / transfer time; goodput/raw near 1 means the protocol costs
    nothing beyond the channel (target >= 0.9 for 1 MiB; stuffing alone costs ~0.8 %
    for random bytes).  Every run starts from an idle channel, so the simulator's token
    bucket lets the first 2 x 10 ms worth of bytes through at once: a 4 KiB raw push is
    a burst, and the 4 KiB ratio shows the protocol's round trips, not throughput.
(b) Handshake latency.  The raw round-trip time of the channel (one byte echoed by a
    guest thread, median of 50) and ``Session.elapsed`` of handshakes with the agent
    already connected.  round trips = handshake time / RTT: the protocol needs one
    (HELLO -> WELCOME); anything above is the agent's and client's processing time.
    HELLOs sent above 1 would mean a resend (a lost or late answer).
(c) N domains (default 1,000 and then 10,000), unthrottled.  One agent serves all of
    them while the guests (4 processes, threads inside) fetch at once; against the way
    CloudStack's patchviasocket.py does it: one Python process per domain doing connect,
    sendall, close, no handshake or ack.  Wall time (guests start .. last delivered),
    CPU (agent: from its start to the last fetch, from /proc; baseline: the sum over its
    processes), CPU per delivery, and memory (agent: peak RSS; baseline: the sum of
    per-process peaks, which is what N concurrent processes need).  agent/baseline < 1
    means the agent is cheaper.  Then every guest stays connected and silent and the
    agent's CPU over 30 s is its idle cost.  The guests here are not ptys (the kernel
    has 4096): each listens on its domain's socket itself (benchmarks/socket_swarm.py).
(d) Hostile guests: 200 domains over the simulator booting at once, all good and then
    with every fifth guest hostile (garbage, oversized frames, silence, HELLO and
    GET_BUNDLE floods, replies never read); the good guests' p99 from opening the
    device to the verified bundle in both runs (target: within 2x), the agent's CPU and
    peak RSS, and its idle CPU and RSS once every hostile guest has gone.
(e) With ``--cloud-init``: Debian's cloud-init 22.4 and 25.1 ``init --local`` in a
    sandbox, XenChannel at ``--rate`` vs NoCloud with the same content, and detection
    time with no channel (see benchmarks/cloud_init.py).
(f) With ``--xl``: adding a channel to 200 xl domain configs (50 with ``--quick``) with
    xenchannel.provision.xl_channel vs ansible.builtin.template, and the second runs'
    changed counts (see benchmarks/xl_channel_bench.py).

All figures go to ``benchmarks/results/latest.json``; each section says how long it took.
"""

import argparse
import json
import os
import platform
import resource
import signal
import sys
import time
from typing import Any, Dict, List, Optional

from . import channel, cloud_init, hostile, many, xl_channel_bench
from .harness import BenchError, check_agent_cli

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _counts(text: str) -> List[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of domain counts; write e.g. 1000 or 1000,10000"
        )
    return counts


def _parse(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes and counts")
    parser.add_argument(
        "--domains",
        type=_counts,
        default=None,
        help="domain counts for section (c), comma-separated (default 1000,10000; 100 "
        "with --quick)",
    )
    parser.add_argument(
        "--cloud-init",
        action="store_true",
        help="also section (d): cloud-init with XenChannel vs NoCloud (benchmarks/cloud_init.py)",
    )
    parser.add_argument(
        "--xl",
        action="store_true",
        help="also section (e): xl_channel vs template (benchmarks/xl_channel_bench.py)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=256000.0,
        help="simulated channel rate in bytes/s for (a) and (b)",
    )
    args = parser.parse_args(argv)
    if args.domains is None:
        args.domains = [100] if args.quick else [1000, 10000]
    if not args.rate > 0:
        parser.error("--rate must be positive")
    return args


def _raise_fd_limit(need: int) -> None:
    """Each simulated domain holds several fds in this process; raise the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _write(results: Dict[str, Any]) -> str:
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, "latest.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(results, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, path)
    return path


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    # Raise in the main thread so every try/finally cleans up its processes and dirs.
    raise SystemExit(128 + signum)


def main(argv: Optional[List[str]] = None) -> int:
    args = _parse(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    started = time.monotonic()
    _raise_fd_limit(2 * max(args.domains) + 1024)
    results: Dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "options": {"quick": args.quick, "domains": args.domains, "rate": args.rate},
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
    }
    print(
        f"xenchannel benchmarks ({'quick' if args.quick else 'full'}): rate "
        f"{args.rate:g} B/s, {' and '.join(map(str, args.domains))} domains, "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    status = 0
    try:
        check_agent_cli()
        results.update(channel.run(args.rate, args.quick))
        results["many_domains"] = [
            many.run(count, 10.0 if args.quick else many.IDLE_SECONDS) for count in args.domains
        ]
        results.update(hostile.run())
        if args.cloud_init:
            results["cloud_init"] = cloud_init.run(args.rate)
        if args.xl:
            results["xl_channel"] = xl_channel_bench.run(50 if args.quick else 200)
            xl_channel_bench.write_results(results["xl_channel"])
    except BenchError as exc:
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
        results["error"] = str(exc)
        status = 1
    finally:
        results["total_seconds"] = time.monotonic() - started
        path = _write(results)
    print(
        f"\ntotal {results['total_seconds']:.1f} s; figures in {os.path.relpath(path, os.getcwd())}"
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
