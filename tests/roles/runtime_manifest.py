"""The runtime files each role must install, relative to the package directory.

Written out here from the repository's tree, not taken from the collection's own
component table (plugins/module_utils/runtime_package.py), so that a change there that
would put dom0 code on guests, or guest code on dom0, fails the roles' tests.
"""

from pathlib import Path
from typing import List

RUNTIME = Path(__file__).resolve().parents[2] / "runtime" / "xenchannel"
# The top-level entries of runtime/xenchannel each kind of host runs.
TOPS = {
    "guest": ("__init__.py", "protocol.py", "session.py", "inotify.py", "channel_name.py", "guest"),
    "dom0": (
        "__init__.py",
        "protocol.py",
        "session.py",
        "inotify.py",
        "channel_name.py",
        "domain_name.py",
        "dom0",
    ),
}


def runtime_files(component: str) -> List[str]:
    """The package files of ``component``: its tops, and everything under them."""
    files = sorted(
        str(p.relative_to(RUNTIME))
        for p in RUNTIME.rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and p.suffix not in (".pyc", ".pyo")
        and p.relative_to(RUNTIME).parts[0] in TOPS[component]
    )
    # The component's own agent, and never the other host's code.
    assert f"{component}/agent.py" in files, files
    other = "dom0" if component == "guest" else "guest"
    assert not [name for name in files if name.startswith(other + "/")], files
    return files


def module_names(component: str) -> List[str]:
    """The importable modules of ``component``, such as ``xenchannel.guest.apply.files``."""
    names = []
    for name in runtime_files(component):
        if name.endswith(".py") and not name.endswith("__main__.py"):
            dotted = name[: -len(".py")].replace("/", ".")
            names.append("xenchannel" + ("" if dotted == "__init__" else "." + dotted))
    return [name[: -len(".__init__")] if name.endswith(".__init__") else name for name in names]


# Imports each module named after it, and prints where the package came from.
IMPORT_ALL = (
    "import importlib, sys\n"
    "for name in sys.argv[1:]:\n"
    "    importlib.import_module(name)\n"
    "print(sys.modules['xenchannel'].__file__)"
)
