"""xenchannel.provision.dom0_agent applied for real to a throwaway copy of this machine.

ansible-playbook runs with ``connection: local`` inside ``testbed.host_sandbox`` and with
Debian's own ``/usr/bin/python3`` as the target interpreter, as on a real dom0: every
file the role writes lands in the sandbox's uppers and is checked there, and the agent is
then started from the installed files alone (no venv, no PYTHONPATH) and serves a
simulated guest.  ``Dom0Box`` is shared with the domain role's tests.
"""

import json
import re
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pytest

from testbed import ansible_run
from testbed.host_sandbox import HostSandbox, Result, Running
from tests.roles.runtime_manifest import IMPORT_ALL, module_names, runtime_files
from xenchannel.protocol import CURRENT_VERSION

REPO = Path(__file__).resolve().parents[2]
PKG = "/usr/lib/python3/dist-packages/xenchannel"
UNIT = "/etc/systemd/system/xenchannel-dom0-agent.service"
DROPIN = "/etc/systemd/system/xenchannel-dom0-agent.service.d/50-xenchannel-provision.conf"
CONFIG = "/etc/xenchannel/agent.ini"
WRAPPER = "/usr/local/sbin/xenchannel-dom0"
TMPFILES = "/etc/tmpfiles.d/xenchannel-dom0-agent.conf"
# Commands checking the installed files: Debian's python3, no venv, no PYTHONPATH.
CLEAN_ENV = {
    "PATH": "/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
}
RECAP = re.compile(
    r"^localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M
)
AGENT = {"role": "xenchannel.provision.dom0_agent", "dom0_agent_manage_service": False}
# What systemd would do at boot: recreate the socket root from the role's tmpfiles.d file.
BOOT = f"systemd-tmpfiles --create {TMPFILES}"
START_AGENT = f"{BOOT} && exec /usr/bin/python3 -m xenchannel.dom0 run --config {CONFIG}"


class Play:
    """One ansible-playbook run's outcome: rc, output and the PLAY RECAP counts."""

    def __init__(self, result: Result) -> None:
        self.rc, self.stdout, self.stderr = result
        found = RECAP.search(self.stdout)
        counts = [int(n) for n in found.groups()] if found else [-1, -1, -1, -1]
        self.ok, self.changed, self.unreachable, self.failed = counts

    @property
    def output(self) -> str:
        return (
            f"rc {self.rc}\n--- stdout\n{self.stdout[-10000:]}\n--- stderr\n{self.stderr[-4000:]}"
        )

    def check(self) -> "Play":
        assert self.rc == 0 and self.failed == 0, self.output
        return self


class Dom0Box:
    """A host sandbox with the collection bound in, for plays on a simulated dom0."""

    def __init__(self, base: Path) -> None:
        self.collections, self._remove_tree = ansible_run.make_collection_tree()
        self.box = HostSandbox(str(base), binds=[self.collections])
        self.share = Path(self.box.share)
        self.env = ansible_run.playbook_env(self.collections, str(self.share))
        self.env.pop("PYTHONPATH", None)
        Path(self.env["ANSIBLE_LOCAL_TEMP"]).mkdir(exist_ok=True)
        self._plays = 0

    def close(self) -> None:
        self._remove_tree()

    def write_play(self, plays: List[Dict[str, Any]]) -> str:
        self._plays += 1
        path = self.share / f"play-{self._plays}.yml"
        path.write_text(json.dumps(plays))  # JSON is YAML: no quoting surprises
        return str(path)

    def argv(self, path: str, *options: str) -> List[str]:
        # Debian's python3 runs the modules, as on a real dom0: channel_metadata and
        # channel_status then import the runtime the role installed, not the repository's.
        return ansible_run.playbook_argv(
            path, "-e", "ansible_python_interpreter=/usr/bin/python3", *options
        )

    def play(
        self,
        roles: Sequence[Dict[str, Any]],
        *options: str,
        within: Optional[Running] = None,
        timeout: float = 600,
    ) -> Play:
        """Apply ``roles`` to localhost in a fresh sandbox run, or beside ``within``."""
        play = {
            "name": "roles under test",
            "hosts": "localhost",
            "gather_facts": False,
            "roles": list(roles),
        }
        return self.playbook([play], *options, within=within, timeout=timeout)

    def playbook(
        self,
        plays: List[Dict[str, Any]],
        *options: str,
        within: Optional[Running] = None,
        timeout: float = 600,
    ) -> Play:
        argv = self.argv(self.write_play(plays), *options)
        if within is not None:
            return Play(within.run(argv, env=self.env, timeout=timeout, cwd=str(self.share)))
        return Play(self.box.run(argv, env=self.env, timeout=timeout, cwd=str(self.share)))

    def hold(self, timeout: float = 900) -> Running:
        """A sandbox session kept open (its /run survives between the commands run in it)."""
        return self.box.start(["sleep", str(int(timeout))], env=CLEAN_ENV, timeout=timeout)


@pytest.fixture(scope="module")
def converged(tmp_path_factory):
    """One sandbox where the role converged, then ran again (in the same boot)."""
    role = Dom0Box(tmp_path_factory.mktemp("dom0") / "box")
    with role.hold() as session:
        first = role.play([AGENT], within=session).check()
        second = role.play([AGENT], within=session).check()
    yield role, first, second
    role.close()


@pytest.fixture
def dom0box(tmp_path):
    made: List[Dom0Box] = []

    def make(name: str = "box") -> Dom0Box:
        made.append(Dom0Box(tmp_path / name))
        return made[-1]

    yield make
    for role in made:
        role.close()


def test_converges_then_changes_nothing(converged) -> None:
    _role, first, second = converged
    assert first.changed > 0, first.output
    assert second.changed == 0, second.output
    assert "dom0_agent_manage_service is false" in first.stdout


def test_runtime_installed_and_imported_from_the_system_path(converged) -> None:
    role, _first, _second = converged
    box = role.box
    for rel in runtime_files("dom0"):
        assert box.mode(f"{PKG}/{rel}") == 0o644, rel
    assert box.mode(PKG) == 0o755 and box.mode(f"{PKG}/dom0") == 0o755
    assert sorted(p[len(PKG) + 1 :] for p in box.written(PKG)) == runtime_files("dom0")
    probe = box.run(
        ["/usr/bin/python3", "-I", "-c", "import xenchannel.dom0.agent as a; print(a.__file__)"],
        env=CLEAN_ENV,
    )
    assert probe.check().stdout.strip() == f"{PKG}/dom0/agent.py"
    # Every module the role installed imports there: none needs code dom0 lacks.
    every = box.run(
        ["/usr/bin/python3", "-I", "-c", IMPORT_ALL, *module_names("dom0")], env=CLEAN_ENV
    ).check()
    assert every.stdout.strip() == f"{PKG}/__init__.py"


def test_directories_config_unit_and_tmpfiles(converged) -> None:
    role, _first, _second = converged
    box = role.box
    for path in ("/etc/xenchannel/domains", "/var/lib/xenchannel/state"):
        assert box.mode(path) == 0o700, path
    assert box.mode("/etc/xenchannel") == 0o755
    assert box.mode(CONFIG) == 0o600
    assert box.read(UNIT) == (REPO / "runtime/systemd/xenchannel-dom0-agent.service").read_text()
    assert box.mode(UNIT) == 0o644
    assert not box.exists(DROPIN)  # default paths: the unit as shipped is enough
    assert box.read(TMPFILES).splitlines()[-1] == "d /run/xenchannel 0700 root root -"
    # The config, read by the agent's own reader from the installed runtime.
    script = (
        "import dataclasses, json, sys;"
        " from xenchannel.dom0.cli import default_config, read_config_file;"
        f" c = read_config_file('{CONFIG}', default_config()); c.validate();"
        " print(json.dumps(dataclasses.asdict(c)))"
    )
    read = json.loads(
        box.run(["/usr/bin/python3", "-I", "-c", script], env=CLEAN_ENV).check().stdout
    )
    assert read["store_dir"] == "/etc/xenchannel/domains"
    assert read["state_dir"] == "/var/lib/xenchannel/state"
    assert read["socket_root"] == "/run/xenchannel"
    assert read["control_socket"] == "/run/xenchannel/agent.sock"


def test_the_wrapper_prints_the_status_table(converged) -> None:
    role, _first, _second = converged
    box = role.box
    assert box.mode(WRAPPER) == 0o755
    out = box.run(
        ["sh", "-c", f"{BOOT} && mkdir -p /var/lib/xenchannel/state && xenchannel-dom0 status"],
        env=CLEAN_ENV,
    )
    assert out.check().stdout.split() == [
        "DOMAIN",
        "CONNECTED",
        "HANDSHAKE",
        "DELIVERED",
        "STATUS",
        "READY",
        "ADDRESS",
        "INSTANCE-ID",
        "LAST",
        "ERROR",
    ]


def test_the_installed_agent_serves_a_simulated_guest(converged) -> None:
    """The agent from the installed files only, a store entry written by the role's
    module, a simulated QEMU socket + guest client that fetches and reports applied."""
    role, _first, _second = converged
    box = role.box
    guest = REPO / "tests" / "roles" / "simulated_guest.py"
    with box.start(["sh", "-c", START_AGENT], env=CLEAN_ENV, timeout=300) as agent:
        agent.wait_for(
            lambda: _exists_in(agent, "/run/xenchannel/agent.sock"), 20, "the control socket"
        )
        metadata = {
            "name": "bundle for vm1",
            "xenchannel.provision.channel_metadata": {
                "domain": "vm1",
                "socket": "/run/xenchannel/vm1.sock",
                "meta_data": {"instance-id": "iid-vm1", "local-hostname": "vm1"},
                "user_data": "#cloud-config\n",
            },
        }
        role.playbook(
            [{"hosts": "localhost", "gather_facts": False, "tasks": [metadata]}], within=agent
        ).check()
        sim = agent.run(
            [
                "/usr/bin/python3",
                "-I",
                str(guest),
                "--socket",
                "/run/xenchannel/vm1.sock",
                "--report",
                "applied",
                "--timeout",
                "60",
            ],
            env=CLEAN_ENV,
            timeout=90,
        )
        assert sim.rc == 0, sim
        assert json.loads(sim.stdout)["meta_data"]["local-hostname"] == "vm1"
        # The simulator has exited, so its socket is gone: delivered and applied over a
        # session of the current version, no longer connected.
        applied = ["vm1", "no", f"v{CURRENT_VERSION}", "yes", "applied"]
        deadline = time.monotonic() + 20
        while True:
            table = agent.run(["xenchannel-dom0", "status"], env=CLEAN_ENV).check().stdout
            row = next((line.split() for line in table.splitlines() if line.startswith("vm1 ")), [])
            if row[:5] == applied or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        # Not ready: the simulated guest reports applied without a report of itself.
        assert row[:8] == [*applied, "no", "-", "iid-vm1"], table
        query = agent.run(["xenchannel-dom0", "status", "vm1", "--json"], env=CLEAN_ENV).check()
        assert json.loads(query.stdout)["summary"]["status"] == "applied"
    stopped = agent.stop()
    assert stopped.rc == 0, stopped  # SIGTERM: the agent exits cleanly


def _exists_in(session: Running, path: str) -> bool:
    return session.run(["test", "-S", path], env=CLEAN_ENV, timeout=10).rc == 0


def test_check_mode_on_a_fresh_host_changes_nothing(dom0box) -> None:
    role = dom0box()
    check = role.play([AGENT], "--check").check()
    assert check.changed > 0, check.output  # it reports what it would do ...
    written = [p for top in role.box.overlaid for p in role.box.written(top)]
    # ... and writes nothing but Ansible's own bookkeeping.
    assert [p for p in written if not p.startswith("/root/.ansible")] == [], written


def test_managing_the_service_without_systemd_is_refused_with_the_fix(dom0box) -> None:
    role = dom0box()
    refused = role.play([dict(AGENT, dom0_agent_manage_service=True)])
    assert refused.rc != 0 and refused.failed == 1, refused.output
    assert "dom0_agent_manage_service is true but this host's service manager is" in refused.stdout
    assert "set dom0_agent_manage_service to false" in refused.stdout
    assert not role.box.exists(CONFIG)  # refused before anything was installed


def test_other_paths_and_settings_go_into_the_dropin_and_config(dom0box) -> None:
    role = dom0box()
    custom = dict(
        AGENT,
        dom0_agent_state_dir="/srv/xc/state",
        dom0_agent_socket_root="/run/xc",
        dom0_agent_control_socket="",
        dom0_agent_metrics_file="/var/lib/prometheus/node-exporter/xenchannel.prom",
        dom0_agent_config={"rescan_interval": 2.5, "max_guest_frame": 65536},
    )
    role.play([custom]).check()
    box = role.box
    dropin = box.read(DROPIN)
    assert "ReadWritePaths=-/run/xc\n" in dropin and "ReadWritePaths=-/srv/xc/state\n" in dropin
    assert "ReadWritePaths=-/var/lib/prometheus/node-exporter\n" in dropin
    assert "PYTHONPATH" not in dropin
    config = box.read(CONFIG)
    assert "rescan_interval = 2.5\n" in config and "max_guest_frame = 65536\n" in config
    assert "metrics_file = /var/lib/prometheus/node-exporter/xenchannel.prom\n" in config
    assert box.mode("/srv/xc/state") == 0o700
    assert box.read(TMPFILES).splitlines()[-1] == "d /run/xc 0700 root root -"
    # Back to the defaults: the drop-in goes, and so does a module the collection dropped.
    box.run(["touch", f"{PKG}/dom0/dropped.py"]).check()
    role.play([AGENT]).check()
    assert not box.exists(DROPIN)
    assert not box.exists(f"{PKG}/dom0/dropped.py") and box.exists(f"{PKG}/dom0/agent.py")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        pytest.param(
            {"dom0_agent_config": {"store_dir": "/x"}},
            "dom0_agent_config has an unknown key 'store_dir'; the known keys are rescan_interval",
            id="path-key",
        ),
        pytest.param(
            {"dom0_agent_config": {"rescan_intervall": 2}},
            "dom0_agent_config has an unknown key 'rescan_intervall'; did you mean "
            "'rescan_interval'?",
            id="misspelt-key",
        ),
        pytest.param(
            {"dom0_agent_config": {"rescan_interval": "soon"}},
            "settings to numbers",
            id="not-a-number",
        ),
        pytest.param(
            {"dom0_agent_metrics_file": "/var/lib/node-exporter/xenchannel.txt"},
            'dom0_agent_metrics_file is "/var/lib/node-exporter/xenchannel.txt"; set it to an '
            "absolute path ending in .prom",
            id="metrics-file-not-prom",
        ),
        pytest.param(
            {"dom0_agent_state_dir": "relative/state"},
            "dom0_agent_state_dir is",
            id="relative-path",
        ),
        pytest.param(
            {"dom0_agent_config": {"rescan_interval": 7200}},
            "rescan_interval must be a number of seconds",
            id="agent-refuses",
        ),
    ],
)
def test_bad_settings_fail_with_one_sentence(dom0box, settings, message) -> None:
    role = dom0box()
    failed = role.play([dict(AGENT, **settings)])
    assert failed.rc != 0, failed.output
    assert message in failed.stdout, failed.output
    assert not role.box.exists(CONFIG)
