"""The README's first command keeps working: `make demo` runs `python -m demo`.

The demo is the whole flow (template, dom0, a clone's cloud-init boot over the channel
simulator) through the collection's own playbooks and roles; this runs it as a user
would, from wherever this checkout is (CI clones into /tmp), and checks what it says the
clone ended up with. tests/pristine runs it again on a machine with only what the README
lists, from a clone in a home directory with a space in its path.
"""

import os
import subprocess
import sys

import pytest

from tests.integration.demo_result import assert_demo_result

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.timeout(1500)
def test_demo_provisions_a_clone_end_to_end() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "demo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1400,
        check=False,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-8000:]
    assert_demo_result(run.stdout + "\n" + run.stderr[-2000:])
