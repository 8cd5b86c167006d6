"""Run tests/datasource/inner/ once per cloud-init version, each in its own process
(one process can import only one cloud-init): Debian's real packages, and the upstream
releases installed with the requirements they declare (testbed/cloud_init_trees.py)."""

import os
import subprocess
import sys

import pytest

from testbed.cloud_init_trees import REPO, VERSIONS, python_path


@pytest.mark.parametrize("version", VERSIONS)
def test_datasource_on_real_cloud_init(version: str) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.join(REPO, "runtime"), os.path.join(REPO, "datasource"), *python_path(version)]
    )
    env["XENCHANNEL_CLOUD_INIT_VERSION"] = version
    env["XENCHANNEL_CLOUD_INIT_DEPS"] = os.pathsep.join(python_path(version)[1:])
    result = subprocess.run(  # noqa: PLW1510 - the return code is asserted
        [sys.executable, "-m", "pytest", "tests/datasource/inner/", "-q", "-p", "no:cacheprovider"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"inner tests failed on cloud-init {version}:\n{result.stdout}"
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout
