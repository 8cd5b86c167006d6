"""The xenchannel wire protocol's lower half: frames, message types, the bundle.

The dom0 agent, the guest client, the in-guest agent and the cloud-init datasource all
speak through this module and ``session.py`` (each message's body, version negotiation,
the bundle transfer); nothing else in the project knows a byte of the wire format.
docs/protocol.md is the specification; the two modules are its only implementation.

It is sans-IO (it never reads or writes a file descriptor) and standard library only,
and it must run on every interpreter a guest may have: Python 3.6 to 3.13.
So: no dataclasses, no ``from __future__ import annotations``, no walrus operator.

Layers, bottom up:

* Frames: ``0xFF`` start marker, then a byte-stuffed body (``0xFF`` never occurs inside
  a frame, so the marker is unambiguous), ``"XC"``, version, type, flags, request id,
  payload length, header CRC32, payload, payload CRC32.  ``FrameDecoder`` turns any byte
  stream - garbage, echoes, half frames from a previous boot - into valid frames and
  ``Skipped`` notes, with memory bounded by the maximum payload size.
* Messages: a type byte with a fixed sender (host or guest) and a JSON object payload,
  except bundle chunks, which carry raw bytes.  What each payload holds is
  ``session.py``'s: here only the JSON rules every one of them shares.
* Bundles: meta-data, user-data, vendor-data and network-config in one binary container,
  sent in chunks and verified against a SHA-256 digest before anything is used.
"""

import binascii
import enum
import hashlib
import ipaddress
import json
import os
import re
import struct
import zlib
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple, Union

# Versions of the message set this implementation speaks, lowest first.  The frame
# layout itself never changes: a peer of any version can read a HELLO or an ERROR.
# Version 2 added the error codes a peer acts on (session.py, CODES_SINCE_V2).
PROTOCOL_VERSIONS: Tuple[int, ...] = (1, 2)
CURRENT_VERSION = PROTOCOL_VERSIONS[-1]

START = 0xFF
_START_BYTE = b"\xff"
# Byte stuffing: 0xFE is the escape byte; 0xFE 0x01 stands for 0xFF, 0xFE 0x02 for 0xFE.
_ESC = b"\xfe"
_ESC_FF = b"\xfe\x01"
_ESC_FE = b"\xfe\x02"

MARKER = b"XC"
# "XC", version, type, flags, request id, payload length.
_HEADER = struct.Struct(">2sBBHII")
_CRC = struct.Struct(">I")
HEADER_SIZE = _HEADER.size + _CRC.size  # unstuffed header including its CRC
TRAILER_SIZE = _CRC.size

DEFAULT_MAX_PAYLOAD = 1024 * 1024
# A 32 KiB chunk is 0.13 s on a 250 KiB/s channel: large enough that per-frame overhead
# is negligible (under 0.1 %), small enough that a lost frame costs little to resend.
DEFAULT_CHUNK_SIZE = 32 * 1024
MAX_BUNDLE_SIZE = 16 * 1024 * 1024
# Levels of JSON nesting a bundle's meta-data or network-config may have: far beyond
# any real document, and well within what every party's json module can read.
MAX_JSON_DEPTH = 64


# --------------------------------------------------------------------------- errors


class ChannelError(Exception):
    """Base of every error this project raises about a channel; str() is one sentence."""


class ProtocolError(ChannelError):
    """The peer sent something that is not valid protocol."""


class FrameTooLarge(ProtocolError):
    """A frame exceeds the configured maximum payload size."""


class VersionMismatch(ProtocolError):
    """The two sides share no protocol version."""


class BundleError(ChannelError):
    """A metadata bundle is invalid, or failed its digest check."""


class ChannelTimeout(ChannelError):
    """A bounded wait ran out."""


class ChannelClosed(ChannelError):
    """The other end went away."""


class RemoteError(ChannelError):
    """The peer answered with an ERROR message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"the peer reported {code}: {message}")
        self.code = code
        self.remote_message = message


# --------------------------------------------------------------------------- messages


class Sender(enum.Enum):
    HOST = "host"
    GUEST = "guest"
    EITHER = "either"


class MessageType(enum.IntEnum):
    KNOCK = 0x01  # host: "I am connected; say HELLO"
    HELLO = 0x02  # guest: nonce + versions spoken
    WELCOME = 0x03  # host: echoes the nonce, chosen version, session id
    ERROR = 0x04  # either: code + message, request id of what failed
    GET_BUNDLE = 0x10  # guest: send me my bundle (optionally resume)
    BUNDLE_BEGIN = 0x11  # host: size, chunk count, digest
    BUNDLE_CHUNK = 0x12  # host: 4-byte sequence number + raw bytes
    BUNDLE_END = 0x13  # host: the end-to-end digest again
    BUNDLE_ACK = 0x14  # guest: received and verified (digest)
    STATUS = 0x20  # guest: applied / failed with a reason
    STATUS_ACK = 0x21  # host: status recorded
    QUERY = 0x30  # host: what the in-guest agent should report
    QUERY_REPLY = 0x31  # guest: the answers


SENDER: Dict[MessageType, Sender] = {
    MessageType.KNOCK: Sender.HOST,
    MessageType.HELLO: Sender.GUEST,
    MessageType.WELCOME: Sender.HOST,
    MessageType.ERROR: Sender.EITHER,
    MessageType.GET_BUNDLE: Sender.GUEST,
    MessageType.BUNDLE_BEGIN: Sender.HOST,
    MessageType.BUNDLE_CHUNK: Sender.HOST,
    MessageType.BUNDLE_END: Sender.HOST,
    MessageType.BUNDLE_ACK: Sender.GUEST,
    MessageType.STATUS: Sender.GUEST,
    MessageType.STATUS_ACK: Sender.HOST,
    MessageType.QUERY: Sender.HOST,
    MessageType.QUERY_REPLY: Sender.GUEST,
}

# Status values a guest may report.
STATUS_STATES = ("received", "applied", "failed")

# Error codes carried in ERROR messages; docs/protocol.md says what a peer does on each.
ERR_VERSION = "version-mismatch"
ERR_NO_BUNDLE = "no-bundle"
ERR_BAD_REQUEST = "bad-request"
ERR_UNSUPPORTED = "unsupported"
# Since version 2 (a version-1 peer is sent bad-request with the same sentence):
ERR_UNKNOWN_SESSION = "unknown-session"
ERR_TOO_LARGE = "too-large"
ERR_BUSY = "busy"
ERR_NOT_ALLOWED = "not-allowed"


class Frame(NamedTuple):
    version: int
    type: int
    flags: int
    request_id: int
    payload: bytes

    def message_type(self) -> Optional[MessageType]:
        try:
            return MessageType(self.type)
        except ValueError:
            return None

    def is_from(self, sender: Sender) -> bool:
        """True if a frame of this type may come from ``sender``.

        Each side drops frames the peer may not send: that is how echoes of our own
        frames (a guest tty still in cooked mode) are discarded.
        """
        mtype = self.message_type()
        if mtype is None:
            return False
        allowed = SENDER[mtype]
        return allowed is Sender.EITHER or allowed is sender

    def json(self) -> Dict[str, Any]:
        """The payload as a JSON object; ProtocolError if it is not one."""
        return decode_json(self.payload)


class Skipped(NamedTuple):
    """Bytes the decoder threw away, and why (for logs and statistics)."""

    reason: str
    size: int
    # For a well-formed header whose payload was refused (oversized): its type and
    # request id, so the receiver can answer the request rather than leave it waiting.
    type: Optional[int] = None
    request_id: Optional[int] = None


def _stuff(data: bytes) -> bytes:
    return data.replace(_ESC, _ESC_FE).replace(_START_BYTE, _ESC_FF)


def _unstuff(data: bytes) -> Optional[bytes]:
    """Undo _stuff; None if ``data`` holds an invalid escape."""
    if data.count(_ESC) != data.count(_ESC_FF) + data.count(_ESC_FE):
        return None
    # Every 0xFE in valid stuffed data starts an escape pair, so these two replaces
    # cannot match across pair boundaries; 0xFE 0x01 first, as its output holds no 0xFE.
    return data.replace(_ESC_FF, _START_BYTE).replace(_ESC_FE, _ESC)


def _crc(data: bytes, start: int = 0) -> int:
    return zlib.crc32(data, start) & 0xFFFFFFFF


def encode_frame(  # noqa: PLR0917 - every field of a frame header is positional
    mtype: int,
    payload: bytes = b"",
    request_id: int = 0,
    version: int = CURRENT_VERSION,
    flags: int = 0,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> bytes:
    """One frame as it goes on the wire."""
    if len(payload) > max_payload:
        raise FrameTooLarge(
            f"a {_type_name(mtype)} frame of {len(payload)} bytes exceeds the maximum "
            f"payload of {max_payload} bytes; send it in smaller chunks or raise the "
            "maximum on both sides"
        )
    header = _HEADER.pack(MARKER, version, mtype, flags, request_id & 0xFFFFFFFF, len(payload))
    body = header + _CRC.pack(_crc(header)) + payload + _CRC.pack(_crc(payload))
    return _START_BYTE + _stuff(body)


def encode_message(
    mtype: MessageType, body: Dict[str, Any], request_id: int = 0, version: int = CURRENT_VERSION
) -> bytes:
    """A frame whose payload is ``body`` as compact JSON."""
    return encode_frame(mtype, encode_json(body), request_id, version)


def encode_json(body: Dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode("utf-8")


def decode_json(payload: bytes) -> Dict[str, Any]:
    try:
        value = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"a message payload is not valid UTF-8 JSON ({exc})") from None
    except RecursionError:
        # json recurses per nesting level: one frame of "[[[[..." must not take a
        # party down with an error outside the protocol's own.
        raise ProtocolError("a message payload is JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise ProtocolError("a message payload is JSON but not an object")
    return value


def _type_name(mtype: int) -> str:
    try:
        return MessageType(mtype).name
    except ValueError:
        return f"type-0x{mtype:02x}"


class FrameDecoder:
    """Incremental frame decoder that resynchronises on anything.

    ``feed()`` accepts any bytes and returns the valid frames they completed, plus
    ``Skipped`` notes for what was discarded.  It never raises on input.

    Because 0xFF never occurs inside a frame, input splits at every 0xFF into segments:
    a segment either continues the frame being assembled or is garbage.  A 0xFF seen
    while a frame is incomplete means that frame was cut off (a restarted peer, a
    previous boot): it is abandoned and decoding restarts at the new marker, so a half
    frame can never swallow a good one.  Memory is bounded: garbage is dropped as it is
    scanned; a frame under construction holds at most twice ``max_payload`` plus its
    header (worst-case stuffing); a frame whose header announces more than
    ``max_payload`` is discarded as it streams by, never stored.
    """

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self._active = False  # a marker was seen and its frame is being assembled
        self._buf = bytearray()  # stuffed bytes after that marker
        self._escapes = 0  # 0xFE bytes in _buf: each escape pair is one body byte
        self._header: Optional[Tuple[int, int, int, int, int]] = None
        self.skipped_bytes = 0
        self.frames_decoded = 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def reset(self) -> None:
        """Forget any partial frame (after a reconnect)."""
        if self._active:
            self.skipped_bytes += 1 + len(self._buf)
        self._drop()

    def _drop(self) -> None:
        self._active = False
        self._buf = bytearray()
        self._escapes = 0
        self._header = None

    def feed(self, data: bytes) -> List[Union[Frame, Skipped]]:
        out: List[Union[Frame, Skipped]] = []
        segments = bytes(data).split(_START_BYTE)
        # segments[0] continues whatever came before; each later one follows a marker.
        for i, segment in enumerate(segments):
            if i:
                if self._active:
                    self._skip(out, "truncated frame", 1 + len(self._buf))
                self._drop()
                self._active = True
            if self._active:
                self._extend(segment, out)
            elif segment:
                self._skip(out, "garbage", len(segment))
        return out

    def _skip(
        self,
        out: List[Union[Frame, Skipped]],
        reason: str,
        size: int,
        header: Optional[Tuple[int, int]] = None,
    ) -> None:
        self.skipped_bytes += size
        if out and isinstance(out[-1], Skipped) and out[-1].reason == reason == "garbage":
            out[-1] = Skipped(reason, out[-1].size + size)
        elif header is not None:
            out.append(Skipped(reason, size, header[0], header[1]))
        else:
            out.append(Skipped(reason, size))

    def _append(self, data: bytes) -> int:
        """Add stuffed bytes; returns how many complete body bytes are buffered."""
        self._buf.extend(data)
        self._escapes += data.count(_ESC)
        return len(self._buf) - self._escapes

    def _extend(self, segment: bytes, out: List[Union[Frame, Skipped]]) -> None:
        if self._header is None:
            # Take only what the header can need first (2 * HEADER_SIZE stuffed bytes
            # always hold a whole header), so an oversized or bogus frame's payload is
            # judged by its header before any of it is stored.
            room = 2 * HEADER_SIZE - len(self._buf)
            head, segment = segment[:room], segment[room:]
            available = self._append(head)
            if available < HEADER_SIZE and len(self._buf) < 2 * HEADER_SIZE:
                return
            if not self._parse_header(out):
                if segment:
                    self._skip(out, "garbage", len(segment))
                return
        available = self._append(segment)
        assert self._header is not None
        length = self._header[4]
        need = HEADER_SIZE + length + TRAILER_SIZE
        if available < need and len(self._buf) <= 2 * need:
            return
        self._finish_frame(need, out)

    def _parse_header(self, out: List[Union[Frame, Skipped]]) -> bool:
        cut = _stuffed_length(self._buf, HEADER_SIZE)
        header = None if cut is None else _unstuff(bytes(self._buf[:cut]))
        if header is None or len(header) != HEADER_SIZE:
            self._skip(out, "invalid escape in frame header", 1 + len(self._buf))
            self._drop()
            return False
        marker, version, mtype, flags, request_id, length = _HEADER.unpack(header[: _HEADER.size])
        (hcrc,) = _CRC.unpack(header[_HEADER.size :])
        if marker != MARKER or hcrc != _crc(header[: _HEADER.size]):
            # Not a frame: a stray 0xFF in garbage.  Nothing after it up to the next
            # marker can start a frame, so the whole segment is garbage.
            self._skip(out, "garbage", 1 + len(self._buf))
            self._drop()
            return False
        if length > self.max_payload:
            self._skip(
                out,
                f"oversized {_type_name(mtype)} frame of {length} bytes "
                f"(maximum {self.max_payload})",
                1 + len(self._buf),
                (mtype, request_id),
            )
            # Discard the rest of it as garbage up to the next marker, never storing it.
            self._drop()
            return False
        self._header = (version, mtype, flags, request_id, length)
        return True

    def _finish_frame(self, need: int, out: List[Union[Frame, Skipped]]) -> None:
        assert self._header is not None
        version, mtype, flags, request_id, length = self._header
        cut = _stuffed_length(self._buf, need)
        body = None if cut is None else _unstuff(bytes(self._buf[:cut]))
        if cut is None or body is None or len(body) != need:
            self._skip(out, "malformed frame body", 1 + len(self._buf))
            self._drop()
            return
        trailing = len(self._buf) - cut
        payload = body[HEADER_SIZE : HEADER_SIZE + length]
        (pcrc,) = _CRC.unpack(body[HEADER_SIZE + length :])
        self._drop()
        if pcrc != _crc(payload):
            self._skip(out, "bad payload checksum", 1 + cut)
        else:
            self.frames_decoded += 1
            out.append(Frame(version, mtype, flags, request_id, payload))
        if trailing:
            # Bytes after a complete frame but before the next marker: garbage.
            self._skip(out, "garbage", trailing)


def _stuffed_length(buf: bytearray, body_bytes: int) -> Optional[int]:
    """How many stuffed bytes of ``buf`` make ``body_bytes`` body bytes; None if fewer."""
    produced = 0
    i = 0
    size = len(buf)
    while True:
        j = buf.find(_ESC, i)
        if j < 0 or produced + (j - i) >= body_bytes:
            end = i + (body_bytes - produced)
            return end if end <= size else None
        produced += j - i
        if j + 1 >= size:
            return None
        produced += 1
        i = j + 2
        if produced == body_bytes:
            return i


# --------------------------------------------------------------------------- handshake


def new_nonce() -> str:
    """A fresh 128-bit session nonce as hex."""
    return binascii.hexlify(os.urandom(16)).decode("ascii")


def new_request_id() -> int:
    """A random non-zero 32-bit request id.

    Each session starts its request ids at a random point, so a reply left over from an
    earlier session or boot carries an id nobody is waiting for and is dropped.
    """
    while True:
        value = int.from_bytes(os.urandom(4), "big")
        if value:
            return value


def next_request_id(request_id: int) -> int:
    value = (request_id + 1) & 0xFFFFFFFF
    return value or 1


# --------------------------------------------------------------------------- bundles

_BUNDLE_MAGIC = b"XCB1\n"
# Parts in wire order.  meta-data and network-config are JSON objects; user-data and
# vendor-data are opaque bytes (cloud-config, scripts, gzip, MIME multipart).
PART_NAMES = ("meta-data", "user-data", "vendor-data", "network-config")
_JSON_PARTS = ("meta-data", "network-config")

# RFC 1123 labels: what cloud-init and hostnamectl accept as a hostname.
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# \Z, not $: $ also matches before a trailing newline, and "host\n" is no hostname.
_HOSTNAME_RE = re.compile(r"^(?=.{1,253}\Z)" + _LABEL + r"(\." + _LABEL + r")*\Z")


class Bundle:
    """One domain's metadata: what the guest needs to become itself."""

    def __init__(
        self,
        meta_data: Dict[str, Any],
        user_data: Optional[bytes] = None,
        vendor_data: Optional[bytes] = None,
        network_config: Optional[Dict[str, Any]] = None,
    ) -> None:
        self.meta_data = meta_data
        self.user_data = user_data
        self.vendor_data = vendor_data
        self.network_config = network_config

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Bundle) and self.encode() == other.encode()

    # Bundles hold mutable dicts: equal by content, so not hashable.
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        # Never show user-data or vendor-data: they may hold secrets.
        return (
            f"Bundle(instance_id={self.instance_id!r}, hostname={self.hostname!r}, "
            f"user_data={_size_note(self.user_data)}, "
            f"vendor_data={_size_note(self.vendor_data)})"
        )

    @property
    def instance_id(self) -> Optional[str]:
        value = self.meta_data.get("instance-id")
        return value if isinstance(value, str) else None

    @property
    def hostname(self) -> Optional[str]:
        value = self.meta_data.get("local-hostname")
        return value if isinstance(value, str) else None

    def validate(self, max_size: int = MAX_BUNDLE_SIZE) -> None:
        """Raise BundleError naming the first problem and its fix."""
        structured: Dict[str, Any] = {
            "meta-data": self.meta_data,
            "network-config": self.network_config,
        }
        for name, document in structured.items():
            if json_too_deep(document):
                raise BundleError(
                    f"{name} nests more than {MAX_JSON_DEPTH} levels of lists and mappings; "
                    "flatten it"
                )
        validate_meta_data(self.meta_data)
        for name, value in (("user-data", self.user_data), ("vendor-data", self.vendor_data)):
            if value is not None and not isinstance(value, bytes):
                raise BundleError(f"{name} must be bytes, not {type(value).__name__}")
        if self.network_config is not None:
            validate_network_config(self.network_config)
        size = len(self.encode())
        if size > max_size:
            raise BundleError(
                f"the bundle is {size} bytes, over the maximum of {max_size} bytes; "
                "shrink user-data (gzip it) or raise the maximum"
            )

    def encode(self) -> bytes:
        parts: List[Tuple[str, bytes]] = []
        for name in PART_NAMES:
            value = self._part(name)
            if value is not None:
                parts.append((name, value))
        index = encode_json({"parts": [[name, len(data)] for name, data in parts]})
        return _BUNDLE_MAGIC + index + b"\n" + b"".join(data for _, data in parts)

    def digest(self) -> str:
        return hashlib.sha256(self.encode()).hexdigest()

    def _part(self, name: str) -> Optional[bytes]:
        if name == "meta-data":
            return encode_json(self.meta_data)
        if name == "network-config":
            return None if self.network_config is None else encode_json(self.network_config)
        if name == "user-data":
            return self.user_data
        return self.vendor_data

    @classmethod
    def decode(cls, data: bytes) -> "Bundle":
        if not data.startswith(_BUNDLE_MAGIC):
            raise BundleError("the received bundle does not start with the bundle marker")
        nl = data.find(b"\n", len(_BUNDLE_MAGIC))
        if nl < 0:
            raise BundleError("the received bundle has no part index")
        try:
            index = decode_json(data[len(_BUNDLE_MAGIC) : nl]).get("parts")
        except ProtocolError as exc:
            raise BundleError(f"the received bundle's part index is not JSON: {exc}") from None
        if not isinstance(index, list):
            raise BundleError("the received bundle's part index is not a list")
        pos = nl + 1
        values: Dict[str, Any] = {}
        for entry in index:
            if (
                not isinstance(entry, list)
                or len(entry) != 2
                or entry[0] not in PART_NAMES
                or entry[0] in values
                or not isinstance(entry[1], int)
                or isinstance(entry[1], bool)
                or entry[1] < 0
            ):
                raise BundleError("the received bundle's part index is malformed")
            name, size = entry
            chunk = data[pos : pos + size]
            if len(chunk) != size:
                raise BundleError("the received bundle is shorter than its index says")
            pos += size
            if name in _JSON_PARTS:
                try:
                    values[name] = decode_json(chunk)
                except ProtocolError as exc:
                    raise BundleError(f"the received bundle's {name} is unusable: {exc}") from None
            else:
                values[name] = chunk
        if pos != len(data):
            raise BundleError("the received bundle has bytes after its last part")
        if "meta-data" not in values:
            raise BundleError("the received bundle has no meta-data")
        return cls(
            values["meta-data"],
            values.get("user-data"),
            values.get("vendor-data"),
            values.get("network-config"),
        )


def _size_note(value: Optional[bytes]) -> str:
    return "absent" if value is None else f"<{len(value)} bytes>"


def json_too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``value`` nests lists and mappings more than ``limit`` levels deep (without
    recursing: a hostile document must not exhaust the stack that checks it)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def validate_hostname(name: Any) -> None:
    if not isinstance(name, str) or not _HOSTNAME_RE.match(name):
        raise BundleError(
            f"local-hostname {name!r} is not a valid hostname; use letters, digits and "
            "hyphens in dot-separated labels of at most 63 characters"
        )


def validate_meta_data(meta: Any) -> None:
    if not isinstance(meta, dict):
        raise BundleError("meta-data must be a mapping of keys to values")
    iid = meta.get("instance-id")
    if not isinstance(iid, str) or not iid.strip():
        raise BundleError(
            "meta-data has no instance-id; set a unique instance-id for every clone "
            "(e.g. the domain's UUID)"
        )
    if len(iid) > 255 or any(ch in iid for ch in "/\x00\n"):
        raise BundleError(
            f"instance-id {iid!r} is not usable; use at most 255 characters without '/', "
            "NUL or newline"
        )
    if "local-hostname" in meta:
        validate_hostname(meta["local-hostname"])
    keys = meta.get("public-keys")
    if keys is not None and not _valid_public_keys(keys):
        raise BundleError(
            "meta-data public-keys must be a string, a list of strings, or a mapping of "
            "names to strings or lists of strings"
        )


def _valid_public_keys(keys: Any) -> bool:
    if isinstance(keys, str):
        return True
    if isinstance(keys, list):
        return all(isinstance(k, str) for k in keys)
    if isinstance(keys, dict):
        return all(_valid_public_keys(v) and not isinstance(v, dict) for v in keys.values())
    return False


_NETWORK_CONFIG_FORMS = (
    "version: 2 with ethernets (and bonds, bridges, vlans, wifis), or version: 1 with a config list"
)


def network_config_version(config: Any) -> int:
    """The version (1 or 2) of a network-config already unwrapped from ``network:``.

    BundleError with one sentence naming what is wrong and how to write it: the one
    place that says which versions a network-config may have.
    """
    if not isinstance(config, dict):
        raise BundleError(
            f"network-config must be a mapping, not {_kind(config)}; write it as "
            f"{_NETWORK_CONFIG_FORMS}"
        )
    if "version" not in config:
        raise BundleError(
            "network-config has no version key; add one, as in " + _NETWORK_CONFIG_FORMS
        )
    version = config["version"]
    if isinstance(version, str) and version.strip() in ("1", "2"):
        raise BundleError(
            f"network-config version is the string {version!r}; write the number, "
            f"version: {version.strip()} without quotes"
        )
    if isinstance(version, bool) or version not in (1, 2):
        raise BundleError(
            f"network-config version {_shown(version)} is not supported; use version 1 or "
            f"2 (the number): {_NETWORK_CONFIG_FORMS}"
        )
    return int(version)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return repr(value)


def validate_network_config(config: Any) -> None:
    """Accept cloud-init network-config version 1 or 2, bare or under ``network:``."""
    if isinstance(config, dict) and set(config) == {"network"}:
        config = config["network"]
    version = network_config_version(config)
    if version == 1:
        if not isinstance(config.get("config"), list):
            raise BundleError(
                "network-config version 1 needs a 'config' list of interfaces, routes "
                "and nameservers"
            )
    elif version == 2:
        known = {"version", "renderer", "ethernets", "bonds", "bridges", "vlans", "wifis"}
        for key, value in config.items():
            if key not in known:
                raise BundleError(
                    "network-config version 2 has unknown key {!r}; use one of {}".format(
                        key, ", ".join(sorted(known))
                    )
                )
            if key not in ("version", "renderer") and not isinstance(value, dict):
                raise BundleError(f"network-config version 2 {key!r} must be a mapping")


_ADDRESSED_V2 = ("ethernets", "bonds", "bridges", "vlans")


def static_addresses(config: Any) -> List[str]:
    """The static addresses a network-config (version 1 or 2, bare or under ``network:``)
    gives the guest, without prefixes, in order: what "ready" waits to see up.  Parts it
    does not understand give no address rather than an error (validation is elsewhere)."""
    if isinstance(config, dict) and set(config) == {"network"}:
        config = config["network"]
    if not isinstance(config, dict):
        return []
    found = []  # type: List[Any]
    if config.get("version") == 2:
        for section in _ADDRESSED_V2:
            devices = config.get(section)
            for device in devices.values() if isinstance(devices, dict) else ():
                addresses = device.get("addresses") if isinstance(device, dict) else None
                # netplan allows {"10.0.0.5/24": {lifetime: 0}} entries beside strings.
                for entry in addresses if isinstance(addresses, list) else ():
                    for text in entry if isinstance(entry, dict) else [entry]:
                        found.append(text)
    elif config.get("version") == 1 and isinstance(config.get("config"), list):
        for item in config["config"]:
            subnets = item.get("subnets") if isinstance(item, dict) else None
            for subnet in subnets if isinstance(subnets, list) else ():
                if isinstance(subnet, dict) and str(subnet.get("type", "")).startswith("static"):
                    found.append(subnet.get("address"))
    result = []  # type: List[str]
    for text in found:
        if not isinstance(text, str):
            continue
        try:
            address = str(ipaddress.ip_interface(text.strip()).ip)
        except ValueError:
            continue
        if address not in result:
            result.append(address)
    return result


def bundle_chunks(
    encoded: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE, first: int = 0
) -> Iterator[Tuple[int, bytes]]:
    """(sequence number, data) pairs from chunk ``first`` on."""
    count = chunk_count(len(encoded), chunk_size)
    for seq in range(first, count):
        yield seq, encoded[seq * chunk_size : (seq + 1) * chunk_size]


def chunk_count(size: int, chunk_size: int) -> int:
    return max(1, (size + chunk_size - 1) // chunk_size)
