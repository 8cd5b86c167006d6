"""``python -m xenchannel.guest``: fetch the bundle, report status, answer queries.

Meant for people debugging a guest and for the demo; the datasource and the in-guest
agent call ``GuestClient`` directly.  User-data and vendor-data are shown by size and
digest only unless ``--show-user-data`` is given: they may hold secrets.
"""

import argparse
import hashlib
import json
import logging
import os
import socket
import sys
import time
from typing import Any, Dict, List, Optional

from xenchannel import __version__
from xenchannel.protocol import STATUS_STATES, Bundle, ChannelError

from .apply.files import write_file
from .client import ClientConfig, GuestClient

DEFAULT_DEVICE = "/dev/xen-channel/org.xenchannel.provision.0"


def _config(args: argparse.Namespace) -> ClientConfig:
    return ClientConfig(
        wait_timeout=args.wait_timeout,
        connect_timeout=args.connect_timeout,
        transfer_timeout=args.transfer_timeout,
    )


def _describe(data: Optional[bytes], show: bool) -> Any:
    if data is None:
        return None
    if show:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return f"<{len(data)} bytes of binary data>"
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def bundle_report(bundle: Bundle, show_user_data: bool = False) -> Dict[str, Any]:
    """What the guest received, in a printable form."""
    return {
        "meta-data": bundle.meta_data,
        "user-data": _describe(bundle.user_data, show_user_data),
        "vendor-data": _describe(bundle.vendor_data, show_user_data),
        "network-config": bundle.network_config,
        "sha256": bundle.digest(),
    }


def _write_seed(bundle: Bundle, directory: str) -> None:
    """Write the bundle as NoCloud-style files, private to root."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    parts = {
        "meta-data": json.dumps(bundle.meta_data, indent=2).encode(),
        "user-data": bundle.user_data,
        "vendor-data": bundle.vendor_data,
        "network-config": (
            json.dumps(bundle.network_config, indent=2).encode()
            if bundle.network_config is not None
            else None
        ),
    }
    for name, data in parts.items():
        if data is not None:
            write_file(os.path.join(directory, name), data, 0o600, os.getuid(), os.getgid())


def _cmd_fetch(args: argparse.Namespace) -> int:
    with GuestClient.open(args.device, _config(args)) as client:
        bundle = client.fetch_bundle()
        session = client.session
    if args.output:
        _write_seed(bundle, args.output)
    report = bundle_report(bundle, args.show_user_data)
    if session is not None:
        report["handshake"] = {"version": session.version, "hellos": session.hellos}
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    with GuestClient.open(args.device, _config(args)) as client:
        recorded = client.report_status(args.state, args.reason, args.instance_id)
    if not recorded:
        print("dom0 did not acknowledge the status report", file=sys.stderr)
        return 1
    return 0


def basic_answers(keys: List[str]) -> Dict[str, Any]:
    """Answers this client can give without the in-guest agent's records."""
    answers = {}  # type: Dict[str, Any]
    for key in keys or ["version", "hostname", "uptime"]:
        if key == "version":
            answers[key] = __version__
        elif key == "hostname":
            answers[key] = socket.gethostname()
        elif key == "uptime":
            try:
                with open("/proc/uptime") as handle:
                    answers[key] = float(handle.read().split()[0])
            except (OSError, ValueError, IndexError):
                answers[key] = None
        else:
            answers[key] = None
    return answers


def _cmd_serve(args: argparse.Namespace) -> int:
    with GuestClient.open(args.device, _config(args)) as client:
        count = client.serve_queries(basic_answers, args.duration)
    print(f"answered {count} queries")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="xenchannel-guest", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=DEFAULT_DEVICE, help="channel device path")
    parser.add_argument("--wait-timeout", type=float, default=30.0, metavar="S")
    parser.add_argument("--connect-timeout", type=float, default=30.0, metavar="S")
    parser.add_argument("--transfer-timeout", type=float, default=300.0, metavar="S")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command")
    fetch_cmd = sub.add_parser("fetch", help="fetch, verify and acknowledge the bundle")
    fetch_cmd.add_argument("--output", metavar="DIR", help="also write the parts here (0600)")
    fetch_cmd.add_argument("--show-user-data", action="store_true")
    status_cmd = sub.add_parser("status", help="report applied/failed to dom0")
    status_cmd.add_argument("state", choices=STATUS_STATES)
    status_cmd.add_argument("--reason")
    status_cmd.add_argument("--instance-id")
    serve_cmd = sub.add_parser("serve", help="answer dom0's queries for a while")
    serve_cmd.add_argument("--duration", type=float, default=60.0, metavar="S")
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.DEBUG
        if args.verbose > 1
        else logging.INFO
        if args.verbose
        else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.Formatter.converter = time.gmtime
    handlers = {"fetch": _cmd_fetch, "status": _cmd_status, "serve": _cmd_serve}
    try:
        return handlers[args.command](args)
    except ChannelError as exc:
        print(f"xenchannel-guest: {exc}", file=sys.stderr)
        return 1
