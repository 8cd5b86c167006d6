"""plugins/modules/channel_metadata.py, driven through the real AnsibleModule machinery."""

import base64
import builtins
import json
import os
import stat
from typing import Any, Dict

import pytest
from ansible_collections.xenchannel.provision.plugins.modules import channel_metadata

from tests.unit.plugins.modules._harness import fail_module, run_module
from xenchannel.dom0.store import load_domain
from xenchannel.protocol import MAX_BUNDLE_SIZE

SECRET = "password: hunter2-SECRET-MARKER"


@pytest.fixture
def dirs(tmp_path: Any) -> Dict[str, str]:
    store = tmp_path / "store"
    run = tmp_path / "run"
    run.mkdir()
    return {"store_dir": str(store), "socket_root": str(run)}


def args(dirs: Dict[str, str], **extra: Any) -> Dict[str, Any]:
    base: Dict[str, Any] = {
        "domain": "vm1",
        "socket": os.path.join(dirs["socket_root"], "vm1.sock"),
        "meta_data": {"instance-id": "iid-vm1", "local-hostname": "vm1"},
        "user_data": "#cloud-config\n" + SECRET + "\n",
        "network_config": {"version": 2, "ethernets": {"eth0": {"dhcp4": True}}},
        **dirs,
    }
    base.update(extra)
    return base


def entry_path(dirs: Dict[str, str], name: str = "vm1") -> str:
    return os.path.join(dirs["store_dir"], name, "domain.json")


def test_create_writes_a_private_entry_the_agent_loads(dirs: Dict[str, str]) -> None:
    result = run_module(channel_metadata.main, args(dirs))
    path = entry_path(dirs)
    assert result["changed"] is True
    assert result["path"] == path
    assert result["instance_id"] == "iid-vm1"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    entry = load_domain(dirs["store_dir"], "vm1", dirs["socket_root"])
    assert entry.digest == result["sha256"]
    assert entry.bundle.user_data == ("#cloud-config\n" + SECRET + "\n").encode()
    assert SECRET not in json.dumps(result)


def test_second_run_is_not_a_change_and_does_not_rewrite(dirs: Dict[str, str]) -> None:
    first = run_module(channel_metadata.main, args(dirs))
    before = os.stat(entry_path(dirs))
    second = run_module(channel_metadata.main, args(dirs))
    assert second["changed"] is False
    assert second["sha256"] == first["sha256"]
    assert os.stat(entry_path(dirs)).st_ino == before.st_ino


def test_changing_only_user_data_is_a_change(dirs: Dict[str, str]) -> None:
    first = run_module(channel_metadata.main, args(dirs))
    second = run_module(channel_metadata.main, args(dirs, user_data="#cloud-config\n{}\n"))
    assert second["changed"] is True
    assert second["sha256"] != first["sha256"]
    entry = load_domain(dirs["store_dir"], "vm1", dirs["socket_root"])
    assert entry.bundle.user_data == b"#cloud-config\n{}\n"


def test_base64_user_data_equals_the_same_text(dirs: Dict[str, str]) -> None:
    text = "#cloud-config\n" + SECRET + "\n"
    run_module(channel_metadata.main, args(dirs))
    encoded = base64.b64encode(text.encode()).decode()
    again = args(dirs, user_data=None, user_data_base64=encoded)
    assert run_module(channel_metadata.main, again)["changed"] is False


def test_binary_user_data_round_trips(dirs: Dict[str, str]) -> None:
    data = b"\x1f\x8b\x08\x00binary\xff"
    encoded = base64.b64encode(data).decode()
    run_module(channel_metadata.main, args(dirs, user_data=None, user_data_base64=encoded))
    entry = load_domain(dirs["store_dir"], "vm1", dirs["socket_root"])
    assert entry.bundle.user_data == data


def test_diff_shows_size_and_digest_never_user_data(dirs: Dict[str, str]) -> None:
    run_module(channel_metadata.main, args(dirs))
    changed = args(dirs, user_data="#cloud-config\nother-" + SECRET + "\n", _ansible_diff=True)
    result = run_module(channel_metadata.main, changed)
    diff = result["diff"]
    assert diff["before"]["user-data"].startswith("<")
    assert "bytes, sha256 " in diff["after"]["user-data"]
    assert diff["before"]["user-data"] != diff["after"]["user-data"]
    assert diff["after"]["meta-data"]["instance-id"] == "iid-vm1"
    assert SECRET not in json.dumps(result)


def test_check_mode_reports_a_change_and_writes_nothing(dirs: Dict[str, str]) -> None:
    result = run_module(channel_metadata.main, args(dirs, _ansible_check_mode=True))
    assert result["changed"] is True
    assert not os.path.exists(dirs["store_dir"])
    run_module(channel_metadata.main, args(dirs))
    before = os.stat(entry_path(dirs))
    changed = args(dirs, user_data="other", _ansible_check_mode=True)
    assert run_module(channel_metadata.main, changed)["changed"] is True
    assert os.stat(entry_path(dirs)).st_ino == before.st_ino
    unchanged = args(dirs, _ansible_check_mode=True)
    assert run_module(channel_metadata.main, unchanged)["changed"] is False


@pytest.mark.parametrize(
    ("extra", "sentence"),
    [
        pytest.param(
            {"meta_data": {"local-hostname": "vm1"}}, "meta-data has no instance-id", id="iid"
        ),
        pytest.param(
            {"meta_data": {"instance-id": "i", "local-hostname": "bad_host!"}},
            "is not a valid hostname",
            id="hostname",
        ),
        pytest.param(
            {"network_config": {"version": 3}},
            "network-config version 3 is not supported; use version 1 or 2",
            id="network-config",
        ),
        pytest.param({"user_data": "x" * (MAX_BUNDLE_SIZE + 1)}, "over the maximum of", id="size"),
    ],
)
def test_an_invalid_bundle_fails_with_the_sentence_and_writes_nothing(
    dirs: Dict[str, str], extra: Dict[str, Any], sentence: str
) -> None:
    result = fail_module(channel_metadata.main, args(dirs, **extra))
    assert result["msg"].startswith("the bundle for domain vm1 is invalid: ")
    assert sentence in result["msg"]
    assert not os.path.exists(dirs["store_dir"])


@pytest.mark.parametrize(
    ("extra", "sentence"),
    [
        pytest.param({"socket": "/elsewhere/vm1.sock"}, "outside the socket root", id="outside"),
        pytest.param({"domain": "../etc"}, "is not valid", id="domain"),
        pytest.param(
            {"user_data": None, "user_data_base64": "not base64!"},
            "user_data_base64 is not valid base64",
            id="base64",
        ),
        pytest.param({"socket": None}, "missing: socket", id="no-socket"),
    ],
)
def test_bad_options_fail_with_a_sentence(
    dirs: Dict[str, str], extra: Dict[str, Any], sentence: str
) -> None:
    result = fail_module(channel_metadata.main, args(dirs, **extra))
    assert sentence in result["msg"]
    assert not os.path.exists(dirs["store_dir"])


def test_user_data_options_are_mutually_exclusive(dirs: Dict[str, str]) -> None:
    result = fail_module(channel_metadata.main, args(dirs, user_data_base64="eA=="))
    assert "mutually exclusive" in result["msg"]


def test_an_entry_the_agent_would_refuse_is_replaced(dirs: Dict[str, str]) -> None:
    run_module(channel_metadata.main, args(dirs))
    os.chmod(entry_path(dirs), 0o644)
    result = run_module(channel_metadata.main, args(dirs))
    assert result["changed"] is True
    assert any("chmod 600" in warning for warning in result.get("warnings", []))
    assert stat.S_IMODE(os.stat(entry_path(dirs)).st_mode) == 0o600


def test_absent_removes_the_entry_and_is_idempotent(dirs: Dict[str, str]) -> None:
    run_module(channel_metadata.main, args(dirs))
    absent = {"domain": "vm1", "state": "absent", **dirs}
    check = run_module(channel_metadata.main, {**absent, "_ansible_check_mode": True})
    assert check["changed"] is True
    assert os.path.exists(entry_path(dirs))
    result = run_module(channel_metadata.main, {**absent, "_ansible_diff": True})
    assert result["changed"] is True
    assert result["diff"]["after"] == {}
    assert "bytes, sha256" in result["diff"]["before"]["user-data"]
    assert not os.path.exists(os.path.dirname(entry_path(dirs)))
    assert run_module(channel_metadata.main, absent)["changed"] is False


def test_a_missing_runtime_names_the_role(dirs: Dict[str, str], monkeypatch: Any) -> None:
    real_import = builtins.__import__

    def no_xenchannel(name: str, *rest: Any, **kw: Any) -> Any:
        if name.startswith("xenchannel"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *rest, **kw)

    monkeypatch.setattr(builtins, "__import__", no_xenchannel)
    result = fail_module(channel_metadata.main, args(dirs))
    assert result["msg"].startswith(
        "the xenchannel runtime is not installed on this host; apply the "
        "xenchannel.provision.dom0_agent role first"
    )
    assert "No module named" in result["msg"]
