"""Behaviour tests for runtime/xenchannel/protocol.py (frames, messages, bundles).

docs/protocol.md is the specification these tests hold the module to.  Property-based
tests of the frame decoder live in tests/fuzz/test_decoder_fuzz.py.
"""

import gzip
import hashlib
import json
import random
import re
import struct
import zlib
from typing import Any, Dict, Iterable, List, Optional, Tuple

import pytest

from xenchannel import protocol, session
from xenchannel.protocol import (
    Bundle,
    BundleError,
    Frame,
    FrameDecoder,
    FrameTooLarge,
    MessageType,
    ProtocolError,
    Sender,
    Skipped,
    VersionMismatch,
)
from xenchannel.session import BundleBegin, BundleEnd, BundleReceiver, Resume

ALL_BYTES = bytes(range(256))
FRAME_OVERHEAD = 1 + protocol.HEADER_SIZE + protocol.TRAILER_SIZE  # marker + header + trailer
VALID_META = {"instance-id": "i-0123456789abcdef", "local-hostname": "web-1.example.com"}


# --------------------------------------------------------------------------- helpers


def decode(data: bytes, max_payload: int = protocol.DEFAULT_MAX_PAYLOAD, step: int = 0) -> list:
    """Everything a fresh decoder reports for ``data`` (fed in ``step``-byte pieces)."""
    decoder = FrameDecoder(max_payload)
    if not step:
        return decoder.feed(data)
    out = []
    for i in range(0, len(data), step):
        out.extend(decoder.feed(data[i : i + step]))
    return out


def frames_of(items: Iterable[Any]) -> List[Frame]:
    return [item for item in items if isinstance(item, Frame)]


def skips_of(items: Iterable[Any]) -> List[Skipped]:
    return [item for item in items if isinstance(item, Skipped)]


def frame(payload: bytes = b"", mtype: int = MessageType.QUERY, request_id: int = 7) -> bytes:
    return protocol.encode_frame(mtype, payload, request_id)


def expected(payload: bytes = b"", mtype: int = MessageType.QUERY, request_id: int = 7) -> Frame:
    return Frame(protocol.CURRENT_VERSION, mtype, 0, request_id, payload)


def header_fields(data: bytes) -> Tuple[Any, ...]:
    """The unstuffed header of an encoded frame whose header needed no stuffing."""
    body = data[1 : 1 + protocol.HEADER_SIZE]
    assert b"\xfe" not in body and b"\xff" not in body, "test frame header must be unstuffed"
    return struct.unpack(">2sBBHIII", body)


def with_header(data: bytes, length: int, fix_crc: bool) -> bytes:
    """``data`` (an encoded frame with an unstuffed header) announcing ``length``."""
    marker, version, mtype, flags, request_id, _, hcrc = header_fields(data)
    head = struct.pack(">2sBBHII", marker, version, mtype, flags, request_id, length)
    if fix_crc:
        hcrc = zlib.crc32(head) & 0xFFFFFFFF
    new = head + struct.pack(">I", hcrc)
    assert b"\xfe" not in new and b"\xff" not in new, "choose a length that needs no stuffing"
    return data[:1] + new + data[1 + protocol.HEADER_SIZE :]


def full_bundle(user_data: Optional[bytes] = b"#cloud-config\nruncmd: [true]\n") -> Bundle:
    return Bundle(
        dict(VALID_META, **{"public-keys": ["ssh-ed25519 AAAA test@example"]}),
        user_data,
        b"#cloud-config\npackages: [htop]\n",
        {"version": 2, "ethernets": {"eth0": {"dhcp4": True}}},
    )


def transfer(
    stream: bytes, receiver: Optional[BundleReceiver] = None, feed_size: int = 4096
) -> Optional[Bundle]:
    """Run a host's bundle frames through a decoder into a receiver, as a guest does."""
    receiver = receiver or BundleReceiver()
    decoder = FrameDecoder()
    result = None
    for i in range(0, len(stream), feed_size):
        for item in decoder.feed(stream[i : i + feed_size]):
            assert isinstance(item, Frame), item
            assert item.is_from(Sender.HOST)
            if item.type == MessageType.BUNDLE_BEGIN:
                receiver.begin(BundleBegin.parse(item.json()))
            elif item.type == MessageType.BUNDLE_CHUNK:
                receiver.chunk(item.payload)
            elif item.type == MessageType.BUNDLE_END:
                result = receiver.end(BundleEnd.parse(item.json()))
    return result


def begin_body(size: int, chunk_size: int = 10, first: int = 0, sha: str = "0" * 64) -> dict:
    return {
        "size": size,
        "chunk_size": chunk_size,
        "chunks": protocol.chunk_count(size, chunk_size),
        "first": first,
        "sha256": sha,
    }


# --------------------------------------------------------------------------- frames


class TestEncodeDecodeFrame:
    @pytest.mark.parametrize("mtype", [pytest.param(t, id=t.name) for t in MessageType])
    def test_round_trip_every_message_type(self, mtype: MessageType) -> None:
        payload = b'{"k":"v"}'
        assert decode(protocol.encode_frame(mtype, payload, 42)) == [
            Frame(protocol.CURRENT_VERSION, mtype, 0, 42, payload)
        ]

    @pytest.mark.parametrize(
        "request_id",
        [
            pytest.param(0, id="zero"),
            pytest.param(1, id="one"),
            pytest.param(0xFEFF, id="stuffed-bytes"),
            pytest.param(0xFFFFFFFF, id="max"),
        ],
    )
    def test_request_id_round_trip(self, request_id: int) -> None:
        data = protocol.encode_frame(MessageType.STATUS, b"{}", request_id)
        assert decode(data) == [
            Frame(protocol.CURRENT_VERSION, MessageType.STATUS, 0, request_id, b"{}")
        ]

    def test_request_id_is_taken_modulo_2_32(self) -> None:
        data = protocol.encode_frame(MessageType.STATUS, b"", -1)
        assert frames_of(decode(data))[0].request_id == 0xFFFFFFFF

    @pytest.mark.parametrize(
        "payload",
        [
            pytest.param(b"", id="empty"),
            pytest.param(ALL_BYTES, id="every-byte"),
            pytest.param(ALL_BYTES[::-1] * 3, id="every-byte-reversed-x3"),
            pytest.param(b"\xff" * 300, id="ff-run"),
            pytest.param(b"\xfe" * 300, id="fe-run"),
            pytest.param(b"\xfe\xff" * 150, id="fe-ff-alternating"),
            pytest.param(b"\xfe\x01\xfe\x02" * 50, id="looks-like-escapes"),
            pytest.param(b"\xfe", id="single-fe"),
            pytest.param(b"\xff", id="single-ff"),
            pytest.param(b"\x00" * 1000, id="zeros"),
            pytest.param(b"XC\x01\x01", id="looks-like-header"),
        ],
    )
    def test_payload_round_trip_and_stuffing(self, payload: bytes) -> None:
        data = frame(payload)
        assert data[0] == 0xFF
        assert data.count(b"\xff") == 1, "0xFF may occur only as the start marker"
        assert decode(data) == [expected(payload)]

    def test_stuffing_uses_the_documented_escapes(self) -> None:
        data = protocol.encode_frame(MessageType.QUERY, b"\xff\xfe", 1)
        assert data.endswith(b"\xfe\x01\xfe\x02" + struct.pack(">I", zlib.crc32(b"\xff\xfe")))

    def test_version_and_flags_are_carried(self) -> None:
        data = protocol.encode_frame(0x7E, b"x", 5, version=200, flags=0xABCD)
        assert decode(data) == [Frame(200, 0x7E, 0xABCD, 5, b"x")]

    def test_wire_layout_matches_the_spec(self) -> None:
        data = protocol.encode_frame(MessageType.HELLO, b"{}", 0x01020304)
        head = struct.pack(">2sBBHII", b"XC", protocol.CURRENT_VERSION, 0x02, 0, 0x01020304, 2)
        assert data == (
            b"\xff"
            + head
            + struct.pack(">I", zlib.crc32(head))
            + b"{}"
            + struct.pack(">I", zlib.crc32(b"{}"))
        )

    def test_encode_message_is_compact_sorted_json(self) -> None:
        data = protocol.encode_message(MessageType.HELLO, {"b": 1, "a": [1, 2]}, 9)
        (got,) = decode(data)
        assert got.payload == b'{"a":[1,2],"b":1}'
        assert got.json() == {"a": [1, 2], "b": 1}

    def test_several_frames_in_one_feed_come_out_in_order(self) -> None:
        payloads = [b"", b"a", ALL_BYTES, b"\xff" * 5]
        data = b"".join(frame(p, request_id=i) for i, p in enumerate(payloads))
        assert decode(data) == [expected(p, request_id=i) for i, p in enumerate(payloads)]

    def test_max_payload_exactly_is_accepted(self) -> None:
        data = protocol.encode_frame(MessageType.QUERY, b"\xff" * 64, 1, max_payload=64)
        assert frames_of(decode(data, max_payload=64))[0].payload == b"\xff" * 64

    def test_encode_too_large_raises_naming_the_sizes(self) -> None:
        with pytest.raises(FrameTooLarge) as info:
            protocol.encode_frame(MessageType.BUNDLE_CHUNK, b"x" * 65, 1, max_payload=64)
        assert isinstance(info.value, ProtocolError)
        assert "65 bytes" in str(info.value)
        assert "64 bytes" in str(info.value)
        assert "BUNDLE_CHUNK" in str(info.value)

    def test_default_maximum_applies_to_encode(self) -> None:
        with pytest.raises(FrameTooLarge):
            protocol.encode_frame(MessageType.QUERY, bytes(protocol.DEFAULT_MAX_PAYLOAD + 1))


class TestFeedSplitting:
    STREAM = (
        b"AT\r"
        + frame(b'{"a":1}', request_id=1)
        + b"noise\xfe"
        + frame(ALL_BYTES * 2, MessageType.BUNDLE_CHUNK, 2)
        + frame(b"x" * 100)[:60]
        + frame(b"", MessageType.KNOCK, 0xFFFFFFFF)
        + b"\xff\xfe\x01junk"
        + frame(b"\xfe\xff" * 40, MessageType.HELLO, 3)
    )
    EXPECTED = [
        expected(b'{"a":1}', request_id=1),
        expected(ALL_BYTES * 2, MessageType.BUNDLE_CHUNK, 2),
        expected(b"", MessageType.KNOCK, 0xFFFFFFFF),
        expected(b"\xfe\xff" * 40, MessageType.HELLO, 3),
    ]

    @pytest.mark.parametrize(
        "step",
        [
            pytest.param(1, id="1-byte"),
            pytest.param(2, id="2-bytes"),
            pytest.param(3, id="3-bytes"),
            pytest.param(17, id="17-bytes"),
            pytest.param(36, id="36-bytes"),
            pytest.param(0, id="all-at-once"),
        ],
    )
    def test_same_frames_however_the_input_is_split(self, step: int) -> None:
        assert frames_of(decode(self.STREAM, step=step)) == self.EXPECTED

    def test_byte_at_a_time_skips_the_same_byte_count(self) -> None:
        whole = FrameDecoder()
        whole.feed(self.STREAM)
        single = FrameDecoder()
        for i in range(len(self.STREAM)):
            single.feed(self.STREAM[i : i + 1])
        assert single.skipped_bytes == whole.skipped_bytes
        assert single.frames_decoded == whole.frames_decoded == len(self.EXPECTED)

    def test_empty_feed_returns_nothing(self) -> None:
        decoder = FrameDecoder()
        assert decoder.feed(b"") == []
        assert decoder.buffered == 0

    @pytest.mark.parametrize(
        "kind", [pytest.param(bytearray, id="bytearray"), pytest.param(memoryview, id="memoryview")]
    )
    def test_accepts_bytes_like_input(self, kind: Any) -> None:
        assert frames_of(FrameDecoder().feed(kind(frame(b"x")))) == [expected(b"x")]


def _rng_bytes(seed: int, size: int, allow_ff: bool) -> bytes:
    rng = random.Random(seed)
    data = bytes(rng.randrange(256) for _ in range(size))
    return data if allow_ff else data.replace(b"\xff", b"\x00")


NOISE = [
    pytest.param(b"AT\r", id="at-probe"),
    pytest.param(b"ATE0\r\n", id="ate0-probe"),
    pytest.param(b"AT\rAT+CGMI\r\nATE0\r\n" * 3, id="modem-manager-burst"),
    pytest.param(b"[    3.141592] hvc1: xenconsole\r\n", id="kernel-line"),
    pytest.param(b"\r\n\x00\x00\x1b[0m", id="control-bytes"),
    pytest.param(_rng_bytes(1, 500, allow_ff=False), id="random-no-ff"),
    pytest.param(_rng_bytes(2, 500, allow_ff=True), id="random-with-ff"),
    pytest.param(_rng_bytes(3, 5000, allow_ff=True), id="random-with-ff-long"),
    pytest.param(b"\xff", id="lone-ff"),
    pytest.param(b"\xff" * 50, id="ff-run"),
    pytest.param(b"\xfe" * 50, id="fe-run"),
    pytest.param(b"\xff\xfe", id="ff-then-dangling-escape"),
    pytest.param(b"\xff\xfe\x03" + b"A" * 40, id="invalid-escape-in-header"),
    pytest.param(b"\xffXC", id="marker-and-magic"),
    pytest.param(b"\xff" + b"XC" + bytes(40), id="header-with-bad-crc"),
    pytest.param(frame(b"partial payload")[:10], id="frame-prefix-in-header"),
    pytest.param(frame(b"partial payload")[:-3], id="frame-prefix-in-payload"),
    pytest.param(frame(b"partial payload")[1:], id="frame-without-marker"),
]


class TestResync:
    @pytest.mark.parametrize("noise", NOISE)
    def test_frames_survive_surrounding_noise(self, noise: bytes) -> None:
        first = expected(b'{"n":1}', MessageType.HELLO, 1)
        second = expected(ALL_BYTES, MessageType.BUNDLE_CHUNK, 2)
        stream = (
            noise
            + frame(first.payload, first.type, 1)
            + noise
            + frame(second.payload, second.type, 2)
            + noise
        )
        for step in (0, 1, 5):
            assert frames_of(decode(stream, step=step)) == [first, second]

    @pytest.mark.parametrize("noise", NOISE)
    def test_noise_alone_yields_no_frame_and_is_reported(self, noise: bytes) -> None:
        decoder = FrameDecoder()
        out = decoder.feed(noise)
        assert frames_of(out) == []
        assert all(isinstance(item, Skipped) and item.size > 0 for item in out)
        # What was not reported is still held as a possible frame start.
        reported = sum(item.size for item in out)
        assert len(noise) - reported in (decoder.buffered, decoder.buffered + 1)

    def test_garbage_bytes_are_reported_as_garbage(self) -> None:
        assert decode(b"ATE0\r\n" + frame(b"x")) == [Skipped("garbage", 6), expected(b"x")]

    def test_garbage_between_frames_in_one_segment(self) -> None:
        out = decode(frame(b"a") + b"junk" + frame(b"b"))
        assert out == [expected(b"a"), Skipped("garbage", 4), expected(b"b")]

    def test_echo_mangled_by_a_cooked_tty_is_dropped(self) -> None:
        sent = protocol.encode_message(MessageType.KNOCK, {"note": "line\none\n"}, 0x0A0A0A0A)
        assert b"\n" in sent
        echoed = sent.replace(b"\n", b"\r\n")
        reply = frame(b'{"nonce":"x"}', MessageType.HELLO, 3)
        out = decode(echoed + reply)
        assert frames_of(out) == [expected(b'{"nonce":"x"}', MessageType.HELLO, 3)]
        assert sum(s.size for s in skips_of(out)) == len(echoed)

    def test_intact_echo_decodes_but_is_not_from_the_peer(self) -> None:
        sent = protocol.encode_message(MessageType.KNOCK, {"versions": [1]})
        (echo,) = decode(sent)
        assert not echo.is_from(Sender.GUEST)

    @pytest.mark.parametrize(
        "cut",
        [
            pytest.param(1, id="marker-only"),
            pytest.param(8, id="in-header"),
            pytest.param(FRAME_OVERHEAD - 4, id="header-complete"),
            pytest.param(0.5, id="half"),
            pytest.param(-1, id="all-but-last-byte"),
        ],
    )
    def test_truncated_frame_followed_by_a_full_frame(self, cut: Any) -> None:
        lost = frame(b"lost payload " * 20, MessageType.BUNDLE_CHUNK, 9)
        cut = int(len(lost) * cut) if isinstance(cut, float) else cut
        half = lost[:cut]
        out = decode(half + frame(b"kept"))
        assert out == [Skipped("truncated frame", len(half)), expected(b"kept")]

    def test_truncated_frame_across_feeds(self) -> None:
        decoder = FrameDecoder()
        lost = frame(b"y" * 100)
        assert decoder.feed(lost[:50]) == []
        assert decoder.buffered == 49
        out = decoder.feed(frame(b"kept"))
        assert out == [Skipped("truncated frame", 50), expected(b"kept")]

    @pytest.mark.parametrize(
        "length",
        [
            pytest.param(3, id="smaller"),
            pytest.param(500, id="larger"),
            pytest.param(0x7F7F7F7F, id="huge"),
        ],
    )
    def test_header_with_corrupted_length_is_garbage(self, length: int) -> None:
        good = frame(b"the real payload", request_id=0x01020304)
        corrupted = with_header(good, length, fix_crc=False)
        out = decode(corrupted + frame(b"next"), max_payload=1024)
        assert out == [Skipped("garbage", len(corrupted)), expected(b"next")]

    def test_header_announcing_more_than_it_has_is_cut_by_the_next_marker(self) -> None:
        good = frame(b"the real payload", request_id=0x01020304)
        lying = with_header(good, 500, fix_crc=True)
        out = decode(lying + frame(b"next"))
        assert out == [Skipped("truncated frame", len(lying)), expected(b"next")]

    def test_header_announcing_less_than_it_has_fails_the_payload_checksum(self) -> None:
        good = frame(b"the real payload", request_id=0x01020304)
        lying = with_header(good, 3, fix_crc=True)
        out = decode(lying + frame(b"next"))
        assert out[0] == Skipped("bad payload checksum", FRAME_OVERHEAD + 3)
        assert sum(s.size for s in skips_of(out)) == len(lying)
        assert frames_of(out) == [expected(b"next")]

    def test_flipped_payload_bit(self) -> None:
        bad = bytearray(frame(b"hello world"))
        bad[FRAME_OVERHEAD - 4] ^= 0x01  # first payload byte: "h" -> "i"
        out = decode(bytes(bad) + frame(b"next"))
        assert out == [Skipped("bad payload checksum", len(bad)), expected(b"next")]

    def test_flipped_header_bit(self) -> None:
        bad = bytearray(frame(b"hello world"))
        bad[4] ^= 0x01  # the type byte
        out = decode(bytes(bad) + frame(b"next"))
        assert out == [Skipped("garbage", len(bad)), expected(b"next")]

    def test_invalid_escape_in_payload(self) -> None:
        bad = frame(b"ab\xffcd").replace(b"\xfe\x01", b"\xfe\x03")
        out = decode(bad + frame(b"next"))
        assert out == [Skipped("malformed frame body", len(bad)), expected(b"next")]

    def test_invalid_escape_in_header(self) -> None:
        bad = b"\xff" + b"\xfe\x03" * protocol.HEADER_SIZE
        out = decode(bad + frame(b"next"))
        assert skips_of(out)[0].reason == "invalid escape in frame header"
        assert sum(s.size for s in skips_of(out)) == len(bad)
        assert frames_of(out) == [expected(b"next")]

    def test_reset_forgets_a_partial_frame(self) -> None:
        decoder = FrameDecoder()
        data = frame(b"z" * 50)
        decoder.feed(data[:30])
        assert decoder.buffered > 0
        decoder.reset()
        assert decoder.buffered == 0
        out = decoder.feed(data[30:] + frame(b"next"))
        assert frames_of(out) == [expected(b"next")]


class TestOversized:
    MAX = 64
    BOUND = 2 * (MAX + protocol.HEADER_SIZE + protocol.TRAILER_SIZE) + 2

    def test_oversized_frame_is_skipped_while_streaming(self) -> None:
        big = protocol.encode_frame(
            MessageType.BUNDLE_CHUNK, ALL_BYTES * 40, 3, max_payload=1 << 20
        )
        decoder = FrameDecoder(self.MAX)
        out: list = []
        for i in range(0, len(big), 16):
            out.extend(decoder.feed(big[i : i + 16]))
            assert decoder.buffered <= self.BOUND
        out.extend(decoder.feed(frame(b"next")))
        skips = skips_of(out)
        assert "oversized" in skips[0].reason
        assert "BUNDLE_CHUNK" in skips[0].reason
        assert str(256 * 40) in skips[0].reason
        assert str(self.MAX) in skips[0].reason
        assert sum(s.size for s in skips) == len(big)
        assert frames_of(out) == [expected(b"next")]

    def test_oversized_frame_payload_is_never_buffered(self) -> None:
        big = protocol.encode_frame(MessageType.QUERY, b"A" * 100_000, 3, max_payload=1 << 20)
        decoder = FrameDecoder(self.MAX)
        peak = 0
        for i in range(0, len(big), 100):
            decoder.feed(big[i : i + 100])
            peak = max(peak, decoder.buffered)
        assert peak <= 2 * protocol.HEADER_SIZE

    def test_oversized_frame_in_one_feed(self) -> None:
        big = protocol.encode_frame(MessageType.QUERY, b"A" * 1000, 3, max_payload=1 << 20)
        decoder = FrameDecoder(self.MAX)
        out = decoder.feed(big + frame(b"next"))
        assert decoder.buffered == 0
        assert "oversized" in out[0].reason
        assert frames_of(out) == [expected(b"next")]

    def test_worst_case_stuffing_stays_within_the_bound(self) -> None:
        worst = protocol.encode_frame(MessageType.QUERY, b"\xff" * self.MAX, 0xFFFFFFFF)
        decoder = FrameDecoder(self.MAX)
        out: list = []
        for i in range(len(worst)):
            out.extend(decoder.feed(worst[i : i + 1]))
            assert decoder.buffered <= self.BOUND
        assert out == [expected(b"\xff" * self.MAX, request_id=0xFFFFFFFF)]

    def test_escape_flood_stays_within_the_bound(self) -> None:
        head = frame(b"\x00" * self.MAX)[: FRAME_OVERHEAD - 4]
        decoder = FrameDecoder(self.MAX)
        decoder.feed(head)
        for _ in range(100):
            decoder.feed(b"\xfe" * 7)
            assert decoder.buffered <= self.BOUND
        assert frames_of(decoder.feed(frame(b"next"))) == [expected(b"next")]


class TestIsFrom:
    @pytest.mark.parametrize("mtype", [pytest.param(t, id=t.name) for t in MessageType])
    def test_each_type_has_its_sender(self, mtype: MessageType) -> None:
        f = expected(b"{}", mtype)
        sender = protocol.SENDER[mtype]
        if sender is Sender.EITHER:
            assert f.is_from(Sender.HOST) and f.is_from(Sender.GUEST)
        else:
            other = Sender.GUEST if sender is Sender.HOST else Sender.HOST
            assert f.is_from(sender)
            assert not f.is_from(other)

    @pytest.mark.parametrize(
        ("mtype", "host", "guest"),
        [
            pytest.param(MessageType.KNOCK, True, False, id="knock-host-only"),
            pytest.param(MessageType.BUNDLE_CHUNK, True, False, id="chunk-host-only"),
            pytest.param(MessageType.HELLO, False, True, id="hello-guest-only"),
            pytest.param(MessageType.STATUS, False, True, id="status-guest-only"),
            pytest.param(MessageType.ERROR, True, True, id="error-either"),
            pytest.param(0x7F, False, False, id="unknown-type"),
            pytest.param(0x00, False, False, id="type-zero"),
        ],
    )
    def test_table(self, mtype: int, host: bool, guest: bool) -> None:
        f = expected(b"", mtype)
        assert f.is_from(Sender.HOST) is host
        assert f.is_from(Sender.GUEST) is guest

    def test_every_message_type_has_a_sender(self) -> None:
        assert set(protocol.SENDER) == set(MessageType)

    def test_message_type(self) -> None:
        assert expected(b"", 0x02).message_type() is MessageType.HELLO
        assert expected(b"", 0xEE).message_type() is None


class TestVersions:
    @pytest.mark.parametrize(
        ("ours", "theirs", "chosen"),
        [
            pytest.param([1, 2, 3], [2, 3, 4], 3, id="highest-common"),
            pytest.param([1], [1], 1, id="same"),
            pytest.param([3, 1, 2], [2, 1], 2, id="unsorted"),
            pytest.param((1, 5), [5, 9, 1], 5, id="tuple-and-list"),
        ],
    )
    def test_negotiate(self, ours: List[int], theirs: List[int], chosen: int) -> None:
        assert session.negotiate_version(ours, theirs) == chosen

    def test_no_common_version_names_both_sides(self) -> None:
        with pytest.raises(VersionMismatch) as info:
            session.negotiate_version([1, 2], [4, 3], who="guest")
        message = str(info.value)
        assert "1, 2" in message
        assert "3, 4" in message
        assert "guest" in message
        assert isinstance(info.value, ProtocolError)

    def test_empty_side_is_named_none(self) -> None:
        with pytest.raises(VersionMismatch, match="none"):
            session.negotiate_version([1], [])

    def test_parse_versions_sorts_and_deduplicates(self) -> None:
        assert session.parse_versions({"versions": [3, 1, 3, 2]}, "guest") == [1, 2, 3]

    @pytest.mark.parametrize(
        "body",
        [
            pytest.param({}, id="missing"),
            pytest.param({"versions": []}, id="empty"),
            pytest.param({"versions": None}, id="null"),
            pytest.param({"versions": 1}, id="not-a-list"),
            pytest.param({"versions": "1"}, id="string"),
            pytest.param({"versions": ["1"]}, id="string-element"),
            pytest.param({"versions": [1.0]}, id="float"),
            pytest.param({"versions": [True]}, id="bool"),
            pytest.param({"versions": [1, False]}, id="bool-among-ints"),
            pytest.param({"versions": [0]}, id="zero"),
            pytest.param({"versions": [-1]}, id="negative"),
            pytest.param({"versions": [256]}, id="too-large"),
        ],
    )
    def test_parse_versions_rejects(self, body: Dict[str, Any]) -> None:
        with pytest.raises(ProtocolError, match="guest's HELLO"):
            session.parse_versions(body, "guest")

    def test_current_version_is_spoken(self) -> None:
        assert max(protocol.PROTOCOL_VERSIONS) == protocol.CURRENT_VERSION


class TestJson:
    @pytest.mark.parametrize(
        "payload",
        [
            pytest.param(b"\xff\xfe{}", id="invalid-utf8"),
            pytest.param(b'{"a":"\xc3"}', id="truncated-utf8"),
            pytest.param(b"{", id="invalid-json"),
            pytest.param(b"", id="empty"),
            pytest.param(b'{"a":1} x', id="trailing-data"),
            pytest.param(b"[1,2]", id="array"),
            pytest.param(b"1", id="number"),
            pytest.param(b'"s"', id="string"),
            pytest.param(b"null", id="null"),
        ],
    )
    def test_decode_json_rejects(self, payload: bytes) -> None:
        with pytest.raises(ProtocolError):
            protocol.decode_json(payload)

    @pytest.mark.parametrize(
        "payload",
        [
            pytest.param(b"[" * 100_000, id="nested-arrays"),
            pytest.param(b'{"a":' * 100_000, id="nested-objects"),
        ],
    )
    def test_decode_json_rejects_deep_nesting(self, payload: bytes) -> None:
        with pytest.raises(ProtocolError):
            protocol.decode_json(payload)

    def test_round_trip_unicode(self) -> None:
        body = {"name": "caf\u00e9 \u2603", "n": [1, None, True]}
        assert protocol.decode_json(protocol.encode_json(body)) == body

    def test_frame_json(self) -> None:
        assert expected(b'{"a":1}').json() == {"a": 1}
        with pytest.raises(ProtocolError):
            expected(b"[]").json()

    def test_error_message_round_trip(self) -> None:
        (f,) = decode(session.error_message(protocol.ERR_NO_BUNDLE, "no bundle for d1", 77))
        assert f.type == MessageType.ERROR and f.request_id == 77
        with pytest.raises(protocol.RemoteError) as info:
            session.raise_if_error(f)
        assert info.value.code == "no-bundle"
        assert info.value.remote_message == "no bundle for d1"
        assert "no-bundle" in str(info.value)

    def test_raise_if_error_ignores_other_types(self) -> None:
        session.raise_if_error(expected(b"not json", MessageType.QUERY))


# --------------------------------------------------------------------------- bundles


class TestBundleEncoding:
    @pytest.mark.parametrize(
        "user_data",
        [
            pytest.param(None, id="absent"),
            pytest.param(b"", id="empty"),
            pytest.param(b"#cloud-config\nhostname: x\n", id="cloud-config"),
            pytest.param(gzip.compress(b"#!/bin/sh\necho hi\n" * 100), id="gzip"),
            pytest.param(ALL_BYTES * 4, id="every-byte"),
            pytest.param(b"\n\n\nXCB1\n", id="newlines-and-magic"),
        ],
    )
    def test_round_trip_user_data(self, user_data: Optional[bytes]) -> None:
        bundle = full_bundle(user_data)
        decoded = Bundle.decode(bundle.encode())
        assert decoded.user_data == user_data
        assert decoded.meta_data == bundle.meta_data
        assert decoded.vendor_data == bundle.vendor_data
        assert decoded.network_config == bundle.network_config
        assert decoded == bundle

    def test_vendor_data_absent_and_empty_are_distinct(self) -> None:
        absent = Bundle(VALID_META, b"u", None)
        empty = Bundle(VALID_META, b"u", b"")
        assert Bundle.decode(absent.encode()).vendor_data is None
        assert Bundle.decode(empty.encode()).vendor_data == b""
        assert absent != empty
        assert absent.digest() != empty.digest()

    @pytest.mark.parametrize(
        "config",
        [
            pytest.param(None, id="absent"),
            pytest.param(
                {
                    "version": 1,
                    "config": [
                        {"type": "physical", "name": "eth0", "subnets": [{"type": "dhcp"}]},
                        {"type": "nameserver", "address": ["192.0.2.53"]},
                    ],
                },
                id="v1",
            ),
            pytest.param(
                {
                    "version": 2,
                    "ethernets": {
                        "eth0": {"addresses": ["192.0.2.10/24"], "gateway4": "192.0.2.1"}
                    },
                },
                id="v2",
            ),
            pytest.param(
                {"network": {"version": 2, "ethernets": {"eth0": {"dhcp4": True}}}},
                id="v2-under-network",
            ),
        ],
    )
    def test_round_trip_network_config(self, config: Optional[Dict[str, Any]]) -> None:
        bundle = Bundle(VALID_META, None, None, config)
        bundle.validate()
        assert Bundle.decode(bundle.encode()).network_config == config

    def test_encoding_layout(self) -> None:
        data = Bundle({"instance-id": "i"}, b"ud").encode()
        assert data == (
            b'XCB1\n{"parts":[["meta-data",19],["user-data",2]]}\n{"instance-id":"i"}ud'
        )

    def test_digest_is_sha256_of_the_encoding(self) -> None:
        bundle = full_bundle()
        assert bundle.digest() == hashlib.sha256(bundle.encode()).hexdigest()

    def test_properties(self) -> None:
        bundle = full_bundle()
        assert bundle.instance_id == VALID_META["instance-id"]
        assert bundle.hostname == VALID_META["local-hostname"]
        assert Bundle({"instance-id": 5}).instance_id is None
        assert Bundle({}).hostname is None

    def test_repr_never_shows_user_or_vendor_data(self) -> None:
        bundle = Bundle(VALID_META, b"password: hunter2-SECRET", b"VENDOR-SECRET")
        text = repr(bundle)
        assert "SECRET" not in text
        assert "hunter2" not in text
        assert "<24 bytes>" in text
        assert VALID_META["instance-id"] in text
        assert "absent" in repr(Bundle(VALID_META))

    def test_not_hashable(self) -> None:
        with pytest.raises(TypeError):
            hash(full_bundle())


class TestBundleValidate:
    def test_valid_bundle_passes(self) -> None:
        full_bundle().validate()

    @pytest.mark.parametrize("part", ["meta-data", "network-config"])
    def test_nesting_past_the_limit_is_refused(self, part: str) -> None:
        deep: Any = "leaf"
        for _ in range(protocol.MAX_JSON_DEPTH):
            deep = [deep]
        meta: Dict[str, Any] = {"instance-id": "iid-1"}
        network: Dict[str, Any] = {"version": 2, "ethernets": {}}
        (meta if part == "meta-data" else network)["x"] = deep
        with pytest.raises(BundleError, match=f"{part} nests more than 64 levels"):
            Bundle(meta, None, None, network).validate()
        assert not protocol.json_too_deep([[1]], limit=2)
        assert protocol.json_too_deep([[[1]]], limit=2)

    @pytest.mark.parametrize(
        "keys",
        [
            pytest.param("ssh-ed25519 AAAA", id="string"),
            pytest.param(["a", "b"], id="list"),
            pytest.param({"admin": "a", "ops": ["b", "c"]}, id="mapping"),
        ],
    )
    def test_public_keys_accepted(self, keys: Any) -> None:
        Bundle(dict(VALID_META, **{"public-keys": keys})).validate()

    @pytest.mark.parametrize(
        "hostname",
        [
            pytest.param("a", id="one-char"),
            pytest.param("web-1", id="label"),
            pytest.param("a" * 63, id="63-char-label"),
            pytest.param("a.b.example.com", id="fqdn"),
            pytest.param("0host", id="leading-digit"),
        ],
    )
    def test_hostnames_accepted(self, hostname: str) -> None:
        protocol.validate_hostname(hostname)

    @pytest.mark.parametrize(
        ("meta", "sentence"),
        [
            pytest.param({}, "meta-data has no instance-id", id="missing-instance-id"),
            pytest.param({"instance-id": ""}, "has no instance-id", id="empty-instance-id"),
            pytest.param({"instance-id": "  "}, "has no instance-id", id="blank-instance-id"),
            pytest.param({"instance-id": 42}, "has no instance-id", id="int-instance-id"),
            pytest.param({"instance-id": "a/b"}, "without '/'", id="instance-id-slash"),
            pytest.param({"instance-id": "a\nb"}, "is not usable", id="instance-id-newline"),
            pytest.param({"instance-id": "a\x00b"}, "is not usable", id="instance-id-nul"),
            pytest.param({"instance-id": "i" * 256}, "at most 255", id="instance-id-too-long"),
            pytest.param(
                dict(VALID_META, **{"local-hostname": "bad_host!"}),
                "'bad_host!' is not a valid hostname",
                id="hostname-bad-chars",
            ),
            pytest.param(
                dict(VALID_META, **{"local-hostname": "a" * 64}),
                "is not a valid hostname",
                id="hostname-64-char-label",
            ),
            pytest.param(
                dict(VALID_META, **{"local-hostname": "-web"}),
                "is not a valid hostname",
                id="hostname-leading-hyphen",
            ),
            pytest.param(
                dict(VALID_META, **{"local-hostname": "a..b"}),
                "is not a valid hostname",
                id="hostname-empty-label",
            ),
            pytest.param(
                dict(VALID_META, **{"local-hostname": ".".join(["a" * 63] * 4)}),
                "is not a valid hostname",
                id="hostname-over-253",
            ),
            pytest.param(
                dict(VALID_META, **{"local-hostname": 7}),
                "is not a valid hostname",
                id="hostname-not-a-string",
            ),
            pytest.param(
                dict(VALID_META, **{"public-keys": 5}),
                "public-keys must be a string",
                id="public-keys-int",
            ),
            pytest.param(
                dict(VALID_META, **{"public-keys": ["a", 1]}),
                "public-keys must be a string",
                id="public-keys-list-with-int",
            ),
            pytest.param(
                dict(VALID_META, **{"public-keys": {"a": {"b": "c"}}}),
                "public-keys must be a string",
                id="public-keys-nested-mapping",
            ),
        ],
    )
    def test_meta_data_errors(self, meta: Dict[str, Any], sentence: str) -> None:
        with pytest.raises(BundleError) as info:
            Bundle(meta).validate()
        assert sentence in str(info.value)

    @pytest.mark.parametrize(
        "hostname",
        [
            pytest.param("myhost\n", id="label-newline"),
            pytest.param("a.example.com\n", id="fqdn-newline"),
        ],
    )
    def test_hostname_with_trailing_newline_rejected(self, hostname: str) -> None:
        with pytest.raises(BundleError):
            protocol.validate_hostname(hostname)

    def test_meta_data_must_be_a_mapping(self) -> None:
        with pytest.raises(BundleError, match="mapping"):
            Bundle(["instance-id"]).validate()  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("config", "sentence"),
        [
            pytest.param({"version": 3}, "version 3 is not supported", id="version-3"),
            pytest.param(
                {},
                "network-config has no version key; add one, as in version: 2 with "
                "ethernets (and bonds, bridges, vlans, wifis), or version: 1 with a config "
                "list",
                id="no-version",
            ),
            pytest.param(
                {"version": "2"},
                "network-config version is the string '2'; write the number, version: 2 "
                "without quotes",
                id="string-version",
            ),
            pytest.param(
                {"network": {"version": "1", "config": []}},
                "version is the string '1'; write the number, version: 1 without quotes",
                id="wrapped-string-version",
            ),
            pytest.param(
                {"version": True, "config": []},
                "network-config version true is not supported; use version 1 or 2 (the number)",
                id="boolean-version",
            ),
            pytest.param(
                {"version": None}, "network-config version null is not supported", id="null"
            ),
            pytest.param(
                [{"version": 2}],
                "network-config must be a mapping, not a list; write it as version: 2",
                id="a-list",
            ),
            pytest.param({"version": 1}, "needs a 'config' list", id="v1-no-config"),
            pytest.param({"version": 1, "config": {}}, "needs a 'config' list", id="v1-config-map"),
            pytest.param(
                {"version": 2, "ethernet": {}}, "unknown key 'ethernet'", id="v2-unknown-key"
            ),
            pytest.param(
                {"version": 2, "ethernets": []}, "'ethernets' must be a mapping", id="v2-list"
            ),
            pytest.param(
                {"network": {"version": 3}}, "version 3 is not supported", id="wrapped-v3"
            ),
            pytest.param({"network": 5}, "must be a mapping", id="wrapped-not-a-mapping"),
        ],
    )
    def test_network_config_errors(self, config: Dict[str, Any], sentence: str) -> None:
        with pytest.raises(BundleError) as info:
            Bundle(VALID_META, network_config=config).validate()
        assert sentence in str(info.value)

    def test_v2_unknown_key_lists_the_known_ones(self) -> None:
        with pytest.raises(BundleError, match="use one of bonds, bridges, ethernets"):
            protocol.validate_network_config({"version": 2, "foo": {}})

    @pytest.mark.parametrize("name", [pytest.param("user-data"), pytest.param("vendor-data")])
    def test_opaque_parts_must_be_bytes(self, name: str) -> None:
        kwargs = {name.replace("-", "_"): "text, not bytes"}
        with pytest.raises(BundleError, match=f"{name} must be bytes, not str"):
            Bundle(VALID_META, **kwargs).validate()

    def test_oversized_bundle(self) -> None:
        bundle = Bundle(VALID_META, b"x" * 1000)
        size = len(bundle.encode())
        bundle.validate(max_size=size)
        with pytest.raises(BundleError) as info:
            bundle.validate(max_size=size - 1)
        assert f"{size} bytes" in str(info.value)
        assert f"maximum of {size - 1} bytes" in str(info.value)
        assert "gzip" in str(info.value)


def _raw_bundle(index: Any, body: bytes) -> bytes:
    return b"XCB1\n" + json.dumps({"parts": index}).encode() + b"\n" + body


META_BYTES = b'{"instance-id":"i"}'


class TestBundleDecode:
    @pytest.mark.parametrize(
        ("data", "sentence"),
        [
            pytest.param(b"XCB2\n{}\n", "bundle marker", id="wrong-magic"),
            pytest.param(b"", "bundle marker", id="empty"),
            pytest.param(b'XCB1\n{"parts":[]}', "no part index", id="no-index-newline"),
            pytest.param(b"XCB1\n{nope\n", "index is not JSON", id="index-not-json"),
            pytest.param(b'XCB1\n{"parts":{}}\n', "not a list", id="index-not-a-list"),
            pytest.param(b"XCB1\n{}\n", "not a list", id="index-without-parts"),
            pytest.param(
                _raw_bundle([["meta-data", 19]], META_BYTES[:-1]),
                "shorter than its index",
                id="truncated-part",
            ),
            pytest.param(
                _raw_bundle([["meta-data", 19], ["user-data", 10]], META_BYTES + b"abc"),
                "shorter than its index",
                id="truncated-last-part",
            ),
            pytest.param(
                _raw_bundle([["meta-data", 19]], META_BYTES + b"x"),
                "bytes after its last part",
                id="trailing-bytes",
            ),
            pytest.param(
                _raw_bundle([["meta-data", 19], ["meta-data", 19]], META_BYTES * 2),
                "malformed",
                id="duplicate-part",
            ),
            pytest.param(
                _raw_bundle(
                    [["meta-data", 19], ["user-data", 1], ["user-data", 1]], META_BYTES + b"ab"
                ),
                "malformed",
                id="duplicate-user-data",
            ),
            pytest.param(
                _raw_bundle([["meta-data", 19], ["secrets", 1]], META_BYTES + b"x"),
                "malformed",
                id="unknown-part",
            ),
            pytest.param(_raw_bundle([["meta-data", -1]], b""), "malformed", id="negative-size"),
            pytest.param(
                _raw_bundle([["meta-data", "19"]], META_BYTES), "malformed", id="string-size"
            ),
            pytest.param(_raw_bundle([["meta-data"]], META_BYTES), "malformed", id="short-entry"),
            pytest.param(_raw_bundle(["meta-data"], META_BYTES), "malformed", id="entry-not-list"),
            pytest.param(_raw_bundle([["user-data", 2]], b"ud"), "no meta-data", id="no-meta-data"),
            pytest.param(_raw_bundle([], b""), "no meta-data", id="no-parts"),
        ],
    )
    def test_rejects(self, data: bytes, sentence: str) -> None:
        with pytest.raises(BundleError) as info:
            Bundle.decode(data)
        assert sentence in str(info.value)

    @pytest.mark.parametrize(
        "data",
        [
            pytest.param(_raw_bundle([["meta-data", 4]], b"nope"), id="meta-data-not-json"),
            pytest.param(_raw_bundle([["meta-data", 2]], b"[]"), id="meta-data-array"),
            pytest.param(
                _raw_bundle([["meta-data", 19], ["network-config", 3]], META_BYTES + b"\xff{}"),
                id="network-config-not-utf8",
            ),
        ],
    )
    def test_rejects_json_part_that_is_not_an_object(self, data: bytes) -> None:
        with pytest.raises(BundleError):
            Bundle.decode(data)

    def test_parts_in_any_index_order(self) -> None:
        data = _raw_bundle([["user-data", 2], ["meta-data", 19]], b"ud" + META_BYTES)
        bundle = Bundle.decode(data)
        assert bundle.user_data == b"ud"
        assert bundle.meta_data == {"instance-id": "i"}


class TestBundleTransfer:
    @pytest.mark.parametrize(
        ("chunk_size", "user_data"),
        [
            pytest.param(1, b"#!/bin/sh\n" + ALL_BYTES, id="chunk-1"),
            pytest.param(7, gzip.compress(ALL_BYTES * 8), id="chunk-7"),
            pytest.param(
                32768,
                bytes(random.Random(4).randrange(256) for _ in range(100_000)),
                id="chunk-32k",
            ),
            pytest.param(32768, b"", id="chunk-32k-empty-user-data"),
            pytest.param(7, b"", id="chunk-7-empty-user-data"),
        ],
    )
    def test_full_transfer(self, chunk_size: int, user_data: bytes) -> None:
        bundle = full_bundle(user_data)
        encoded = bundle.encode()
        frames = list(session.bundle_frames(encoded, 0xABCDEF, chunk_size=chunk_size))
        assert len(frames) == protocol.chunk_count(len(encoded), chunk_size) + 2
        receiver = BundleReceiver()
        received = transfer(b"".join(frames), receiver, feed_size=1000)
        assert received is not None
        assert received == bundle
        assert received.user_data == user_data
        assert receiver.sha256 == bundle.digest()
        assert receiver.progress == (len(encoded), len(encoded))

    def test_transfer_survives_line_noise_between_frames(self) -> None:
        bundle = full_bundle(ALL_BYTES)
        frames = session.bundle_frames(bundle.encode(), 1, chunk_size=64)
        stream = b"".join(b"AT\r" + f + b"[    3.141592] hvc1: xenconsole\r\n" for f in frames)
        decoder = FrameDecoder()
        receiver = BundleReceiver()
        result = None
        for item in frames_of(decoder.feed(stream)):
            if item.type == MessageType.BUNDLE_BEGIN:
                receiver.begin(BundleBegin.parse(item.json()))
            elif item.type == MessageType.BUNDLE_CHUNK:
                receiver.chunk(item.payload)
            else:
                result = receiver.end(BundleEnd.parse(item.json()))
        assert result == bundle

    def test_begin_describes_the_bundle(self) -> None:
        encoded = full_bundle().encode()
        begin = next(session.bundle_frames(encoded, 5, chunk_size=100))
        (f,) = decode(begin)
        assert f.type == MessageType.BUNDLE_BEGIN and f.request_id == 5
        assert f.json() == {
            "size": len(encoded),
            "chunk_size": 100,
            "chunks": protocol.chunk_count(len(encoded), 100),
            "first": 0,
            "sha256": hashlib.sha256(encoded).hexdigest(),
        }

    @pytest.mark.parametrize(
        ("size", "chunk_size", "count"),
        [
            pytest.param(0, 10, 1, id="empty"),
            pytest.param(1, 10, 1, id="one-byte"),
            pytest.param(10, 10, 1, id="exact"),
            pytest.param(11, 10, 2, id="one-over"),
        ],
    )
    def test_chunk_count(self, size: int, chunk_size: int, count: int) -> None:
        assert protocol.chunk_count(size, chunk_size) == count
        chunks = list(protocol.bundle_chunks(b"x" * size, chunk_size))
        assert [seq for seq, _ in chunks] == list(range(count))
        assert b"".join(data for _, data in chunks) == b"x" * size

    def test_digest_mismatch_discards_and_resets(self) -> None:
        encoded = full_bundle(ALL_BYTES).encode()
        frames = list(session.bundle_frames(encoded, 3, chunk_size=64))
        (chunk,) = decode(frames[2])  # chunk 1
        seq_bytes, data = chunk.payload[:4], bytearray(chunk.payload[4:])
        data[10] ^= 0x20
        frames[2] = session.encode_chunk(struct.unpack(">I", seq_bytes)[0], bytes(data), 3)
        receiver = BundleReceiver()
        with pytest.raises(BundleError, match="SHA-256"):
            transfer(b"".join(frames), receiver)
        assert receiver.sha256 is None
        assert receiver.resume() is None
        assert receiver.progress[0] == 0
        # A fresh transfer afterwards succeeds.
        again = transfer(b"".join(session.bundle_frames(encoded, 4, chunk_size=64)), receiver)
        assert again == full_bundle(ALL_BYTES)

    def test_end_with_a_different_digest_is_rejected(self) -> None:
        encoded = full_bundle().encode()
        frames = list(session.bundle_frames(encoded, 3, chunk_size=64))
        frames[-1] = protocol.encode_message(MessageType.BUNDLE_END, {"sha256": "0" * 64}, 3)
        receiver = BundleReceiver()
        with pytest.raises(BundleError):
            transfer(b"".join(frames), receiver)
        assert receiver.sha256 is None

    def test_out_of_order_chunk(self) -> None:
        encoded = full_bundle(ALL_BYTES).encode()
        receiver = BundleReceiver()
        receiver.begin(
            BundleBegin.parse(begin_body(len(encoded), 64, sha=hashlib.sha256(encoded).hexdigest()))
        )
        chunks = list(protocol.bundle_chunks(encoded, 64))
        receiver.chunk(struct.pack(">I", 0) + chunks[0][1])
        with pytest.raises(ProtocolError, match="chunk 2 arrived where chunk 1 was expected"):
            receiver.chunk(struct.pack(">I", 2) + chunks[2][1])
        # A gap keeps what arrived: the missing chunk is still the one expected.
        receiver.chunk(struct.pack(">I", 1) + chunks[1][1])
        assert receiver.progress == (128, len(encoded))

    def test_chunk_errors(self) -> None:
        receiver = BundleReceiver()
        with pytest.raises(ProtocolError, match="before BUNDLE_BEGIN"):
            receiver.chunk(b"\x00\x00\x00\x00data")
        receiver.begin(BundleBegin.parse(begin_body(25, 10)))
        with pytest.raises(ProtocolError, match="too short"):
            receiver.chunk(b"\x00\x00")
        with pytest.raises(ProtocolError, match="wrong length"):
            receiver.chunk(b"\x00\x00\x00\x00" + b"x" * 9)
        receiver.begin(BundleBegin.parse(begin_body(25, 10)))  # the error discarded the transfer
        receiver.chunk(b"\x00\x00\x00\x00" + b"x" * 10)
        receiver.chunk(b"\x00\x00\x00\x01" + b"x" * 10)
        with pytest.raises(ProtocolError, match="wrong length"):
            receiver.chunk(b"\x00\x00\x00\x02" + b"x" * 10)
        receiver.begin(BundleBegin.parse(begin_body(25, 10)))
        receiver.chunk(b"\x00\x00\x00\x00" + b"x" * 10)
        with pytest.raises(ProtocolError, match="after 1 of 3 chunks"):
            receiver.end(BundleEnd.parse({"sha256": "0" * 64}))

    def test_end_before_begin(self) -> None:
        with pytest.raises(ProtocolError):
            BundleReceiver().end(BundleEnd.parse({"sha256": "0" * 64}))

    def test_begin_over_max_size(self) -> None:
        receiver = BundleReceiver(max_size=1000)
        receiver.begin(BundleBegin.parse(begin_body(1000)))
        with pytest.raises(BundleError) as info:
            BundleReceiver(max_size=1000).begin(BundleBegin.parse(begin_body(1001)))
        assert "1001-byte bundle" in str(info.value)
        assert "maximum of 1000 bytes" in str(info.value)

    def test_default_max_size_is_16_mib(self) -> None:
        with pytest.raises(BundleError):
            BundleReceiver().begin(BundleBegin.parse(begin_body(16 * 1024 * 1024 + 1, 32768)))

    @pytest.mark.parametrize(
        "body",
        [
            pytest.param({}, id="empty"),
            pytest.param({"size": 10, "chunk_size": 10, "chunks": 1}, id="no-sha256"),
            pytest.param(
                {"size": "ten", "chunk_size": 10, "chunks": 1, "sha256": "x"}, id="size-not-int"
            ),
            pytest.param(
                {"size": None, "chunk_size": 10, "chunks": 1, "sha256": "x"}, id="size-null"
            ),
        ],
    )
    def test_begin_missing_fields(self, body: Dict[str, Any]) -> None:
        with pytest.raises(ProtocolError, match="lacks"):
            BundleReceiver().begin(BundleBegin.parse(body))

    @pytest.mark.parametrize(
        "body",
        [
            pytest.param(dict(begin_body(25, 10), chunks=2), id="wrong-chunk-count"),
            pytest.param(dict(begin_body(25, 10), chunk_size=0), id="zero-chunk-size"),
            pytest.param(dict(begin_body(25, 10), chunk_size=-5), id="negative-chunk-size"),
            pytest.param(dict(begin_body(25, 10), first=3), id="first-past-end"),
            pytest.param(dict(begin_body(25, 10), first=-1), id="negative-first"),
        ],
    )
    def test_begin_inconsistent_sizes(self, body: Dict[str, Any]) -> None:
        with pytest.raises(ProtocolError, match="inconsistent"):
            BundleReceiver().begin(BundleBegin.parse(body))

    def test_begin_negative_size(self) -> None:
        with pytest.raises(ProtocolError):
            BundleReceiver().begin(BundleBegin.parse(begin_body(-5, 10)))

    def _partial(self, encoded: bytes, chunk_size: int, k: int) -> BundleReceiver:
        """A receiver that got BEGIN and chunks 0..k of ``encoded``, then lost the link."""
        frames = list(session.bundle_frames(encoded, 11, chunk_size=chunk_size))
        receiver = BundleReceiver()
        assert transfer(b"".join(frames[: k + 2]), receiver) is None
        return receiver

    @pytest.mark.parametrize(
        "k",
        [
            pytest.param(0, id="after-chunk-0"),
            pytest.param(2, id="after-chunk-2"),
            pytest.param(-2, id="before-last"),
        ],
    )
    def test_resume(self, k: int) -> None:
        bundle = full_bundle(ALL_BYTES * 2)
        encoded = bundle.encode()
        count = protocol.chunk_count(len(encoded), 100)
        k = k % count
        receiver = self._partial(encoded, 100, k)
        assert receiver.progress == ((k + 1) * 100, len(encoded))
        assert receiver.resume() == Resume(bundle.digest(), k + 1)
        rest = session.bundle_frames(encoded, 12, chunk_size=100, first=k + 1)
        assert transfer(b"".join(rest), receiver) == bundle

    def test_no_resume_before_any_chunk(self) -> None:
        receiver = BundleReceiver()
        assert receiver.resume() is None
        receiver.begin(BundleBegin.parse(begin_body(25, 10)))
        assert receiver.resume() is None

    @pytest.mark.parametrize(
        "change",
        [
            pytest.param({"sha256": "f" * 64}, id="different-sha256"),
            pytest.param({"first": 2}, id="skips-a-chunk"),
            pytest.param({"chunk_size": 50}, id="different-chunk-size"),
        ],
    )
    def test_resume_of_another_transfer_is_rejected(self, change: Dict[str, Any]) -> None:
        encoded = full_bundle(ALL_BYTES * 2).encode()
        receiver = self._partial(encoded, 100, 0)
        body = begin_body(
            len(encoded), change.get("chunk_size", 100), 1, hashlib.sha256(encoded).hexdigest()
        )
        body.update(change)
        body["chunks"] = protocol.chunk_count(len(encoded), body["chunk_size"])
        with pytest.raises(ProtocolError, match="did not start"):
            receiver.begin(BundleBegin.parse(body))

    def test_resume_on_a_fresh_receiver_is_rejected(self) -> None:
        with pytest.raises(ProtocolError, match="did not start"):
            BundleReceiver().begin(BundleBegin.parse(begin_body(25, 10, first=1)))

    def test_begin_from_zero_restarts(self) -> None:
        old = full_bundle(b"old" * 100)
        new = full_bundle(b"new" * 100)
        receiver = self._partial(old.encode(), 64, 1)
        frames = session.bundle_frames(new.encode(), 13, chunk_size=64)
        assert transfer(b"".join(frames), receiver) == new

    def test_lost_chunk_resumes_from_the_gap(self) -> None:
        """Noise cut chunk 2's frame short: chunk 3 arrives next; resume at 2, complete."""
        bundle = full_bundle(ALL_BYTES)
        encoded = bundle.encode()
        receiver = self._partial(encoded, 64, 1)
        with pytest.raises(ProtocolError, match="chunk 3 arrived where chunk 2 was expected"):
            receiver.chunk(struct.pack(">I", 3) + encoded[3 * 64 : 4 * 64])
        assert receiver.resume() == Resume(bundle.digest(), 2)
        rest = session.bundle_frames(encoded, 12, chunk_size=64, first=2)
        assert transfer(b"".join(rest), receiver) == bundle

    def test_wrong_length_chunk_discards_the_data(self) -> None:
        encoded = full_bundle(ALL_BYTES).encode()
        receiver = self._partial(encoded, 64, 1)
        with pytest.raises(ProtocolError, match="wrong length"):
            receiver.chunk(struct.pack(">I", 2) + encoded[2 * 64 : 3 * 64 - 1])
        assert receiver.resume() is None

    def test_invalid_bundle_with_good_digest_is_rejected_at_end(self) -> None:
        bad = Bundle({"instance-id": "a/b"}).encode()
        with pytest.raises(BundleError, match="not usable"):
            transfer(b"".join(session.bundle_frames(bad, 1)))

    def test_end_validates_against_the_receiver_maximum(self) -> None:
        encoded = full_bundle().encode()
        with pytest.raises(BundleError):
            transfer(
                b"".join(session.bundle_frames(encoded, 1)),
                BundleReceiver(max_size=len(encoded) - 1),
            )


# --------------------------------------------------------------------------- ids


class TestIds:
    def test_nonce_is_32_hex_chars_and_fresh(self) -> None:
        nonces = [protocol.new_nonce() for _ in range(200)]
        assert all(re.fullmatch(r"[0-9a-f]{32}", n) for n in nonces)
        assert len(set(nonces)) == len(nonces)

    def test_request_id_is_non_zero_32_bit(self) -> None:
        ids = [protocol.new_request_id() for _ in range(200)]
        assert all(0 < i <= 0xFFFFFFFF for i in ids)
        assert len(set(ids)) > 190

    def test_request_id_retries_on_zero(self, monkeypatch: pytest.MonkeyPatch) -> None:
        draws = iter([b"\x00\x00\x00\x00", b"\x00\x00\x00\x00", b"\x00\x00\x01\x00"])
        monkeypatch.setattr(protocol.os, "urandom", lambda n: next(draws))
        assert protocol.new_request_id() == 256

    @pytest.mark.parametrize(
        ("current", "following"),
        [
            pytest.param(0xFFFFFFFF, 1, id="wraps-past-zero"),
            pytest.param(0, 1, id="zero"),
            pytest.param(1, 2, id="one"),
            pytest.param(0xFFFFFFFE, 0xFFFFFFFF, id="max-minus-one"),
        ],
    )
    def test_next_request_id(self, current: int, following: int) -> None:
        assert protocol.next_request_id(current) == following


@pytest.mark.parametrize(
    "config,expected",
    [
        (
            {
                "network": {
                    "version": 2,
                    "ethernets": {
                        "lan": {"addresses": ["10.0.0.5/24", "FD00::5/64", {"10.0.1.5/24": {}}]},
                        "dhcp": {"dhcp4": True},
                    },
                    "vlans": {"v7": {"id": 7, "link": "lan", "addresses": ["10.7.0.5/24"]}},
                }
            },
            ["10.0.0.5", "fd00::5", "10.0.1.5", "10.7.0.5"],
        ),
        (
            {
                "version": 1,
                "config": [
                    {
                        "type": "physical",
                        "name": "eth0",
                        "subnets": [
                            {
                                "type": "static",
                                "address": "192.168.1.2",
                                "netmask": "255.255.255.0",
                            },
                            {"type": "dhcp"},
                            {"type": "static6", "address": "fd00::2/64"},
                        ],
                    },
                    {"type": "nameserver", "address": ["192.168.1.1"]},
                ],
            },
            ["192.168.1.2", "fd00::2"],
        ),
        ({"version": 2, "ethernets": {"e": {"addresses": ["not-an-address", 5]}}}, []),
        ("not a mapping", []),
    ],
)
def test_static_addresses_are_what_the_network_config_assigns(
    config: Any, expected: List[str]
) -> None:
    assert protocol.static_addresses(config) == expected
