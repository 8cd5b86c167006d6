"""The guest's udev pieces: runtime/udev/90-xenchannel.rules and xenchannel-console-setup.

The real script runs under every POSIX shell installed here (sh, dash, bash, busybox)
against a fake root in tmp_path: fake /dev/hvcN files, a fake xenstore-read that answers
from a dict (or fails, or hangs) and a fake logger that records what would go to syslog.
The rules file is checked by a small syntax checker of our own, for what it must match,
and with `udevadm verify` when a udevadm that has it is available (Debian trixie's,
fetched into .cache/ by tests/setup-system-packages.sh).
"""

import fnmatch
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from xenchannel.channel_name import valid_channel_name

REPO = Path(__file__).resolve().parents[2]
UDEV = REPO / "runtime" / "udev"
SCRIPT = UDEV / "xenchannel-console-setup"
RULES = UDEV / "90-xenchannel.rules"
SETUP = "tests/setup-system-packages.sh"
TRIXIE_UDEVADM = REPO / ".cache" / "udevadm-trixie" / "udevadm"
RUN_TIMEOUT = 20  # no single run may take this long; the hang test checks ~5 s

NAME = "org.xenchannel.provision.0"


def _shells() -> List[str]:
    found = []
    for shell in ("sh", "dash", "bash", "busybox"):
        if shutil.which(shell):
            found.append(shell)
    return found


SHELLS = _shells()


def _argv(shell: str) -> List[str]:
    if shell == "busybox":
        return ["busybox", "sh", str(SCRIPT)]
    if shell == "bash":
        return ["bash", "--posix", str(SCRIPT)]
    return [shell, str(SCRIPT)]


# ----------------------------------------------------------------------------- fake guest


class Guest:
    """A fake guest root, a fake xenstore and a fake syslog for one shell."""

    def __init__(self, base: Path, shell: str) -> None:
        self.shell = shell
        self.base = base
        self.root = base / "root"
        self.dev = self.root / "dev"
        self.links = self.dev / "xen-channel"
        self.dev.mkdir(parents=True)
        for n in range(10):
            (self.dev / f"hvc{n}").write_bytes(b"")
        (self.root / "etc").mkdir()
        (self.root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")

        self.store = base / "xenstore"
        self.store.mkdir()
        self.calls = base / "xenstore-calls"
        self.syslog = base / "syslog"
        self.bin = base / "bin"
        self.bin.mkdir()
        self.xenstore_read = self.bin / "xenstore-read"
        _write_exec(
            self.xenstore_read,
            "#!/bin/sh\n"
            f'printf "%s\\n" "$*" >> "{self.calls}"\n'
            f'mode=$(cat "{self.store}/.mode" 2>/dev/null)\n'
            'if [ "$mode" = hang ]; then sleep 30; exit 0; fi\n'
            # Slow once (a loaded xenstored), then answering.
            f'if [ "$mode" = hang-once ] && [ ! -e "{self.store}/.hung" ]; then\n'
            f'    : > "{self.store}/.hung"; sleep 30; exit 0\n'
            "fi\n"
            'if [ "$mode" = fail ]; then echo "xenstore-read: could not read $1" >&2; exit 1; fi\n'
            f'if [ -f "{self.store}/$1" ]; then cat "{self.store}/$1"; echo; exit 0; fi\n'
            'echo "xenstore-read: could not read path $1" >&2\n'
            "exit 1\n",
        )
        # `logger -t TAG -- MESSAGE`: record the tag and the message.
        _write_exec(
            self.bin / "logger",
            f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{self.syslog}"\n',
        )

    def set_name(self, devid: int, name: "str | bytes") -> None:
        raw = name.encode() if isinstance(name, str) else name
        node = self.store / "device" / "console" / str(devid)
        node.mkdir(parents=True, exist_ok=True)
        (node / "name").write_bytes(raw)

    def set_mode(self, mode: str) -> None:
        (self.store / ".mode").write_text(mode)

    def env(self, action: str, **extra: str) -> Dict[str, str]:
        # udev gives RUN programs the device's properties as their environment.
        env = {
            "PATH": f"{self.bin}:/usr/sbin:/usr/bin:/sbin:/bin",
            "ACTION": action,
            "SUBSYSTEM": "xen",
            "DRIVER": "xenconsole",
            "MODALIAS": "xen:console",
            "XENCHANNEL_ROOT": str(self.root),
            "XENCHANNEL_XENSTORE_READ": str(self.xenstore_read),
        }
        env.update(extra)
        return env

    def run(
        self,
        action: str,
        devpath: str,
        env: Optional[Dict[str, str]] = None,
        timeout: float = RUN_TIMEOUT,
    ) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
        return subprocess.run(
            [*_argv(self.shell), devpath],
            env=env if env is not None else self.env(action, DEVPATH=devpath),
            capture_output=True,
            timeout=timeout,
            check=False,
        )

    def add(self, devid: int) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
        return self.run("add", f"/devices/console-{devid}")

    def remove(self, devid: int) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
        return self.run("remove", f"/devices/console-{devid}")

    def log(self) -> str:
        return self.syslog.read_text() if self.syslog.exists() else ""

    def xenstore_calls(self) -> List[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []

    def tree(self) -> List[Tuple[str, str]]:
        """Everything under the fake root: (path, what it is)."""
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            for entry in sorted(dirnames + filenames):
                path = os.path.join(dirpath, entry)
                rel = os.path.relpath(path, self.root)
                if os.path.islink(path):
                    out.append((rel, "-> " + os.readlink(path)))
                elif os.path.isdir(path):
                    out.append((rel, f"dir {os.stat(path).st_mode & 0o7777:o}"))
                else:
                    out.append((rel, "file " + Path(path).read_bytes().hex()))
        return sorted(out)

    def channel_entries(self) -> List[str]:
        return sorted(os.listdir(self.links)) if self.links.exists() else []


def _write_exec(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture(params=SHELLS)
def guest(request: pytest.FixtureRequest, tmp_path: Path) -> Guest:
    return Guest(tmp_path, request.param)


def _ok(proc: subprocess.CompletedProcess) -> None:  # type: ignore[type-arg]
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)


# ----------------------------------------------------------------------------- the script


def test_script_is_executable_posix_sh() -> None:
    assert os.access(SCRIPT, os.X_OK), f"{SCRIPT} must be executable"
    assert SCRIPT.read_text().startswith("#!/bin/sh\n")


@pytest.mark.system  # shellcheck, installed by make system
def test_shellcheck_posix_sh() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail(f"shellcheck is not installed: run `sh {SETUP}` (as root) first")
    proc = subprocess.run(
        [shellcheck, "-s", "sh", str(SCRIPT), str(REPO / SETUP)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_add_links_the_name_to_the_hvc(guest: Guest) -> None:
    guest.set_name(1, NAME)
    before = guest.tree()
    _ok(guest.add(1))
    changed = set(guest.tree()) ^ set(before)
    assert {path for path, _ in changed} == {"dev/xen-channel", "dev/xen-channel/" + NAME}
    link = guest.links / NAME
    assert os.readlink(link) == "../hvc1"
    assert os.path.realpath(link) == str(guest.dev / "hvc1")
    assert guest.channel_entries() == [NAME]  # no temporary name left behind
    assert oct(guest.links.stat().st_mode & 0o7777) == oct(0o700)  # root-only
    assert guest.xenstore_calls() == ["device/console/1/name"]
    assert "xenchannel-console-setup" in guest.log()
    assert "linked" in guest.log()


def test_two_consoles_get_two_links(guest: Guest) -> None:
    guest.set_name(1, "org.example.a.0")
    guest.set_name(2, "org.example.b.0")
    _ok(guest.add(1))
    _ok(guest.add(2))
    assert os.readlink(guest.links / "org.example.a.0") == "../hvc1"
    assert os.readlink(guest.links / "org.example.b.0") == "../hvc2"
    assert guest.channel_entries() == ["org.example.a.0", "org.example.b.0"]


def test_parallel_adds_and_removes(guest: Guest) -> None:
    """udev runs events of different devices in parallel."""
    for devid in range(1, 10):
        guest.set_name(devid, f"org.example.{devid}")

    def run_all(action: str) -> None:
        procs = [
            subprocess.Popen(
                [*_argv(guest.shell), f"/devices/console-{devid}"],
                env=guest.env(action),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for devid in range(1, 10)
        ]
        for proc in procs:
            out, err = proc.communicate(timeout=RUN_TIMEOUT)
            assert proc.returncode == 0, (out, err)

    run_all("add")
    assert guest.channel_entries() == [f"org.example.{d}" for d in range(1, 10)]
    for devid in range(1, 10):
        target = os.readlink(guest.links / f"org.example.{devid}")
        assert target == f"../hvc{devid}"
    run_all("remove")
    assert guest.channel_entries() == []


def test_add_twice_is_idempotent(guest: Guest) -> None:
    guest.set_name(3, NAME)
    _ok(guest.add(3))
    before = os.lstat(guest.links / NAME)
    _ok(guest.add(3))
    after = os.lstat(guest.links / NAME)
    # Left alone, not re-made: a reader watching the directory sees nothing.
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert guest.channel_entries() == [NAME]
    assert os.readlink(guest.links / NAME) == "../hvc3"


def test_add_replaces_the_link_atomically(guest: Guest) -> None:
    """A reader polling the name never finds it missing while it is re-pointed."""
    guest.set_name(1, NAME)
    guest.set_name(2, NAME)
    _ok(guest.add(1))
    link = str(guest.links / NAME)
    seen = set()
    missing = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.add(os.readlink(link))
            except FileNotFoundError:
                missing.append(time.monotonic())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(16):
            _ok(guest.add(2 if i % 2 == 0 else 1))
    finally:
        stop.set()
        thread.join()
    assert missing == [], f"the link was missing {len(missing)} times while re-pointed"
    assert seen == {"../hvc1", "../hvc2"}
    assert os.readlink(link) == "../hvc1"
    assert guest.channel_entries() == [NAME]


def test_add_takes_over_a_stale_absolute_link(guest: Guest) -> None:
    guest.links.mkdir()
    os.symlink("/dev/hvc5", str(guest.links / NAME))
    guest.set_name(1, NAME)
    _ok(guest.add(1))
    assert os.readlink(guest.links / NAME) == "../hvc1"


def test_remove_deletes_only_its_own_links(guest: Guest) -> None:
    guest.set_name(1, "org.example.a.0")
    guest.set_name(2, "org.example.b.0")
    _ok(guest.add(1))
    _ok(guest.add(2))
    _ok(guest.remove(1))
    assert guest.channel_entries() == ["org.example.b.0"]
    assert os.readlink(guest.links / "org.example.b.0") == "../hvc2"
    assert "removed" in guest.log()


def test_remove_keeps_a_link_repointed_at_another_hvc(guest: Guest) -> None:
    guest.set_name(1, NAME)
    _ok(guest.add(1))
    guest.set_name(2, NAME)  # console-2 now claims the name
    _ok(guest.add(2))
    _ok(guest.remove(1))
    assert os.readlink(guest.links / NAME) == "../hvc2"


def test_remove_works_without_xenstore(guest: Guest) -> None:
    """On unplug the xenstore node may be gone already: remove must not need it."""
    guest.set_name(4, NAME)
    _ok(guest.add(4))
    guest.set_mode("fail")
    calls = len(guest.xenstore_calls())
    _ok(guest.remove(4))
    assert guest.channel_entries() == []
    assert len(guest.xenstore_calls()) == calls


def test_remove_leaves_other_files_and_absolute_links(guest: Guest) -> None:
    guest.links.mkdir()
    os.symlink("/dev/hvc1", str(guest.links / "old.absolute"))
    os.symlink("../hvc1x", str(guest.links / "lookalike"))
    (guest.links / "plain").write_text("x")
    os.symlink("../hvc1", str(guest.links / ".org.example.tmp.123"))  # crashed add
    _ok(guest.remove(1))
    # An absolute link at this hvc is ours too; the rest is not.
    assert guest.channel_entries() == ["lookalike", "plain"]


def test_remove_without_directory(guest: Guest) -> None:
    before = guest.tree()
    _ok(guest.remove(1))
    assert guest.tree() == before


HOSTILE_NAMES = [
    b"../../etc/passwd",
    b"a/b",
    b"/abs",
    b"..",
    b".",
    b".hidden",
    b"",
    b"x" * 200,
    b"x" * 129,
    b"with space",
    b"new\nline",
    b"trailing-newline\n",
    b"$(touch /tmp/xenchannel-pwned)",
    b"`touch pwned`",
    b"tab\there",
    b"star*",
    b"quote'",
    b"back\\slash",
    "caf\u00e9".encode(),
]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=lambda n: repr(n)[:40])
def test_hostile_names_are_refused_and_logged(guest: Guest, name: bytes) -> None:
    guest.set_name(1, name)
    before = guest.tree()
    proc = guest.add(1)
    _ok(proc)  # refused, logged, not a udev error
    assert guest.tree() == before, "a refused name changed the fake root"
    log = guest.log()
    assert "refused channel name" in log, log
    assert len(log.splitlines()) == 1, f"the name must not forge log lines: {log!r}"
    assert not Path("/tmp/xenchannel-pwned").exists()
    assert not (guest.root / "pwned").exists()


def test_name_starting_with_dash_is_refused(guest: Guest) -> None:
    guest.set_name(1, "-rf.example.0")
    _ok(guest.add(1))
    assert guest.channel_entries() == []
    assert "refused channel name '-rf.example.0'" in guest.log()


def test_name_of_128_characters_is_accepted(guest: Guest) -> None:
    name = "org." + "b" * 122 + ".0"
    assert len(name) == 128
    guest.set_name(2, name)
    _ok(guest.add(2))
    assert os.readlink(guest.links / name) == "../hvc2"


# -- the one channel-name rule ---------------------------------------------------------------


def _rule_classes() -> List[bytes]:
    """Names of every class the rule (runtime/xenchannel/channel_name.py) tells apart."""
    names = [b"", b"a", b"a.0", b"a.b", b"a.b.0", b"org.xenchannel.provision.0"]
    names += [b"org.qemu.guest_agent.0", b"org.xenproject.guest.clipboard.0.1"]
    # Lengths around the bound, in a valid shape: 0/1 above, then 127..129, 255, 256.
    for length in (5, 6, 127, 128, 129, 255, 256):
        names.append(b"org." + b"a" * (length - 6) + b".0" if length >= 6 else b"a.b.0")
    # Every byte but NUL (which neither xenstore nor a shell can hold), in every place
    # of a name: starting it, starting, inside and ending a label, and in the version.
    for code in [*range(1, 128), 0x80, 0xC3, 0xE9, 0xFF]:
        c = bytes([code])
        names += [
            c + b"org.x.0",
            b"org." + c + b"x.0",
            b"org.x" + c + b"y.0",
            b"org.x" + c + b".0",
            b"org.x.1" + c,
            b"org.x." + c,
        ]
    names += ["caf\u00e9.example.0".encode(), "org.caf\u00e9.0".encode()]
    # Path characters, dots, dashes, versions, label counts.
    names += [
        b"../../etc/passwd",
        b"org/x.0",
        b"/org.x.0",
        b"org.x.0/",
        b".",
        b"..",
        b".org.x.0",
        b"org.x.0.",
        b"org..x.0",
        b"org.x..0",
        b"-org.x.0",
        b"org.-x.0",
        b"org.x-.0",
        b"org.x_.0",
        b"org._x.0",
        b"org.x-y_z.0",
        b"org.x.00",
        b"org.x.01",
        b"org.x.10",
        b"org.x.-1",
        b"org.x.v1",
        b"org.x.1.2.3",
        b"org.0.0",
        b"org.x",
        b"0rg.x.0",
        b"Org.x.0",
        b"org.X.0",
        b"a.b.c.d.e.f.g.0",
        b"org.x.0\n",
        b"org.x.0\norg.y.0",
        b" org.x.0",
        b"org.x.0 ",
        b"$(touch pwned).x.0",
    ]
    return list(dict.fromkeys(names))


RULE_CLASSES = _rule_classes()


def _rule(name: bytes) -> bool:
    return valid_channel_name(name.decode("utf-8", "surrogateescape"))


# The two POSIX sh copies of the rule: the udev helper's, and ds-identify's check (which
# runs inside ds-identify and so prefixes its names), each as (file, prefix).
SH_RULES = {
    "udev-helper": (SCRIPT, ""),
    "ds-identify": (
        Path(__file__).resolve().parents[2] / "datasource/ds-identify/dscheck_XenChannel.sh",
        "xenchannel_",
    ),
}


def _script_functions(which: str = "udev-helper") -> str:
    """A script's MAX_NAME and its name-checking functions (valid_*), as the script has
    them, with ``valid_name`` callable by that name."""
    path, prefix = SH_RULES[which]
    text = path.read_text()
    upper = prefix.upper()
    max_name = re.search(rf"^{upper}MAX_NAME=.*$", text, re.MULTILINE)
    bodies = re.findall(rf"^{prefix}valid_\w+\(\) \{{\n.*?^\}}\n", text, re.S | re.M)
    assert max_name and any(b.startswith(f"{prefix}valid_name()") for b in bodies), "reshaped"
    alias = f'valid_name() {{ {prefix}valid_name "$1"; }}\n' if prefix else ""
    return "LC_ALL=C\nexport LC_ALL\n" + max_name.group(0) + "\n" + "".join(bodies) + alias


def test_the_rule_classes_hold_both_answers() -> None:
    answers = [_rule(name) for name in RULE_CLASSES]
    assert sum(answers) >= 20 and len(answers) - sum(answers) >= 500


@pytest.mark.parametrize("which", sorted(SH_RULES))
@pytest.mark.parametrize("shell", SHELLS)
def test_the_helper_decides_every_class_of_name_as_the_rule(shell: str, which: str) -> None:
    """valid_name of the real script (the udev helper's, and the copy in ds-identify's
    check), run by each shell on every class of input, against xenchannel.channel_name
    (the rule xl_channel, the roles and the datasource use)."""
    driver = (
        _script_functions(which)
        + 'for name in "$@"; do if valid_name "$name"; then echo 1; else echo 0; fi; done\n'
    )
    argv = ["busybox", "sh"] if shell == "busybox" else [shell]
    proc = subprocess.run(
        [*argv, "-c", driver, "sh", *[os.fsdecode(name) for name in RULE_CLASSES]],
        capture_output=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    answers = proc.stdout.decode().split()
    assert len(answers) == len(RULE_CLASSES)
    wrong = [
        (name, answer)
        for name, answer in zip(RULE_CLASSES, answers)
        if (answer == "1") != _rule(name)
    ]
    assert wrong == [], f"the helper and xenchannel.channel_name disagree: {wrong[:10]}"


END_TO_END = [
    b"org.xenchannel.provision.0",
    b"org." + b"a" * 122 + b".0",
    b"org." + b"a" * 123 + b".0",
    b"org." + b"a" * 249 + b".0",
    b"a.b.0",
    b"a.0",
    b"Org.x.0",
    b"org.x.01",
    b"org..x.0",
    b"-org.x.0",
    b"org.x_.0",
    b"org.x-y_z.10",
]


@pytest.mark.parametrize("name", END_TO_END, ids=lambda n: repr(n)[:40])
def test_the_helper_links_a_name_exactly_when_the_rule_accepts_it(
    guest: Guest, name: bytes
) -> None:
    guest.set_name(1, name)
    _ok(guest.add(1))
    if _rule(name):
        assert guest.channel_entries() == [name.decode()]
    else:
        assert guest.channel_entries() == []
        assert "refused channel name" in guest.log()


@pytest.mark.parametrize(
    "devpath",
    [
        "/devices/console-0",
        "/devices/console-10",
        "/devices/console-11",
        "/devices/console-a",
        "/devices/console-",
        "/devices/console-1/../console-0",
        "/devices/vbd-51712",
        "/devices/console-1 ",
        "devices/console-1",
        "",
    ],
)
def test_other_devices_are_ignored(guest: Guest, devpath: str) -> None:
    guest.set_name(0, NAME)
    guest.set_name(1, NAME)
    guest.set_name(10, NAME)
    before = guest.tree()
    proc = guest.run("add", devpath)
    _ok(proc)
    assert guest.tree() == before
    assert guest.xenstore_calls() == []


def test_devpath_from_the_environment(guest: Guest) -> None:
    guest.set_name(1, NAME)
    proc = subprocess.run(
        _argv(guest.shell),
        env=guest.env("add", DEVPATH="/devices/console-1"),
        capture_output=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    _ok(proc)
    assert os.readlink(guest.links / NAME) == "../hvc1"


@pytest.mark.parametrize("action", ["change", "bind", "unbind", "move", ""])
def test_other_actions_do_nothing(guest: Guest, action: str) -> None:
    guest.set_name(1, NAME)
    before = guest.tree()
    _ok(guest.run(action, "/devices/console-1"))
    assert guest.tree() == before
    assert guest.xenstore_calls() == []


def test_missing_xenstore_read_is_logged_clearly(guest: Guest) -> None:
    guest.set_name(1, NAME)
    env = guest.env("add", XENCHANNEL_XENSTORE_READ=str(guest.base / "nowhere" / "xenstore-read"))
    before = guest.tree()
    _ok(guest.run("add", "/devices/console-1", env=env))
    assert guest.tree() == before
    assert "install xenstore-utils" in guest.log()


def test_missing_default_xenstore_read_is_logged_clearly(guest: Guest) -> None:
    if shutil.which("xenstore-read", path="/usr/sbin:/usr/bin:/sbin:/bin"):
        pytest.skip("this machine has a real xenstore-read")
    guest.set_name(1, NAME)
    env = guest.env("add")
    del env["XENCHANNEL_XENSTORE_READ"]
    guest.xenstore_read.unlink()
    _ok(guest.run("add", "/devices/console-1", env=env))
    assert guest.channel_entries() == []
    log = guest.log()
    assert "xenstore-read not found" in log and "xenstore-utils" in log, log


def test_log_goes_to_stderr_without_logger(guest: Guest) -> None:
    # A PATH with every system tool except logger.
    tools = guest.base / "tools"
    tools.mkdir()
    for directory in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        if not os.path.isdir(directory):
            continue
        for entry in os.listdir(directory):
            if entry != "logger" and not (tools / entry).exists():
                os.symlink(os.path.join(directory, entry), str(tools / entry))
    guest.set_name(1, "bad/name")
    env = guest.env("add", PATH=str(tools))
    proc = guest.run("add", "/devices/console-1", env=env)
    _ok(proc)
    assert b"xenchannel-console-setup: console-1: refused channel name" in proc.stderr
    assert guest.log() == ""


def test_xenstore_failure_is_an_error(guest: Guest) -> None:
    guest.set_mode("fail")
    proc = guest.add(1)
    assert proc.returncode == 1
    assert guest.channel_entries() == []
    assert "failed (exit 1)" in guest.log()


def test_missing_name_node_is_an_error(guest: Guest) -> None:
    proc = guest.add(5)  # no device/console/5/name in the store
    assert proc.returncode == 1
    assert guest.channel_entries() == []


def test_failure_to_make_the_link_is_an_error(guest: Guest) -> None:
    guest.set_name(1, NAME)
    (guest.links / NAME).mkdir(parents=True)  # in the way; mv -T cannot replace it
    proc = guest.add(1)
    assert proc.returncode != 0
    assert "cannot rename" in guest.log()
    assert guest.channel_entries() == [NAME]  # the temporary link was cleaned up


def test_link_directory_in_the_way_is_an_error(guest: Guest) -> None:
    guest.set_name(1, NAME)
    guest.links.write_text("not a directory")
    proc = guest.add(1)
    assert proc.returncode != 0
    assert "is not a directory" in guest.log()


def test_a_slow_xenstore_read_is_tried_again_with_a_longer_bound(guest: Guest) -> None:
    guest.set_name(1, NAME)
    guest.set_mode("hang-once")
    proc = guest.run(
        "add", "/devices/console-1", env=guest.env("add", XENCHANNEL_READ_TIMEOUTS="1 5")
    )
    _ok(proc)
    assert guest.channel_entries() == [NAME]
    assert "timed out after 1 s (attempt 1 of 2); trying again" in guest.log()
    assert guest.calls.read_text().count("device/console/1/name") == 2


def test_default_read_bounds_stay_inside_udevs_event_timeout() -> None:
    """All attempts, each +1 s to KILL, within half of udev's 180 s for one event."""
    found = re.search(
        r"^READ_TIMEOUTS=\$\{XENCHANNEL_READ_TIMEOUTS:-([0-9 ]+)\}$", SCRIPT.read_text(), re.M
    )
    assert found, "the script's default read bounds are not where this test looks"
    bounds = [int(b) for b in found.group(1).split()]
    assert len(bounds) >= 2 and bounds == sorted(bounds), bounds
    assert sum(b + 1 for b in bounds) < 180 / 2, bounds


def test_hanging_xenstore_read_is_bounded(tmp_path: Path) -> None:
    """All shells at once, so that the bounds are paid once, not once per shell."""
    guests = []
    procs = []
    start = time.monotonic()
    for shell in SHELLS:
        g = Guest(tmp_path / shell, shell)
        g.set_name(1, NAME)
        g.set_mode("hang")
        guests.append(g)
        procs.append(
            subprocess.Popen(
                [*_argv(shell), "/devices/console-1"],
                env=g.env("add", XENCHANNEL_READ_TIMEOUTS="1 2"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    for g, proc in zip(guests, procs):
        try:
            proc.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail(f"{g.shell}: the script hung on a hanging xenstore-read")
        assert proc.returncode == 1, (g.shell, proc.returncode)
        assert "timed out 2 times (after 1, 2 s)" in g.log(), (g.shell, g.log())
        assert g.channel_entries() == []
    elapsed = time.monotonic() - start
    assert elapsed < 15, f"took {elapsed:.1f} s; the bounds are 1 s and 2 s (+1 s each to KILL)"


# ----------------------------------------------------------------------------- the rules

MATCH_KEYS = {
    "ACTION",
    "DEVPATH",
    "KERNEL",
    "SUBSYSTEM",
    "DRIVER",
    "KERNELS",
    "SUBSYSTEMS",
    "DRIVERS",
    "ATTRS",
    "TAGS",
    "CONST",
    "TEST",
    "PROGRAM",
    "RESULT",
}
ASSIGN_KEYS = {"OWNER", "GROUP", "MODE", "RUN", "LABEL", "GOTO", "IMPORT", "OPTIONS", "SECLABEL"}
BOTH_KEYS = {"NAME", "SYMLINK", "ENV", "TAG", "ATTR", "SYSCTL"}
ATTR_REQUIRED = {"ENV", "ATTR", "ATTRS", "SYSCTL", "SECLABEL", "CONST"}
ATTR_ALLOWED = ATTR_REQUIRED | {"RUN", "IMPORT", "TEST"}
MATCH_OPS = {"==", "!="}
ASSIGN_OPS = {"=", "+=", "-=", ":="}

PAIR = re.compile(
    r'(?P<key>[A-Z_]+)(?:\{(?P<attr>[^{}"]*)\})?(?P<op>==|!=|\+=|-=|:=|=)"(?P<value>(?:[^"\\]|\\.)*)"'
)

Pair = Tuple[str, Optional[str], str, str]


def parse_rules(text: str) -> List[List[Pair]]:
    """Parse udev rules strictly; raise ValueError on anything unexpected."""
    rules = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line.endswith("\\"):
            raise ValueError(f"line {number}: continuation lines are not used here")
        pairs: List[Pair] = []
        rest = stripped
        while True:
            m = PAIR.match(rest)
            if not m:
                raise ValueError(f"line {number}: cannot parse {rest!r}")
            key, attr, op, value = m.group("key", "attr", "op", "value")
            if key in MATCH_KEYS:
                allowed = MATCH_OPS
            elif key in ASSIGN_KEYS:
                allowed = ASSIGN_OPS
            elif key in BOTH_KEYS:
                allowed = MATCH_OPS | ASSIGN_OPS
            else:
                raise ValueError(f"line {number}: unknown key {key}")
            if op not in allowed:
                raise ValueError(f"line {number}: operator {op} not valid for {key}")
            if key in ATTR_REQUIRED and attr is None:
                raise ValueError(f"line {number}: {key} needs {{attribute}}")
            if attr is not None and key not in ATTR_ALLOWED:
                raise ValueError(f"line {number}: {key} takes no {{attribute}}")
            pairs.append((key, attr, op, value))
            rest = rest[m.end() :]
            if not rest:
                break
            sep = re.match(r"\s*,\s*", rest)
            if not sep:
                raise ValueError(f"line {number}: expected ',' before {rest!r}")
            rest = rest[sep.end() :]
        if not any(op in ASSIGN_OPS for _, _, op, _ in pairs):
            raise ValueError(f"line {number}: a rule without any assignment does nothing")
        rules.append(pairs)
    return rules


def _matches(rule: List[Pair], key: str, attr: Optional[str], value: str) -> bool:
    """Whether the rule's ``key`` match (glob with '|' alternatives) accepts ``value``."""
    for k, a, op, pattern in rule:
        if k == key and a == attr and op in MATCH_OPS:
            hit = any(fnmatch.fnmatchcase(value, alt) for alt in pattern.split("|"))
            return hit if op == "==" else not hit
    return True  # no condition on this key


def _one(rule: List[Pair], key: str, attr: Optional[str] = None) -> Tuple[str, str]:
    found = [(op, v) for k, a, op, v in rule if k == key and a == attr]
    assert len(found) == 1, (key, attr, found)
    return found[0]


@pytest.fixture(scope="module")
def rules() -> List[List[Pair]]:
    return parse_rules(RULES.read_text())


@pytest.mark.parametrize(
    "bad",
    [
        'SUBSYSTEM="xen", RUN+="x"',  # assignment to a match-only key
        'SUBSYSTEM=="xen" RUN+="x"',  # missing comma
        'SUBSYSTEM=="xen", FOO="x"',  # unknown key
        'SUBSYSTEM=="xen", ENV="x"',  # ENV without {name}
        'SUBSYSTEM=="xen", MODE=="0600"',  # MODE is assign-only
        'SUBSYSTEM=="xen", RUN+=x',  # unquoted
        'SUBSYSTEM=="xen"',  # no assignment
    ],
)
def test_rules_checker_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_rules(bad + "\n")


def test_rules_syntax(rules: List[List[Pair]]) -> None:
    assert len(rules) == 2


def test_rules_run_the_script_for_console_1_to_9_on_add_and_remove(
    rules: List[List[Pair]],
) -> None:
    runs = [r for r in rules if any(k == "RUN" for k, _, _, _ in r)]
    assert len(runs) == 1
    rule = runs[0]
    assert _one(rule, "SUBSYSTEM") == ("==", "xen")
    assert _one(rule, "DEVPATH") == ("==", "/devices/console-[1-9]")
    assert _one(rule, "ACTION") == ("==", "add|remove")
    assert _one(rule, "RUN") == ("+=", SCRIPT.name + " %p")
    for n in range(1, 10):
        assert _matches(rule, "DEVPATH", None, f"/devices/console-{n}")
    for other in ("/devices/console-0", "/devices/console-10", "/devices/console-19"):
        assert not _matches(rule, "DEVPATH", None, other)
    assert _matches(rule, "ACTION", None, "add")
    assert _matches(rule, "ACTION", None, "remove")
    assert not _matches(rule, "ACTION", None, "change")


def test_rules_protect_hvc_1_to_9(rules: List[List[Pair]]) -> None:
    ttys = [r for r in rules if ("SUBSYSTEM", None, "==", "tty") in r]
    assert len(ttys) == 1
    rule = ttys[0]
    assert _one(rule, "KERNEL") == ("==", "hvc[1-9]")
    for n in range(1, 10):
        assert _matches(rule, "KERNEL", None, f"hvc{n}")
    for other in ("hvc0", "hvc10", "ttyS0", "hvc"):
        assert not _matches(rule, "KERNEL", None, other)
    assert _one(rule, "ENV", "ID_MM_DEVICE_IGNORE") == ("=", "1")
    assert _one(rule, "MODE")[1] == "0600"
    assert _one(rule, "OWNER")[1] == "root"
    assert _one(rule, "GROUP")[1] == "root"
    for key in ("MODE", "OWNER", "GROUP"):
        assert _one(rule, key)[0] in ("=", ":=")
    # Nothing may pull a unit (a getty) in from a channel's tty.
    assert _one(rule, "ENV", "SYSTEMD_WANTS") == ("=", "")
    assert not any(k == "RUN" for k, _, _, _ in rule)


def test_no_rule_touches_the_main_console(rules: List[List[Pair]]) -> None:
    for rule in rules:
        if _one(rule, "SUBSYSTEM")[1] == "xen":
            assert not _matches(rule, "DEVPATH", None, "/devices/console-0")
        else:
            assert not _matches(rule, "KERNEL", None, "hvc0")


def _udevadm_with_verify() -> Optional[List[str]]:
    candidates = []
    system = shutil.which("udevadm")
    if system:
        candidates.append(system)
    if TRIXIE_UDEVADM.exists():
        candidates.append(str(TRIXIE_UDEVADM))
    for udevadm in candidates:
        probe = subprocess.run(
            [udevadm, "verify", "--help"], capture_output=True, timeout=30, check=False
        )
        if probe.returncode == 0:
            return [udevadm]
    return None


@pytest.mark.system  # trixie's udevadm, fetched by make system
def test_udevadm_verify(tmp_path: Path) -> None:
    udevadm = _udevadm_with_verify()
    if udevadm is None:
        # CI runs this: `make test` fetches it first.  A missing tool is a failure to see,
        # not a skip to overlook.
        pytest.fail(
            f"no udevadm with `verify` (udev >= 254); run `sh {SETUP}`, which fetches Debian "
            "trixie's into .cache/ on amd64"
        )
    proc = subprocess.run(
        [*udevadm, "verify", str(RULES)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # And it does reject a broken file, so a pass above means something.
    bad = tmp_path / "99-bad.rules"
    bad.write_text('SUBSYSTEM="xen", RUN+="x"\n')
    proc = subprocess.run(
        [*udevadm, "verify", str(bad)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode != 0
