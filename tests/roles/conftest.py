"""Fixtures shared by the role tests."""

import shutil
from pathlib import Path

import pytest

from tests.roles.test_cloud_init_datasource_role import apt_install, cloud_init_deb
from tests.roles.test_guest_role import RoleBox


@pytest.fixture(scope="module", name="installed_base")
def _installed_base(tmp_path_factory) -> Path:
    """A sandbox base in which Debian's cloud-init 22.4 was installed by apt, for real."""
    base = tmp_path_factory.mktemp("cloud-init-installed") / "box"
    deb = cloud_init_deb()
    role = RoleBox(base, net=False)
    try:
        shutil.copy(deb, role.share)
        apt_install(role, "install", str(role.share / deb.name)).check()
    finally:
        role.close()
    return base
