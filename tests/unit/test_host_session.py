"""The host's session machine (xenchannel.session.HostSession) without any I/O: frames in,
events and bytes out; every state, what each refuses, negotiation, pacing, session loss,
and both machines talking to each other in memory."""

import hashlib
from typing import Any, Dict, List, Optional

import pytest

from xenchannel.protocol import (
    ERR_BAD_REQUEST,
    ERR_BUSY,
    ERR_NOT_ALLOWED,
    ERR_TOO_LARGE,
    ERR_UNKNOWN_SESSION,
    ERR_VERSION,
    PROTOCOL_VERSIONS,
    Bundle,
    Frame,
    FrameDecoder,
    MessageType,
    RemoteError,
    Skipped,
    VersionMismatch,
    encode_frame,
    encode_message,
)
from xenchannel.session import (
    GET_BUNDLE_BURST,
    GET_BUNDLE_RATE,
    MSG_ACK_MISMATCH,
    V1_UNKNOWN_SESSION,
    Acknowledged,
    BundleAck,
    BundleBegin,
    BundleReceived,
    BundleReceiver,
    BundleRequested,
    Busy,
    Delivered,
    DeliveryReported,
    Dropped,
    Echoed,
    Error,
    GetBundle,
    Greeted,
    GuestError,
    GuestSession,
    Hello,
    HostSession,
    HostState,
    Ignored,
    Knock,
    QueryAnswered,
    QueryFailed,
    QueryReceived,
    Refused,
    Resume,
    SessionLost,
    Status,
    StatusReported,
    Welcome,
    Welcomed,
)

LINK = "0123456789abcdef"
ENCODED = Bundle({"instance-id": "iid-1", "local-hostname": "web1"}, b"x" * 5000).encode()
DIGEST = hashlib.sha256(ENCODED).hexdigest()
CHUNK = 1024


def frames(data: bytes) -> List[Frame]:
    return [f for f in FrameDecoder().feed(data) if isinstance(f, Frame)]


def one(data: bytes) -> Frame:
    (frame,) = frames(data)
    return frame


def host(versions: Any = PROTOCOL_VERSIONS) -> HostSession:
    return HostSession(versions, LINK, now=0.0)


def hello(nonce: str = "n-1", versions: Any = (1, 2), rid: int = 7) -> Frame:
    return one(Hello(nonce, versions, "test-guest").encode(rid, max(versions)))


def greeted(m: HostSession, **kwargs: Any) -> Greeted:
    event = m.receive(hello(**kwargs), 0.0)
    assert isinstance(event, Greeted)
    return event


def get_bundle(m: HostSession, rid: int = 11, resume: Optional[Resume] = None) -> Frame:
    return one(GetBundle(m.session_id, resume).encode(rid, m.version))


def error_of(data: bytes) -> Dict[str, Any]:
    frame = one(data)
    assert frame.type == MessageType.ERROR
    return frame.json()


# ------------------------------------------------------------------ handshake


def test_a_new_connection_knocks_with_its_link_and_versions() -> None:
    m = host()
    knock = Knock.from_frame(one(m.knock()))
    assert (knock.versions, knock.link) == (list(PROTOCOL_VERSIONS), LINK)
    assert m.state == HostState.KNOCKED and m.session_id is None


@pytest.mark.parametrize(("guest", "chosen"), [((1,), 1), ((1, 2), 2), ((2, 9), 2)])
def test_hello_negotiates_the_highest_common_version(guest: Any, chosen: int) -> None:
    m = host()
    event = greeted(m, versions=guest)
    assert (event.version, event.repeated, event.guest_agent) == (chosen, False, "test-guest")
    reply = one(event.reply)
    welcome = Welcome.from_frame(reply)
    assert (welcome.nonce, welcome.version, welcome.link) == ("n-1", chosen, LINK)
    assert welcome.versions == list(PROTOCOL_VERSIONS)
    assert reply.version == chosen and reply.request_id == 7
    assert m.state == HostState.SERVING and welcome.session == m.session_id


def test_a_repeated_hello_gets_the_same_session() -> None:
    m = host()
    first = Welcome.from_frame(one(greeted(m).reply))
    again = greeted(m, rid=8)
    assert again.repeated
    assert Welcome.from_frame(one(again.reply)).session == first.session


def test_a_new_nonce_is_a_new_session_and_the_old_ones_requests_are_refused() -> None:
    m = host()
    greeted(m, nonce="n-1")
    old = m.session_id
    stale = one(GetBundle(old).encode(12, 2))
    greeted(m, nonce="n-2")
    assert m.session_id != old
    event = m.receive(stale, 0.0)
    assert isinstance(event, Refused) and event.code == ERR_UNKNOWN_SESSION
    assert not event.record  # normal after a restart: not an error of the domain


def test_hello_with_no_common_version_refuses_and_ends_the_session() -> None:
    m = host()
    greeted(m)
    m.send_bundle(m.receive(get_bundle(m), 0.0), ENCODED, DIGEST, CHUNK)  # type: ignore[arg-type]
    event = m.receive(hello(nonce="n-2", versions=(7, 9), rid=31), 0.0)
    assert isinstance(event, Refused) and event.code == ERR_VERSION and event.record
    assert "upgrade the older side" in event.message
    assert error_of(event.reply)["code"] == ERR_VERSION
    assert m.state == HostState.KNOCKED and m.session_id is None


@pytest.mark.parametrize(
    "body",
    [{"versions": [1]}, {"nonce": "", "versions": [1]}, {"nonce": "n"}, {"nonce": "n" * 129}],
)
def test_a_malformed_hello_is_refused_and_changes_nothing(body: Dict[str, Any]) -> None:
    m = host()
    greeted(m)
    session = m.session_id
    event = m.receive(one(encode_message(MessageType.HELLO, body, 9, 1)), 0.0)
    assert isinstance(event, Refused) and event.code == ERR_BAD_REQUEST and event.record
    assert m.session_id == session and m.state == HostState.SERVING


def test_the_guest_agent_string_is_kept_printable_and_short() -> None:
    m = host()
    event = m.receive(one(Hello("n", [1], "evil\x1b[31m\n" + "a" * 500).encode(1)), 0.0)
    assert isinstance(event, Greeted)
    assert event.guest_agent == "evil[31m" + "a" * 92


# ------------------------------------------------------------------ refusals per state

SESSION_MESSAGES = {
    "GET_BUNDLE": GetBundle,
    "BUNDLE_ACK": lambda s: BundleAck(s, DIGEST),
    "STATUS": lambda s: Status(s, "applied"),
}


@pytest.mark.parametrize("name", sorted(SESSION_MESSAGES))
@pytest.mark.parametrize("version", [1, 2])
def test_requests_without_a_session_are_unknown_session_in_the_senders_version(
    name: str, version: int
) -> None:
    m = host()
    frame = one(SESSION_MESSAGES[name]("made-up").encode(41, version))
    event = m.receive(frame, 0.0)
    assert isinstance(event, Refused) and event.code == ERR_UNKNOWN_SESSION
    reply = one(event.reply)
    assert (reply.version, reply.request_id) == (version, 41)
    # A version-1 guest knows only bad-request and the sentence it has always seen.
    expected = ERR_UNKNOWN_SESSION if version == 2 else ERR_BAD_REQUEST
    assert reply.json() == {"code": expected, "message": V1_UNKNOWN_SESSION}
    assert m.state == HostState.KNOCKED


@pytest.mark.parametrize("state", [HostState.SERVING, HostState.SENDING])
@pytest.mark.parametrize("name", sorted(SESSION_MESSAGES))
def test_requests_naming_another_session_are_refused_in_every_state(
    state: HostState, name: str
) -> None:
    m = host()
    greeted(m)
    if state == HostState.SENDING:
        m.send_bundle(m.receive(get_bundle(m), 0.0), ENCODED, DIGEST, CHUNK)  # type: ignore[arg-type]
    assert m.state == state
    for session in (None, "another"):
        event = m.receive(one(SESSION_MESSAGES[name](session).encode(5, 2)), 0.0)
        assert isinstance(event, Refused) and event.code == ERR_UNKNOWN_SESSION
    assert m.state == state


@pytest.mark.parametrize(
    ("mtype", "body"),
    [
        (MessageType.GET_BUNDLE, {"session": "S", "resume": "from the middle"}),
        (MessageType.GET_BUNDLE, {"session": "S", "resume": {"sha256": 1}}),
        (MessageType.BUNDLE_ACK, {"session": "S"}),
        (MessageType.STATUS, {"session": "S", "state": "exploded"}),
        (MessageType.STATUS, {"session": "S", "state": "failed", "reason": 5}),
    ],
)
def test_malformed_requests_are_bad_request(mtype: MessageType, body: Dict[str, Any]) -> None:
    m = host()
    greeted(m)
    body = {k: (m.session_id if v == "S" else v) for k, v in body.items()}
    event = m.receive(one(encode_message(mtype, body, 3, 2)), 0.0)
    assert isinstance(event, Refused) and event.code == ERR_BAD_REQUEST and event.record
    assert error_of(event.reply)["code"] == ERR_BAD_REQUEST
    assert m.state == HostState.SERVING


def test_an_unreadable_body_is_bad_request() -> None:
    m = host()
    event = m.receive(one(encode_frame(MessageType.HELLO, b"{not json", 42)), 0.0)
    assert isinstance(event, Refused) and event.code == ERR_BAD_REQUEST


@pytest.mark.parametrize(
    "mtype",
    [
        t
        for t in MessageType
        if t not in (MessageType.ERROR,)
        and t.name
        in ("KNOCK", "WELCOME", "BUNDLE_BEGIN", "BUNDLE_CHUNK", "BUNDLE_END", "STATUS_ACK", "QUERY")
    ],
)
def test_frames_only_the_host_sends_are_echoes_in_every_state(mtype: MessageType) -> None:
    m = host()
    for step in range(3):
        event = m.receive(one(encode_message(mtype, {"nonce": "n-1"}, 7)), 0.0)
        assert isinstance(event, Echoed)
        if step == 0:
            greeted(m)
        elif step == 1:
            m.send_bundle(m.receive(get_bundle(m), 0.0), ENCODED, DIGEST, CHUNK)  # type: ignore[arg-type]


# ------------------------------------------------------------------ the bundle


def test_get_bundle_streams_begin_chunks_end_then_serving() -> None:
    m = host()
    greeted(m, versions=(1,))
    event = m.receive(get_bundle(m, rid=21), 0.0)
    assert isinstance(event, BundleRequested) and event.delay == 0
    sending = m.send_bundle(event, ENCODED, DIGEST, CHUNK)
    assert sending is not None and m.state == HostState.SENDING
    stream, first, chunks = sending
    sent = [one(data) for data in stream]
    assert (first, chunks, len(sent)) == (0, 5, 7)
    assert all(f.request_id == 21 and f.version == 1 for f in sent)
    receiver = BundleReceiver()
    receiver.begin(BundleBegin.from_frame(sent[0]))
    m.transfer_done()
    assert m.state == HostState.SERVING


@pytest.mark.parametrize(
    ("resume", "first"),
    [
        (Resume(DIGEST, 3), 3),
        (Resume("0" * 64, 3), 0),  # another bundle's digest: start over
        (Resume(DIGEST, 5), 0),  # past the last chunk
        (Resume(DIGEST, -1), 0),
    ],
)
def test_a_resume_is_honoured_only_for_this_digest_and_in_range(resume: Resume, first: int) -> None:
    m = host()
    greeted(m)
    event = m.receive(get_bundle(m, resume=resume), 0.0)
    assert isinstance(event, BundleRequested) and event.resume == resume
    sending = m.send_bundle(event, ENCODED, DIGEST, CHUNK)
    assert sending is not None and sending[1] == first
    assert BundleBegin.from_frame(one(next(sending[0]))).first == first


def test_a_bundle_for_a_session_that_ended_meanwhile_is_not_sent() -> None:
    m = host()
    greeted(m, nonce="n-1")
    event = m.receive(get_bundle(m), 0.0)
    assert isinstance(event, BundleRequested)
    greeted(m, nonce="n-2")  # while the driver read the store
    assert m.send_bundle(event, ENCODED, DIGEST, CHUNK) is None
    assert m.state == HostState.SERVING


def test_a_new_handshake_while_sending_ends_the_transfer() -> None:
    m = host()
    greeted(m, nonce="n-1")
    m.send_bundle(m.receive(get_bundle(m), 0.0), ENCODED, DIGEST, CHUNK)  # type: ignore[arg-type]
    assert m.state == HostState.SENDING
    greeted(m, nonce="n-1", rid=8)  # a repeat keeps the session and its transfer
    assert m.state == HostState.SENDING
    greeted(m, nonce="n-2")
    assert m.state == HostState.SERVING  # the driver cancels what still streams


def test_get_bundle_while_sending_starts_over() -> None:
    m = host()
    greeted(m)
    m.send_bundle(m.receive(get_bundle(m, rid=1), 0.0), ENCODED, DIGEST, CHUNK)  # type: ignore[arg-type]
    event = m.receive(get_bundle(m, rid=2), 0.0)
    assert isinstance(event, BundleRequested) and event.request_id == 2


def test_version_1_requests_over_the_rate_wait_their_turn() -> None:
    m = host()
    greeted(m, versions=(1,))
    delays = []
    for rid in range(1, GET_BUNDLE_BURST + 3):
        event = m.receive(get_bundle(m, rid=rid), 0.0)
        assert isinstance(event, BundleRequested)
        delays.append(event.delay)
    step = 1 / GET_BUNDLE_RATE
    assert delays == pytest.approx([0.0] * GET_BUNDLE_BURST + [step, 2 * step])
    # Time refills the bucket.
    later = m.receive(get_bundle(m, rid=99), 10.0)
    assert isinstance(later, BundleRequested) and later.delay == 0


def test_version_1_requests_past_a_burst_of_waiting_ones_are_dropped() -> None:
    m = host()
    greeted(m, versions=(1,))
    events = [m.receive(get_bundle(m, rid=rid), 0.0) for rid in range(1, 40)]
    served = [e for e in events if isinstance(e, BundleRequested)]
    dropped = [e for e in events if isinstance(e, Dropped)]
    # A burst at once, then as many again waiting at most burst / rate; the rest dropped.
    assert len(served) == 2 * GET_BUNDLE_BURST and len(dropped) == 39 - len(served)
    assert max(e.delay for e in served) <= GET_BUNDLE_BURST / GET_BUNDLE_RATE
    assert dropped[0].message_type == "GET_BUNDLE"
    # A dropped request spends no token: the wait of the next depends only on the burst.
    later = m.receive(get_bundle(m, rid=99), 0.5)
    assert isinstance(later, BundleRequested)
    assert later.delay <= GET_BUNDLE_BURST / GET_BUNDLE_RATE


def test_version_2_requests_over_the_rate_are_told_when_to_come_back() -> None:
    m = host()
    greeted(m, versions=(1, 2))
    for rid in range(1, GET_BUNDLE_BURST + 1):
        assert isinstance(m.receive(get_bundle(m, rid=rid), 0.0), BundleRequested)
    busy = m.receive(get_bundle(m, rid=50), 0.1)
    assert isinstance(busy, Refused) and busy.code == ERR_BUSY and not busy.record
    body = error_of(busy.reply)
    assert body["code"] == ERR_BUSY
    assert body["retry_after"] == pytest.approx((1 - 0.1 * GET_BUNDLE_RATE) / GET_BUNDLE_RATE)
    # A refused request spends no token: asking again when told succeeds.
    later = m.receive(get_bundle(m, rid=51), 0.1 + body["retry_after"])
    assert isinstance(later, BundleRequested) and later.delay == 0


# ------------------------------------------------------------------ reports


@pytest.mark.parametrize("version", [1, 2])
def test_bundle_ack_is_confirmed_only_for_the_stores_digest(version: int) -> None:
    m = host()
    greeted(m, versions=tuple(range(1, version + 1)))
    event = m.receive(one(BundleAck(m.session_id, DIGEST).encode(13, version)), 0.0)
    assert isinstance(event, DeliveryReported) and event.sha256 == DIGEST
    confirmed = m.confirm_delivery(event, DIGEST)
    assert isinstance(confirmed, Delivered)
    assert one(confirmed.reply).type == MessageType.STATUS_ACK
    for current in ("f" * 64, None):  # the bundle changed, or dom0 has none now
        refused = m.confirm_delivery(event, current)
        assert isinstance(refused, Refused) and refused.code == ERR_NOT_ALLOWED
        expected = ERR_NOT_ALLOWED if version == 2 else ERR_BAD_REQUEST
        assert error_of(refused.reply) == {"code": expected, "message": MSG_ACK_MISMATCH}


def test_status_is_reported_then_acknowledged() -> None:
    m = host()
    greeted(m)
    frame = one(Status(m.session_id, "failed", "x" * 900, "iid-1").encode(14, 2))
    event = m.receive(frame, 0.0)
    assert isinstance(event, StatusReported)
    assert (event.status.state, len(event.status.reason or "")) == ("failed", 500)
    ack = one(m.acknowledge(event.request_id))
    assert (ack.type, ack.request_id) == (MessageType.STATUS_ACK, 14)


def test_the_driver_refuses_for_the_stores_reasons_in_the_sessions_version() -> None:
    m = host()
    greeted(m, versions=(1,))
    refused = m.refuse(3, "no-bundle", "dom0 has no bundle", "GET_BUNDLE")
    assert one(refused.reply).version == 1 and not refused.record
    assert error_of(refused.reply) == {"code": "no-bundle", "message": "dom0 has no bundle"}


# ------------------------------------------------------------------ queries and guest errors


def test_a_query_is_answered_once_and_late_replies_are_ignored() -> None:
    m = host()  # no session needed: the in-guest agent answers without one
    rid, data = m.query(["hostname"])
    assert one(data).json() == {"what": ["hostname"]}
    reply = one(encode_message(MessageType.QUERY_REPLY, {"hostname": "web1"}, rid))
    answered = m.receive(reply, 0.0)
    assert isinstance(answered, QueryAnswered) and answered.answers == {"hostname": "web1"}
    assert isinstance(m.receive(reply, 0.0), Ignored)


def test_a_forgotten_query_ignores_its_reply() -> None:
    m = host()
    rid = m.query(["uptime"])[0]
    m.forget_query(rid)
    assert isinstance(
        m.receive(one(encode_message(MessageType.QUERY_REPLY, {}, rid)), 0.0), Ignored
    )


def test_queries_get_distinct_request_ids() -> None:
    m = host()
    ids = {m.query(["x"])[0] for _attempt in range(100)}
    assert len(ids) == 100 and 0 not in ids


def test_an_error_or_unreadable_reply_fails_the_query() -> None:
    m = host()
    rid = m.query(["x"])[0]
    failed = m.receive(one(Error("unsupported", "no such key\x1b").encode(rid)), 0.0)
    assert isinstance(failed, QueryFailed) and isinstance(failed.error, RemoteError)
    assert str(failed.error.remote_message) == "no such key"
    rid = m.query(["x"])[0]
    failed = m.receive(one(encode_frame(MessageType.QUERY_REPLY, b"[1, 2]", rid)), 0.0)
    assert isinstance(failed, QueryFailed)


def test_an_error_answering_nothing_is_a_guest_error_safe_to_log() -> None:
    m = host()
    event = m.receive(one(Error("oops\n" + "c" * 100, "m" * 1000).encode(0)), 0.0)
    assert isinstance(event, GuestError)
    assert event.code == "oops" + "c" * 60 and len(event.message) == 300


# ------------------------------------------------------------------ oversized frames


def test_an_oversized_request_is_answered_too_large_in_a_version_2_session() -> None:
    m = host()
    decoder = FrameDecoder(4096)
    big = encode_message(MessageType.STATUS, {"state": "failed", "reason": "r" * 9000}, 17, 2)
    skipped = next(i for i in decoder.feed(big) if isinstance(i, Skipped))
    assert (skipped.type, skipped.request_id) == (MessageType.STATUS, 17)
    assert m.oversized(skipped) is None  # no session yet: nothing to answer
    greeted(m, versions=(1,))
    assert m.oversized(skipped) is None  # a version-1 guest never got this answer
    greeted(m, nonce="n-2", versions=(1, 2))
    reply = m.oversized(skipped)
    assert reply is not None
    assert error_of(reply)["code"] == ERR_TOO_LARGE and one(reply).request_id == 17
    # Our own frames echoed oversized, and garbage, are never answered.
    assert m.oversized(skipped._replace(type=MessageType.BUNDLE_CHUNK)) is None
    assert m.oversized(Skipped("garbage", 10)) is None


# ------------------------------------------------------------------ both machines


def converse(guest: GuestSession, m: HostSession, data: bytes, now: float = 0.0) -> List[Any]:
    """Deliver ``data`` from the guest to the host and every reply back; the guest's events."""
    events: List[Any] = []
    for frame in frames(data):
        event = m.receive(frame, now)
        replies: List[bytes] = []
        if isinstance(event, (Greeted, Refused)):
            replies.append(event.reply)
        elif isinstance(event, BundleRequested):
            sending = m.send_bundle(event, ENCODED, DIGEST, CHUNK)
            assert sending is not None
            replies.extend(sending[0])
            m.transfer_done()
        elif isinstance(event, DeliveryReported):
            confirmed = m.confirm_delivery(event, DIGEST)
            replies.append(confirmed.reply)  # type: ignore[attr-defined]
        elif isinstance(event, StatusReported):
            replies.append(m.acknowledge(event.request_id))
        for reply in replies:
            events.extend(guest.receive(f) for f in frames(reply))
    return events


@pytest.mark.parametrize(
    ("guest_versions", "host_versions", "chosen"),
    [((1,), (1, 2), 1), ((1, 2), (1,), 1), ((1, 2), (1, 2), 2)],
)
def test_a_whole_session_between_the_two_machines(
    guest_versions: Any, host_versions: Any, chosen: int
) -> None:
    guest = GuestSession(guest_versions, "test-guest", 0x100)
    m = host(host_versions)
    (welcomed,) = converse(guest, m, guest.hello())
    assert isinstance(welcomed, Welcomed) and welcomed.session.version == chosen
    events = converse(guest, m, guest.get_bundle(BundleReceiver()))
    received = events[-1]
    assert isinstance(received, BundleReceived) and received.sha256 == DIGEST
    (acked,) = converse(guest, m, guest.report(lambda s: BundleAck(s, DIGEST)))
    assert isinstance(acked, Acknowledged)
    (acked,) = converse(guest, m, guest.report(lambda s: Status(s, "applied", None, "iid-1")))
    assert isinstance(acked, Acknowledged)


@pytest.mark.parametrize("versions", [(1,), (1, 2)])
def test_a_restarted_host_makes_the_guest_greet_again(versions: Any) -> None:
    guest = GuestSession(versions, "test-guest", 0x100)
    converse(guest, host(), guest.hello())
    restarted = host()  # the agent restarted: a new machine that knows no session
    (lost,) = converse(guest, restarted, guest.get_bundle(BundleReceiver()))
    assert isinstance(lost, SessionLost) and guest.session is None
    (welcomed,) = converse(guest, restarted, guest.hello())
    assert isinstance(welcomed, Welcomed)


def test_a_paced_version_2_guest_is_told_to_wait_not_failed() -> None:
    guest = GuestSession((1, 2), "test-guest", 0x100)
    m = host()
    converse(guest, m, guest.hello())
    for _request in range(GET_BUNDLE_BURST):
        converse(guest, m, guest.get_bundle(BundleReceiver()))
    (busy,) = converse(guest, m, guest.get_bundle(BundleReceiver()))
    assert isinstance(busy, Busy) and 0 < busy.retry_after <= 1 / GET_BUNDLE_RATE
    events = converse(guest, m, guest.get_bundle(BundleReceiver()), now=busy.retry_after)
    assert isinstance(events[-1], BundleReceived)


def test_a_version_mismatch_reaches_the_guest_as_one_sentence() -> None:
    guest = GuestSession((7,), "test-guest", 0x100)
    with pytest.raises(VersionMismatch, match="upgrade the older side"):
        converse(guest, host(), guest.hello())


def test_a_query_round_trip_between_the_two_machines() -> None:
    guest = GuestSession((1, 2), "test-guest", 0x100)
    m = host()
    rid, data = m.query(["hostname"])
    (asked,) = [guest.receive(f) for f in frames(data)]
    assert isinstance(asked, QueryReceived) and asked.query.what == ["hostname"]
    answered = m.receive(one(guest.answer(asked, {"hostname": "web1"})), 0.0)
    assert isinstance(answered, QueryAnswered) and answered.request_id == rid
