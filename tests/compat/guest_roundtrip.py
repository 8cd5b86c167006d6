"""Run by an old interpreter: the guest side of a real exchange, standard library only.

Usage: python3.X guest_roundtrip.py DEVICE
Checks the protocol module in isolation (framing, resync, bundle round trip), then
fetches the bundle over DEVICE from the live dom0 agent the test started, reports
'applied' with the report of this machine (xenchannel.guest.report, run for real: sysfs,
``ip``, host keys), and prints one JSON line with what it received.
"""

import json
import os
import sys

from xenchannel import protocol as P
from xenchannel.guest import ClientConfig, GuestClient, report


def self_check():
    frame = P.encode_message(P.MessageType.HELLO, {"nonce": "n", "versions": [1]}, 7)
    noise = b"AT\r\n\xff\xfe\x07[ 1.0] hvc1: x\r\n" + frame[: len(frame) // 2]
    decoder = P.FrameDecoder()
    items = []
    for i in range(0, len(noise + frame), 3):
        items.extend(decoder.feed((noise + frame)[i : i + 3]))
    frames = [item for item in items if isinstance(item, P.Frame)]
    assert len(frames) == 1 and frames[0].request_id == 7, items
    bundle = P.Bundle({"instance-id": "x"}, bytes(bytearray(range(256))), b"", None)
    assert P.Bundle.decode(bundle.encode()) == bundle
    line = "2: eth0    inet6 2001:db8::10/64 scope global \\       valid_lft forever"
    assert report.parse_ip_addr(line) == {"eth0": ["2001:db8::10/64"]}
    inet6 = "20010db8000000000000000000000010 02 40 00 80     eth0"
    assert report.parse_if_inet6(inet6) == {"eth0": ["2001:db8::10/64"]}
    degraded = {"v1": {"init": {"recoverable_errors": {"WARNING": ["w"]}}}}
    assert report.cloud_init_result({"v1": {}}, degraded) == ("degraded", [], ["WARNING: w"])
    assert report.wait_for_addresses(["127.0.0.1"], 5) == []


def main():
    self_check()
    config = ClientConfig(wait_timeout=10, connect_timeout=20, idle_timeout=5, transfer_timeout=60)
    with GuestClient.open(sys.argv[1], config) as client:
        bundle = client.fetch_bundle()
        facts = report.collect("/", "done")
        acked = client.report_status("applied", instance_id=bundle.instance_id, report=facts)
    print(
        json.dumps(
            {
                "python": "{}.{}".format(*sys.version_info[:2]),
                "sha256": bundle.digest(),
                "instance_id": bundle.instance_id,
                "status_acked": acked,
                "report": facts.body(),
                "pid": os.getpid(),
            }
        )
    )


if __name__ == "__main__":
    main()
