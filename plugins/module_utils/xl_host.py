# Copyright (c) xenchannel contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the xl config modules do on dom0 itself: ask xl whether a domain runs, find the
file a config path stands for, and replace a config file atomically.

Shared by xl_channel and xl_domain_config so that both report `running` and
`restart_required` the same way and write files the same way.

Standard library and AnsibleModule only; runs on Python 3.8+ (Ansible module_utils on dom0).
"""

import os
import stat
import subprocess
import tempfile
from typing import Any, Optional, Union

__all__ = ["XL_TIMEOUT", "config_file", "domain_running", "write_atomic"]

XL_TIMEOUT = 10


def domain_running(module: Any, domain: Any) -> Union[bool, str]:
    """True, False, or "unknown" (no domain given, no xl, or xl failed, with a warning)."""
    if domain is None:
        return "unknown"
    xl = module.get_bin_path("xl")
    if xl is None:
        return "unknown"
    try:
        proc = subprocess.run(
            [xl, "list", domain],
            capture_output=True,
            text=True,
            timeout=XL_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        module.warn(f"xl list {domain} did not answer in {XL_TIMEOUT} s; running unknown")
        return "unknown"
    except OSError as exc:
        module.warn(f"cannot run {xl}: {exc}; running unknown")
        return "unknown"
    if proc.returncode == 0:
        return True
    if "invalid domain identifier" in proc.stderr:
        return False
    module.warn(
        f"xl list {domain} failed (rc {proc.returncode}: {proc.stderr.strip()[:200]}); "
        "running unknown"
    )
    return "unknown"


def _kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def config_file(module: Any, path: str, option: str = "path") -> Optional[str]:
    """The file that holds the xl config at `path`, or None when nothing is there.

    That is `path` itself, or the file its symbolic links lead to: an edit is written
    into that file and the links stay (as ansible.builtin.copy does with follow=true), so
    a link in /etc/xen to a config kept elsewhere is not replaced by a copy that leaves
    the real file stale. Fails the module, with one sentence naming `option`, the path
    and the fix, when `path` is a directory or anything but a regular file, or a link
    that leads to nothing or to something else.
    """
    if not os.path.lexists(path):
        return None
    link = os.path.islink(path)
    target = os.path.realpath(path)
    if link and not os.path.exists(path):
        module.fail_json(
            msg=(
                f"{option} {path} is a symbolic link to {os.readlink(path)}, which does not "
                "exist (or is a loop of links); point the link at the domain's config file, "
                f"or give {option} the config file itself"
            ),
            path=path,
        )
    mode = os.stat(target).st_mode
    if stat.S_ISDIR(mode):
        what = f"a symbolic link to the directory {target}" if link else "a directory"
        module.fail_json(
            msg=(
                f"{option} {path} is {what}, not an xl config file; give {option} the "
                f"config file itself, for example {os.path.join(target, 'web1.cfg')}"
            ),
            path=path,
        )
    if not stat.S_ISREG(mode):
        what = f"a symbolic link to {target}, which is {_kind(mode)}" if link else _kind(mode)
        module.fail_json(
            msg=(
                f"{option} {path} is {what}, not an xl config file; give {option} a regular "
                "file (or a symbolic link to one)"
            ),
            path=path,
        )
    return target


def write_atomic(module: Any, path: str, data: bytes) -> None:
    """Replace `path` with `data`: a temporary file in its directory, fsync, then
    `module.atomic_move` (which keeps an existing file's mode, owner and group).
    Fails the module with one sentence on an OSError."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    except OSError as exc:
        module.fail_json(msg=f"cannot write {path}: {exc}", path=path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        module.atomic_move(tmp, path)
    except OSError as exc:
        module.fail_json(msg=f"cannot write {path}: {exc}", path=path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
