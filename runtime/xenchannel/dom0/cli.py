"""Command line of the dom0 agent: ``python -m xenchannel.dom0 run | status | query``.

* ``run``    - run the agent in the foreground until SIGTERM/SIGINT (systemd runs this).
* ``status`` - print the per-domain state records as a table or JSON; reads the state
  files only, so it works while the agent is down.
* ``query``  - ask a running guest's in-guest agent, through the agent's control socket.

Settings come from defaults, then an INI file's ``[agent]`` section (``--config``, keys
named as in ``AgentConfig``), then command-line options.  Errors are one sentence on
stderr and exit status 1; usage errors exit 2.
"""

import argparse
import asyncio
import configparser
import dataclasses
import datetime
import json
import logging
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

from xenchannel import __version__
from xenchannel.dom0 import LOGGER_NAME
from xenchannel.dom0.agent import run_agent
from xenchannel.dom0.config import (
    DEFAULT_CONTROL_SOCKET,
    DEFAULT_SOCKET_ROOT,
    DEFAULT_STATE_DIR,
    DEFAULT_STORE_DIR,
    AgentConfig,
    AgentError,
)
from xenchannel.dom0.control import control_request
from xenchannel.dom0.state import (
    load_state,
    load_states,
    public_record,
    readiness,
    summarise,
)
from xenchannel.domain_name import valid_domain_name
from xenchannel.session import host_key_fingerprint, printable

PROG = "python -m xenchannel.dom0"
COLUMNS = (
    ("DOMAIN", "domain"),
    ("CONNECTED", "connected"),
    ("HANDSHAKE", "handshake"),
    ("DELIVERED", "delivered"),
    ("STATUS", "status"),
    ("READY", "ready"),
    ("ADDRESS", "address"),
    ("INSTANCE-ID", "instance_id"),
    ("LAST ERROR", "last_error"),
)
MAX_ERROR_COLUMN = 80


class UsageError(Exception):
    """A bad option or configuration file; exit status 2."""


def run_command(store: str, state: str, socket_root: str, control: str, *extra: str) -> List[str]:
    """The argv that starts this agent as a child process (the demo, tests, benchmarks)."""
    return [
        sys.executable,
        "-m",
        "xenchannel.dom0",
        "run",
        "--store",
        store,
        "--state",
        state,
        "--socket-root",
        socket_root,
        "--control-socket",
        control,
        *extra,
    ]


def default_config() -> AgentConfig:
    return AgentConfig(
        store_dir=DEFAULT_STORE_DIR,
        state_dir=DEFAULT_STATE_DIR,
        socket_root=DEFAULT_SOCKET_ROOT,
        control_socket=DEFAULT_CONTROL_SOCKET,
    )


def read_config_file(path: str, config: AgentConfig) -> AgentConfig:
    """``config`` updated from the ``[agent]`` section of the INI file ``path``."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except OSError as exc:
        raise UsageError(f"cannot read the configuration file {path} ({exc.strerror})") from None
    except configparser.Error as exc:
        first = str(exc).splitlines()[0]
        raise UsageError(f"the configuration file {path} is not valid INI ({first})") from None
    if not parser.has_section("agent"):
        raise UsageError(f"the configuration file {path} has no [agent] section")
    fields = {field.name: field for field in dataclasses.fields(AgentConfig)}
    changes: Dict[str, Any] = {}
    for key, raw in parser.items("agent"):
        field = fields.get(key)
        if field is None:
            raise UsageError(
                f"the configuration file {path} has unknown key {key!r}; use one of "
                + ", ".join(sorted(fields))
            )
        default = getattr(config, key)
        try:
            if key in ("control_socket", "metrics_file"):
                changes[key] = raw.strip() or None
            elif isinstance(default, bool):
                changes[key] = parser.getboolean("agent", key)
            elif isinstance(default, int):
                changes[key] = int(raw)
            elif isinstance(default, float):
                changes[key] = float(raw)
            else:
                changes[key] = raw.strip()
        except ValueError:
            raise UsageError(
                f"the configuration file {path} sets {key} to {raw!r}, which is not a "
                f"{type(default).__name__}"
            ) from None
    return dataclasses.replace(config, **changes)


def build_config(args: argparse.Namespace) -> AgentConfig:
    config = default_config()
    if getattr(args, "config", None):
        config = read_config_file(args.config, config)
    overrides: Dict[str, Any] = {}
    for attr, key in (
        ("store", "store_dir"),
        ("state", "state_dir"),
        ("socket_root", "socket_root"),
        ("control_socket", "control_socket"),
    ):
        value = getattr(args, attr, None)
        if value is None:
            continue
        option = "--" + attr.replace("_", "-")
        if value.strip():
            overrides[key] = os.path.abspath(value)
        elif key == "control_socket":
            overrides[key] = None  # documented: an empty path turns the control socket off
        else:
            raise UsageError(f"{option} needs a path; give the directory, or leave {option} out")
    return dataclasses.replace(config, **overrides)


# --------------------------------------------------------------------------- run


class _LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        text = (
            f"ts={stamp.strftime('%Y-%m-%dT%H:%M:%S')}.{int(record.msecs):03d}Z "
            f"level={record.levelname.lower()} {record.getMessage()}"
        )
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogfmtFormatter())
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


def cmd_run(args: argparse.Namespace) -> int:
    config = build_config(args)
    try:
        config.validate()
    except AgentError as exc:
        raise UsageError(str(exc)) from None
    setup_logging(args.verbose)
    run_agent(config)
    return 0


# --------------------------------------------------------------------------- status


def format_table(summaries: Sequence[Dict[str, Any]]) -> str:
    rows: List[List[str]] = [[title for title, _ in COLUMNS]]
    for summary in summaries:
        row = []
        for _, key in COLUMNS:
            text = " ".join(str(summary.get(key, "-")).split())  # one line per domain
            if key == "last_error" and len(text) > MAX_ERROR_COLUMN:
                text = text[: MAX_ERROR_COLUMN - 3] + "..."
            row.append(text)
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_report(state: Dict[str, Any]) -> str:
    """One domain's readiness and report, below its table row: what a user checks before
    logging in (the host key fingerprints are what ``ssh`` shows on first contact)."""
    ready, why = readiness(state)
    lines = ["", f"ready: {ready}" + ("" if ready == "yes" else f" ({why})")]
    report = state.get("report")
    if not isinstance(report, dict):
        return "\n".join(lines)
    lines.append(f"reported at: {report.get('at')} for instance-id {report.get('instance_id')}")
    lines.append(f"hostname: {printable(str(report.get('hostname') or '-'), 253)}")
    if report.get("cloud_init"):
        lines.append(f"cloud-init: {report['cloud_init']}")
    for label in ("errors", "recoverable_errors"):
        for error in report.get(label) or []:
            lines.append(f"  {label.replace('_', ' ')[:-1]}: {printable(str(error), 300)}")
    lines.append("interfaces:")
    for interface in report.get("interfaces") or []:
        words = [str(interface.get(k) or "-") for k in ("name", "mac")]
        words += [str(a) for a in interface.get("addresses") or []]
        lines.append("  " + printable(" ".join(words), 400))
    lines.append("host keys:")
    for key in report.get("host_keys") or []:
        lines.append(f"  {host_key_fingerprint(str(key))} ({str(key).split()[0]})")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    config = build_config(args)
    state_dir = config.state_dir
    if args.domain is not None:
        state = None
        if valid_domain_name(args.domain):
            try:
                state = load_state(state_dir, args.domain)
            except OSError as exc:
                return _fail(f"cannot read the state of {args.domain} in {state_dir} ({exc})")
        if state is None:
            return _fail(
                f"no state recorded for domain {args.domain!r} in {state_dir}; check the "
                "name against the store (or whether the agent has run)"
            )
        if args.json:
            record = dict(public_record(state), summary=summarise(state))
            print(json.dumps(record, indent=2, sort_keys=True))
        else:
            print(format_table([summarise(state)]))
            print(format_report(state))
        return 0
    if not os.path.isdir(state_dir):
        return _fail(f"the state directory {state_dir} does not exist; has the agent run?")
    try:
        states = load_states(state_dir)
    except OSError as exc:
        return _fail(f"cannot read the state directory {state_dir} ({exc.strerror})")
    ordered = [states[name] for name in sorted(states)]
    if args.json:
        records = [dict(public_record(s), summary=summarise(s)) for s in ordered]
        print(json.dumps(records, indent=2, sort_keys=True))
    else:
        print(format_table([summarise(state) for state in ordered]))
    return 0


# --------------------------------------------------------------------------- query


def cmd_query(args: argparse.Namespace) -> int:
    config = build_config(args)
    if not config.control_socket:
        return _fail("no control socket is configured; pass --control-socket")
    what = [key.strip() for key in args.what.split(",") if key.strip()] if args.what else []
    timeout = args.timeout if args.timeout is not None else config.query_timeout
    if not 0 < timeout <= 300:
        raise UsageError("--timeout must be above 0 and at most 300 seconds")
    request = {"op": "query", "domain": args.domain, "what": what, "timeout": timeout}
    try:
        reply = asyncio.run(control_request(config.control_socket, request, timeout + 5.0))
    except AgentError as exc:
        return _fail(str(exc))
    if not reply.get("ok"):
        return _fail(str(reply.get("error") or "the agent reported an unspecified error"))
    print(json.dumps(reply.get("reply"), indent=2, sort_keys=True))
    return 0


# --------------------------------------------------------------------------- main


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="xenchannel dom0 agent: serves metadata over Xen PV channels"
    )
    parser.add_argument("--version", action="version", version=f"xenchannel {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--config", metavar="FILE", help="INI file with an [agent] section")

    run = commands.add_parser("run", help="run the agent in the foreground")
    run.add_argument("--store", metavar="DIR", help=f"domain store (default {DEFAULT_STORE_DIR})")
    run.add_argument("--state", metavar="DIR", help=f"state records (default {DEFAULT_STATE_DIR})")
    run.add_argument(
        "--socket-root",
        metavar="DIR",
        help=f"channel sockets must live under this directory (default {DEFAULT_SOCKET_ROOT})",
    )
    run.add_argument(
        "--control-socket",
        metavar="PATH",
        help=f"the agent's control socket (default {DEFAULT_CONTROL_SOCKET})",
    )
    run.add_argument("-v", "--verbose", action="store_true", help="log debug events too")
    common(run)
    run.set_defaults(func=cmd_run)

    status = commands.add_parser("status", help="show what happened on each domain's channel")
    status.add_argument("domain", nargs="?", metavar="DOMAIN")
    status.add_argument("--json", action="store_true", help="print the full records as JSON")
    status.add_argument("--state", metavar="DIR", help=f"(default {DEFAULT_STATE_DIR})")
    common(status)
    status.set_defaults(func=cmd_status)

    query = commands.add_parser("query", help="ask a guest's in-guest agent")
    query.add_argument("domain", metavar="DOMAIN")
    query.add_argument("--what", metavar="K1,K2", help="comma-separated names to ask for")
    query.add_argument("--timeout", type=float, metavar="S", help="seconds to wait (default 5)")
    query.add_argument(
        "--control-socket", metavar="PATH", help=f"(default {DEFAULT_CONTROL_SOCKET})"
    )
    common(query)
    query.set_defaults(func=cmd_query)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except AgentError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    return result
