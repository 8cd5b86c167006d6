"""Plumbing shared by the benchmark sections: temp dirs, the agent process, bundles,
statistics and tables.  Every wait here is bounded."""

import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, Optional, Sequence

from testbed.simulator import SimulatedChannel, SimulatorOptions, SimulatorThread
from testbed.stack import agent_command
from xenchannel.dom0.store import write_domain
from xenchannel.guest import ClientConfig
from xenchannel.protocol import Bundle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNTIME = os.path.join(ROOT, "runtime")
KIB = 1024
MIB = 1024 * 1024

# Generous bounds: a benchmark should report slowness, not fail on it.
GUEST_CONFIG = ClientConfig(
    wait_timeout=10.0,
    lock_timeout=5.0,
    connect_timeout=30.0,
    idle_timeout=30.0,
    transfer_timeout=120.0,
    ack_timeout=10.0,
)


class BenchError(Exception):
    """A benchmark could not produce its figures (the reason is one sentence)."""


# --------------------------------------------------------------------------- env


def child_env() -> Dict[str, str]:
    """Environment for child Pythons: the runtime and the repository on the path."""
    env = dict(os.environ)
    parts = [RUNTIME, ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def check_agent_cli(timeout: float = 30.0) -> None:
    """Raise BenchError unless ``python -m xenchannel.dom0 run --help`` works."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "xenchannel.dom0", "run", "--help"],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=child_env(),
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(
            f"the dom0 agent's CLI did not answer --help within {timeout:g} s"
        ) from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise BenchError("the dom0 agent's CLI is not usable: " + " | ".join(tail))


# --------------------------------------------------------------------------- bundles


def make_bundle(name: str, size: Optional[int] = None, seed: int = 0) -> Bundle:
    """A valid bundle for ``name``; with ``size``, user-data of random bytes makes the
    encoded bundle exactly ``size`` bytes (when size allows)."""
    meta = {
        "instance-id": f"iid-{name}",
        "local-hostname": name,
        "public-keys": [f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA{name} root@{name}"],
    }
    network = {"version": 2, "ethernets": {"eth0": {"dhcp4": True}}}
    if size is None:
        user_data = b"#cloud-config\nhostname: " + name.encode() + b"\n"
        return Bundle(meta_data=meta, user_data=user_data, network_config=network)
    rng = random.Random(f"{seed}-{name}-{size}")  # reproducible filler
    user_len = max(0, size - len(Bundle(meta, b"", None, network).encode()))
    for _ in range(3):  # the index grows by a digit or two with the user-data length
        bundle = Bundle(meta, rng.randbytes(user_len), None, network)
        excess = len(bundle.encode()) - size
        if excess == 0 or user_len == 0:
            break
        user_len = max(0, user_len - excess)
    return bundle


# --------------------------------------------------------------------------- agent


def proc_status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {key}")


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a live process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    # After "pid (comm)": state is field 3, so utime (14) and stime (15) are at 11, 12.
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


class Agent:
    """The dom0 agent as a subprocess, its log in a file (a pipe could fill and stall it)."""

    def __init__(self, root: str, store: str, state: str, socket_root: str) -> None:
        self.root = root
        self.store = store
        self.state = state
        self.socket_root = socket_root
        self.log_path = os.path.join(root, "agent.log")
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.started_at = 0.0

    def start(self) -> None:
        control = os.path.join(self.socket_root, "agent.ctl")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                agent_command(self.store, self.state, self.socket_root, control),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=child_env(),
            )
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError("the agent is not running")
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(
                f"the dom0 agent exited with {self.proc.returncode}: {self.log_tail()}"
            )

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def peak_rss_kib(self) -> int:
        return proc_status_kib(self.pid, "VmHWM")

    def log_tail(self, lines: int = 5) -> str:
        try:
            with open(self.log_path, errors="replace") as handle:
                return " | ".join(handle.read().strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_until(
    what: str,
    predicate: Callable[[], bool],
    timeout: float,
    check: Optional[Callable[[], None]],
    interval: float = 0.01,
) -> float:
    """Poll ``predicate`` every ``interval`` s until true; returns seconds waited, raises
    BenchError at timeout."""
    start = time.monotonic()
    deadline = start + timeout
    while not predicate():
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise BenchError(f"{what} did not happen within {timeout:g} s")
        time.sleep(interval)
    return time.monotonic() - start


# --------------------------------------------------------------------------- stack


class Workspace:
    """A short temp dir (Unix socket paths are limited to 107 bytes), a simulator
    thread, a store and (optionally) an agent; ``close()`` removes all of it."""

    def __init__(self, prefix: str) -> None:
        self.root = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
        self.store = os.path.join(self.root, "store")
        self.state = os.path.join(self.root, "state")
        self.run = os.path.join(self.root, "run")
        self.dev = os.path.join(self.root, "dev")
        self.raw = os.path.join(self.root, "raw")
        for path in (self.run, self.dev, self.raw):
            os.makedirs(path, mode=0o700)
        self.simulator = SimulatorThread(timeout=30.0)
        self.simulator.start()
        self.agent: Optional[Agent] = None
        self.channels: Dict[str, SimulatedChannel] = {}

    def add_domain(self, name: str, bundle: Bundle, options: SimulatorOptions) -> str:
        """Store entry + channel; returns the guest device link."""
        sock = os.path.join(self.run, f"{name}.sock")
        link = os.path.join(self.dev, name)
        write_domain(self.store, name, sock, bundle)
        self.channels[name] = self.simulator.add_channel(sock, link, options)
        return link

    def add_raw_channel(self, name: str, options: SimulatorOptions) -> SimulatedChannel:
        """A channel outside the store and the agent's socket root."""
        channel = self.simulator.add_channel(os.path.join(self.raw, f"{name}.sock"), None, options)
        self.channels["raw:" + name] = channel
        return channel

    def start_agent(self) -> Agent:
        self.agent = Agent(self.root, self.store, self.state, self.run)
        self.agent.start()
        return self.agent

    def wait_connected(self, names: Sequence[str], timeout: float) -> float:
        channels = [self.channels[n] for n in names]
        agent = self.agent
        return wait_until(
            f"the agent connecting to {len(channels)} channel(s)",
            lambda: all(c.host_is_connected for c in channels),
            timeout,
            agent.check_alive if agent is not None else None,
        )

    def state_of(self, name: str) -> Dict[str, Any]:
        try:
            with open(os.path.join(self.state, f"{name}.json")) as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def close(self) -> None:
        try:
            if self.agent is not None:
                self.agent.stop()
        finally:
            try:
                self.simulator.stop()
            finally:
                shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------- figures


def spread(values: Sequence[float]) -> Dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def fmt_seconds(value: float) -> str:
    if value < 0.01:
        return f"{value * 1000:.2f} ms"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"


def fmt_spread(s: Dict[str, float], fmt: Callable[[float], str] = fmt_seconds) -> str:
    return f"{fmt(s['median'])} [{fmt(s['min'])} .. {fmt(s['max'])}]"


def fmt_rate(bytes_per_s: float) -> str:
    return f"{bytes_per_s / KIB:.1f} KiB/s"


def fmt_size(n: float) -> str:
    if n >= MIB:
        return f"{n / MIB:.2f} MiB"
    if n >= KIB:
        return f"{n / KIB:.1f} KiB"
    return f"{n:.0f} B"


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(cells[0], widths)))
    print(line)
    for row in cells[1:]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    sys.stdout.flush()
