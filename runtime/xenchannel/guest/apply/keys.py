"""The ssh-keys step: meta-data ``public-keys`` into one user's authorized_keys.

The keys xenchannel manages live between two marker lines::

    # >>> xenchannel managed keys: replaced for every new instance; add your own outside
    ssh-ed25519 AAAA... alice@laptop
    # <<< xenchannel managed keys

Everything outside the block is the user's and is kept byte for byte.  The block always
mirrors the current instance's meta-data: a new instance replaces it, and an instance
without keys removes it.  ``~/.ssh`` is made 0700 and ``authorized_keys`` 0600, both
owned by the user, as sshd's StrictModes wants.  Symlinks are refused, so a planted
link cannot make root write elsewhere.  Key material never reaches the log.

Standard library only; runs on Python 3.6 to 3.13.
"""

import os
from typing import Any, List, Optional, Tuple

from .files import ApplyError, DirChange, FileChange, Step, under

BEGIN = "# >>> xenchannel managed keys: replaced for every new instance; add your own outside"
END = "# <<< xenchannel managed keys"
_BEGIN_PREFIX = "# >>> xenchannel managed keys"


def collect_keys(public_keys: Any) -> List[str]:
    """Every key of ``public-keys`` in its three forms, in order, without duplicates."""
    found: List[str] = []

    def add(value: Any) -> None:
        if isinstance(value, str):
            for raw in value.splitlines():
                line = raw.strip()
                if line and not line.startswith("#"):
                    found.append(line)
        elif isinstance(value, list):
            for item in value:
                add(item)
        elif isinstance(value, dict):
            for item in value.values():
                add(item)
        elif value is not None:
            raise ApplyError("ssh-keys: public-keys holds a value that is not a string")

    add(public_keys)
    keys: List[str] = []
    for index, key in enumerate(found):
        if any(ord(ch) < 32 and ch != "\t" for ch in key) or "\x7f" in key:
            raise ApplyError(f"ssh-keys: public key {index + 1} contains control characters")
        if key not in keys:
            keys.append(key)
    return keys


def lookup_user(root: str, user: str) -> Tuple[int, int, str]:
    """(uid, gid, home) of ``user`` from ``<root>/etc/passwd``."""
    try:
        with open(under(root, "/etc/passwd"), encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields = line.rstrip("\n").split(":")
                if len(fields) >= 7 and fields[0] == user:
                    try:
                        return int(fields[2]), int(fields[3]), fields[5]
                    except ValueError:
                        break
    except FileNotFoundError:
        raise ApplyError("ssh-keys: /etc/passwd does not exist") from None
    raise ApplyError(
        f"ssh-keys: user {user!r} is not in /etc/passwd; pass --user with an existing user"
    )


def replace_block(old: str, keys: List[str]) -> str:
    """``old`` authorized_keys with the managed block holding ``keys`` (none: removed)."""
    lines = old.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(_BEGIN_PREFIX)]
    ends = [i for i, line in enumerate(lines) if line.strip() == END]
    block = [BEGIN, *keys, END] if keys else []
    if not starts and not ends:
        kept = lines
        at = len(kept)
    elif len(starts) == 1 and len(ends) == 1 and starts[0] < ends[0]:
        kept = lines[: starts[0]] + lines[ends[0] + 1 :]
        at = starts[0]
    else:
        raise ApplyError(
            "ssh-keys: authorized_keys has broken xenchannel markers (a block start without "
            "its end, or several blocks); fix the file by hand"
        )
    new = kept[:at] + block + kept[at:]
    return "\n".join(new) + "\n" if new else ""


def plan(root: str, user: str, public_keys: Any) -> Optional[Step]:
    """The ssh-keys step, or None when there is nothing to add and nothing to remove."""
    keys = collect_keys(public_keys)
    uid, gid, home = lookup_user(root, user)
    if not home.startswith("/"):
        raise ApplyError(f"ssh-keys: the home directory of {user!r} in /etc/passwd is not absolute")
    home_path = under(root, home)
    if not os.path.isdir(home_path) or os.path.islink(home_path):
        raise ApplyError(f"ssh-keys: the home directory {home} of {user!r} does not exist")
    ssh_shown = home.rstrip("/") + "/.ssh"
    keys_shown = ssh_shown + "/authorized_keys"
    ssh_dir = under(root, ssh_shown)
    keys_path = under(root, keys_shown)
    if os.path.islink(ssh_dir) or os.path.islink(keys_path):
        raise ApplyError(f"ssh-keys: {ssh_shown} or its authorized_keys is a symlink; refusing it")
    try:
        with open(keys_path, encoding="utf-8", errors="surrogateescape") as handle:
            old: Optional[str] = handle.read()
    except FileNotFoundError:
        old = None
    except NotADirectoryError:
        raise ApplyError(f"ssh-keys: {ssh_shown} is not a directory") from None
    if old is None and not keys:
        return None
    new = replace_block(old or "", keys)
    step = Step("ssh-keys")
    step.dirs.append(DirChange(ssh_dir, ssh_shown, 0o700, uid=uid, gid=gid, enforce=True))
    step.files.append(
        FileChange(
            keys_path,
            new.encode("utf-8", "surrogateescape"),
            keys_shown,
            mode=0o600,
            uid=uid,
            gid=gid,
        )
    )
    step.summary = f"ssh-keys: {len(keys)} managed key(s) for {user} in {keys_shown}"
    step.record = {"user": user, "count": len(keys), "file": keys_shown}
    return step
