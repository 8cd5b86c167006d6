"""A whole channel stack for tests: store, channel simulator, dom0 agent, guest client.

The agent runs as a real subprocess (``python -m xenchannel.dom0 run``) so tests can
stop, kill and restart it; the simulator runs in a background thread of the test
process; the guest client runs in the test process or, for old interpreters, as a
subprocess.  Everything lives under one short temporary directory (Unix socket paths
are limited to 107 bytes) and everything is stopped by ``close()``.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Any, Callable, Dict, Optional

from testbed.simulator import SimulatedChannel, SimulatorOptions, SimulatorThread
from xenchannel.dom0.cli import run_command
from xenchannel.dom0.store import write_domain
from xenchannel.guest import ClientConfig, GuestClient
from xenchannel.protocol import Bundle

RUNTIME = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runtime")

# Fast but still bounded client settings for tests.
FAST = ClientConfig(
    wait_timeout=5.0,
    lock_timeout=2.0,
    connect_timeout=10.0,
    hello_interval=0.2,
    hello_max_interval=1.0,
    idle_timeout=2.0,
    transfer_timeout=30.0,
    ack_timeout=2.0,
)


def sample_bundle(name: str = "vm1", user_data: Optional[bytes] = None) -> Bundle:
    return Bundle(
        meta_data={
            "instance-id": f"iid-{name}",
            "local-hostname": name,
            "public-keys": [f"ssh-ed25519 AAAAC3Nza{name} root@{name}"],
        },
        user_data=b"#cloud-config\nhostname: " + name.encode() if user_data is None else user_data,
        network_config={"version": 2, "ethernets": {"eth0": {"dhcp4": True}}},
    )


def runtime_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = RUNTIME + os.pathsep + env.get("PYTHONPATH", "")
    return env


# Kept under this name for the benchmarks, which import it from here.
agent_command = run_command


class Domain:
    def __init__(self, name: str, socket: str, link: str, channel: SimulatedChannel) -> None:
        self.name = name
        self.socket = socket
        self.link = link
        self.channel = channel


class Stack:
    def __init__(self, default_options: Optional[SimulatorOptions] = None) -> None:
        self.root = tempfile.mkdtemp(prefix="xc-", dir="/tmp")
        self.store = os.path.join(self.root, "store")
        self.state = os.path.join(self.root, "state")
        self.run = os.path.join(self.root, "run")
        self.dev = os.path.join(self.root, "dev")
        os.makedirs(self.run, mode=0o700)
        self.control = os.path.join(self.run, "agent.sock")
        self.default_options = default_options or SimulatorOptions(rate=None)
        self.simulator = SimulatorThread()
        self.simulator.__enter__()
        self.agent: Optional[subprocess.Popen[bytes]] = None
        self.agent_log_path = os.path.join(self.root, "agent.log")
        self.domains: Dict[str, Domain] = {}

    # ------------------------------------------------------------ domains
    def add_domain(
        self,
        name: str,
        bundle: Optional[Bundle] = None,
        options: Optional[SimulatorOptions] = None,
        start_channel: bool = True,
    ) -> Domain:
        socket = os.path.join(self.run, f"{name}.sock")
        link = os.path.join(self.dev, name)
        write_domain(self.store, name, socket, bundle or sample_bundle(name))
        channel = None
        if start_channel:
            channel = self.simulator.add_channel(socket, link, options or self.default_options)
        domain = Domain(name, socket, link, channel)  # type: ignore[arg-type]
        self.domains[name] = domain
        return domain

    def start_channel(self, name: str, options: Optional[SimulatorOptions] = None) -> None:
        domain = self.domains[name]
        domain.channel = self.simulator.add_channel(
            domain.socket, domain.link, options or self.default_options
        )

    def stop_channel(self, name: str) -> None:
        """The domain shuts down: QEMU's socket and the guest's device disappear."""
        self.simulator.remove_channel(self.domains[name].channel)

    # ------------------------------------------------------------ agent
    def start_agent(self, *extra: str) -> None:
        assert self.agent is None
        self._agent_log = open(self.agent_log_path, "a")  # noqa: SIM115 - closed in stop_agent
        self.agent = subprocess.Popen(
            agent_command(self.store, self.state, self.run, self.control, "-v", *extra),
            stdout=subprocess.DEVNULL,
            # A file, not a pipe: nobody reads a pipe until the agent stops, and with
            # hundreds of domains its log would fill the pipe and stall the agent.
            stderr=self._agent_log,
            env=runtime_env(),
        )

    def stop_agent(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        assert self.agent is not None
        agent, self.agent = self.agent, None
        agent.send_signal(sig)
        try:
            agent.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait(timeout=5)
            raise AssertionError(f"the agent did not stop within {timeout} s") from None
        finally:
            self._agent_log.close()
        return agent.returncode

    def log(self) -> str:
        """Everything every agent process of this stack has logged so far."""
        try:
            with open(self.agent_log_path) as handle:
                return handle.read()
        except OSError:
            return ""

    # ------------------------------------------------------------ state
    def state_of(self, name: str) -> Dict[str, Any]:
        path = os.path.join(self.state, f"{name}.json")
        try:
            with open(path) as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            return {}
        assert isinstance(data, dict)
        return data

    def wait_state(
        self, name: str, predicate: Callable[[Dict[str, Any]], bool], timeout: float = 10.0
    ) -> Dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            state = self.state_of(name)
            if predicate(state):
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"state of {name} never matched within {timeout} s: {state}")
            time.sleep(0.05)

    # ------------------------------------------------------------ guest
    def client(self, name: str, config: Optional[ClientConfig] = None) -> GuestClient:
        return GuestClient.open(self.domains[name].link, config or FAST)

    def fetch(self, name: str, config: Optional[ClientConfig] = None) -> Bundle:
        with self.client(name, config) as client:
            return client.fetch_bundle()

    def close(self) -> None:
        try:
            if self.agent is not None:
                self.stop_agent()
        finally:
            self.simulator.stop()
            shutil.rmtree(self.root, ignore_errors=True)


def delivered(state: Dict[str, Any]) -> bool:
    return bool(state.get("delivered")) and state["delivered"].get("sha256") == state.get(
        "bundle", {}
    ).get("sha256")


def delivered_count(count: int) -> Callable[[Dict[str, Any]], bool]:
    return lambda state: bool(state.get("delivered")) and state["delivered"].get("count") == count
