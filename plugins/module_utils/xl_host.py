# Copyright (c) xenchannel contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the xl config modules do on dom0 itself: ask xl whether a domain runs, and
replace a config file atomically.

Shared by xl_channel and xl_domain_config so that both report `running` and
`restart_required` the same way and write files the same way.

Standard library and AnsibleModule only; runs on Python 3.8+ (Ansible module_utils on dom0).
"""

import os
import re
import subprocess
import tempfile
from typing import Any, Union

__all__ = ["XL_TIMEOUT", "domain_running", "valid_domain_name", "write_atomic"]

# The dom0 agent's domain names (runtime/xenchannel/dom0/store.py).
DOMAIN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
XL_TIMEOUT = 10


def valid_domain_name(name: Any) -> bool:
    """Whether `name` is a domain name the dom0 agent accepts."""
    return isinstance(name, str) and bool(DOMAIN_NAME_RE.match(name)) and ".." not in name


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
