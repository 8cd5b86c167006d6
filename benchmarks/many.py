"""Section (c): N simulated domains served by one agent, against the
one-process-per-domain baseline (CloudStack's patchviasocket.py), in the same run.

Both halves use fresh, unthrottled simulator channels (the point is the dom0 side's
overhead, not the channel's speed) hosted in this process, and the same bundles.

* Agent: one ``python -m xenchannel.dom0 run`` serves all N domains; the guests run in
  4 ``tests.load.swarm`` processes (threads inside), all fetching at once with the full
  protocol (handshake, chunks, digest, ack).
* Baseline: one short-lived Python per domain connects to the domain's socket, sends
  the encoded bundle and closes, with no handshake and no acknowledgement; at most
  ``MAX_CONCURRENT`` run at once.  A few reader threads in this process (poll, not
  select: the fds exceed 1024) read each guest device until the whole bundle is there.
"""

import json
import os
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from testbed.simulator import SimulatorOptions
from xenchannel.guest import ChannelDevice

from .harness import (
    ROOT,
    BenchError,
    Workspace,
    child_env,
    fmt_seconds,
    make_bundle,
    met,
    print_table,
    wait_until,
)

SWARMS = 4
READERS = 4
MAX_CONCURRENT = 200
RSS_TARGET_KIB = 100 * 1024
PHASE_TIMEOUT = 240.0

# What patchviasocket.py does, minus its argument parsing: connect, send, close.
BASELINE_SCRIPT = (
    "import socket, sys\n"
    "with open(sys.argv[2], 'rb') as f:\n"
    "    data = f.read()\n"
    "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
    "s.settimeout(60)\n"
    "s.connect(sys.argv[1])\n"
    "s.sendall(data)\n"
    "s.close()\n"
    # Measurement only: report this process's peak RSS.  (The parent cannot use
    # wait4's ru_maxrss: it includes the parent's own RSS from before the exec.)
    "with open('/proc/self/status') as f:\n"
    "    hwm = [line.split()[1] for line in f if line.startswith('VmHWM:')][0]\n"
    "with open(sys.argv[3], 'a') as f:\n"
    "    f.write(hwm + '\\n')\n"
)


def _names(count: int) -> List[str]:
    return [f"vm{i:04d}" for i in range(count)]


# --------------------------------------------------------------------------- baseline


class _Readers:
    """Reader threads that collect each device's bytes until it holds ``expected``."""

    def __init__(self, devices: List[ChannelDevice], expected: List[bytes]) -> None:
        self.expected = expected
        self.received = [bytearray() for _ in expected]
        self.done_at: List[Optional[float]] = [None] * len(expected)
        self.stop = threading.Event()
        self.errors: List[str] = []
        self.threads = []
        for k in range(READERS):
            group = [(i, devices[i].fd) for i in range(k, len(devices), READERS)]
            thread = threading.Thread(target=self._read, args=(group,), daemon=True)
            self.threads.append(thread)

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _read(self, group: List[Tuple[int, Optional[int]]]) -> None:
        poller = select.poll()
        index_of = {}
        for i, fd in group:
            assert fd is not None
            poller.register(fd, select.POLLIN)
            index_of[fd] = i
        try:
            while index_of and not self.stop.is_set():
                for fd, _ in poller.poll(100):
                    i = index_of[fd]
                    try:
                        data = os.read(fd, 65536)
                    except BlockingIOError:
                        continue
                    buf = self.received[i]
                    buf += data
                    if len(buf) >= len(self.expected[i]):
                        self.done_at[i] = time.monotonic()
                        poller.unregister(fd)
                        del index_of[fd]
        except Exception as exc:
            self.errors.append(repr(exc))

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.stop.set()
        for thread in self.threads:
            thread.join(5.0)


def _spawn(script: str, args: List[str], errlog: str) -> int:
    return os.posix_spawn(
        sys.executable,
        [sys.executable, "-c", script, *args],
        os.environ,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_OPEN, 2, errlog, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600),
        ],
    )


def baseline(count: int) -> Dict[str, Any]:
    ws = Workspace("xcb-c0-")
    devices: List[ChannelDevice] = []
    running: Dict[int, int] = {}  # pid -> domain index
    try:
        options = SimulatorOptions(rate=None)
        setup = time.monotonic()
        expected: List[bytes] = []
        rss_log = os.path.join(ws.root, "baseline.rss")
        jobs: List[List[str]] = []
        for name in _names(count):
            data = make_bundle(name).encode()
            channel = ws.add_raw_channel(name, options)
            path = os.path.join(ws.raw, f"{name}.bin")
            with open(path, "wb") as handle:
                handle.write(data)
            expected.append(data)
            jobs.append([channel.socket_path, path, rss_log])
            devices.append(ChannelDevice.open(channel.device_path, 10.0, 5.0))
        channels = list(ws.channels.values())
        wait_until("the guest opens", lambda: all(c.guest_is_open for c in channels), 60, None)
        setup = time.monotonic() - setup

        readers = _Readers(devices, expected)
        readers.start()
        errlog = os.path.join(ws.root, "baseline.err")
        cpu_sum = 0.0
        failed = 0
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.monotonic()
        deadline = start + PHASE_TIMEOUT

        def reap() -> None:
            nonlocal cpu_sum, failed
            while running:
                try:
                    pid, status, usage = os.wait4(-1, os.WNOHANG)
                except ChildProcessError:
                    return
                if pid == 0:
                    return
                if running.pop(pid, None) is None:
                    continue  # not one of ours
                cpu_sum += usage.ru_utime + usage.ru_stime
                if os.waitstatus_to_exitcode(status) != 0:
                    failed += 1

        for index, args in enumerate(jobs):
            while len(running) >= MAX_CONCURRENT:
                reap()
                if time.monotonic() > deadline:
                    raise BenchError(f"the baseline did not finish within {PHASE_TIMEOUT:g} s")
                time.sleep(0.002)
            running[_spawn(BASELINE_SCRIPT, args, errlog)] = index
        while running and time.monotonic() < deadline:
            reap()
            time.sleep(0.005)
        spawned_all = time.monotonic()
        readers.join(max(1.0, deadline - time.monotonic()))
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if running:
            raise BenchError(f"{len(running)} baseline processes did not exit in time")
        if readers.errors:
            raise BenchError(f"a baseline reader failed: {readers.errors[0]}")
        try:
            with open(rss_log) as handle:
                peaks = [int(line) for line in handle if line.strip()]
        except OSError:
            peaks = []
        complete = [i for i, t in enumerate(readers.done_at) if t is not None]
        correct = sum(1 for i in complete if bytes(readers.received[i]) == expected[i])
        last = max((readers.done_at[i] or start) for i in complete) if complete else start
        return {
            "domains": count,
            "delivered": correct,
            "failed_processes": failed,
            "setup_s": setup,
            "wall_s": last - start,
            "processes_exited_s": spawned_all - start,
            "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
            "cpu_s_wait4_sum": cpu_sum,
            "rss_sum_kib": sum(peaks),
            "rss_max_kib": max(peaks) if peaks else 0,
            "rss_reports": len(peaks),
            "max_concurrent": MAX_CONCURRENT,
        }
    finally:
        for pid in list(running):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass
        for device in devices:
            device.close()
        ws.close()


# --------------------------------------------------------------------------- agent


def with_agent(count: int) -> Dict[str, Any]:
    ws = Workspace("xcb-c1-")
    swarms: List[subprocess.Popen[bytes]] = []
    try:
        options = SimulatorOptions(rate=None)
        setup = time.monotonic()
        names = _names(count)
        digests: Dict[str, str] = {}
        jobs: List[Dict[str, str]] = []
        for name in names:
            bundle = make_bundle(name)
            digests[name] = bundle.digest()
            jobs.append({"name": name, "link": ws.add_domain(name, bundle, options)})
        setup = time.monotonic() - setup
        agent = ws.start_agent()
        connect_s = ws.wait_connected(names, 120.0)
        cpu_ready = agent.cpu_seconds()

        outputs = []
        start = time.monotonic()
        for n in range(SWARMS):
            path = os.path.join(ws.root, f"jobs{n}.json")
            out = os.path.join(ws.root, f"out{n}.json")
            with open(path, "w") as handle:
                json.dump(jobs[n::SWARMS], handle)
            outputs.append(out)
            swarms.append(
                subprocess.Popen(
                    [sys.executable, "-m", "tests.load.swarm", path, out],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    cwd=ROOT,
                    env=child_env(),
                )
            )
        deadline = start + PHASE_TIMEOUT
        for proc in swarms:
            _, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            if proc.returncode != 0:
                tail = err.decode(errors="replace").strip().splitlines()[-3:]
                raise BenchError("a guest swarm failed: " + " | ".join(tail))
        cpu_done = agent.cpu_seconds()
        results: List[Dict[str, Any]] = []
        for out in outputs:
            with open(out) as handle:
                results.extend(json.load(handle))
        good = [r for r in results if r.get("ok") and r.get("sha256") == digests[r["name"]]]
        errors = [r.get("error", "wrong bundle") for r in results if r not in good]
        last = max((r["done"] for r in good), default=start)

        # The agent records deliveries asynchronously (batched writes): wait, bounded.
        def recorded() -> int:
            return sum(
                1
                for name in names
                if (ws.state_of(name).get("delivered") or {}).get("sha256") == digests[name]
            )

        try:
            wait_until("all deliveries recorded", lambda: recorded() == len(good), 30, None)
        except BenchError:
            pass
        in_state = recorded()
        peak = agent.peak_rss_kib()
        agent.check_alive()
        hellos = sorted(r.get("hellos", 0) for r in good)
        return {
            "domains": count,
            "delivered": len(good),
            "delivered_in_state": in_state,
            "errors": errors[:5],
            "setup_s": setup,
            "agent_connect_s": connect_s,
            "wall_s": last - start,
            "cpu_s": cpu_done,
            "cpu_fetch_phase_s": cpu_done - cpu_ready,
            "cpu_startup_and_connect_s": cpu_ready,
            "peak_rss_kib": peak,
            "rss_target_kib": RSS_TARGET_KIB,
            "rss_target_met": peak < RSS_TARGET_KIB,
            "hellos_median": hellos[len(hellos) // 2] if hellos else None,
            "hellos_max": hellos[-1] if hellos else None,
        }
    finally:
        for proc in swarms:
            if proc.poll() is None:
                proc.kill()
                try:
                    proc.communicate(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        ws.close()


# --------------------------------------------------------------------------- section


def _mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def run(count: int) -> Dict[str, Any]:
    section_start = time.monotonic()
    base = baseline(count)
    agent = with_agent(count)
    elapsed = time.monotonic() - section_start

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.3f}" if b else "-"

    rows = [
        [
            "delivered",
            f"{agent['delivered']}/{count} (state files: {agent['delivered_in_state']})",
            f"{base['delivered']}/{count}",
            "-",
        ],
        [
            "wall, guests start .. last delivered",
            fmt_seconds(agent["wall_s"]),
            fmt_seconds(base["wall_s"]),
            ratio(agent["wall_s"], base["wall_s"]),
        ],
        [
            "CPU user+sys (agent: whole life)",
            f"{agent['cpu_s']:.2f} s",
            f"{base['cpu_s']:.2f} s (sum)",
            ratio(agent["cpu_s"], base["cpu_s"]),
        ],
        [
            "  agent CPU: startup+connect / fetch",
            f"{agent['cpu_startup_and_connect_s']:.2f} s / {agent['cpu_fetch_phase_s']:.2f} s",
            "-",
            "-",
        ],
        [
            "memory: peak RSS",
            _mib(agent["peak_rss_kib"]),
            f"{_mib(base['rss_sum_kib'])} (sum; max one {_mib(base['rss_max_kib'])})",
            ratio(agent["peak_rss_kib"], base["rss_sum_kib"]),
        ],
        ["agent RSS target < 100 MiB", met(agent["rss_target_met"]), "-", "-"],
    ]
    print_table(
        f"(c) {count} simulated domains, unthrottled: one agent vs one process per domain "
        f"({elapsed:.1f} s)",
        [
            "",
            "agent (1 process, full protocol)",
            f"baseline (patchviasocket: {count} processes, <= {MAX_CONCURRENT} at once)",
            "agent/baseline",
        ],
        rows,
    )
    print(
        f"    agent connected to all {count} sockets in {agent['agent_connect_s']:.1f} s "
        f"before the guests started; guests: {SWARMS} processes with threads; HELLOs "
        f"per guest median {agent['hellos_median']}, max {agent['hellos_max']}"
    )
    if agent["errors"]:
        print(f"    agent-side failures (first {len(agent['errors'])}): {agent['errors']}")
    if base["failed_processes"]:
        print(f"    baseline processes that exited non-zero: {base['failed_processes']}")
    return {"agent": agent, "baseline": base, "section_seconds": elapsed}
