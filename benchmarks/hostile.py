"""Section (d): what hostile guests cost the good ones, and whether the agent recovers.

Two runs of ``DOMAINS`` domains over the channel simulator (real ptys, the channel's
rate), everyone booting at once: all good, then with every fifth guest hostile (garbage,
oversized frames, silence, HELLO floods, GET_BUNDLE floods, replies never read:
``testbed.guest_swarm.HOSTILE_KINDS``, in turn).  For the good guests: the p99 of the
time from opening the device to holding the verified bundle, and its ratio between the
runs (target: the hostile run within 2x).  For the agent: its CPU and peak RSS, then,
once every hostile guest has gone, its idle CPU and RSS against its figures before the
guests started (it must return to idle: nothing a flood sent may still be queued).
"""

import os
import resource
import time
from typing import Any, Dict, List

from testbed.guest_swarm import HOSTILE_KINDS, run_swarms
from testbed.stack import Stack, runtime_env, sample_bundle

from .harness import ROOT, cpu_seconds, fmt_seconds, met, print_table, proc_status_kib

DOMAINS = 200
HOSTILE_EVERY = 5  # 20 %
SWARMS = 4  # processes of good guests (the hostile ones get two of their own)
SETTLE_SECONDS = 10.0
P99_RATIO_TARGET = 2.0


def _own_cpu() -> float:
    """This process's CPU: the channel simulator's threads run here."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _p(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _run(hostile: bool) -> Dict[str, Any]:
    stack = Stack()
    try:
        jobs = []
        for i in range(DOMAINS):
            name = f"vm{i:03d}"
            stack.add_domain(name, sample_bundle(name))
            kind = "good"
            if hostile and i % HOSTILE_EVERY == 0:
                kind = HOSTILE_KINDS[(i // HOSTILE_EVERY) % len(HOSTILE_KINDS)]
            jobs.append({"link": stack.domains[name].link, "kind": kind, "name": name})
        stack.start_agent()
        assert stack.agent is not None
        pid = stack.agent.pid
        time.sleep(2.0)  # connected to every socket, idle
        rss_idle = proc_status_kib(pid, "VmRSS")
        cpu_start = cpu_seconds(pid)
        sim_start = _own_cpu()
        env = dict(runtime_env(), PYTHONPATH=runtime_env()["PYTHONPATH"] + os.pathsep + ROOT)
        good = [job for job in jobs if job["kind"] == "good"]
        bad = [job for job in jobs if job["kind"] != "good"]
        batches = [good[n::SWARMS] for n in range(SWARMS)] + [bad[n::2] for n in range(2)]
        results = run_swarms(stack.root, [batch for batch in batches if batch], env)
        cpu_run = cpu_seconds(pid) - cpu_start
        sim_cpu = _own_cpu() - sim_start
        peak = proc_status_kib(pid, "VmHWM")
        # Every guest has gone (the swarms exited): what the agent does now is left over.
        settle_cpu = cpu_seconds(pid)
        time.sleep(SETTLE_SECONDS)
        idle_after = 100.0 * (cpu_seconds(pid) - settle_cpu) / SETTLE_SECONDS
        rss_after = proc_status_kib(pid, "VmRSS")
        good = [r for r in results if r["kind"] == "good"]
        served = [
            r for r in good if r.get("ok") and r["sha256"] == sample_bundle(r["name"]).digest()
        ]
        latencies = [r["done"] - r["started"] for r in served]
        return {
            "good": len(good),
            "served": len(served),
            "hostile": len(results) - len(good),
            "p50_s": _p(latencies, 0.50),
            "p99_s": _p(latencies, 0.99),
            "agent_cpu_s": cpu_run,
            "simulator_cpu_s": sim_cpu,
            "peak_rss_kib": peak,
            "rss_idle_kib": rss_idle,
            "rss_after_kib": rss_after,
            "idle_cpu_after_percent": idle_after,
        }
    finally:
        stack.close()


def run() -> Dict[str, Any]:
    started = time.monotonic()
    calm = _run(hostile=False)
    attacked = _run(hostile=True)
    ratio = attacked["p99_s"] / calm["p99_s"] if calm["p99_s"] else float("inf")
    rows = []
    for label, _key, fmt in (
        ("good guests served", "served", lambda r: f"{r['served']}/{r['good']}"),
        ("good guests' p50, open..verified", "p50_s", lambda r: fmt_seconds(r["p50_s"])),
        ("good guests' p99, open..verified", "p99_s", lambda r: fmt_seconds(r["p99_s"])),
        ("agent CPU during the boots", "agent_cpu_s", lambda r: f"{r['agent_cpu_s']:.2f} s"),
        (
            "  simulator CPU (QEMU + hvc stand-in)",
            "simulator_cpu_s",
            lambda r: f"{r['simulator_cpu_s']:.2f} s",
        ),
        ("agent peak RSS", "peak_rss_kib", lambda r: f"{r['peak_rss_kib'] / 1024:.1f} MiB"),
        (
            "agent RSS idle before / after, guests gone",
            "rss_after_kib",
            lambda r: f"{r['rss_idle_kib'] / 1024:.1f} / {r['rss_after_kib'] / 1024:.1f} MiB",
        ),
        (
            f"agent CPU in the {SETTLE_SECONDS:g} s after",
            "idle_cpu_after_percent",
            lambda r: f"{r['idle_cpu_after_percent']:.2f} % of a core",
        ),
    ):
        rows.append([label, fmt(calm), fmt(attacked), "-"])
    rows[2][3] = f"{ratio:.2f}"
    # (The simulator, the guests and the agent share this machine's CPUs: when the
    # agent's CPU is far below a core, what the good guests wait for is the rest.)
    rows.append(
        [f"  target p99 with / without <= {P99_RATIO_TARGET:g}", "-", "-", met(ratio <= 2.0)]
    )
    print_table(
        f"(d) {DOMAINS} domains over the simulator, all good vs every {HOSTILE_EVERY}th hostile "
        f"({', '.join(HOSTILE_KINDS)}) ({time.monotonic() - started:.1f} s)",
        ["", "all good", "20 % hostile", "with/without"],
        rows,
    )
    return {
        "hostile": {
            "calm": calm,
            "attacked": attacked,
            "p99_ratio": ratio,
            "p99_target_met": ratio <= P99_RATIO_TARGET,
        }
    }
