"""Every molecule scenario under molecule/, run for real on local Debian containers.

Each scenario is one test: ``tests/molecule/run.sh <scenario>`` installs what is missing
(tests/molecule/setup.sh), starts a private Docker engine in its own namespaces, runs
``molecule test`` (syntax, check on a fresh container, converge, idempotence, verify) and
stops the engine. Scenarios are discovered from ``molecule/*/molecule.yml``, so a new one
is tested without touching this file. docs/molecule.md explains the parts.
"""

import os
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = os.path.join(ROOT, "tests", "molecule", "run.sh")
# A cold run builds two images (about a minute each) before the first scenario; warm
# scenarios take one to three minutes on a busy two-CPU machine.
SCENARIO_TIMEOUT = 1800


def _scenarios():
    base = os.path.join(ROOT, "molecule")
    return sorted(
        name
        for name in os.listdir(base)
        if os.path.isfile(os.path.join(base, name, "molecule.yml"))
    )


def test_scenarios_are_discovered():
    # A scenario folder whose molecule.yml is misnamed would silently drop out of the suite.
    base = os.path.join(ROOT, "molecule")
    folders = [
        name
        for name in os.listdir(base)
        if os.path.isdir(os.path.join(base, name)) and name != "resources"
    ]
    assert sorted(folders) == _scenarios(), (
        "every folder under molecule/ except resources/ must be a scenario with a molecule.yml"
    )
    assert _scenarios(), "molecule/ holds no scenario (molecule/<name>/molecule.yml)"


@pytest.mark.timeout(SCENARIO_TIMEOUT + 60)
@pytest.mark.parametrize("scenario", _scenarios())
def test_scenario(scenario):
    assert os.geteuid() == 0, (
        "the molecule scenarios need root (debootstrap, a private dockerd in its own "
        "namespaces); run the tests as root"
    )
    started = time.monotonic()
    proc = subprocess.run(
        ["sh", RUN, scenario],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=SCENARIO_TIMEOUT,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, (
        f"molecule test -s {scenario} failed after {elapsed:.0f}s "
        f"(rerun by hand: sh tests/molecule/run.sh {scenario}); its output ends with:\n"
        + proc.stdout[-12000:]
    )
    assert f"{scenario}: passed" in proc.stdout, proc.stdout[-4000:]
