"""Real boots of each Debian cloud-init version, with XenChannel, in a sandbox.

The cloud-init CLI acts on the machine it runs on, so it runs only inside the namespaces
of ``testbed/cloud_init_sandbox.py`` (throwaway overlays on /etc, /var, /root, /home and a
tmpfs on /run, no network); what it wrote is read from the overlays' upper directories,
and the real hostname and /etc are checked untouched.  The dom0 side is a live Stack
(real agent + simulated channel); the datasource is loaded the second documented way,
through `datasource_pkg_list`.
"""

import json
import os
import re
import socket
from typing import Any, Dict, Iterator, Optional

import pytest
import yaml

from testbed.cloud_init_sandbox import CHANNEL, Boot, Sandbox, base_cloud_cfg, guest_root, init_args
from testbed.cloud_init_trees import VERSIONS
from testbed.stack import Stack, delivered
from xenchannel.protocol import Bundle

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIXenChannelSandboxTestKey test@dom0"
NETWORK = {"version": 2, "ethernets": {"eth0": {"dhcp4": True}}}


@pytest.fixture
def stack() -> Iterator[Stack]:
    s = Stack()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(autouse=True)
def real_machine_untouched() -> Iterator[None]:
    hostname = socket.gethostname()
    etc_hostname = _read("/etc/hostname") if os.path.exists("/etc/hostname") else None
    yield
    assert socket.gethostname() == hostname
    if etc_hostname is not None:
        assert _read("/etc/hostname") == etc_hostname
    assert not os.path.exists("/etc/cloud/cloud.cfg")
    assert not os.path.exists("/root/.ssh/authorized_keys") or KEY not in _read(
        "/root/.ssh/authorized_keys"
    )


def _read(path: str) -> str:
    with open(path) as handle:
        return handle.read()


def _name(prefix: str, version: str) -> str:
    return prefix + "-" + version.replace(".", "")


def _bundle(name: str, user_data: bytes = b"#cloud-config\n{}\n") -> Bundle:
    return Bundle(
        {"instance-id": f"iid-{name}", "local-hostname": name, "public-keys": [KEY]},
        user_data,
        None,
        NETWORK,
    )


def _sandbox(
    base: str, version: str, groot: str, ds_list: Any, paths: Optional[Dict[str, str]] = None, **ds
) -> Sandbox:
    cfg = base_cloud_cfg(ds_list, {"root": groot, **ds})
    if paths:
        cfg["system_info"]["paths"] = paths
    return Sandbox(base, version, cfg)


def _assert_network_rendered(boot: Boot) -> None:
    net_files = [p for p in boot.written("/etc") if "network" in p or "netplan" in p]
    assert net_files, boot.written("/etc")
    assert any("eth0" in boot.read(p) for p in net_files), net_files


@pytest.mark.parametrize("version", VERSIONS)
def test_full_boot_in_a_sandbox(stack: Stack, tmp_path, version: str) -> None:
    """init --local, init, modules config + final in one sandbox boot; then status/query."""
    name = _name("full", version)
    user_data = b"#cloud-config\nruncmd:\n  - [touch, /root/runcmd-ran]\n"
    domain = stack.add_domain(name, _bundle(name, user_data))
    stack.start_agent()
    base = str(tmp_path)
    sandbox = _sandbox(base, version, guest_root(base, domain.link), ["XenChannel", "None"])
    boot = sandbox.boot(
        "boot",
        [
            init_args(version, local=True),
            init_args(version, local=False),
            ["modules", "--mode", "config"],
            ["modules", "--mode", "final"],
            ["status", "--long"],
            ["query", "--all"],
        ],
    )
    local, network, config, final, status, query = [r.check() for r in boot.runs]
    assert "found local data from DataSourceXenChannel" in local.output, local.output[-4000:]
    # hostname: in the sandbox's UTS namespace and in its /etc
    assert boot.hostname == name
    assert boot.read("/etc/hostname").strip() == name
    _assert_network_rendered(boot)
    # cc_ssh (network stage) put the bundle's key in root's authorized_keys
    assert KEY in boot.read("/root/.ssh/authorized_keys"), network.output[-4000:]
    assert re.search(r"Ran \d+ modules with 0 failures", network.output), network.output[-4000:]
    for run in (config, final):
        assert re.search(r"Ran \d+ modules with 0 failures", run.output), run.output[-4000:]
    # the bundle's user-data: runcmd (config stage) written, run by scripts_user (final)
    assert os.path.exists(boot.upper("/root/runcmd-ran")), final.output[-4000:]
    # status: done, the datasource named, no errors in any stage
    assert "status: done" in status.stdout, status.stdout
    assert "DataSourceXenChannel" in status.stdout, status.stdout
    stages = json.loads(boot.read("/var/lib/cloud/data/status.json"))["v1"]
    errors = {k: v["errors"] for k, v in stages.items() if isinstance(v, dict) and v.get("errors")}
    assert not errors, errors
    result = json.loads(boot.read("/var/lib/cloud/data/result.json"))["v1"]
    assert result["errors"] == [], result
    assert result["datasource"].startswith("DataSourceXenChannel"), result
    # query: instance-data names XenChannel, its platform and channel
    v1 = json.loads(query.stdout)["v1"]
    assert v1["cloud_name"] == "xenchannel", v1
    assert v1["platform"] == "xen", v1
    assert v1["subplatform"].startswith("xen-channel (") and CHANNEL in v1["subplatform"], v1
    assert v1["instance_id"] == f"iid-{name}"
    assert stack.wait_state(name, delivered)["delivered"]["count"] == 1


@pytest.mark.parametrize("version", VERSIONS)
def test_reboot_without_dom0_uses_the_cache(stack: Stack, tmp_path, version: str) -> None:
    name = _name("sbx", version)
    domain = stack.add_domain(name, _bundle(name))
    stack.start_agent()
    base = str(tmp_path)
    # cloud_dir outside the overlays, so the second boot sees the first one's cache
    paths = {"cloud_dir": os.path.join(base, "cloud"), "run_dir": os.path.join(base, "run-ci")}
    sandbox = _sandbox(
        base, version, guest_root(base, domain.link), ["XenChannel", "None"], paths=paths
    )
    # first boot: identity from dom0, applied inside the sandbox
    boot = sandbox.boot("boot1", [init_args(version, local=True)])
    log = boot.runs[0].check().output
    assert "found local data from DataSourceXenChannel" in log
    assert boot.hostname == name, log[-4000:]
    assert boot.read("/etc/hostname").strip() == name
    _assert_network_rendered(boot)
    assert stack.wait_state(name, delivered)["delivered"]["count"] == 1
    # reboot with dom0's agent gone: cloud-init proceeds from its checked cache
    stack.stop_agent()
    log = sandbox.boot("boot2", [init_args(version, local=True)]).runs[0].check().output
    assert "restored from cache with run check: DataSourceXenChannel" in log, log[-4000:]
    assert "no metadata from" not in log
    # the same instance: per-instance modules do not run again, host keys stay
    assert f"targeting instance id: iid-{name}. new=False" in log, log[-4000:]


@pytest.mark.parametrize("version", VERSIONS)
def test_no_channel_falls_through_to_nocloud(stack: Stack, tmp_path, version: str) -> None:
    """A Xen guest without the channel: XenChannel gives up within wait_timeout, NoCloud
    (a seed dir) is used, and no device is opened (a decoy channel of another name)."""
    wait = 2.0
    decoy = stack.add_domain(_name("decoy", version), _bundle("decoy"))
    base = str(tmp_path)
    groot = guest_root(base, decoy.link, name="org.example.other.0")
    sandbox = _sandbox(base, version, groot, ["XenChannel", "NoCloud", "None"], wait_timeout=wait)
    name = _name("nocloud", version)
    seed = "/var/lib/cloud/seed/nocloud/"
    files = {
        seed + "meta-data": yaml.safe_dump({"instance-id": f"iid-{name}", "local-hostname": name}),
        seed + "user-data": "#cloud-config\n{}\n",
    }
    boot = sandbox.boot("boot", [init_args(version, local=True)], files=files)
    run = boot.runs[0].check()
    print(f"cloud-init {version}: init --local fell through to NoCloud in {run.elapsed:.2f} s")
    assert "found local data from DataSourceNoCloud" in run.output, run.output[-4000:]
    assert "DataSourceXenChannel" not in re.findall(r"found local data from \S+", run.output)
    assert boot.hostname == name
    assert "no metadata from" not in run.output
    assert run.elapsed < wait + 10, run.elapsed
    assert decoy.channel.stats.guest_opens == 0


@pytest.mark.parametrize("version", VERSIONS)
def test_silent_dom0_is_bounded(stack: Stack, tmp_path, version: str) -> None:
    """The channel exists but no dom0 agent answers: init --local ends within the bounds
    and says which channel it waited on and for what."""
    wait, connect = 1.0, 2.0
    name = _name("silent", version)
    domain = stack.add_domain(name, _bundle(name))  # no agent started
    base = str(tmp_path)
    groot = guest_root(base, domain.link)
    sandbox = _sandbox(
        base,
        version,
        groot,
        ["XenChannel", "None"],
        wait_timeout=wait,
        connect_timeout=connect,
    )
    run = sandbox.boot("boot", [init_args(version, local=True)]).runs[0].check()
    print(f"cloud-init {version}: init --local with a silent dom0 took {run.elapsed:.2f} s")
    device = os.path.join(groot, "dev/xen-channel", CHANNEL)
    line = re.search(r"XenChannel: no metadata from (\S+) after ([\d.]+)s: (.*)", run.output)
    assert line, run.output[-4000:]
    assert line.group(1) == device
    assert "no answer from the dom0 agent" in line.group(3), line.group(0)
    assert float(line.group(2)) <= connect + 1.0, line.group(0)
    assert "found local data from DataSourceXenChannel" not in run.output
    assert run.elapsed < wait + connect + 10, run.elapsed
