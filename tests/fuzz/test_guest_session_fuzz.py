"""Random frame sequences against the guest's session machine (GuestSession).

Each example is a run of driver steps (greet, ask for the bundle, report, give up on the
session) and host frames: well-formed ones aimed at the machine's current request, the
same with a chunk dropped, a digest swapped or a stale request id, errors, knocks,
queries, and arbitrary frames. Two properties hold whatever the order:

* nothing escapes the machine but the protocol's own exceptions (ChannelError);
* a bundle the machine hands over is one the host sent, whole and verified: its
  SHA-256 is the digest of exactly the bytes sent.

Example counts follow XENCHANNEL_FUZZ_EXAMPLES like the rest of tests/fuzz.
"""

import hashlib
from typing import Any, List, Optional

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.test_decoder_fuzz import frame_specs, fuzz
from xenchannel.protocol import (
    ERR_BAD_REQUEST,
    ERR_BUSY,
    ERR_UNKNOWN_SESSION,
    ERR_VERSION,
    Bundle,
    ChannelError,
    Frame,
    FrameDecoder,
    MessageType,
    bundle_chunks,
    encode_frame,
)
from xenchannel.session import (
    MAX_RETRY_AFTER,
    MIN_RETRY_AFTER,
    V1_UNKNOWN_SESSION,
    BundleAck,
    BundleReceived,
    BundleReceiver,
    Busy,
    Error,
    GuestSession,
    GuestState,
    Hello,
    Knock,
    Query,
    QueryReceived,
    StatusAck,
    Welcome,
    bundle_frames,
    encode_chunk,
)

LINK = "0123456789abcdef"
BUNDLES = [
    Bundle({"instance-id": "iid-1", "local-hostname": "web1"}, b"#cloud-config\n"),
    Bundle({"instance-id": "iid-2"}, b"x" * 100, b"vendor", {"version": 2}),
]
ENCODED = [b.encode() for b in BUNDLES]
DIGESTS = {hashlib.sha256(e).hexdigest(): e for e in ENCODED}

ACTIONS = st.sampled_from(
    [
        "hello",
        "get_bundle",
        "report",
        "lose_session",
        "welcome",
        "welcome-stale-nonce",
        "welcome-bad-version",
        "bundle",
        "bundle-drop-chunk",
        "bundle-swap-digest",
        "bundle-stale-id",
        "bundle-other-transfer",
        "bundle-corrupt-chunk",
        "bundle-cut",
        "status-ack",
        "error-session",
        "error-unknown-session",
        "error-busy",
        "error-version",
        "error-other",
        "knock-same",
        "knock-other",
        "query",
        "random-frame",
    ]
)


def one(data: bytes) -> Frame:
    (frame,) = [f for f in FrameDecoder().feed(data) if isinstance(f, Frame)]
    return frame


class Host:
    """What the host knows from the bytes the guest sent: nonce, request ids."""

    def __init__(self) -> None:
        self.nonce: Optional[str] = None
        self.hello_id = 0
        self.request_id = 0
        self.linked = LINK

    def saw(self, data: bytes) -> None:
        frame = one(data)
        if frame.type == MessageType.HELLO:
            self.nonce = Hello.from_frame(frame).nonce
            self.hello_id = frame.request_id
        else:
            self.request_id = frame.request_id

    def frames(self, action: str, draw: Any) -> List[bytes]:
        rid, index = self.request_id, draw(st.integers(0, len(ENCODED) - 1))
        chunk = draw(st.sampled_from([8, 16, 64, 32768]))
        if action == "welcome":
            return [Welcome(self.nonce, "s-1", LINK, 1, [1]).encode(self.hello_id)]
        if action == "welcome-stale-nonce":
            return [Welcome("z" * 32, "s-0", LINK, 1, [1]).encode(self.hello_id)]
        if action == "welcome-bad-version":
            return [Welcome(self.nonce, "s-1", LINK, 9, [9]).encode(self.hello_id)]
        if action.startswith("bundle"):
            if action == "bundle-stale-id":
                rid ^= 0x5A5A
            parts = list(bundle_frames(ENCODED[index], rid, chunk_size=chunk))
            if action == "bundle-drop-chunk" and len(parts) > 3:
                del parts[draw(st.integers(1, len(parts) - 2))]
            elif action == "bundle-swap-digest":
                parts[-1] = list(bundle_frames(ENCODED[1 - index], rid))[-1]
            elif action == "bundle-other-transfer":
                # BEGIN of one bundle, the rest of another: the digest must catch it.
                other = list(bundle_frames(ENCODED[1 - index], rid, chunk_size=chunk))
                parts = parts[:1] + other[1:]
            elif action == "bundle-corrupt-chunk":
                # A chunk whose bytes changed on dom0's side of the CRC: only the SHA-256
                # over the whole bundle can tell.
                chunks = list(bundle_chunks(ENCODED[index], chunk))
                seq = draw(st.integers(0, len(chunks) - 1))
                good = chunks[seq][1]
                at = draw(st.integers(0, len(good) - 1))
                bad = good[:at] + bytes([good[at] ^ 0x01]) + good[at + 1 :]
                parts[1 + seq] = encode_chunk(seq, bad, rid)
            elif action == "bundle-cut":
                parts = parts[: draw(st.integers(1, len(parts) - 1))]
            return parts
        if action == "status-ack":
            return [StatusAck().encode(rid)]
        if action == "error-session":
            return [Error(ERR_BAD_REQUEST, V1_UNKNOWN_SESSION).encode(rid)]
        if action == "error-unknown-session":
            return [Error(ERR_UNKNOWN_SESSION, "gone").encode(rid)]
        if action == "error-busy":
            return [Error(ERR_BUSY, "wait", draw(st.floats(-1e9, 1e9))).encode(rid)]
        if action == "error-version":
            return [Error(ERR_VERSION, "speaks 2").encode(self.hello_id)]
        if action == "error-other":
            return [Error("no-bundle", "none").encode(rid)]
        if action == "knock-same":
            return [Knock([1], LINK).encode()]
        if action == "knock-other":
            return [Knock([1], "fedcba9876543210").encode()]
        if action == "query":
            return [Query(["version"]).encode(draw(st.integers(0, 2**32 - 1)))]
        spec = draw(frame_specs())
        return [encode_frame(spec.type, spec.payload, spec.request_id, spec.version)]


@fuzz(300)
@given(st.data())
def test_random_sequences_raise_only_protocol_errors_and_accept_only_verified_bundles(
    data: Any,
) -> None:
    machine = GuestSession([1], "fuzz", data.draw(st.integers(0, 2**32 - 1)))
    host = Host()
    # Most runs start from an established session with a request out, so that deep
    # states get as many examples as the handshake does.
    prefix = data.draw(
        st.sampled_from([[], ["hello", "welcome"], ["hello", "welcome", "get_bundle"]])
    )
    for action in prefix + data.draw(st.lists(ACTIONS, min_size=1, max_size=40)):
        try:
            if action == "hello":
                host.saw(machine.hello())
            elif action == "get_bundle":
                host.saw(machine.get_bundle(BundleReceiver()))
            elif action == "report":
                host.saw(machine.report(lambda sid: BundleAck(sid, "ab" * 32)))
            elif action == "lose_session":
                machine.lose_session()
            else:
                for raw in host.frames(action, data.draw):
                    event = machine.receive(one(raw))
                    if isinstance(event, BundleReceived):
                        sent = DIGESTS.get(event.sha256)
                        assert sent is not None, "a bundle with a digest the host never sent"
                        assert event.bundle.encode() == sent
                    elif isinstance(event, QueryReceived):
                        machine.answer(event, {"version": "x"})
                    elif isinstance(event, Busy):
                        assert MIN_RETRY_AFTER <= event.retry_after <= MAX_RETRY_AFTER
        except ChannelError:
            continue  # the protocol's own refusal: the driver turns it into a sentence
        assert isinstance(machine.state, GuestState)


def test_the_sequences_reach_every_state() -> None:
    """A guard on the strategy above: scripted, the same steps visit all five states."""
    machine = GuestSession([1], "fuzz", 1)
    host = Host()
    states = {machine.state}
    host.saw(machine.hello())
    states.add(machine.state)
    machine.receive(one(host.frames("welcome", lambda s: 0)[0]))
    states.add(machine.state)
    host.saw(machine.get_bundle(BundleReceiver()))
    states.add(machine.state)
    host.saw(machine.report(lambda sid: BundleAck(sid, "ab" * 32)))
    states.add(machine.state)
    assert states == set(GuestState)
