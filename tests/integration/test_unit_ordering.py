"""Boot ordering of the collection's guest units beside cloud-init's and the network's.

The real-Xen e2e tier found an ordering cycle on a guest with cloud-init and ifupdown:
the in-guest agent, with its default dependencies, was after sysinit.target and, through
Before=network-pre.target, before networking.service, which cloud-init's network stage
follows, itself before sysinit.target. systemd broke the cycle at boot by deleting
cloud-init's network stage. An earlier variant: xenchannel-report-status.service once
had Before=xenchannel-guest-agent.service (it is after cloud-final.service, which is
after multi-user.target, which is after the agent). The molecule containers run neither
ifupdown's networking.service nor networkd, so nothing else catches this.

Each case builds a throwaway guest unit tree under tmp_path and lets the REAL
`systemd-analyze verify --root=TREE` (systemd 252 here) build the boot transaction of
default.target; it logs "Found ordering cycle" and deletes a job when the units order
themselves in a circle, exactly as PID 1 does at boot. The tree holds:

- systemd's own units: the files the host's `systemd` and `udev` packages ship (`dpkg -L`),
  not the rest of the host's /lib/systemd/system (docker, databases...);
- each tested cloud-init (testbed/cloud_init_trees.py: Debian's 22.4 and 25.1, upstream
  23.4 and 24.4 as RHEL builds them, 26.2), its units as installed,
  enabled as its package does (every unit with an [Install] section) plus the link
  cloud-init's generator makes at boot (multi-user.target.wants/cloud-init.target);
- bookworm's ifupdown and openssh-server units (.cache/cloud-init/guest-units/, fetched
  by the same script), and either ifupdown's networking.service or systemd-networkd
  enabled, as `systemctl enable` would;
- the collection's units, copied from the repository and linked exactly as the roles
  install and enable them (guest: the agent, its settings drop-in, ssh-host-keys;
  cloud_init_datasource: report-status).

Two negative controls keep the check honest: the same tree with the agent's default
dependencies back (the unit before the fix) and with report-status before the agent must
both show a cycle, or the check would pass whatever the units say.

`systemd-analyze` needs no running systemd (it runs a manager in test mode), but it
makes two temporary directories directly under /tmp and opens /run/systemd; it runs in a
private mount namespace where /tmp is tmp_path and /run a fresh tmpfs, so nothing is
written outside tmp_path. Needs root (unshare), like the rest of the integration tests.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set, Tuple

import jinja2
import pytest

from testbed.cloud_init_trees import CACHE, VERSIONS, tree

REPO = Path(__file__).resolve().parents[2]
SETUP = "sh tests/setup-cloud-init.sh"
GUEST_UNITS = Path(CACHE) / "guest-units" / "root"

AGENT = REPO / "runtime" / "systemd" / "xenchannel-guest-agent.service"
SSH_HOST_KEYS = REPO / "runtime" / "systemd" / "xenchannel-ssh-host-keys.service"
REPORT_STATUS = REPO / "datasource" / "xenchannel-report-status.service"
AGENT_SETTINGS = REPO / "roles" / "guest" / "templates" / "agent-settings.conf.j2"

ETC = "etc/systemd/system"
LIB = "usr/lib/systemd/system"  # merged /usr: /lib is a link to usr/lib, as on Debian

# (repository file, the role's task file, the link it makes under /etc/systemd/system)
ROLE_UNITS = [
    (AGENT, "roles/guest/tasks/agent.yml", "multi-user.target.wants"),
    (SSH_HOST_KEYS, "roles/guest/tasks/ssh_host_keys.yml", "ssh.service.wants"),
    (REPORT_STATUS, "roles/cloud_init_datasource/tasks/report_status.yml",
     "cloud-init.target.wants"),
]  # fmt: skip
OURS = [unit[0].name for unit in ROLE_UNITS]

STACKS = ("ifupdown", "networkd")
CASES = [(version, stack) for version in VERSIONS for stack in STACKS]
CASE_IDS = [f"cloud-init-{version}-{stack}" for version, stack in CASES]

# What systemd logs when a transaction orders itself in a circle ("Found ordering cycle
# on X/start", "Found dependency on Y/start", "Job X/start deleted to break ordering
# cycle ...") or cannot break it ("... unfixable cyclic ordering ...", "Failed to create").
CYCLE = re.compile(
    r"ordering cycle|Found dependency on|cyclic ordering|Failed to create", re.IGNORECASE
)
VERIFY_TIMEOUT = 60


# ------------------------------------------------------------------ building the tree


def _guest_units() -> Path:
    """bookworm's ifupdown and openssh-server, extracted; missing is a failure."""
    for unit in ("networking.service", "ssh.service"):
        if not (GUEST_UNITS / "lib" / "systemd" / "system" / unit).is_file():
            raise AssertionError(
                f"{unit} is not fetched ({GUEST_UNITS} lacks it): run `{SETUP}` (or `make system`)"
            )
    return GUEST_UNITS


def _systemd_unit_files() -> List[str]:
    """The unit files and .wants links the host's systemd and udev packages ship."""
    listed = subprocess.run(
        ["dpkg-query", "-L", "systemd", "udev"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if listed.returncode != 0:
        raise AssertionError(
            "cannot list the host's systemd units (`dpkg-query -L systemd udev`): " + listed.stderr
        )
    prefixes = ("/lib/systemd/system/", "/usr/lib/systemd/system/")
    return sorted({p for p in listed.stdout.split() if p.startswith(prefixes)})


def _copy_units(paths: Iterable[str], source_root: str, dest: Path) -> None:
    """Copy unit files (and links, as links) from under source_root's unit dirs to dest."""
    for path in paths:
        rel = path.split("/systemd/system/", 1)[1]
        src = os.path.join(source_root, path.lstrip("/"))
        target = dest / rel
        if os.path.islink(src):
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.is_symlink():
                target.symlink_to(os.readlink(src))
        elif os.path.isdir(src):
            target.mkdir(parents=True, exist_ok=True)
        elif os.path.isfile(src):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def _copy_package(package_root: Path, dest: Path) -> List[str]:
    """A package's units (under lib/ or usr/lib/) into dest; returns their names."""
    names = []
    for sub in ("lib/systemd/system", "usr/lib/systemd/system"):
        source = package_root / sub
        if not source.is_dir():
            continue
        for path in sorted(source.rglob("*")):
            if path.is_file() or path.is_symlink():
                _copy_units(["/" + str(path.relative_to(package_root))], str(package_root), dest)
                if path.parent == source:
                    names.append(path.name)
    return names


def _install_section(unit: Path) -> Dict[str, List[str]]:
    """WantedBy=, RequiredBy=, Alias= and Also= of a unit file."""
    found: Dict[str, List[str]] = {"WantedBy": [], "RequiredBy": [], "Alias": [], "Also": []}
    section = ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[Install]" and "=" in line and not line.startswith(("#", ";")):
            key, value = line.split("=", 1)
            if key.strip() in found:
                found[key.strip()] += value.split()
    return found


def _link(root: Path, wants: str, target: str) -> None:
    link = root / ETC / wants / os.path.basename(target)
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(target)


def _enable(root: Path, name: str, seen: Optional[Set[str]] = None) -> None:
    """What `systemctl enable` (deb-systemd-helper) makes for a vendor unit."""
    seen = set() if seen is None else seen
    if name in seen:
        return
    seen.add(name)
    install = _install_section(root / LIB / name)
    for wanted_by in install["WantedBy"]:
        _link(root, wanted_by + ".wants", f"/{LIB}/{name}")
    for required_by in install["RequiredBy"]:
        _link(root, required_by + ".requires", f"/{LIB}/{name}")
    for alias in install["Alias"]:
        alias_link = root / ETC / alias
        if not alias_link.is_symlink():
            alias_link.symlink_to(f"/{LIB}/{name}")
    for also in install["Also"]:
        _enable(root, also, seen)


def _stub_executables(root: Path, unit_texts: Iterable[str]) -> None:
    """The commands our units run, as empty executables: verify checks they exist."""
    for text in unit_texts:
        for command in re.findall(r"^Exec\w+=[-@:+!]*(/\S+)", text, re.MULTILINE):
            stub = root / command.lstrip("/")
            stub.parent.mkdir(parents=True, exist_ok=True)
            if not stub.exists():
                stub.write_text("#!/bin/sh\n")
                stub.chmod(0o755)


def build_guest(
    base: Path,
    version: str,
    stack: str,
    agent_text: Optional[str] = None,
    report_status_text: Optional[str] = None,
) -> Path:
    """A guest's unit tree at base/root; the collection's units as the roles install them,
    unless agent_text or report_status_text replaces a unit's content."""
    root = base / "root"
    (root / LIB).mkdir(parents=True)
    (root / ETC).mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")

    _copy_units(_systemd_unit_files(), "/", root / LIB)

    # cloud-init, enabled as Debian's package does; its generator adds the target to
    # multi-user.target when it finds a datasource (the XenChannel check does).
    for name in _copy_package(Path(tree(version)), root / LIB):
        if _install_section(root / LIB / name)["WantedBy"]:
            _enable(root, name)
    _link(root, "multi-user.target.wants", f"/{LIB}/cloud-init.target")

    guest = _guest_units()
    _copy_package(guest, root / LIB)
    _enable(root, "ssh.service")
    if stack == "ifupdown":
        _enable(root, "networking.service")
        _enable(root, "ifupdown-wait-online.service")
    else:
        _enable(root, "systemd-networkd.service")

    # The collection's units: where the roles copy them, with the links they make.
    texts = {
        AGENT.name: AGENT.read_text() if agent_text is None else agent_text,
        SSH_HOST_KEYS.name: SSH_HOST_KEYS.read_text(),
        REPORT_STATUS.name: (
            REPORT_STATUS.read_text() if report_status_text is None else report_status_text
        ),
    }
    for path, _dest, wants in ROLE_UNITS:
        (root / ETC / path.name).write_text(texts[path.name])
        _link(root, wants, f"/{ETC}/{path.name}")
    # The guest role's settings drop-in, as written for non-default guest_agent_config.
    dropin = jinja2.Template(AGENT_SETTINGS.read_text(), undefined=jinja2.StrictUndefined)
    settings = dropin.render(
        ansible_managed="Ansible managed",
        __guest_agent_args=["--wait-timeout=60", "--user=debian"],
    )
    (root / ETC / (AGENT.name + ".d")).mkdir()
    (root / ETC / (AGENT.name + ".d") / "50-xenchannel-provision.conf").write_text(settings)
    _stub_executables(root, [*texts.values(), settings])
    return root


# ------------------------------------------------------------------ running systemd-analyze


def verify(base: Path, *units: str, debug: bool = False) -> Tuple[int, str, List[str]]:
    """`systemd-analyze verify --root` on base/root, in a private mount namespace where
    /tmp is base and /run is empty. Returns (exit status, output, the argv)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is not installed (apt-get install systemd)")
    if os.geteuid() != 0:
        pytest.fail("needs root: systemd-analyze runs in a private mount namespace (unshare)")
    argv = [analyze, "verify", "--root=/tmp/root", "--man=no", "--generators=no", *units]
    wrapper = [
        "unshare", "--mount", "--propagation", "private", "--",
        "sh", "-c", 'mount --bind "$0" /tmp && mount -t tmpfs -o mode=0755 tmpfs /run '
        '&& exec "$@"', str(base), *argv,
    ]  # fmt: skip
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "SYSTEMD_LOG_LEVEL": "debug" if debug else "info",
        "SYSTEMD_LOG_COLOR": "0",
        "SYSTEMD_PAGER": "",
    }
    run = subprocess.run(
        wrapper, capture_output=True, text=True, timeout=VERIFY_TIMEOUT, env=env, check=False
    )
    return run.returncode, run.stdout + run.stderr, argv


def _report(argv: List[str], status: int, output: str) -> str:
    return f"$ {' '.join(argv)}   (root: tmp_path/root)\nexit status {status}\n{output}"


def _cycle_lines(output: str) -> List[str]:
    return [line for line in output.splitlines() if CYCLE.search(line)]


# ------------------------------------------------------------------ the tests


def _network_stage(version: str) -> str:
    """cloud-init's network stage: cloud-init.service, renamed cloud-init-network.service
    in 24.3 (when the stages became one process, cloud-init-main.service)."""
    major, minor = (int(part) for part in version.split(".")[:2])
    return "cloud-init-network.service" if (major, minor) >= (24, 3) else "cloud-init.service"


def test_the_role_tasks_make_the_links_built_here() -> None:
    """The tree links the units as the roles do; a changed task must change this test."""
    for path, task, wants in ROLE_UNITS:
        text = (REPO / task).read_text()
        assert path.name in text, f"{task} no longer installs {path.name}"
        assert f"/etc/systemd/system/{wants}/{path.name}" in text, (
            f"{task} no longer links {path.name} into {wants}: update ROLE_UNITS"
        )
    assert "50-xenchannel-provision.conf" in (REPO / "roles/guest/tasks/agent.yml").read_text()


@pytest.mark.parametrize(("version", "stack"), CASES, ids=CASE_IDS)
def test_no_ordering_cycle_at_boot(tmp_path: Path, version: str, stack: str) -> None:
    build_guest(tmp_path, version, stack)
    status, output, argv = verify(tmp_path, "default.target", *OURS)
    if _cycle_lines(output):
        pytest.fail(
            f"ordering cycle at boot with cloud-init {version} and {stack}:\n"
            + _report(argv, status, output),
            pytrace=False,
        )
    assert status == 0, _report(argv, status, output)
    ours = [line for line in output.splitlines() if "xenchannel" in line]
    assert not ours, _report(argv, status, output)

    # The check means something only if the boot transaction held every unit involved.
    status, debug, argv = verify(tmp_path, "default.target", debug=True)
    installed = set(re.findall(r"Installed new job (\S+)/start", debug))
    network_stage = _network_stage(version)
    expected = {
        *OURS, "cloud-init-local.service", network_stage, "cloud-config.service",
        "cloud-final.service", "network-pre.target", "sysinit.target", "ssh.service",
        *(["networking.service"] if stack == "ifupdown"
          else ["systemd-networkd.service", "systemd-networkd-wait-online.service"]),
    }  # fmt: skip
    missing = sorted(expected - installed)
    assert not missing, f"not in the boot transaction: {missing}\n" + _report(argv, status, debug)


@pytest.mark.parametrize(("version", "stack"), CASES, ids=CASE_IDS)
def test_negative_control_agent_with_default_dependencies(
    tmp_path: Path, version: str, stack: str
) -> None:
    """The agent unit before the fix (its default dependencies on) must show the cycle
    the e2e tier saw: sysinit.target -> agent -> network-pre.target -> the network stack
    -> cloud-init's network stage -> sysinit.target.

    RHEL's render of 23.4 and 24.4 (variant rhel) leaves the network stage its default
    dependencies, i.e. after sysinit.target, and after NetworkManager rather than
    ifupdown: the circle cannot close there, and the check says so for that reason."""
    text = AGENT.read_text()
    assert re.search(r"^DefaultDependencies=no$", text, re.MULTILINE), text
    old = re.sub(r"^DefaultDependencies=no\n", "", text, flags=re.MULTILINE)
    root = build_guest(tmp_path, version, stack, agent_text=old)
    status, output, argv = verify(tmp_path, "default.target")
    cycle = "\n".join(_cycle_lines(output))
    network_stage = _network_stage(version)
    stage_unit = (root / LIB / network_stage).read_text()
    if not re.search(r"^Before=sysinit.target$", stage_unit, re.MULTILINE):
        assert not re.search(r"^DefaultDependencies=no$", stage_unit, re.MULTILINE), stage_unit
        assert not cycle, _report(argv, status, output)
        return
    assert "Found ordering cycle" in cycle, _report(argv, status, output)
    for unit in ("xenchannel-guest-agent.service", "network-pre.target", network_stage):
        assert f"{unit}/start" in cycle, _report(argv, status, output)


@pytest.mark.parametrize(("version", "stack"), CASES, ids=CASE_IDS)
def test_negative_control_report_status_before_the_agent(
    tmp_path: Path, version: str, stack: str
) -> None:
    """report-status with Before=xenchannel-guest-agent.service (an earlier bug) is a cycle
    through cloud-final.service and multi-user.target, whatever the agent's dependencies."""
    text = REPORT_STATUS.read_text()
    assert "\n[Service]" in text
    bad = text.replace("\n[Service]", "\nBefore=xenchannel-guest-agent.service\n\n[Service]", 1)
    build_guest(tmp_path, version, stack, report_status_text=bad)
    status, output, argv = verify(tmp_path, "default.target")
    cycle = "\n".join(_cycle_lines(output))
    assert "Found ordering cycle" in cycle, _report(argv, status, output)
    for unit in ("xenchannel-report-status.service", "xenchannel-guest-agent.service",
                 "cloud-final.service"):  # fmt: skip
        assert f"{unit}/start" in cycle, _report(argv, status, output)
