"""plugins/module_utils/metadata_secrets.py: which meta-data is secret, and how it shows."""

import ast
from pathlib import Path

import pytest
from ansible_collections.xenchannel.provision.plugins.module_utils.metadata_secrets import (
    is_secret_key,
    secret_values,
    shown_meta_data,
)

REPO = Path(__file__).resolve().parents[4]


@pytest.mark.parametrize(
    "key",
    [
        "password", "root_password", "Passwd", "passphrase", "pass", "db-pwd",
        "api-token", "apiToken", "authtoken", "client_secret", "secrets", "credentials",
        "private-keys", "privateKey", "apikey", "api_key", "tls-key", "ssh_keys", "cookie",
    ],
)  # fmt: skip
def test_secret_keys(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "instance-id", "local-hostname", "hostname", "public-keys", "public_keys",
        "ssh_authorized_keys", "keyboard", "monkey", "passenger", "bypass", "region",
    ],
)  # fmt: skip
def test_keys_that_are_not_secret(key: str) -> None:
    assert not is_secret_key(key)


def test_the_user_marks_more_keys_in_either_spelling() -> None:
    assert is_secret_key("enrolment_code", ["enrolment-code"])
    assert is_secret_key("Enrolment-Code", ["enrolment_code"])
    assert not is_secret_key("enrolment", ["enrolment-code"])


def test_the_datasources_sensitive_keys_are_all_secret() -> None:
    """The guest keeps these out of world-readable instance-data; dom0 must not show them."""
    tree = ast.parse((REPO / "datasource" / "DataSourceXenChannel.py").read_text())
    (keys,) = [
        ast.literal_eval(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and any(getattr(t, "id", None) == "DEFAULT_SENSITIVE_KEYS" for t in node.targets)
    ]
    assert keys and [key for key in keys if not is_secret_key(key)] == []


def test_secret_values_at_any_depth_whole_values() -> None:
    meta = {
        "instance-id": "iid",
        "password": "pw",
        "service": {"client_secret": {"a": "s1", "b": ["s2", 3]}, "url": "https://x"},
        "list": [{"token": "t"}],
    }
    assert secret_values(meta) == {"pw", "s1", "s2", "3", "t"}


def test_shown_meta_data_says_which_secret_changed() -> None:
    before = {"password": "a", "token": "t", "nested": {"secret": "x"}, "old-key": "k"}
    after = {"password": "b", "token": "t", "nested": {"secret": "x"}, "new-pwd": "p"}
    assert shown_meta_data(before) == {
        "password": "<secret>",
        "token": "<secret>",
        "nested": {"secret": "<secret>"},
        "old-key": "<secret>",
    }
    assert shown_meta_data(after, before) == {
        "password": "<secret, changed>",
        "token": "<secret>",
        "nested": {"secret": "<secret>"},
        "new-pwd": "<secret>",
    }
