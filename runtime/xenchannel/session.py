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

import base64
import binascii
import enum
import hashlib
import ipaddress
import re
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
    ERR_BUSY,
    ERR_NOT_ALLOWED,
    ERR_TOO_LARGE,
    ERR_UNKNOWN_SESSION,
    ERR_VERSION,
    MAX_BUNDLE_SIZE,
    STATUS_STATES,
    Bundle,
    BundleError,
    ChannelError,
    Frame,
    MessageType,
    ProtocolError,
    RemoteError,
    Sender,
    Skipped,
    VersionMismatch,
    bundle_chunks,
    chunk_count,
    encode_frame,
    encode_message,
    new_nonce,
    new_request_id,
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


# Error codes a version-1 peer does not know: it is sent bad-request with the same
# sentence instead, and acts on that as version 1 always did.
CODES_SINCE_V2 = frozenset((ERR_UNKNOWN_SESSION, ERR_TOO_LARGE, ERR_BUSY, ERR_NOT_ALLOWED))
# What a version-1 host says for unknown-session.  A guest still understands it, by
# exact text and only with bad-request, until release 0.3 (docs/protocol.md).
V1_UNKNOWN_SESSION = "unknown session; send HELLO first"
# How long a busy host may ask a guest to wait, as a guest reads it.
MIN_RETRY_AFTER = 0.05
MAX_RETRY_AFTER = 5.0


class Error(Message):
    """either: a code a peer acts on and one sentence, with the failed request's id;
    ``busy`` also says after how many seconds to ask again."""

    TYPE = MessageType.ERROR
    __slots__ = ("code", "message", "retry_after")

    def __init__(self, code: str, message: str, retry_after: Optional[float] = None) -> None:
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def body(self) -> Dict[str, Any]:
        body = {"code": self.code, "message": self.message}  # type: Dict[str, Any]
        if self.retry_after is not None:
            body["retry_after"] = round(self.retry_after, 3)
        return body

    @classmethod
    def parse(cls, body: Dict[str, Any]) -> "Error":
        retry_after = body.get("retry_after")
        if isinstance(retry_after, bool) or not isinstance(retry_after, (int, float)):
            retry_after = None
        else:
            # Bounded whatever the peer asks: a host cannot park a guest for long.
            retry_after = min(max(float(retry_after), MIN_RETRY_AFTER), MAX_RETRY_AFTER)
        return cls(str(body.get("code", "error")), str(body.get("message", "")), retry_after)

    def exception(self) -> RemoteError:
        return RemoteError(self.code, self.message)

    def for_version(self, version: int) -> "Error":
        """This error as a peer of ``version`` understands it."""
        if version < 2 and self.code in CODES_SINCE_V2:
            return Error(ERR_BAD_REQUEST, self.message)
        return self

    def is_session_lost(self) -> bool:
        """True if the peer no longer knows our session (the v2 code, or v1's text)."""
        return self.code == ERR_UNKNOWN_SESSION or (
            self.code == ERR_BAD_REQUEST and self.message == V1_UNKNOWN_SESSION
        )


def error_message(
    code: str,
    message: str,
    request_id: int = 0,
    version: int = CURRENT_VERSION,
    retry_after: Optional[float] = None,
) -> bytes:
    """An ERROR frame: ``code`` with its one sentence, answering ``request_id``, as a
    peer of ``version`` understands it."""
    error = Error(code, message, retry_after).for_version(version)
    return error.encode(request_id, version)


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
    __slots__ = ("instance_id", "reason", "report", "session", "state")

    def __init__(
        self,
        session: Optional[str],
        state: str,
        reason: Optional[str] = None,
        instance_id: Optional[str] = None,
        report: Optional["Report"] = None,
    ) -> None:
        self.session = session
        self.state = state
        self.reason = reason
        self.instance_id = instance_id
        self.report = report

    def body(self) -> Dict[str, Any]:
        body = {"session": self.session, "state": self.state}  # type: Dict[str, Any]
        if self.reason:
            body["reason"] = self.reason[:MAX_REASON]
        if self.instance_id:
            body["instance_id"] = self.instance_id
        if self.report is not None:
            # A host that predates reports ignores the key, as it does any unknown key.
            body["report"] = self.report.body()
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
        report = body.get("report")
        if report is not None and not isinstance(report, dict):
            raise BadMessage("STATUS report must be an object")
        # Kept only to these lengths, whatever a guest sends.
        return cls(
            _optional_str(body, "session"),
            state,
            None if reason is None else reason[:MAX_REASON],
            None if instance_id is None else instance_id[:MAX_INSTANCE_ID],
            None if report is None else Report.parse(report),
        )


# What a report may hold, whatever a guest sends: it is kept in dom0's state record.
CLOUD_INIT_RESULTS = ("done", "degraded", "error", "disabled")
MAX_REPORT_ERRORS = 16
MAX_REPORT_ERROR = 300
MAX_HOSTNAME = 253
MAX_INTERFACES = 32
MAX_INTERFACE_NAME = 64
MAX_ADDRESSES = 32
MAX_HOST_KEYS = 8
MAX_HOST_KEY = 4096
# How long a guest may say it keeps waiting for what its report lacks ("settling").
MAX_SETTLING = 3600
# The public key types OpenSSH writes as ssh_host_*_key.pub; the base64 blob starts with
# the same type name, which parse() checks, so a line is a public key, not any text.
HOST_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
)
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_BASE64_RE = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


def host_key_line(line: str) -> Optional[str]:
    """``"<type> <base64>"`` of an OpenSSH public key line, comment dropped; None if the
    line is not a public key of a type in HOST_KEY_TYPES."""
    fields = line.split()
    if len(fields) < 2 or fields[0] not in HOST_KEY_TYPES or len(line) > MAX_HOST_KEY:
        return None
    blob = fields[1]
    if not _BASE64_RE.match(blob):
        return None
    try:
        raw = base64.b64decode(blob, validate=True)
    except (ValueError, binascii.Error):
        return None
    if len(raw) < 4:
        return None
    (length,) = _SEQ.unpack(raw[:4])
    if raw[4 : 4 + length] != fields[0].encode("ascii"):
        return None
    return fields[0] + " " + blob


def host_key_fingerprint(key: str) -> str:
    """``SHA256:<base64>`` of a host key line, as ``ssh`` and ``ssh-keygen -l`` show it."""
    blob = base64.b64decode(key.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _bounded_strings(value: Any, what: str, count: int, length: int) -> List[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadMessage(f"report {what} must be a list of strings")
    return [v[:length] for v in value[:count]]


class Interface(Body):
    """One network interface as the guest sees it: name, MAC, addresses (``ip/prefix``)."""

    __slots__ = ("addresses", "mac", "name")

    def __init__(self, name: str, mac: Optional[str], addresses: Sequence[str]) -> None:
        self.name = name
        self.mac = mac
        self.addresses = list(addresses)

    def body(self) -> Dict[str, Any]:
        body = {"name": self.name, "addresses": self.addresses}  # type: Dict[str, Any]
        if self.mac:
            body["mac"] = self.mac.lower()
        return body

    @classmethod
    def parse(cls, body: Dict[str, Any]) -> "Interface":
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise BadMessage("report interface needs a name string")
        mac = body.get("mac")
        if mac is not None and (not isinstance(mac, str) or not _MAC_RE.match(mac.lower())):
            raise BadMessage("report interface mac must look like 00:16:3e:12:34:56")
        addresses = []
        for text in _bounded_strings(body.get("addresses"), "addresses", MAX_ADDRESSES, 64):
            try:
                addresses.append(str(ipaddress.ip_interface(text)))
            except ValueError:
                raise BadMessage(f"report interface address {text!r} is not ip/prefix") from None
        return cls(name[:MAX_INTERFACE_NAME], mac.lower() if mac else None, addresses)


class Report(Body):
    """guest: what the clone is once applying finished (sent inside STATUS): cloud-init's
    result where cloud-init applied, hostname, interfaces, SSH host public keys.  Only
    public facts: no key material but public keys, no user-data.

    ``settling`` (seconds): the clone still lacks a static address or its host keys and
    keeps watching this long; it sends STATUS again when they are there or it stops
    waiting.  Absent: the report is final.
    """

    __slots__ = (
        "cloud_init",
        "errors",
        "host_keys",
        "hostname",
        "interfaces",
        "recoverable_errors",
        "settling",
    )

    def __init__(
        self,
        hostname: Optional[str] = None,
        interfaces: Sequence[Interface] = (),
        host_keys: Sequence[str] = (),
        *,
        cloud_init: Optional[str] = None,
        errors: Sequence[str] = (),
        recoverable_errors: Sequence[str] = (),
        settling: Optional[int] = None,
    ) -> None:
        self.hostname = hostname
        self.interfaces = list(interfaces)
        self.host_keys = list(host_keys)
        self.cloud_init = cloud_init
        self.errors = list(errors)
        self.recoverable_errors = list(recoverable_errors)
        self.settling = settling

    def body(self) -> Dict[str, Any]:
        body = {
            "interfaces": [i.body() for i in self.interfaces[:MAX_INTERFACES]],
            # As a host keeps them: "<type> <base64>", comments (user@host) dropped.
            "host_keys": [k for k in map(host_key_line, self.host_keys) if k][:MAX_HOST_KEYS],
        }  # type: Dict[str, Any]
        if self.hostname:
            body["hostname"] = self.hostname
        if self.cloud_init:
            body["cloud_init"] = self.cloud_init
        if self.errors:
            body["errors"] = [e[:MAX_REPORT_ERROR] for e in self.errors[:MAX_REPORT_ERRORS]]
        if self.recoverable_errors:
            body["recoverable_errors"] = [
                e[:MAX_REPORT_ERROR] for e in self.recoverable_errors[:MAX_REPORT_ERRORS]
            ]
        if self.settling:
            body["settling"] = min(int(self.settling), MAX_SETTLING)
        return body

    @classmethod
    def parse(cls, body: Dict[str, Any]) -> "Report":
        hostname = body.get("hostname")
        if hostname is not None and not isinstance(hostname, str):
            raise BadMessage("report hostname must be a string")
        cloud_init = body.get("cloud_init")
        if cloud_init is not None and cloud_init not in CLOUD_INIT_RESULTS:
            raise BadMessage("report cloud_init must be one of " + ", ".join(CLOUD_INIT_RESULTS))
        interfaces = body.get("interfaces")
        if interfaces is None:
            interfaces = []
        if not isinstance(interfaces, list) or not all(isinstance(i, dict) for i in interfaces):
            raise BadMessage("report interfaces must be a list of objects")
        keys = []
        lines = _bounded_strings(body.get("host_keys"), "host_keys", MAX_HOST_KEYS, MAX_HOST_KEY)
        for line in lines:
            key = host_key_line(line)
            if key is None:
                raise BadMessage("report host_keys must be OpenSSH public key lines")
            keys.append(key)
        settling = body.get("settling")
        if settling is not None and (
            isinstance(settling, bool)
            or not isinstance(settling, int)
            or not 0 < settling <= MAX_SETTLING
        ):
            raise BadMessage(f"report settling must be whole seconds from 1 to {MAX_SETTLING}")
        bound = (MAX_REPORT_ERRORS, MAX_REPORT_ERROR)
        return cls(
            None if hostname is None else hostname[:MAX_HOSTNAME],
            [Interface.parse(i) for i in interfaces[:MAX_INTERFACES]],
            keys,
            cloud_init=cloud_init,
            errors=_bounded_strings(body.get("errors"), "errors", *bound),
            recoverable_errors=_bounded_strings(
                body.get("recoverable_errors"), "recoverable_errors", *bound
            ),
            settling=settling,
        )

    def addresses(self) -> List[str]:
        """Every reported address without its prefix (``10.0.0.5``, ``fd00::5``)."""
        return [a.split("/")[0] for i in self.interfaces for a in i.addresses]


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


class Busy(Event):
    """dom0 is pacing our GET_BUNDLEs: ask again after ``retry_after`` seconds."""

    __slots__ = ("retry_after",)

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after


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
        self._outstanding_kind = MessageType.HELLO  # and what it answers

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
        self._outstanding_kind = MessageType.GET_BUNDLE
        request = GetBundle(self.session.session_id, receiver.resume())
        return request.encode(self._outstanding, self.version)

    def report(self, build: Callable[[str], Message]) -> bytes:
        """A STATUS or BUNDLE_ACK for this session (``build(session_id)``), abandoning
        any request still outstanding, as ``get_bundle`` does."""
        self._require("report", *_WITH_SESSION)
        assert self.session is not None
        self.state = GuestState.REPORTING
        self._outstanding = self._next_id()
        message = build(self.session.session_id)
        self._outstanding_kind = message.TYPE
        return message.encode(self._outstanding, self.version)

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
        if error.is_session_lost():
            self.lose_session()
            return SessionLost("the dom0 agent does not know this session")
        self.state = GuestState.READY
        if error.code == ERR_BUSY and self._outstanding_kind == MessageType.GET_BUNDLE:
            return Busy(error.retry_after or MIN_RETRY_AFTER)
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


# --------------------------------------------------------------------------- the host's session


class HostState(enum.Enum):
    """Where the host's end of one connection is."""

    KNOCKED = "knocked"  # connected, KNOCK sent: no session yet, a HELLO is awaited
    SERVING = "serving"  # a session: requests are answered
    SENDING = "sending"  # a session, and the bundle streams (BEGIN, CHUNK..., END)


# The guest's requests that name a session, refused without one, by their bodies.
_SESSION_REQUESTS = {
    MessageType.GET_BUNDLE: GetBundle,
    MessageType.BUNDLE_ACK: BundleAck,
    MessageType.STATUS: Status,
}  # type: Dict[MessageType, Type[Any]]
_GUEST_REQUESTS = frozenset((MessageType.HELLO, *_SESSION_REQUESTS))

# A guest may ask for its bundle again (a resume after noise), but each request costs a
# store read and a SHA-256 over up to 16 MiB: a hostile guest asking thousands of times a
# second must not turn that into a CPU load on dom0.  A token bucket per connection: a
# burst an honest guest never exceeds (one fetch, a few resumes), then a few a second.
GET_BUNDLE_BURST = 4
GET_BUNDLE_RATE = 4.0  # requests per second once the burst is spent
MAX_GUEST_AGENT = 100
MSG_ACK_MISMATCH = "guest acknowledged a bundle with a different digest"


def printable(text: str, limit: int) -> str:
    """``text`` without control characters, at most ``limit`` long: safe to log."""
    return "".join(ch for ch in text if ch.isprintable())[:limit]


class Echoed(Ignored):
    """A frame only the host sends: our own bytes echoed by a guest tty in cooked mode."""

    __slots__ = ()


class Greeted(Event):
    """A HELLO was answered with ``reply`` (a WELCOME): a new session, or the same one
    again for a HELLO repeated with the same nonce."""

    __slots__ = ("guest_agent", "repeated", "reply", "version")

    def __init__(
        self, version: int, guest_agent: Optional[str], repeated: bool, reply: bytes
    ) -> None:
        self.version = version
        self.guest_agent = guest_agent
        self.repeated = repeated
        self.reply = reply


class Refused(Event):
    """A guest request answered with ``reply`` (an ERROR).  ``record`` is False for
    refusals that are normal (an unknown session after a restart, pacing)."""

    __slots__ = ("code", "message", "message_type", "record", "reply")

    def __init__(
        self, message_type: str, code: str, message: str, record: bool, reply: bytes
    ) -> None:
        self.message_type = message_type
        self.code = code
        self.message = message
        self.record = record
        self.reply = reply


class Dropped(Event):
    """A guest request left unanswered on purpose: a version-1 guest's GET_BUNDLE past
    the pacing bound (it cannot be told ``busy``).  Dropped, not queued, so a flood
    costs dom0 nothing later and delays no later request; the guest asks again after its
    own timeout."""

    __slots__ = ("message_type", "reason")

    def __init__(self, message_type: str, reason: str) -> None:
        self.message_type = message_type
        self.reason = reason


class BundleRequested(Event):
    """GET_BUNDLE in this session: read the store, then ``HostSession.send_bundle``.
    ``delay`` is how long a version-1 guest's request waits for its turn (pacing)."""

    __slots__ = ("delay", "request_id", "resume", "session")

    def __init__(
        self, request_id: int, session: str, resume: Optional[Resume], delay: float
    ) -> None:
        self.request_id = request_id
        self.session = session
        self.resume = resume
        self.delay = delay


class DeliveryReported(Event):
    """BUNDLE_ACK: compare with the store's digest, then ``HostSession.confirm_delivery``."""

    __slots__ = ("request_id", "sha256")

    def __init__(self, request_id: int, sha256: str) -> None:
        self.request_id = request_id
        self.sha256 = sha256


class Delivered(Event):
    """The acknowledged digest is this domain's bundle: record it, send ``reply``."""

    __slots__ = ("reply", "sha256")

    def __init__(self, sha256: str, reply: bytes) -> None:
        self.sha256 = sha256
        self.reply = reply


class StatusReported(Event):
    """STATUS: record it, then send ``HostSession.acknowledge(request_id)``."""

    __slots__ = ("request_id", "status")

    def __init__(self, request_id: int, status: Status) -> None:
        self.request_id = request_id
        self.status = status


class QueryAnswered(Event):
    """The QUERY_REPLY to one of our queries."""

    __slots__ = ("answers", "request_id")

    def __init__(self, request_id: int, answers: Dict[str, Any]) -> None:
        self.request_id = request_id
        self.answers = answers


class QueryFailed(Event):
    """One of our queries failed: the guest refused it, or its reply is unreadable."""

    __slots__ = ("error", "request_id")

    def __init__(self, request_id: int, error: ChannelError) -> None:
        self.request_id = request_id
        self.error = error


class GuestError(Event):
    """An ERROR from the guest that answers nothing we wait for (safe to log)."""

    __slots__ = ("code", "message")

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message


class HostSession:
    """The host's half of the session rules for one connection, sans-IO.

    The driver (``dom0/connection.py``) sends ``knock()`` on connect and whenever the guest
    has been silent for a while, feeds every decoded frame to ``receive`` with the time,
    sends the ``reply`` an event carries, and answers the events that need the store
    (``BundleRequested``, ``DeliveryReported``, ``StatusReported``) through the methods
    named there.  It streams bundle frames only while ``state`` is SENDING: a new
    handshake or a version mismatch ends the transfer.
    """

    def __init__(
        self,
        versions: Sequence[int],
        link: str,
        burst: int = GET_BUNDLE_BURST,
        rate: float = GET_BUNDLE_RATE,
        now: float = 0.0,
    ) -> None:
        self.versions = sorted(versions)
        self.link = link  # names this connection in KNOCK and WELCOME
        self.state = HostState.KNOCKED
        self.session_id: Optional[str] = None
        self.version = self.versions[-1]
        self._nonce: Optional[str] = None  # the HELLO nonce that made the session
        self._burst = float(burst)
        self._rate = rate
        self._tokens = float(burst)
        self._tokens_at = now
        self._queries: Set[int] = set()
        self._query_id = new_request_id()

    # ------------------------------------------------------------------ what to send

    def knock(self) -> bytes:
        """ "I am connected; greet me": sent on connect and after a silence."""
        return Knock(self.versions, self.link).encode(0, self.versions[-1])

    def send_bundle(
        self, event: BundleRequested, encoded: bytes, sha256: str, chunk_size: int
    ) -> Optional[Tuple[Iterator[bytes], int, int]]:
        """(frames, first chunk, chunks) answering ``event``; None if its session ended
        while the driver read the store.  A resume is honoured only for this digest."""
        if event.session != self.session_id:
            return None
        chunks = chunk_count(len(encoded), chunk_size)
        first = 0
        resume = event.resume
        if resume is not None and resume.sha256 == sha256 and 0 <= resume.chunk < chunks:
            first = resume.chunk
        self.state = HostState.SENDING
        frames = bundle_frames(encoded, event.request_id, self.version, chunk_size, first)
        return frames, first, chunks

    def transfer_done(self) -> None:
        """The last frame of the bundle was written."""
        if self.state == HostState.SENDING:
            self.state = HostState.SERVING

    def refuse(self, request_id: int, code: str, message: str, message_type: str) -> Refused:
        """Refuse a request for a reason only the driver knows (the store's)."""
        return self._refused(message_type, code, message, False, request_id)

    def confirm_delivery(self, event: DeliveryReported, sha256: Optional[str]) -> Event:
        """``Delivered`` if the guest acknowledged ``sha256`` (the store's digest now)."""
        if sha256 is None or event.sha256 != sha256:
            return self._refused(
                "BUNDLE_ACK", ERR_NOT_ALLOWED, MSG_ACK_MISMATCH, True, event.request_id
            )
        return Delivered(sha256, self.acknowledge(event.request_id))

    def acknowledge(self, request_id: int) -> bytes:
        """STATUS_ACK: the guest's report is recorded."""
        return StatusAck().encode(request_id, self.version)

    def query(self, what: Sequence[str]) -> Tuple[int, bytes]:
        """(request id, QUERY frame); the reply comes as QueryAnswered or QueryFailed."""
        self._query_id = next_request_id(self._query_id)
        while self._query_id in self._queries:
            self._query_id = next_request_id(self._query_id)
        self._queries.add(self._query_id)
        return self._query_id, Query(what).encode(self._query_id, self.version)

    def forget_query(self, request_id: int) -> None:
        """Stop waiting for a reply (the driver timed out): a late one is ignored."""
        self._queries.discard(request_id)

    def oversized(self, skipped: Skipped) -> Optional[bytes]:
        """The answer to a guest request the decoder refused as too large: too-large in
        a version-2 session, so the guest need not wait for its timeout; else None."""
        if (
            skipped.type not in _GUEST_REQUESTS
            or not skipped.request_id
            or self.session_id is None
            or self.version < 2
        ):
            return None
        return error_message(ERR_TOO_LARGE, skipped.reason, skipped.request_id, self.version)

    # ------------------------------------------------------------------ what arrived

    def receive(self, frame: Frame, now: float) -> Event:
        """What a decoded frame from the guest means; ``now`` is a monotonic clock."""
        if not frame.is_from(Sender.GUEST):
            return Echoed("not a guest frame (our own, echoed)")
        mtype = MessageType(frame.type)
        if mtype == MessageType.QUERY_REPLY:
            return self._on_query_reply(frame)
        if mtype == MessageType.ERROR:
            return self._on_guest_error(frame)
        try:
            if mtype == MessageType.HELLO:
                return self._on_hello(Hello.from_frame(frame), frame.request_id)
            message = _SESSION_REQUESTS[mtype].from_frame(frame)
        except ProtocolError as exc:
            return self._refused(mtype.name, ERR_BAD_REQUEST, str(exc), True, frame.request_id)
        if self.session_id is None or message.session != self.session_id:
            # Normal after an agent restart: the guest greets again.  Answered in the
            # version the request was sent in, which is the one its session spoke.
            version = frame.version if frame.version in self.versions else self.versions[0]
            reply = error_message(
                ERR_UNKNOWN_SESSION, V1_UNKNOWN_SESSION, frame.request_id, version
            )
            return Refused(mtype.name, ERR_UNKNOWN_SESSION, V1_UNKNOWN_SESSION, False, reply)
        if isinstance(message, GetBundle):
            return self._on_get_bundle(message, frame.request_id, now)
        if isinstance(message, BundleAck):
            return DeliveryReported(frame.request_id, message.sha256)
        return StatusReported(frame.request_id, message)

    def _refused(
        self, message_type: str, code: str, message: str, record: bool, request_id: int
    ) -> Refused:
        reply = error_message(code, message, request_id, self.version)
        return Refused(message_type, code, message, record, reply)

    def _on_hello(self, hello: Hello, request_id: int) -> Event:
        try:
            version = negotiate_version(self.versions, hello.versions, "guest")
        except VersionMismatch as exc:
            # The guest started over with versions we cannot speak: its session is gone.
            self.session_id = self._nonce = None
            self.state = HostState.KNOCKED
            reply = error_message(ERR_VERSION, str(exc), request_id, self.versions[-1])
            return Refused("HELLO", ERR_VERSION, str(exc), True, reply)
        guest_agent = printable(hello.agent, MAX_GUEST_AGENT) if hello.agent is not None else None
        repeated = (
            self.session_id is not None and hello.nonce == self._nonce and version == self.version
        )
        if not repeated:
            # A new nonce means the guest started over: its old session and transfer
            # are gone.  (A resent HELLO with the same nonce can cross our WELCOME on a
            # busy channel: it gets the same session, or the GET_BUNDLE already on its
            # way would be refused.)
            self.session_id = new_nonce()
            self._nonce = hello.nonce
            self.version = version
            self.state = HostState.SERVING
        welcome = Welcome(hello.nonce, self.session_id, self.link, self.version, self.versions)
        return Greeted(version, guest_agent, repeated, welcome.encode(request_id, self.version))

    def _on_get_bundle(self, request: GetBundle, request_id: int, now: float) -> Event:
        assert self.session_id is not None
        self._tokens = min(self._burst, self._tokens + (now - self._tokens_at) * self._rate)
        self._tokens_at = now
        delay = 0.0
        if self._tokens < 1.0:
            wait = (1.0 - self._tokens) / self._rate
            if self.version >= 2:
                # A version-2 guest is told to come back, so nothing waits on dom0.
                message = f"too many GET_BUNDLE requests; ask again in {wait:.2f} s"
                reply = error_message(ERR_BUSY, message, request_id, self.version, wait)
                return Refused("GET_BUNDLE", ERR_BUSY, message, False, reply)
            if wait > self._burst / self._rate:
                # As many as a burst wait their turn already: this one is dropped.
                return Dropped("GET_BUNDLE", "past the pacing of GET_BUNDLE requests")
            # A version-1 guest's request waits its turn: the token it will use is spent
            # now, so the next one waits longer still (at most a burst's worth).
            delay = wait
        self._tokens -= 1.0
        return BundleRequested(request_id, self.session_id, request.resume, delay)

    def _on_query_reply(self, frame: Frame) -> Event:
        if frame.request_id not in self._queries:
            return Ignored("a reply nobody waits for: late, or from an earlier session")
        self._queries.discard(frame.request_id)
        try:
            return QueryAnswered(frame.request_id, QueryReply.from_frame(frame).answers)
        except ProtocolError as exc:
            return QueryFailed(frame.request_id, exc)

    def _on_guest_error(self, frame: Frame) -> Event:
        error = _parsed(Error, frame) or Error("error", "")
        code, message = printable(error.code, 64), printable(error.message, 300)
        if frame.request_id in self._queries:
            self._queries.discard(frame.request_id)
            return QueryFailed(frame.request_id, RemoteError(code, message))
        return GuestError(code, message)
