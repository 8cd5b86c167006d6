"""Make the collection importable as Ansible imports it, and provide Xen's parser as oracle.

Ansible loads module_utils as
`ansible_collections.xenchannel.provision.plugins.module_utils.<name>`. This conftest
builds that package path as a symlink tree in a temporary directory (never a file in the
repository) pointing at the repository root, and puts the directory on sys.path before
the test modules are imported.

The `xl_oracle` fixture is Debian bookworm's libxlutil (tests/oracle/libxlutil.py). When
it has not been fetched, every test that needs it FAILS with the command to fetch it:
a test that writes xl configs must not pass without Xen's parser having read the output.
"""

import atexit
import os
import sys
from typing import Any, Dict

import pytest

from testbed.ansible_run import make_collection_tree
from tests.oracle import libxlutil


def _collection_tree() -> str:
    top, remove = make_collection_tree(prefix="xenchannel-collections-")
    atexit.register(remove)
    return top


sys.path.insert(0, _collection_tree())

# ansible-test units runs pytest with its own configuration, not pyproject.toml's
# pythonpath; the modules' tests import the runtime as the modules do on dom0.
_RUNTIME = os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), *[".."] * 3, "runtime")
)
if _RUNTIME not in sys.path:
    sys.path.insert(0, _RUNTIME)


@pytest.fixture(scope="session")
def xl_oracle() -> Any:
    """The loaded libxlutil oracle; fails (never skips) when it has not been fetched."""
    try:
        libxlutil.load()
    except libxlutil.OracleMissing as exc:
        message = str(exc)
    else:
        return libxlutil
    pytest.fail(message, pytrace=False)


@pytest.fixture
def xl_means(xl_oracle: Any) -> Any:
    """`xl_means(text, expected)`: assert Xen's parser reads `text` as `expected`."""
    return _xl_means


def _xl_means(text: str, expected: Dict[str, Any]) -> None:
    """Assert Xen's own parser reads `text` as exactly the settings in `expected`.

    `expected` maps names to what XlConfig.get returns: ints are checked through
    xlu_cfg_get_long, strings through xlu_cfg_get_string, lists item by item (an int
    item must be a string strtol reads as that int).
    """
    seen = libxlutil.parse(text)
    assert set(seen.values) == set(expected), (sorted(seen.values), sorted(expected), text)
    for key, want in expected.items():
        got = seen.values[key]
        if isinstance(want, int):
            assert seen.longs.get(key) == want, (key, got, want, text)
        else:
            assert _same(got, want), (key, got, want, text)


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, list):
        return (
            isinstance(got, list)
            and len(got) == len(want)
            and all(_same(g, w) for g, w in zip(got, want))
        )
    if isinstance(want, int):
        return isinstance(got, str) and libxlutil.strtol0(got) == want
    return got == want
