"""Run commands against a throwaway copy of this machine: the roles' tests and the demo.

How to use it::

    from testbed.host_sandbox import HostSandbox

    box = HostSandbox(str(tmp_path / "box"), binds=[workdir])
    box.run(["ansible-playbook", ...], timeout=300).check()   # converge
    box.run(["ansible-playbook", ...]).check()                # again: sees run 1's files
    assert box.mode("/etc/xenchannel/agent.ini") == 0o600
    assert not os.path.exists("/etc/xenchannel")               # the real root is untouched

    with box.start(["python3", "-m", "xenchannel.dom0", "run", ...]) as agent:
        agent.wait_for(lambda: box.exists("/run/xenchannel/agent.sock"), timeout=10)
        agent.run(["xenchannel-dom0", "status"]).check()    # same namespaces as the agent

Each command runs as the only child of pid 1 of ``unshare --mount --uts --ipc --pid
--fork --mount-proc --propagation private`` (plus ``--net`` unless ``net=False``, which
keeps the host network for apt).  Inside, ``/etc /usr /var /opt /root /home /srv`` (or the
``overlaid`` given) are overlayfs mounts whose lower layer is the real directory and whose
upper layer lives in ``<base>/upper/<dir>``: every write lands there, never on the real
root.  The uppers persist, so successive ``run()`` calls on one base see each other's
writes (converge, then check idempotence); ``/run`` and ``/tmp`` are a fresh tmpfs on
every run, as after a reboot.  Anything the command leaves running dies with the pid
namespace when the command ends.  Paths outside the overlaid directories (the
repository, ``binds``) are the real ones and writable: bind only what the command may
change.  ``<base>/share`` is always visible inside at the same path, for playbooks,
inventories and results.

``upper(path)`` says where a write to ``path`` was kept; ``read``/``exists``/``mode``/
``written`` look at the sandbox's merged view (upper over lower, deletions honoured)
from outside, after or between runs.

Needs root (mount and pid namespaces) and util-linux's ``unshare`` and ``nsenter``.
"""

import contextlib
import fcntl
import json
import os
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OVERLAID = ("/etc", "/usr", "/var", "/opt", "/root", "/home", "/srv")
FRESH_TMPFS = ("/run", "/tmp")
HOSTNAME = "xc-sandbox"
# What a command that ran out of time exits with, like coreutils' timeout(1).
TIMEOUT_RC = 124
# Exit status of the sandbox itself failing to set up (mounts), never the command's.
SETUP_RC = 125
# Time a command gets between SIGTERM and SIGKILL when it is stopped.
GRACE = 5.0

Bind = Union[str, Tuple[str, str]]


class Result(NamedTuple):
    rc: int
    stdout: str
    stderr: str

    def check(self) -> "Result":
        """The result itself if rc is 0; otherwise an AssertionError showing the output."""
        assert self.rc == 0, (
            f"rc {self.rc}\n--- stdout\n{self.stdout[-6000:]}\n--- stderr\n{self.stderr[-6000:]}"
        )
        return self


# --------------------------------------------------------------------------- inside


def _mount(*argv: str) -> None:
    proc = subprocess.run(["mount", *argv], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(f"host_sandbox: mount {' '.join(argv)} failed: {proc.stderr}")
        sys.exit(SETUP_RC)


def _loopback_up() -> None:
    """Bring ``lo`` up in the new network namespace, so daemons can use 127.0.0.1."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        ifreq = struct.pack("16sh14x", b"lo", 0)
        flags = struct.unpack("16sh14x", fcntl.ioctl(sock, siocgifflags, ifreq))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sh14x", b"lo", flags | iff_up))


def _inner(spec_path: str) -> int:
    """Pid 1 of the sandbox: mount, run the one command with its bound, exit with its rc."""
    with open(spec_path) as handle:
        spec = json.load(handle)
    # The overlays and the fresh tmpfs mounts hide the host's own directories (a bind's
    # source under /root would be the overlay's copy, under /tmp gone): a descriptor
    # opened before any of them keeps each source the real one.
    sources = [(os.open(src, os.O_PATH), os.path.isdir(src), dst) for src, dst in spec["binds"]]
    for top, upper, work in spec["overlays"]:
        _mount(
            "-t", "overlay", "overlay", "-o", f"lowerdir={top},upperdir={upper},workdir={work}", top
        )
    root = spec["root"]
    prefix = ""
    if root is not None:
        # A root of its own (RootSandbox): its layer over the given root, mounted where
        # the commands are chrooted into, with the file systems a booted system has.
        prefix = root["merged"]
        options = f"lowerdir={root['lower']},upperdir={root['upper']},workdir={root['work']}"
        _mount("-t", "overlay", "overlay", "-o", options, prefix)
        _mount("-t", "proc", "proc", prefix + "/proc")
        _mount("-t", "sysfs", "sysfs", prefix + "/sys")
        if not any(dst == "/dev" for _fd, _is_dir, dst in sources):
            _mount("--rbind", "/dev", prefix + "/dev")
    for top in FRESH_TMPFS:
        mode = "mode=1777" if top == "/tmp" else "mode=0755"
        _mount("-t", "tmpfs", "-o", mode, "tmpfs", prefix + top)
    for fd, is_dir, target in sources:
        dst = prefix + target
        if is_dir:
            os.makedirs(dst, exist_ok=True)
        elif not os.path.exists(dst):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            open(dst, "a").close()
        # --no-canonicalize: mount(8) would resolve the fd link to its (now hidden) path.
        _mount("--no-canonicalize", "--bind", f"/proc/{os.getpid()}/fd/{fd}", dst)
        os.close(fd)
    socket.sethostname(spec["hostname"])
    if spec["net"]:
        _loopback_up()
    ready_fd = spec.get("ready_fd")
    if ready_fd is not None:
        os.write(ready_fd, b"1")
        os.close(ready_fd)

    argv, cwd = spec["argv"], spec["cwd"]
    if root is not None and not spec["outside"]:
        argv, cwd = _chrooted(prefix, argv, cwd), "/"
    # Its own process group, so a stop or a timeout reaches everything it started.
    proc = subprocess.Popen(argv, env=spec["env"], cwd=cwd, start_new_session=True)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        return proc.wait(timeout=spec["timeout"])
    except subprocess.TimeoutExpired:
        sys.stderr.write(f"\nhost_sandbox: {spec['argv'][0]} timed out after {spec['timeout']} s\n")
        forward(signal.SIGTERM, None)
        try:
            proc.wait(timeout=GRACE)
        except subprocess.TimeoutExpired:
            forward(signal.SIGKILL, None)
            proc.wait()
        return TIMEOUT_RC


def _chrooted(root: str, argv: Sequence[str], cwd: str) -> List[str]:
    """``argv`` run in ``cwd`` inside ``root``: chroot(8), then the root's own env(1)."""
    return ["chroot", root, "env", f"--chdir={cwd}", "--", *argv]


# --------------------------------------------------------------------------- outside


def _is_whiteout(path: str) -> bool:
    """overlayfs records a deletion as a 0:0 character device in the upper layer."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str) -> bool:
    """A directory made anew over a deleted one hides everything below it in the lower."""
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


class Running:
    """A command started with ``HostSandbox.start``; its namespaces, for more commands."""

    def __init__(
        self, box: "HostSandbox", proc: "subprocess.Popen[str]", pid: int, out: str, err: str
    ) -> None:
        self.box = box
        self.proc = proc
        self.pid = pid  # host pid of the sandbox's pid 1
        self.stdout_path = out
        self.stderr_path = err

    def output(self) -> Tuple[str, str]:
        """What the started command has written so far (stdout, stderr)."""
        result = []
        for path in (self.stdout_path, self.stderr_path):
            with open(path, errors="replace") as handle:
                result.append(handle.read())
        return result[0], result[1]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(
        self,
        argv: Sequence[str],
        env: Optional[Dict[str, str]] = None,
        timeout: float = 60.0,
        cwd: str = "/",
        input: Optional[str] = None,
        outside: bool = False,
    ) -> Result:
        """Run ``argv`` in the same namespaces (mounts, pids, network) as the started one.

        In a RootSandbox it runs chrooted into the sandbox's root, unless ``outside``."""
        assert self.alive(), "the sandbox's command has ended; nothing to run beside it"
        # --root: entering a mount namespace resets the root to that namespace's own; a
        # sandbox started inside a chroot (a pristine test machine) must stay in it.
        nsenter = ["nsenter", "-t", str(self.pid), "--mount", "--uts", "--ipc", "--pid", "--root"]
        if self.box.net:
            nsenter.append("--net")
        argv = self.box._inside(argv, cwd, outside)
        if self.box.chroot is not None and not outside:
            cwd = "/"
        proc = subprocess.Popen(
            [*nsenter, f"--wd={cwd}", "--", *argv],
            env=self.box._env(env),
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(input, timeout=timeout)
            return Result(proc.returncode, out, err)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            return Result(TIMEOUT_RC, out, err + f"\nhost_sandbox: timed out after {timeout} s\n")

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str = "") -> None:
        """Poll ``predicate`` until true; fail naming ``what`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if not self.alive():
                out, err = self.output()
                raise AssertionError(
                    f"the sandboxed command ended (rc {self.proc.returncode})"
                    f" before {what or predicate}\n{out}\n{err}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{what or predicate} not true after {timeout} s")
            time.sleep(0.05)

    def stop(self, timeout: float = GRACE * 2) -> Result:
        """SIGTERM to the command (through pid 1), then SIGKILL; the namespace dies with it."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # --kill-child takes pid 1, and so the namespace, along
            self.proc.wait()
        self.box._release()
        out, err = self.output()
        return Result(self.proc.returncode, out, err)

    def __enter__(self) -> "Running":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class HostSandbox:
    def __init__(
        self,
        base: str,
        overlaid: Sequence[str] = DEFAULT_OVERLAID,
        net: bool = True,
        binds: Sequence[Bind] = (),
        hostname: str = HOSTNAME,
    ) -> None:
        """``base``: a directory the caller owns, outside every overlaid directory (the
        uppers live there).  ``net=False`` keeps the host network.  ``binds``: paths (or
        ``(source, target)`` pairs) made visible inside, read-write."""
        if os.geteuid() != 0:
            raise AssertionError(
                "HostSandbox needs root for its mount and pid namespaces; run the tests as root"
            )
        for tool in ("unshare", "nsenter", "mount"):
            if not any(
                os.access(os.path.join(d, tool), os.X_OK)
                for d in os.environ.get("PATH", "").split(os.pathsep)
            ):
                raise AssertionError(f"HostSandbox needs util-linux's {tool}; install util-linux")
        self.base = os.path.abspath(base)
        self.overlaid = tuple(os.path.normpath(p) for p in overlaid)
        for top in self.overlaid:
            if not top.startswith("/") or top.count("/") != 1 or top in FRESH_TMPFS:
                raise AssertionError(
                    f"overlaid directory {top!r} must be a top-level directory"
                    f" other than {FRESH_TMPFS}"
                )
            if (self.base + "/").startswith(top + "/"):
                raise AssertionError(
                    f"sandbox base {self.base} lies inside {top}, which the sandbox"
                    " overlays (overlayfs refuses an upper layer inside its lower one);"
                    " put the base under /tmp"
                )
        self.net = net
        self.hostname = hostname
        self.share = os.path.join(self.base, "share")
        pairs: List[Tuple[str, str]] = [(self.share, self.share)]
        # The repository (its venv runs ansible-playbook, the collection tree links into
        # it) stays visible when it lies under /tmp or /run, which get a fresh tmpfs: CI
        # may clone it there.
        if any((REPO + "/").startswith(top + "/") for top in FRESH_TMPFS):
            pairs.append((REPO, REPO))
        for bind in binds:
            src, dst = (bind, bind) if isinstance(bind, str) else bind
            pairs.append((os.path.abspath(src), os.path.abspath(dst)))
        self.binds = pairs
        os.makedirs(self.share, exist_ok=True)
        for top in self.overlaid:
            os.makedirs(self._layer("upper", top), exist_ok=True)
            os.makedirs(self._layer("work", top), exist_ok=True)
        self._lock: Optional[int] = None
        self._count = 0

    # Where commands are chrooted into: None here (this machine's own root, overlaid), a
    # directory in a RootSandbox.
    chroot: Optional[str] = None

    def _root_spec(self) -> Optional[Dict[str, str]]:
        return None

    def _inside(self, argv: Sequence[str], cwd: str, outside: bool) -> List[str]:
        """The command that runs ``argv`` in ``cwd`` in the sandbox's mount namespace."""
        if self.chroot is None:
            assert not outside, "outside= is for a RootSandbox; a HostSandbox has no root"
            return list(argv)
        return list(argv) if outside else _chrooted(self.chroot, argv, cwd)

    # ---- where things are

    def _layer(self, kind: str, top: str) -> str:
        return os.path.join(self.base, kind, top.strip("/"))

    def upper(self, path: str) -> str:
        """Where the overlay keeps what was written inside at absolute ``path``."""
        parts = os.path.normpath(path).strip("/").split("/", 1)
        top = "/" + parts[0]
        assert top in self.overlaid, f"{path} is not under an overlaid directory {self.overlaid}"
        return os.path.join(self._layer("upper", top), *parts[1:])

    def host_path(self, path: str) -> Optional[str]:
        """The host path holding the sandbox's view of ``path``, or None if it does not
        exist there (never written and not in the real root, or deleted inside)."""
        path = os.path.normpath(path)
        parts = path.strip("/").split("/")
        top = "/" + parts[0]
        if top not in self.overlaid:
            return path if os.path.lexists(path) else None
        lower_visible = True
        for depth in range(1, len(parts) + 1):
            sub = "/" + "/".join(parts[:depth])
            up = self.upper(sub)
            if _is_whiteout(up):
                return None
            if depth > 1 and os.path.isdir(up) and _is_opaque(up):
                lower_visible = False
        up = self.upper(path)
        if os.path.lexists(up):
            return up
        return path if lower_visible and os.path.lexists(path) else None

    def exists(self, path: str) -> bool:
        return self.host_path(path) is not None

    def read(self, path: str) -> str:
        found = self.host_path(path)
        assert found is not None, f"{path} does not exist in the sandbox"
        with open(found) as handle:
            return handle.read()

    def mode(self, path: str) -> int:
        """Permission bits (e.g. 0o600) of ``path`` as the sandbox sees it."""
        found = self.host_path(path)
        assert found is not None, f"{path} does not exist in the sandbox"
        return stat.S_IMODE(os.lstat(found).st_mode)

    def written(self, top: str) -> List[str]:
        """Absolute paths of the files (not directories, not deletions) written under ``top``."""
        base = self.upper(top)
        found = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                full = os.path.join(dirpath, name)
                if not _is_whiteout(full):
                    found.append(os.path.join(top, os.path.relpath(full, base)))
        return sorted(found)

    # ---- running

    def _env(self, env: Optional[Dict[str, str]]) -> Dict[str, str]:
        return dict(os.environ) if env is None else dict(env)

    def _acquire(self) -> None:
        # One overlay mount per upper at a time: concurrent mounts of the same upper are
        # undefined behaviour in overlayfs, so runs on one base take turns.
        fd = os.open(os.path.join(self.base, ".lock"), os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._lock = fd

    def _release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _popen(
        self,
        argv: Sequence[str],
        env: Optional[Dict[str, str]],
        timeout: float,
        cwd: str,
        stdin: int,
        ready_fd: Optional[int],
        output: Optional[Tuple[int, int]] = None,
        outside: bool = False,
    ) -> "subprocess.Popen[str]":
        self._count += 1
        spec_path = os.path.join(self.base, f"spec-{self._count}.json")
        spec = {
            "argv": list(argv),
            "env": self._env(env),
            "cwd": cwd,
            "timeout": timeout,
            "net": self.net,
            "hostname": self.hostname,
            "ready_fd": ready_fd,
            "overlays": [
                [t, self._layer("upper", t), self._layer("work", t)] for t in self.overlaid
            ],
            "root": self._root_spec(),
            "outside": outside,
            "binds": self.binds,
        }
        if self.chroot is None:
            assert not outside, "outside= is for a RootSandbox; a HostSandbox has no root"
        with open(spec_path, "w") as handle:
            json.dump(spec, handle)
        unshare = ["unshare", "--mount", "--uts", "--ipc", "--pid", "--fork", "--mount-proc",
                   "--propagation", "private", "--kill-child"]  # fmt: skip
        if self.net:
            unshare.append("--net")
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        inner_env = dict(os.environ, PYTHONPATH=here)
        return subprocess.Popen(
            [*unshare, sys.executable, "-m", "testbed.host_sandbox", "--inner", spec_path],
            env=inner_env,
            cwd=here,
            stdin=stdin,
            stdout=subprocess.PIPE if output is None else output[0],
            stderr=subprocess.PIPE if output is None else output[1],
            text=True,
            errors="replace",
            pass_fds=() if ready_fd is None else (ready_fd,),
        )

    def run(
        self,
        argv: Sequence[str],
        env: Optional[Dict[str, str]] = None,
        timeout: float = 120.0,
        cwd: str = "/",
        input: Optional[str] = None,
        outside: bool = False,
    ) -> Result:
        """Run ``argv`` in a fresh sandbox over this base's persistent uppers.

        ``env`` replaces the environment (default: this process's).  After ``timeout``
        seconds the command gets SIGTERM, then SIGKILL, and rc is 124.  In a RootSandbox
        ``outside`` runs it on this machine's side of the sandbox's mounts (with the
        sandbox's root at ``chroot``), not chrooted into it."""
        self._acquire()
        try:
            proc = self._popen(
                argv,
                env,
                timeout,
                cwd,
                subprocess.PIPE if input is not None else subprocess.DEVNULL,
                None,
                outside=outside,
            )
            try:
                out, err = proc.communicate(input, timeout=timeout + GRACE + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
                err += "\nhost_sandbox: the sandbox did not end after its command's timeout\n"
                return Result(TIMEOUT_RC, out, err)
            return Result(proc.returncode, out, err)
        finally:
            self._release()

    def start(
        self,
        argv: Sequence[str],
        env: Optional[Dict[str, str]] = None,
        timeout: float = 300.0,
        cwd: str = "/",
        ready_timeout: float = 30.0,
        outside: bool = False,
    ) -> Running:
        """Start ``argv`` (a daemon) in a sandbox over this base; returns once the mounts
        are in place.  ``Running.run`` runs more commands beside it; ``stop()`` (or the
        ``with`` block's end) ends it, and ``timeout`` bounds it in any case."""
        self._acquire()
        read_fd, write_fd = os.pipe()
        # A daemon's output goes to files, not pipes: nobody reads a pipe while it runs,
        # and a full one would block it.
        n = self._count + 1
        out_path = os.path.join(self.base, f"start-{n}.stdout")
        err_path = os.path.join(self.base, f"start-{n}.stderr")
        out_fd = os.open(out_path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
        err_fd = os.open(err_path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
        try:
            proc = self._popen(
                argv,
                env,
                timeout,
                cwd,
                subprocess.DEVNULL,
                write_fd,
                (out_fd, err_fd),
                outside=outside,
            )
        except BaseException:
            os.close(read_fd)
            self._release()
            raise
        finally:
            os.close(write_fd)
            os.close(out_fd)
            os.close(err_fd)
        try:
            ready, _w, _x = select.select([read_fd], [], [], ready_timeout)
            if not ready or os.read(read_fd, 1) != b"1":
                proc.kill()
                out, err = proc.communicate()
                raise AssertionError(
                    f"the sandbox did not come up within {ready_timeout} s\n{out}\n{err}"
                )
        except BaseException:
            self._release()
            raise
        finally:
            os.close(read_fd)
        return Running(self, proc, _child_pid(proc.pid), out_path, err_path)


class RootSandbox(HostSandbox):
    """A HostSandbox over a Debian root of its own instead of this machine's directories.

    How to use it::

        box = RootSandbox(str(tmp_path / "dom0"), lower="/path/to/a/debootstrapped/root")
        box.run(["apt-get", "install", "-y", "systemd"], timeout=600).check()
        # ansible-playbook from this machine's venv, into the root by a chroot connection:
        box.run([playbook, "-i", inventory, ...], outside=True).check()

    Each command gets the same namespaces as in a HostSandbox, and an overlay whose lower
    layer is ``lower`` (left untouched, so one cached root serves many sandboxes) and
    whose upper layer is ``<base>/upper``, mounted at ``<base>/root`` (``chroot``) with
    /proc, /sys, /dev (this machine's, unless a bind names /dev) and a fresh /run and
    /tmp. Commands run chrooted into it, with the root's own programs and libraries;
    ``outside=True`` runs one on this machine's side instead, where ``chroot`` is the
    sandbox's root (for ansible-playbook's chroot connection). ``binds`` appear at their
    target inside the root. What this machine has installed does not matter.
    """

    def __init__(
        self,
        base: str,
        lower: str,
        net: bool = True,
        binds: Sequence[Bind] = (),
        hostname: str = HOSTNAME,
    ) -> None:
        super().__init__(base, overlaid=(), net=net, binds=binds, hostname=hostname)
        if not os.path.isfile(os.path.join(lower, "etc", "os-release")) and not os.path.islink(
            os.path.join(lower, "etc", "os-release")
        ):
            raise AssertionError(f"{lower} is not a root file system (no etc/os-release)")
        self.lower = os.path.abspath(lower)
        self.chroot = os.path.join(self.base, "root")
        for name in ("upper", "work", "root"):
            os.makedirs(os.path.join(self.base, name), exist_ok=True)

    def _root_spec(self) -> Optional[Dict[str, str]]:
        return {
            "lower": self.lower,
            "upper": os.path.join(self.base, "upper"),
            "work": os.path.join(self.base, "work"),
            "merged": self.chroot or "",
        }

    def upper(self, path: str) -> str:
        return os.path.join(self.base, "upper", os.path.normpath(path).strip("/"))

    def host_path(self, path: str) -> Optional[str]:
        """Where this machine sees the sandbox's ``path``: its upper layer, else the root
        it was made from (None if neither has it, or the sandbox deleted it)."""
        parts = [p for p in os.path.normpath(path).strip("/").split("/") if p]
        lower_visible = True
        for depth in range(1, len(parts) + 1):
            up = self.upper("/".join(parts[:depth]))
            if _is_whiteout(up):
                return None
            if depth < len(parts) and os.path.isdir(up) and _is_opaque(up):
                lower_visible = False
        up = self.upper(path)
        if parts and os.path.lexists(up):
            return up
        low = os.path.join(self.lower, *parts)
        return low if lower_visible and os.path.lexists(low) else None


def _child_pid(unshare_pid: int) -> int:
    """The host pid of unshare's forked child: pid 1 inside the namespace."""
    with open(f"/proc/{unshare_pid}/task/{unshare_pid}/children") as handle:
        children = handle.read().split()
    assert len(children) == 1, f"unshare {unshare_pid} has children {children}"
    return int(children[0])


if __name__ == "__main__" and sys.argv[1:2] == ["--inner"]:
    sys.exit(_inner(sys.argv[2]))
