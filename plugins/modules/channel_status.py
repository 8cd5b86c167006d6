#!/usr/bin/python
# Copyright (c) xenchannel contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# Ansible modules import after DOCUMENTATION, EXAMPLES and RETURN.
# ruff: noqa: E402

DOCUMENTATION = r"""
---
module: channel_status
short_description: Read, or wait for, a domain's delivery status from the dom0 agent
version_added: 0.1.0
author:
  - xenchannel contributors (@xenchannel)
description:
  - Reads the record the xenchannel dom0 agent keeps for a domain,
    C(<state_dir>/<domain>.json), and returns it with the summary C(xenchannel-dom0 status)
    prints.
  - With O(wait_for), polls until the domain's channel is connected, the store's current
    bundle has been delivered, the guest reported it applied, or the clone is ready to be
    used, within O(timeout) seconds.
  - A domain without a usable entry in the store (O(store_dir)) is never served by the
    agent, so with O(wait_for) the module fails at once, saying to write the entry with
    M(xenchannel.provision.channel_metadata), instead of waiting for the timeout.
  - Never changes anything. Works while the agent is down (it reads the agent's files).
  - Runs on dom0 and needs the C(xenchannel) runtime package there, which the
    C(xenchannel.provision.dom0_agent) role installs.
requirements:
  - the C(xenchannel) runtime package on the managed host (installed by the
    C(xenchannel.provision.dom0_agent) role)
attributes:
  check_mode:
    support: full
    description: The module only reads; it behaves the same in check mode.
  diff_mode:
    support: none
    description: Nothing changes, so there is no diff.
  idempotent:
    support: full
    description: Never reports a change.
options:
  domain:
    description: The domain's name, as the store and the agent know it.
    type: str
    required: true
  state_dir:
    description: The agent's state directory (its C(state_dir) setting).
    type: path
    default: /var/lib/xenchannel/state
  store_dir:
    description:
      - The agent's store directory (its C(store_dir) setting).
      - Read to learn the bundle the store holds now, so that O(wait_for=delivered) does
        not accept a delivery of an older bundle the agent has not yet noticed changed.
    type: path
    default: /etc/xenchannel/domains
  socket_root:
    description: The agent's socket root (its C(socket_root) setting).
    type: path
    default: /run/xenchannel
  wait_for:
    description:
      - V(none) reads once.
      - V(connected) waits until the agent is connected to the domain's channel socket.
      - V(delivered) waits until the guest acknowledged the bundle the store holds now.
      - V(applied) waits until, after that, the guest reported it applied the bundle; a
        V(failed) report for the current instance-id fails at once, with its reason.
      - V(ready) waits until, after that, the guest's report arrived (hostname,
        interfaces, SSH host keys, cloud-init's result) with every static address of the
        bundle's network-config up, and returns it as RV(report). A report of cloud-init
        errors, of a failed apply, or without a static address up fails at once with a
        sentence that says which, since the guest reports once per boot.
    type: str
    choices: [none, connected, delivered, applied, ready]
    default: none
  timeout:
    description:
      - Seconds to wait for O(wait_for) before failing, with the last error the agent
        recorded.
    type: float
    default: 300
  poll_interval:
    description: Seconds between two reads of the state while waiting.
    type: float
    default: 1
  runtime_path:
    description:
      - A directory to put first on the Python path before importing the C(xenchannel)
        runtime, for hosts where it is installed outside the system Python's path.
    type: path
seealso:
  - module: xenchannel.provision.channel_metadata
"""

EXAMPLES = r"""
- name: Show what the agent knows about web1
  xenchannel.provision.channel_status:
    domain: web1
  register: web1_status

- name: Wait until web1 has its (new) bundle
  xenchannel.provision.channel_status:
    domain: web1
    wait_for: delivered
    timeout: 120

- name: Wait until web1 is ready, and pin its SSH host keys for the first login
  xenchannel.provision.channel_status:
    domain: web1
    wait_for: ready
    timeout: 600
  register: web1_ready

- name: Trust exactly the host keys web1 reported over its channel
  ansible.builtin.known_hosts:
    path: ~/.ssh/known_hosts_xenchannel
    name: "{{ web1_ready.address }}"
    key: "{{ web1_ready.address }} {{ item }}"
  loop: "{{ web1_ready.report.host_keys }}"
  delegate_to: localhost

- name: Wait until the in-guest agent applied it
  xenchannel.provision.channel_status:
    domain: web1
    wait_for: applied
    timeout: 600
    poll_interval: 2
"""

RETURN = r"""
record:
  description:
    - The agent's state record for the domain (see docs/dom0-agent.md); nested records
      that never happened are absent. Empty when the agent has recorded nothing yet.
  returned: always
  type: dict
  sample:
    domain: web1
    active: true
    connected: true
    bundle: {sha256: 3f1c..., instance_id: i-web1, size: 1234}
    delivered: {at: "2024-05-01T12:00:00.123Z", sha256: 3f1c..., instance_id: i-web1, count: 1}
summary:
  description:
    - What C(xenchannel-dom0 status) shows for the domain. C(delivered) is V(yes) only if
      the guest acknowledged the bundle the agent holds now, V(stale) for an older one.
  returned: always
  type: dict
  sample:
    domain: web1
    connected: "yes"
    handshake: v1
    delivered: "yes"
    status: applied
    instance_id: i-web1
    last_error: "-"
store_sha256:
  description:
    - SHA-256 of the bundle in the store now; V(null) if the domain has no usable store
      entry.
  returned: always
  type: str
report:
  description:
    - What the clone reported with its last status, for the bundle the store holds now;
      V({}) if it has not (yet). Only public facts; C(missing) lists the static addresses
      of the network-config that were not up.
  returned: always
  type: dict
  sample:
    at: "2024-05-01T12:00:09.456Z"
    instance_id: i-web1
    hostname: web1
    cloud_init: done
    interfaces:
      - name: enX0
        mac: "00:16:3e:5a:01:02"
        addresses: [10.0.0.5/24, "fe80::216:3eff:fe5a:102/64"]
    host_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA..."]
    missing: []
address:
  description:
    - The address to reach the clone at, read from its report. That is the first static
      address of its network-config that is up, else its first address that is not
      link-local, and V(null) without a report.
  returned: always
  type: str
  sample: 10.0.0.5
ready:
  description:
    - V(yes), V(no) or V(failed) (see O(wait_for=ready)), and the sentence that says why
      it is not V(yes).
  returned: always
  type: dict
  sample: {state: "no", why: "the guest has not reported on instance-id i-web1 yet"}
reached:
  description: Whether the domain is at O(wait_for) (always V(true) for V(none)).
  returned: always
  type: bool
waited:
  description: Seconds spent waiting.
  returned: always
  type: float
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.xenchannel.provision.plugins.module_utils._runtime import (
    RUNTIME_ARGUMENT_SPEC,
    import_runtime,
)

WAIT_WORDS = {
    "connected": "connected",
    "delivered": "delivered",
    "applied": "applied",
    "ready": "ready",
}


class ChannelStatus:
    """Reads one domain's state record and judges it against ``wait_for``."""

    def __init__(self, module, runtime):
        self.module = module
        self.rt = runtime
        params = module.params
        self.domain = params["domain"]
        self.wait_for = params["wait_for"]
        self.store_error = None

    def read(self):
        """(record, summary, store entry or None) as they are now."""
        state, store = self.rt.state, self.rt.store
        params = self.module.params
        try:
            record = state.load_state(params["state_dir"], self.domain)
        except OSError as exc:
            self.module.fail_json(msg=f"cannot read the state of {self.domain}: {exc}")
        if record is None:
            record = state.new_state(self.domain)
        try:
            entry = store.load_domain(params["store_dir"], self.domain, params["socket_root"])
        except store.StoreError as exc:
            entry = None
            self.store_error = str(exc)
        return record, state.summarise(record), entry

    def no_entry_message(self):
        """Why waiting is pointless when the domain has no usable store entry, and the fix."""
        params = self.module.params
        path = self.rt.store.domain_file(params["store_dir"], self.domain)
        if not os.path.lexists(path):
            return (
                f"{self.domain} has no entry in the agent's store ({path} does not exist), "
                f"so the agent does not serve it and it can never be {self.wait_for}; write "
                "the entry first with xenchannel.provision.channel_metadata, or check the "
                "domain and store_dir options"
            )
        return (
            f"the agent does not serve {self.domain}, so it can never be {self.wait_for}: "
            f"its store entry is unusable: {self.store_error}"
        )

    def check(self, record, summary, entry):
        """(reached, failure sentence or None) for ``wait_for``."""
        if self.wait_for == "none":
            return True, None
        if self.wait_for == "connected":
            return summary["connected"] == "yes", None
        bundle = record.get("bundle") or {}
        # summarise() decides "delivered" against the bundle the agent recorded; the agent
        # notices a changed store within a second, so also insist it holds the store's.
        current = entry is not None and bundle.get("sha256") == entry.digest
        delivered = current and summary["delivered"] == "yes"
        if self.wait_for == "delivered":
            return delivered, None
        # A report about this delivery, not an earlier one (the agent's rule); delivered
        # already holds the agent's bundle to the store's, so its instance-id too.
        status = (self.rt.state.current_status(record) if delivered else None) or {}
        fresh = bool(status)
        if fresh and status.get("state") == "failed":
            reason = status.get("reason") or "no reason given"
            return False, (
                f"the guest {self.domain} reported that applying instance-id "
                f"{entry.instance_id} failed: {reason}; fix the bundle or the guest and "
                "reboot it (or restart its agent)"
            )
        applied = fresh and status.get("state") == "applied"
        if self.wait_for == "applied":
            return applied, None
        word, why = self.rt.state.readiness(record)
        if word == "failed" and applied:
            return False, f"{self.domain} is not usable: {why}"
        return word == "yes", None

    def run(self):
        params = self.module.params
        timeout, interval = params["timeout"], params["poll_interval"]
        if timeout < 0:
            self.module.fail_json(msg="timeout must be 0 or more seconds")
        if interval <= 0:
            self.module.fail_json(msg="poll_interval must be more than 0 seconds")
        try:
            self.rt.store.check_domain_name(self.domain)
        except self.rt.store.StoreError as exc:
            self.module.fail_json(msg=str(exc))
        start = time.monotonic()
        deadline = start + timeout
        while True:
            record, summary, entry = self.read()
            reached, failure = self.check(record, summary, entry)
            word, why = self.rt.state.readiness(record)
            current = (
                entry is not None
                and (record.get("report") or {}).get("instance_id") == entry.instance_id
            )
            report = (record.get("report") or {}) if current else {}
            result = {
                "changed": False,
                "record": self.rt.state.public_record(record),
                "summary": summary,
                "report": report,
                "address": self.rt.state.primary_address(report) if report else None,
                "ready": {"state": word, "why": None if word == "yes" else why},
                "store_sha256": entry.digest if entry is not None else None,
                "reached": reached,
                "waited": round(time.monotonic() - start, 3),
            }
            if failure is not None:
                self.module.fail_json(msg=failure, **result)
            if reached:
                return result
            if entry is None:
                # The agent serves only domains of its store: no later poll can succeed.
                self.module.fail_json(msg=self.no_entry_message(), **result)
            now = time.monotonic()
            if now >= deadline:
                self.module.fail_json(msg=self.timeout_message(summary, record), **result)
            time.sleep(min(interval, deadline - now))

    def timeout_message(self, summary, record):
        params = self.module.params
        last = summary["last_error"]
        message = (
            f"timed out after {params['timeout']:g} s waiting for {self.domain} to be "
            f"{WAIT_WORDS[self.wait_for]}; last error from the agent: "
            f"{last if last != '-' else 'none recorded'}"
        )
        if self.wait_for == "ready":
            message += f"; not ready because {self.rt.state.readiness(record)[1]}"
        return message


def main():
    argument_spec = {
        "domain": {"type": "str", "required": True},
        "state_dir": {"type": "path", "default": "/var/lib/xenchannel/state"},
        "store_dir": {"type": "path", "default": "/etc/xenchannel/domains"},
        "socket_root": {"type": "path", "default": "/run/xenchannel"},
        "wait_for": {
            "type": "str",
            "default": "none",
            "choices": ["none", "connected", "delivered", "applied", "ready"],
        },
        "timeout": {"type": "float", "default": 300},
        "poll_interval": {"type": "float", "default": 1},
    }
    argument_spec.update(RUNTIME_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    runtime = import_runtime(module)
    module.exit_json(**ChannelStatus(module, runtime).run())


if __name__ == "__main__":
    main()
