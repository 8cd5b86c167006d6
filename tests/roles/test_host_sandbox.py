"""The host sandbox every role test and the demo use: writes stay in its uppers."""

import os
import subprocess
import sys
import time

import pytest

from testbed.host_sandbox import TIMEOUT_RC, HostSandbox, RootSandbox

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROBE = "/etc/xc-host-sandbox-probe"


@pytest.fixture
def box(tmp_path):
    return HostSandbox(str(tmp_path / "box"))


def test_a_write_to_etc_lands_in_the_upper_only(box):
    assert not os.path.lexists(PROBE), f"{PROBE} exists on the real root; remove it"
    box.run(["sh", "-c", f"echo inside > {PROBE} && chmod 0640 {PROBE}"]).check()
    assert not os.path.lexists(PROBE)
    with open(box.upper(PROBE)) as handle:
        assert handle.read() == "inside\n"
    assert box.read(PROBE) == "inside\n"
    assert box.mode(PROBE) == 0o640
    assert box.written("/etc") == [PROBE]


def test_runs_on_one_base_see_each_others_writes_and_deletions(box):
    box.run(["sh", "-c", "mkdir -p /var/lib/xc-probe && echo 1 > /var/lib/xc-probe/a"]).check()
    second = box.run(["sh", "-c", "cat /var/lib/xc-probe/a && rm /etc/hostname"]).check()
    assert second.stdout == "1\n"
    # The deletion is a whiteout in the upper: gone inside, still there outside.
    assert os.path.exists("/etc/hostname")
    assert not box.exists("/etc/hostname")
    assert box.run(["test", "-e", "/etc/hostname"]).rc == 1
    # A file the sandbox never touched reads through to the real one.
    assert box.read("/etc/os-release") == _text("/etc/os-release")


def test_run_and_tmp_are_fresh_and_the_network_is_only_loopback(box, tmp_path):
    marker = tmp_path / "host-only"
    marker.write_text("x")
    box.run(["touch", "/run/from-run-1", "/tmp/from-run-1"]).check()
    script = (
        f"test -e {marker} || echo hidden; test -e /run/from-run-1 || echo fresh-run;"
        " test -e /tmp/from-run-1 || echo fresh-tmp; hostname;"
        # /proc/net/dev lists the interfaces of the reader's network namespace.
        " tail -n +3 /proc/net/dev | cut -d: -f1"
    )
    inside = box.run(["sh", "-c", script]).check()
    assert inside.stdout.split() == ["hidden", "fresh-run", "fresh-tmp", "xc-sandbox", "lo"]
    host_net = HostSandbox(str(tmp_path / "box2"), net=False)
    assert "lo" in host_net.run(["cat", "/proc/net/dev"]).check().stdout
    assert len(host_net.run(["cat", "/proc/net/dev"]).stdout.splitlines()) > 3


def test_binds_and_share_are_visible_inside(tmp_path):
    shared = tmp_path / "work"
    shared.mkdir()
    box = HostSandbox(str(tmp_path / "box"), binds=[str(shared)])
    box.run(["sh", "-c", f"echo a > {shared}/from-inside; echo b > {box.share}/s"]).check()
    assert (shared / "from-inside").read_text() == "a\n"
    assert _text(os.path.join(box.share, "s")) == "b\n"


def test_a_command_is_bounded_and_leaves_nothing_running(box):
    # A unique argument marks the background process, to look for it on the host after.
    started = time.monotonic()
    result = box.run(["sh", "-c", "sleep 987.125 & sleep 30"], timeout=1)
    assert result.rc == TIMEOUT_RC
    assert "timed out after 1 s" in result.stderr
    assert time.monotonic() - started < 15
    left = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p) == "sleep\x00987.125\x00"]
    assert left == []


def _text(path):
    with open(path) as handle:
        return handle.read()


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline") as handle:
            return handle.read()
    except OSError:
        return ""


def test_started_command_shares_its_namespaces_and_is_stopped(box):
    with box.start(["sh", "-c", "echo up > /run/daemon.ready; exec sleep 600"]) as daemon:
        daemon.wait_for(
            lambda: daemon.run(["test", "-e", "/run/daemon.ready"]).rc == 0, 10, "ready file"
        )
        beside = daemon.run(["sh", "-c", "cat /run/daemon.ready; cat /proc/1/cmdline"]).check()
        # Same mount namespace (the file) and same pid namespace (pid 1 is the sandbox's).
        assert beside.stdout.startswith("up\n")
        assert "testbed.host_sandbox\x00--inner" in beside.stdout
        assert daemon.alive()
    assert not daemon.alive()
    # The lock is released: the next run on the base proceeds.
    assert box.run(["true"], timeout=10).rc == 0


def test_the_repository_stays_visible_inside_wherever_it_lies(box):
    # CI may clone the repository under /tmp, which the sandbox replaces with a tmpfs:
    # the venv (ansible-playbook) and the collection tree must still be reachable.
    here = os.path.abspath(__file__)
    assert box.run(["test", "-f", here]).rc == 0, f"{here} is not visible in the sandbox"


# --------------------------------------------------------------------------- RootSandbox


@pytest.fixture(scope="module")
def debian_root():
    """A Debian bookworm minbase root, built (and cached) by the pristine-machine step."""
    build = os.path.join(REPO, "tests", "e2e", "build.py")
    proc = subprocess.run(
        [sys.executable, build, "pristine"],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return os.path.join(REPO, ".cache", "e2e", "pristine", "root")


def test_a_root_sandbox_runs_the_roots_own_programs_and_keeps_it_untouched(debian_root, tmp_path):
    box = RootSandbox(str(tmp_path / "rootbox"), debian_root, binds=[(str(tmp_path), "/mnt")])
    inside = box.run(
        ["sh", "-c", "grep ^VERSION_CODENAME= /etc/os-release && echo x > /etc/xc-probe"
         " && rm /etc/hostname && hostname && ls /mnt && pwd"],
        cwd="/var",
    ).check()  # fmt: skip
    assert inside.stdout.split() == ["VERSION_CODENAME=bookworm", "xc-sandbox", "rootbox", "/var"]
    # Writes and deletions are in the sandbox's layer; the cached root is as it was.
    assert not os.path.lexists(os.path.join(debian_root, "etc/xc-probe"))
    assert os.path.exists(os.path.join(debian_root, "etc/hostname"))
    assert box.read("/etc/xc-probe") == "x\n" and not box.exists("/etc/hostname")
    assert box.host_path("/etc/os-release") == os.path.join(debian_root, "etc/os-release")
    assert box.written("/etc") == ["/etc/xc-probe"]
    # A second run sees the first one's layer.
    assert box.run(["cat", "/etc/xc-probe"]).check().stdout == "x\n"


def test_outside_runs_this_machines_programs_with_the_root_mounted(debian_root, tmp_path):
    box = RootSandbox(str(tmp_path / "rootbox"), debian_root)
    with box.start(["sleep", "60"]) as running:
        # Outside: this machine's python, and the sandbox's root at box.chroot.
        seen = running.run(
            [sys.executable, "-c", f"print(open('{box.chroot}/etc/debian_version').read())"],
            outside=True,
        ).check()
        assert seen.stdout.strip() == _text(os.path.join(debian_root, "etc/debian_version")).strip()
        # Beside it, chrooted, in the same pid namespace as the started command.
        comms = running.run(["sh", "-c", "cat /proc/[0-9]*/comm"]).check().stdout.split()
        assert "sleep" in comms and len(comms) < 10, comms
