"""The in-guest agent end to end: channel simulator, live dom0 agent, sandboxed guest.

Every run of ``python -m xenchannel.guest.agent`` is a subprocess inside
``unshare --mount --uts --net --ipc --pid --fork --kill-child`` with ``--root`` at a
throwaway root directory and ``--set-live-hostname``: the hostname it sets stays in the
namespace (the machine's own hostname is checked after every test), and no file of this
machine is touched.  The channel device (a pty behind a symlink in the stack's temporary
directory) is reachable inside, since the mount namespace starts as a copy.

A bundle failing its digest never reaches the agent: ``GuestClient`` refetches it
(tests/integration/test_guest_client.py, test_bad_digest_refetches_from_the_start).
"""

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import pytest

from testbed.simulator import SimulatorOptions
from testbed.stack import Stack, runtime_env
from tests.guest_root import (
    ALICE,
    HOST_KEY,
    IFUPDOWN_V1,
    IFUPDOWN_V2,
    NETWORKD_ETH0,
    NETWORKD_MGMT,
    NETWORKD_V1,
    TEMPLATE_HOSTS,
    USER_KEY,
    V1_STATIC,
    V2_STATIC,
    make_root,
    write,
)
from xenchannel.dom0.state import readiness
from xenchannel.dom0.store import write_domain
from xenchannel.guest import agent as guest_agent
from xenchannel.guest.apply import keys as keys_step
from xenchannel.protocol import Bundle

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UNIT = os.path.join(REPO, "runtime", "systemd", "xenchannel-guest-agent.service")
MACHINE_HOSTNAME = socket.gethostname()
LIVE_BEFORE = "template-live"  # what the sandbox's hostname is before the agent runs


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def stack():
    s = Stack()
    s.start_agent()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def machine_hostname_unchanged():
    yield
    assert socket.gethostname() == MACHINE_HOSTNAME


def bundle(
    iid: str,
    hostname: str = "web1.example.com",
    keys: Any = None,
    network: Optional[Dict[str, Any]] = None,
    user_data: Optional[bytes] = None,
) -> Bundle:
    meta: Dict[str, Any] = {"instance-id": iid, "local-hostname": hostname}
    meta["public-keys"] = (
        {"ops": ["ssh-ed25519 AAAAC3NzaKEY1 ops@a", "ssh-ed25519 AAAAC3NzaKEY2 ops@b"]}
        if keys is None
        else keys
    )
    return Bundle(
        meta_data=meta,
        user_data=user_data,
        network_config=V2_STATIC if network is None else network,
    )


def read(path: str) -> str:
    with open(path) as handle:
        return handle.read()


class Run:
    def __init__(self, returncode: int, log: str, live_hostname: str) -> None:
        self.returncode = returncode
        self.log = log
        self.live_hostname = live_hostname


def sandbox(root: str, argv: List[str]) -> List[str]:
    """``argv`` in fresh namespaces; afterwards the namespace's hostname goes to a file."""
    script = 'hostname "$1"; shift; "$@"; rc=$?; hostname > "$0"; exit $rc'
    return [
        "unshare", "--mount", "--uts", "--net", "--ipc", "--pid", "--fork", "--kill-child",
        "--", "sh", "-c", script, root + ".live-hostname", LIVE_BEFORE, *argv,
    ]  # fmt: skip


def agent_argv(link: str, root: str, *extra: str, python: Optional[List[str]] = None) -> List[str]:
    return [
        *(python or [sys.executable]),
        "-m",
        "xenchannel.guest.agent",
        "--device",
        link,
        "--root",
        root,
        "--set-live-hostname",
        "--wait-timeout",
        "5",
        "--connect-timeout",
        "10",
        *extra,
    ]


def run_agent(
    stack: Stack,
    name: str,
    root: str,
    *extra: str,
    python: Optional[List[str]] = None,
    timeout: float = 30,
    env: Optional[Dict[str, str]] = None,
) -> Run:
    argv = agent_argv(stack.domains[name].link, root, "--once", *extra, python=python)
    done = subprocess.run(
        sandbox(root, argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or runtime_env(),
        check=False,
    )
    live = read(root + ".live-hostname").strip() if os.path.exists(root + ".live-hostname") else ""
    return Run(done.returncode, done.stderr, live)


def status_of(stack: Stack, name: str, state: str) -> Dict[str, Any]:
    found = stack.wait_state(name, lambda s: s.get("status", {}).get("state") == state)
    status = found["status"]
    assert isinstance(status, dict)
    return status


def mtimes(root: str) -> Dict[str, int]:
    """Every file and directory under ``root`` (dot files too) with its mtime."""
    found = {}
    for base, dirs, files in os.walk(root):
        for entry in dirs + files:
            path = os.path.join(base, entry)
            found[path] = os.lstat(path).st_mtime_ns
    return found


def wait_status(
    stack: Stack, name: str, predicate: Callable[[Dict[str, Any]], bool]
) -> Dict[str, Any]:
    found = stack.wait_state(name, lambda s: predicate(s.get("status") or {}))
    status = found["status"]
    assert isinstance(status, dict)
    return status


def record(root: str) -> Dict[str, Any]:
    data = json.loads(read(f"{root}/var/lib/xenchannel/applied.json"))
    assert isinstance(data, dict)
    return data


def mode_owner(path: str) -> Any:
    st = os.stat(path)
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


# ---------------------------------------------------------------- first boot


def test_first_boot_applies_everything(stack: Stack, tmp_path: Any) -> None:
    stack.add_domain("ga-first", bundle("iid-first"))
    root = make_root(tmp_path)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = str(tmp_path / "notify.sock")
    notify.bind(notify_path)
    env = runtime_env()
    env["NOTIFY_SOCKET"] = notify_path
    with notify:
        run = run_agent(stack, "ga-first", root, "--user", "alice", env=env)
        assert run.returncode == 0, run.log
        notify.settimeout(1)
        assert b"READY=1" in notify.recv(4096)

    assert read(f"{root}/etc/hostname") == "web1\n"
    assert read(f"{root}/etc/hosts") == TEMPLATE_HOSTS.replace(
        "127.0.1.1\ttemplate", "127.0.1.1\tweb1.example.com web1"
    )
    assert run.live_hostname == "web1"

    keys = read(f"{root}/home/alice/.ssh/authorized_keys")
    assert keys == (
        f"{USER_KEY}\n{keys_step.BEGIN}\nssh-ed25519 AAAAC3NzaKEY1 ops@a\n"
        f"ssh-ed25519 AAAAC3NzaKEY2 ops@b\n{keys_step.END}\n"
    )
    assert mode_owner(f"{root}/home/alice/.ssh") == (0o700, *ALICE)
    assert mode_owner(f"{root}/home/alice/.ssh/authorized_keys") == (0o600, *ALICE)

    net = f"{root}/etc/systemd/network"
    assert sorted(os.listdir(net)) == ["10-xenchannel-eth0.network", "10-xenchannel-mgmt.network"]
    assert read(f"{net}/10-xenchannel-eth0.network") == NETWORKD_ETH0
    assert read(f"{net}/10-xenchannel-mgmt.network") == NETWORKD_MGMT
    assert mode_owner(f"{net}/10-xenchannel-eth0.network") == (0o644, 0, 0)

    rec = record(root)
    assert rec["instance-id"] == "iid-first"
    assert rec["sha256"] == bundle("iid-first").digest()
    assert rec["applied"]["ssh-keys"] == {
        "user": "alice",
        "count": 2,
        "file": "/home/alice/.ssh/authorized_keys",
    }
    assert mode_owner(f"{root}/var/lib/xenchannel/applied.json")[0] == 0o600
    assert mode_owner(f"{root}/var/lib/xenchannel")[0] == 0o700

    status = status_of(stack, "ga-first", "applied")
    assert status["instance_id"] == "iid-first"
    assert not status.get("mismatch")
    # One line per step, and never key material.
    for line in ("hostname: web1", "ssh-keys: 2 managed key(s)", "network: networkd"):
        assert line in run.log
    assert "AAAAC3Nza" not in run.log
    assert not glob.glob(f"{root}/**/*.xenchannel-new", recursive=True)


def test_same_instance_applies_nothing_and_a_new_one_applies_again(
    stack: Stack, tmp_path: Any
) -> None:
    stack.add_domain("ga-boots", bundle("iid-boots-1", keys="ssh-ed25519 AAAAC3NzaOLD old@x"))
    root = make_root(tmp_path)
    assert run_agent(stack, "ga-boots", root).returncode == 0
    status_of(stack, "ga-boots", "applied")
    before = mtimes(root)
    applied_at = record(root)["applied-at"]

    time.sleep(0.05)
    second = run_agent(stack, "ga-boots", root)
    assert second.returncode == 0, second.log
    assert "applying nothing" in second.log
    assert mtimes(root) == before
    assert second.live_hostname == LIVE_BEFORE  # not even the running hostname was set
    status = wait_status(stack, "ga-boots", lambda s: s.get("reason") == "already applied")
    assert status["state"] == "applied"
    assert stack.state_of("ga-boots")["delivered"]["count"] == 2

    # A new clone: new instance-id, hostname, keys and no network-config.
    new = Bundle(
        meta_data={
            "instance-id": "iid-boots-2",
            "local-hostname": "web2",
            "public-keys": ["ssh-ed25519 AAAAC3NzaNEW new@x"],
        }
    )
    write_domain(stack.store, "ga-boots", stack.domains["ga-boots"].socket, new)
    stack.wait_state("ga-boots", lambda s: s.get("bundle", {}).get("instance_id") == "iid-boots-2")
    third = run_agent(stack, "ga-boots", root)
    assert third.returncode == 0, third.log
    assert read(f"{root}/etc/hostname") == "web2\n"
    assert "127.0.1.1\tweb2\n" in read(f"{root}/etc/hosts")
    keys = read(f"{root}/root/.ssh/authorized_keys")
    assert "AAAAC3NzaNEW" in keys
    assert "AAAAC3NzaOLD" not in keys
    # What the agent rendered mirrors the instance: no network-config, no files.
    assert os.listdir(f"{root}/etc/systemd/network") == []
    assert record(root)["instance-id"] == "iid-boots-2"
    assert record(root)["applied-at"] >= applied_at
    status = wait_status(stack, "ga-boots", lambda s: s.get("instance_id") == "iid-boots-2")
    assert status["state"] == "applied"


@pytest.mark.parametrize(
    ("kind", "config", "expected"),
    [
        pytest.param("networkd", V1_STATIC, NETWORKD_V1, id="v1-networkd"),
        pytest.param("ifupdown", V1_STATIC, {"xenchannel": IFUPDOWN_V1}, id="v1-ifupdown"),
        pytest.param("ifupdown", V2_STATIC, {"xenchannel": IFUPDOWN_V2}, id="v2-ifupdown-mac"),
    ],
)
def test_network_rendered_for_each_stack(
    stack: Stack, tmp_path: Any, kind: str, config: Dict[str, Any], expected: Dict[str, str]
) -> None:
    name = f"ga-net-{kind}-{len(stack.domains)}"
    stack.add_domain(name, bundle(f"iid-{name}", network=config))
    root = make_root(tmp_path, kind)
    run = run_agent(stack, name, root)
    assert run.returncode == 0, run.log
    where = (
        f"{root}/etc/systemd/network" if kind == "networkd" else f"{root}/etc/network/interfaces.d"
    )
    assert {f: read(os.path.join(where, f)) for f in os.listdir(where)} == expected
    status_of(stack, name, "applied")


# ---------------------------------------------------------------- failures and rollback


def test_unrenderable_network_config_applies_nothing(stack: Stack, tmp_path: Any) -> None:
    bond = {
        "version": 2,
        "ethernets": {"eth0": {}, "eth1": {}},
        "bonds": {"bond0": {"interfaces": ["eth0", "eth1"], "addresses": ["192.0.2.9/24"]}},
    }
    stack.add_domain("ga-bond", bundle("iid-bond", network=bond))
    root = make_root(tmp_path)
    before = mtimes(root)
    run = run_agent(stack, "ga-bond", root, "--user", "alice")
    assert run.returncode == 1
    assert mtimes(root) == before
    assert read(f"{root}/etc/hostname") == "template\n"
    assert read(f"{root}/home/alice/.ssh/authorized_keys") == USER_KEY + "\n"
    assert run.live_hostname == LIVE_BEFORE
    assert not os.path.exists(f"{root}/var/lib/xenchannel/applied.json")
    status = status_of(stack, "ga-bond", "failed")
    assert "bonds (bond0)" in status["reason"]
    assert status["reason"].endswith("nothing was changed")
    assert status["instance_id"] == "iid-bond"


def test_a_step_failing_while_writing_rolls_back_the_earlier_steps(
    stack: Stack, tmp_path: Any
) -> None:
    stack.add_domain("ga-rollback", bundle("iid-rollback", network=V1_STATIC))
    root = make_root(tmp_path, "ifupdown", alice_keys=False)
    # The network step can plan, but its directory cannot take files: it fails only
    # after hostname and ssh-keys were written.
    os.rmdir(f"{root}/etc/network/interfaces.d")
    write(f"{root}/etc/network/interfaces.d", "not a directory\n")
    old_hosts = read(f"{root}/etc/hosts")
    run = run_agent(stack, "ga-rollback", root, "--user", "alice")
    assert run.returncode == 1, run.log
    assert "hostname: web1" in run.log  # it was applied, then rolled back
    assert read(f"{root}/etc/hostname") == "template\n"
    assert read(f"{root}/etc/hosts") == old_hosts
    assert not os.path.exists(f"{root}/home/alice/.ssh")  # created, then removed again
    assert run.live_hostname == LIVE_BEFORE
    assert not os.path.exists(f"{root}/var/lib/xenchannel/applied.json")
    reason = status_of(stack, "ga-rollback", "failed")["reason"]
    assert "/etc/network/interfaces.d" in reason
    assert "hostname, ssh-keys rolled back" in reason


def test_device_never_appearing_is_a_clear_bounded_failure(tmp_path: Any) -> None:
    root = make_root(tmp_path)
    device = str(tmp_path / "dev" / "xen-channel" / "org.xenchannel.provision.0")
    start = time.monotonic()
    done = subprocess.run(
        sandbox(root, agent_argv(device, root, "--once", "--wait-timeout", "1")),
        capture_output=True,
        text=True,
        timeout=20,
        env=runtime_env(),
        check=False,
    )
    assert time.monotonic() - start < 10
    assert done.returncode == 1
    assert f"{device} did not appear within 1 s" in done.stderr
    assert read(f"{root}/etc/hostname") == "template\n"


@pytest.mark.parametrize(
    ("device", "problem"),
    [
        pytest.param(
            "/dev/xen-channel/org." + "a" * 123 + ".0",
            "is 129 characters long, over the 128 a channel name may have",
            id="too-long",
        ),
        pytest.param(
            "/dev/xen-channel/My-Channel",
            "is not a versioned reverse domain name",
            id="not-reverse-dns",
        ),
        pytest.param(
            "/dev/virtio-ports/org.example", "is not a versioned reverse domain", id="virtio"
        ),
    ],
)
def test_a_device_named_against_the_channel_name_rule_is_refused_at_once(
    tmp_path: Any, device: str, problem: str
) -> None:
    """udev never links such a name (the one rule, xenchannel.channel_name), so the agent
    says so instead of waiting for a device that cannot come."""
    root = make_root(tmp_path)
    start = time.monotonic()
    done = subprocess.run(
        agent_argv(device, root, "--once", "--wait-timeout", "30"),
        capture_output=True,
        text=True,
        timeout=20,
        env=runtime_env(),
        check=False,
    )
    assert time.monotonic() - start < 10
    assert done.returncode == 2, done.stderr
    name = os.path.basename(device)
    assert f"--device {device}: the channel name {name!r} {problem}" in done.stderr
    assert "so udev never makes that link" in done.stderr


# ---------------------------------------------------------------- the channel


def test_garbage_and_echo_on_the_channel(stack: Stack, tmp_path: Any) -> None:
    options = SimulatorOptions(
        rate=None, echo=True, garbage="both", garbage_interval=0.005, garbage_seed=11
    )
    stack.add_domain("ga-noisy", bundle("iid-noisy"), options=options)
    root = make_root(tmp_path)
    run = run_agent(stack, "ga-noisy", root)
    assert run.returncode == 0, run.log
    assert record(root)["sha256"] == bundle("iid-noisy").digest()
    assert read(f"{root}/etc/systemd/network/10-xenchannel-eth0.network") == NETWORKD_ETH0
    status_of(stack, "ga-noisy", "applied")


def test_device_appearing_late(stack: Stack, tmp_path: Any) -> None:
    stack.add_domain("ga-late", bundle("iid-late"), start_channel=False)
    root = make_root(tmp_path)
    argv = agent_argv(stack.domains["ga-late"].link, root, "--once")
    with subprocess.Popen(
        sandbox(root, argv), stderr=subprocess.PIPE, text=True, env=runtime_env()
    ) as agent:
        time.sleep(1.0)
        assert agent.poll() is None  # still waiting for the device
        stack.start_channel("ga-late")
        _, log = agent.communicate(timeout=30)
    assert agent.returncode == 0, log
    assert read(f"{root}/etc/hostname") == "web1\n"
    assert status_of(stack, "ga-late", "applied")["instance_id"] == "iid-late"


def test_user_script_runs_once_per_instance(stack: Stack, tmp_path: Any) -> None:
    script = (
        b'#!/bin/sh\necho "run $XENCHANNEL_INSTANCE_ID" >> "$XENCHANNEL_ROOT/script-runs"\n'
        b"echo some output\n"
    )
    stack.add_domain("ga-script", bundle("iid-script-1", user_data=script))
    root = make_root(tmp_path)
    for _ in range(2):
        run = run_agent(stack, "ga-script", root)
        assert run.returncode == 0, run.log
    assert read(f"{root}/script-runs") == "run iid-script-1\n"
    log = f"{root}/var/lib/xenchannel/user-data-script.log"
    assert read(log) == "some output\n"
    assert mode_owner(log)[0] == 0o600
    assert record(root)["applied"]["user-script"]["exit-status"] == 0
    assert "some output" not in run.log and "XENCHANNEL" not in run.log

    failing = b'#!/bin/sh\necho run >> "$XENCHANNEL_ROOT/script-runs"\nexit 3\n'
    write_domain(
        stack.store,
        "ga-script",
        stack.domains["ga-script"].socket,
        bundle("iid-script-2", user_data=failing),
    )
    stack.wait_state(
        "ga-script", lambda s: s.get("bundle", {}).get("instance_id") == "iid-script-2"
    )
    run = run_agent(stack, "ga-script", root)
    assert run.returncode == 1
    assert read(f"{root}/script-runs") == "run iid-script-1\nrun\n"
    assert "exited with status 3" in status_of(stack, "ga-script", "failed")["reason"]
    # Once per instance even when it failed: the next boot does not run it again.
    assert run_agent(stack, "ga-script", root).returncode == 1
    assert read(f"{root}/script-runs") == "run iid-script-1\nrun\n"


# ---------------------------------------------------------------- queries


def query(stack: Stack, name: str, what: str) -> Dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        done = subprocess.run(
            [sys.executable, "-m", "xenchannel.dom0", "query", name, "--what", what,
             "--timeout", "5", "--control-socket", stack.control],
            capture_output=True, text=True, timeout=30, env=runtime_env(), check=False,
        )  # fmt: skip
        if done.returncode == 0:
            reply = json.loads(done.stdout)
            assert isinstance(reply, dict)
            return reply
        if time.monotonic() > deadline:
            raise AssertionError(f"query never answered: {done.stderr}")
        time.sleep(0.3)


class Serving:
    """The agent answering queries for up to 60 s, its log in a file."""

    def __init__(self, stack: Stack, name: str, root: str, *extra: str) -> None:
        # The agent is PID 1 of its namespace, with no shell around it, so that a
        # SIGTERM sent to it reaches its handler.
        argv = agent_argv(stack.domains[name].link, root, "--serve", "60", *extra)
        self.log_path = root + ".agent.log"
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                ["unshare", "--mount", "--uts", "--net", "--ipc", "--pid", "--fork",
                 "--kill-child", "--", *argv],
                stderr=log, env=runtime_env(),
            )  # fmt: skip

    def log(self) -> str:
        return read(self.log_path)

    def wait_log(self, text: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            assert self.process.poll() is None, self.log()
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.05)

    def agent_uid(self) -> int:
        """The real uid of the agent process (unshare's child), from /proc."""
        pid = self.process.pid
        child = read(f"/proc/{pid}/task/{pid}/children").split()[0]
        for line in read(f"/proc/{child}/status").splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
        raise AssertionError("no Uid line")

    def stop(self) -> str:
        """SIGTERM to the agent itself (unshare's child): it must exit 0 at once."""
        if self.process.poll() is None:
            pid = self.process.pid
            children = read(f"/proc/{pid}/task/{pid}/children").split()
            assert children, "unshare has no child"
            os.kill(int(children[0]), signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(timeout=5)
        assert self.process.returncode == 0, self.log()
        return self.log()


def test_query_answered_while_serving(stack: Stack, tmp_path: Any) -> None:
    stack.add_domain("ga-query", bundle("iid-query"))
    root = make_root(tmp_path)
    agent = Serving(stack, "ga-query", root, "--serve-user", "nobody")
    try:
        agent.wait_log("queries: answering")
        # Applying needed root; answering queries for the guest's lifetime does not.
        assert agent.agent_uid() == pwd.getpwnam("nobody").pw_uid
        reply = query(stack, "ga-query", "version,instance-id,uptime,hostname,applied-at,bogus")
    finally:
        log = agent.stop()
    status_of(stack, "ga-query", "applied")
    assert reply["version"] == "0.1.0"
    assert reply["instance-id"] == "iid-query"
    assert isinstance(reply["uptime"], float) and reply["uptime"] > 0
    assert reply["hostname"] == "web1"  # the sandbox's live hostname
    assert reply["applied-at"] == record(root)["applied-at"]
    assert reply["bogus"] is None
    assert "queries: answered 1" in log


def test_a_query_is_answered_within_dom0s_timeout_whatever_it_asks(tmp_path: Any) -> None:
    """A hanging ``cloud-init status`` gets what is left of the answer's budget less what
    the report still needs, not its own 4 s: together they stay under dom0's 5 s query
    timeout.  A key asked many times is answered once."""
    root = make_root(tmp_path)
    write(f"{root}/usr/bin/cloud-init", "#!/bin/sh\nexec sleep 30\n", 0o755)
    args = guest_agent.make_parser().parse_args(["--root", root])
    handler = guest_agent.Agent(args, guest_agent.Stopper())
    reply = handler.answer(["cloud-init"] + ["report"] * 1000)
    assert sorted(reply) == ["cloud-init", "report"]
    error = reply["cloud-init"]["error"]
    seconds = float(error.split("longer than ")[1].split(" s")[0])
    budget = guest_agent.ANSWER_BUDGET - guest_agent.facts.IP_TIMEOUT
    assert 0.5 <= seconds <= budget, error
    assert reply["report"]["host_keys"] == [HOST_KEY]


def test_beside_cloud_init_applies_nothing_and_serves_queries(stack: Stack, tmp_path: Any) -> None:
    stack.add_domain("ga-cloud", bundle("iid-cloud"))
    root = make_root(tmp_path)
    write(
        f"{root}/usr/bin/cloud-init",
        '#!/bin/sh\necho \'{"status": "done", "errors": []}\'\n',
        0o755,
    )
    result = {"v1": {"errors": [], "recoverable_errors": {"WARNING": ["no route"]}}}
    write(f"{root}/run/cloud-init/result.json", json.dumps(result))
    write(f"{root}/var/lib/cloud/data/instance-id", "iid-cloud\n")
    before = mtimes(root)
    agent = Serving(stack, "ga-cloud", root)
    try:
        agent.wait_log("queries: answering")
        reply = query(stack, "ga-cloud", "cloud-init,instance-id,version,report")
    finally:
        log = agent.stop()
    assert reply["cloud-init"] == {"status": "done", "errors": []}
    assert reply["instance-id"] == "iid-cloud"
    report = reply["report"]
    assert report["cloud_init"] == "degraded"
    assert report["recoverable_errors"] == ["WARNING: no route"]
    assert report["hostname"] == MACHINE_HOSTNAME  # the sandbox's, as the agent sees it
    assert report["host_keys"] == [HOST_KEY]
    assert [(i["name"], i["mac"]) for i in report["interfaces"]] == [
        ("ens5", "52:54:00:12:34:56"),
        ("eth0", "52:54:00:00:00:01"),
    ]
    assert "SECRET" not in json.dumps(reply)
    assert "cloud-init is installed and enabled" in log
    assert mtimes(root) == before
    state = stack.state_of("ga-cloud")
    assert "delivered" not in state and "status" not in state

    # Disabled the way cloud-init's generator honours: the agent applies again.
    write(f"{root}/etc/cloud/cloud-init.disabled", "")
    run = run_agent(stack, "ga-cloud", root)
    assert run.returncode == 0, run.log
    assert read(f"{root}/etc/hostname") == "web1\n"


def test_beside_cloud_init_waits_for_report_status_before_taking_the_device(
    stack: Stack, tmp_path: Any
) -> None:
    """xenchannel-report-status sends cloud-init's result after cloud-final; the agent
    takes the device for good only once it is done (its marker), never before."""
    stack.add_domain("ga-report", bundle("iid-report"))
    root = make_root(tmp_path)
    write(f"{root}/usr/bin/cloud-init", '#!/bin/sh\necho \'{"status": "done"}\'\n', 0o755)
    write(f"{root}/run/cloud-init/result.json", "{}\n")
    write(f"{root}/usr/lib/xenchannel/xenchannel-report-status", "#!/bin/sh\n", 0o755)
    agent = Serving(stack, "ga-report", root)
    try:
        agent.wait_log("waiting for xenchannel-report-status")
        time.sleep(1.5)
        assert "queries: answering" not in agent.log()
        # The device is still free: the report gets through.
        client = subprocess.run(
            [sys.executable, "-m", "xenchannel.guest", "--device", stack.domains["ga-report"].link,
             "status", "applied", "--instance-id", "iid-report"],
            capture_output=True, text=True, timeout=60, env=runtime_env(), check=False,
        )  # fmt: skip
        assert client.returncode == 0, client.stderr
        write(f"{root}/run/xenchannel/report-status.done", "")
        agent.wait_log("queries: answering")
    finally:
        agent.stop()
    status_of(stack, "ga-report", "applied")


# ---------------------------------------------------------------- the report dom0 gets

# The sandbox's network: "eth0" as in the root's sysfs, V2_STATIC's IPv6 address up at
# once, its IPv4 address a second later, while the agent waits.
NETWORK_SETUP = (
    "set -e; hostname template-live; ip link set lo up; "
    "ip link add eth0 type veth peer name peer0; ip link set eth0 up; ip link set peer0 up; "
    "ip addr add 2001:db8::10/64 dev eth0 nodad; "
    '(sleep 1; ip addr add 192.0.2.10/24 dev eth0) & exec "$@"'
)


@pytest.mark.parametrize("cloud_init", ["absent", "disabled"])
def test_applied_is_reported_with_the_report_once_the_addresses_are_up(
    tmp_path: Any, cloud_init: str
) -> None:
    """What arrives at dom0's side: STATUS applied, after the bundle's static addresses
    came up, with hostname, interfaces, host public keys (no private key) and cloud-init's
    part: none when it is not installed, disabled when it is but is switched off."""
    root = make_root(tmp_path)
    if cloud_init == "disabled":
        write(f"{root}/usr/bin/cloud-init", "#!/bin/sh\n", 0o755)
        write(f"{root}/etc/cloud/cloud-init.disabled", "")
    own = Stack()
    try:
        domain = own.add_domain("ga-report", bundle("iid-report"))
        own.start_agent()
        argv = agent_argv(domain.link, root, "--once", "--address-wait", "20")
        done = subprocess.run(
            ["unshare", "--mount", "--uts", "--net", "--ipc", "--pid", "--fork",
             "--kill-child", "--", "sh", "-c", NETWORK_SETUP, "sh", *argv],
            capture_output=True, text=True, timeout=60, env=runtime_env(), check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        # As the real dom0 agent recorded it, and judged it against the bundle it served.
        state = own.wait_state("ga-report", lambda s: bool(s.get("report")), timeout=30)
    finally:
        own.close()
    assert "network: every static address is up" in done.stderr
    status, report = state["status"], state["report"]
    assert (status["state"], status["instance_id"]) == ("applied", "iid-report")
    assert report["hostname"] == "web1"  # set by the agent, read back live
    assert report["host_keys"] == [HOST_KEY]
    assert report.get("cloud_init") == (None if cloud_init == "absent" else "disabled")
    by_name = {i["name"]: i for i in report["interfaces"]}
    assert sorted(by_name) == ["ens5", "eth0"]
    assert by_name["eth0"]["mac"] == "52:54:00:00:00:01"
    assert {"192.0.2.10/24", "2001:db8::10/64"} <= set(by_name["eth0"]["addresses"])
    assert report["missing"] == []
    assert readiness(state) == ("yes", "ready")
    assert "SECRET" not in json.dumps(state)


# The same network, its IPv4 address added only once the file $GO exists (bounded): the
# test decides when the address comes up, so no sleep races the agent's start.
LATE_NETWORK_SETUP = (
    "set -e; hostname template-live; ip link set lo up; "
    "ip link add eth0 type veth peer name peer0; ip link set eth0 up; ip link set peer0 up; "
    "ip addr add 2001:db8::10/64 dev eth0 nodad; "
    '(for i in $(seq 600); do [ -e "$GO" ] && break; sleep 0.1; done; '
    '[ -e "$GO" ] && ip addr add 192.0.2.10/24 dev eth0) & exec "$@"'
)


@pytest.mark.parametrize("comes_up", [True, False], ids=["late", "never"])
def test_an_address_late_or_never_is_reported_settling_then_once_more(
    tmp_path: Any, comes_up: bool
) -> None:
    """Past --address-wait the agent reports what it has as "settling" (dom0: not ready
    yet, and until when), keeps answering queries while it watches, and reports again:
    ready once the address is up, or at --settle-wait the final report dom0 judges failed
    with the sentence that names the fix."""
    root = make_root(tmp_path)
    go = str(tmp_path / "go")
    own = Stack()
    agent = None
    try:
        domain = own.add_domain("ga-settle", bundle("iid-settle"))
        own.start_agent()
        settle = "30" if comes_up else "2"
        argv = agent_argv(
            domain.link, root, "--once", "--address-wait", "0.5", "--settle-wait", settle
        )
        agent = subprocess.Popen(
            ["unshare", "--mount", "--uts", "--net", "--ipc", "--pid", "--fork",
             "--kill-child", "--", "sh", "-c", LATE_NETWORK_SETUP, "sh", *argv],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env=dict(runtime_env(), GO=go),
        )  # fmt: skip
        first = own.wait_state("ga-settle", lambda s: bool(s.get("report")), timeout=30)
        assert first["report"]["settling"] == int(settle)
        assert first["report"]["missing"] == ["192.0.2.10"]
        word, why = readiness(first)
        assert word == "no", why
        assert "still waiting for the static address(es) 192.0.2.10" in why
        if comes_up:
            write(go, "")
        final = own.wait_state(
            "ga-settle",
            lambda s: not (s.get("report") or {}).get("settling"),
            timeout=40,
        )
        _, log = agent.communicate(timeout=30)
        agent = None
    finally:
        if agent is not None:
            agent.kill()
            agent.communicate()
        own.close()
    assert final["status"]["state"] == "applied"
    if comes_up:
        assert "report: complete after" in log, log
        assert final["report"]["missing"] == []
        assert readiness(final) == ("yes", "ready")
    else:
        assert "report: still without 192.0.2.10 after 2 s; reporting so" in log, log
        word, why = readiness(final)
        assert word == "failed" and "match the clone's interfaces by MAC" in why, why


# ---------------------------------------------------------------- deployment shapes


def test_hardened_mount_layout_of_the_unit(stack: Stack, tmp_path: Any) -> None:
    """The unit's ProtectSystem=strict + ReadWritePaths= layout, rebuilt with bind mounts:
    /etc read-only, /etc/hostname and /etc/hosts writable as single files (so they are
    rewritten in place), the network directory, /home and the state directory writable."""
    stack.add_domain("ga-hardened", bundle("iid-hardened"))
    root = make_root(tmp_path)
    os.makedirs(f"{root}/var/lib/xenchannel", mode=0o700)
    argv = agent_argv(stack.domains["ga-hardened"].link, root, "--once", "--user", "alice", "-v")
    # A bind mount copies its source's read-only flag: bind the writable paths first,
    # then make the root's own bind mount read-only.
    mounts = [f"mount --bind {root} {root}"]
    for path in ("etc/hostname", "etc/hosts", "etc/systemd/network", "home", "var/lib/xenchannel"):
        mounts.append(f"mount --bind {root}/{path} {root}/{path}")
    mounts.append(f"mount -o remount,bind,ro {root}")
    mounts.append(f"! touch {root}/etc/probe 2>/dev/null")  # /etc really is read-only
    command = sandbox(root, ["sh", "-c", " && ".join(mounts) + ' && exec "$@"', "sh", *argv])
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=30, env=runtime_env(), check=False
    )
    assert done.returncode == 0, done.stderr
    assert read(f"{root}/etc/hostname") == "web1\n"
    assert "127.0.1.1\tweb1.example.com web1\n" in read(f"{root}/etc/hosts")
    assert read(f"{root}/etc/systemd/network/10-xenchannel-eth0.network") == NETWORKD_ETH0
    assert "AAAAC3NzaKEY1" in read(f"{root}/home/alice/.ssh/authorized_keys")
    assert "etc/hostname: its directory takes no new files; rewriting it in place" in done.stderr
    assert not glob.glob(f"{root}/etc/.*.xenchannel-new")
    status_of(stack, "ga-hardened", "applied")


def _pyenv_python(version: str) -> str:
    try:
        base = subprocess.run(
            ["pyenv", "root"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        base = os.path.expanduser("~/.pyenv")
    found = sorted(
        glob.glob(os.path.join(base, "versions", version + ".*", "bin", "python" + version))
    )
    if not found:
        pytest.fail(f"python{version} is not installed under pyenv ({base}); install it")
    return found[-1]


@pytest.mark.parametrize("version", ["3.6", "3.13"])
def test_first_boot_on_old_and_new_interpreters(stack: Stack, tmp_path: Any, version: str) -> None:
    python = _pyenv_python(version)
    name = "ga-py" + version.replace(".", "")
    stack.add_domain(name, bundle(f"iid-{name}", network=V1_STATIC))
    root = make_root(tmp_path, "ifupdown")
    # -S: only the standard library, as on a minimal guest.
    run = run_agent(stack, name, root, "--user", "alice", python=[python, "-S"])
    assert run.returncode == 0, run.log
    assert run.live_hostname == "web1"
    assert read(f"{root}/etc/network/interfaces.d/xenchannel") == IFUPDOWN_V1
    assert mode_owner(f"{root}/home/alice/.ssh/authorized_keys") == (0o600, *ALICE)
    assert status_of(stack, name, "applied")["instance_id"] == f"iid-{name}"


def test_unit_file_verifies_and_is_hardened() -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is not installed (apt-get install systemd)")
    verify = subprocess.run(
        [analyze, "verify", UNIT], capture_output=True, text=True, timeout=60, check=False
    )
    assert verify.returncode == 0, verify.stderr
    assert "xenchannel-guest-agent" not in verify.stderr, verify.stderr
    security = subprocess.run(
        [analyze, "security", "--offline=yes", UNIT],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    overall = [line for line in security.stdout.splitlines() if "Overall exposure" in line]
    assert overall, security.stdout + security.stderr
    print(overall[0])
    exposure = float(overall[0].split(":")[1].split()[0])
    assert exposure < 3.0, security.stdout
