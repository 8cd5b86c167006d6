# Copyright (c) xenchannel contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one rule for a domain's name as xenchannel uses it on dom0.

One name keys a domain everywhere on dom0: its store entry (``<store>/<name>/``), its state
record (``<state>/<name>.json``), its channel socket (``<socket root>/<name>.sock``), its
xl config. The dom0 agent, the ``xl_channel``, ``xl_domain_config`` and
``channel_metadata`` modules, the ``domain`` role and the ``channel_socket`` lookup all
judge a name here, so a VM one of them accepts is never one another refuses.

A domain name is 1 to 64 ASCII letters, digits, ``_``, ``.`` and ``-``, starting with a
letter or digit, without ``..``. Why: it becomes a file name in three directories, so no
``/``, no hidden names, no ``..``; xl itself allows more, and 64 leaves a socket path
within the 107 bytes of ``sun_path``.

This module is shared as it is: ``plugins/module_utils/domain_name.py`` is a symbolic
link to it, so the Ansible plugins carry the same file to dom0 and the controller.
Standard library only; Python 3.6 and later.
"""

import re
from typing import Any, Optional

__all__ = ["DOMAIN_NAME_RULE", "MAX_DOMAIN_NAME", "domain_name_problem", "valid_domain_name"]

MAX_DOMAIN_NAME = 64
# \Z, not $: $ also matches before a trailing newline, and "vm1\n" is no domain name.
_DOMAIN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
# What a user is told to write, in every sentence that refuses a name.
DOMAIN_NAME_RULE = (
    "use 1 to 64 letters, digits, '_', '.' and '-', starting with a letter or digit and "
    "without '..'"
)


def valid_domain_name(name: Any) -> bool:
    """Whether ``name`` is a domain name xenchannel accepts."""
    return isinstance(name, str) and bool(_DOMAIN_NAME_RE.match(name)) and ".." not in name


def domain_name_problem(name: Any, what: str = "domain name") -> Optional[str]:
    """None for a valid name, else the sentence that names it and the fix."""
    if valid_domain_name(name):
        return None
    return f"{what} {name!r} is not valid; {DOMAIN_NAME_RULE}"
