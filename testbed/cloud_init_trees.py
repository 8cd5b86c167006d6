"""Where `make system` put each cloud-init version the datasource is tested on.

22.4 and 25.1 are Debian's packages (tests/setup-cloud-init.sh: ``dpkg -x`` into
``root/``); 23.4, 24.4 and 26.2 are upstream releases installed into ``root/`` by their
own build systems, with their declared requirements in ``deps/``, and ``layout.json``
saying where things landed (tests/setup-cloud-init-upstream.py).
"""

import json
import os
from typing import Any, Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(REPO, ".cache", "cloud-init")
# Debian 12, RHEL 9, RHEL 10, Debian 13, Ubuntu / the newest release.
VERSIONS = ("22.4", "23.4", "24.4", "25.1", "26.2")
DEBIAN = ("22.4", "25.1")
# The versions ahead of which something a datasource depends on changed (docs/datasource.md
# has the table); tests too slow to run on all of them run on these.
EDGES = ("22.4", "24.4", "26.2")
# Debian's packages, as dpkg -x leaves them.
DEBIAN_LAYOUT = {
    "python": "usr/lib/python3/dist-packages",
    "ds_identify": "usr/lib/cloud-init/ds-identify",
}


def _setup_hint(version: str, missing: str) -> AssertionError:
    script = "tests/setup-cloud-init" + (".sh" if version in DEBIAN else "-upstream.py")
    return AssertionError(
        f"cloud-init {version} is not installed ({missing} is missing): "
        f"run `make system` (or {script})"
    )


def layout(version: str) -> Dict[str, Any]:
    """Relative paths under tree(version): python, generator, ds_identify."""
    if version in DEBIAN:
        return dict(DEBIAN_LAYOUT)
    path = os.path.join(CACHE, version, "layout.json")
    if not os.path.isfile(path):
        raise _setup_hint(version, path)
    with open(path) as handle:
        found: Dict[str, Any] = json.load(handle)
    return found


def tree(version: str) -> str:
    """The installed root; a missing tree is a failure saying what to run."""
    root = os.path.join(CACHE, version, "root")
    marker = os.path.join(root, layout(version)["python"], "cloudinit")
    if not os.path.isdir(marker):
        raise _setup_hint(version, marker)
    return root


def dist_packages(version: str) -> str:
    """The directory holding this version's ``cloudinit`` package."""
    return os.path.join(tree(version), layout(version)["python"])


def python_path(version: str) -> List[str]:
    """What goes on PYTHONPATH to import this version: cloudinit, then the requirements
    it declares (upstream releases; Debian's use the venv's requirements/cloud-init.txt)."""
    paths = [dist_packages(version)]
    deps = os.path.join(CACHE, version, "deps")
    if version not in DEBIAN:
        paths.append(deps)
    return paths


def ds_identify(version: str) -> str:
    """The ds-identify this version's own systemd generator runs."""
    return os.path.join(tree(version), layout(version)["ds_identify"])


def generator(version: str) -> str:
    """This version's systemd generator (bookworm's package has it under /lib)."""
    root = tree(version)
    candidates = [layout(version).get("generator", "")] + [
        f"{lib}/systemd/system-generators/cloud-init-generator" for lib in ("usr/lib", "lib")
    ]
    found = [os.path.join(root, c) for c in candidates if c]
    found = [path for path in found if os.path.isfile(path)]
    if not found:
        raise _setup_hint(version, os.path.join(root, candidates[-1]))
    return found[0]
