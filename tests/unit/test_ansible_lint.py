"""ansible-lint's production profile over the whole collection, offline.

The collection must sit at ansible_collections/<namespace>/<name>/ for ansible-lint to
resolve its own FQCNs, so it is linked into such a tree in a temporary directory.
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_ansible_lint_production_profile(tmp_path):
    tree = tmp_path / "ansible_collections" / "xenchannel"
    tree.mkdir(parents=True)
    (tree / "provision").symlink_to(ROOT)
    bindir = os.path.dirname(sys.executable)
    lint = os.path.join(bindir, "ansible-lint")
    assert os.path.exists(lint), f"{lint} is missing: run `make venv`"
    proc = subprocess.run(
        [lint, "--offline", "--profile", "production", "--nocolor"],
        cwd=tree / "provision",
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=dict(
            os.environ,
            ANSIBLE_COLLECTIONS_PATH=str(tmp_path),
            PATH=bindir + os.pathsep + os.environ.get("PATH", ""),
            NO_COLOR="1",
        ),
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr
