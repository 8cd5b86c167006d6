"""The collection tarball holds exactly what docs/architecture.md lists, and no cache.

docs/architecture.md promises that runtime/xenchannel travels inside the collection so
the roles install exactly the version that drives them, and lists every entry the
tarball holds. This builds the real tarball with ansible-galaxy (from the pinned
ansible-core) and checks both against that table.
"""

import os
import re
import tarfile
from typing import List

from testbed.ansible_run import build_collection

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARCHITECTURE = os.path.join(ROOT, "docs", "architecture.md")
HEADING = "### What the collection tarball holds"
RUNTIME_FILES = (
    "runtime/xenchannel/protocol.py",
    "runtime/xenchannel/session.py",
    "runtime/xenchannel/guest/client.py",
    "runtime/xenchannel/guest/device.py",
    "runtime/xenchannel/dom0/agent.py",
    "runtime/xenchannel/dom0/store.py",
    "runtime/systemd/xenchannel-guest-agent.service",
    "runtime/udev/90-xenchannel.rules",
    "datasource/DataSourceXenChannel.py",
    "docs/protocol.md",
    "meta/runtime.yml",
    "tests/sanity/ignore-2.19.txt",
)


def documented_entries() -> List[str]:
    """The first column of the table under HEADING: a file, or a directory ending in /."""
    with open(ARCHITECTURE) as handle:
        text = handle.read()
    assert HEADING in text, f"{ARCHITECTURE} has no section {HEADING!r}"
    section = text.split(HEADING, 1)[1].split("\n#", 1)[0]
    entries = re.findall(r"^\| `([^`]+)` \|", section, flags=re.M)
    assert len(entries) > 5, section
    return entries


def test_the_documented_table_is_well_formed() -> None:
    entries = documented_entries()
    assert len(entries) == len(set(entries))
    for entry in entries:
        assert not entry.startswith("/") and ".." not in entry.split("/"), entry


def test_built_collection_holds_exactly_what_the_docs_list(tmp_path) -> None:
    tarball = build_collection(str(tmp_path))
    with tarfile.open(tarball) as archive:
        members = archive.getmembers()
        manifest = archive.extractfile("MANIFEST.json")
        assert manifest is not None
        assert b'"namespace": "xenchannel"' in manifest.read()
    files = sorted(m.name for m in members if not m.isdir())
    entries = documented_entries()

    def listed(name: str) -> bool:
        return any(name == e or (e.endswith("/") and name.startswith(e)) for e in entries)

    unlisted = [name for name in files if not listed(name)]
    assert not unlisted, (
        f"the tarball holds files {ARCHITECTURE} does not list under {HEADING!r}: "
        f"{unlisted[:10]}; add them to build_ignore in galaxy.yml, or to the table"
    )
    empty = [e for e in entries if not any(n == e or n.startswith(e) for n in files)]
    assert not empty, f"listed in {ARCHITECTURE} but not in the tarball: {empty}"
    caches = [
        name
        for name in files
        if "__pycache__" in name.split("/") or name.endswith((".pyc", ".pyo"))
    ]
    assert not caches, caches[:10]
    # The upstream cloud-init tarballs are test fixtures (about 5 MB): never shipped.
    fixtures = [name for name in files if name.startswith("tests/fixtures/")]
    assert not fixtures, fixtures[:10]
    missing = [name for name in RUNTIME_FILES if name not in files]
    assert not missing, missing
