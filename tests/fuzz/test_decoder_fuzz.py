"""Property-based fuzzing of the xenchannel frame decoder and bundle container.

By default every property runs a fixed, derandomised set of examples, so the suite is
reproducible and the whole file takes well under 30 s.

A long fuzz session (fresh random examples, many of them; failures are saved in
.hypothesis/ and replayed first on the next run)::

    cd /work/main
    XENCHANNEL_FUZZ_RANDOM=1 XENCHANNEL_FUZZ_EXAMPLES=200000 \\
        .venv/bin/pytest tests/fuzz -q --timeout=0 --hypothesis-show-statistics

``XENCHANNEL_FUZZ_EXAMPLES`` sets the number of examples for every property;
``XENCHANNEL_FUZZ_RANDOM=1`` draws new random examples on each run instead of the fixed set.
Run several such sessions in parallel (different shells) to cover more ground.
"""

import hashlib
import os
from typing import Any, Callable, List, Sequence, TypeVar

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from xenchannel import protocol, session
from xenchannel.protocol import Bundle, Frame, FrameDecoder, MessageType, Skipped
from xenchannel.session import BundleBegin, BundleEnd, BundleReceiver, Resume

F = TypeVar("F", bound=Callable[..., Any])

_EXAMPLES = os.environ.get("XENCHANNEL_FUZZ_EXAMPLES")
_RANDOM = os.environ.get("XENCHANNEL_FUZZ_RANDOM") == "1"


def fuzz(default_examples: int) -> Callable[[F], F]:
    """Hypothesis settings: ``default_examples`` unless XENCHANNEL_FUZZ_EXAMPLES is set."""
    extra = {} if _RANDOM else {"derandomize": True, "database": None}
    return settings(
        max_examples=int(_EXAMPLES) if _EXAMPLES else default_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        **extra,
    )


# --------------------------------------------------------------------------- strategies

# Payloads biased towards the bytes that matter to stuffing.
payloads = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from(b"\xfe\xff\x01\x02\x00XC"), max_size=300).map(bytes),
)
message_types = st.one_of(st.sampled_from(list(MessageType)), st.integers(0, 255))
request_ids = st.one_of(st.sampled_from([0, 1, 0xFEFEFEFE, 0xFFFFFFFF]), st.integers(0, 2**32 - 1))


@st.composite
def frame_specs(draw: Any, max_payload: int = 300) -> Frame:
    return Frame(
        version=draw(st.one_of(st.just(protocol.CURRENT_VERSION), st.integers(0, 255))),
        type=draw(message_types),
        flags=draw(st.one_of(st.just(0), st.integers(0, 0xFFFF))),
        request_id=draw(request_ids),
        payload=draw(payloads)[:max_payload],
    )


def encode(spec: Frame) -> bytes:
    return protocol.encode_frame(
        spec.type, spec.payload, spec.request_id, spec.version, spec.flags, max_payload=1 << 30
    )


encoded_frames = frame_specs().map(encode)

LINE_NOISE = [
    b"AT\r",
    b"ATE0\r\n",
    b"[    3.141592] hvc1: xenconsole\r\n",
    b"\xff",
    b"\xfe",
    b"\xfe\x01",
    b"\xfe\x02",
    b"\xff\xfe",
    b"XC",
    b"\xffXC",
]


@st.composite
def frame_fragments(draw: Any) -> bytes:
    """Pieces of a valid frame that are not themselves a whole frame."""
    data = draw(encoded_frames)
    kind = draw(st.sampled_from(["prefix", "suffix", "mangled", "flipped", "cooked"]))
    if kind == "prefix":
        return data[: draw(st.integers(0, len(data) - 1))]
    if kind == "suffix":
        return data[draw(st.integers(1, len(data))) :]
    if kind == "cooked":
        return data.replace(b"\n", b"\r\n")
    pos = draw(st.integers(1, len(data) - 1))
    if kind == "flipped":
        value = data[pos] ^ (1 << draw(st.integers(0, 7)))
    else:
        value = draw(st.integers(0, 255))
    return data[:pos] + bytes([value]) + data[pos + 1 :]


noise_pieces = st.one_of(
    st.binary(max_size=200),
    st.sampled_from(LINE_NOISE),
    frame_fragments(),
)
# Anything at all: noise, fragments and whole frames in any order.
chaos = st.lists(st.one_of(noise_pieces, encoded_frames), max_size=12).map(b"".join)


@st.composite
def splits(draw: Any, data: bytes) -> List[bytes]:
    """``data`` cut at arbitrary points (including empty pieces)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=20)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def feed_all(decoder: FrameDecoder, pieces: Sequence[bytes]) -> List[Any]:
    out: List[Any] = []
    for piece in pieces:
        out.extend(decoder.feed(piece))
    return out


def frames_of(items: Sequence[Any]) -> List[Frame]:
    return [item for item in items if isinstance(item, Frame)]


# --------------------------------------------------------------------------- decoder


@fuzz(400)
@given(
    data=st.one_of(chaos, st.binary(max_size=2000)),
    max_payload=st.sampled_from([0, 1, 16, 256, protocol.DEFAULT_MAX_PAYLOAD]),
    st_data=st.data(),
)
def test_feed_never_raises_and_accounts_for_every_byte(
    data: bytes, max_payload: int, st_data: Any
) -> None:
    decoder = FrameDecoder(max_payload)
    out = []
    for piece in st_data.draw(splits(data)):
        # Nothing may escape feed(), not even a ChannelError.
        result = decoder.feed(piece)
        assert isinstance(result, list)
        out.extend(result)
    assert all(isinstance(item, (Frame, Skipped)) for item in out)
    skipped = [item for item in out if isinstance(item, Skipped)]
    frames = frames_of(out)
    assert all(s.size > 0 and s.reason for s in skipped)
    assert all(len(f.payload) <= max_payload for f in frames)
    assert decoder.frames_decoded == len(frames)
    assert decoder.skipped_bytes == sum(s.size for s in skipped)
    # Every input byte is in a frame, reported as skipped, or still held (plus the
    # marker of the frame under construction).
    accounted = sum(len(encode(f)) for f in frames) + sum(s.size for s in skipped)
    assert len(data) - accounted in (decoder.buffered, decoder.buffered + 1)


@st.composite
def long_streams(draw: Any) -> bytes:
    """Up to 64 KiB built from a few draws: long runs, big and oversized frames, noise."""
    pieces = []
    for _ in range(draw(st.integers(1, 10))):
        kind = draw(st.sampled_from(["run", "frame", "flood", "noise", "chaos"]))
        if kind == "flood":
            # A valid header (small payload), then a long run with no marker in it:
            # invalid escapes, stray bytes, more than the announced payload.
            head = protocol.encode_frame(draw(message_types), b"x" * draw(st.integers(0, 256)))
            unit = draw(st.binary(min_size=1, max_size=8).map(lambda b: b.replace(b"\xff", b"")))
            unit = unit or b"\xfe"
            pieces.append(head[: 1 + protocol.HEADER_SIZE])
            pieces.append(unit * draw(st.integers(1, 16384 // len(unit))))
        elif kind == "run":
            unit = draw(st.binary(min_size=1, max_size=16))
            pieces.append(unit * draw(st.integers(1, 16384 // len(unit))))
        elif kind == "frame":
            unit = draw(st.sampled_from([b"\xff", b"\xfe", b"\xfe\xff", b"A", b"\x00\xfe\x01"]))
            size = draw(st.one_of(st.integers(0, 300), st.integers(200, 40000)))
            payload = (unit * (size // len(unit) + 1))[:size]
            data = protocol.encode_frame(
                draw(message_types), payload, draw(request_ids), max_payload=1 << 20
            )
            cut = draw(st.one_of(st.just(len(data)), st.integers(0, len(data))))
            pieces.append(data[:cut])
        elif kind == "noise":
            pieces.append(draw(noise_pieces))
        else:
            pieces.append(draw(chaos))
    return b"".join(pieces)[: 64 * 1024]


@fuzz(150)
@given(data=long_streams(), feed_sizes=st.lists(st.integers(1, 4096), min_size=1, max_size=8))
def test_buffered_memory_is_bounded(data: bytes, feed_sizes: List[int]) -> None:
    max_payload = 256
    bound = 2 * (max_payload + protocol.HEADER_SIZE + protocol.TRAILER_SIZE) + 2
    decoder = FrameDecoder(max_payload)
    pos = i = 0
    while pos < len(data):
        size = feed_sizes[i % len(feed_sizes)]
        decoder.feed(data[pos : pos + size])
        assert decoder.buffered <= bound
        pos += size
        i += 1


@fuzz(300)
@given(
    garbage=st.lists(noise_pieces, max_size=8).map(b"".join),
    specs=st.lists(frame_specs(), min_size=1, max_size=5),
    st_data=st.data(),
)
def test_always_resynchronises(garbage: bytes, specs: List[Frame], st_data: Any) -> None:
    valid = b"".join(encode(s) for s in specs)
    alone = frames_of(feed_all(FrameDecoder(), st_data.draw(splits(garbage))))
    got = frames_of(feed_all(FrameDecoder(), st_data.draw(splits(garbage + valid))))
    # Garbage may (by accident of the strategy) hold a whole frame; whatever it yields
    # alone it must yield again, and then exactly the valid frames, in order.
    assert got[-len(specs) :] == specs
    assert got == alone + specs


@fuzz(300)
@given(specs=st.lists(frame_specs(), max_size=8), st_data=st.data())
def test_round_trip(specs: List[Frame], st_data: Any) -> None:
    data = b"".join(encode(s) for s in specs)
    assert data.count(b"\xff") == len(specs)
    out = feed_all(FrameDecoder(), st_data.draw(splits(data)))
    assert out == specs


@fuzz(200)
@given(specs=st.lists(frame_specs(), min_size=1, max_size=4), st_data=st.data())
def test_any_single_byte_corruption_is_not_accepted(specs: List[Frame], st_data: Any) -> None:
    """Changing one byte of a stream of frames never yields a frame that was not sent."""
    data = bytearray(b"".join(encode(s) for s in specs))
    pos = st_data.draw(st.integers(0, len(data) - 1))
    value = st_data.draw(st.integers(0, 255))
    assume(data[pos] != value)
    data[pos] = value
    got = frames_of(FrameDecoder().feed(bytes(data)))
    assert all(f in specs for f in got)
    assert len(got) >= len(specs) - 2


# --------------------------------------------------------------------------- bundles

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(max_size=20), json_values, max_size=6)
opaque = st.one_of(st.none(), st.binary(max_size=2000))


@fuzz(300)
@given(meta=json_objects, user_data=opaque, vendor_data=opaque, network=st.none() | json_objects)
def test_bundle_encode_decode_round_trip(
    meta: dict, user_data: Any, vendor_data: Any, network: Any
) -> None:
    bundle = Bundle(meta, user_data, vendor_data, network)
    decoded = Bundle.decode(bundle.encode())
    assert decoded.meta_data == meta
    assert decoded.user_data == user_data
    assert decoded.vendor_data == vendor_data
    assert decoded.network_config == network
    assert decoded.digest() == bundle.digest()


@fuzz(100)
@given(
    extra=json_objects,
    user_data=opaque,
    chunk_size=st.one_of(st.integers(1, 64), st.sampled_from([protocol.DEFAULT_CHUNK_SIZE])),
    st_data=st.data(),
)
def test_bundle_transfer_with_resume(
    extra: dict, user_data: Any, chunk_size: int, st_data: Any
) -> None:
    meta = {k: v for k, v in extra.items() if k not in ("local-hostname", "public-keys")}
    meta["instance-id"] = "i-fuzz"
    bundle = Bundle(meta, user_data)
    encoded = bundle.encode()
    count = protocol.chunk_count(len(encoded), chunk_size)
    stop = st_data.draw(st.integers(0, count), label="chunks before the link drops")

    receiver = BundleReceiver()
    decoder = FrameDecoder()

    def run(stream: bytes) -> Any:
        result = None
        for piece in st_data.draw(splits(stream)):
            for item in frames_of(decoder.feed(piece)):
                if item.type == MessageType.BUNDLE_BEGIN:
                    receiver.begin(BundleBegin.parse(item.json()))
                elif item.type == MessageType.BUNDLE_CHUNK:
                    receiver.chunk(item.payload)
                elif item.type == MessageType.BUNDLE_END:
                    result = receiver.end(BundleEnd.parse(item.json()))
        return result

    frames = list(session.bundle_frames(encoded, 1, chunk_size=chunk_size))
    if stop == count:
        assert run(b"".join(frames)) == bundle
        return
    # BEGIN and chunks 0..stop-1 arrive, then half a frame and the link drops.
    assert run(b"".join(frames[: stop + 1]) + frames[stop + 1][:5]) is None
    resume = receiver.resume()
    if stop == 0:
        assert resume is None
        first = 0
    else:
        assert resume == Resume(hashlib.sha256(encoded).hexdigest(), stop)
        first = resume.chunk
    rest = session.bundle_frames(encoded, 2, chunk_size=chunk_size, first=first)
    got = run(b"".join(rest))
    assert got == bundle
