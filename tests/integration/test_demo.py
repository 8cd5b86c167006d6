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
    lines = [line.split() for line in run.stdout.splitlines()]
    assert ["hostname", "web-01"] in lines, output
    assert ["cloud-init", "status", "done"] in lines, output
    assert ["cloud-init", "query", "v1.platform", "xen"] in lines, output
    assert ["cloud-init", "datasource", "DataSourceXenChannel"] in lines, output
    assert any(line[:4] == ["authorized", "key", "(debian)", "ssh-ed25519"] for line in lines)
    assert "Address=192.0.2.10/24" in run.stdout, output
    assert ["/etc/motd", "(user-data)", "provisioned", "over", "a", "Xen", "channel"] in lines
    status = [line for line in lines if line[:1] == ["web-01"]]
    assert status and status[-1][1:5] == ["yes", "v1", "yes", "applied"], output
