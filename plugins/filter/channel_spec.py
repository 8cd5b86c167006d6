# Copyright (c) xenchannel contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filters between xl channel specs and dicts (channel_spec, parse_channel_spec), and
the channel-name rule for roles (channel_name_problem).

All are thin wrappers of module_utils: channel_spec.py (format_spec, parse_spec and
validate_channel), so they read and write specs exactly as the xl_channel module does,
and channel_name.py, the one channel-name rule the modules, the guest's udev helper, the
in-guest agent's role and the datasource share. Their documentation is in
channel_spec.yml, parse_channel_spec.yml and channel_name_problem.yml next to this file.
"""

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError
from ansible_collections.xenchannel.provision.plugins.module_utils.channel_name import (
    channel_name_problem as _problem,
)
from ansible_collections.xenchannel.provision.plugins.module_utils.channel_spec import (
    ChannelSpecError,
    format_spec,
    parse_spec,
    validate_channel,
)


def _validate(channel, socket_dir):
    if socket_dir is None:
        return
    try:
        problems = validate_channel(channel, socket_dir)
    except ValueError as exc:
        raise AnsibleFilterError(str(exc)) from None
    if problems:
        raise AnsibleFilterError(" ".join(problems))


def channel_spec(channel, socket_dir=None):
    """A channel dict as xl spec text (connection, name, path, backend).

    With `socket_dir`, the channel must also pass every rule of xl_channel.
    """
    if not isinstance(channel, Mapping):
        raise AnsibleFilterError(
            f"channel_spec needs a dict with connection, name, path and backend, not "
            f"{type(channel).__name__}"
        )
    channel = {str(key): value for key, value in channel.items() if value is not None}
    try:
        spec = format_spec(channel)
    except ChannelSpecError as exc:
        raise AnsibleFilterError(str(exc)) from None
    _validate(channel, socket_dir)
    return spec


def parse_channel_spec(spec, socket_dir=None):
    """An xl channel spec string as a dict, read as xl reads it.

    With `socket_dir`, the channel must also pass every rule of xl_channel.
    """
    if not isinstance(spec, str):
        raise AnsibleFilterError(
            f"parse_channel_spec needs a string such as 'connection=pty, name=org.example.app.0',"
            f" not {type(spec).__name__}"
        )
    try:
        channel = parse_spec(str(spec))
    except ChannelSpecError as exc:
        raise AnsibleFilterError(str(exc)) from None
    _validate(channel, socket_dir)
    return channel


def channel_name_problem(name, what="channel name"):
    """ "" for a channel name; else one sentence: `what`, the name, what is wrong, the fix."""
    problem = _problem(name)
    return "" if problem is None else f"{what} {name!r} {problem}."


class FilterModule:
    def filters(self):
        return {
            "channel_spec": channel_spec,
            "parse_channel_spec": parse_channel_spec,
            "channel_name_problem": channel_name_problem,
        }
