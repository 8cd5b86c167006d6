#!/usr/bin/python
# Copyright (c) xenchannel contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# Ansible modules import after DOCUMENTATION, EXAMPLES and RETURN.
# ruff: noqa: E402

DOCUMENTATION = r"""
---
module: xl_channel
short_description: Declare, update or remove the Xen PV channels of an xl domain config
version_added: 0.1.0
author:
  - xenchannel contributors (@xenchannel)
description:
  - Edits the C(channel = [ ... ]) setting of an existing xl domain config file
    (xl.cfg(5)). Every other byte of the file - comments, blank lines, other settings,
    the spacing around C(=) - stays as it was.
  - Channels are matched by O(channels[].name). With O(state=present) the listed channels
    are added or updated in place and the file's other channels are left alone; with
    O(state=absent) the channels with the listed names are removed; with O(exact=true) the
    list becomes exactly the file's channel list, in this order.
  - A channel whose settings are already as requested keeps its spec text as written, so
    a rerun changes nothing.
  - When the file has no C(channel) setting, it is added on a new line after the C(vif) or
    C(disk) setting, whichever comes later in the file, or at the end of the file when it
    has neither. When the resulting list is empty the C(channel) setting is removed (xl
    treats a missing and an empty list alike).
  - The resulting list is validated before anything is written, with the rules of
    xl.cfg(5) and of this collection (versioned reverse domain names, socket paths strictly
    inside O(socket_dir) and at most 107 bytes, no C(,) C(=) C(") in values, unique names and
    paths, at most 9 channels); every violation is reported as one sentence.
  - A file xl would refuse to parse is reported with its line and column and never
    rewritten.
  - The file is replaced atomically (a temporary file in the same directory, then a
    rename), keeping its mode, owner and group.
  - When O(path) is a symbolic link, the file it leads to is edited and the link stays,
    as M(ansible.builtin.copy) does with C(follow=true). A link to nothing, to a
    directory or to anything but a regular file is refused, and so is a directory.
  - Channels cannot be hot-plugged. When O(domain) is given and C(xl) is on the PATH, the
    module runs C(xl list <domain>) (at most 10 seconds) and reports in RV(restart_required)
    whether the domain is running and its channels changed, so the change only takes
    effect after C(xl shutdown) and C(xl create).
attributes:
  check_mode:
    support: full
    description: Reports what would change, with the diff, without writing anything.
  diff_mode:
    support: full
    description: Returns the file's text before and after.
  idempotent:
    support: full
    description: A second run with the same options reports no change.
options:
  path:
    description:
      - The xl domain config file. It must exist; this module does not create domain
        configs.
    type: path
    required: true
    aliases: [dest]
  channels:
    description:
      - The channels to declare (O(state=present)), to remove (O(state=absent), only
        O(channels[].name) is used) or to have exactly (O(exact=true)).
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description:
          - The channel's name, a versioned reverse domain name such as
            V(org.xenchannel.provision.0). The guest finds its channel by this name.
        type: str
        required: true
      connection:
        description:
          - V(socket) (QEMU listens on O(channels[].path)) or V(pty).
          - Required unless O(state=absent).
        type: str
        choices: [socket, pty]
      path:
        description:
          - The socket path, strictly inside O(socket_dir). Required with
            V(connection=socket), refused with V(connection=pty).
          - The P(xenchannel.provision.channel_socket#lookup) lookup allocates one per
            domain.
        type: str
      backend:
        description:
          - The backend domain, when it is not dom0.
        type: str
  state:
    description:
      - V(present) ensures the listed channels exist with these settings; V(absent) removes
        the channels with the listed names.
    type: str
    choices: [present, absent]
    default: present
  exact:
    description:
      - Make O(channels) exactly the file's channel list, removing all others. Only with
        O(state=present).
    type: bool
    default: false
  socket_dir:
    description:
      - The directory socket paths must be inside (the dom0 agent's C(socket_root)).
    type: path
    default: /run/xenchannel
  backup:
    description:
      - Keep a copy of the original file, with a timestamp in its name, when the module
        changes it (as M(ansible.builtin.copy) does).
    type: bool
    default: false
  domain:
    description:
      - The domain's name, to check with C(xl list) whether it is running. Without it,
        RV(restart_required) is V(null) and RV(running) is V(unknown).
      - 1 to 64 letters, digits, V(_), V(.) and V(-), starting with a letter or digit,
        without V(..).
    type: str
notes:
  - The C(channel) setting must be a list of strings. A value xl would not read as
    channels (a string, nested lists) or a spec that does not parse is an error; fix the
    file by hand first.
  - Channels the module does not touch are validated too, because they are written back;
    a file with an invalid channel needs O(exact=true) or O(state=absent) for it.
seealso:
  - module: xenchannel.provision.channel_metadata
  - plugin: xenchannel.provision.channel_socket
    plugin_type: lookup
  - plugin: xenchannel.provision.channel_spec
    plugin_type: filter
"""

EXAMPLES = r"""
- name: Give web1 its provisioning channel
  xenchannel.provision.xl_channel:
    path: /etc/xen/web1.cfg
    domain: web1
    channels:
      - name: org.xenchannel.provision.0
        connection: socket
        path: "{{ lookup('xenchannel.provision.channel_socket', 'web1') }}"
    backup: true
  register: web1_channel

# Channels take effect only when the domain is created again from its config file:
# "xl reboot" (or a reboot inside the guest) keeps the configuration it was created with.
- name: Apply web1's new channels if they changed while it ran
  when: web1_channel.restart_required | default(false, true)
  block:
    - name: Shut web1 down and wait until it is gone
      ansible.builtin.command: xl shutdown -w web1
      changed_when: true

    - name: Create web1 again from its config file
      ansible.builtin.command: xl create /etc/xen/web1.cfg
      changed_when: true

- name: Remove the provisioning channel again
  xenchannel.provision.xl_channel:
    path: /etc/xen/web1.cfg
    state: absent
    channels:
      - name: org.xenchannel.provision.0

- name: These two channels and no others
  xenchannel.provision.xl_channel:
    path: /etc/xen/db1.cfg
    exact: true
    channels:
      - name: org.xenchannel.provision.0
        connection: socket
        path: /run/xenchannel/db1.sock
      - name: org.qemu.guest_agent.0
        connection: pty
"""

RETURN = r"""
path:
  description: The xl config file.
  returned: always
  type: str
  sample: /etc/xen/web1.cfg
channels:
  description: The file's channels after the change (or as they would be, in check mode).
  returned: always
  type: list
  elements: dict
  sample:
    - connection: socket
      name: org.xenchannel.provision.0
      path: /run/xenchannel/web1.sock
backup_file:
  description: The backup copy of the original file; V(null) when none was made.
  returned: always
  type: str
  sample: /etc/xen/web1.cfg.12345.2026-01-01@10:00:00~
running:
  description:
    - Whether C(xl list <domain>) found the domain - V(true) or V(false) - or V(unknown)
      when O(domain) was not given, C(xl) is not on the PATH, or C(xl) failed for another
      reason (for example on a host that is not running Xen; a warning says why).
  returned: always
  type: raw
  sample: true
restart_required:
  description:
    - V(true) when the domain is running and its channels changed (channels cannot be
      hot-plugged; they take effect at the next C(xl create)), V(false) when the domain is
      not running or its channels did not change, and V(null) whenever RV(running) is
      V(unknown), changed or not.
  returned: always
  type: bool
  sample: false
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.xenchannel.provision.plugins.module_utils.channel_spec import (
    CHANNEL_KEYS,
    ChannelSpecError,
    check_channels,
    format_spec,
    parse_spec,
)
from ansible_collections.xenchannel.provision.plugins.module_utils.domain_name import (
    domain_name_problem,
)
from ansible_collections.xenchannel.provision.plugins.module_utils.xl_config import (
    XlConfig,
    XlConfigError,
)
from ansible_collections.xenchannel.provision.plugins.module_utils.xl_host import (
    config_file,
    domain_running,
    write_atomic,
)

# The settings a new `channel` line goes after, whichever is assigned later in the file.
ANCHORS = ("vif", "disk")


class XlChannel:
    """Brings one xl config file's channel list to the requested state."""

    def __init__(self, module):
        self.module = module
        params = module.params
        self.path = params["path"]
        self.state = params["state"]
        self.exact = params["exact"]
        self.socket_dir = params["socket_dir"]
        self.file = self.path  # the file written: path, or where its links lead
        self.wanted = [
            {key: item[key] for key in CHANNEL_KEYS if item.get(key) is not None}
            for item in params["channels"]
        ]

    def fail(self, msg, **extra):
        self.module.fail_json(msg=msg, path=self.path, **extra)

    def check_options(self):
        params = self.module.params
        if self.exact and self.state == "absent":
            self.fail("exact=true needs state=present; with state=absent, list the names to remove")
        domain = params["domain"]
        problem = None if domain is None else domain_name_problem(domain)
        if problem is not None:
            self.fail(problem)
        if not os.path.isabs(self.socket_dir):
            self.fail(f"socket_dir {self.socket_dir!r} is not an absolute path; give one")
        names = [item["name"] for item in self.wanted]
        if self.state == "absent":
            return
        for item in self.wanted:
            if "connection" not in item:
                self.fail(
                    f"channel {item['name']} has no connection; add connection: socket or "
                    "connection: pty (only state=absent takes names alone)"
                )
        if not self.exact and len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            self.fail(
                f"the channels option names {', '.join(dup)} more than once; give each channel once"
            )

    def read(self):
        self.file = config_file(self.module, self.path)
        if self.file is None:
            self.fail(
                f"{self.path} does not exist; xl_channel edits an existing domain config, "
                "so create it first"
            )
        try:
            with open(self.file, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            self.fail(f"cannot read {self.path}: {exc}")
        try:
            doc = XlConfig.parse(data, source=self.path)
        except XlConfigError as exc:
            self.fail(
                f"{exc}; the file was not changed",
                line=exc.line,
                column=exc.column,
            )
        return data, doc

    def existing(self, doc):
        """The file's channel specs: [(text, dict)]."""
        value = doc.get("channel")
        if value is None:
            return []
        line = doc.lines("channel")[-1]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self.fail(
                f"{self.path}: line {line}: channel is not a list of strings, so xl would not "
                'read it as channels; write channel = [ "connection=..., name=..." ] by hand '
                "first"
            )
        found = []
        for item in value:
            try:
                found.append((item, parse_spec(item)))
            except ChannelSpecError as exc:
                self.fail(f"{self.path}: line {line}: {exc}")
        return found

    def target(self, existing):
        """The new list of (text, dict): untouched and unchanged specs keep their text."""
        if self.state == "absent":
            names = {item["name"] for item in self.wanted}
            return [pair for pair in existing if pair[1].get("name") not in names]
        kept = {pair[1].get("name"): pair for pair in existing}
        if self.exact:
            return [self.spec(item, kept.get(item["name"])) for item in self.wanted]
        result = list(existing)
        index = {pair[1].get("name"): i for i, pair in enumerate(result)}
        for item in self.wanted:
            name = item["name"]
            if name in index:
                result[index[name]] = self.spec(item, result[index[name]])
            else:
                index[name] = len(result)
                result.append(self.spec(item, None))
        return result

    def spec(self, item, old):
        if old is not None and old[1] == item:
            return old
        try:
            return format_spec(item), item
        except ChannelSpecError as exc:
            self.fail(f"the channels are invalid, so {self.path} was not changed: {exc}")

    def run(self):
        self.check_options()
        data, doc = self.read()
        existing = self.existing(doc)
        target = self.target(existing)
        try:
            channels = check_channels([pair[1] for pair in target], self.socket_dir)
        except ChannelSpecError as exc:
            self.fail(
                f"the channels are invalid, so {self.path} was not changed: {exc}",
                problems=exc.problems,
            )
        texts = [pair[0] for pair in target]
        try:
            if texts:
                anchor = self.anchor(doc)
                doc.set("channel", texts, after=anchor)
            else:
                doc.remove("channel")
        except (ValueError, RuntimeError) as exc:
            self.fail(f"cannot edit {self.path}: {exc}")
        new_data = doc.render_bytes()
        changed = new_data != data
        backup_file = None
        if changed and not self.module.check_mode:
            if self.module.params["backup"]:
                backup_file = self.module.backup_local(self.file)
            self.write(new_data)
        channels_changed = [pair[1] for pair in existing] != channels
        running = self.running()
        restart_required = None if running == "unknown" else running and channels_changed
        result = {
            "changed": changed,
            "path": self.path,
            "channels": channels,
            "backup_file": backup_file,
            "running": running,
            "restart_required": restart_required,
        }
        if self.module._diff:
            result["diff"] = {
                "before": data.decode("utf-8", "replace"),
                "after": new_data.decode("utf-8", "replace"),
                "before_header": self.path,
                "after_header": self.path,
            }
        return result

    @staticmethod
    def anchor(doc):
        if "channel" in doc:
            return None
        present = [key for key in ANCHORS if key in doc]
        if not present:
            return None
        return max(present, key=lambda key: doc.lines(key)[-1])

    def write(self, data):
        write_atomic(self.module, self.file, data)

    def running(self):
        """True, False, or "unknown" (no domain given, no xl, or xl failed)."""
        return domain_running(self.module, self.module.params["domain"])


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True, "aliases": ["dest"]},
            "channels": {
                "type": "list",
                "elements": "dict",
                "required": True,
                "options": {
                    "name": {"type": "str", "required": True},
                    "connection": {"type": "str", "choices": ["socket", "pty"]},
                    "path": {"type": "str"},
                    "backend": {"type": "str"},
                },
            },
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
            "exact": {"type": "bool", "default": False},
            "socket_dir": {"type": "path", "default": "/run/xenchannel"},
            "backup": {"type": "bool", "default": False},
            "domain": {"type": "str"},
        },
        supports_check_mode=True,
    )
    module.exit_json(**XlChannel(module).run())


if __name__ == "__main__":
    main()
