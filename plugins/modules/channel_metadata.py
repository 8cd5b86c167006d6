#!/usr/bin/python
# Copyright (c) xenchannel contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# Ansible modules import after DOCUMENTATION, EXAMPLES and RETURN.
# ruff: noqa: E402

DOCUMENTATION = r"""
---
module: channel_metadata
short_description: Write a domain's metadata bundle into the dom0 agent's store
version_added: 0.1.0
author:
  - xenchannel contributors (@xenchannel)
description:
  - Writes C(<store_dir>/<domain>/domain.json), the entry the xenchannel dom0 agent serves
    to the domain over its Xen PV channel, or removes it.
  - The bundle (meta-data, user-data, vendor-data, network-config) is validated before
    anything is written, with the protocol's own rules - an C(instance-id), a valid
    hostname, network-config version 1 or 2, at most 16 MiB.
  - The entry is compared by content with the existing one and replaced atomically, with
    mode C(0600) in a C(0700) directory, only when it differs. An existing entry the agent
    would refuse (wrong mode, invalid JSON) is replaced.
  - Runs on dom0 and needs the C(xenchannel) runtime package there, which the
    C(xenchannel.provision.dom0_agent) role (to come) installs. The store rules are imported
    from it, so the module and the agent can never disagree about them.
requirements:
  - the C(xenchannel) runtime package on the managed host (installed by the
    C(xenchannel.provision.dom0_agent) role)
attributes:
  check_mode:
    support: full
    description: Reports what would change without writing or removing anything.
  diff_mode:
    support: full
    description: >-
      Returns the entry before and after; user-data and vendor-data are shown only as
      their size and SHA-256, never their content, and each secret meta-data value (see
      O(secret_keys)) as C(<secret>), or C(<secret, changed>) when the run changes it.
  idempotent:
    support: full
    description: A second run with the same options reports no change.
options:
  domain:
    description:
      - The domain's name, as the store and the agent know it.
      - 1 to 64 letters, digits, V(_), V(.) and V(-), starting with a letter or digit,
        without V(..).
    type: str
    required: true
  state:
    description:
      - V(present) writes the entry, V(absent) removes it and its directory.
    type: str
    choices: [present, absent]
    default: present
  socket:
    description:
      - Absolute path of the domain's channel socket (the C(path) of its xl channel), under
        O(socket_root).
      - Required when O(state=present).
    type: path
  meta_data:
    description:
      - The cloud-init meta-data. Must hold a unique C(instance-id); C(local-hostname), if
        given, must be a valid hostname.
      - Required when O(state=present).
      - Values of secret keys (see O(secret_keys)) are never shown, in a diff, a result or
        C(-vvv) output.
    type: dict
  secret_keys:
    description:
      - Further O(meta_data) keys whose values are secret, at any depth, beside those the
        built-in rule finds. Compared in lower case with V(_) as V(-).
      - "The built-in rule: a key is secret when its name contains V(password),
        V(passwd), V(passphrase), V(secret), V(token), V(credential), V(private) or
        V(apikey), or one of its words (split at V(-), V(_), V(.) and case changes) is
        V(pass), V(pwd), V(key), V(keys) or V(cookie) - except V(public-keys) and
        V(ssh_authorized_keys), which hold public keys. So V(password), V(api-token),
        V(client_secret), V(tls-key) and V(ssh_keys) are secret, V(local-hostname) and
        V(public-keys) are not."
      - The whole value of a secret key is secret. Ansible masks each secret value
        wherever it appears in the module's output, as it does for C(no_log) options.
    type: list
    elements: str
    default: []
  user_data:
    description:
      - The user-data as text (for example C(#cloud-config) YAML).
      - Mutually exclusive with O(user_data_base64).
    type: str
  user_data_base64:
    description:
      - The user-data as base64 (binary user-data, such as gzip).
      - Mutually exclusive with O(user_data).
    type: str
  vendor_data:
    description:
      - The vendor-data as text. Mutually exclusive with O(vendor_data_base64).
    type: str
  vendor_data_base64:
    description:
      - The vendor-data as base64. Mutually exclusive with O(vendor_data).
    type: str
  network_config:
    description:
      - cloud-init network-config, version 1 or 2 (bare or under a C(network) key).
    type: dict
  store_dir:
    description:
      - The agent's store directory (its C(store_dir) setting).
    type: path
    default: /etc/xenchannel/domains
  socket_root:
    description:
      - The agent's socket root (its C(socket_root) setting); O(socket) must be inside it.
    type: path
    default: /run/xenchannel
  runtime_path:
    description:
      - A directory to put first on the Python path before importing the C(xenchannel)
        runtime, for hosts where it is installed outside the system Python's path.
    type: path
notes:
  - User-data and vendor-data often hold secrets. The options are C(no_log), and the
    module never returns or shows their content, only their size and SHA-256.
  - Secret meta-data values (O(secret_keys)) are masked as C(no_log) values are, from the
    moment the module reads its arguments, so an argument error does not show them
    either. A diff shows that a secret changed, never its value or a digest of it (a
    digest of a short password can be guessed).
seealso:
  - module: xenchannel.provision.channel_status
"""

EXAMPLES = r"""
- name: Give web1 its identity
  xenchannel.provision.channel_metadata:
    domain: web1
    socket: /run/xenchannel/web1.sock
    meta_data:
      instance-id: "{{ web1_uuid }}"
      local-hostname: web1
      public-keys:
        - "{{ lookup('ansible.builtin.file', 'keys/admin.pub') }}"
    user_data: |
      #cloud-config
      packages: [nginx]
    network_config:
      version: 2
      ethernets:
        eth0:
          addresses: [192.0.2.10/24]
          routes:
            - to: default
              via: 192.0.2.1

- name: Binary (gzipped) user-data
  xenchannel.provision.channel_metadata:
    domain: web2
    socket: /run/xenchannel/web2.sock
    meta_data:
      instance-id: "{{ web2_uuid }}"
    user_data_base64: "{{ lookup('ansible.builtin.file', 'web2-user-data.gz.b64') }}"

- name: Forget a domain
  xenchannel.provision.channel_metadata:
    domain: web1
    state: absent
"""

RETURN = r"""
path:
  description: The entry's file, C(<store_dir>/<domain>/domain.json).
  returned: always
  type: str
  sample: /etc/xenchannel/domains/web1/domain.json
sha256:
  description:
    - SHA-256 of the encoded bundle, as the agent records it in the state's C(bundle.sha256)
      and the guest acknowledges it. V(null) when O(state=absent).
  returned: always
  type: str
  sample: 3f1c9a0b6d1e4f0f8e5a5b7c0d2e4f6a8b0c2d4e6f8a0b2c4d6e8f0a2b4c6d8e
instance_id:
  description: The bundle's C(instance-id). V(null) when O(state=absent).
  returned: always
  type: str
  sample: 9d4f6b1e-1f2a-4c3b-8d5e-6f7a8b9c0d1e
"""

import base64
import binascii
import hashlib
import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.xenchannel.provision.plugins.module_utils._runtime import (
    RUNTIME_ARGUMENT_SPEC,
    import_runtime,
)
from ansible_collections.xenchannel.provision.plugins.module_utils.metadata_secrets import (
    secret_values,
    shown_meta_data,
)

SECRET_PARTS = ("user-data", "vendor-data")


def _listed(value):
    """``secret_keys`` as given, before AnsibleModule converts it (a list or "a,b")."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (list, tuple)):
        return [str(part) for part in value]
    return []


def _mapping(value):
    """``meta_data`` as given, before AnsibleModule converts it (a dict or JSON text)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


class MetadataModule(AnsibleModule):
    """AnsibleModule that knows the secret meta-data values as soon as it reads its
    arguments, so that nothing it returns - an argument error's ``invocation`` included -
    shows them."""

    def _load_params(self):
        super()._load_params()
        extra = _listed(self.params.get("secret_keys"))
        self.no_log_values.update(secret_values(_mapping(self.params.get("meta_data")), extra))


def redacted(doc, before=None, secret_keys=()):
    """The entry as shown in a diff: secret meta-data values as placeholders, secret
    parts only as their size and digest. ``before``: the entry it replaces, if any."""
    if doc is None:
        return {}
    shown = dict(doc)
    if isinstance(shown.get("meta-data"), dict):
        if before is None:
            shown["meta-data"] = shown_meta_data(shown["meta-data"], extra=secret_keys)
        else:
            shown["meta-data"] = shown_meta_data(
                shown["meta-data"], before.get("meta-data"), secret_keys
            )
    for key in SECRET_PARTS:
        value = shown.get(key)
        if value is None:
            continue
        if isinstance(value, dict):
            data = base64.b64decode(value["base64"])
        else:
            data = value.encode("utf-8")
        shown[key] = f"<{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}>"
    return shown


def _opaque(module, text_option, base64_option):
    text = module.params[text_option]
    if text is not None:
        return text.encode("utf-8")
    encoded = module.params[base64_option]
    if encoded is None:
        return None
    try:
        return base64.b64decode("".join(encoded.split()).encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        module.fail_json(
            msg=f"{base64_option} is not valid base64; encode it with base64 (standard "
            f"alphabet, with padding), or pass text in {text_option}"
        )


class ChannelMetadata:
    """Brings one domain's store entry to the requested state."""

    def __init__(self, module, runtime):
        self.module = module
        self.rt = runtime
        params = module.params
        self.domain = params["domain"]
        self.store_dir = params["store_dir"]
        self.socket_root = params["socket_root"]
        self.secret_keys = params["secret_keys"]
        self.check_mode = module.check_mode
        self.path = None

    def run(self):
        store = self.rt.store
        try:
            store.check_domain_name(self.domain)
        except store.StoreError as exc:
            self.module.fail_json(msg=str(exc))
        self.path = store.domain_file(self.store_dir, self.domain)
        if self.module.params["state"] == "absent":
            return self.absent()
        return self.present()

    def existing(self):
        """The current entry as domain.json content, or None if there is no usable one."""
        store = self.rt.store
        if not os.path.lexists(self.path):
            return None
        try:
            entry = store.load_domain(self.store_dir, self.domain, self.socket_root)
        except store.StoreError as exc:
            self.module.warn(f"replacing the unusable store entry: {exc}")
            return None
        return store.encode_domain(entry.socket, entry.bundle)

    def present(self):
        store, protocol = self.rt.store, self.rt.protocol
        params = self.module.params
        try:
            socket = store.check_socket_path(
                params["socket"], self.socket_root, "the socket option"
            )
        except store.StoreError as exc:
            self.module.fail_json(msg=str(exc))
        bundle = protocol.Bundle(
            params["meta_data"],
            _opaque(self.module, "user_data", "user_data_base64"),
            _opaque(self.module, "vendor_data", "vendor_data_base64"),
            params["network_config"],
        )
        try:
            bundle.validate()
        except protocol.BundleError as exc:
            self.module.fail_json(msg=f"the bundle for domain {self.domain} is invalid: {exc}")
        wanted = store.encode_domain(socket, bundle)
        before = self.existing()
        changed = before != wanted
        if changed and not self.check_mode:
            try:
                store.write_domain(self.store_dir, self.domain, socket, bundle)
            except (store.StoreError, OSError) as exc:
                self.module.fail_json(msg=f"cannot write {self.path}: {exc}")
        return self.result(changed, before, wanted, bundle.digest(), bundle.instance_id)

    def absent(self):
        store = self.rt.store
        directory = os.path.dirname(self.path)
        exists = os.path.lexists(self.path) or os.path.lexists(directory)
        before = self.existing() if exists else None
        if exists and not self.check_mode:
            try:
                store.remove_domain(self.store_dir, self.domain)
            except OSError as exc:
                self.module.fail_json(msg=f"cannot remove {directory}: {exc}")
        return self.result(exists, before, None, None, None)

    def result(self, changed, before, after, digest, instance_id):
        result = {
            "changed": changed,
            "path": self.path,
            "sha256": digest,
            "instance_id": instance_id,
        }
        if self.module._diff:
            result["diff"] = {
                "before": redacted(before, secret_keys=self.secret_keys),
                "after": redacted(after, before or {}, self.secret_keys),
                "before_header": self.path,
                "after_header": self.path,
            }
        return result


def main():
    argument_spec = {
        "domain": {"type": "str", "required": True},
        "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
        "socket": {"type": "path"},
        "meta_data": {"type": "dict"},
        "secret_keys": {"type": "list", "elements": "str", "default": [], "no_log": False},
        "user_data": {"type": "str", "no_log": True},
        "user_data_base64": {"type": "str", "no_log": True},
        "vendor_data": {"type": "str", "no_log": True},
        "vendor_data_base64": {"type": "str", "no_log": True},
        "network_config": {"type": "dict"},
        "store_dir": {"type": "path", "default": "/etc/xenchannel/domains"},
        "socket_root": {"type": "path", "default": "/run/xenchannel"},
    }
    argument_spec.update(RUNTIME_ARGUMENT_SPEC)
    module = MetadataModule(
        argument_spec=argument_spec,
        mutually_exclusive=[
            ("user_data", "user_data_base64"),
            ("vendor_data", "vendor_data_base64"),
        ],
        required_if=[("state", "present", ("socket", "meta_data"))],
        supports_check_mode=True,
    )
    runtime = import_runtime(module)
    module.exit_json(**ChannelMetadata(module, runtime).run())


if __name__ == "__main__":
    main()
