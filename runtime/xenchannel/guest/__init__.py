"""The guest side: opening the channel device and speaking the protocol over it."""

from .client import ClientConfig, GuestClient, Session, fetch
from .device import ChannelDevice, wait_for_path

# cloud-init's result reaches dom0 through xenchannel-report-status (datasource/), which
# runs after cloud-final; the in-guest agent, beside cloud-init, takes the device for good
# only once that program is done.  The order is kept at run time with this marker, not
# with unit ordering: the agent is ordered before network-pre.target and report-status
# after cloud-final (after network-online.target), so ordering one after the other is a
# cycle, and systemd would break it by dropping jobs at boot.
REPORT_STATUS_PROGRAM = "/usr/lib/xenchannel/xenchannel-report-status"
REPORT_STATUS_DONE = "/run/xenchannel/report-status.done"

__all__ = [
    "REPORT_STATUS_DONE",
    "REPORT_STATUS_PROGRAM",
    "ChannelDevice",
    "ClientConfig",
    "GuestClient",
    "Session",
    "fetch",
    "wait_for_path",
]
