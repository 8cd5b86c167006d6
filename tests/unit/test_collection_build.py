"""The collection tarball ships the runtime the roles install, and nothing from a dev tree.

docs/architecture.md promises that runtime/xenchannel travels inside the collection so
the roles install exactly the version that drives them; this builds the real tarball with
ansible-galaxy (from the pinned ansible-core) and checks that promise.
"""

import os
import tarfile

from testbed.ansible_run import build_collection

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNTIME_FILES = (
    "runtime/xenchannel/protocol.py",
    "runtime/xenchannel/guest/client.py",
    "runtime/xenchannel/guest/device.py",
    "runtime/xenchannel/dom0/agent.py",
    "runtime/xenchannel/dom0/store.py",
    "docs/protocol.md",
    "meta/runtime.yml",
)


def test_built_collection_ships_the_runtime_and_no_dev_clutter(tmp_path):
    tarball = build_collection(str(tmp_path))
    with tarfile.open(tarball) as archive:
        names = set(archive.getnames())
        manifest = archive.extractfile("MANIFEST.json")
        assert manifest is not None
        assert b'"namespace": "xenchannel"' in manifest.read()
    missing = [name for name in RUNTIME_FILES if name not in names]
    assert not missing, missing
    clutter = [
        name
        for name in names
        if name.startswith(
            (".venv", ".git", ".ci", ".cache", ".pytest_cache", ".mypy_cache", ".hypothesis")
        )
        or "__pycache__" in name
        or name.startswith(("benchmarks/results", "testbed"))
    ]
    assert not clutter, clutter[:10]
