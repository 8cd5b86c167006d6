"""User-data scripts: user-data that starts with ``#!`` runs once per instance.

The script is written to ``<state-dir>/user-data-script`` (0700) and run as root with
a bounded time, stdin from /dev/null and its output in ``<state-dir>/user-data-script.log``
(0600, replaced on each run).  It runs after the configuration steps were committed and
recorded, once per instance at most: the run is recorded as started before it starts,
so a script that reboots the guest is not run again.  Its effects cannot be rolled back,
so it is not part of the apply transaction; a failing script makes the status ``failed``.

Any other user-data (cloud-config, MIME, gzip) is not interpreted: that is cloud-init's.

Standard library only; runs on Python 3.6 to 3.13.
"""

import os
import signal
import subprocess
import time
from typing import Any, Callable, Dict, Optional

from .files import write_file

SCRIPT_NAME = "user-data-script"
LOG_NAME = "user-data-script.log"
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def is_script(user_data: Optional[bytes]) -> bool:
    return user_data is not None and user_data.startswith(b"#!")


def _stop_group(process: "subprocess.Popen[bytes]") -> None:
    """SIGTERM to the script's process group, SIGKILL after 5 s."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except OSError:
            pass
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run(
    user_data: bytes,
    state_dir: str,
    root: str,
    *,
    instance_id: str,
    timeout: float,
    should_stop: Callable[[], bool],
) -> Dict[str, Any]:
    """Run the script; returns its record (state, exit-status, seconds, log)."""
    script = os.path.join(state_dir, SCRIPT_NAME)
    log = os.path.join(state_dir, LOG_NAME)
    write_file(script, user_data, 0o700)
    record: Dict[str, Any] = {"log": LOG_NAME}
    env = {
        "PATH": _PATH,
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "XENCHANNEL_INSTANCE_ID": instance_id,
        "XENCHANNEL_ROOT": root,
    }
    start = time.monotonic()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        try:
            process = subprocess.Popen(
                [script],
                cwd=root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                close_fds=True,
                start_new_session=True,
            )
        except OSError as exc:
            record.update(state="not-started", error=str(exc.strerror or exc))
            return record
    finally:
        os.close(fd)
    deadline = start + timeout
    while True:
        try:
            code = process.wait(timeout=0.1)
            record.update(state="exited", **{"exit-status": code})
            break
        except subprocess.TimeoutExpired:
            pass
        if should_stop() or time.monotonic() >= deadline:
            _stop_group(process)
            record["state"] = "interrupted" if should_stop() else "timed-out"
            break
    record["seconds"] = round(time.monotonic() - start, 3)
    return record


def outcome(record: Dict[str, Any], timeout: float) -> Optional[str]:
    """None if the script succeeded, else one sentence saying how it failed."""
    state = record.get("state")
    where = "see " + str(record.get("log", LOG_NAME)) + " in the agent's state directory"
    if state == "exited":
        code = record.get("exit-status")
        if code == 0:
            return None
        if isinstance(code, int) and code < 0:
            return f"the user-data script was killed by signal {-code}; {where}"
        return f"the user-data script exited with status {code}; {where}"
    if state == "timed-out":
        return f"the user-data script ran longer than {timeout:g} s and was stopped; {where}"
    if state == "interrupted":
        return "the user-data script was stopped because the agent was asked to stop"
    if state == "not-started":
        return "the user-data script could not be started: {}".format(record.get("error"))
    if state == "started":
        return None  # interrupted by a reboot: not a failure we can judge
    return f"the user-data script ended in an unknown state {state!r}"
