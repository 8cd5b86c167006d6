"""The main job on the built-in default: ``make demo`` (``python -m demo``).

The whole xenchannel flow, driven by the collection's own playbooks and roles, with no
Xen host.  This machine plays both sides, each in a throwaway sandbox (mount, UTS, IPC
and PID namespaces with overlays over /etc, /usr, /var, ...: ``testbed/host_sandbox.py``),
so nothing on the machine itself changes:

1. a guest template: Debian's cloud-init installed with apt, then
   ``playbooks/template.yml`` (roles ``guest``, ``cloud_init_datasource``,
   ``template_prep``).  Built once and cached under ``.cache/demo/`` by a key over its
   inputs, like a template image;
2. dom0: ``playbooks/provision.yml`` with ``demo/inventory.yml`` (roles ``dom0_agent``
   and ``domain``: the clone's xl config, its metadata in the agent's store), then the
   dom0 agent started from the files the role installed;
3. the channel: the channel simulator stands in for QEMU and the guest's /dev/hvc1 (a
   Unix socket at the path the domain role allocated, bridged to a real pty); the link
   udev would make is made by hand;
4. the clone's first boot: a copy of the template, where Debian's cloud-init runs its
   stages with the XenChannel datasource, then reports its result to dom0;
5. dom0 waits for ``applied`` with ``xenchannel.provision.channel_status``;
6. what the guest ended up with, and the agent's status table.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import yaml

from testbed import ansible_run
from testbed.host_sandbox import HostSandbox, Result, Running
from testbed.simulator import SimulatorOptions, SimulatorThread

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(REPO, ".cache", "demo")
# The same download cache as the role tests (tests/roles/test_guest_role.py).
APT_ARCHIVES = os.path.join(REPO, ".cache", "role-tests", "apt-archives")
CLOUD_INIT_DEBS = os.path.join(REPO, ".cache", "cloud-init", "22.4")
INVENTORY = os.path.join(REPO, "demo", "inventory.yml")
STEPS = 6
# Commands inside the sandboxes see Debian's own tools only: no venv, no PYTHONPATH.
CLEAN_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
}
# What the template is made from: a change to any of these rebuilds it.
TEMPLATE_INPUTS = (
    "roles/guest",
    "roles/cloud_init_datasource",
    "roles/template_prep",
    "runtime/xenchannel",
    "runtime/udev",
    "runtime/systemd",
    "datasource",
    "playbooks/template.yml",
)
# What a Debian template has beside cloud-init and what the roles install: a machine the
# demo runs on may lack them (a minimal install has no systemd and no iproute2).
TEMPLATE_PACKAGES = ("systemd", "iproute2")
RENDERER_CFG = "/etc/cloud/cloud.cfg.d/90-xenchannel-demo-renderer.cfg"
RENDERER_CFG_TEXT = "system_info:\n  network:\n    renderers: [networkd]\n"
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


def inputs_key(cloud_init_deb: str) -> str:
    digest = hashlib.sha256(os.path.basename(cloud_init_deb).encode())
    digest.update(repr((TEMPLATE_PACKAGES, RENDERER_CFG, RENDERER_CFG_TEXT)).encode())
    for top in TEMPLATE_INPUTS:
        path = os.path.join(REPO, top)
        files = [path] if os.path.isfile(path) else []
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            files.extend(os.path.join(dirpath, name) for name in sorted(filenames))
        for name in files:
            digest.update(os.path.relpath(name, REPO).encode() + b"\0")
            with open(name, "rb") as handle:
                digest.update(hashlib.sha256(handle.read()).digest())
    return digest.hexdigest()[:16]


def find_cloud_init_deb() -> str:
    debs = sorted(
        name for name in os.listdir(CLOUD_INIT_DEBS) if name.startswith("cloud-init_")
    ) if os.path.isdir(CLOUD_INIT_DEBS) else []  # fmt: skip
    if not debs:
        raise DemoError(
            f"no cloud-init .deb in {CLOUD_INIT_DEBS}; run `sh tests/setup-cloud-init.sh`"
            " (make demo does)"
        )
    return os.path.join(CLOUD_INIT_DEBS, debs[-1])


class Ansible:
    """ansible-playbook from the venv, run inside a sandbox against localhost."""

    def __init__(self, workdir: str) -> None:
        self.collections, self.remove = ansible_run.make_collection_tree("xc-demo-")
        self.env = ansible_run.playbook_env(self.collections, workdir)
        self.env.pop("PYTHONPATH", None)
        os.makedirs(self.env["ANSIBLE_LOCAL_TEMP"], exist_ok=True)

    def argv(self, playbook: str, inventory: str, *options: str) -> List[str]:
        return [ansible_run.PLAYBOOK, "-i", inventory, *options, playbook]


def apt_install(box: HostSandbox, packages: Sequence[str], where: str) -> str:
    """Install Debian packages into a sandbox with apt (from the host's network, into the
    download cache kept between runs); return the apt configuration it used."""
    apt_conf = os.path.join(box.share, "apt.conf")
    with open(apt_conf, "w") as handle:
        # The cache is root's; apt's unprivileged _apt user could not write there.
        handle.write(f'Dir::Cache::Archives "{APT_ARCHIVES}/";\nAPT::Sandbox::User "root";\n')
    env = dict(CLEAN_ENV, APT_CONFIG=apt_conf, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "-y", "--no-install-recommends", "-o", "Dpkg::Use-Pty=0", "install"]
    result = box.run([*install, *packages], env=env, timeout=900)
    if result.rc != 0:
        # A machine whose package lists are old or absent: refresh them once.
        checked(box.run(["apt-get", "update", "-q"], env=env, timeout=600), "apt-get update")
        result = box.run([*install, *packages], env=env, timeout=900)
    checked(result, f"installing {' '.join(os.path.basename(p) for p in packages)} into {where}")
    return apt_conf


def build_template(progress: Progress, ansible: Ansible, work: str) -> str:
    """The cached template: a directory whose ``upper/`` is the template's layer."""
    deb = find_cloud_init_deb()
    final = os.path.join(CACHE, f"template-{inputs_key(deb)}")
    if os.path.isdir(os.path.join(final, "upper")):
        progress(f"Guest template: cached in {os.path.relpath(final, REPO)}")
        return final
    progress(
        "Guest template: Debian's cloud-init, then playbooks/template.yml (roles guest,"
        " cloud_init_datasource, template_prep); built once, then cached"
    )
    os.makedirs(os.path.join(APT_ARCHIVES, "partial"), exist_ok=True)
    os.makedirs(CACHE, exist_ok=True)
    for old in os.listdir(CACHE):
        if old.startswith("template-"):
            shutil.rmtree(os.path.join(CACHE, old), ignore_errors=True)
    # Built under the work directory in /tmp: the sandbox overlays the directories a
    # clone may live in (/root, /home, /srv, /opt), and overlayfs refuses an upper layer
    # inside its own lower one. Only the finished layer moves into the cache.
    building = os.path.join(work, "template")
    # net=False keeps the host network for apt (cloud-init's dependencies and
    # xenstore-utils come from Debian, into a cache kept between runs).
    box = HostSandbox(building, net=False, binds=[ansible.collections, APT_ARCHIVES])
    shutil.copy(deb, box.share)
    progress.note(
        f"apt-get install {os.path.basename(deb)} (Debian bookworm's cloud-init)"
        f" {' '.join(TEMPLATE_PACKAGES)}"
    )
    apt_conf = apt_install(
        box, [os.path.join(box.share, os.path.basename(deb)), *TEMPLATE_PACKAGES], "the template"
    )
    # cloud-init picks the first network renderer it finds installed (ifupdown's before
    # systemd-networkd's); naming one keeps what the clone gets the same on every machine.
    checked(
        box.run(["sh", "-c", f"cat > {RENDERER_CFG}"], env=CLEAN_ENV, input=RENDERER_CFG_TEXT),
        f"writing {RENDERER_CFG}",
    )
    inventory = os.path.join(box.share, "inventory.yml")
    with open(inventory, "w") as handle:
        yaml.safe_dump({"templates": {"hosts": {"localhost": LOCAL_HOST}}}, handle)
    progress.note("ansible-playbook playbooks/template.yml -e template_prep_confirm=true")
    checked(
        box.run(
            ansible.argv(
                os.path.join(REPO, "playbooks", "template.yml"),
                inventory,
                "-e",
                "template_prep_confirm=true",
            ),
            env=dict(ansible.env, APT_CONFIG=apt_conf, DEBIAN_FRONTEND="noninteractive"),
            timeout=900,
            cwd=box.share,
        ),
        "playbooks/template.yml",
    )
    partial = final + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    # mv keeps the overlay's whiteouts and xattrs, also across file systems.
    subprocess.run(
        ["mv", os.path.join(building, "upper"), os.path.join(partial, "upper")],  # noqa: S607
        check=True,
        timeout=600,
    )
    os.rename(partial, final)
    return final


LOCAL_HOST = {"ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3"}
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


def provision_dom0(progress: Progress, ansible: Ansible, work: str, sockets: str) -> HostSandbox:
    progress(
        "dom0: playbooks/provision.yml with demo/inventory.yml (roles dom0_agent, domain:"
        " the clone's xl config and its metadata in the agent's store)"
    )
    # QEMU's channel sockets live under the agent's socket root; it is this directory,
    # so the simulator (QEMU's stand-in, outside the sandbox) can listen there.
    base = os.path.join(work, "dom0")
    box = HostSandbox(base, binds=[ansible.collections, (sockets, "/run/xenchannel")])
    # A dom0 runs systemd: its tmpfiles make the agent's socket root at boot. apt runs on
    # the same layers with the host network (net=False); the agent will not.
    apt_install(HostSandbox(base, net=False, binds=[APT_ARCHIVES]), ["systemd"], "dom0")
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
            env=ansible.env,
            timeout=600,
            cwd=box.share,
        ),
        "playbooks/provision.yml",
    )
    return box


def start_agent(box: HostSandbox, sockets: str) -> Running:
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
        " (on a copy of the template)"
    )
    clone = os.path.join(work, "clone")
    os.makedirs(clone)
    # cp -a keeps the overlay's whiteouts and xattrs: the copy is the template's layer.
    subprocess.run(
        ["cp", "-a", os.path.join(template, "upper"), os.path.join(clone, "upper")],  # noqa: S607
        check=True,
        timeout=300,
    )
    binds: List[object] = [(dev, "/dev"), ("/dev/pts", "/dev/pts")]
    binds.extend((f"/dev/{name}", f"/dev/{name}") for name in DEVICES)
    box = HostSandbox(clone, binds=binds, hostname="debian12-template")  # type: ignore[arg-type]
    guest = box.start(["sleep", "600"], env=CLEAN_ENV, timeout=600)
    # The clone's NIC, with the MAC its xl config gives it: cloud-init waits for the
    # devices its network-config names.  One end of a veth pair, in the sandbox's own
    # network namespace; sysfs is mounted again so that /sys/class/net shows that
    # namespace's links, not this machine's.
    checked(
        guest.run(
            [
                "sh",
                "-c",
                f"ip link add eth0 address {mac} type veth peer name xc-peer0"
                " && mount -t sysfs sysfs /sys",
            ],
            env=CLEAN_ENV,
        ),
        "adding the clone's network interface",
    )
    return guest


def run_stages(progress: Progress, guest: Running) -> None:
    for label, argv in CLOUD_INIT_STAGES:
        started = time.monotonic()
        checked(guest.run(argv, env=CLEAN_ENV, timeout=180), f"cloud-init {label}")
        progress.note(f"cloud-init {label:<22} {time.monotonic() - started:5.1f} s")
    # systemd runs this after cloud-final (xenchannel-report-status.service): it tells
    # dom0 whether cloud-init applied the bundle.
    checked(
        guest.run(["/usr/lib/xenchannel/xenchannel-report-status"], env=CLEAN_ENV, timeout=90),
        "xenchannel-report-status",
    )
    progress.note("xenchannel-report-status: cloud-init's result sent to dom0")


def wait_applied(
    progress: Progress, ansible: Ansible, agent: Running, vm: Dict[str, object]
) -> None:
    progress("dom0: xenchannel.provision.channel_status waits for 'applied'")
    play = [
        {
            "name": "Wait until the clone has applied its identity",
            "hosts": "dom0",
            "gather_facts": False,
            "tasks": [
                {
                    "name": "Wait for applied",
                    "xenchannel.provision.channel_status": {
                        "domain": vm["name"],
                        "wait_for": "applied",
                        "timeout": 60,
                    },
                }
            ],
        }
    ]
    path = os.path.join(agent.box.share, "wait.yml")
    with open(path, "w") as handle:
        json.dump(play, handle)
    checked(
        agent.run(ansible.argv(path, INVENTORY), env=ansible.env, timeout=120, cwd=agent.box.share),
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
    table = checked(
        agent.run(["xenchannel-dom0", "status"], env=CLEAN_ENV), "xenchannel-dom0 status"
    )
    print("\nThe dom0 agent's status (xenchannel-dom0 status):")
    for line in table.stdout.splitlines():
        print(f"  {line}")
    print("\nThe dom0 agent's log for the clone:")
    for line in agent.output()[1].splitlines():
        if f"domain={vm['name']} " in line:
            print(f"  {line}")


def run_demo(work: str, rate: Optional[float]) -> int:
    progress = Progress()
    print("xenchannel demo: dom0 and one clone, each in a sandbox on this machine; no Xen host.")
    ansible = Ansible(os.path.join(work, "ansible"))
    try:
        template = build_template(progress, ansible, work)
        sockets = os.path.join(work, "sockets")
        os.makedirs(sockets, mode=0o700)
        dom0 = provision_dom0(progress, ansible, work, sockets)
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
            with boot_clone(progress, template, work, dev, str(vm["vifs"][0]["mac"])) as guest:
                run_stages(progress, guest)
                wait_applied(progress, ansible, agent, vm)
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
