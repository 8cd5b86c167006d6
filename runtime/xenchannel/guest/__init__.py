"""The guest side: opening the channel device and speaking the protocol over it."""

from .client import ClientConfig, GuestClient, Session, fetch
from .device import ChannelDevice, wait_for_path

__all__ = ["ChannelDevice", "ClientConfig", "GuestClient", "Session", "fetch", "wait_for_path"]
