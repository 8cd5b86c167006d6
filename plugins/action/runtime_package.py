# Copyright (c) xenchannel contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Action plugin of xenchannel.provision.runtime_package: pack the runtime, send it once.

The collection ships its runtime package in ``runtime/xenchannel`` (galaxy.yml does not
exclude it). This plugin finds it relative to its own file, packs the files of the
components the task names (module_utils/runtime_package.py says which files each has) into
one deterministic .tar.gz with a manifest of each file's SHA-256, transfers the archive to
the host's temporary directory and runs the module, which installs what differs. One
transfer and one module run replace a copy task per file.
"""

import gzip
import hashlib
import io
import os
import tarfile

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible_collections.xenchannel.provision.plugins.module_utils.runtime_package import (
    PACKAGE,
    PackageError,
    check_components,
    in_components,
    is_cache,
    required_files,
)

MODULE = "xenchannel.provision.runtime_package"
# <collection>/plugins/action/runtime_package.py -> <collection>/runtime/xenchannel
RUNTIME_SOURCE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "runtime",
    PACKAGE,
)
ARCHIVE_NAME = "xenchannel-runtime.tar.gz"


class Package:
    """The packed runtime: the .tar.gz bytes and the manifest (relative name -> SHA-256)."""

    def __init__(self, data, manifest):
        self.data = data
        self.manifest = manifest


def package_files(source):
    """The package's files, relative to ``source`` with / separators, sorted."""
    found = []
    for top, dirs, files in os.walk(source):
        dirs[:] = [name for name in dirs if not is_cache(name)]
        for name in files:
            relative = os.path.relpath(os.path.join(top, name), source).replace(os.sep, "/")
            if not is_cache(relative):
                found.append(relative)
    return sorted(found)


def pack(components, source=RUNTIME_SOURCE):
    """Pack the files of ``components`` in ``source``; the same files give the same bytes.

    Names are sorted and every header has the same mtime, owner and mode, and the gzip
    header has no name or time, so only the files' names and contents matter.
    """
    components = check_components(components)
    files = package_files(source) if os.path.isdir(source) else []
    missing = [name for name in required_files(components) if name not in files]
    files = [name for name in files if in_components(name, components)]
    if missing:
        absent = os.path.join(source, missing[0]) if files else source
        raise AnsibleActionFail(
            f"the xenchannel.provision collection at {os.path.dirname(os.path.dirname(source))} "
            f"has no complete runtime package ({absent} is missing); "
            "reinstall the collection from its tarball, which ships runtime/"
        )
    manifest = {}
    buffer = io.BytesIO()
    compressed = gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0)
    with compressed, tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for relative in files:
            with open(os.path.join(source, relative), "rb") as handle:
                data = handle.read()
            manifest[relative] = hashlib.sha256(data).hexdigest()
            info = tarfile.TarInfo(relative)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return Package(buffer.getvalue(), manifest)


class ActionModule(ActionBase):
    TRANSFERS_FILES = True
    # src and manifest are the plugin's to fill in.
    _VALID_ARGS = frozenset(("dest", "components", "owner", "group", "mode", "directory_mode"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp  # unused since ansible-core 2.10
        try:
            try:
                package = pack(self._task.args.get("components"))
            except PackageError as exc:
                raise AnsibleActionFail(str(exc)) from None
            module_args = dict(self._task.args, manifest=package.manifest)
            # Check mode compares with the manifest only: nothing to send.
            if not self._task.check_mode:
                shell = self._connection._shell
                remote = shell.join_path(shell.tmpdir, ARCHIVE_NAME)
                self._transfer_data(remote, package.data)
                self._fixup_perms2((shell.tmpdir, remote))
                module_args["src"] = remote
            result.update(
                self._execute_module(
                    module_name=MODULE, module_args=module_args, task_vars=task_vars
                )
            )
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result
