# Copyright (c) xenchannel contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Xen PV channel specs: the strings of an xl config's `channel = [ ... ]` list.

Reading follows xl (tools/xl/xl_parse.c, parse_config_data): an item is split at commas,
empty pieces are skipped (strtok), each piece is split at its `=`, and C whitespace is
trimmed from both halves. xl knows the keys `backend`, `name`, `path` and `connection`
(`socket` or `pty`); it ignores other keys with a warning and exits on a piece without `=`.

The project's rules on top of xl.cfg(5), each violation reported as one sentence naming
the input and the fix:

* `name` is mandatory and is a channel name: a versioned reverse domain name of at most
  128 characters, the rule every party uses (`channel_name.py`, shared with the runtime);
* `connection` is mandatory: `socket` or `pty`;
* `path` is required for `socket` (and refused for `pty`, which ignores it): absolute, in
  normal form (so no `..`), strictly inside one of the allowed directories, at most 107
  bytes (a Unix socket path);
* `backend` is optional;
* no value is empty, has leading/trailing whitespace (xl strips it), a control character,
  or a `,` `=` or `"` (xl splits at `,` and `=`; xl.cfg(5) forbids all three);
* unknown keys and repeated keys are refused;
* in a list of channels, names are unique, paths are unique, and there are at most 9:
  Linux's hvc_xen takes a console's device id from the last character of its xenstore
  node, so only ids 1..9 work (0 is the main console).

Standard library only; runs on Python 3.8+ (Ansible module_utils on dom0).
"""

import posixpath
from typing import Dict, List, Mapping, Optional, Sequence, Union

from ansible_collections.xenchannel.provision.plugins.module_utils.channel_name import (
    channel_name_problem,
    valid_channel_name,
)

__all__ = [
    "CHANNEL_KEYS",
    "CONNECTIONS",
    "MAX_CHANNELS",
    "ChannelSpecError",
    "check_channels",
    "format_spec",
    "parse_spec",
    "valid_name",
    "validate_channel",
    "validate_channels",
]

# Canonical order of keys in a formatted spec.
CHANNEL_KEYS = ("connection", "name", "path", "backend")
CONNECTIONS = ("socket", "pty")
# hvc_xen: device ids 1..9 only.
MAX_CHANNELS = 9
# sizeof(sockaddr_un.sun_path) is 108, NUL included.
MAX_SOCKET_PATH = 107
FORBIDDEN = ',="'
C_SPACE = " \t\n\v\f\r"

Channel = Mapping[str, str]
ChannelInput = Union[str, Channel]


class ChannelSpecError(ValueError):
    """One or more channel spec problems, each a sentence naming the input and the fix."""

    def __init__(self, problems: Union[str, Sequence[str]]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__(" ".join(self.problems))


def valid_name(name: str) -> bool:
    """Whether `name` is a channel name: the project's one rule (`channel_name.py`)."""
    return valid_channel_name(name)


def parse_spec(spec: str) -> Dict[str, str]:
    """Split one channel spec into its keys and values, as xl does.

    Raises ChannelSpecError where xl would fail or be ambiguous: a piece without `=`,
    a second `=`, an empty key or value, a key given twice.
    """
    if not isinstance(spec, str):
        raise ChannelSpecError(f"channel spec {spec!r} is not a string; write KEY=VALUE, ...")
    result: Dict[str, str] = {}
    for piece in spec.split(","):
        if not piece:
            continue  # xl's strtok skips empty pieces
        if "=" not in piece:
            raise ChannelSpecError(
                f"channel spec {spec!r} has the piece {piece!r} without '=', which xl "
                "refuses; write KEY=VALUE pairs separated by commas."
            )
        key, value = piece.split("=", 1)
        key, value = key.strip(C_SPACE), value.strip(C_SPACE)
        if "=" in value:
            raise ChannelSpecError(
                f"channel spec {spec!r} has the piece {piece!r} with more than one '='; "
                "values cannot contain '=', so remove the extra one."
            )
        if not key:
            raise ChannelSpecError(
                f"channel spec {spec!r} has the piece {piece!r} with no key before '='; "
                "write KEY=VALUE."
            )
        if not value:
            raise ChannelSpecError(
                f"channel spec {spec!r} gives {key} an empty value; give it a value or "
                f"leave {key} out."
            )
        if key in result:
            raise ChannelSpecError(
                f"channel spec {spec!r} gives {key} twice; keep one {key}=... only."
            )
        result[key] = value
    return result


def _describe(channel: ChannelInput) -> str:
    if isinstance(channel, str):
        return repr(channel)
    return repr(", ".join(f"{key}={value}" for key, value in channel.items()))


def _value_problems(channel: Channel, desc: str) -> List[str]:
    problems = []
    for key, value in channel.items():
        if key not in CHANNEL_KEYS:
            problems.append(
                f"channel {desc} has the unknown key {key!r}, which xl would ignore; use "
                "only connection, name, path and backend."
            )
            continue
        if not isinstance(value, str):
            problems.append(
                f"channel {desc} has {key} of type {type(value).__name__}; give it as a string."
            )
            continue
        if not value:
            problems.append(f"channel {desc} has an empty {key}; give it a value or leave it out.")
            continue
        bad = sorted({c for c in value if c in FORBIDDEN})
        if bad:
            problems.append(
                f"channel {desc} has {key}={value!r}, which contains "
                + " and ".join(repr(c) for c in bad)
                + "; xl splits specs at ',' and '=' and xl.cfg(5) forbids '\"', so remove them."
            )
        elif any(ord(c) < 32 or ord(c) == 127 for c in value):
            problems.append(
                f"channel {desc} has {key}={value!r}, which contains a control character; "
                "remove it."
            )
        elif value.strip(C_SPACE) != value:
            problems.append(
                f"channel {desc} has {key}={value!r} with leading or trailing whitespace, "
                "which xl strips; remove it."
            )
    return problems


def format_spec(channel: Channel) -> str:
    """The channel as xl spec text, keys in canonical order: connection, name, path, backend.

    `parse_spec(format_spec(c)) == c` for every channel this accepts; raises
    ChannelSpecError for unknown keys and for values xl would split or alter.
    """
    desc = _describe(channel)
    problems = _value_problems(channel, desc)
    if problems:
        raise ChannelSpecError(problems)
    return ", ".join(f"{key}={channel[key]}" for key in CHANNEL_KEYS if key in channel)


def _dirs(allowed_dirs: Union[str, Sequence[str]]) -> List[str]:
    dirs = [allowed_dirs] if isinstance(allowed_dirs, str) else list(allowed_dirs)
    for d in dirs:
        if not d.startswith("/"):
            raise ValueError(f"allowed socket directory {d!r} must be an absolute path")
    return [posixpath.normpath(d) for d in dirs]


def _path_problems(path: str, desc: str, dirs: List[str]) -> List[str]:
    where = dirs[0] if len(dirs) == 1 else "one of " + ", ".join(dirs)
    if not path.startswith("/"):
        return [
            f"channel {desc} has the relative path {path!r}; use an absolute path inside {where}."
        ]
    parts = path.split("/")
    if ".." in parts:
        return [
            f"channel {desc} has the path {path!r}, which contains '..'; give the plain "
            f"absolute path inside {where}."
        ]
    normal = posixpath.normpath(path)
    if normal != path:
        return [
            f"channel {desc} has the path {path!r}, not in normal form; write it as {normal!r}."
        ]
    if not any(path != d and path.startswith(d.rstrip("/") + "/") for d in dirs):
        return [
            f"channel {desc} has the path {path!r}, outside {where}; put the socket inside {where}."
        ]
    size = len(path.encode("utf-8", "surrogateescape"))
    if size > MAX_SOCKET_PATH:
        return [
            f"channel {desc} has a path of {size} bytes, over the {MAX_SOCKET_PATH} a Unix "
            "socket path can hold; use a shorter path."
        ]
    return []


def validate_channel(channel: ChannelInput, allowed_dirs: Union[str, Sequence[str]]) -> List[str]:
    """Every problem with one channel (spec text or mapping), as sentences; [] if none.

    `allowed_dirs`: the directory (or directories) socket paths must be inside.
    """
    dirs = _dirs(allowed_dirs)
    desc = _describe(channel)
    if isinstance(channel, str):
        try:
            channel = parse_spec(channel)
        except ChannelSpecError as exc:
            return exc.problems
    problems = _value_problems(channel, desc)
    if problems:
        return problems
    name = channel.get("name")
    if name is None:
        problems.append(
            f"channel {desc} has no name; add name=<reverse domain name>.<version>, "
            "e.g. name=org.xenchannel.provision.0."
        )
    elif not valid_name(name):
        problems.append(
            f"channel {desc} has the name {name!r}, which {channel_name_problem(name)}."
        )
    connection = channel.get("connection")
    path = channel.get("path")
    if connection is None:
        problems.append(
            f"channel {desc} has no connection; add connection=socket or connection=pty."
        )
    elif connection not in CONNECTIONS:
        problems.append(
            f"channel {desc} has connection={connection!r}; use connection=socket or "
            "connection=pty (lower case)."
        )
    elif connection == "socket" and path is None:
        where = dirs[0] if len(dirs) == 1 else "one of " + ", ".join(dirs)
        problems.append(
            f"channel {desc} has connection=socket but no path; add path=<socket path> "
            f"inside {where}."
        )
    elif connection == "pty" and path is not None:
        problems.append(
            f"channel {desc} has a path, which connection=pty ignores; remove path= or use "
            "connection=socket."
        )
    if path is not None and connection != "pty":
        problems.extend(_path_problems(path, desc, dirs))
    return problems


def validate_channels(
    channels: Sequence[ChannelInput], allowed_dirs: Union[str, Sequence[str]]
) -> List[str]:
    """Every problem with a domain's channel list, as sentences; [] if none."""
    problems: List[str] = []
    parsed: List[Optional[Channel]] = []
    for channel in channels:
        mine = validate_channel(channel, allowed_dirs)
        problems.extend(mine)
        if isinstance(channel, str):
            try:
                parsed.append(parse_spec(channel))
            except ChannelSpecError:
                parsed.append(None)
        else:
            parsed.append(channel)
    if len(channels) > MAX_CHANNELS:
        problems.append(
            f"{len(channels)} channels are configured, but a Linux guest can use at most "
            f"{MAX_CHANNELS} (hvc_xen device ids 1..9); remove {len(channels) - MAX_CHANNELS}."
        )
    for key in ("name", "path"):
        seen: Dict[str, int] = {}
        for number, channel in enumerate(parsed, 1):
            value = channel.get(key) if channel is not None else None
            if value is None:
                continue
            if value in seen:
                problems.append(
                    f"channels {seen[value]} and {number} both have {key}={value}; give each "
                    f"channel its own {key}."
                )
            else:
                seen[value] = number
    return problems


def check_channels(
    channels: Sequence[ChannelInput], allowed_dirs: Union[str, Sequence[str]]
) -> List[Dict[str, str]]:
    """The channels as dicts if the list is valid; else ChannelSpecError with every problem."""
    problems = validate_channels(channels, allowed_dirs)
    if problems:
        raise ChannelSpecError(problems)
    return [parse_spec(c) if isinstance(c, str) else dict(c) for c in channels]
