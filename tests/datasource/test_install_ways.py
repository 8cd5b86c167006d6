"""Both ways cloud-init finds an out-of-tree datasource, with each tested cloud-init.

docs/datasource.md documents two installs: the module copied into ``cloudinit/sources/``,
or a package named in ``datasource_pkg_list``.  Each is checked here with cloud-init's own
discovery (``sources.list_sources``, what ``cloud-init init --local`` calls), in a fresh
interpreter per version, against a throwaway copy of the extracted ``cloudinit`` package so
the cached tree is never modified.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.cloud_init_trees import REPO, VERSIONS, dist_packages, python_path

MODULE = os.path.join(REPO, "datasource", "DataSourceXenChannel.py")
RUNTIME = os.path.join(REPO, "runtime")

DISCOVER = """
import sys
from cloudinit import sources
found = sources.list_sources(["XenChannel"], (sources.DEP_FILESYSTEM,), sys.argv[1:])
print(",".join(cls.__module__ + "." + cls.__name__ + ":" + cls.dsname for cls in found))
local_only = sources.list_sources(
    ["XenChannel"], (sources.DEP_FILESYSTEM, sources.DEP_NETWORK), sys.argv[1:]
)
print(len(local_only))
"""


def discover(pythonpath: str, *pkg_list: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", DISCOVER, *pkg_list],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=dict(os.environ, PYTHONPATH=pythonpath),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.parametrize("version", VERSIONS)
def test_module_copied_into_cloudinit_sources(version: str, tmp_path: Path) -> None:
    copy = tmp_path / "site"
    shutil.copytree(os.path.join(dist_packages(version), "cloudinit"), copy / "cloudinit")
    shutil.copy(MODULE, copy / "cloudinit" / "sources" / "DataSourceXenChannel.py")
    out = discover(
        os.pathsep.join([str(copy), *python_path(version)[1:], RUNTIME]), "cloudinit.sources"
    )
    found, network_stage = out.split("\n")[:2]
    assert found == "cloudinit.sources.DataSourceXenChannel.DataSourceXenChannel:XenChannel"
    # Registered for the local stage only: the network stage's dependency set finds nothing.
    assert network_stage == "0"


@pytest.mark.parametrize("version", VERSIONS)
def test_module_through_datasource_pkg_list(version: str, tmp_path: Path) -> None:
    package = tmp_path / "pkg" / "xenchannel_datasource"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    shutil.copy(MODULE, package / "DataSourceXenChannel.py")
    pythonpath = os.pathsep.join([str(tmp_path / "pkg"), *python_path(version), RUNTIME])
    out = discover(pythonpath, "cloudinit.sources", "xenchannel_datasource")
    found, network_stage = out.split("\n")[:2]
    assert found == "xenchannel_datasource.DataSourceXenChannel.DataSourceXenChannel:XenChannel"
    assert network_stage == "0"
    # And without the package named, cloud-init does not find it: the list is what loads it.
    assert discover(pythonpath, "cloudinit.sources").split("\n")[0] == ""
