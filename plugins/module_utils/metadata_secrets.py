# Copyright (c) xenchannel contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Which meta-data values are secret, and the meta-data as it may be shown.

The one rule for the collection's modules (channel_metadata; the domain role passes its
meta-data through it). A key is secret, at any depth of the meta-data, when

* its name, lower-cased, contains one of ``SECRET_STEMS`` (``password``, ``api-token``,
  ``client_secret``, ``privateKey``, ``credentials`` ...), or
* one of its words (split at ``-``, ``_``, ``.``, blanks and lower-to-upper case changes)
  is one of ``SECRET_WORDS`` (``pass``, ``pwd``, ``key``, ``keys``, ``cookie``), unless
  the key is one of ``PUBLIC_KEY_NAMES`` (``public-keys``: public SSH keys are not
  secret and the guest's operator wants to see them), or
* the user listed it in the module's ``secret_keys`` (compared as the rule compares:
  lower-case, ``_`` as ``-``).

The whole value of a secret key is secret: a string, a number, a list or a mapping. The
cloud-init datasource's built-in sensitive keys (``DEFAULT_SENSITIVE_KEYS`` in
datasource/DataSourceXenChannel.py) are all secret under this rule, which a test checks.
"""

import re

__all__ = [
    "PUBLIC_KEY_NAMES",
    "SECRET_STEMS",
    "SECRET_WORDS",
    "is_secret_key",
    "normal_key",
    "secret_values",
    "shown_meta_data",
]

SECRET_STEMS = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "credential",
    "private",
    "apikey",
)
SECRET_WORDS = frozenset(("pass", "pwd", "key", "keys", "cookie"))
# Keys that hold public keys: shown as they are, although "keys" is a secret word.
PUBLIC_KEY_NAMES = frozenset(("public-keys", "ssh-authorized-keys", "authorized-keys"))

_WORD_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")


def normal_key(name):
    """A key as the rule compares it: lower case, ``_`` and blanks as ``-``."""
    return re.sub(r"[_\s]+", "-", str(name).strip().lower())


def is_secret_key(name, extra=()):
    """True if meta-data key ``name`` holds a secret (``extra``: the user's own keys)."""
    text = str(name)
    key = normal_key(text)
    if key in {normal_key(k) for k in extra}:
        return True
    compact = key.replace("-", "").replace(".", "")
    if any(stem in compact for stem in SECRET_STEMS):
        return True
    if key in PUBLIC_KEY_NAMES:
        return False
    words = {word.lower() for word in _WORD_SPLIT.split(text) if word}
    return bool(words & SECRET_WORDS)


def _leaves(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _leaves(item)
    elif value is not None and not isinstance(value, bool):
        yield str(value)


def secret_values(meta_data, extra=()):
    """Every secret value in ``meta_data`` as text (for AnsibleModule.no_log_values)."""
    found = set()
    if isinstance(meta_data, dict):
        for key, value in meta_data.items():
            if is_secret_key(key, extra):
                found.update(text for text in _leaves(value) if text)
            else:
                found.update(secret_values(value, extra))
    elif isinstance(meta_data, (list, tuple)):
        for item in meta_data:
            found.update(secret_values(item, extra))
    return found


# What a diff shows instead of a secret value (placeholders, not passwords).
SECRET_SHOWN = "<secret>"  # noqa: S105
SECRET_CHANGED = "<secret, changed>"  # noqa: S105
_NONE = object()


def shown_meta_data(meta_data, before=_NONE, extra=()):
    """``meta_data`` with every secret value replaced by a placeholder.

    For the entry before a change, give no ``before``: each secret is ``<secret>``. For
    the entry after, give the meta-data before: a secret that differs from its value
    there is ``<secret, changed>``. A diff of the two shows that a secret changed (or
    was added or removed), never what it was or became.
    """
    if isinstance(meta_data, dict):
        shown = {}
        for key, value in meta_data.items():
            old = before.get(key, _NONE) if isinstance(before, dict) else _NONE
            if is_secret_key(key, extra):
                changed = old is not _NONE and old != value
                shown[key] = SECRET_CHANGED if changed else SECRET_SHOWN
            else:
                shown[key] = shown_meta_data(value, old, extra)
        return shown
    if isinstance(meta_data, list):
        olds = before if isinstance(before, list) else []
        return [
            shown_meta_data(item, olds[index] if index < len(olds) else _NONE, extra)
            for index, item in enumerate(meta_data)
        ]
    return meta_data
