"""The guest's session machine (xenchannel.session.GuestSession) without any I/O: frames
in, events and bytes out, every state and what each must ignore or refuse."""

from typing import Iterable, List

import pytest

from xenchannel.protocol import (
    ERR_BAD_REQUEST,
    ERR_BUSY,
    ERR_NO_BUNDLE,
    ERR_UNKNOWN_SESSION,
    ERR_VERSION,
    Bundle,
    BundleError,
    Frame,
    FrameDecoder,
    MessageType,
    ProtocolError,
    RemoteError,
    VersionMismatch,
    encode_frame,
    encode_message,
)
from xenchannel.session import (
    V1_UNKNOWN_SESSION,
    Acknowledged,
    BundleAck,
    BundleProgress,
    BundleReceived,
    BundleReceiver,
    Busy,
    Error,
    GetBundle,
    GuestSession,
    GuestState,
    Hello,
    Ignored,
    Knock,
    Knocked,
    Query,
    QueryReceived,
    QueryReply,
    SessionLost,
    Status,
    StatusAck,
    Welcome,
    Welcomed,
    bundle_frames,
)

LINK = "0123456789abcdef"
BUNDLE = Bundle({"instance-id": "iid-1", "local-hostname": "web1"}, b"#cloud-config\n")


def frames(data: bytes) -> List[Frame]:
    return [f for f in FrameDecoder().feed(data) if isinstance(f, Frame)]


def one(data: bytes) -> Frame:
    (frame,) = frames(data)
    return frame


def machine() -> GuestSession:
    return GuestSession([1], "test-guest", 0x100)


def welcome_for(hello: Frame, session: str = "s-1", link: str = LINK, version: int = 1) -> Frame:
    nonce = Hello.from_frame(hello).nonce
    return one(Welcome(nonce, session, link, version, [1]).encode(hello.request_id))


def ready() -> GuestSession:
    m = machine()
    hello = one(m.hello())
    event = m.receive(welcome_for(hello))
    assert isinstance(event, Welcomed)
    return m


def feed(m: GuestSession, data: Iterable[bytes]) -> list:
    return [m.receive(one(d)) for d in data]


# ------------------------------------------------------------------ handshake


def test_hello_starts_greeting_and_welcome_makes_the_session() -> None:
    m = machine()
    assert m.state == GuestState.IDLE and m.session is None
    hello = one(m.hello())
    assert hello.type == MessageType.HELLO and m.state == GuestState.GREETING
    body = Hello.from_frame(hello)
    assert body.versions == [1] and body.agent == "test-guest"
    event = m.receive(welcome_for(hello, session="s-9"))
    assert isinstance(event, Welcomed)
    assert (event.session.session_id, event.session.link, event.session.version) == (
        "s-9",
        LINK,
        1,
    )
    assert event.session.hellos == 1
    assert m.state == GuestState.READY and m.session is event.session


def test_repeated_hellos_keep_one_nonce_and_any_of_them_may_be_answered() -> None:
    m = machine()
    first, second, third = one(m.hello()), one(m.hello()), one(m.hello())
    nonces = {Hello.from_frame(f).nonce for f in (first, second, third)}
    assert len(nonces) == 1
    assert len({first.request_id, second.request_id, third.request_id}) == 3
    assert m.hellos_sent == 3
    # dom0 answers the first HELLO it read: a WELCOME carries that id, not the last.
    assert isinstance(m.receive(welcome_for(first)), Welcomed)


def test_a_new_handshake_has_a_fresh_nonce() -> None:
    m = ready()
    old = m.session
    assert old is not None
    m.lose_session()
    assert m.state == GuestState.IDLE and m.session is None
    hello = one(m.hello())
    assert Hello.from_frame(hello).nonce != old.nonce
    assert m.hellos_sent == 1


def test_a_welcome_for_another_nonce_is_ignored() -> None:
    m = machine()
    hello = one(m.hello())
    stale = one(Welcome("x" * 32, "s-old", LINK, 1, [1]).encode(hello.request_id))
    assert isinstance(m.receive(stale), Ignored)
    assert m.state == GuestState.GREETING
    unreadable = one(encode_frame(MessageType.WELCOME, b"{not json", hello.request_id))
    assert isinstance(m.receive(unreadable), Ignored)
    assert isinstance(m.receive(welcome_for(hello)), Welcomed)


def test_a_welcome_with_a_version_we_do_not_speak_is_refused() -> None:
    m = machine()
    hello = one(m.hello())
    with pytest.raises(ProtocolError, match="chose protocol version 7, which this guest"):
        m.receive(welcome_for(hello, version=7))


def test_a_version_error_to_our_hello_is_a_version_mismatch() -> None:
    m = machine()
    hello = one(m.hello())
    refusal = Error(ERR_VERSION, "this agent speaks 2").encode(hello.request_id)
    with pytest.raises(VersionMismatch, match=r"refused the handshake: this agent speaks 2 \("):
        m.receive(one(refusal))
    assert m.state == GuestState.IDLE


def test_another_error_to_our_hello_is_raised_as_the_remote_error() -> None:
    m = machine()
    hello = one(m.hello())
    with pytest.raises(RemoteError, match="busy"):
        m.receive(one(Error("busy", "busy").encode(hello.request_id)))


def test_an_error_for_someone_elses_request_does_not_end_the_handshake() -> None:
    m = machine()
    hello = one(m.hello())
    other = Error(ERR_VERSION, "old").encode(hello.request_id ^ 0xFFFF)
    assert isinstance(m.receive(one(other)), Ignored)
    assert m.state == GuestState.GREETING


def test_a_knock_while_greeting_asks_for_a_hello_now() -> None:
    m = machine()
    m.hello()
    assert isinstance(m.receive(one(Knock([1], LINK).encode())), Knocked)
    assert isinstance(machine().receive(one(Knock([1], LINK).encode())), Knocked)


@pytest.mark.parametrize(
    "data",
    [
        Hello("n" * 32, [1], "echo").encode(5),  # our own frame, echoed by a cooked tty
        Status("s-1", "applied").encode(5),
        encode_frame(0x7E, b"", 5),  # a type nobody defined
    ],
    ids=["hello-echo", "status-echo", "unknown-type"],
)
def test_frames_the_host_may_not_send_are_ignored_in_every_state(data: bytes) -> None:
    for m in (machine(), ready()):
        before = m.state
        assert isinstance(m.receive(one(data)), Ignored)
        assert m.state == before


def test_requests_need_a_session() -> None:
    m = machine()
    with pytest.raises(ProtocolError, match="cannot ask for the bundle in state idle"):
        m.get_bundle(BundleReceiver())
    m.hello()
    with pytest.raises(ProtocolError, match="cannot report in state greeting"):
        m.report(lambda sid: Status(sid, "applied"))


# ------------------------------------------------------------------ bundle


def test_a_whole_transfer_gives_the_verified_bundle_then_ready() -> None:
    m = ready()
    request = one(m.get_bundle(BundleReceiver()))
    assert request.type == MessageType.GET_BUNDLE and m.state == GuestState.FETCHING
    assert GetBundle.from_frame(request).session == "s-1"
    events = feed(m, bundle_frames(BUNDLE.encode(), request.request_id, chunk_size=16))
    assert all(isinstance(e, BundleProgress) for e in events[:-1])
    assert events[-2].received == events[-2].total == len(BUNDLE.encode())
    done = events[-1]
    assert isinstance(done, BundleReceived) and done.bundle == BUNDLE
    assert m.state == GuestState.READY


def test_bundle_frames_for_an_earlier_request_are_ignored() -> None:
    m = ready()
    first = one(m.get_bundle(BundleReceiver()))
    second = one(m.get_bundle(BundleReceiver()))  # the first stalled: asked again
    late = feed(m, bundle_frames(BUNDLE.encode(), first.request_id))
    assert all(isinstance(e, Ignored) for e in late)
    assert isinstance(
        feed(m, bundle_frames(BUNDLE.encode(), second.request_id))[-1], BundleReceived
    )


def test_a_cut_transfer_resumes_from_the_first_missing_chunk() -> None:
    m = ready()
    receiver = BundleReceiver()
    request = one(m.get_bundle(receiver))
    parts = list(bundle_frames(BUNDLE.encode(), request.request_id, chunk_size=8))
    feed(m, parts[:4])  # BEGIN and chunks 0..2, then the line went quiet
    again = GetBundle.from_frame(one(m.get_bundle(receiver)))
    assert again.resume is not None and again.resume.chunk == 3


def test_a_lost_chunk_raises_and_keeps_what_came_before() -> None:
    m = ready()
    receiver = BundleReceiver()
    request = one(m.get_bundle(receiver))
    parts = list(bundle_frames(BUNDLE.encode(), request.request_id, chunk_size=8))
    feed(m, parts[:2])
    with pytest.raises(ProtocolError, match="chunk 2 arrived where chunk 1 was expected"):
        m.receive(one(parts[3]))
    assert receiver.resume() is not None


def test_a_bundle_failing_its_digest_is_discarded() -> None:
    m = ready()
    receiver = BundleReceiver()
    request = one(m.get_bundle(receiver))
    parts = list(bundle_frames(BUNDLE.encode(), request.request_id))
    parts[-1] = list(bundle_frames(b"other", request.request_id))[-1]  # END, wrong digest
    with pytest.raises(BundleError, match="fails its SHA-256 check"):
        feed(m, parts)
    assert receiver.resume() is None


def test_an_error_to_get_bundle_is_raised_and_leaves_the_session() -> None:
    m = ready()
    request = one(m.get_bundle(BundleReceiver()))
    refusal = Error(ERR_NO_BUNDLE, "dom0 has no metadata for this domain")
    with pytest.raises(RemoteError, match="no metadata"):
        m.receive(one(refusal.encode(request.request_id)))
    assert m.state == GuestState.READY and m.session is not None


# ------------------------------------------------------------------ session loss


def test_unknown_session_is_session_loss_not_an_error() -> None:
    m = ready()
    request = one(m.get_bundle(BundleReceiver()))
    lost = Error(ERR_BAD_REQUEST, "unknown session; send HELLO first")
    event = m.receive(one(lost.encode(request.request_id)))
    assert isinstance(event, SessionLost)
    assert m.state == GuestState.IDLE and m.session is None


def test_the_version_2_code_unknown_session_is_session_loss() -> None:
    m = ready()
    request = one(m.report(lambda session: Status(session, "applied")))
    lost = Error(ERR_UNKNOWN_SESSION, "whatever the sentence says")
    assert isinstance(m.receive(one(lost.encode(request.request_id))), SessionLost)
    assert m.state == GuestState.IDLE


def test_only_the_exact_version_1_text_with_bad_request_is_session_loss() -> None:
    # The old text is matched whole, never a word of it: "session" in another sentence
    # is just a refusal.
    for error in (
        Error(ERR_BAD_REQUEST, "GET_BUNDLE session must be a string"),
        Error(ERR_NO_BUNDLE, V1_UNKNOWN_SESSION),
    ):
        m = ready()
        request = one(m.get_bundle(BundleReceiver()))
        with pytest.raises(RemoteError):
            m.receive(one(error.encode(request.request_id)))
        assert m.state == GuestState.READY and m.session is not None


def test_busy_to_get_bundle_says_when_to_ask_again_and_keeps_the_session() -> None:
    m = ready()
    request = one(m.get_bundle(BundleReceiver()))
    event = m.receive(one(Error(ERR_BUSY, "slow down", 0.25).encode(request.request_id)))
    assert isinstance(event, Busy) and event.retry_after == 0.25
    assert m.state == GuestState.READY and m.session is not None


@pytest.mark.parametrize(("asked", "bounded"), [(3600, 5.0), (-1, 0.05), ("soon", None)])
def test_a_hosts_retry_after_is_bounded(asked: object, bounded: object) -> None:
    m = ready()
    request = one(m.get_bundle(BundleReceiver()))
    body = {"code": ERR_BUSY, "message": "slow down", "retry_after": asked}
    event = m.receive(one(encode_message(MessageType.ERROR, body, request.request_id)))
    assert isinstance(event, Busy)
    assert event.retry_after == (bounded if bounded is not None else 0.05)


def test_busy_to_a_report_is_a_refusal() -> None:
    m = ready()
    request = one(m.report(lambda session: Status(session, "applied")))
    with pytest.raises(RemoteError, match="slow down"):
        m.receive(one(Error(ERR_BUSY, "slow down", 1.0).encode(request.request_id)))


def test_a_knock_from_a_new_connection_loses_the_session() -> None:
    m = ready()
    m.get_bundle(BundleReceiver())
    event = m.receive(one(Knock([1], "fedcba9876543210").encode()))
    assert isinstance(event, SessionLost) and m.session is None


def test_a_late_knock_of_our_own_connection_is_ignored() -> None:
    m = ready()
    m.get_bundle(BundleReceiver())
    assert isinstance(m.receive(one(Knock([1], LINK).encode())), Ignored)
    assert m.state == GuestState.FETCHING


def test_a_knock_without_a_link_loses_the_session() -> None:
    m = ready()
    assert isinstance(m.receive(one(Knock([1], "").encode())), SessionLost)


# ------------------------------------------------------------------ reports and queries


def test_a_report_is_acknowledged_by_status_ack_for_its_request() -> None:
    m = ready()
    sent = one(m.report(lambda sid: BundleAck(sid, "ab" * 32)))
    assert sent.type == MessageType.BUNDLE_ACK and m.state == GuestState.REPORTING
    assert BundleAck.from_frame(sent).session == "s-1"
    assert isinstance(m.receive(one(StatusAck().encode(sent.request_id ^ 1))), Ignored)
    assert isinstance(
        m.receive(one(Welcome(None, None, "", 1, [1]).encode(sent.request_id))), Ignored
    )
    assert isinstance(m.receive(one(StatusAck().encode(sent.request_id))), Acknowledged)
    assert m.state == GuestState.READY


def test_a_refused_report_raises_the_remote_error() -> None:
    m = ready()
    sent = one(m.report(lambda sid: Status(sid, "applied")))
    with pytest.raises(RemoteError, match="changed"):
        m.receive(one(Error("stale-bundle", "the bundle changed").encode(sent.request_id)))


def test_queries_are_answered_only_when_no_request_is_outstanding() -> None:
    for m in (machine(), ready()):
        event = m.receive(one(Query(["version"]).encode(0x77)))
        assert isinstance(event, QueryReceived) and event.query.what == ["version"]
        reply = one(m.answer(event, {"version": "1"}))
        assert reply.request_id == 0x77 and QueryReply.from_frame(reply).answers == {"version": "1"}
    busy = ready()
    busy.get_bundle(BundleReceiver())
    assert isinstance(busy.receive(one(Query(["version"]).encode(0x78))), Ignored)
    greeting = machine()
    greeting.hello()
    assert isinstance(greeting.receive(one(Query(["version"]).encode(0x79))), Ignored)


def test_a_query_with_an_unreadable_body_still_gets_an_answer() -> None:
    event = machine().receive(one(encode_frame(MessageType.QUERY, b"\xff{", 0x42)))
    assert isinstance(event, QueryReceived) and event.query.what == []
