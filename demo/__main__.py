"""The main job on the built-in default: ``make demo`` (``python -m demo``).

The whole xenchannel flow, driven by the collection's own playbooks and roles, with no
Xen host. Both machines are Debian roots the demo builds itself (``demo/machines.py``),
each run in a throwaway sandbox (mount, UTS, IPC and PID namespaces, an overlay over the
cached root: ``testbed/host_sandbox.py``'s RootSandbox), so what this machine has
installed does not change what the demo does, and nothing on the machine itself changes:

1. the guest template: a Debian 12 root with cloud-init, and ``playbooks/template.yml``
   (roles ``guest``, ``cloud_init_datasource``, ``template_prep``) applied to it through
   a chroot connection, as a user prepares an image; dom0's Debian 12 root beside it.
   Built once and cached under ``.cache/demo/`` by a key over their inputs;
2. dom0: ``playbooks/provision.yml`` with ``demo/inventory.yml`` (roles ``dom0_agent``
   and ``domain``: the clone's xl config, its metadata in the agent's store), then the
   dom0 agent started from the files the role installed;
3. the channel: the channel simulator stands in for QEMU and the guest's /dev/hvc1 (a
   Unix socket at the path the domain role allocated, bridged to a real pty); the link
   udev would make is made by hand;
4. the clone's first boot: a layer over the template, where Debian's cloud-init runs its
   stages with the XenChannel datasource (and the template's own systemd-networkd brings
   up the address it rendered), then reports its result and what it is to dom0;
5. dom0 waits for ``ready`` with ``xenchannel.provision.channel_status``: applied, with
   the static address up, and the clone's SSH host keys reported;
6. what the guest ended up with, and the agent's status for it.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import yaml

from demo import machines
from testbed import ansible_run
from testbed.host_sandbox import Result, RootSandbox, Running
from testbed.rootfs import BuildError
from testbed.simulator import SimulatorOptions, SimulatorThread
from xenchannel.protocol import static_addresses

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INVENTORY = os.path.join(REPO, "demo", "inventory.yml")
# demo/inventory.yml names dom0's root by this variable: the chroot connection's host.
DOM0_ROOT_VARIABLE = "XENCHANNEL_DEMO_DOM0_ROOT"
STEPS = 6
# Commands inside the sandboxes see Debian's own tools only: no venv, no PYTHONPATH.
CLEAN_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
}
# What systemd-networkd does on a booted clone once cloud-init's local stage has rendered
# the network config: configure the clone's NIC.  The template's own networkd, run for
# real in a mount namespace of its own with /sys read-only (which is how networkd knows
# that no udev will announce devices, as in a container); until the addresses given as
# arguments are up, at most 10 s.  They stay when it exits.
NETWORKD = r"""
set -e
mkdir -p /run/systemd/netif
chown systemd-network:systemd-network /run/systemd/netif
exec unshare --mount sh -c '
mount -o remount,bind,ro /sys
/lib/systemd/systemd-networkd & pid=$!
i=0
while :; do
    up=yes
    for address in "$@"; do ip -o addr show | grep -q " $address/" || up=no; done
    [ $up = yes ] || [ $i -ge 40 ] && break
    sleep 0.25
    i=$((i + 1))
done
kill $pid
wait $pid || true
[ $up = yes ]' sh "$@"
"""
VIF = """
set -e
ip netns add xc-backend
ip link add eth0 address "$1" type veth peer name vif1.0 netns xc-backend
ip -n xc-backend link set vif1.0 up
"""
# Device nodes a guest boot needs; /dev itself is the demo's own directory, so the
# channel link can be made without touching this machine's /dev.
DEVICES = ("null", "zero", "full", "random", "urandom", "tty", "ptmx")
CLOUD_INIT_STAGES = (
    ("init --local", ["cloud-init", "init", "--local"]),
    ("init", ["cloud-init", "init"]),
    ("modules --mode config", ["cloud-init", "modules", "--mode", "config"]),
    ("modules --mode final", ["cloud-init", "modules", "--mode", "final"]),
)


class DemoError(Exception):
    """A step failed; the message names it and says where the details are."""


class Progress:
    def __init__(self) -> None:
        self.start = time.monotonic()
        self.step = 0
        self.step_start = self.start

    def __call__(self, text: str) -> None:
        self.done()
        self.step += 1
        self.step_start = time.monotonic()
        print(f"[{self.step}/{STEPS}] {text}", flush=True)

    def note(self, text: str) -> None:
        print(f"      {text}", flush=True)

    def done(self) -> None:
        if self.step:
            self.note(f"done in {time.monotonic() - self.step_start:.1f} s")


def checked(result: Result, what: str) -> Result:
    if result.rc != 0:
        raise DemoError(
            f"{what} failed (exit status {result.rc}):\n"
            f"{result.stdout[-6000:]}\n{result.stderr[-4000:]}"
        )
    return result


class Ansible:
    """ansible-playbook from the venv, on this machine, into a sandbox's root through
    community.general's chroot connection (demo/inventory.yml names it)."""

    def __init__(self, workdir: str, collections: str) -> None:
        self.collections, self.remove = ansible_run.make_collection_tree("xc-demo-")
        self.env = ansible_run.playbook_env(self.collections + os.pathsep + collections, workdir)
        self.env.pop("PYTHONPATH", None)
        # ANSIBLE_REMOTE_TEMP names a path under /tmp: inside the root, where the chroot
        # connection makes it, that is the sandbox's own fresh /tmp.
        os.makedirs(self.env["ANSIBLE_LOCAL_TEMP"], exist_ok=True)

    def argv(self, playbook: str, inventory: str, *options: str) -> List[str]:
        return [ansible_run.PLAYBOOK, "-i", inventory, *options, playbook]

    def env_for(self, box: RootSandbox) -> Dict[str, str]:
        return dict(self.env, **{DOM0_ROOT_VARIABLE: box.chroot or ""})


TEMPLATE_XL = """\
# The template VM (the demo's): xl_domain_config gives each clone its own name, uuid,
# disk and MAC, and refuses to copy the template's.
name = "debian12-template"
type = "pvh"
kernel = "/var/lib/xen/images/debian12/vmlinuz"
ramdisk = "/var/lib/xen/images/debian12/initrd.img"
extra = "root=/dev/xvda1 console=hvc0"
memory = 512
vcpus = 1
disk = [ "format=raw, vdev=xvda, access=rw, target=/var/lib/xen/images/debian12.img" ]
vif = [ "mac=00:16:3e:00:00:01, bridge=xenbr0" ]
"""


def vm_from_inventory() -> Dict[str, object]:
    with open(INVENTORY) as handle:
        inventory = yaml.safe_load(handle)
    vms = inventory["all"]["children"]["dom0"]["vars"]["xenchannel_vms"]
    (vm,) = vms
    return dict(vm)


def provision_dom0(
    progress: Progress, ansible: Ansible, roots: Dict[str, str], work: str, sockets: str
) -> RootSandbox:
    progress(
        "dom0: playbooks/provision.yml with demo/inventory.yml (roles dom0_agent, domain:"
        " the clone's xl config and its metadata in the agent's store)"
    )
    # QEMU's channel sockets live under the agent's socket root; it is this directory,
    # so the simulator (QEMU's stand-in, outside the sandbox) can listen there.
    box = RootSandbox(
        os.path.join(work, "dom0"),
        roots["dom0root"],
        binds=[(sockets, "/run/xenchannel")],
        hostname="dom0",
    )
    checked(
        box.run(
            ["sh", "-c", "mkdir -p /etc/xen/templates && cat > /etc/xen/templates/debian12.cfg"],
            env=CLEAN_ENV,
            input=TEMPLATE_XL,
        ),
        "writing the template VM's xl config",
    )
    checked(
        box.run(
            ansible.argv(os.path.join(REPO, "playbooks", "provision.yml"), INVENTORY),
            env=ansible.env_for(box),
            timeout=600,
            cwd=box.share,
            outside=True,
        ),
        "playbooks/provision.yml",
    )
    return box


def start_agent(box: RootSandbox, sockets: str) -> Running:
    # What systemd does at boot: the socket root from the role's tmpfiles.d entry, then
    # the unit's command, from the installed files only (Debian's python3, no venv).
    command = (
        "systemd-tmpfiles --create /etc/tmpfiles.d/xenchannel-dom0-agent.conf"
        " && exec /usr/bin/python3 -m xenchannel.dom0 run --config /etc/xenchannel/agent.ini"
    )
    agent = box.start(["sh", "-c", command], env=CLEAN_ENV, timeout=600)
    agent.wait_for(
        lambda: os.path.exists(os.path.join(sockets, "agent.sock")),
        30,
        "the dom0 agent's control socket",
    )
    return agent


def guest_dev(work: str) -> str:
    """The clone's /dev: this machine's basic nodes and ptys, and room for the link."""
    dev = os.path.join(work, "guest-dev")
    os.makedirs(os.path.join(dev, "pts"))
    os.makedirs(os.path.join(dev, "xen-channel"), mode=0o700)
    return dev


def boot_clone(progress: Progress, template: str, work: str, dev: str, mac: str) -> Running:
    progress(
        "The clone's first boot: cloud-init's stages with the XenChannel datasource"
        " (on a layer over the template)"
    )
    binds: List[object] = [(dev, "/dev"), ("/dev/pts", "/dev/pts")]
    binds.extend((f"/dev/{name}", f"/dev/{name}") for name in DEVICES)
    box = RootSandbox(
        os.path.join(work, "clone"),
        template,
        binds=binds,  # type: ignore[arg-type]
        hostname="debian12-template",
    )
    guest = box.start(["sleep", "600"], env=CLEAN_ENV, timeout=600)
    # The clone's NIC, with the MAC its xl config gives it: cloud-init waits for the
    # devices its network-config names.  One end of a veth pair in the sandbox's own
    # network namespace (whose links the root's /sys/class/net shows); the other end in a
    # namespace of its own, where dom0's vif backend would be, and up, so that the NIC
    # has a carrier as a vif has once the backend attaches it.
    checked(
        guest.run(["sh", "-c", VIF, "sh", mac], env=CLEAN_ENV),
        "adding the clone's network interface",
    )
    # What systemd does first on a clone's first boot: the template's machine-id is
    # empty (template_prep), so the clone gets its own.  networkd needs it (DHCP ids).
    checked(guest.run(["systemd-machine-id-setup"], env=CLEAN_ENV), "systemd-machine-id-setup")
    return guest


def run_stages(progress: Progress, guest: Running, vm: Dict[str, object]) -> None:
    for label, argv in CLOUD_INIT_STAGES:
        started = time.monotonic()
        checked(guest.run(argv, env=CLEAN_ENV, timeout=180), f"cloud-init {label}")
        progress.note(f"cloud-init {label:<22} {time.monotonic() - started:5.1f} s")
        if label == "init --local":
            started = time.monotonic()
            addresses = static_addresses(vm["network_config"])
            checked(
                guest.run(["sh", "-c", NETWORKD, "sh", *addresses], env=CLEAN_ENV, timeout=60),
                "systemd-networkd bringing up " + ", ".join(addresses),
            )
            progress.note(f"{'systemd-networkd':<33} {time.monotonic() - started:5.1f} s")
    # systemd runs this after cloud-final (xenchannel-report-status.service): it tells
    # dom0 whether cloud-init applied the bundle.
    checked(
        guest.run(["/usr/lib/xenchannel/xenchannel-report-status"], env=CLEAN_ENV, timeout=90),
        "xenchannel-report-status",
    )
    progress.note("xenchannel-report-status: cloud-init's result sent to dom0")


def wait_ready(progress: Progress, ansible: Ansible, agent: Running, vm: Dict[str, object]) -> None:
    progress("dom0: xenchannel.provision.channel_status waits for 'ready'")
    play = [
        {
            "name": "Wait until the clone is ready to be used",
            "hosts": "dom0",
            "gather_facts": False,
            "tasks": [
                {
                    "name": "Wait for ready",
                    "xenchannel.provision.channel_status": {
                        "domain": vm["name"],
                        "wait_for": "ready",
                        "timeout": 60,
                    },
                }
            ],
        }
    ]
    path = os.path.join(agent.box.share, "wait.yml")
    with open(path, "w") as handle:
        json.dump(play, handle)
    box = agent.box
    assert isinstance(box, RootSandbox)
    checked(
        agent.run(
            ansible.argv(path, INVENTORY),
            env=ansible.env_for(box),
            timeout=120,
            cwd=box.share,
            outside=True,
        ),
        "channel_status",
    )


def show_results(guest: Running, agent: Running, vm: Dict[str, object]) -> None:
    print("\nWhat the clone ended up with:")
    hostname = checked(guest.run(["hostname"], env=CLEAN_ENV), "hostname").stdout.strip()
    print(f"  {'hostname':<30} {hostname}")
    for key in ("v1.platform", "v1.subplatform"):
        value = guest.run(["cloud-init", "query", key], env=CLEAN_ENV)
        print(f"  {'cloud-init query ' + key:<30} {value.stdout.strip() or value.stderr.strip()}")
    status = guest.run(["cloud-init", "status", "--long"], env=CLEAN_ENV)
    for line in status.stdout.splitlines():
        if line.startswith("status:"):
            print(f"  {'cloud-init status':<30} {line.split(':', 1)[1].strip()}")
        elif line.startswith("DataSource"):
            print(f"  {'cloud-init datasource':<30} {line.strip()}")
    keys = guest.run(
        ["sh", "-c", 'for f in /home/*/.ssh/authorized_keys; do [ -f "$f" ] &&'
         ' sed "s|^|${f#/home/}: |" "$f"; done'],
        env=CLEAN_ENV,
    ).stdout  # fmt: skip
    for line in keys.splitlines():
        user, key = line.split(": ", 1)
        print(f"  {'authorized key (' + user.split('/')[0] + ')':<30} {key[:60]}...")
    network = guest.run(
        ["sh", "-c", "for f in /etc/network/interfaces.d/* /etc/systemd/network/*cloud-init*;"
         " do [ -f \"$f\" ] && echo \"== $f\" && cat \"$f\"; done"],
        env=CLEAN_ENV,
    ).stdout  # fmt: skip
    print("  network config written by cloud-init:")
    for line in network.splitlines():
        print(f"    {line}")
    motd = guest.run(["cat", "/etc/motd"], env=CLEAN_ENV).stdout.strip()
    print(f"  {'/etc/motd (user-data)':<30} {motd}")
    xl = agent.run(["cat", f"/etc/xen/{vm['name']}.cfg"], env=CLEAN_ENV).stdout
    print(f"\nThe clone's xl config on dom0 (/etc/xen/{vm['name']}.cfg):")
    for line in xl.splitlines():
        print(f"  {line}")
    name = str(vm["name"])
    table = checked(
        agent.run(["xenchannel-dom0", "status", name], env=CLEAN_ENV), "xenchannel-dom0 status"
    )
    print(f"\nThe dom0 agent's status and the clone's report (xenchannel-dom0 status {name}):")
    for line in table.stdout.splitlines():
        print(f"  {line}")
    print("\nThe dom0 agent's log for the clone:")
    for line in agent.output()[1].splitlines():
        if f"domain={vm['name']} " in line:
            print(f"  {line}")


def run_demo(work: str, rate: Optional[float]) -> int:
    progress = Progress()
    print("xenchannel demo: dom0 and one clone, each in a sandbox on this machine; no Xen host.")
    progress(
        "The machines: a Debian 12 guest template (cloud-init, then playbooks/template.yml:"
        " roles guest, cloud_init_datasource, template_prep) and a Debian 12 dom0; built"
        " once, then cached"
    )
    try:
        roots = machines.build(progress.note)
        ansible = Ansible(os.path.join(work, "ansible"), machines.collections(progress.note))
    except BuildError as exc:
        print(f"\nxenchannel demo: {exc}", file=sys.stderr)
        return 1
    progress.note(f"template: {os.path.relpath(roots['template'], REPO)}")
    progress.note(f"dom0:     {os.path.relpath(roots['dom0root'], REPO)}")
    try:
        sockets = os.path.join(work, "sockets")
        os.makedirs(sockets, mode=0o700)
        dom0 = provision_dom0(progress, ansible, roots, work, sockets)
        vm = vm_from_inventory()
        progress(
            "dom0 agent started from the installed files; the channel simulator stands in"
            " for QEMU and the clone's /dev/hvc1"
        )
        with start_agent(dom0, sockets) as agent, SimulatorThread() as simulator:
            dev = guest_dev(work)
            link = os.path.join(dev, "xen-channel", "org.xenchannel.provision.0")
            socket_path = os.path.join(sockets, f"{vm['name']}.sock")
            simulator.add_channel(
                socket_path, link, SimulatorOptions(rate=rate, echo=True, garbage="to_host",
                                                    garbage_seed=1),
            )  # fmt: skip
            progress.note(f"QEMU's socket /run/xenchannel/{vm['name']}.sock <-> a pty")
            progress.note(
                f"/dev/xen-channel/org.xenchannel.provision.0 -> {os.readlink(link)}"
                " (the link udev's rule makes on a real guest)"
            )
            mac = str(vm["vifs"][0]["mac"])
            with boot_clone(progress, roots["template"], work, dev, mac) as guest:
                run_stages(progress, guest, vm)
                wait_ready(progress, ansible, agent, vm)
                progress.done()
                show_results(guest, agent, vm)
    except DemoError as exc:
        print(f"\nxenchannel demo: {exc}", file=sys.stderr)
        return 1
    finally:
        ansible.remove()
    print(f"\ndone in {time.monotonic() - progress.start:.1f} s")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument(
        "--rate",
        type=float,
        default=256000.0,
        help="simulated channel speed in bytes/s (default: 250 KiB/s as measured on Xen)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print(
            "xenchannel demo: needs root for its sandboxes (mount and pid namespaces)",
            file=sys.stderr,
        )
        return 2
    # Short path: Unix socket paths are limited to 107 bytes.
    work = tempfile.mkdtemp(prefix="xc-demo-", dir="/tmp")
    try:
        return run_demo(work, args.rate)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
