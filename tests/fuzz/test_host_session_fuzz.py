"""Random frame sequences against the host's session machine (HostSession).

Each example is a run of guest frames (HELLOs of either version, repeated or new, with
no common version; requests naming the session, an earlier one or none; malformed
bodies; echoes of our own frames; arbitrary frames) and driver steps (serve the last
GET_BUNDLE, finish or abandon the transfer, confirm a delivery, query, time passing).
Whatever the order:

* nothing escapes the machine: a guest cannot make dom0's side raise;
* the state and the session agree (KNOCKED exactly when there is no session), and the
  bundle streams only in a session;
* every answer is one well-formed frame, and a version-1 frame never carries a code
  that version 1 does not know.

Example counts follow XENCHANNEL_FUZZ_EXAMPLES like the rest of tests/fuzz.
"""

import hashlib
from typing import Any, List, Optional

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.test_decoder_fuzz import frame_specs, fuzz
from xenchannel.protocol import (
    Bundle,
    Frame,
    FrameDecoder,
    MessageType,
    Skipped,
    encode_frame,
    encode_message,
)
from xenchannel.session import (
    CODES_SINCE_V2,
    BundleAck,
    BundleRequested,
    DeliveryReported,
    GetBundle,
    Greeted,
    Hello,
    HostSession,
    HostState,
    Refused,
    Resume,
    Status,
    StatusReported,
    Welcome,
)

LINK = "0123456789abcdef"
ENCODED = Bundle({"instance-id": "iid-1"}, b"#cloud-config\n" + b"x" * 300).encode()
DIGEST = hashlib.sha256(ENCODED).hexdigest()

ACTIONS = st.sampled_from(
    [
        "hello-v1",
        "hello-v2",
        "hello-repeat",
        "hello-no-common-version",
        "hello-malformed",
        "get-bundle",
        "get-bundle-resume",
        "get-bundle-stale-session",
        "bundle-ack",
        "bundle-ack-other-digest",
        "status",
        "status-malformed",
        "no-session",
        "query-reply",
        "guest-error",
        "echo",
        "oversized",
        "random-frame",
        "serve",
        "transfer-done",
        "query",
        "forget-query",
        "time-passes",
    ]
)


def frames(data: bytes) -> List[Frame]:
    return [f for f in FrameDecoder().feed(data) if isinstance(f, Frame)]


def check_answer(data: bytes) -> None:
    (frame,) = frames(data)
    if frame.type == MessageType.ERROR and frame.version < 2:
        assert frame.json()["code"] not in CODES_SINCE_V2, "a v2 code sent to a v1 guest"


class Guest:
    """What the guest side of the fuzz knows: its nonce, the sessions it was given."""

    def __init__(self) -> None:
        self.nonce = "n-0"
        self.version = 1
        self.sessions: List[str] = ["never-made"]

    def greeted(self, reply: bytes) -> None:
        (frame,) = frames(reply)
        if frame.type == MessageType.WELCOME:
            welcome = Welcome.from_frame(frame)
            if welcome.session:
                self.sessions.append(welcome.session)
            self.version = welcome.version or 1

    def frame(self, action: str, draw: Any, queries: List[int]) -> Optional[bytes]:
        rid = draw(st.integers(0, 2**32 - 1))
        session = self.sessions[-1]
        v = self.version
        if action in ("hello-v1", "hello-v2", "hello-repeat"):
            if action != "hello-repeat":
                self.nonce = "n-" + str(draw(st.integers(0, 10**6)))
            versions = [1] if action == "hello-v1" else [1, 2]
            return Hello(self.nonce, versions, draw(st.text(max_size=20))).encode(rid, versions[-1])
        if action == "hello-no-common-version":
            return Hello("n-x", [draw(st.integers(3, 255))], None).encode(rid, 3)
        if action == "hello-malformed":
            return encode_message(MessageType.HELLO, {"nonce": 5}, rid, v)
        if action == "get-bundle":
            return GetBundle(session).encode(rid, v)
        if action == "get-bundle-resume":
            resume = Resume(draw(st.sampled_from([DIGEST, "0" * 64])), draw(st.integers(-3, 9)))
            return GetBundle(session, resume).encode(rid, v)
        if action == "get-bundle-stale-session":
            return GetBundle(draw(st.sampled_from(self.sessions))).encode(rid, v)
        if action == "bundle-ack":
            return BundleAck(session, DIGEST).encode(rid, v)
        if action == "bundle-ack-other-digest":
            return BundleAck(session, "f" * 64).encode(rid, v)
        if action == "status":
            state = draw(st.sampled_from(["received", "applied", "failed"]))
            return Status(session, state, draw(st.text(max_size=600)), "iid-1").encode(rid, v)
        if action == "status-malformed":
            return encode_message(MessageType.STATUS, {"session": session, "state": 1}, rid, v)
        if action == "no-session":
            mtype = draw(st.sampled_from([MessageType.GET_BUNDLE, MessageType.STATUS]))
            return encode_message(mtype, {"state": "applied"}, rid, draw(st.integers(0, 255)))
        if action == "query-reply":
            rid = draw(st.sampled_from(queries)) if queries and draw(st.booleans()) else rid
            return encode_frame(MessageType.QUERY_REPLY, draw(st.binary(max_size=40)), rid)
        if action == "guest-error":
            body = {"code": draw(st.text(max_size=80)), "message": draw(st.text(max_size=400))}
            rid = draw(st.sampled_from(queries)) if queries and draw(st.booleans()) else rid
            return encode_message(MessageType.ERROR, body, rid)
        if action == "echo":
            mtype = draw(st.sampled_from([MessageType.KNOCK, MessageType.BUNDLE_CHUNK]))
            return encode_frame(mtype, draw(st.binary(max_size=40)), rid)
        if action == "random-frame":
            spec = draw(frame_specs())
            return encode_frame(spec.type, spec.payload, spec.request_id, spec.version)
        return None


@fuzz(300)
@given(st.data())
def test_random_sequences_never_raise_and_keep_the_machine_consistent(data: Any) -> None:
    now = 0.0
    machine = HostSession((1, 2), LINK, now=now)
    guest = Guest()
    queries: List[int] = []
    requested: Optional[BundleRequested] = None
    check_answer(machine.knock())
    prefix = data.draw(
        st.sampled_from([[], ["hello-v1"], ["hello-v2"], ["hello-v2", "get-bundle"]])
    )
    for action in prefix + data.draw(st.lists(ACTIONS, min_size=1, max_size=40)):
        if action == "serve" and requested is not None:
            sending = machine.send_bundle(requested, ENCODED, DIGEST, 64)
            if sending is not None:
                assert machine.state == HostState.SENDING
                for part in sending[0]:
                    check_answer(part)
        elif action == "transfer-done":
            machine.transfer_done()
        elif action == "query":
            rid, frame = machine.query(["hostname"])
            check_answer(frame)
            queries.append(rid)
        elif action == "forget-query" and queries:
            machine.forget_query(queries.pop(0))
        elif action == "time-passes":
            now += data.draw(st.floats(0, 5))
        elif action == "oversized":
            mtype = data.draw(st.sampled_from(list(MessageType)))
            skipped = Skipped("oversized", 9000, int(mtype), data.draw(st.integers(0, 2**32 - 1)))
            answer = machine.oversized(skipped)
            if answer is not None:
                check_answer(answer)
        else:
            raw = guest.frame(action, data.draw, queries)
            if raw is None:
                continue
            for frame in frames(raw):
                event = machine.receive(frame, now)
                if isinstance(event, Greeted):
                    check_answer(event.reply)
                    guest.greeted(event.reply)
                elif isinstance(event, Refused):
                    check_answer(event.reply)
                elif isinstance(event, BundleRequested):
                    requested = event
                    assert event.delay >= 0
                elif isinstance(event, DeliveryReported):
                    check_answer(machine.confirm_delivery(event, DIGEST).reply)  # type: ignore[attr-defined]
                elif isinstance(event, StatusReported):
                    check_answer(machine.acknowledge(event.request_id))
        assert (machine.state == HostState.KNOCKED) == (machine.session_id is None)


def test_the_sequences_reach_every_state() -> None:
    """A guard on the strategy above: scripted, its steps visit all three states."""
    machine = HostSession((1, 2), LINK, now=0.0)
    states = {machine.state}
    event = machine.receive(frames(Hello("n", [1, 2]).encode(1, 2))[0], 0.0)
    assert isinstance(event, Greeted)
    states.add(machine.state)
    request = machine.receive(frames(GetBundle(machine.session_id).encode(2, 2))[0], 0.0)
    assert isinstance(request, BundleRequested)
    machine.send_bundle(request, ENCODED, DIGEST, 64)
    states.add(machine.state)
    assert states == set(HostState)
