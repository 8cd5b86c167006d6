"""A simulated domain for the role tests, run inside the host sandbox by Debian's python3.

It plays QEMU (the channel socket under the agent's socket root, bridged to a pty, by the
testbed's simulator) and the guest (the working tree's guest client): it fetches
the bundle, optionally reports a status, prints the bundle's meta-data as JSON and, with
``--linger``, keeps the "domain" running until it is killed.  Every wait is bounded.
"""

import argparse
import json
import os
import sys
import tempfile
import time

# Only the dom0 agent under test comes from what the role installed; QEMU's and the
# guest's parts come from the working tree (a dom0 has no guest code installed).
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [os.path.join(REPO, "runtime"), REPO]

from testbed.simulator import SimulatorOptions, SimulatorThread  # noqa: E402
from xenchannel.guest import ClientConfig, GuestClient  # noqa: E402

CONFIG = ClientConfig(
    wait_timeout=5.0,
    lock_timeout=2.0,
    connect_timeout=10.0,
    hello_interval=0.2,
    hello_max_interval=1.0,
    idle_timeout=2.0,
    transfer_timeout=30.0,
    ack_timeout=2.0,
)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--report", choices=["applied", "failed", "none"], default="none")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--linger", type=float, default=0.0, help="seconds to stay up after")
    args = parser.parse_args()
    link = os.path.join(tempfile.mkdtemp(prefix="xc-guest-"), "channel")
    deadline = time.monotonic() + args.timeout
    with SimulatorThread() as simulator:
        simulator.add_channel(args.socket, link, SimulatorOptions(rate=None))
        last = None
        while time.monotonic() < deadline:
            try:
                with GuestClient.open(link, CONFIG) as client:
                    bundle = client.fetch_bundle()
                    iid = bundle.meta_data.get("instance-id")
                    if args.report != "none":
                        reason = "simulated failure" if args.report == "failed" else None
                        if not client.report_status(args.report, reason, iid):
                            raise RuntimeError("dom0 did not acknowledge the status")
                print(json.dumps({"meta_data": bundle.meta_data}))
                sys.stdout.flush()
                time.sleep(args.linger)
                return 0
            except Exception as exc:  # the agent may not have found the domain yet
                last = exc
                time.sleep(0.5)
        print(f"simulated guest: no bundle within {args.timeout} s: {last}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
