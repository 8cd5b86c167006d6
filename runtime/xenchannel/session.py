"""The protocol's messages: one class per message type, built and validated here only.

``protocol.py`` owns the bytes (frames, stuffing, checksums, the bundle container); this
module owns what a message body may hold.  Each message type has one class whose
``body()`` builds the payload a sender puts in a frame and whose ``parse()`` validates a
received one, raising ``BadMessage`` with the sentence the peer is answered with.  The
dom0 agent and the guest client only move these objects, bytes and time: neither builds
or reads a body key itself.  The bundle transfer (``BundleReceiver``, ``bundle_frames``)
lives here for the same reason: BEGIN, CHUNK and END are messages.

Sans-IO, standard library only, Python 3.6 to 3.13 (no dataclasses, no walrus).
docs/protocol.md is the specification of every body below.
"""

import enum
import hashlib
import struct
from typing import (
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
    Type,
    TypeVar,
)

from xenchannel.protocol import (
    CURRENT_VERSION,
    DEFAULT_CHUNK_SIZE,
    ERR_BAD_REQUEST,
    ERR_VERSION,
    MAX_BUNDLE_SIZE,
    STATUS_STATES,
    Bundle,
    BundleError,
    Frame,
    MessageType,
    ProtocolError,
    RemoteError,
    Sender,
    VersionMismatch,
    bundle_chunks,
    chunk_count,
    encode_frame,
    encode_message,
    new_nonce,
    next_request_id,
)

# Bounds on what a peer's body may make the receiver keep.
MAX_NONCE = 128
MAX_REASON = 500
MAX_INSTANCE_ID = 255

_SEQ = struct.Struct(">I")

B = TypeVar("B", bound="Body")
M = TypeVar("M", bound="Message")


class BadMessage(ProtocolError):
    """A received body breaks its message's rules; str() is the sentence to answer with."""


class Body:
    """A JSON object of the protocol as typed fields: ``body()`` builds it, ``parse()``
    validates a received one.  Subclasses name their fields in ``__slots__``."""

    __slots__ = ()

    def body(self) -> Dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def parse(cls: Type[B], body: Dict[str, Any]) -> B:
        """What a received body carries; BadMessage if it breaks the rules."""
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Body) and type(other) is type(self) and self.body() == other.body()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        names = self.__slots__  # type: Tuple[str, ...]
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
        return f"{type(self).__name__}({fields})"


class Message(Body):
    """The body of one message type (``TYPE``), which fixes who may send it."""

    TYPE = MessageType.ERROR  # overridden by every subclass
    __slots__ = ()

    @classmethod
    def from_frame(cls: Type[M], frame: Frame) -> M:
        """parse() of a frame's JSON payload; ProtocolError if it is not a JSON object."""
        return cls.parse(frame.json())

    def encode(self, request_id: int = 0, version: int = CURRENT_VERSION) -> bytes:
        """The frame that carries this message."""
        return encode_message(self.TYPE, self.body(), request_id, version)


def _optional_str(body: Dict[str, Any], key: str) -> Optional[str]:
    value = body.get(key)
    return value if isinstance(value, str) else None


def _versions(body: Dict[str, Any]) -> Optional[List[int]]:
    versions = body.get("versions")
    if (
        not isinstance(versions, list)
        or not versions
        or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v < 256 for v in versions)
    ):
        return None
    return sorted(set(versions))


def _int(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --------------------------------------------------------------------------- handshake


class Knock(Message):
    """host: "I am connected; greet me", naming this connection."""

    TYPE = MessageType.KNOCK
    __slots__ = ("link", "versions")

    def __init__(self, versions: Sequence[int], link: str) -> None:
        self.versions = list(versions)
        self.link = link

    def body(self) -> Dict[str, Any]:
        return {"versions": self.versions, "link": self.link}

    @classmethod
    def parse(cls, body: Dict[str, Any]) -> "Knock":
        # A guest acts on any KNOCK; a link it cannot read is "some other connection".
        return cls(_versions(body) or [], _optional_str(body, "link") or "")


class Hello(Message):
    """guest: a fresh nonce per session and the versions it speaks."""

    TYPE = MessageType.HELLO
    __slots__ = ("agent", "nonce", "versions")

    def __init__(self, nonce: str, versions: Sequence[int], agent: Optional[str] = None) -> None:
        self.nonce = nonce
        self.versions = sorted(set(versions))
        self.agent = agent

    def body(self) -> Dict[str, Any]:
        body = {"nonce": self.nonce, "versions": self.versions}  # type: Dict[str, Any]
        if self.agent is not None:
            body["agent"] = self.agent
        return body

    @classmethod
    def parse(cls, body: Dict[str, Any]) -> "Hello":
        nonce = body.get("nonce")
        if not isinstance(nonce, str) or not nonce or len(nonce) > MAX_NONCE:
            raise BadMessage(f"HELLO needs a nonce string of 1 to {MAX_NONCE} characters")
        versions = _versions(body)
        if versions is None:
            raise BadMessage("the guest's HELLO does not list the protocol versions it speaks")
        agent = body.get("agent")
        if agent is not None and not isinstance(agent, str):
            raise BadMessage("HELLO agent must be a string")
        # Anything else a guest says (a "domain" key, say) is deliberately not read.
        return cls(nonce, versions, agent)


class Welcome(Message):
    """host: the nonce echoed, the session it made, the version chosen."""

    TYPE = MessageType.WELCOME
    __slots__ = ("link", "nonce", "session", "version", "versions")

    def __init__(
        self,
        nonce: Optional[str],
        session: Optional[str],
        link: str,
        version: Optional[int],
        versions: Sequence[int],
    ) -> None:
        self.nonce = nonce
        self.session = session
        self.link = link
        self.version = version
        self.versions = list(versions)

    def body(self) -> Dict[str, Any]:
        return {
            "nonce": self.nonce,
            "session": self.session,
            "link": self.link,
            "version": self.version,
            "versions": self.versions,
        }

    @classmethod
    def parse(cls, body: Dict[str, Any]) -> "Welcome":
        # Lenient: a WELCOME whose nonce is not ours is dropped whatever else it holds;
        # the guest judges session and version only for its own nonce.
        return cls(
            _optional_str(body, "nonce"),
            _optional_str(body, "session"),
            _optional_str(body, "link") or "",
            _int(body.get("version")),
            _versions(body) or [],
        )


def parse_versions(body: Dict[str, Any], who: str) -> List[int]:
    """The versions a HELLO lists, sorted; ProtocolError naming ``who`` if it lists none."""
    versions = _versions(body)
    if versions is None:
        raise BadMessage(f"the {who}'s HELLO does not list the protocol versions it speaks")
    return versions


def negotiate_version(ours: Sequence[int], theirs: Sequence[int], who: str = "peer") -> int:
    """The highest version both sides speak; VersionMismatch if there is none."""
    common = set(ours) & set(theirs)
    if not common:
        raise VersionMismatch(
            f"no common protocol version: this side speaks {_fmt_versions(ours)}, "
            f"the {who} speaks {_fmt_versions(theirs)}; upgrade the older side"
        )
    return max(common)


def _fmt_versions(versions: Sequence[int]) -> str:
    return ", ".join(str(v) for v in sorted(versions)) or "none"


class Error(Message):
    """either: a code a peer acts on and one sentence, with the failed request's id."""

    TYPE = MessageType.ERROR
    __slots__ = ("code", "message")

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message

    def body(self) -> Dict[str, Any]:
        return {"code": self.code, "message": self.message}

    @classmethod
    def parse(cls, body: Dict[str, Any]) -> "Error":
        return cls(str(body.get("code", "error")), str(body.get("message", "")))

    def exception(self) -> RemoteError:
        return RemoteError(self.code, self.message)


def error_message(
    code: str, message: str, request_id: int = 0, version: int = CURRENT_VERSION
) -> bytes:
    """An ERROR frame: ``code`` with its one sentence, answering ``request_id``."""
    return Error(code, message).encode(request_id, version)


def raise_if_error(frame: Frame) -> None:
    """RemoteError if ``frame`` is an ERROR."""
    if frame.type == MessageType.ERROR:
        raise Error.from_frame(frame).exception()


# --------------------------------------------------------------------------- bundle transfer


class Resume(Body):
    """Where a GET_BUNDLE asks the transfer to continue: a digest and a chunk."""

    __slots__ = ("chunk", "sha256")

    def __init__(self, sha256: str, chunk: int) -> None:
        self.sha256 = sha256
        self.chunk = chunk

    def body(self) -> Dict[str, Any]:
        return {"sha256": self.sha256, "chunk": self.chunk}

    @classmethod
    def parse(cls, body: Dict[str, Any]) -> "Resume":
        sha256, chunk = body.get("sha256"), _int(body.get("chunk"))
        if not isinstance(sha256, str) or chunk is None:
            raise BadMessage("GET_BUNDLE resume must be an object with sha256 and chunk")
        return cls(sha256, chunk)


class GetBundle(Message):
    """guest: send me my bundle, from the start or from where ``resume`` says."""

    TYPE = MessageType.GET_BUNDLE
    __slots__ = ("resume", "session")

    def __init__(self, session: Optional[str], resume: Optional[Resume] = None) -> None:
        self.session = session
        self.resume = resume

    def body(self) -> Dict[str, Any]:
        body = {"session": self.session}  # type: Dict[str, Any]
        if self.resume is not None:
            body["resume"] = self.resume.body()
        return body

    @classmethod
    def parse(cls, body: Dict[str, Any]) -> "GetBundle":
        resume = body.get("resume")
        if resume is not None and not isinstance(resume, dict):
            raise BadMessage("GET_BUNDLE resume must be an object with sha256 and chunk")
        return cls(_optional_str(body, "session"), Resume.parse(resume) if resume else None)


class BundleBegin(Message):
    """host: the size, chunking and digest of the bundle about to stream."""

    TYPE = MessageType.BUNDLE_BEGIN
    __slots__ = ("chunk_size", "chunks", "first", "sha256", "size")

    def __init__(self, size: int, chunk_size: int, chunks: int, first: int, sha256: str) -> None:
        self.size = size
        self.chunk_size = chunk_size
        self.chunks = chunks
        self.first = first
        self.sha256 = sha256

    def body(self) -> Dict[str, Any]:
        return {
            "size": self.size,
            "chunk_size": self.chunk_size,
            "chunks": self.chunks,
            "first": self.first,
            "sha256": self.sha256,
        }

    @classmethod
    def parse(cls, body: Dict[str, Any]) -> "BundleBegin":
        try:
            size = int(body["size"])
            chunk_size = int(body["chunk_size"])
            chunks = int(body["chunks"])
            first = int(body.get("first", 0))
            sha256 = str(body["sha256"])
        except (KeyError, TypeError, ValueError):
            raise BadMessage("BUNDLE_BEGIN lacks size, chunk_size, chunks or sha256") from None
        if (
            size < 0
            or chunk_size <= 0
            or chunks != chunk_count(size, chunk_size)
            or not 0 <= first < chunks
        ):
            raise BadMessage("BUNDLE_BEGIN has inconsistent sizes")
        return cls(size, chunk_size, chunks, first, sha256)


class BundleEnd(Message):
    """host: the end-to-end digest again, after the last chunk."""

    TYPE = MessageType.BUNDLE_END
    __slots__ = ("sha256",)

    def __init__(self, sha256: Optional[str]) -> None:
        self.sha256 = sha256

    def body(self) -> Dict[str, Any]:
        return {"sha256": self.sha256}

    @classmethod
    def parse(cls, body: Dict[str, Any]) -> "BundleEnd":
        # A missing digest fails the receiver's comparison like a wrong one.
        return cls(_optional_str(body, "sha256"))


def encode_chunk(seq: int, data: bytes, request_id: int, version: int = CURRENT_VERSION) -> bytes:
    """A BUNDLE_CHUNK frame: binary, ``seq`` as u32 then the chunk's bytes."""
    return encode_frame(MessageType.BUNDLE_CHUNK, _SEQ.pack(seq) + data, request_id, version)


def parse_chunk(payload: bytes) -> Tuple[int, bytes]:
    """(sequence number, data) of a BUNDLE_CHUNK payload."""
    if len(payload) < _SEQ.size:
        raise BadMessage("a bundle chunk is too short to hold its sequence number")
    (seq,) = _SEQ.unpack(payload[: _SEQ.size])
    return seq, payload[_SEQ.size :]


def bundle_frames(
    encoded: bytes,
    request_id: int,
    version: int = CURRENT_VERSION,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    first: int = 0,
) -> Iterator[bytes]:
    """Every frame a host sends in answer to GET_BUNDLE: BEGIN, CHUNK..., END."""
    digest = hashlib.sha256(encoded).hexdigest()
    chunks = chunk_count(len(encoded), chunk_size)
    yield BundleBegin(len(encoded), chunk_size, chunks, first, digest).encode(request_id, version)
    for seq, data in bundle_chunks(encoded, chunk_size, first):
        yield encode_chunk(seq, data, request_id, version)
    yield BundleEnd(digest).encode(request_id, version)


class BundleAck(Message):
    """guest: received and verified the bundle with this digest."""

    TYPE = MessageType.BUNDLE_ACK
    __slots__ = ("session", "sha256")

    def __init__(self, session: Optional[str], sha256: str) -> None:
        self.session = session
        self.sha256 = sha256

    def body(self) -> Dict[str, Any]:
        return {"session": self.session, "sha256": self.sha256}

    @classmethod
    def parse(cls, body: Dict[str, Any]) -> "BundleAck":
        sha256 = body.get("sha256")
        if not isinstance(sha256, str):
            raise BadMessage("BUNDLE_ACK needs the sha256 of the bundle it acknowledges")
        return cls(_optional_str(body, "session"), sha256)


class BundleReceiver:
    """Reassembles a bundle from BEGIN/CHUNK/END frames and verifies it.

    A transfer cut off part way, or missing a chunk lost to corruption, is resumed:
    ``resume()`` says where to continue, and the host honours it only while its bundle
    has the same digest.  Only a failed digest or a chunk of the wrong length discards
    what was received.
    """

    def __init__(self, max_size: int = MAX_BUNDLE_SIZE) -> None:
        self.max_size = max_size
        self._data = bytearray()
        self._sha256 = None  # type: Optional[str]
        self._chunk_size = 0
        self._chunks = 0
        self._next = 0
        self._size = 0

    @property
    def progress(self) -> Tuple[int, int]:
        """(bytes received, bytes expected)."""
        return len(self._data), self._size

    def resume(self) -> Optional[Resume]:
        """Where a GET_BUNDLE should continue the last transfer; None to start over."""
        # Only a transfer cut off part way resumes; a complete one (even one whose
        # content then failed validation) has nothing left to ask for.
        if self._sha256 and 0 < self._next < self._chunks:
            return Resume(self._sha256, self._next)
        return None

    def begin(self, begin: BundleBegin) -> None:
        if begin.size > self.max_size:
            raise BundleError(
                f"the host offers a {begin.size}-byte bundle, over this guest's maximum of "
                f"{self.max_size} bytes; shrink the bundle on dom0"
            )
        if begin.first and (
            begin.sha256 != self._sha256
            or begin.first != self._next
            or begin.chunk_size != self._chunk_size
        ):
            raise ProtocolError("BUNDLE_BEGIN resumes a transfer this guest did not start")
        if not begin.first:
            self._data = bytearray()
        self._sha256, self._size = begin.sha256, begin.size
        self._chunk_size, self._chunks = begin.chunk_size, begin.chunks
        self._next = begin.first

    def chunk(self, payload: bytes) -> None:
        if self._sha256 is None:
            raise ProtocolError("a bundle chunk arrived before BUNDLE_BEGIN")
        seq, data = parse_chunk(payload)
        if seq != self._next:
            # A chunk was lost on the way: its frame failed a checksum (a 0xFF of noise
            # cuts a frame short).  What arrived before it passed its own CRC and the
            # whole is SHA-256-checked at the end, so keep it and resume from the gap:
            # on a noisy channel every attempt then makes progress.
            raise ProtocolError(f"bundle chunk {seq} arrived where chunk {self._next} was expected")
        expected = min(self._chunk_size, self._size - seq * self._chunk_size)
        if len(data) != expected and not (self._size == 0 and not data):
            self._discard()
            raise ProtocolError(f"bundle chunk {seq} has the wrong length")
        self._data.extend(data)
        self._next += 1

    def end(self, end: BundleEnd) -> Bundle:
        """Verify the digest and decode; nothing is usable before this succeeds."""
        if self._sha256 is None or self._next != self._chunks:
            raise ProtocolError(f"BUNDLE_END arrived after {self._next} of {self._chunks} chunks")
        data = bytes(self._data)
        digest = hashlib.sha256(data).hexdigest()
        if end.sha256 != self._sha256 or digest != self._sha256:
            self._discard()
            raise BundleError(
                "the received bundle fails its SHA-256 check; it was discarded and must be "
                "fetched again"
            )
        bundle = Bundle.decode(data)
        bundle.validate(self.max_size)
        return bundle

    def _discard(self) -> None:
        """Forget the transfer: data that failed a check is never resumed."""
        self._data = bytearray()
        self._sha256 = None
        self._next = 0

    @property
    def sha256(self) -> Optional[str]:
        return self._sha256


# --------------------------------------------------------------------------- status, queries


class Status(Message):
    """guest: how applying the bundle went (received, applied, failed with a reason)."""

    TYPE = MessageType.STATUS
    __slots__ = ("instance_id", "reason", "session", "state")

    def __init__(
        self,
        session: Optional[str],
        state: str,
        reason: Optional[str] = None,
        instance_id: Optional[str] = None,
    ) -> None:
        self.session = session
        self.state = state
        self.reason = reason
        self.instance_id = instance_id

    def body(self) -> Dict[str, Any]:
        body = {"session": self.session, "state": self.state}  # type: Dict[str, Any]
        if self.reason:
            body["reason"] = self.reason[:MAX_REASON]
        if self.instance_id:
            body["instance_id"] = self.instance_id
        return body

    @classmethod
    def parse(cls, body: Dict[str, Any]) -> "Status":
        state = body.get("state")
        if not isinstance(state, str) or state not in STATUS_STATES:
            raise BadMessage("STATUS state must be one of " + ", ".join(STATUS_STATES))
        reason = body.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise BadMessage("STATUS reason must be a string")
        instance_id = body.get("instance_id")
        if instance_id is not None and not isinstance(instance_id, str):
            raise BadMessage("STATUS instance_id must be a string")
        # Kept only to these lengths, whatever a guest sends.
        return cls(
            _optional_str(body, "session"),
            state,
            None if reason is None else reason[:MAX_REASON],
            None if instance_id is None else instance_id[:MAX_INSTANCE_ID],
        )


class StatusAck(Message):
    """host: recorded (answers BUNDLE_ACK and STATUS)."""

    TYPE = MessageType.STATUS_ACK
    __slots__ = ()

    def body(self) -> Dict[str, Any]:
        return {"recorded": True}

    @classmethod
    def parse(cls, body: Dict[str, Any]) -> "StatusAck":
        return cls()


class Query(Message):
    """host: what the in-guest agent should report."""

    TYPE = MessageType.QUERY
    __slots__ = ("what",)

    def __init__(self, what: Sequence[str]) -> None:
        self.what = list(what)

    def body(self) -> Dict[str, Any]:
        return {"what": self.what}

    @classmethod
    def parse(cls, body: Dict[str, Any]) -> "Query":
        what = body.get("what")
        return cls([str(key) for key in what] if isinstance(what, list) else [])


class QueryReply(Message):
    """guest: the answers, keyed as asked, with the QUERY's request id."""

    TYPE = MessageType.QUERY_REPLY
    __slots__ = ("answers",)

    def __init__(self, answers: Dict[str, Any]) -> None:
        self.answers = answers

    def body(self) -> Dict[str, Any]:
        return dict(self.answers)

    @classmethod
    def parse(cls, body: Dict[str, Any]) -> "QueryReply":
        return cls(dict(body))


# --------------------------------------------------------------------------- the guest's session


class GuestState(enum.Enum):
    """Where the guest's end of a session is; each state says what it waits for."""

    IDLE = "idle"  # no session: the next step is a HELLO
    GREETING = "greeting"  # HELLO sent (maybe again and again), WELCOME awaited
    READY = "ready"  # a session, no request outstanding; QUERYs are answered here
    # (and in IDLE: the in-guest agent answers dom0 without a session of its own)
    FETCHING = "fetching"  # GET_BUNDLE sent, BEGIN / CHUNK... / END awaited
    REPORTING = "reporting"  # STATUS or BUNDLE_ACK sent, STATUS_ACK awaited


_WITH_SESSION = (GuestState.READY, GuestState.FETCHING, GuestState.REPORTING)


class SessionInfo:
    """What a completed handshake agreed on."""

    __slots__ = ("hellos", "link", "nonce", "session_id", "version")

    def __init__(self, session_id: str, version: int, nonce: str, link: str, hellos: int) -> None:
        self.session_id = session_id
        self.link = link  # the host connection this session lives on
        self.version = version
        self.nonce = nonce
        self.hellos = hellos


class Event:
    """What a received frame meant, for the driver to act on."""

    __slots__: Tuple[str, ...] = ()

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"{type(self).__name__}({fields})"


class Ignored(Event):
    """Nothing for this state: an echo, a stale reply, a frame of an earlier session."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class Knocked(Event):
    """The host (re)connected while we greet it: greet now rather than at the next tick."""

    __slots__ = ()


class Welcomed(Event):
    """The handshake is done."""

    __slots__ = ("session",)

    def __init__(self, session: SessionInfo) -> None:
        self.session = session


class SessionLost(Event):
    """The host no longer knows our session (it or QEMU restarted): greet it again."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class BundleProgress(Event):
    """A BEGIN or CHUNK of the bundle arrived and was taken."""

    __slots__ = ("received", "total")

    def __init__(self, received: int, total: int) -> None:
        self.received = received
        self.total = total


class BundleReceived(Event):
    """END arrived and the bundle passed its digest and validation."""

    __slots__ = ("bundle", "sha256")

    def __init__(self, bundle: Bundle, sha256: str) -> None:
        self.bundle = bundle
        self.sha256 = sha256


class Acknowledged(Event):
    """dom0 recorded our STATUS or BUNDLE_ACK."""

    __slots__ = ()


class QueryReceived(Event):
    """dom0 asks something; answer with ``GuestSession.answer``."""

    __slots__ = ("query", "request_id")

    def __init__(self, request_id: int, query: Query) -> None:
        self.request_id = request_id
        self.query = query


class GuestSession:
    """The guest's half of the session rules, sans-IO: frames in, events and bytes out.

    The driver (``guest/client.py``) moves bytes and keeps time: it sends what the
    ``hello``/``get_bundle``/``report``/``answer`` methods return, feeds every frame it
    decodes to ``receive``, and acts on the event that comes back.  A frame a peer must
    not send in this state is an ``Ignored`` event (stale bytes are normal on a channel);
    a refusal the guest cannot go on from raises the exception the caller sees.
    """

    def __init__(self, versions: Sequence[int], agent: str, first_request_id: int) -> None:
        self.versions = sorted(versions)
        self.agent = agent
        self.state = GuestState.IDLE
        self.session: Optional[SessionInfo] = None
        self.receiver: Optional[BundleReceiver] = None
        self._request_id = first_request_id
        self._nonce = ""
        self._hello_ids: Set[int] = set()
        self._outstanding = 0  # the request id a reply must carry

    @property
    def version(self) -> int:
        """The version frames are sent in: the session's, else our highest for HELLO."""
        return self.session.version if self.session else self.versions[-1]

    def _next_id(self) -> int:
        self._request_id = next_request_id(self._request_id)
        return self._request_id

    def _require(self, action: str, *states: GuestState) -> None:
        if self.state not in states:
            raise ProtocolError(f"cannot {action} in state {self.state.value}")

    # ------------------------------------------------------------------ what to send

    def hello(self) -> bytes:
        """A HELLO: the first starts a handshake with a fresh nonce, later ones repeat it."""
        if self.state != GuestState.GREETING:
            self.session = None
            self.state = GuestState.GREETING
            self._nonce = new_nonce()
            self._hello_ids = set()
        request_id = self._next_id()
        self._hello_ids.add(request_id)
        return Hello(self._nonce, self.versions, self.agent).encode(request_id, self.version)

    @property
    def request_id(self) -> int:
        """The id of the last request built."""
        return self._request_id

    @property
    def hellos_sent(self) -> int:
        return len(self._hello_ids)

    def get_bundle(self, receiver: BundleReceiver) -> bytes:
        """A GET_BUNDLE, resuming where ``receiver`` stopped.  Any request of ours still
        outstanding (a stalled transfer, an unanswered report) is abandoned: its late
        replies carry the old request id and are ignored."""
        self._require("ask for the bundle", *_WITH_SESSION)
        assert self.session is not None
        self.receiver = receiver
        self.state = GuestState.FETCHING
        self._outstanding = self._next_id()
        request = GetBundle(self.session.session_id, receiver.resume())
        return request.encode(self._outstanding, self.version)

    def report(self, build: Callable[[str], Message]) -> bytes:
        """A STATUS or BUNDLE_ACK for this session (``build(session_id)``), abandoning
        any request still outstanding, as ``get_bundle`` does."""
        self._require("report", *_WITH_SESSION)
        assert self.session is not None
        self.state = GuestState.REPORTING
        self._outstanding = self._next_id()
        return build(self.session.session_id).encode(self._outstanding, self.version)

    def answer(self, event: QueryReceived, reply: Dict[str, Any]) -> bytes:
        """The QUERY_REPLY to ``event``."""
        return QueryReply(reply).encode(event.request_id, self.version)

    def lose_session(self) -> None:
        """Forget the session (the driver gave up on it); the next step is a HELLO."""
        self.session = None
        self.state = GuestState.IDLE

    # ------------------------------------------------------------------ what arrived

    def receive(self, frame: Frame) -> Event:
        """What ``frame`` means in this state.

        Raises VersionMismatch or RemoteError when dom0 refuses the handshake or a
        request for good, ProtocolError for a WELCOME this guest cannot accept, and
        ProtocolError or BundleError for a transfer that went wrong (the receiver keeps
        what can be resumed).
        """
        if not frame.is_from(Sender.HOST):
            return Ignored("not a host frame (an echo of our own, or junk)")
        if frame.type == MessageType.KNOCK:
            return self._on_knock(frame)
        if self.state == GuestState.GREETING:
            return self._while_greeting(frame)
        if frame.type == MessageType.QUERY:
            if self.state not in (GuestState.IDLE, GuestState.READY):
                return Ignored("a QUERY while a request of ours is outstanding")
            # An unreadable body asks for nothing, and still gets its (empty) answer,
            # so dom0 is not left waiting for its timeout.
            return QueryReceived(frame.request_id, _parsed(Query, frame) or Query([]))
        if self.state not in (GuestState.FETCHING, GuestState.REPORTING):
            return Ignored("no request of ours is outstanding")
        if frame.request_id != self._outstanding:
            return Ignored("a reply to an earlier request")
        if frame.type == MessageType.ERROR:
            return self._on_error(frame)
        if self.state == GuestState.FETCHING:
            return self._while_fetching(frame)
        if frame.type == MessageType.STATUS_ACK:
            self.state = GuestState.READY
            return Acknowledged()
        return Ignored("not a STATUS_ACK")

    def _on_knock(self, frame: Frame) -> Event:
        if self.state in (GuestState.IDLE, GuestState.GREETING):
            return Knocked()
        # A KNOCK of the connection our session lives on was sent before we greeted and
        # delivered late (stale bytes are normal); one from another connection means the
        # agent or QEMU restarted and our session is gone.
        knock = _parsed(Knock, frame)
        link = knock.link if knock is not None else ""
        if self.session is not None and link and link == self.session.link:
            return Ignored("a late KNOCK of our own connection")
        self.lose_session()
        return SessionLost("the dom0 agent or QEMU reconnected; the session is gone")

    def _while_greeting(self, frame: Frame) -> Event:
        if frame.type == MessageType.WELCOME:
            welcome = _parsed(Welcome, frame)
            if welcome is None or welcome.nonce != self._nonce:
                return Ignored("a WELCOME meant for an earlier session or boot")
            if welcome.version not in self.versions or welcome.session is None:
                raise ProtocolError(
                    f"the dom0 agent chose protocol version {welcome.version!r}, which this "
                    f"guest does not speak ({_fmt_versions(self.versions)})"
                )
            assert welcome.version is not None
            self.session = SessionInfo(
                welcome.session, welcome.version, self._nonce, welcome.link, self.hellos_sent
            )
            self.state = GuestState.READY
            return Welcomed(self.session)
        if frame.type == MessageType.ERROR and frame.request_id in self._hello_ids:
            error = _parsed(Error, frame) or Error("error", "")
            self.state = GuestState.IDLE
            if error.code == ERR_VERSION:
                raise VersionMismatch(
                    f"the dom0 agent refused the handshake: {error.message} (this guest "
                    f"speaks {_fmt_versions(self.versions)})"
                )
            raise error.exception()
        return Ignored("not a WELCOME to our HELLO")

    def _on_error(self, frame: Frame) -> Event:
        error = _parsed(Error, frame) or Error("error", "")
        if error.code == ERR_BAD_REQUEST and "session" in error.message:
            self.lose_session()
            return SessionLost("the dom0 agent does not know this session")
        self.state = GuestState.READY
        raise error.exception()

    def _while_fetching(self, frame: Frame) -> Event:
        receiver = self.receiver
        assert receiver is not None
        if frame.type == MessageType.BUNDLE_BEGIN:
            receiver.begin(BundleBegin.from_frame(frame))
        elif frame.type == MessageType.BUNDLE_CHUNK:
            receiver.chunk(frame.payload)
        elif frame.type == MessageType.BUNDLE_END:
            bundle = receiver.end(BundleEnd.from_frame(frame))
            digest = receiver.sha256
            assert digest is not None  # end() succeeded, so the digest was checked
            self.state = GuestState.READY
            return BundleReceived(bundle, digest)
        else:
            return Ignored("not a part of the bundle")
        return BundleProgress(*receiver.progress)


def _parsed(kind: Type[M], frame: Frame) -> Optional[M]:
    """The frame's message, or None if its body is unreadable (garbage is dropped)."""
    try:
        return kind.from_frame(frame)
    except ProtocolError:
        return None
