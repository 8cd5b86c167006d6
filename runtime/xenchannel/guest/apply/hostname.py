"""The hostname step: /etc/hostname, the 127.0.1.1 line of /etc/hosts, the live name.

Debian's convention, which cloud-init follows too: /etc/hostname holds the short name
(the first label of ``local-hostname``) and /etc/hosts maps 127.0.1.1 to
``<fqdn> <short>`` (or just ``<short>``).  Every other line of /etc/hosts is kept.

Standard library only; runs on Python 3.6 to 3.13.
"""

import socket
import subprocess
from typing import List, Optional

from .files import FileChange, Step, under

# /etc/hosts as Debian installs it, for a root that has none.
_DEFAULT_HOSTS = (
    "127.0.0.1\tlocalhost\n"
    "{line}\n"
    "\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "ff02::1\tip6-allnodes\n"
    "ff02::2\tip6-allrouters\n"
)


def hosts_line(name: str) -> str:
    short = name.split(".", maxsplit=1)[0]
    return "127.0.1.1\t" + (f"{name} {short}" if short != name else short)


def render_hosts(old: Optional[str], name: str) -> str:
    """/etc/hosts with the 127.0.1.1 line for ``name``; every other line kept."""
    line = hosts_line(name)
    if old is None:
        return _DEFAULT_HOSTS.format(line=line)
    lines = old.splitlines()
    out: List[str] = []
    placed = False
    after_localhost = 0
    for text in lines:
        fields = text.split("#", 1)[0].split()
        if fields and fields[0] == "127.0.1.1":
            if not placed:
                out.append(line)
                placed = True
            continue  # a second 127.0.1.1 line would name the old host
        out.append(text)
        if fields and fields[0] == "127.0.0.1":
            after_localhost = len(out)
    if not placed:
        out.insert(after_localhost, line)
    return "\n".join(out) + "\n"


def set_live_hostname(name: str) -> None:
    sethostname = getattr(socket, "sethostname", None)
    if sethostname is not None:
        sethostname(name)
        return
    try:
        subprocess.run(["hostname", name], check=True, timeout=10)  # noqa: S607 - root's PATH
    except (subprocess.SubprocessError, OSError) as exc:
        raise OSError(f"setting the hostname with the hostname command failed: {exc}") from None


def plan(root: str, name: str, live: bool) -> Step:
    """The hostname step for ``local-hostname`` ``name`` (already validated)."""
    short = name.split(".", maxsplit=1)[0]
    step = Step("hostname")
    step.files.append(
        FileChange(under(root, "/etc/hostname"), (short + "\n").encode("ascii"), "/etc/hostname")
    )
    hosts_path = under(root, "/etc/hosts")
    try:
        with open(hosts_path, encoding="utf-8", errors="surrogateescape") as handle:
            old: Optional[str] = handle.read()
    except FileNotFoundError:
        old = None
    new = render_hosts(old, name)
    step.files.append(FileChange(hosts_path, new.encode("utf-8", "surrogateescape"), "/etc/hosts"))
    where = ["/etc/hostname", "/etc/hosts"]
    if live:
        previous = socket.gethostname()
        if previous != short:
            step.live = (lambda: set_live_hostname(short), lambda: set_live_hostname(previous))
        where.append("live")
    step.summary = "hostname: {} ({})".format(short, ", ".join(where))
    step.record = {"name": short, "fqdn": name, "live": live}
    return step
