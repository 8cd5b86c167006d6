"""One agent, 500 simulated domains booting at once, 5% of them hostile.

Hostile guests flood garbage, send oversized frames, never answer, flood HELLOs or
GET_BUNDLEs, or never read their replies.  Every
well-behaved guest must get its own bundle, and the agent's peak memory must stay
bounded (a generous ceiling that only unbounded growth would cross; the benchmark
reports the actual figure).
"""

import os
import time

import pytest

from testbed.guest_swarm import HOSTILE_KINDS, run_swarms
from testbed.stack import Stack, runtime_env, sample_bundle

DOMAINS = 500
HOSTILE_EVERY = 20  # 5 %
SWARMS = 4
MEMORY_CEILING_KIB = 256 * 1024


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.load
def test_500_domains_with_hostile_guests():
    stack = Stack()
    try:
        jobs = []
        hostile_kinds = HOSTILE_KINDS
        for i in range(DOMAINS):
            name = f"vm{i:03d}"
            stack.add_domain(name, sample_bundle(name))
            if i % HOSTILE_EVERY == 0:
                kind = hostile_kinds[(i // HOSTILE_EVERY) % len(hostile_kinds)]
            else:
                kind = "good"
            jobs.append({"link": stack.domains[name].link, "kind": kind, "name": name})
        stack.start_agent()
        assert stack.agent is not None
        agent_pid = stack.agent.pid
        started = time.monotonic()
        env = dict(runtime_env(), PYTHONPATH=runtime_env()["PYTHONPATH"] + os.pathsep + ".")
        results = run_swarms(stack.root, [jobs[n::SWARMS] for n in range(SWARMS)], env)
        elapsed = time.monotonic() - started
        peak = peak_rss_kib(agent_pid)
        good = [r for r in results if r["kind"] == "good"]
        failed = [
            r for r in good if not r["ok"] or r["sha256"] != sample_bundle(r["name"]).digest()
        ]
        print(
            f"\n{len(good)} good guests served in {elapsed:.1f} s, "
            f"{len(results) - len(good)} hostile; agent peak RSS {peak / 1024:.1f} MiB"
        )
        assert not failed, failed[:5]
        assert len(good) == DOMAINS - DOMAINS // HOSTILE_EVERY
        assert peak < MEMORY_CEILING_KIB
        # Each good guest's delivery is on record under its own domain only.
        for r in good[:: max(1, len(good) // 25)]:
            state = stack.wait_state(r["name"], lambda s: bool(s.get("delivered")))
            assert state["delivered"]["sha256"] == sample_bundle(r["name"]).digest()
    finally:
        stack.close()
