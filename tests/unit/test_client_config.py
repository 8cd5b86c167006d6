"""ClientConfig checks every bound the guest client waits or counts by, in one place."""

from typing import Any

import pytest

from xenchannel.guest.client import ClientConfig, ClientConfigError
from xenchannel.protocol import ChannelError


def test_the_defaults_and_the_datasources_short_waits_are_valid() -> None:
    ClientConfig()
    ClientConfig(wait_timeout=0, lock_timeout=0, connect_timeout=0.1, hello_interval=0.2)


@pytest.mark.parametrize("key", [key for key, _low in ClientConfig.SECONDS])
@pytest.mark.parametrize("value", [-1, 3601, "5", True, float("nan")])
def test_every_wait_is_checked(key: str, value: Any) -> None:
    with pytest.raises(ClientConfigError, match=rf"^{key} must be a number of seconds from "):
        ClientConfig(**{key: value})


@pytest.mark.parametrize(
    ("key", "value", "sentence"),
    [
        ("retries", -1, "retries must be a whole number from 0 to 100, not -1"),
        ("retries", 2.5, "retries must be a whole number from 0 to 100, not 2.5"),
        ("max_frame", 100, "max_frame must be a whole number from 4096 to"),
        ("max_bundle_size", 0, "max_bundle_size must be a whole number from 1 to"),
        ("versions", [0], "versions must be protocol version numbers, not [0]"),
    ],
)
def test_counts_and_versions_are_checked(key: str, value: Any, sentence: str) -> None:
    with pytest.raises(ClientConfigError) as raised:
        ClientConfig(**{key: value})
    assert str(raised.value).startswith(sentence)
    assert isinstance(raised.value, ChannelError)  # callers that catch channel errors say it
