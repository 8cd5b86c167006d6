"""The guest side on every interpreter a guest may have: Python 3.6 to 3.13.

What runs is exactly what the guest role installs: the collection's action plugin packs
the runtime's guest component, as for a real guest, and the test unpacks it into a
directory that is the only thing on each interpreter's path besides its standard library.
Each interpreter compiles and imports every installed module, runs the datasource's
report script, and runs tests/compat/guest_roundtrip.py against a live dom0 agent over
the channel simulator. A missing interpreter fails the test (CI is meant to run all of
them); set XENCHANNEL_PYTHONS to a comma-separated list of interpreter paths to test a
different set on purpose.
"""

import atexit
import glob
import io
import json
import os
import socket
import subprocess
import sys
import tarfile

import pytest

from testbed.ansible_run import (
    collection_tree,
    make_collection_tree,
    playbook_env,
    run_tasks,
    saved_results,
)
from testbed.stack import Stack, delivered, sample_bundle
from tests.roles.runtime_manifest import IMPORT_ALL, module_names
from tests.unit.plugins.filter._controller import controller_module

GUEST_VERSIONS = ("3.6", "3.7", "3.8", "3.9", "3.10", "3.11", "3.12", "3.13")
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
# Guest files the cloud_init_datasource role installs outside the runtime package.
GUEST_FILES = ("datasource/DataSourceXenChannel.py", "datasource/xenchannel-report-status")


def _importable_collection():
    """Put the collection where Ansible's import path finds it (as tests/unit does)."""
    top, remove = make_collection_tree(prefix="xenchannel-compat-")
    atexit.register(remove)
    sys.path.insert(0, top)


_importable_collection()
action_module = controller_module(
    "ansible_collections.xenchannel.provision.plugins.action.runtime_package"
)


def _pyenv_root():
    try:
        return subprocess.run(
            ["pyenv", "root"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return os.path.expanduser("~/.pyenv")


def interpreters():
    chosen = os.environ.get("XENCHANNEL_PYTHONS")
    if chosen:
        return [pytest.param(path, id=os.path.basename(path)) for path in chosen.split(",")]
    root = _pyenv_root()
    params = []
    for version in GUEST_VERSIONS:
        found = sorted(
            glob.glob(os.path.join(root, "versions", version + ".*", "bin", "python" + version))
        )
        params.append(
            pytest.param(found[-1] if found else "missing:" + version, id="python" + version)
        )
    return params


@pytest.fixture(scope="module")
def installed(action_module, tmp_path_factory):
    """A site directory holding the guest component as the guest role installs it."""
    site = tmp_path_factory.mktemp("guest-site")
    package = action_module.pack(["guest"])
    with tarfile.open(fileobj=io.BytesIO(package.data), mode="r:gz") as tar:
        tar.extractall(str(site / "xenchannel"))
    names = sorted(package.manifest)
    # What the role installs, and what the roles' tests assert, are the same files.
    assert [n for n in names if n.endswith(".py") and not n.endswith("__main__.py")]
    assert not [n for n in names if n.startswith("dom0/")], names
    return str(site)


def _sources(site):
    """The installed package's .py files, relative to it, with / separators."""
    top = os.path.join(site, "xenchannel")
    return [
        os.path.relpath(os.path.join(base, name), top).replace(os.sep, "/")
        for base, _dirs, files in os.walk(top)
        for name in files
        if name.endswith(".py")
    ]


def guest_env(site):
    """The environment of a guest's interpreter: only the installed package added."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env["PYTHONPATH"] = site
    return env


def on_guest(site, *argv):
    """Run ``argv`` as on a guest with ``site`` installed; bounded, output captured.

    -S in ``argv`` keeps site-packages out (-I would drop PYTHONPATH too), so only the
    standard library and the installed package are importable.
    """
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=120, env=guest_env(site), check=False
    )


@pytest.fixture(scope="module")
def stack():
    s = Stack()
    s.start_agent()
    yield s
    s.close()


@pytest.mark.compat
@pytest.mark.parametrize("python", interpreters())
def test_guest_side_runs_on(python, installed, stack):
    if python.startswith("missing:"):
        pytest.fail(
            f"python{python[8:]} is not installed under pyenv ({_pyenv_root()}); install it "
            "or set XENCHANNEL_PYTHONS to the interpreters to test"
        )
    name = "vm-py" + os.path.basename(python).replace("python", "").replace(".", "")
    bundle = sample_bundle(name, user_data=bytes(range(256)) * 200)
    domain = stack.add_domain(name, bundle)
    sources = [
        os.path.join(installed, "xenchannel", *name.split("/"))
        for name in sorted(_sources(installed))
    ]
    compiled = on_guest(
        installed,
        python,
        "-m",
        "py_compile",
        *sources,
        *(os.path.join(REPO, f) for f in GUEST_FILES),
    )
    assert compiled.returncode == 0, compiled.stderr
    imported = on_guest(installed, python, "-S", "-c", IMPORT_ALL, *module_names("guest"))
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == os.path.join(installed, "xenchannel", "__init__.py")
    report_status = os.path.join(REPO, "datasource", "xenchannel-report-status")
    report = on_guest(installed, python, "-S", report_status, "--help")
    assert report.returncode == 0 and "usage:" in report.stdout, report.stderr
    out = on_guest(installed, python, "-S", os.path.join(HERE, "guest_roundtrip.py"), domain.link)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["sha256"] == bundle.digest()
    assert result["status_acked"] is True
    # report.py ran for real on this interpreter: this machine's hostname and interfaces.
    assert result["report"]["hostname"] == socket.gethostname()
    assert result["report"]["cloud_init"] == "done"
    assert isinstance(result["report"]["interfaces"], list)
    state = stack.wait_state(name, lambda s: s.get("status", {}).get("state") == "applied")
    assert delivered(state)


# The oldest Python ansible-core 2.19 runs modules on, so the oldest a template may have
# for the roles to prepare it; the runtime itself needs only GUEST_VERSIONS[0].
ROLES_VERSION = "3.8"


@pytest.mark.compat
@pytest.mark.parametrize("python", [p for p in interpreters() if p.id == "python" + ROLES_VERSION])
def test_the_guest_roles_own_module_runs_on_the_oldest_managed_python(python, tmp_path):
    """The guest role's runtime_package, on the template's Python 3.8, installs the guest set.

    The role's other tasks are ansible-core's own modules, which ansible-core supports on
    3.8; this one is the collection's.
    """
    if python.startswith("missing:"):
        pytest.fail(f"python{python[8:]} is not installed under pyenv ({_pyenv_root()})")
    dest = tmp_path / "site" / "xenchannel"
    with collection_tree("xenchannel-compat-roles-") as collections:
        run = run_tasks(
            collections,
            str(tmp_path),
            [
                {
                    "name": "install",
                    "xenchannel.provision.runtime_package": {
                        "dest": str(dest),
                        "components": ["guest"],
                        "owner": str(os.getuid()),
                        "group": str(os.getgid()),
                    },
                },
                # Runs on the same interpreter, and says which one that is.
                {"name": "interpreter", "ansible.builtin.setup": {"gather_subset": ["!all"]}},
            ],
            "-e",
            f"ansible_python_interpreter={python}",
            env=playbook_env(collections, str(tmp_path)),
        )
        results = saved_results(run, str(tmp_path))
    assert results["install"]["changed"] is True
    assert "guest/agent.py" in results["install"]["installed"]
    assert not (dest / "dom0").exists() and (dest / "guest" / "agent.py").is_file()
    facts = results["interpreter"]["ansible_facts"]
    assert facts["ansible_python_version"].startswith(ROLES_VERSION + "."), facts
