"""Tests of the dom0 domain store: layout, validation sentences, permissions, confinement."""

import json
import os
import shutil
import socket
import stat
import tempfile
import time
from typing import Any, Dict, Iterator

import pytest

from xenchannel.dom0.files import atomic_write
from xenchannel.dom0.store import (
    DOMAIN_FILE,
    StoreError,
    load_domain,
    remove_domain,
    scan_store,
    write_domain,
)
from xenchannel.protocol import Bundle

SECRET = "hunter2-very-secret"


@pytest.fixture
def root() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="xcst", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def store(root: str) -> str:
    return os.path.join(root, "store")


@pytest.fixture
def sockets(root: str) -> str:
    return os.path.join(root, "run")


def bundle(iid: str = "iid-1", user_data: Any = None) -> Bundle:
    if user_data is None:
        user_data = f"#cloud-config\npassword: {SECRET}\n".encode()
    return Bundle(
        {"instance-id": iid, "local-hostname": "web1"},
        user_data,
        None,
        {"version": 2, "ethernets": {"eth0": {"dhcp4": True}}},
    )


def write_raw(store: str, name: str, doc: Any, mode: int = 0o600) -> str:
    directory = os.path.join(store, name)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, DOMAIN_FILE)
    text = doc if isinstance(doc, str) else json.dumps(doc)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, mode)
    return path


def doc(sockets: str, **extra: Any) -> Dict[str, Any]:
    value: Dict[str, Any] = {
        "socket": os.path.join(sockets, "web1.sock"),
        "meta-data": {"instance-id": "iid-1"},
        "user-data": f"#cloud-config\npassword: {SECRET}\n",
    }
    value.update(extra)
    return value


def load_error(store: str, sockets: str, name: str = "web1") -> StoreError:
    with pytest.raises(StoreError) as info:
        load_domain(store, name, sockets)
    message = str(info.value)
    assert SECRET not in message
    assert "\n" not in message
    return info.value


# --------------------------------------------------------------------------- round trip


def test_write_then_load_round_trips_text_and_binary(store: str, sockets: str) -> None:
    original = bundle()
    binary = Bundle({"instance-id": "iid-2"}, b"\x1f\x8b\x08\x00\xff\xfe", b"vendor")
    write_domain(store, "web1", os.path.join(sockets, "web1.sock"), original)
    write_domain(store, "web2", os.path.join(sockets, "web2.sock"), binary)

    entry = load_domain(store, "web1", sockets)
    assert entry.name == "web1"
    assert entry.socket == os.path.join(sockets, "web1.sock")
    assert entry.bundle == original
    assert entry.digest == original.digest()
    assert entry.instance_id == "iid-1"
    assert entry.hostname == "web1"
    assert entry.size == len(original.encode())

    entry2 = load_domain(store, "web2", sockets)
    assert entry2.bundle == binary
    with open(os.path.join(store, "web2", DOMAIN_FILE), encoding="utf-8") as handle:
        on_disk = json.load(handle)
    assert set(on_disk["user-data"]) == {"base64"}  # not UTF-8: stored as base64
    assert on_disk["vendor-data"] == "vendor"


def test_written_files_are_private(store: str, sockets: str) -> None:
    path = write_domain(store, "web1", os.path.join(sockets, "a.sock"), bundle())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert os.listdir(os.path.dirname(path)) == [DOMAIN_FILE]  # no temp file left


def test_atomic_write_replaces_and_creates_0600(root: str) -> None:
    path = os.path.join(root, "f.json")
    old = os.umask(0)
    try:
        atomic_write(path, b"one")
        atomic_write(path, b"two")
    finally:
        os.umask(old)
    with open(path, "rb") as handle:
        assert handle.read() == b"two"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(root) == ["f.json"]


def test_remove_domain(store: str, sockets: str) -> None:
    write_domain(store, "web1", os.path.join(sockets, "a.sock"), bundle())
    assert remove_domain(store, "web1") is True
    assert not os.path.exists(os.path.join(store, "web1"))
    assert remove_domain(store, "web1") is False


# --------------------------------------------------------------------------- validation


def test_invalid_json_names_file_line_and_column(store: str, sockets: str) -> None:
    path = write_raw(store, "web1", '{\n  "socket": "/x",\n  oops\n}')
    message = str(load_error(store, sockets))
    assert path in message
    assert "not valid JSON" in message
    assert "line 3 column 3" in message


def test_json_nested_too_deeply_is_one_sentence(store: str, sockets: str) -> None:
    deep = "[" * 100000 + "]" * 100000
    path = write_raw(store, "web1", '{"socket": "/x", "meta-data": ' + deep + "}")
    message = str(load_error(store, sockets))
    assert path in message
    assert "nests JSON too deeply to read" in message
    assert "at most 64 levels" in message


def test_not_an_object(store: str, sockets: str) -> None:
    write_raw(store, "web1", "[1, 2]")
    assert "must hold a JSON object" in str(load_error(store, sockets))


def test_unknown_key_is_refused(store: str, sockets: str) -> None:
    write_raw(store, "web1", doc(sockets, userdata="x"))
    message = str(load_error(store, sockets))
    assert "unknown key 'userdata'" in message


def test_missing_socket(store: str, sockets: str) -> None:
    value = doc(sockets)
    del value["socket"]
    path = write_raw(store, "web1", value)
    error = load_error(store, sockets)
    assert str(error) == (f"{path} has no socket; set socket to the channel's absolute path")
    assert error.socket is None


def test_relative_socket(store: str, sockets: str) -> None:
    write_raw(store, "web1", doc(sockets, socket="run/web1.sock"))
    message = str(load_error(store, sockets))
    assert "relative socket path 'run/web1.sock'" in message
    assert sockets in message


def test_socket_outside_root(store: str, sockets: str) -> None:
    write_raw(store, "web1", doc(sockets, socket="/tmp/elsewhere.sock"))
    message = str(load_error(store, sockets))
    assert "outside the socket root" in message
    assert "/tmp/elsewhere.sock" in message


def test_socket_leaving_the_root_through_a_symlinked_directory(
    store: str, sockets: str, root: str
) -> None:
    outside = os.path.join(root, "outside")
    os.makedirs(outside)
    os.makedirs(sockets)
    os.symlink(outside, os.path.join(sockets, "via"))
    path = write_raw(store, "web1", doc(sockets, socket=os.path.join(sockets, "via", "w.sock")))
    error = load_error(store, sockets)
    assert str(error).startswith(f"{path} names socket {sockets}/via/w.sock, whose directory")
    assert f"resolves to {outside}, outside the socket root" in str(error)
    assert error.socket is None  # nothing is served on a socket that cannot be trusted


def test_socket_that_is_a_symlink_to_another_is_refused(store: str, sockets: str) -> None:
    other = os.path.join(sockets, "web2.sock")
    os.makedirs(sockets)
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(other)
        os.symlink(other, os.path.join(sockets, "web1.sock"))
        path = write_raw(store, "web1", doc(sockets))
        message = str(load_error(store, sockets))
    assert message.startswith(f"{path} names socket {sockets}/web1.sock, which is a symlink")
    assert f"(to {other}); name QEMU's socket itself" in message


@pytest.mark.parametrize("mode", [0o777, 0o750, 0o701])
def test_a_domain_directory_open_to_others_is_refused(store: str, sockets: str, mode: int) -> None:
    path = write_raw(store, "web1", doc(sockets))
    directory = os.path.dirname(path)
    os.chmod(directory, mode)
    message = str(load_error(store, sockets))
    assert message == (
        f"{directory} is open to group or others (mode {mode:04o}), so they could swap "
        f"its entry; run chmod 700 {directory}"
    )


def test_a_domain_directory_that_is_a_symlink_is_refused(store: str, sockets: str) -> None:
    write_raw(store, "real", doc(sockets))
    os.symlink(os.path.join(store, "real"), os.path.join(store, "web1"))
    message = str(load_error(store, sockets))
    assert message.startswith(f"{store}/web1 is a symlink; make it a directory of its own")


@pytest.mark.parametrize("suffix", ["../escape.sock", "a/../../escape.sock", ".."])
def test_dotdot_escape_is_refused(store: str, sockets: str, suffix: str) -> None:
    write_raw(store, "web1", doc(sockets, socket=sockets + "/" + suffix))
    assert "outside the socket root" in str(load_error(store, sockets))


def test_socket_root_prefix_is_not_enough(store: str, sockets: str) -> None:
    # /x/run-other/a.sock starts with "/x/run" but is not inside it.
    write_raw(store, "web1", doc(sockets, socket=sockets + "-other/a.sock"))
    assert "outside the socket root" in str(load_error(store, sockets))


def test_socket_path_is_normalised(store: str, sockets: str) -> None:
    write_raw(store, "web1", doc(sockets, socket=sockets + "/sub/../web1.sock"))
    assert load_domain(store, "web1", sockets).socket == os.path.join(sockets, "web1.sock")


def test_socket_path_too_long(store: str, sockets: str) -> None:
    write_raw(store, "web1", doc(sockets, socket=sockets + "/" + "s" * 120 + ".sock"))
    assert "Unix socket path can hold" in str(load_error(store, sockets))


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o660])
def test_group_or_other_access_is_refused(store: str, sockets: str, mode: int) -> None:
    path = write_raw(store, "web1", doc(sockets), mode=mode)
    message = str(load_error(store, sockets))
    assert message.startswith(path)
    assert f"chmod 600 {path}" in message
    assert f"{mode:04o}" in message


@pytest.mark.root  # chown to another user
def test_foreign_owner_is_refused(store: str, sockets: str) -> None:
    path = write_raw(store, "web1", doc(sockets))
    os.chown(path, 12345, -1)
    message = str(load_error(store, sockets))
    assert "owned by uid 12345" in message
    assert f"chown {os.geteuid()} {path}" in message


def test_symlink_is_refused(store: str, sockets: str, root: str) -> None:
    target = write_raw(store, "real", doc(sockets))
    os.makedirs(os.path.join(store, "web1"), mode=0o700)
    os.symlink(target, os.path.join(store, "web1", DOMAIN_FILE))
    assert "cannot open" in str(load_error(store, sockets))


def test_missing_file(store: str, sockets: str) -> None:
    os.makedirs(os.path.join(store, "web1"), mode=0o700)
    assert "does not exist" in str(load_error(store, sockets))


def test_invalid_bundle_reuses_bundle_validation(store: str, sockets: str) -> None:
    path = write_raw(store, "web1", doc(sockets, **{"meta-data": {"local-hostname": "web1"}}))
    error = load_error(store, sockets)
    assert str(error).startswith(f"{path} holds an invalid bundle: meta-data has no instance-id")
    # The socket is trustworthy: the agent can still tell the guest what is wrong.
    assert error.socket == os.path.join(sockets, "web1.sock")


def test_invalid_hostname_and_network_config(store: str, sockets: str) -> None:
    write_raw(
        store, "web1", doc(sockets, **{"meta-data": {"instance-id": "i", "local-hostname": "a_b"}})
    )
    assert "not a valid hostname" in str(load_error(store, sockets))
    write_raw(store, "web1", doc(sockets, **{"network-config": {"version": 3}}))
    assert "network-config version 3 is not supported" in str(load_error(store, sockets))


def test_missing_meta_data(store: str, sockets: str) -> None:
    value = doc(sockets)
    del value["meta-data"]
    write_raw(store, "web1", value)
    assert "has no meta-data" in str(load_error(store, sockets))


def test_bad_base64_does_not_leak_content(store: str, sockets: str) -> None:
    write_raw(store, "web1", doc(sockets, **{"user-data": {"base64": SECRET + "!!"}}))
    message = str(load_error(store, sockets))
    assert "user-data that is not valid base64" in message


def test_user_data_of_wrong_type(store: str, sockets: str) -> None:
    write_raw(store, "web1", doc(sockets, **{"vendor-data": {"text": SECRET}}))
    assert 'vendor-data that is neither a string nor {"base64": "..."}' in str(
        load_error(store, sockets)
    )


@pytest.mark.parametrize(
    "name", ["", ".hidden", "a..b", "-x", "a/b", "x" * 65, "a b", "vm1\n", "../etc"]
)
def test_invalid_domain_names(store: str, sockets: str, name: str) -> None:
    with pytest.raises(StoreError, match="is not valid"):
        load_domain(store, name, sockets)
    with pytest.raises(StoreError, match="is not valid"):
        write_domain(store, name, os.path.join(sockets, "a.sock"), bundle())


def test_write_domain_validates(store: str, sockets: str) -> None:
    with pytest.raises(StoreError, match="must be absolute"):
        write_domain(store, "web1", "rel.sock", bundle())
    with pytest.raises(StoreError, match="no instance-id"):
        write_domain(store, "web1", os.path.join(sockets, "a.sock"), Bundle({}))


# --------------------------------------------------------------------------- scanning


def test_scan_store_reports_and_ignores_non_domains(store: str, sockets: str) -> None:
    write_domain(store, "web1", os.path.join(sockets, "a.sock"), bundle())
    os.makedirs(os.path.join(store, "bad name"))
    os.makedirs(os.path.join(store, "empty"))
    os.makedirs(os.path.join(store, ".hidden"))
    with open(os.path.join(store, "file"), "w", encoding="utf-8") as handle:
        handle.write("x")
    problems: list = []
    found = scan_store(store, problems)
    assert list(found) == ["web1"]
    text = "\n".join(problems)
    assert "'bad name' is not a valid domain name" in text
    assert "empty is ignored: it has no domain.json" in text
    assert "file is ignored: it is not a directory" in text
    assert ".hidden" not in text


def test_scan_missing_store(root: str) -> None:
    problems: list = []
    assert scan_store(os.path.join(root, "nope"), problems) == {}
    assert "does not exist" in problems[0]


def test_signature_changes_on_rewrite_and_chmod(store: str, sockets: str) -> None:
    write_domain(store, "web1", os.path.join(sockets, "a.sock"), bundle())
    first = scan_store(store)["web1"]
    write_domain(store, "web1", os.path.join(sockets, "a.sock"), bundle("iid-2"))
    second = scan_store(store)["web1"]
    assert second != first
    time.sleep(0.01)
    os.chmod(os.path.join(store, "web1", DOMAIN_FILE), 0o600)
    assert scan_store(store)["web1"] != second  # a mode fix is noticed


def test_scan_is_cheap_for_1000_domains(store: str, sockets: str) -> None:
    text = json.dumps(doc(sockets))
    for i in range(1000):
        write_raw(store, f"vm{i}", text)
    started = time.monotonic()
    found = scan_store(store)
    elapsed = time.monotonic() - started
    assert len(found) == 1000
    assert elapsed < 0.5
