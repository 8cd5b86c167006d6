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
    Interface,
    Knock,
    Message,
    Query,
    QueryReply,
    Report,
    Resume,
    Status,
    StatusAck,
    Welcome,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIGEST = "ab" * 32
# An OpenSSH ed25519 public key (its blob names its type, as every real one does).
ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEIdFCfqlznO98dpr+EHwLcE6nJGWY+PMvU+slK45pQB"

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
    Status(
        "s" * 32,
        "applied",
        instance_id="iid-1",
        report=Report(
            "web1",
            [Interface("enX0", "00:16:3e:00:00:01", ["10.0.0.5/24", "fd00::5/64"])],
            [ED25519],
            cloud_init="degraded",
            recoverable_errors=["WARNING: a deprecated key"],
        ),
    ),
    Status("s" * 32, "applied", instance_id="iid-1", report=Report("web1", settling=120)),
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
        (Status, {"state": "applied", "report": []}, "STATUS report must be an object"),
        (Report, {"hostname": 5}, "report hostname must be a string"),
        (Report, {"cloud_init": "ok"}, "report cloud_init must be one of done, degraded"),
        (Report, {"interfaces": {"eth0": {}}}, "report interfaces must be a list of objects"),
        (Report, {"interfaces": [{"mac": "00:16:3e:00:00:01"}]}, "needs a name string"),
        (Report, {"interfaces": [{"name": "e", "mac": "00:16:3e"}]}, "mac must look like"),
        (Report, {"interfaces": [{"name": "e", "addresses": ["10.0.0.300/24"]}]}, "ip/prefix"),
        (Report, {"errors": "boom"}, "report errors must be a list of strings"),
        (Report, {"host_keys": ["-----BEGIN OPENSSH PRIVATE KEY-----"]}, "public key lines"),
        # A known type word before a blob of another type is not that key.
        (Report, {"host_keys": ["ssh-rsa " + ED25519.split()[1]]}, "public key lines"),
        (Report, {"host_keys": ["ssh-ed25519 !!notbase64"]}, "public key lines"),
        (Report, {"settling": 0}, "settling must be whole seconds from 1 to 3600"),
        (Report, {"settling": 3601}, "settling must be whole seconds from 1 to 3600"),
        (Report, {"settling": 1.5}, "settling must be whole seconds"),
        (Report, {"settling": True}, "settling must be whole seconds"),
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


def test_a_report_is_kept_only_to_its_bounds() -> None:
    report = Report.parse(
        {
            "hostname": "h" * 9000,
            "interfaces": [
                {
                    "name": "n" * 900,
                    "addresses": [f"10.0.{i // 256}.{i % 256}/32" for i in range(99)],
                }
            ]
            * 99,
            "host_keys": [ED25519 + " root@template"] * 99,
            "errors": ["e" * 9000] * 99,
        }
    )
    assert len(report.hostname or "") == session.MAX_HOSTNAME
    assert len(report.interfaces) == session.MAX_INTERFACES
    assert len(report.interfaces[0].name) == session.MAX_INTERFACE_NAME
    assert len(report.interfaces[0].addresses) == session.MAX_ADDRESSES
    assert report.host_keys == [ED25519] * session.MAX_HOST_KEYS  # comments dropped
    assert len(report.errors) == session.MAX_REPORT_ERRORS
    assert {len(e) for e in report.errors} == {session.MAX_REPORT_ERROR}


def test_a_report_normalises_what_it_carries() -> None:
    report = Report.parse(
        {"interfaces": [{"name": "e", "mac": "00:16:3E:AA:BB:CC", "addresses": ["FD00::05/64"]}]}
    )
    assert report.interfaces[0].mac == "00:16:3e:aa:bb:cc"
    assert report.addresses() == ["fd00::5"]
    # A sender's unusable key lines are left out of the body rather than sent.
    assert Report(host_keys=["not a key", ED25519 + " c"]).body()["host_keys"] == [ED25519]


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
