"""ansible-test's pylint bans some names (``_`` above all) and fails on an ignore entry
that is no longer needed: check both directions here, in seconds, instead of in the
sanity run minutes later."""

import ast
import os
import subprocess
from typing import List, Set

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IGNORES = os.path.join(ROOT, "tests", "sanity", "ignore-2.19.txt")
# The bad-names of ansible-test's collection.cfg (its configuration for pylint).
BAD_NAMES = {"_", "bar", "baz", "foo", "tata", "toto", "tutu"}
CHECK = "pylint:disallowed-name"


def python_files() -> List[str]:
    """What ansible-test's sanity sees: tracked and untracked-but-not-ignored files."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    return sorted(p for p in listed if os.path.exists(os.path.join(ROOT, p)))


def bad_names(source: str) -> Set[str]:
    """The banned names a file binds (assignments, loop targets, arguments)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            name = node.id
        elif isinstance(node, ast.arg):
            name = node.arg
        else:
            continue
        if name in BAD_NAMES:
            found.add(name)
    return found


def ignored() -> Set[str]:
    with open(IGNORES) as handle:
        return {line.split()[0] for line in handle if CHECK in line.split()[1:2]}


def test_files_that_bind_a_banned_name_are_exactly_those_with_an_ignore_entry() -> None:
    binding = set()
    for path in python_files():
        with open(os.path.join(ROOT, path), encoding="utf-8") as handle:
            if bad_names(handle.read()):
                binding.add(path)
    entries = ignored()
    assert not binding - entries, (
        f"these files bind a name ansible-test's pylint bans ({', '.join(sorted(BAD_NAMES))}): "
        f"rename it, or add '<file> {CHECK} # why' to {IGNORES}: {sorted(binding - entries)}"
    )
    assert not entries - binding, (
        f"ansible-test fails on these {CHECK} entries, which are no longer needed: "
        f"remove them from {IGNORES}: {sorted(entries - binding)}"
    )


def test_the_check_sees_loop_targets_tuples_and_arguments() -> None:
    assert bad_names("for _ in range(3): pass") == {"_"}
    assert bad_names("[x for _, x in pairs]") == {"_"}
    assert bad_names("def f(foo): pass") == {"foo"}
    assert bad_names("for _name, x in pairs: pass\nprint(_)") == set()
