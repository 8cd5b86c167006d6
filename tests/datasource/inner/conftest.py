"""Fixtures building the REAL cloud-init DataSource objects of the imported version."""

import os
import shutil
import tempfile

import DataSourceXenChannel as dsmod
import pytest
from cloudinit import distros, helpers

from testbed.stack import Stack

CHANNEL = dsmod.DEFAULT_CHANNEL


class Guest:
    """A fake guest root plus real cloud-init Paths and distro objects."""

    def __init__(self, base: str) -> None:
        self.root = os.path.join(base, "root")
        os.makedirs(self.root)
        self.paths = helpers.Paths(
            {"cloud_dir": os.path.join(base, "cloud"), "run_dir": os.path.join(base, "run")}
        )
        self.distro = distros.fetch("debian")("debian", {}, self.paths)

    def path(self, relative: str) -> str:
        return os.path.join(self.root, relative)

    def make_xen(self, uuid: str = "11111111-2222-3333-4444-555555555555") -> None:
        os.makedirs(self.path("sys/hypervisor"), exist_ok=True)
        with open(self.path("sys/hypervisor/type"), "w") as handle:
            handle.write("xen\n")
        with open(self.path("sys/hypervisor/uuid"), "w") as handle:
            handle.write(uuid + "\n")

    def link_channel(self, target: str, kind: str = "xen-channel", name: str = CHANNEL) -> str:
        link = self.path(f"dev/{kind}/{name}")
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(target, link)
        return link

    def datasource(self, **settings):
        settings.setdefault("root", self.root)
        sys_cfg = {"datasource": {"XenChannel": settings}}
        return dsmod.DataSourceXenChannel(sys_cfg, self.distro, self.paths)


@pytest.fixture
def guest():
    base = tempfile.mkdtemp(prefix="xc-ds-")
    try:
        yield Guest(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def stack():
    s = Stack()
    try:
        yield s
    finally:
        s.close()
