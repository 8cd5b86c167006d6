# Copyright (c) xenchannel contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one rule for a channel's name, which every party that names or opens a channel uses.

dom0 writes the name into a domain's xl config (``xl_channel``, ``xl_domain_config``,
the ``domain`` role), Xen copies it into xenstore, the guest's udev helper links
``/dev/xen-channel/<name>`` from it, and the guest role, the in-guest agent's settings
and the datasource open that link. A name one of them accepts and another refuses is a
VM that boots and never gets its channel, so all of them ask this module. (The udev
helper is POSIX sh and cannot import it: ``tests/integration/test_udev_setup.py`` runs
the real script on every class of input and checks that it decides as this module does.)

A channel name is a versioned reverse domain name of at most 128 characters:

* two or more labels of lower-case letters, digits, ``-`` and ``_``, each starting and
  ending with a letter or digit, the first starting with a letter; then
* a version label: a decimal number without leading zeros;
* separated by single dots.

``org.xenchannel.provision.0``, ``org.qemu.guest_agent.0`` (libvirt's) and
``org.xenproject.guest.clipboard.0.1`` (Xen's registry) are names; ``agent.0``,
``org.example``, ``Org.Example.0`` and ``org.example.v1`` are not. Why: names share one
global name space, which Xen's docs/misc/channel.txt asks to keep apart with a domain name;
the version label gives a new protocol a new name. The characters rule out ``/``, ``..``,
hidden names, blanks, shell syntax and non-ASCII, so the name is safe as a file name in
``/dev/xen-channel``; 128 is far beyond any real name and bounds what a guest accepts.

This module is shared as it is: ``plugins/module_utils/channel_name.py`` is a symbolic
link to it, so the Ansible modules and filters carry the same file to dom0 and the
controller. Standard library only; Python 3.6 and later.
"""

import re
from typing import Any, Optional

__all__ = [
    "DEFAULT_CHANNEL_NAME",
    "MAX_CHANNEL_NAME",
    "channel_name_problem",
    "valid_channel_name",
]

DEFAULT_CHANNEL_NAME = "org.xenchannel.provision.0"
MAX_CHANNEL_NAME = 128

_LABEL = r"[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?"
_NAME = re.compile(r"[a-z](?:[a-z0-9_-]*[a-z0-9])?(?:\." + _LABEL + r")+\.(?:0|[1-9][0-9]*)\Z")


def valid_channel_name(name: Any) -> bool:
    """Whether `name` is a channel name (see the module's docstring)."""
    return channel_name_problem(name) is None


def channel_name_problem(name: Any) -> Optional[str]:
    """None for a channel name, else what is wrong with it and the fix, as the end of a
    sentence that begins with the name: "... 'Foo.0', which <this>."."""
    if not isinstance(name, str):
        return "is not a string; give the name as a string, e.g. " + DEFAULT_CHANNEL_NAME
    if len(name) > MAX_CHANNEL_NAME:
        return (
            f"is {len(name)} characters long, over the {MAX_CHANNEL_NAME} a channel name may "
            "have (the guest would never link it); use a shorter name"
        )
    if _NAME.match(name) is None:
        return (
            "is not a versioned reverse domain name; use two or more lower-case labels and "
            "a numeric version, e.g. " + DEFAULT_CHANNEL_NAME
        )
    return None
