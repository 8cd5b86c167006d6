"""The message classes of xenchannel.session, and the rule that only they build or read
message bodies."""

import ast
import inspect
import os
from typing import Any, Dict, List

import pytest

from xenchannel import session
from xenchannel.protocol import MessageType, RemoteError, decode_json, encode_json
from xenchannel.session import (
    BadMessage,
    BundleAck,
    BundleBegin,
    BundleEnd,
    Error,
    GetBundle,
    Hello,
    Knock,
    Message,
    Query,
    QueryReply,
    Resume,
    Status,
    StatusAck,
    Welcome,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIGEST = "ab" * 32

EXAMPLES: List[Message] = [
    Knock([1], "0123456789abcdef"),
    Hello("n" * 32, [1], "xenchannel-guest/0.1.0"),
    Welcome("n" * 32, "s" * 32, "0123456789abcdef", 1, [1]),
    Error("no-bundle", "dom0 has no usable metadata for this domain"),
    Error("busy", "too many GET_BUNDLE requests; ask again in 0.25 s", 0.25),
    GetBundle("s" * 32),
    GetBundle("s" * 32, Resume(DIGEST, 3)),
    BundleBegin(100, 32, 4, 0, DIGEST),
    BundleEnd(DIGEST),
    BundleAck("s" * 32, DIGEST),
    Status("s" * 32, "applied", instance_id="iid-1"),
    Status("s" * 32, "failed", "a reason", "iid-1"),
    StatusAck(),
    Query(["version", "hostname"]),
    QueryReply({"version": "0.1.0", "hostname": None}),
]


def message_classes() -> List[type]:
    return [
        cls
        for _name, cls in inspect.getmembers(session, inspect.isclass)
        if issubclass(cls, Message) and cls is not Message
    ]


def test_every_json_message_type_has_exactly_one_class() -> None:
    types = sorted(cls.TYPE for cls in message_classes())
    json_types = sorted(t for t in MessageType if t is not MessageType.BUNDLE_CHUNK)
    assert types == json_types


@pytest.mark.parametrize("message", EXAMPLES, ids=repr)
def test_a_built_body_parses_back_to_the_same_message(message: Message) -> None:
    frame_payload = message.encode(7)
    body = message.body()
    assert type(message).parse(decode_json(encode_json(body))) == message
    assert frame_payload  # encode() gives a frame


def test_every_class_has_an_example() -> None:
    assert {type(m) for m in EXAMPLES} == set(message_classes())


@pytest.mark.parametrize(
    "cls,body,sentence",
    [
        (Hello, {"versions": [1]}, "HELLO needs a nonce string of 1 to 128 characters"),
        (Hello, {"nonce": "n" * 129, "versions": [1]}, "HELLO needs a nonce string"),
        (Hello, {"nonce": "n", "versions": []}, "does not list the protocol versions"),
        (Hello, {"nonce": "n", "versions": [1], "agent": 5}, "HELLO agent must be a string"),
        (GetBundle, {"session": "s", "resume": [1]}, "resume must be an object"),
        (GetBundle, {"session": "s", "resume": {"sha256": DIGEST, "chunk": True}}, "resume"),
        (BundleAck, {"session": "s"}, "BUNDLE_ACK needs the sha256"),
        (Status, {"session": "s", "state": "done"}, "STATUS state must be one of"),
        (Status, {"session": "s", "state": "failed", "reason": 1}, "reason must be a string"),
        (Status, {"state": "applied", "instance_id": []}, "instance_id must be a string"),
        (BundleBegin, {"size": 1}, "BUNDLE_BEGIN lacks size"),
        (BundleBegin, {"size": 10, "chunk_size": 4, "chunks": 2, "sha256": "x"}, "inconsistent"),
    ],
)
def test_a_body_that_breaks_the_rules_is_refused_with_its_sentence(
    cls: type, body: Dict[str, Any], sentence: str
) -> None:
    with pytest.raises(BadMessage, match=sentence):
        cls.parse(body)


def test_what_a_guest_says_is_kept_only_to_its_bounds() -> None:
    status = Status.parse(
        {"session": "s", "state": "failed", "reason": "r" * 9000, "instance_id": "i" * 9000}
    )
    assert len(status.reason or "") == session.MAX_REASON
    assert len(status.instance_id or "") == session.MAX_INSTANCE_ID
    assert len(Status("s", "failed", "r" * 9000).body()["reason"]) == session.MAX_REASON


def test_lenient_bodies_parse_to_empty_fields_rather_than_fail() -> None:
    # A guest drops a WELCOME or KNOCK it cannot use; it must not fail on one.
    assert Welcome.parse({"nonce": 5}).nonce is None
    assert Knock.parse({"link": ["x"]}).link == ""
    assert Query.parse({"what": "version"}).what == []
    error = Error.parse({})
    assert (error.code, error.message) == ("error", "")
    assert isinstance(error.exception(), RemoteError)


def test_repr_names_the_fields() -> None:
    assert repr(BundleEnd(DIGEST)) == f"BundleEnd(sha256={DIGEST!r})"


# ----------------------------------------------------------------- one place for bodies

# What building or reading a message body takes: a product file that names one of these
# or calls .json() on a frame does the session module's job.
BODY_TOOLS = {"encode_message", "encode_frame", "encode_json", "decode_json"}
BODY_OWNERS = {"runtime/xenchannel/protocol.py", "runtime/xenchannel/session.py"}


def product_files() -> List[str]:
    found = []
    for top in ("runtime", "datasource", "plugins"):
        for folder, _dirs, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                path = os.path.relpath(os.path.join(folder, name), ROOT)
                if name.endswith(".py") and path not in BODY_OWNERS:
                    found.append(path)
    return sorted(found)


def body_handling(path: str) -> List[str]:
    with open(os.path.join(ROOT, path)) as source:
        tree = ast.parse(source.read(), path)
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Name):
            names.append(node.id)
        elif isinstance(node, ast.Attribute):
            names.append(node.attr)
        elif isinstance(node, ast.alias):
            names.append(node.name)
        found += [f"{path}:{getattr(node, 'lineno', '?')}: {n}" for n in names if n in BODY_TOOLS]
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "json"
            and not node.args
        ):
            found.append(f"{path}:{node.lineno}: .json()")
    return found


def test_no_file_but_the_session_module_builds_or_reads_a_message_body() -> None:
    files = product_files()
    assert "runtime/xenchannel/dom0/agent.py" in files
    assert "runtime/xenchannel/dom0/connection.py" in files
    assert "runtime/xenchannel/guest/client.py" in files
    assert [problem for path in files for problem in body_handling(path)] == []


def test_the_check_finds_a_file_that_reads_bodies() -> None:
    assert any(p.endswith(": .json()") for p in body_handling("runtime/xenchannel/session.py"))
    assert any(
        p.endswith(": encode_message") for p in body_handling("runtime/xenchannel/session.py")
    )
