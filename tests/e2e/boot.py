"""Boot the harness's real Xen under QEMU 10 software emulation and run one dom0 job.

Usage (root)::

    .venv/bin/python tests/e2e/boot.py                 # build what is missing, boot vm1
    .venv/bin/python tests/e2e/boot.py --job FILE      # run FILE as dom0's job instead

What runs: QEMU from the trixie host chroot (``build.py hostroot``), inside private mount,
network and pid namespaces (no network at all; QEMU is pid 1 there, so everything dies
with it), with Xen 4.20 as the multiboot kernel, the trixie kernel as dom0, and disks:

    vda  dom0.img (build.py dom0image), snapshot=on: the cached image is never written
    vdb  job.img, made here per run: run.sh + job-lib.sh in, result/ back out
    vdc  vm1's disk, vdd vm2's: copies of the template (build.py guestimage)

dom0's init (files/dom0-init) starts Xen's daemons, runs /job/run.sh bounded by
``xenchannel.job_timeout=`` and powers off. The serial console is logged to
``.cache/e2e/runs/<name>/console.log``, each line prefixed with the host's seconds since
QEMU started; ``MARK <name> ... uptime=<dom0 seconds>`` lines are the phases. After QEMU
exits (or is killed at the deadline), ``result/`` is copied out of job.img with debugfs
(no mount needed).
"""

import argparse
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from typing import List, NamedTuple, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import build  # noqa: E402

RUNS = os.path.join(build.CACHE, "runs")
# Where the cache appears inside the host chroot while QEMU runs.
INSIDE = "/e2e"

# The first boot of a systemd guest with cloud-init under two levels of emulation.
DEFAULT_JOB = """\
start_agent
create vm1
wait_console vm1 'Reached target.*[Mm]ulti-[Uu]ser' guest-multi-user-seen 900
wait_status vm1 applied agent-status-applied 240
collect
shutdown_vm vm1 180
stop_agent
"""

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

    def mark(self, name: str) -> Optional[Mark]:
        return next((m for m in self.marks if m.name == name), None)

    def phases(self) -> str:
        """One line per mark: host seconds, dom0 uptime, and the step from the last one."""
        lines, last = [], 0.0
        for m in self.marks:
            up = f"{m.uptime:8.2f}" if m.uptime is not None else "       -"
            lines.append(f"{m.host:8.2f}s (+{m.host - last:6.2f})  dom0 {up}  {m.name}{m.detail}")
            last = m.host
        return "\n".join(lines)


def qemu_argv(run: str, disks: Sequence[str], job_timeout: int) -> List[str]:
    inside = INSIDE + run[len(build.CACHE) :]
    dom0_cmdline = (
        "console=hvc0 root=/dev/vda init=/usr/sbin/xenchannel-e2e-init "
        f"xenchannel.job_timeout={job_timeout}"
    )
    argv = [
        "qemu-system-x86_64",
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-smp",
        "2",
        "-m",
        "2048",
        "-display",
        "none",
        "-nodefaults",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        "-no-reboot",
        "-kernel",
        f"{INSIDE}/dom0root/xen",
        "-append",
        "console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M dom0_max_vcpus=1 noreboot",
        "-initrd",
        f"{INSIDE}/kernel/vmlinuz {dom0_cmdline},{INSIDE}/initrds/dom0-initrd.gz",
        "-drive",
        f"file={INSIDE}/dom0image/dom0.img,if=virtio,format=raw,snapshot=on",
        "-drive",
        f"file={inside}/job.img,if=virtio,format=raw",
    ]
    for disk in disks:
        argv += ["-drive", f"file={inside}/{disk},if=virtio,format=raw,cache=unsafe"]
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


def boot(
    name: str,
    job: str = DEFAULT_JOB,
    vms: Sequence[str] = ("vm1",),
    fresh_disks: bool = True,
    timeout: float = 1500,
    echo: bool = True,
) -> BootResult:
    """Build what is missing, boot, run job in dom0, return the marks and the results.

    fresh_disks=False keeps the VMs' disks of the last run of the same name (a second
    boot of the same VM)."""
    outs = build.build(["hostroot", "kernel", "dom0root", "initrds", "guestimage", "dom0image"])
    run = os.path.join(RUNS, name)
    os.makedirs(run, exist_ok=True)
    for entry in ("job", "job.img", "result", "console.log"):
        path = os.path.join(run, entry)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.unlink(path)
    disks = [f"{vm}.img" for vm in vms]
    t = time.monotonic()
    for disk in disks:
        path = os.path.join(run, disk)
        if fresh_disks or not os.path.exists(path):
            build.run(
                ["cp", "--sparse=always", os.path.join(outs["guestimage"], "guest.img"), path],
                f"copying the template to {disk}",
            )
    make_job(run, job)
    build.log(f"run {name}: disks and job ready in {time.monotonic() - t:.1f} s")

    host = outs["hostroot"]
    # The job's own bound is a little shorter, so dom0 can still report and power off.
    job_timeout = max(60, int(timeout) - 120)
    script = (
        f'mount -t proc proc "{host}/proc" && mount --rbind /dev "{host}/dev" && '
        f'mkdir -p "{host}{INSIDE}" && mount --bind "{build.CACHE}" "{host}{INSIDE}" && '
        f'exec chroot "{host}" "$@"'
    )
    argv = [
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
        *qemu_argv(run, disks, job_timeout),
    ]
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
    try:
        with open(os.path.join(run, "console.log"), "w") as console:
            buf = b""
            done_at: Optional[float] = None
            fatal_at: Optional[float] = None
            fatal_line = ""
            while True:
                now = time.monotonic()
                if now - t0 > timeout:
                    timed_out = True
                    break
                # After dom0 said it is done, power-off gets 30 s.
                if done_at is not None and now - done_at > 30:
                    break
                if fatal_at is not None and now - fatal_at > 5:
                    build.log(f"stopping: {fatal_line}")
                    break
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
                    if m and not line.lstrip().startswith("["):
                        mark = Mark(
                            m.group(1),
                            host_t,
                            float(m.group(3)) if m.group(3) else None,
                            m.group(2),
                        )
                        marks.append(mark)
                        if echo:
                            build.log(f"[{host_t:8.2f}s] {line.strip()}")
                        if mark.name == "dom0-done":
                            done_at = time.monotonic()
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
    wall = time.monotonic() - t0
    result = read_results(run)
    return BootResult(run, marks, wall, timed_out, proc.returncode, result)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--name", default="manual", help="run directory under .cache/e2e/runs")
    parser.add_argument("--job", help="a bash file to run in dom0 instead of the default job")
    parser.add_argument("--vms", default="vm1", help="comma-separated VMs whose disks to attach")
    parser.add_argument("--keep-disks", action="store_true", help="reuse the last run's VM disks")
    parser.add_argument("--timeout", type=float, default=1500, help="seconds before QEMU is killed")
    args = parser.parse_args(argv)
    job = DEFAULT_JOB
    if args.job:
        with open(args.job) as f:
            job = f.read()
    try:
        res = boot(args.name, job, args.vms.split(","), not args.keep_disks, args.timeout)
    except build.BuildError as exc:
        build.log(f"FAILED: {exc}")
        return 1
    print(res.phases())
    print(f"wall {res.wall:.1f} s, timed out: {res.timed_out}, qemu rc {res.qemu_rc}")
    print(f"console: {res.run_dir}/console.log, results: {res.result_dir}")
    return 0 if res.mark("job-done") and not res.timed_out else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
