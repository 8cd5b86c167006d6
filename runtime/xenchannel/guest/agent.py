"""The in-guest agent: ``python3 -m xenchannel.guest.agent``.

For guests without cloud-init it applies the bundle itself - hostname, SSH keys,
static network configuration, a ``#!`` user-data script - once per instance, and it
answers dom0's queries (the channel's second use) in every guest.

One run: wait for the channel device (bounded); if cloud-init is installed and enabled,
apply nothing and only answer queries once cloud-init has finished; otherwise fetch the
bundle, and if its instance-id is not the one recorded in ``<state-dir>/applied.json``
apply every step as one transaction (a failure rolls back what this run changed and
records nothing), record, signal readiness to systemd, run the user script, report
``applied`` or ``failed`` to dom0, then answer queries until stopped.  The same
instance-id applies nothing and reports ``applied`` ("already applied").  Before
reporting ``applied`` on a live root it waits (bounded, ``--address-wait``) for the
bundle's static addresses and SSH host keys; if some are still missing it says so
(the report is "settling"), keeps watching (``--settle-wait``) and reports again.
Every STATUS carries a report of what the clone is (``report.py``), which the
``report`` query answers too.

Every path read or written is inside ``--root`` (default ``/``), except the channel
device, /proc and the hostname syscall.  One log line per step; never key material or
user-data.  docs/guest-agent.md is the operator's description.

Standard library only; runs on Python 3.6 to 3.13.
"""

import argparse
import contextlib
import json
import logging
import math
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

from xenchannel import __version__
from xenchannel.channel_name import channel_name_problem
from xenchannel.protocol import Bundle, ChannelError, static_addresses
from xenchannel.session import Report

from . import REPORT_STATUS_DONE, REPORT_STATUS_PROGRAM
from . import report as facts
from .apply import ApplyError, Step, commit, under, write_file
from .apply import hostname as hostname_step
from .apply import keys as keys_step
from .apply import network as network_step
from .apply import script as user_script
from .cli import DEFAULT_DEVICE
from .client import ClientConfig, GuestClient

LOG = logging.getLogger("xenchannel.guest.agent")

DEFAULT_STATE_DIR = "/var/lib/xenchannel"
# Where udev links a channel by its name (Xen channels; virtio-serial ports off Xen).
CHANNEL_LINK_DIRS = ("/dev/xen-channel", "/dev/virtio-ports")
RECORD_NAME = "applied.json"
# cloud-init counts as installed and enabled when its command exists and neither of the
# switches its own systemd generator honours turns it off (the file, the kernel option).
CLOUD_INIT = "/usr/bin/cloud-init"
CLOUD_INIT_DISABLED = "/etc/cloud/cloud-init.disabled"
CLOUD_INIT_RESULT = "/run/cloud-init/result.json"  # written when cloud-final is done
CLOUD_INIT_INSTANCE = "/var/lib/cloud/data/instance-id"
# A whole QUERY is answered within this, under dom0's default 5 s query timeout, so the
# reply still arrives in time whatever is asked: the commands behind "cloud-init" and
# "report" share it, and a key asked twice is answered once.
ANSWER_BUDGET = 4.5
CLOUD_INIT_STATUS_TIMEOUT = 4.0
QUERY_KEYS = (
    "version",
    "instance-id",
    "uptime",
    "hostname",
    "cloud-init",
    "applied-at",
    "status",
    "report",
)
FOREVER = 10.0 * 365 * 24 * 3600


class _Terminated(BaseException):
    """SIGTERM or SIGINT arrived while the agent was waiting."""


class Stopper:
    """Signal handling: a stop request interrupts waits, never an apply in progress."""

    def __init__(self) -> None:
        self.requested = False
        self._interruptible = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        if self._interruptible:
            self._interruptible = False
            raise _Terminated()

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        if self.requested:
            raise _Terminated()
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    def __call__(self) -> bool:
        return self.requested


def sd_notify(message: str) -> bool:
    """Tell systemd (Type=notify) about our state; False when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
    except OSError as exc:
        LOG.warning("could not notify systemd: %s", exc)
        return False
    return True


def cloud_init_state(root: str) -> Tuple[bool, str]:
    """(enabled, why): whether cloud-init is installed and enabled in ``root``."""
    if not os.path.exists(under(root, CLOUD_INIT)):
        return False, f"cloud-init is not installed ({CLOUD_INIT} is absent)"
    if os.path.lexists(under(root, CLOUD_INIT_DISABLED)):
        return False, f"cloud-init is installed but disabled by {CLOUD_INIT_DISABLED}"
    if os.path.normpath(root) == "/":
        try:
            with open("/proc/cmdline") as handle:
                if "cloud-init=disabled" in handle.read().split():
                    return False, "cloud-init is disabled on the kernel command line"
        except OSError:
            pass
    return True, "cloud-init is installed and enabled"


def _uptime() -> Optional[float]:
    try:
        with open("/proc/uptime") as handle:
            return float(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def cloud_init_status(root: str, timeout: float = CLOUD_INIT_STATUS_TIMEOUT) -> Any:
    """``cloud-init status --format json`` parsed, bounded; None if not installed."""
    command = under(root, CLOUD_INIT)
    if not os.path.exists(command):
        return None
    try:
        out = subprocess.run(
            [command, "status", "--format", "json"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"cloud-init status took longer than {timeout:g} s"}
    except OSError as exc:
        return {"error": f"cloud-init status could not run: {exc.strerror or exc}"}
    text = out.stdout.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        # Old cloud-init has no --format json; pass its words on, bounded.
        return {"output": text.strip()[:4096], "exit-status": out.returncode}


class Agent:
    def __init__(self, args: argparse.Namespace, stopper: Stopper) -> None:
        self.args = args
        self.root = os.path.abspath(args.root)
        self.state_dir = under(self.root, args.state_dir)
        self.record_path = os.path.join(self.state_dir, RECORD_NAME)
        self.live_hostname = bool(args.set_live_hostname) or self.root == "/"
        self.stopper = stopper
        self.record: Optional[Dict[str, Any]] = self._load_record()
        self.status: Optional[Dict[str, Any]] = None  # this boot's outcome
        self.beside_cloud_init = False
        self.wanted_addresses: List[str] = []  # the bundle's static ones
        # Set while the last STATUS said "settling": when to stop watching, and what to
        # report again (state, reason, instance-id).
        self.settle_until: Optional[float] = None
        self.reported: Tuple[str, str, str] = ("", "", "")

    # ------------------------------------------------------------------ the run

    def run(self) -> int:
        enabled, why = cloud_init_state(self.root)
        if enabled:
            return self._run_beside_cloud_init(why)
        LOG.info("cloud-init: %s; the agent applies the bundle itself", why)
        client = self._open()
        if client is None:
            return 1
        with client:
            try:
                with self.stopper.interruptible():
                    bundle = client.fetch_bundle()
            except ChannelError as exc:
                LOG.error("bundle: %s", exc)
                return 1
            ok = self._apply_and_report(client, bundle)
            return self._serve(client, 0 if ok else 1)

    def _config(self) -> ClientConfig:
        return ClientConfig(
            wait_timeout=self.args.wait_timeout,
            connect_timeout=self.args.connect_timeout,
            transfer_timeout=self.args.transfer_timeout,
        )

    def _open(self) -> Optional[GuestClient]:
        try:
            with self.stopper.interruptible():
                client = GuestClient.open(self.args.device, self._config())
        except ChannelError as exc:
            LOG.error("device: %s", exc)
            return None
        LOG.info("device: %s open after %.1f s", self.args.device, client.device.waited)
        return client

    def _run_beside_cloud_init(self, why: str) -> int:
        """cloud-init (with the XenChannel datasource) applies; we only answer queries."""
        self.beside_cloud_init = True
        LOG.info(
            "cloud-init: %s; leaving hostname, keys, network and user-data to it and only "
            "answering queries",
            why,
        )
        sd_notify("READY=1\nSTATUS=answering queries beside cloud-init")
        # cloud-init's final stage may still report to dom0 over the device: take the
        # device only once cloud-init has finished (or after --cloud-init-wait).
        result = under(self.root, CLOUD_INIT_RESULT)
        deadline = time.monotonic() + self.args.cloud_init_wait
        if not os.path.exists(result):
            LOG.info(
                "cloud-init: waiting up to %g s for %s",
                self.args.cloud_init_wait,
                CLOUD_INIT_RESULT,
            )
            with self.stopper.interruptible():
                while not os.path.exists(result) and time.monotonic() < deadline:
                    time.sleep(0.5)
            if not os.path.exists(result):
                LOG.warning(
                    "cloud-init: not finished after %g s; taking the device anyway",
                    self.args.cloud_init_wait,
                )
        self._wait_for_report_status(deadline)
        client = self._open()
        if client is None:
            return 1
        with client:
            return self._serve(client, 0)

    def _wait_for_report_status(self, deadline: float) -> None:
        """Let xenchannel-report-status send cloud-init's result before we take the device
        (REPORT_STATUS_DONE says why this is not unit ordering).  Bounded by ``deadline``."""
        if not os.path.exists(under(self.root, REPORT_STATUS_PROGRAM)):
            return
        done = under(self.root, REPORT_STATUS_DONE)
        if os.path.exists(done):
            return
        LOG.info("cloud-init: waiting for xenchannel-report-status to report to dom0")
        with self.stopper.interruptible():
            while not os.path.exists(done) and time.monotonic() < deadline:
                time.sleep(0.5)
        if not os.path.exists(done):
            LOG.warning("xenchannel-report-status has not run; taking the device anyway")

    # ------------------------------------------------------------------ apply

    def _apply_and_report(self, client: GuestClient, bundle: Bundle) -> bool:
        instance_id = bundle.instance_id or ""
        self.wanted_addresses = static_addresses(bundle.network_config)
        digest = bundle.digest()
        record = self.record
        if record is not None and record.get("instance-id") == instance_id:
            note = "" if record.get("sha256") == digest else " (the bundle changed since)"
            LOG.info(
                "instance %s was applied at %s%s; applying nothing",
                instance_id,
                record.get("applied-at"),
                note,
            )
            failed = record.get("status") == "failed"
            reason = "already applied" + (f"; {record.get('reason')}" if failed else "")
            return self._finish(client, "failed" if failed else "applied", reason, instance_id)
        LOG.info("instance %s is new (recorded: %s); applying", instance_id, _recorded(record))
        try:
            steps = self._plan(bundle)
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        except ApplyError as exc:
            return self._fail(client, f"{exc}; nothing was changed", instance_id)
        except OSError as exc:
            reason = f"preparing the steps failed: {exc}; nothing was changed"
            return self._fail(client, reason, instance_id)
        try:
            commit(steps, lambda step: LOG.info("%s", step.summary))
        except ApplyError as exc:
            return self._fail(client, str(exc), instance_id)
        applied: Dict[str, Any] = {step.name: step.record for step in steps}
        has_script = user_script.is_script(bundle.user_data)
        if has_script:
            applied["user-script"] = {"state": "started"}
        new_record: Dict[str, Any] = {
            "instance-id": instance_id,
            "sha256": digest,
            "applied-at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "agent": __version__,
            "status": "applied",
            "reason": "",
            "applied": applied,
        }
        try:
            self._write_record(new_record)
        except OSError as exc:
            problems: List[str] = []
            for step in reversed(steps):
                problems.extend(step.rollback())
            reason = f"writing {self.args.state_dir}/{RECORD_NAME} failed ({exc.strerror or exc}); "
            reason += "rolling back also failed" if problems else "every step was rolled back"
            return self._fail(client, reason, instance_id)
        self.record = new_record
        self._reload_network(steps)
        sd_notify("READY=1\nSTATUS=applied instance " + instance_id)
        state, reason = "applied", ""
        if has_script:
            outcome = self._run_script(bundle.user_data or b"", instance_id, new_record)
            if outcome is not None:
                state, reason = "failed", outcome
        return self._finish(client, state, reason, instance_id)

    def _plan(self, bundle: Bundle) -> List[Step]:
        """Every step, planned before anything is touched: an impossible step (a bond,
        a missing user) fails here and nothing at all is written."""
        steps: List[Step] = []
        if bundle.hostname:
            steps.append(hostname_step.plan(self.root, bundle.hostname, self.live_hostname))
        else:
            LOG.info("hostname: not in meta-data; left as it is")
        keys = keys_step.plan(self.root, self.args.user, bundle.meta_data.get("public-keys"))
        if keys is not None:
            steps.append(keys)
        else:
            LOG.info("ssh-keys: none in meta-data and none managed; nothing to do")
        steps.append(network_step.plan(self.root, bundle.network_config))
        return steps

    def _run_script(
        self, user_data: bytes, instance_id: str, record: Dict[str, Any]
    ) -> Optional[str]:
        timeout = self.args.script_timeout
        try:
            result = user_script.run(
                user_data,
                self.state_dir,
                self.root,
                instance_id=instance_id,
                timeout=timeout,
                should_stop=self.stopper,
            )
        except OSError as exc:
            result = {"state": "not-started", "error": str(exc.strerror or exc)}
        outcome = user_script.outcome(result, timeout)
        LOG.info(
            "user-script: %s%s after %s s; output in %s/%s",
            result.get("state"),
            f" with status {result['exit-status']}" if "exit-status" in result else "",
            result.get("seconds", 0),
            self.args.state_dir,
            user_script.LOG_NAME,
        )
        record["applied"]["user-script"] = result
        if outcome is not None:
            record["status"], record["reason"] = "failed", outcome
        try:
            self._write_record(record)
        except OSError as exc:
            LOG.error("record: could not record the user script's result: %s", exc)
        return outcome

    def _reload_network(self, steps: List[Step]) -> None:
        if not self.args.reload_network:
            return
        network = [s for s in steps if s.name == "network" and s.changed]
        if not network:
            return
        if self.root != "/":
            LOG.info("network: not reloading: --root is not /")
            return
        stack = network[0].record.get("stack")
        if stack == "ifupdown":
            command = ["ifreload", "-a"] if shutil.which("ifreload") else ["ifup", "-a"]
        else:
            command = ["networkctl", "reload"]
        try:
            done = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=60,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            LOG.warning("network: %s failed: %s", " ".join(command), exc)
            return
        if done.returncode:
            LOG.warning(
                "network: %s exited with %d: %s",
                " ".join(command),
                done.returncode,
                done.stderr.decode("utf-8", "replace").strip()[:300],
            )
        else:
            LOG.info("network: %s done", " ".join(command))

    def _fail(self, client: GuestClient, reason: str, instance_id: str) -> bool:
        LOG.error("apply: %s", reason)
        return self._finish(client, "failed", reason, instance_id)

    def _finish(self, client: GuestClient, state: str, reason: str, instance_id: str) -> bool:
        sd_notify(f"READY=1\nSTATUS={state} instance {instance_id}")
        self.status = {"state": state, "reason": reason or None}
        if state == "applied":
            # After READY=1, so the network stack is starting meanwhile.
            self._wait_for_addresses()
        report = self.report()
        if state == "applied":
            gaps = facts.lacking(self.root, self.wanted_addresses, report)
            if gaps and self.args.settle_wait > 0:
                # A slow network is not a wrong one: say so, keep watching, report again.
                report.settling = max(1, math.ceil(self.args.settle_wait))
                self.settle_until = time.monotonic() + self.args.settle_wait
                self.reported = (state, reason, instance_id)
                LOG.info(
                    "report: without %s so far; watching up to %g s more and reporting again",
                    ", ".join(gaps),
                    self.args.settle_wait,
                )
        if client.report_status(state, reason or None, instance_id, report):
            LOG.info("status: %s reported to dom0", state)
        else:
            LOG.warning("status: dom0 did not acknowledge %s", state)
        return state == "applied"

    def _settle(self, client: GuestClient) -> None:
        """After a "settling" report: answer queries while watching for what it lacked,
        then report again, complete or (at ``--settle-wait``) as it is, so that dom0 never
        waits on a promise.  Bounded by the deadline ``_finish`` set."""
        if self.settle_until is None:
            return
        state, reason, instance_id = self.reported
        started = time.monotonic()
        gaps: List[str] = []
        while not self.stopper.requested:
            report = self.report()
            gaps = facts.lacking(self.root, self.wanted_addresses, report)
            left = self.settle_until - time.monotonic()
            if not gaps or left <= 0:
                break
            client.serve_queries(self.answer, min(1.0, left), self.stopper)
        else:
            return  # stopped: the unit is going away, and so is the promise with it
        self.settle_until = None
        if gaps:
            LOG.warning(
                "report: still without %s after %g s; reporting so",
                ", ".join(gaps),
                self.args.settle_wait,
            )
        else:
            LOG.info(
                "report: complete after %.1f s more; reporting again", time.monotonic() - started
            )
        if client.report_status(state, reason or None, instance_id, report):
            LOG.info("status: %s reported to dom0 again", state)
        else:
            LOG.warning("status: dom0 did not acknowledge %s", state)

    def _wait_for_addresses(self) -> None:
        """The static addresses, then the SSH host keys, within one --address-wait."""
        deadline = time.monotonic() + self.args.address_wait
        with self.stopper.interruptible():
            facts.wait_and_log(self.wanted_addresses, self.args.address_wait)
            left = max(0.0, deadline - time.monotonic())
            if not facts.wait_for_host_keys(self.root, left):
                LOG.info("ssh: no host key after %g s", self.args.address_wait)

    def report(self) -> Report:
        """What the clone is now (``report.collect``), with cloud-init's result: from
        its files beside cloud-init, ``disabled`` when installed but off, else none."""
        cloud_init: Any = (None, [], [])
        if self.beside_cloud_init:
            cloud_init = facts.read_cloud_init_result(self.root) or cloud_init
        elif os.path.exists(under(self.root, CLOUD_INIT)):
            cloud_init = ("disabled", [], [])
        return facts.collect(self.root, *cloud_init, live=self.live_hostname)

    # ------------------------------------------------------------------ record

    def _load_record(self) -> Optional[Dict[str, Any]]:
        try:
            with open(self.record_path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            LOG.warning(
                "record: %s is unreadable (%s); treating the instance as new", self.record_path, exc
            )
            return None
        return data if isinstance(data, dict) else None

    def _write_record(self, record: Dict[str, Any]) -> None:
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        data = json.dumps(record, indent=2, sort_keys=True).encode("utf-8") + b"\n"
        write_file(self.record_path, data, 0o600)

    # ------------------------------------------------------------------ queries

    def _serve(self, client: GuestClient, code: int) -> int:
        duration = self.args.serve
        if duration != 0:
            try:
                self._drop_privileges()
            except (KeyError, OSError) as exc:
                LOG.error("queries: cannot switch to user %r: %s", self.args.serve_user, exc)
                return 1
        try:
            self._settle(client)
        except ChannelError as exc:
            LOG.error("report: %s", exc)
            return 1
        if duration == 0:
            return code
        LOG.info(
            "queries: answering %s",
            "until stopped" if duration is None else f"for {duration:g} s",
        )
        try:
            count = client.serve_queries(
                self.answer, FOREVER if duration is None else duration, self.stopper
            )
        except ChannelError as exc:
            LOG.error("queries: %s", exc)
            return 1
        LOG.info("queries: answered %d; stopping", count)
        # Stopped by systemd: the outcome was reported and logged already, and a unit
        # that was merely stopped should not show as failed.
        return 0 if self.stopper.requested else code

    def _drop_privileges(self) -> None:
        """Give up root for the long-running part.

        Answering queries needs only the device, which is open already, and what is in
        memory; so the process that stays up for the guest's lifetime, reading what dom0
        sends, holds no privilege at all.  Applying (hostname, keys, network) is done.
        """
        user = self.args.serve_user
        if not user or os.geteuid() != 0:
            return
        entry = pwd.getpwnam(user)
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
        LOG.info("queries: running as %s (uid %d) from now on", user, entry.pw_uid)

    def answer(self, keys: List[str]) -> Dict[str, Any]:
        """The QUERY handler: known keys answered, unknown ones null, all of them within
        ANSWER_BUDGET."""
        record = self.record or {}
        answers: Dict[str, Any] = {}
        wanted = list(dict.fromkeys(keys or QUERY_KEYS))
        deadline = time.monotonic() + ANSWER_BUDGET
        for index, key in enumerate(wanted):
            if key == "version":
                answers[key] = __version__
            elif key == "instance-id":
                answers[key] = self._instance_id(record)
            elif key == "uptime":
                answers[key] = _uptime()
            elif key == "hostname":
                answers[key] = socket.gethostname()
            elif key == "cloud-init":
                # What is left, less what the report still to come may take.
                later = facts.IP_TIMEOUT if "report" in wanted[index + 1 :] else 0.0
                left = min(CLOUD_INIT_STATUS_TIMEOUT, deadline - time.monotonic() - later)
                answers[key] = cloud_init_status(self.root, max(0.5, left))
            elif key == "applied-at":
                answers[key] = record.get("applied-at")
            elif key == "status":
                answers[key] = self.status
            elif key == "report":
                answers[key] = self.report().body()
            else:
                answers[key] = None
        return answers

    def _instance_id(self, record: Dict[str, Any]) -> Optional[str]:
        if not self.beside_cloud_init:
            value = record.get("instance-id")
            return value if isinstance(value, str) else None
        try:
            with open(under(self.root, CLOUD_INIT_INSTANCE)) as handle:
                return handle.read().strip() or None
        except OSError:
            return None


def _recorded(record: Optional[Dict[str, Any]]) -> str:
    if record is None:
        return "none"
    return str(record.get("instance-id"))


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError("must be a number of seconds, 0 or more")
    return value


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xenchannel-guest-agent",
        description="Apply this clone's identity from dom0 once per instance, then answer "
        "dom0's queries.",
    )
    parser.add_argument(
        "--device", default=DEFAULT_DEVICE, help=f"channel device (default {DEFAULT_DEVICE})"
    )
    parser.add_argument(
        "--root", default="/", help="every file read or written is under it (default /)"
    )
    parser.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        help=f"inside --root (default {DEFAULT_STATE_DIR})",
    )
    parser.add_argument(
        "--user", default="root", help="whose authorized_keys get the keys (default root)"
    )
    parser.add_argument(
        "--wait-timeout", type=_seconds, default=30.0, metavar="S", help="for the device (30)"
    )
    parser.add_argument(
        "--connect-timeout", type=_seconds, default=30.0, metavar="S", help="for dom0 (30)"
    )
    parser.add_argument("--transfer-timeout", type=_seconds, default=300.0, metavar="S")
    parser.add_argument(
        "--serve",
        type=_seconds,
        default=None,
        metavar="S",
        help="answer queries for S seconds after applying; 0: exit (default: until SIGTERM)",
    )
    parser.add_argument(
        "--once", action="store_true", help="exit after applying and reporting (--serve 0)"
    )
    parser.add_argument(
        "--set-live-hostname",
        action="store_true",
        help="also set the running hostname when --root is not / (always done with /)",
    )
    parser.add_argument(
        "--reload-network",
        action="store_true",
        help="after changing network files: networkctl reload, or ifreload -a / ifup -a",
    )
    parser.add_argument("--script-timeout", type=_seconds, default=600.0, metavar="S", help="(600)")
    parser.add_argument(
        "--address-wait",
        type=_seconds,
        default=None,
        metavar="S",
        help="before reporting 'applied', wait this long for the network-config's static "
        "addresses to be up (default: 10 with --root /, else 0)",
    )
    parser.add_argument(
        "--settle-wait",
        type=_seconds,
        default=None,
        metavar="S",
        help="if the report still lacks a static address or the SSH host keys, say so, "
        "keep watching this long and report again (default: 120 with --root /, else 0)",
    )
    parser.add_argument(
        "--cloud-init-wait",
        type=_seconds,
        default=900.0,
        metavar="S",
        help="beside cloud-init: wait this long for it to finish before taking the device (900)",
    )
    parser.add_argument(
        "--serve-user",
        default=None,
        metavar="USER",
        help="answer queries as this user, giving up root once the bundle is applied "
        "(default: nobody with --root /, else stay; '' to stay root)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug lines too")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.once:
        args.serve = 0.0
    if args.address_wait is None:
        # Another --root is an image or a test tree: its network is not the running one.
        args.address_wait = 10.0 if os.path.realpath(args.root) == "/" else 0.0
    if args.settle_wait is None:
        args.settle_wait = 120.0 if os.path.realpath(args.root) == "/" else 0.0
    if args.serve_user is None:
        # Tests use another --root inside a sandbox whose files nobody cannot read.
        args.serve_user = "nobody" if os.path.realpath(args.root) == "/" else ""
    if not os.path.isdir(args.root):
        parser.error(f"--root {args.root} is not a directory")
    if not args.state_dir.startswith("/"):
        parser.error("--state-dir must be absolute (it is taken inside --root)")
    directory, name = os.path.split(args.device)
    if directory in CHANNEL_LINK_DIRS and channel_name_problem(name) is not None:
        # The udev helper links only names the rule accepts: waiting would never end well.
        parser.error(
            f"--device {args.device}: the channel name {name!r} {channel_name_problem(name)}, "
            "so udev never makes that link"
        )
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(message)s",
        stream=sys.stderr,
    )
    stopper = Stopper()
    stopper.install()
    try:
        return Agent(args, stopper).run()
    except _Terminated:
        LOG.info("stopped by a signal")
        return 0
    except ApplyError as exc:
        LOG.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
