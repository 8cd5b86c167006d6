"""The guest side on every interpreter a guest may have: Python 3.6 to 3.13.

Each interpreter found under pyenv runs tests/compat/guest_roundtrip.py against a live
dom0 agent over the channel simulator.  A missing interpreter fails the test (CI is meant
to run all of them); set XENCHANNEL_PYTHONS to a comma-separated list of interpreter
paths to test a different set on purpose.
"""

import glob
import json
import os
import subprocess

import pytest

from testbed.stack import Stack, delivered, runtime_env, sample_bundle

GUEST_VERSIONS = ("3.6", "3.7", "3.8", "3.9", "3.10", "3.11", "3.12", "3.13")
HERE = os.path.dirname(os.path.abspath(__file__))
GUEST_MODULES = (
    "protocol.py",
    "guest/__init__.py",
    "guest/device.py",
    "guest/client.py",
    "guest/cli.py",
    "guest/agent.py",
    "guest/apply/__init__.py",
    "guest/apply/files.py",
    "guest/apply/hostname.py",
    "guest/apply/keys.py",
    "guest/apply/network.py",
    "guest/apply/script.py",
)
# Guest files outside the runtime package, relative to the repository root.
GUEST_FILES = ("datasource/DataSourceXenChannel.py", "datasource/xenchannel-report-status")


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
def stack():
    s = Stack()
    s.start_agent()
    yield s
    s.close()


@pytest.mark.compat
@pytest.mark.parametrize("python", interpreters())
def test_guest_side_runs_on(python, stack):
    if python.startswith("missing:"):
        pytest.fail(
            f"python{python[8:]} is not installed under pyenv ({_pyenv_root()}); install it "
            "or set XENCHANNEL_PYTHONS to the interpreters to test"
        )
    name = "vm-py" + os.path.basename(python).replace("python", "").replace(".", "")
    bundle = sample_bundle(name, user_data=bytes(range(256)) * 200)
    domain = stack.add_domain(name, bundle)
    runtime = runtime_env()["PYTHONPATH"].split(os.pathsep)[0]
    compiled = subprocess.run(
        [
            python,
            "-m",
            "py_compile",
            *(os.path.join(runtime, "xenchannel", m) for m in GUEST_MODULES),
            *(os.path.join(os.path.dirname(runtime), f) for f in GUEST_FILES),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert compiled.returncode == 0, compiled.stderr
    # -I would drop PYTHONPATH; -S keeps site-packages out so only the stdlib is there.
    out = subprocess.run(
        [python, "-S", os.path.join(HERE, "guest_roundtrip.py"), domain.link],
        capture_output=True,
        text=True,
        timeout=120,
        env=runtime_env(),
        check=False,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["sha256"] == bundle.digest()
    assert result["status_acked"] is True
    state = stack.wait_state(name, lambda s: s.get("status", {}).get("state") == "applied")
    assert delivered(state)
