"""The main job on the built-in default: one VM's identity over a simulated channel.

``make demo`` runs this.  Nothing here is a mock of the project's own parts: the real
dom0 agent (a separate process) serves a real store entry over the channel simulator
(a Unix socket bridged to a real pty, standing in for QEMU + /dev/hvcN), and the real
guest client (another process, as in a guest) fetches, verifies, acknowledges and
reports status.  Everything lives in a temporary directory and is removed at the end.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import List, Optional

from xenchannel.dom0.cli import run_command
from xenchannel.dom0.store import write_domain
from xenchannel.protocol import Bundle
from xenchannel.simulator import SimulatorOptions, SimulatorThread

DOMAIN = "demo-vm"
CHANNEL = "org.xenchannel.provision.0"

DEMO_USER_DATA = b"""#cloud-config
users:
  - name: ops
    groups: [sudo]
package_update: false
runcmd:
  - [sh, -c, 'echo provisioned over a Xen channel > /etc/motd']
"""


def demo_bundle() -> Bundle:
    return Bundle(
        meta_data={
            "instance-id": "i-demo-0001",
            "local-hostname": "web-01.example.internal",
            "public-keys": [
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDemoKeyOnlyForTheDemo0000000000000 ops@demo"
            ],
        },
        user_data=DEMO_USER_DATA,
        network_config={
            "version": 2,
            "ethernets": {
                "eth0": {
                    "addresses": ["192.0.2.10/24"],
                    "routes": [{"to": "default", "via": "192.0.2.1"}],
                    "nameservers": {"addresses": ["192.0.2.53"]},
                }
            },
        },
    )


def _step(number: int, total: int, text: str) -> None:
    print(f"[{number}/{total}] {text}", flush=True)


def _python() -> List[str]:
    return [sys.executable, "-m"]


def _run(args: List[str], timeout: float) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, check=False, env=_env()
    )


def _env() -> "dict[str, str]":
    env = dict(os.environ)
    runtime = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = runtime + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_demo(rate: Optional[float], workdir: str) -> int:
    store = os.path.join(workdir, "store")
    state = os.path.join(workdir, "state")
    sockets = os.path.join(workdir, "run")
    devices = os.path.join(workdir, "dev", "xen-channel")
    os.makedirs(sockets, mode=0o700)
    socket_path = os.path.join(sockets, f"{DOMAIN}.sock")
    device_link = os.path.join(devices, CHANNEL)
    total = 5
    started = time.monotonic()

    _step(1, total, f"dom0: writing {DOMAIN}'s metadata into the agent's store ({store})")
    bundle = demo_bundle()
    write_domain(store, DOMAIN, socket_path, bundle)

    speed = "unthrottled" if rate is None else f"{rate / 1024:.0f} KiB/s"
    _step(
        2,
        total,
        f"starting the channel simulator: QEMU's socket {socket_path} <-> a pty as the "
        f"guest's /dev/hvc1, linked as {device_link} ({speed}, tty starts cooked with "
        "echo, ModemManager-style AT probes injected)",
    )
    agent: Optional[subprocess.Popen[str]] = None
    with SimulatorThread() as simulator:
        simulator.add_channel(
            socket_path,
            device_link,
            SimulatorOptions(rate=rate, echo=True, garbage="to_host", garbage_seed=1),
        )

        _step(3, total, "dom0: starting the dom0 agent (serves every domain in the store)")
        agent = subprocess.Popen(
            run_command(store, state, sockets, os.path.join(sockets, "agent.sock")),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        try:
            _step(4, total, f"guest: fetching its identity over {device_link}")
            fetched = _run(
                [
                    *_python(),
                    "xenchannel.guest",
                    "--device",
                    device_link,
                    "--connect-timeout",
                    "20",
                    "fetch",
                    "--show-user-data",
                ],
                timeout=60,
            )
            if fetched.returncode != 0:
                print(fetched.stderr, file=sys.stderr)
                return 1
            received = json.loads(fetched.stdout)
            _print_received(received)

            _step(5, total, "guest: reporting 'applied' to dom0; the agent's status table:")
            reported = _run(
                [
                    *_python(),
                    "xenchannel.guest",
                    "--device",
                    device_link,
                    "status",
                    "applied",
                    "--instance-id",
                    str(received["meta-data"]["instance-id"]),
                ],
                timeout=30,
            )
            if reported.returncode != 0:
                print(reported.stderr, file=sys.stderr)
                return 1
            status = _wait_for_status(state)
            print(status.stdout, end="")
        finally:
            agent.send_signal(signal.SIGTERM)
            try:
                _, agent_log = agent.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                agent.kill()
                _, agent_log = agent.communicate(timeout=5)
    print("\ndom0 agent log:")
    for line in agent_log.splitlines():
        print("  " + line)
    print(f"\ndone in {time.monotonic() - started:.1f} s")
    return 0 if agent.returncode == 0 else 1


def _wait_for_status(state: str) -> "subprocess.CompletedProcess[str]":
    """The agent flushes state within a fraction of a second; wait for 'applied'."""
    deadline = time.monotonic() + 10
    while True:
        status = _run([*_python(), "xenchannel.dom0", "status", "--state", state], timeout=30)
        if "applied" in status.stdout or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def _print_received(received: "dict[str, object]") -> None:
    meta = received["meta-data"]
    assert isinstance(meta, dict)
    print(f"      the guest received and verified (sha256 {received['sha256']}):")
    print(f"        instance-id     {meta.get('instance-id')}")
    print(f"        local-hostname  {meta.get('local-hostname')}")
    for key in meta.get("public-keys", []):
        print(f"        public key      {key[:60]}...")
    print("        network-config  " + json.dumps(received["network-config"]))
    user_data = received["user-data"]
    print("        user-data:")
    for line in str(user_data).splitlines():
        print("          | " + line)
    handshake = received.get("handshake")
    if isinstance(handshake, dict):
        print(
            f"        (protocol version {handshake.get('version')}, "
            f"{handshake.get('hellos')} HELLO(s) before the agent answered)"
        )


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rate",
        type=float,
        default=256000.0,
        help="simulated channel speed in bytes/s (default: 250 KiB/s as measured on Xen)",
    )
    parser.add_argument("--unthrottled", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    # Short path: Unix socket paths are limited to 107 bytes.
    workdir = tempfile.mkdtemp(prefix="xc-demo-", dir="/tmp")
    try:
        return run_demo(None if args.unthrottled else args.rate, workdir)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
