"""Boot the harness's real Xen under QEMU 10 software emulation and run one dom0 job; or
boot the same guest template directly under QEMU with a virtio-serial named channel.

Usage (root)::

    .venv/bin/python tests/e2e/boot.py                 # build what is missing, run XEN_JOB
    .venv/bin/python tests/e2e/boot.py --job FILE      # run FILE as dom0's job instead
    .venv/bin/python tests/e2e/boot.py --virtio        # the template under QEMU, no Xen

What runs: QEMU from the trixie host chroot (``build.py hostroot``), inside private mount,
network and pid namespaces (no network at all; QEMU is pid 1 there, so everything dies
with it), with Xen 4.20 as the multiboot kernel, the trixie kernel as dom0, and disks:

    vda  dom0.img (build.py dom0image), snapshot=on: the cached image is never written
    vdb  job.img, made here per run: run.sh + job-lib.sh in, result/ back out
    vdc  vm1's disk, vdd vm2's, vde the NoCloud baseline's: copies of the template
    vdf  cidata.iso, the NoCloud baseline's seed (files/nocloud/), made here
    vdg  vm3's disk: a copy of the template without cloud-init (build.py agentimage)

dom0's init (files/dom0-init) starts Xen's daemons, runs /job/run.sh bounded by
``xenchannel.job_timeout=`` and powers off. The serial console is logged to
``.cache/e2e/runs/<name>/console.log``, each line prefixed with the host's seconds since
QEMU started; ``MARK <name> ... uptime=<dom0 seconds>`` lines are the phases. After QEMU
exits (or is killed at the deadline), ``result/`` is copied out of job.img with debugfs
(no mount needed).
"""

import argparse
import io
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import build  # noqa: E402  (puts the repository on sys.path)
import pycdlib  # noqa: E402  (requirements/dev.txt)

from testbed import ansible_run  # noqa: E402

RUNS = os.path.join(build.CACHE, "runs")
# Where the cache appears inside the host chroot while QEMU runs.
INSIDE = "/e2e"

# The whole Xen flow in one dom0 boot, the phases one after the other so that each
# guest boots alone (the benchmark compares vm1's first boot with the NoCloud one's):
XEN_JOB = """\
start_agent
# dom0's bridges (xenbr0 static, xenbr1 with dnsmasq's DHCP) for the clones' vifs.
net_up
# 0. A VM xl cannot create: the failure is marked with xl's reason, its steps skipped.
broken_config
create broken
wait_status broken applied agent-status-applied 600
shutdown_vm broken 300
# 1. vm1's first boot: identity over the channel, status back to the agent; then, from
#    dom0, its addresses pinged and an SSH login with the reported host keys pinned,
#    and the guide's flow (channel_status, known_hosts, add_host, a play over SSH).
create vm1
wait_status vm1 applied agent-status-applied 600
wait_console vm1 'Cloud-init v.* finished' guest-final-seen 300
wait_ready vm1 300
net_check vm1 debian
guide_flow vm1 debian
query vm1
collect vm1-boot1
shutdown_vm vm1 300
snapshot vm1
# 2. vm2, a second clone of the template on the same host; its second channel carries
#    the raw channel benchmark (files/channel-bench against files/guest-echo).
create vm2
wait_status vm2 applied agent-status-applied 600
wait_ready vm2 300
net_check vm2 debian
channel_bench vm2 /run/xenchannel/vm2-echo.sock
collect vm2-boot1
shutdown_vm vm2 300
snapshot vm2
# 3. vm1's second boot with the dom0 agent stopped: same instance, nothing re-applied.
stop_agent
create vm1
wait_console vm1 'Cloud-init v.* finished' guest-final-seen 600
shutdown_vm vm1 300
snapshot vm1
# 4. The NoCloud baseline: the same template with a cidata ISO instead of the channel.
nocloud_config
create nocloud
wait_console nocloud 'Finished.*cloud-init-local' guest-local-done-seen 420
wait_console nocloud 'Cloud-init v.* finished' guest-final-seen 300
shutdown_vm nocloud 300
snapshot nocloud
# 5. vm3, a clone of the template without cloud-init: the in-guest agent applies the
#    bundle (hostname, keys, network) and reports; checked from dom0 like vm1.
start_agent
create vm3
wait_status vm3 applied agent-status-applied 600
wait_ready vm3 300
net_check vm3 root
collect vm3-boot1
shutdown_vm vm3 300
snapshot vm3
"""
# The disks the job's VMs use, in the order they appear in dom0 (vdc, vdd, vde; the
# cidata ISO is vdf); then the clones of the template without cloud-init (vdg).
XEN_VMS = ("vm1", "vm2", "nocloud")
AGENT_VMS = ("vm3",)
NOCLOUD_SEED = os.path.join(build.FILES, "nocloud")

# Lines after which nothing more will come: Xen keeps the machine up (noreboot) so that
# the console shows why, and the harness stops a few seconds later instead of at the
# deadline.
FATAL = ("Hardware Dom0 crashed", "Kernel panic - not syncing")

MARK_RE = re.compile(r"MARK (\S+)(.*?)(?: uptime=([\d.]+))?\s*$")


class Mark(NamedTuple):
    name: str
    host: float
    uptime: Optional[float]
    detail: str


class BootResult(NamedTuple):
    run_dir: str
    marks: List[Mark]
    wall: float
    timed_out: bool
    qemu_rc: Optional[int]
    result_dir: str

    def mark(
        self, name: str, vm: Optional[str] = None, boot: int = 1, last: bool = False
    ) -> Optional[Mark]:
        """The first (or last) mark of that name; with vm, one of that VM's boot."""
        found = None
        for m in self.marks:
            if m.name != name:
                continue
            if vm is None or (
                f" vm={vm} " in m.detail + " " and f" boot={boot} " in m.detail + " "
            ):
                if not last:
                    return m
                found = m
        return found

    def failure(self, vm: str, boot: int = 1) -> Optional[str]:
        """Why that VM's boot did not go on (its xl create failed, or the domain died), as
        dom0's job marked it; None while nothing says so."""
        for m in self.marks:
            failed = m.name == "xl-create-failed" or m.name.endswith("-died")
            if failed and self.mark(m.name, vm, boot) is m:
                reason = m.detail.partition(" reason=")[2].strip()
                return f"{m.name}: {reason or 'no reason given'}"
        return None

    def console_time(
        self,
        vm: str,
        boot: int,
        regex: str,
        start_mark: str = "xl-create-exec",
        prefix: Optional[str] = None,
    ) -> Optional[float]:
        """Host seconds of the first line of vm's console matching regex in that boot.

        Under Xen dom0 streams each guest's console with a ``[vm] `` prefix; under QEMU
        alone the guest's console is the serial port itself (prefix "")."""
        # The last attempt's start: a retried xl create's first try does not count.
        start = self.mark(start_mark, vm, boot, last=True)
        if start is None:
            return None
        pattern = re.compile(regex)
        prefix = f"[{vm}] " if prefix is None else prefix
        with open(os.path.join(self.run_dir, "console.log"), errors="replace") as f:
            for line in f:
                stamp, _sep, text = line.partition("] ")
                try:
                    t = float(stamp.lstrip("[ "))
                except ValueError:
                    continue
                if t >= start.host and text.startswith(prefix) and pattern.search(text):
                    return t
        return None

    def create_to(
        self,
        vm: str,
        boot: int,
        regex: str,
        start_mark: str = "xl-create-exec",
        prefix: Optional[str] = None,
    ) -> Optional[float]:
        """Seconds from the VM's start (``xl create``) to the first console line matching
        regex."""
        start = self.mark(start_mark, vm, boot, last=True)
        t = self.console_time(vm, boot, regex, start_mark, prefix)
        return None if start is None or t is None else t - start.host

    def phases(self) -> str:
        """One line per mark: host seconds, dom0 uptime, and the step from the last one."""
        lines, last = [], 0.0
        for m in self.marks:
            up = f"{m.uptime:8.2f}" if m.uptime is not None else "       -"
            lines.append(f"{m.host:8.2f}s (+{m.host - last:6.2f})  dom0 {up}  {m.name}{m.detail}")
            last = m.host
        return "\n".join(lines)


def qemu_machine(memory: str) -> List[str]:
    """QEMU's common part: software emulation with 2 vCPUs, the serial port on stdio,
    no display, monitor, default devices or reboot (a reboot ends the run)."""
    return [
        "qemu-system-x86_64",
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-smp",
        "2",
        "-m",
        memory,
        "-display",
        "none",
        "-nodefaults",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        "-no-reboot",
    ]


def inside(path: str) -> str:
    """A path under the cache as QEMU sees it in the host chroot."""
    return INSIDE + path[len(build.CACHE) :]


def qemu_argv(run: str, disks: Sequence[str], job_timeout: int) -> List[str]:
    dom0_cmdline = (
        "console=hvc0 root=/dev/vda init=/usr/sbin/xenchannel-e2e-init "
        f"xenchannel.job_timeout={job_timeout}"
    )
    argv = [
        *qemu_machine("2048"),
        "-kernel",
        f"{INSIDE}/dom0root/xen",
        "-append",
        "console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M dom0_max_vcpus=1 noreboot",
        "-initrd",
        f"{INSIDE}/kernel/vmlinuz {dom0_cmdline},{INSIDE}/initrds/dom0-initrd.gz",
        "-drive",
        f"file={INSIDE}/dom0image/dom0.img,if=virtio,format=raw,snapshot=on",
        "-drive",
        f"file={inside(run)}/job.img,if=virtio,format=raw",
    ]
    for disk in disks:
        argv += ["-drive", f"file={inside(run)}/{disk},if=virtio,format=raw,cache=unsafe"]
    return argv


def make_job(run: str, job: str) -> None:
    jobdir = os.path.join(run, "job")
    os.makedirs(jobdir)
    shutil.copyfile(os.path.join(build.FILES, "job-lib.sh"), os.path.join(jobdir, "job-lib.sh"))
    with open(os.path.join(jobdir, "run.sh"), "w") as f:
        f.write("#!/bin/bash\n. /job/job-lib.sh\nmark job-script\n" + job)
    build.run(
        [
            "mke2fs",
            "-q",
            "-t",
            "ext4",
            "-L",
            "job",
            "-d",
            jobdir,
            os.path.join(run, "job.img"),
            "64M",
        ],
        "making the job disk",
    )


def read_results(run: str) -> str:
    dest = os.path.join(run, "result")
    # rdump refuses to write into an existing directory (and still exits 0).
    shutil.rmtree(dest, ignore_errors=True)
    # debugfs reads the ext4 image directly: no loop device, no mount.
    build.run(
        ["debugfs", "-R", f"rdump /result {run}", os.path.join(run, "job.img")],
        "reading the results off the job disk",
    )
    # A job that never ran leaves no /result; the tests then say what is missing.
    os.makedirs(dest, exist_ok=True)
    return dest


def _terminate(signum, frame):
    raise SystemExit(f"terminated by signal {signum}")


def read_disk_file(image: str, path: str) -> Optional[str]:
    """A file's text from an ext4 image (a guest's disk after power-off), None if absent.

    debugfs does not follow symbolic links: pass a real path."""
    proc = subprocess.run(
        ["debugfs", "-R", f"cat {path}", image],
        capture_output=True,
        timeout=60,
        check=False,
    )
    err = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0 or "File not found" in err:
        return None
    return proc.stdout.decode("utf-8", "replace")


def make_cidata(run: str) -> str:
    """The NoCloud baseline's seed as an ISO 9660 volume labelled cidata (files/nocloud/)."""
    path = os.path.join(run, "cidata.iso")
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for name in ("meta-data", "user-data", "network-config"):
        with open(os.path.join(NOCLOUD_SEED, name), "rb") as f:
            data = f.read()
        short = name.replace("-", "").upper()[:8]
        iso.add_fp(
            io.BytesIO(data),
            len(data),
            f"/{short}.;1",
            rr_name=name,
            joliet_path=f"/{name}",
        )
    iso.write(path)
    iso.close()
    return path


def prepare_run(name: str) -> str:
    run = os.path.join(RUNS, name)
    os.makedirs(run, exist_ok=True)
    for entry in ("job", "job.img", "result", "console.log", "agent", "cidata.iso", "net"):
        path = os.path.join(run, entry)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.unlink(path)
    return run


def copy_template(
    outs: Dict[str, str], run: str, disk: str, fresh: bool, image: str = "guestimage"
) -> None:
    path = os.path.join(run, disk)
    if fresh or not os.path.exists(path):
        build.run(
            ["cp", "--sparse=always", os.path.join(outs[image], "guest.img"), path],
            f"copying the template to {disk}",
        )


def in_host_chroot(host: str, qemu: Sequence[str], loopback: bool = False) -> List[str]:
    """QEMU from the host chroot, in private mount, network and pid namespaces; with
    loopback, the namespace's lo is up (QEMU's user network forwards a port on it)."""
    script = (
        ("ip link set lo up && " if loopback else "")
        + f'mount -t proc proc "{host}/proc" && mount --rbind /dev "{host}/dev" && '
        f'mkdir -p "{host}{INSIDE}" && mount --bind "{build.CACHE}" "{host}{INSIDE}" && '
        f'exec chroot "{host}" "$@"'
    )
    return [
        "unshare",
        "--mount",
        "--net",
        "--pid",
        "--fork",
        "--kill-child",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
        *qemu,
    ]


class Console(NamedTuple):
    marks: List[Mark]
    wall: float
    timed_out: bool
    rc: Optional[int]


def run_console(
    argv: Sequence[str],
    run: str,
    timeout: float,
    echo: bool,
    on_line: Optional[Callable[[str, float], Optional[Mark]]] = None,
    on_tick: Optional[Callable[[float], Optional[Mark]]] = None,
    on_start: Optional[Callable[[int], None]] = None,
) -> Console:
    """Run QEMU, log its serial console with host seconds, collect MARKs, bounded.

    on_line may turn a console line into a mark; on_tick runs about once a second and may
    return a mark too. A "done" mark (dom0-done, qemu-powerdown) gives QEMU 30 s (90 s
    for a powerdown) to exit before it is killed."""
    marks: List[Mark] = []
    timed_out = False
    # A SIGTERM (a CI job cancelled, pytest-timeout) must still reach the finally below.
    previous = signal.signal(signal.SIGTERM, _terminate)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    if on_start is not None:
        # unshare's own pid: it is in the new network namespace (nsenter --net -t PID).
        on_start(proc.pid)

    def add(mark: Mark) -> None:
        marks.append(mark)
        if echo:
            build.log(f"[{mark.host:8.2f}s] MARK {mark.name}{mark.detail}")

    try:
        with open(os.path.join(run, "console.log"), "w") as console:
            buf = b""
            done_at: Optional[float] = None
            grace = 30.0
            fatal_at: Optional[float] = None
            fatal_line = ""
            last_tick = 0.0
            while True:
                now = time.monotonic()
                if now - t0 > timeout:
                    timed_out = True
                    break
                if done_at is not None and now - done_at > grace:
                    break
                if fatal_at is not None and now - fatal_at > 5:
                    build.log(f"stopping: {fatal_line}")
                    break
                if on_tick is not None and now - last_tick >= 1.0 and done_at is None:
                    last_tick = now
                    mark = on_tick(now - t0)
                    if mark is not None:
                        add(mark)
                        if mark.name in DONE:
                            done_at, grace = time.monotonic(), DONE[mark.name]
                ready, _writable, _errors = select.select([proc.stdout], [], [], 1.0)
                if not ready:
                    if proc.poll() is not None:
                        break
                    continue
                data = os.read(proc.stdout.fileno(), 65536)
                if not data:
                    break
                buf += data
                while b"\n" in buf:
                    raw, buf = buf.split(b"\n", 1)
                    line = raw.decode("utf-8", "replace").rstrip("\r")
                    host_t = time.monotonic() - t0
                    console.write(f"[{host_t:8.2f}] {line}\n")
                    if fatal_at is None and any(f in line for f in FATAL):
                        fatal_at, fatal_line = time.monotonic(), line.strip()
                    m = MARK_RE.search(line)
                    mark = None
                    if m and not line.lstrip().startswith("["):
                        uptime = float(m.group(3)) if m.group(3) else None
                        mark = Mark(m.group(1), host_t, uptime, m.group(2))
                    elif on_line is not None:
                        mark = on_line(line, host_t)
                    if mark is not None:
                        add(mark)
                        if mark.name in DONE and done_at is None:
                            done_at, grace = time.monotonic(), DONE[mark.name]
                console.flush()
    finally:
        if proc.poll() is None:
            # QEMU is pid 1 of its namespace: killing the group ends it and all it started.
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        signal.signal(signal.SIGTERM, previous)
    return Console(marks, time.monotonic() - t0, timed_out, proc.returncode)


# Marks after which QEMU is expected to exit by itself, and how long it gets.
DONE = {"dom0-done": 30.0, "qemu-powerdown": 120.0}


def boot(
    name: str,
    job: str = XEN_JOB,
    vms: Sequence[str] = XEN_VMS,
    fresh_disks: bool = True,
    timeout: float = 3000,
    echo: bool = True,
) -> BootResult:
    """Build what is missing, boot, run job in dom0, return the marks and the results.

    fresh_disks=False keeps the VMs' disks of the last run of the same name (a second
    boot of the same VM)."""
    outs = build.build(
        ["hostroot", "kernel", "dom0root", "initrds", "guestimage", "agentimage", "dom0image"]
    )
    run = prepare_run(name)
    disks = [f"{vm}.img" for vm in vms]
    agent_disks = [f"{vm}.img" for vm in AGENT_VMS]
    t = time.monotonic()
    for disk in disks:
        copy_template(outs, run, disk, fresh_disks)
    for disk in agent_disks:
        copy_template(outs, run, disk, fresh_disks, "agentimage")
    make_cidata(run)
    make_job(run, job)
    build.log(f"run {name}: disks and job ready in {time.monotonic() - t:.1f} s")
    # The job's own bound is a little shorter, so dom0 can still report and power off.
    job_timeout = max(60, int(timeout) - 120)
    qemu = qemu_argv(run, [*disks, "cidata.iso", *agent_disks], job_timeout)
    console = run_console(in_host_chroot(outs["hostroot"], qemu), run, timeout, echo)
    result = read_results(run)
    return BootResult(run, console.marks, console.wall, console.timed_out, console.rc, result)


# --------------------------------------------------------------------------- virtio

# The same template under QEMU alone (the KVM/libvirt way: a virtio-serial port with the
# channel's name), served by the dom0 agent on this host. Software emulation here; the
# guest sees QEMU's devices, not Xen's: /dev/vda, ttyS0, /dev/virtio-ports/<name>.
VIRTIO_VM = "kvm1"
VIRTIO_UUID = "6f1ae2c5-8a0e-4d53-9d1c-3c6f2f0b6a11"
# The guest's NIC on QEMU's user network (slirp: its DHCP server gives 10.0.2.15).
VIRTIO_MAC = "52:54:00:e2:e2:01"
VIRTIO_BUNDLE = {
    "meta_data": {"instance-id": VIRTIO_UUID, "local-hostname": "e2e-kvm1"},
    "user_data": (
        # Its own key pair, made per run (virtio_key).
        "#cloud-config\nssh_authorized_keys:\n  - E2E_SSH_PUBLIC_KEY\n"
    ),
    "network_config": {
        "version": 2,
        "ethernets": {
            "nic0": {"match": {"macaddress": VIRTIO_MAC}, "dhcp4": True},
        },
    },
}
CHANNEL = "org.xenchannel.provision.0"
# The port QEMU's user network forwards to the guest's sshd, on the namespace's lo.
VIRTIO_SSH_PORT = 2222


def virtio_key(net: str) -> str:
    """A key pair for the QEMU guest's login, made per run; the public key."""
    path = os.path.join(net, "id_ed25519")
    argv = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "e2e-kvm1@xenchannel"]
    build.run([*argv, "-f", path], "ssh-keygen for the QEMU guest")
    with open(path + ".pub") as f:
        return f.read().strip()


def write_virtio_store(agent_dir: str, public_key: str) -> None:
    """The VM's bundle in the agent's store, written by the collection's channel_metadata
    module through ansible-playbook, as an operator of a KVM host would."""
    bundle = dict(
        VIRTIO_BUNDLE,
        user_data=VIRTIO_BUNDLE["user_data"].replace(build.SSH_KEY_PLACEHOLDER, public_key),
    )
    task = {
        "name": "bundle",
        "xenchannel.provision.channel_metadata": {
            "domain": VIRTIO_VM,
            "socket": os.path.join(agent_dir, "sockets", f"{VIRTIO_VM}.sock"),
            "socket_root": os.path.join(agent_dir, "sockets"),
            "store_dir": os.path.join(agent_dir, "store"),
            **bundle,
        },
    }
    work = os.path.join(agent_dir, "ansible")
    os.makedirs(work)
    with ansible_run.collection_tree() as collections:
        env = ansible_run.playbook_env(collections, work)
        proc = ansible_run.run_tasks(collections, work, [task], env=env, timeout=300)
    if proc.returncode != 0:
        raise build.BuildError(
            f"channel_metadata for {VIRTIO_VM} failed:\n{proc.stdout}{proc.stderr}"
        )


def start_agent(agent_dir: str) -> subprocess.Popen:
    """The dom0 agent from this repository's runtime (what the dom0_agent role installs),
    serving the sockets under agent_dir; the caller stops it."""
    for sub in ("sockets", "state"):
        os.makedirs(os.path.join(agent_dir, sub), mode=0o700, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.path.join(build.ROOT, "runtime"))
    with open(os.path.join(agent_dir, "agent.log"), "w") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "xenchannel.dom0",
                "run",
                "--store",
                os.path.join(agent_dir, "store"),
                "--state",
                os.path.join(agent_dir, "state"),
                "--socket-root",
                os.path.join(agent_dir, "sockets"),
                "--control-socket",
                os.path.join(agent_dir, "sockets", "agent.sock"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def agent_state(agent_dir: str, vm: str) -> Dict:
    env = dict(os.environ, PYTHONPATH=os.path.join(build.ROOT, "runtime"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "xenchannel.dom0",
            "status",
            vm,
            "--json",
            "--state",
            os.path.join(agent_dir, "state"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    try:
        return json.loads(proc.stdout) if proc.returncode == 0 else {}
    except ValueError:
        return {}


def qmp_powerdown(path: str) -> bool:
    """ACPI power button through QEMU's QMP socket; the guest's systemd shuts down."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(path)
            reader = sock.makefile("rb")
            reader.readline()  # the greeting
            for command in ("qmp_capabilities", "system_powerdown"):
                sock.sendall(json.dumps({"execute": command}).encode() + b"\n")
                while True:
                    reply = json.loads(reader.readline())
                    if "return" in reply or "error" in reply:
                        break
            return "return" in reply
    except (OSError, ValueError):
        return False


VIRTIO_PHASES = (
    ("guest-kernel", "Linux version"),
    ("guest-systemd", "Welcome to .*Debian"),
    ("guest-cloud-init-local", "running 'init-local'"),
    ("guest-cloud-init-local-done", "Finished.*cloud-init-local"),
    ("guest-multi-user", "Reached target.*[Mm]ulti-[Uu]ser"),
    ("guest-cloud-init-final", "Cloud-init v.* finished at"),
)


def virtio_ssh(pid: int, record: Dict, net: str) -> bool:
    """ssh into the QEMU guest through its forwarded port, from inside QEMU's network
    namespace, with the bundle's key and strict host key checking against the host keys
    the guest reported; its answers in <net>/ssh.txt."""
    known = os.path.join(net, "known_hosts")
    with open(known, "w") as f:
        for key in (record.get("report") or {}).get("host_keys") or []:
            f.write(f"[127.0.0.1]:{VIRTIO_SSH_PORT} {key}\n")
    argv = [
        "nsenter",
        f"--target={pid}",
        "--net",
        "ssh",
        "-i",
        os.path.join(net, "id_ed25519"),
        "-p",
        str(VIRTIO_SSH_PORT),
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "ConnectTimeout=60",
        "debian@127.0.0.1",
        'echo "hostname=$(hostname)"; cloud-init status --long',
    ]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    except subprocess.TimeoutExpired:
        return False
    with open(os.path.join(net, "ssh.txt"), "w") as f:
        f.write(proc.stdout)
    with open(os.path.join(net, "ssh.err"), "w") as f:
        f.write(proc.stderr)
    return proc.returncode == 0


def boot_virtio(name: str = "virtio", timeout: float = 1500, echo: bool = True) -> BootResult:
    """Boot the template under QEMU with a virtserialport named like the Xen channel, the
    dom0 agent serving its socket; power the guest off once the agent says applied and
    cloud-init finished. Results: the agent's state and log in result/, the disk."""
    outs = build.build(["hostroot", "kernel", "initrds", "guestimage"])
    run = prepare_run(name)
    copy_template(outs, run, f"{VIRTIO_VM}.img", True)
    agent_dir = os.path.join(run, "agent")
    os.makedirs(agent_dir, mode=0o700)
    net = os.path.join(run, "net")
    os.makedirs(net, mode=0o700)
    write_virtio_store(agent_dir, virtio_key(net))
    qemu = [
        *qemu_machine("1024"),
        "-uuid",
        VIRTIO_UUID,
        "-qmp",
        f"unix:{inside(run)}/qmp.sock,server=on,wait=off",
        "-kernel",
        f"{INSIDE}/kernel/vmlinuz",
        # The dom0 initramfs: it loads virtio_blk (QEMU's disk), the guest's xen-blkfront.
        "-initrd",
        f"{INSIDE}/initrds/dom0-initrd.gz",
        "-append",
        "console=ttyS0 root=/dev/vda",
        "-drive",
        f"file={inside(run)}/{VIRTIO_VM}.img,if=virtio,format=raw,cache=unsafe",
        "-device",
        "virtio-serial-pci",
        "-chardev",
        f"socket,id=xc0,path={inside(agent_dir)}/sockets/{VIRTIO_VM}.sock,server=on,wait=off",
        "-device",
        f"virtserialport,chardev=xc0,name={CHANNEL}",
        # QEMU's user network: DHCP and a forwarded port, no ping from outside, no bridge.
        "-netdev",
        f"user,id=n0,hostfwd=tcp:127.0.0.1:{VIRTIO_SSH_PORT}-:22",
        "-device",
        f"virtio-net-pci,netdev=n0,mac={VIRTIO_MAC}",
    ]
    agent = start_agent(agent_dir)
    seen: Dict[str, bool] = {}
    state: Dict[str, object] = {"last": "", "polled": -10.0, "pid": 0, "final": None}
    phases = [(n, re.compile(r)) for n, r in VIRTIO_PHASES]

    def on_line(line: str, host_t: float) -> Optional[Mark]:
        for phase, regex in phases:
            if phase not in seen and regex.search(line):
                seen[phase] = True
                return Mark(phase, host_t, None, f" vm={VIRTIO_VM} boot=1")
        return None

    def on_tick(host_t: float) -> Optional[Mark]:
        polled = state["polled"]
        assert isinstance(polled, float)
        if "agent-status-applied" not in seen and host_t - polled >= 5.0:
            state["polled"] = host_t
            record = agent_state(agent_dir, VIRTIO_VM)
            got = (record.get("status") or {}).get("state") or ""
            if got and got != state["last"]:
                state["last"] = got
                if got in ("applied", "failed"):
                    seen["agent-status-applied"] = True
                    name = "agent-status-applied" if got == "applied" else "agent-status-failed"
                    return Mark(name, host_t, None, f" vm={VIRTIO_VM} boot=1")
        if "agent-status-applied" in seen and "guest-cloud-init-final" in seen:
            if state["final"] is None:
                state["final"] = host_t
            final = state["final"]
            assert isinstance(final, float)
            # The report comes after cloud-init's final stage; wait for it (bounded).
            if "agent-ready" not in seen and host_t - final < 180:
                record = agent_state(agent_dir, VIRTIO_VM)
                if (record.get("summary") or {}).get("ready") not in ("yes", "failed"):
                    return None
                seen["agent-ready"] = True
                with open(os.path.join(net, "ready.json"), "w") as f:
                    json.dump(record, f, indent=2)
                pid = state["pid"]
                assert isinstance(pid, int)
                ok = virtio_ssh(pid, record, net)
                return Mark(
                    "ssh-ok" if ok else "ssh-failed", host_t, None, f" vm={VIRTIO_VM} boot=1"
                )
            ok = qmp_powerdown(os.path.join(run, "qmp.sock"))
            return Mark(
                "qemu-powerdown", host_t, None, f" vm={VIRTIO_VM} acpi={'sent' if ok else 'failed'}"
            )
        return None

    def on_start(pid: int) -> None:
        state["pid"] = pid

    try:
        marks = [Mark("qemu-start", 0.0, None, f" vm={VIRTIO_VM} boot=1")]
        console = run_console(
            in_host_chroot(outs["hostroot"], qemu, loopback=True),
            run,
            timeout,
            echo,
            on_line,
            on_tick,
            on_start,
        )
    finally:
        agent.terminate()
        try:
            agent.wait(timeout=15)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait(timeout=15)
    result = os.path.join(run, "result")
    os.makedirs(result)
    with open(os.path.join(result, "agent-status.json"), "w") as f:
        json.dump(agent_state(agent_dir, VIRTIO_VM), f, indent=2)
    shutil.copyfile(os.path.join(agent_dir, "agent.log"), os.path.join(result, "agent.log"))
    return BootResult(
        run, marks + console.marks, console.wall, console.timed_out, console.rc, result
    )


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--name", default="manual", help="run directory under .cache/e2e/runs")
    parser.add_argument("--job", help="a bash file to run in dom0 instead of the default job")
    parser.add_argument(
        "--vms", default=",".join(XEN_VMS), help="comma-separated VMs whose disks to attach"
    )
    parser.add_argument("--keep-disks", action="store_true", help="reuse the last run's VM disks")
    parser.add_argument("--timeout", type=float, default=3000, help="seconds before QEMU is killed")
    parser.add_argument(
        "--virtio", action="store_true", help="boot the template under QEMU alone (virtio-serial)"
    )
    args = parser.parse_args(argv)
    job = XEN_JOB
    if args.job:
        with open(args.job) as f:
            job = f.read()
    try:
        if args.virtio:
            res = boot_virtio(args.name, min(args.timeout, 1500))
        else:
            res = boot(args.name, job, args.vms.split(","), not args.keep_disks, args.timeout)
    except build.BuildError as exc:
        build.log(f"FAILED: {exc}")
        return 1
    print(res.phases())
    print(f"wall {res.wall:.1f} s, timed out: {res.timed_out}, qemu rc {res.qemu_rc}")
    print(f"console: {res.run_dir}/console.log, results: {res.result_dir}")
    done = res.mark("qemu-powerdown" if args.virtio else "job-done")
    return 0 if done and not res.timed_out else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
