"""ansible-lint's production profile over the whole collection, offline.

The collection must sit at ansible_collections/<namespace>/<name>/ for ansible-lint to
resolve its own FQCNs, so it is linked into such a tree in a temporary directory.
"""

import os
import subprocess
import sys

from testbed.ansible_run import collection_tree


def test_ansible_lint_production_profile():
    with collection_tree(prefix="xc-lint-") as collections:
        _lint(collections)


def _lint(collections):
    bindir = os.path.dirname(sys.executable)
    lint = os.path.join(bindir, "ansible-lint")
    assert os.path.exists(lint), f"{lint} is missing: run `make venv`"
    proc = subprocess.run(
        [lint, "--offline", "--profile", "production", "--nocolor"],
        cwd=os.path.join(collections, "ansible_collections", "xenchannel", "provision"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=dict(
            os.environ,
            ANSIBLE_COLLECTIONS_PATH=collections,
            PATH=bindir + os.pathsep + os.environ.get("PATH", ""),
            NO_COLOR="1",
        ),
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr
