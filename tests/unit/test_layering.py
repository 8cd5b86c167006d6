"""The product, the demo and the benchmarks never import the tests.

What they share with the tests lives in ``testbed/``; a module under ``tests/`` that the
demo or a benchmark needs belongs there instead.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
LAYERS = ("runtime", "plugins", "roles", "datasource", "demo", "benchmarks", "testbed")
PRODUCT = ("runtime", "plugins", "roles", "datasource")


def _imports(path: pathlib.Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.lineno, node.module


def _offenders(layers, forbidden):
    found = []
    for layer in layers:
        for path in sorted((ROOT / layer).rglob("*.py")):
            for lineno, name in _imports(path):
                if name.split(".")[0] in forbidden:
                    found.append(f"{path.relative_to(ROOT)}:{lineno} imports {name}")
    return found


@pytest.mark.parametrize("layer", LAYERS)
def test_no_layer_imports_the_tests(layer):
    assert _offenders([layer], {"tests"}) == []


@pytest.mark.parametrize("layer", PRODUCT)
def test_the_product_imports_no_development_tooling(layer):
    assert _offenders([layer], {"tests", "testbed", "demo", "benchmarks"}) == []
