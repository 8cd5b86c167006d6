"""A real `cloud-init init --local` of each Debian version, with XenChannel, in a sandbox.

The cloud-init CLI acts on the machine it runs on, so it runs only inside
`unshare --mount --uts --net --ipc --pid --fork --mount-proc` with throwaway overlays on
/etc and /var and a tmpfs on /run; what it wrote is read from the overlays' upper
directories, and the real hostname and /etc are checked untouched.  The dom0 side is a
live Stack (real agent + simulated channel); the datasource is loaded the second
documented way, through `datasource_pkg_list`.
"""

import os
import shutil
import socket
import subprocess
import sys
from typing import Iterator

import pytest
import yaml

from tests.datasource.cloudinit_trees import REPO, VERSIONS, dist_packages
from tests.stack import Stack, delivered
from xenchannel.protocol import Bundle

CHANNEL = "org.xenchannel.provision.0"

SANDBOX = r"""
set -eu
B=$1
O=$B/$2
for d in etc var; do
    mkdir -p "$O/$d/u" "$O/$d/w"
    mount -t overlay overlay -o "lowerdir=/$d,upperdir=$O/$d/u,workdir=$O/$d/w" "/$d"
done
mount -t tmpfs tmpfs /run
mkdir -p /etc/cloud/cloud.cfg.d
cp "$B/cloud.cfg" /etc/cloud/cloud.cfg
hostname sandbox-before
rc=0
"$PYTHON" -m cloudinit.cmd.main init --local >"$O/ci.out" 2>&1 || rc=$?
echo "$rc" >"$O/ci.rc"
hostname >"$O/uts-hostname"
"""


@pytest.fixture
def stack() -> Iterator[Stack]:
    s = Stack()
    try:
        yield s
    finally:
        s.close()


def _read(path: str) -> str:
    with open(path) as handle:
        return handle.read()


@pytest.mark.parametrize("version", VERSIONS)
def test_init_local_in_a_sandbox(stack: Stack, tmp_path, version: str) -> None:
    if shutil.which("unshare") is None:
        raise AssertionError("unshare (util-linux) is needed for this test")
    base = str(tmp_path)
    name = "sbx-" + version.replace(".", "")
    network = {"version": 2, "ethernets": {"eth0": {"dhcp4": True}}}
    bundle = Bundle(
        {"instance-id": f"iid-{name}", "local-hostname": name},
        b"#cloud-config\n{}\n",
        None,
        network,
    )
    domain = stack.add_domain(name, bundle)
    stack.start_agent()
    groot = os.path.join(base, "groot")
    os.makedirs(os.path.join(groot, "dev/xen-channel"))
    os.symlink(domain.link, os.path.join(groot, "dev/xen-channel", CHANNEL))
    os.makedirs(os.path.join(groot, "sys/hypervisor"))
    with open(os.path.join(groot, "sys/hypervisor/type"), "w") as f:
        f.write("xen\n")
    pkg = os.path.join(base, "pkgs", "xenchannel_datasource")
    os.makedirs(pkg)
    open(os.path.join(pkg, "__init__.py"), "w").close()
    shutil.copy(os.path.join(REPO, "datasource", "DataSourceXenChannel.py"), pkg)
    cloud_cfg = {
        "datasource_list": ["XenChannel", "None"],
        "datasource_pkg_list": ["xenchannel_datasource"],
        "datasource": {"XenChannel": {"root": groot, "connect_timeout": 5}},
        "system_info": {
            "distro": "debian",
            "paths": {
                "cloud_dir": os.path.join(base, "cloud"),
                "run_dir": os.path.join(base, "run-ci"),
            },
            "network": {"renderers": ["networkd", "eni", "netplan"]},
        },
        "preserve_hostname": False,
    }
    with open(os.path.join(base, "cloud.cfg"), "w") as f:
        yaml.safe_dump(cloud_cfg, f)
    script = os.path.join(base, "sandbox.sh")
    with open(script, "w") as f:
        f.write(SANDBOX)
    env = dict(os.environ)
    env["PYTHON"] = sys.executable
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.join(REPO, "runtime"), os.path.join(base, "pkgs"), dist_packages(version)]
    )
    real_hostname = socket.gethostname()
    real_etc_hostname = _read("/etc/hostname") if os.path.exists("/etc/hostname") else None

    def boot(overlay: str) -> str:
        subprocess.run(
            [
                "unshare",
                "--mount",
                "--uts",
                "--net",
                "--ipc",
                "--pid",
                "--fork",
                "--mount-proc",
                "--propagation",
                "private",
                "sh",
                script,
                base,
                overlay,
            ],
            env=env,
            check=True,
            timeout=80,
        )
        log = _read(os.path.join(base, overlay, "ci.out"))
        assert _read(os.path.join(base, overlay, "ci.rc")).strip() == "0", log[-4000:]
        return log

    # first boot: identity from dom0, applied inside the sandbox
    log = boot("boot1")
    assert "found local data from DataSourceXenChannel" in log
    assert _read(os.path.join(base, "boot1/uts-hostname")).strip() == name, log[-4000:]
    assert _read(os.path.join(base, "boot1/etc/u/hostname")).strip() == name
    written = []
    for top, _dirs, files in os.walk(os.path.join(base, "boot1/etc/u")):
        written += [os.path.join(top, f) for f in files]
    net_files = [p for p in written if "network" in p or "netplan" in p]
    assert net_files, written
    assert any("eth0" in _read(p) for p in net_files), net_files
    assert stack.wait_state(name, delivered)["delivered"]["count"] == 1
    # reboot with dom0's agent gone: cloud-init proceeds from its checked cache
    stack.stop_agent()
    log = boot("boot2")
    assert "restored from cache with run check: DataSourceXenChannel" in log, log[-4000:]
    assert "no metadata from" not in log
    # the same instance: per-instance modules do not run again, host keys stay
    assert f"targeting instance id: iid-{name}. new=False" in log, log[-4000:]
    # the real machine untouched
    assert socket.gethostname() == real_hostname
    if real_etc_hostname is not None:
        assert _read("/etc/hostname") == real_etc_hostname
    assert not os.path.exists("/etc/cloud/cloud.cfg")
