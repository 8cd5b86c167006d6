"""Every `module.name` the test harness, the demo and the real-Xen tier write resolves.

mypy checks the product strictly, but these scripts are loaded by path (tests/e2e puts its
own directory on sys.path) and stay outside it; a name moved from one of them to another
then fails only in the slow tier that uses it, after a quarter of an hour. Importing each
script and resolving its `module.attribute` references finds that in a second."""

import ast
import importlib
import os
import sys
import types
from typing import Iterator, List, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
E2E = os.path.join(ROOT, "tests", "e2e")

# (module name as imported, its file)
SCRIPTS = [
    ("build", os.path.join(E2E, "build.py")),
    ("boot", os.path.join(E2E, "boot.py")),
    ("demo.machines", os.path.join(ROOT, "demo", "machines.py")),
    ("demo.__main__", os.path.join(ROOT, "demo", "__main__.py")),
    ("testbed.rootfs", os.path.join(ROOT, "testbed", "rootfs.py")),
    ("testbed.host_sandbox", os.path.join(ROOT, "testbed", "host_sandbox.py")),
    ("testbed.ansible_run", os.path.join(ROOT, "testbed", "ansible_run.py")),
]


def attribute_references(path: str) -> Iterator[Tuple[int, str, str]]:
    """(line, base name, attribute) for each `name.attribute` read in path."""
    with open(path) as source:
        tree = ast.parse(source.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            yield node.lineno, node.value.id, node.attr


def unresolved(module: types.ModuleType, path: str) -> List[str]:
    problems = []
    for line, base, attr in attribute_references(path):
        target = vars(module).get(base)
        if isinstance(target, types.ModuleType) and not hasattr(target, attr):
            problems.append(f"{os.path.relpath(path, ROOT)}:{line}: {base}.{attr}")
    return problems


@pytest.mark.parametrize("name,path", SCRIPTS, ids=[script[0] for script in SCRIPTS])
def test_each_module_attribute_a_script_reads_exists(name: str, path: str) -> None:
    if E2E not in sys.path:
        sys.path.insert(0, E2E)
    module = importlib.import_module(name)
    assert unresolved(module, path) == []


def test_the_check_finds_a_moved_name(tmp_path) -> None:
    script = tmp_path / "uses_os.py"
    script.write_text("import os\nos.path.join('a')\nos.no_such_thing\n")
    module = types.ModuleType("uses_os")
    module.os = os  # type: ignore[attr-defined]
    assert unresolved(module, str(script)) == [
        f"{os.path.relpath(str(script), ROOT)}:3: os.no_such_thing"
    ]
