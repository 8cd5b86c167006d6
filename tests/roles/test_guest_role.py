"""xenchannel.provision.guest applied for real to a throwaway copy of this machine.

ansible-playbook runs with ``connection: local`` inside ``testbed.host_sandbox`` (overlays
on /etc, /usr, /var ...), so every file the role writes lands in the sandbox's uppers and
is checked there: modes, links, the runtime imported by the sandbox's own
``/usr/bin/python3``, the udev rule accepted by ``udevadm verify``.  The same helpers
(``RoleBox``) drive the cloud_init_datasource and template_prep tests.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pytest

from testbed import ansible_run
from testbed.host_sandbox import HostSandbox, Result
from tests.roles.runtime_manifest import IMPORT_ALL, module_names, runtime_files

REPO = Path(__file__).resolve().parents[2]
TRIXIE_UDEVADM = REPO / ".cache" / "udevadm-trixie" / "udevadm"
SETUP_SYSTEM = REPO / "tests" / "setup-system-packages.sh"
# apt's downloads are kept here across runs and sandboxes: only the first run fetches.
APT_ARCHIVES = REPO / ".cache" / "role-tests" / "apt-archives"
# What the role's files are checked with inside: no venv, no PYTHONPATH, Debian's python3.
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
# A test applies a role several times; each run takes 30-90 s on a busy machine, and the
# cloud-init tests also install Debian's cloud-init with apt (the first time, downloading).
SLOW = 1200
RECAP = re.compile(
    r"^localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M
)


class Play:
    """One ansible-playbook run's outcome: rc, output and the PLAY RECAP counts."""

    def __init__(self, result: Result) -> None:
        self.rc, self.stdout, self.stderr = result
        found = RECAP.search(self.stdout)
        self.ok, self.changed, self.unreachable, self.failed = (
            (int(n) for n in found.groups()) if found else (-1, -1, -1, -1)
        )

    @property
    def output(self) -> str:
        return f"rc {self.rc}\n--- stdout\n{self.stdout[-8000:]}\n--- stderr\n{self.stderr[-4000:]}"

    def check(self) -> "Play":
        assert self.rc == 0 and self.failed == 0, self.output
        return self


class RoleBox:
    """A host sandbox with the collection and a private Ansible home bound in."""

    def __init__(self, base: Path, net: bool = True) -> None:
        self.collections, self._remove_tree = ansible_run.make_collection_tree()
        # net=False keeps the host network: apt may have to fetch a package once.
        self.box = HostSandbox(str(base), net=net, binds=[self.collections])
        self.share = Path(self.box.share)
        # apt locks its archives directory without waiting, and sandboxes of parallel tests
        # cannot see each other's lock holder: each gets its own copy of the shared cache,
        # and what it downloaded goes back there when it is closed.
        self.archives = self.share / "apt-archives"
        (self.archives / "partial").mkdir(parents=True, exist_ok=True)
        APT_ARCHIVES.mkdir(parents=True, exist_ok=True)
        for deb in APT_ARCHIVES.glob("*.deb"):
            shutil.copy2(deb, self.archives / deb.name)
        apt_conf = self.share / "apt.conf"
        apt_conf.write_text(
            f'Dir::Cache::Archives "{self.archives}/";\n'
            # The cache is root's; apt's unprivileged _apt user cannot write there.
            'APT::Sandbox::User "root";\n'
        )
        self.env = ansible_run.playbook_env(
            self.collections,
            str(self.share),
            APT_CONFIG=str(apt_conf),
            DEBIAN_FRONTEND="noninteractive",
        )
        Path(self.env["ANSIBLE_LOCAL_TEMP"]).mkdir(exist_ok=True)

    def close(self) -> None:
        self._remove_tree()
        for deb in self.archives.glob("*.deb"):
            kept = APT_ARCHIVES / deb.name
            if not kept.exists():
                tmp = kept.with_name(f".{deb.name}.{os.getpid()}")
                shutil.copy2(deb, tmp)
                os.replace(tmp, kept)

    def play(
        self,
        roles: Sequence[Dict[str, Any]],
        *options: str,
        variables: Optional[Dict[str, Any]] = None,
        timeout: float = 600,
    ) -> Play:
        """Apply ``roles`` to localhost inside the sandbox, with ``variables`` as play vars
        (role parameters are checked against that one role's argument spec only)."""
        path = self.share / "play.yml"
        play = {
            "name": "roles under test",
            "hosts": "localhost",
            "gather_facts": False,
            "vars": variables or {},
            "roles": list(roles),
        }
        # JSON is YAML: no quoting surprises.
        path.write_text(json.dumps([play]))
        return self.playbook(str(path), *options, timeout=timeout)

    def playbook(self, path: str, *options: str, timeout: float = 600) -> Play:
        argv = ansible_run.playbook_argv(path, *options)
        return Play(self.box.run(argv, env=self.env, timeout=timeout, cwd=str(self.share)))

    def sh(self, script: str, timeout: float = 120, env: Optional[Dict[str, str]] = None) -> Result:
        """Run a shell script inside the sandbox with a clean system environment."""
        return self.box.run(["/bin/sh", "-ec", script], env=env or CLEAN_ENV, timeout=timeout)

    def written_everywhere(self) -> List[str]:
        """Every file written into the sandbox's overlaid directories so far."""
        return [path for top in self.box.overlaid for path in self.box.written(top)]


@pytest.fixture
def rolebox(tmp_path: Path):
    made: List[RoleBox] = []

    def make(name: str = "box", net: bool = True) -> RoleBox:
        made.append(RoleBox(tmp_path / name, net=net))
        return made[-1]

    yield make
    for box in made:
        box.close()


def islink_to(box: HostSandbox, path: str, target: str) -> bool:
    found = box.host_path(path)
    return found is not None and os.path.islink(found) and os.readlink(found) == target


GUEST = {"role": "xenchannel.provision.guest"}
GETTYS = [f"/etc/systemd/system/serial-getty@hvc{n}.service" for n in range(1, 10)]
AGENT_UNIT = "/etc/systemd/system/xenchannel-guest-agent.service"
AGENT_WANTS = "/etc/systemd/system/multi-user.target.wants/xenchannel-guest-agent.service"
DROPIN = "/etc/systemd/system/xenchannel-guest-agent.service.d/50-xenchannel-provision.conf"


def udevadm_with_verify() -> List[str]:
    for candidate in (str(TRIXIE_UDEVADM), "udevadm"):
        try:
            proc = subprocess.run(
                [candidate, "verify", "--help"], capture_output=True, timeout=30, check=False
            )
        except OSError:
            continue
        if proc.returncode == 0:
            return [candidate]
    raise AssertionError(
        f"no udevadm with `verify` (udev >= 254); run `sh {SETUP_SYSTEM}`, which fetches Debian "
        f"trixie's udevadm into {TRIXIE_UDEVADM.parent}"
    )


@pytest.mark.timeout(SLOW)
def test_guest_role_converges_idempotently_with_real_effects(rolebox) -> None:
    role = rolebox(net=False)
    box = role.box
    first = role.play([GUEST]).check()
    assert first.changed > 0, first.output

    # The runtime: every shipped file, root-owned 0644 in 0755 directories, nothing else.
    pkg = "/usr/lib/python3/dist-packages/xenchannel"
    for rel in runtime_files("guest"):
        assert box.mode(f"{pkg}/{rel}") == 0o644, rel
    assert box.mode(pkg) == 0o755 and box.mode(f"{pkg}/guest/apply") == 0o755
    assert not box.exists(f"{pkg}/__pycache__")
    installed = sorted(p[len(pkg) + 1 :] for p in box.written(pkg))
    assert installed == runtime_files("guest")
    # ... and imported by the sandbox's own Debian python3, from there, not from the repo.
    probe = box.run(
        [
            "/usr/bin/python3",
            "-I",
            "-c",
            "import xenchannel.guest.agent as a, xenchannel.protocol; print(a.__file__)",
        ],
        env=CLEAN_ENV,
    ).check()
    assert probe.stdout.strip() == f"{pkg}/guest/agent.py"
    box.run(
        ["/usr/bin/python3", "-I", "-m", "xenchannel.guest.agent", "--help"], env=CLEAN_ENV
    ).check()
    # Every module the role installed imports there: none needs code the guest lacks.
    every = box.run(
        ["/usr/bin/python3", "-I", "-c", IMPORT_ALL, *module_names("guest")], env=CLEAN_ENV
    ).check()
    assert every.stdout.strip() == f"{pkg}/__init__.py"

    # udev: the rule and helper as shipped, with their modes; the rule passes udevadm verify.
    rules = "/etc/udev/rules.d/90-xenchannel.rules"
    assert box.read(rules) == (REPO / "runtime/udev/90-xenchannel.rules").read_text()
    assert box.mode(rules) == 0o644
    helper = "/usr/lib/udev/xenchannel-console-setup"
    assert box.read(helper) == (REPO / "runtime/udev/xenchannel-console-setup").read_text()
    assert box.mode(helper) == 0o755
    verify = subprocess.run(
        [*udevadm_with_verify(), "verify", box.host_path(rules)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # xenstore-utils really installed by dpkg in the sandbox (not on this machine).
    box.run(["dpkg-query", "-W", "-f=${Status}", "xenstore-utils"], env=CLEAN_ENV).check()
    assert box.exists("/usr/bin/xenstore-read")

    # The agent: unit as shipped, enabled by link, not started; no drop-in by default.
    assert (
        box.read(AGENT_UNIT)
        == (REPO / "runtime/systemd/xenchannel-guest-agent.service").read_text()
    )
    assert box.mode(AGENT_UNIT) == 0o644
    assert islink_to(box, AGENT_WANTS, AGENT_UNIT)
    assert not box.exists(DROPIN)
    for unit in GETTYS:
        assert islink_to(box, unit, "/dev/null"), unit
    assert not box.exists("/etc/systemd/system/serial-getty@hvc0.service")
    # A clone's SSH host keys: the unit as shipped, wanted by ssh.service.
    keys_unit = "/etc/systemd/system/xenchannel-ssh-host-keys.service"
    assert (
        box.read(keys_unit)
        == (REPO / "runtime/systemd/xenchannel-ssh-host-keys.service").read_text()
    )
    assert islink_to(
        box, "/etc/systemd/system/ssh.service.wants/xenchannel-ssh-host-keys.service", keys_unit
    )

    second = role.play([GUEST]).check()
    assert second.changed == 0, second.output


@pytest.mark.timeout(SLOW)
def test_guest_role_settings_dropin_disable_and_prune(rolebox) -> None:
    role = rolebox(net=False)
    box = role.box
    settings = {
        "role": "xenchannel.provision.guest",
        "guest_channel_name": "org.example.other.0",
        "guest_agent_config": {
            "wait-timeout": 60,
            "user": "debian",
            "verbose": True,
            "reload-network": False,
        },
        "guest_agent_enabled": False,
        "guest_install_xenstore_utils": False,
    }
    # A module an older collection shipped and this one does not: the role removes it.
    stale = "/usr/lib/python3/dist-packages/xenchannel/guest/old_module.py"
    role.sh(f"mkdir -p {os.path.dirname(stale)} && echo 'raise SystemExit(1)' > {stale}").check()
    role.play([settings]).check()
    assert not box.exists(stale)
    assert box.read(DROPIN).splitlines()[-1] == (
        "ExecStart=/usr/bin/python3 -m xenchannel.guest.agent "
        "--device=/dev/xen-channel/org.example.other.0 --user=debian --verbose --wait-timeout=60"
    )
    assert not box.exists(AGENT_WANTS)
    assert role.play([settings]).check().changed == 0
    # Back to the defaults: the drop-in goes, the agent is enabled again.
    role.play([{**GUEST, "guest_install_xenstore_utils": False}]).check()
    assert not box.exists(DROPIN)
    assert islink_to(box, AGENT_WANTS, AGENT_UNIT)


@pytest.mark.parametrize(
    ("variables", "sentence"),
    [
        pytest.param(
            {"guest_channel_name": "../evil"},
            "guest_channel_name '../evil' is not a versioned reverse domain name",
            id="name",
        ),
        pytest.param(
            {"guest_agent_config": {"root": "/mnt"}}, "allowed keys are device, state-dir", id="key"
        ),
        pytest.param({"guest_agent_config": {"user": "a b"}}, "values may hold only", id="value"),
    ],
)
def test_guest_role_refuses_bad_settings(rolebox, variables: Dict[str, Any], sentence: str) -> None:
    role = rolebox()
    run = role.play([{**GUEST, **variables}])
    assert run.rc != 0 and sentence in run.stdout, run.output
    assert role.written_everywhere() == [], "a refused setting must change nothing"


def test_guest_role_check_mode_on_a_fresh_host_writes_nothing(rolebox) -> None:
    role = rolebox(net=False)
    run = role.play([GUEST], "--check").check()
    assert run.changed > 0, "check mode must report what it would change\n" + run.output
    assert role.written_everywhere() == []


# A minimal image or container has no udev: the role must give it one (and say so in check
# mode), or refuse with the package to install, before it writes anything.
PURGE_UDEV = (
    "DEBIAN_FRONTEND=noninteractive apt-get purge --yes --quiet udev >/dev/null"
    " && ! test -e /etc/udev/rules.d"
)


@pytest.mark.timeout(SLOW)
def test_guest_role_installs_udev_on_a_guest_without_it(rolebox) -> None:
    role = rolebox(net=False)
    box = role.box
    role.sh(PURGE_UDEV, timeout=300).check()
    before = sorted(role.written_everywhere())

    refused = role.play([{**GUEST, "guest_install_udev": False}])
    assert refused.rc != 0, refused.output
    assert "This guest has no udev (/etc/udev/rules.d does not exist)" in refused.stdout
    assert "set guest_install_udev: true" in refused.stdout, refused.output
    assert sorted(role.written_everywhere()) == before, "a refused guest must be left as it was"

    check = role.play([GUEST], "--check").check()
    assert "udev would be installed first" in check.stdout, check.output
    assert sorted(role.written_everywhere()) == before, "check mode must write nothing"

    role.play([GUEST]).check()
    status = box.run(["dpkg-query", "-W", "-f=${Status}", "udev"], env=CLEAN_ENV).check()
    assert status.stdout == "install ok installed"
    rules = "/etc/udev/rules.d/90-xenchannel.rules"
    assert box.read(rules) == (REPO / "runtime/udev/90-xenchannel.rules").read_text()
    assert box.mode("/usr/lib/udev/xenchannel-console-setup") == 0o755
    assert role.play([GUEST]).check().changed == 0
