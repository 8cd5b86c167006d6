#!/usr/bin/python
# Copyright (c) xenchannel contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# Ansible modules import after DOCUMENTATION, EXAMPLES and RETURN.
# ruff: noqa: E402

DOCUMENTATION = r"""
---
module: xl_domain_config
short_description: Write a whole xl domain config for a clone, from a template or from scratch
version_added: 0.1.0
author:
  - xenchannel contributors (@xenchannel)
description:
  - Creates or updates an xl domain config file (xl.cfg(5)) with the settings that make a
    clone a domain of its own - O(name), O(uuid), O(memory), O(maxmem), O(vcpus),
    O(disks), O(vifs), O(channels) - plus any other top-level setting in O(settings).
  - When O(path) exists, only the settings given are changed, in place; comments, blank
    lines and every other setting stay byte for byte. When it does not exist, the new
    file starts from O(template) (another domain's config, usually the template VM's),
    keeping the template's other settings, or from an empty file.
  - A clone must not inherit the template's identity. The template's C(uuid) is dropped
    (or replaced by O(uuid)) and its C(name) replaced. The module refuses, naming the
    option that fixes it, a template whose vifs carry a fixed C(mac=), whose disks are
    writable, whose channels use sockets, or that passes PCI devices through, unless
    O(vifs), O(disks), O(channels) or O(settings) give the clone its own.
  - Every value is validated before anything is written, and every problem is reported as
    one sentence naming the input and the fix. Channels follow the same rules as
    M(xenchannel.provision.xl_channel). Disk and vif specs get the basic checks described
    in O(disks) and O(vifs); the rest is left to xl.
  - A disk, vif or channel item that already means what is asked keeps its text as
    written, so a rerun changes nothing.
  - A file (or template) xl would refuse to parse is reported with its line and column
    and never rewritten.
  - The file is replaced atomically (a temporary file in the same directory, then a
    rename), keeping an existing file's mode, owner and group unless O(mode), O(owner) or
    O(group) say otherwise.
  - When O(path) is a symbolic link, the file it leads to is written (and given O(mode),
    O(owner) and O(group)) and the link stays, as M(ansible.builtin.copy) does with
    C(follow=true). A link to nothing, to a directory or to anything but a regular file
    is refused, and so is a directory; with O(state=absent) a link itself is removed,
    not the file it points to.
  - When C(xl) is on the PATH, the module runs C(xl list <name>) (at most 10 seconds) and
    reports in RV(restart_required) whether the domain is running and its settings
    changed; a changed config takes effect at the next C(xl create).
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
      - The domain config file to write.
    type: path
    required: true
    aliases: [dest]
  state:
    description:
      - V(present) writes the config; V(absent) removes the file.
    type: str
    choices: [present, absent]
    default: present
  template:
    description:
      - An xl config file on the target to start from when O(path) does not exist yet.
        Ignored when O(path) exists, so later runs never re-apply the template over
        hand edits.
    type: path
  name:
    description:
      - The domain's name (C(name)). Required with O(state=present).
      - 1 to 64 letters, digits, V(_), V(.) and V(-), starting with a letter or digit,
        without V(..) (the dom0 agent's rule, since the name also keys the channel
        socket and the metadata store).
    type: str
  uuid:
    description:
      - The domain's fixed UUID (C(uuid)), 8-4-4-4-12 hex digits; written lower-case.
        cloud-init's platform UUID check and the domain's identity across restarts rely
        on it. Without it the file keeps its own C(uuid), a clone from a template gets
        none, and xl picks a new random UUID at every C(xl create).
    type: str
  memory:
    description:
      - Memory at start, in MiB (C(memory)).
    type: int
  maxmem:
    description:
      - Maximum memory in MiB (C(maxmem)); not below O(memory).
    type: int
  vcpus:
    description:
      - Number of virtual CPUs at start (C(vcpus)).
    type: int
  disks:
    description:
      - The complete C(disk) list. Each item is an xl disk spec string
        (xl-disk-configuration(5)), kept as written, or a dict with the keys
        C(target), C(vdev), C(format), C(access), C(devtype), C(backendtype), C(backend)
        and C(script), written as C(format=..., vdev=..., access=..., target=...) with
        C(target) last.
      - Checked - quote and control characters, parameter names libxlutil knows, a
        C(format) and C(access) it knows, a vdev present (named or third positional),
        vdevs unique. Not checked - that targets exist or backends fit.
    type: list
    elements: raw
  vifs:
    description:
      - The complete C(vif) list. Each item is an xl vif spec string
        (xl-network-configuration(5)) kept as written, or a dict of its keys, for
        example C(mac) and C(bridge), written as V(mac=00:16:3e:12:34:56, bridge=xenbr0).
      - Checked - C(KEY=VALUE) pieces with keys xl knows, C(mac) six hex pairs and
        unicast (written lower-case), MACs unique, no C(,) C(=) quotes or control
        characters in values.
    type: list
    elements: raw
  channels:
    description:
      - The complete C(channel) list, as in M(xenchannel.provision.xl_channel) with
        O(xenchannel.provision.xl_channel#module:exact=true).
    type: list
    elements: dict
    suboptions:
      name:
        description:
          - The channel's name, a versioned reverse domain name such as
            V(org.xenchannel.provision.0).
        type: str
        required: true
      connection:
        description:
          - V(socket) or V(pty).
        type: str
        required: true
        choices: [socket, pty]
      path:
        description:
          - The socket path, strictly inside O(socket_dir); only with V(connection=socket).
        type: str
      backend:
        description:
          - The backend domain, when it is not dom0.
        type: str
  socket_dir:
    description:
      - The directory channel socket paths must be inside (the dom0 agent's
        C(socket_root)).
    type: path
    default: /run/xenchannel
  other_configs_dir:
    description:
      - The directory of the host's other xl domain configs, usually that of O(path)
        (V(/etc/xen)). A MAC of O(vifs) that a config there already gives one of its
        vifs is refused, naming that domain and its file, before anything is written -
        two NICs with one MAC on a bridge lose each other's frames.
      - A config whose C(name) is O(name) counts as this domain's own (a backup copy, a
        link to O(path)); files that are not xl configs (C(xl.conf) has no vifs, scripts
        do not parse), hidden files and files over 1 MiB are skipped.
      - Unset, only O(vifs) among themselves must differ.
    type: path
  settings:
    description:
      - Other top-level settings, as C(name) to value. A value is a string, a
        non-negative integer (V(true) and V(false) become V(1) and V(0)) or a list of
        them; V(null) removes the setting. The settings the options above manage cannot
        be given here.
    type: dict
  backup:
    description:
      - Keep a copy of the original file, with a timestamp in its name, when the module
        changes or removes it.
    type: bool
    default: false
  mode:
    description:
      - The file's permissions, as for M(ansible.builtin.file). An existing file keeps
        its mode when this is not given; a new file gets V(0600), because domain configs
        can hold secrets such as C(vncpasswd).
    type: raw
  owner:
    description:
      - The file's owner; unchanged when not given.
    type: str
  group:
    description:
      - The file's group; unchanged when not given.
    type: str
notes:
  - Comments of the template are copied into the clone with its other lines.
  - Memory ballooning and vCPU changes of a running domain are not applied live; use
    C(xl mem-set) and C(xl vcpu-set), or, when RV(restart_required), shut the domain
    down and create it again from the file (C(xl shutdown -w), then C(xl create)).
seealso:
  - module: xenchannel.provision.xl_channel
  - module: xenchannel.provision.channel_metadata
  - plugin: xenchannel.provision.channel_socket
    plugin_type: lookup
"""

EXAMPLES = r"""
- name: Clone web1's config from the template VM's
  xenchannel.provision.xl_domain_config:
    path: /etc/xen/web1.cfg
    template: /etc/xen/debian-template.cfg
    name: web1
    uuid: "{{ 'web1' | ansible.builtin.to_uuid }}"
    memory: 2048
    maxmem: 4096
    vcpus: 2
    disks:
      - target: /dev/vg0/web1
        vdev: xvda
        access: rw
        format: raw
    vifs:
      - mac: "00:16:3e:00:00:11"
        bridge: xenbr0
    channels:
      - name: org.xenchannel.provision.0
        connection: socket
        path: "{{ lookup('xenchannel.provision.channel_socket', 'web1') }}"
    settings:
      on_crash: restart
    backup: true
  register: web1_config

# A changed config takes effect only when the domain is created again from the file:
# "xl reboot" (or a reboot inside the guest) keeps the configuration it was created with.
- name: Apply web1's new config if it changed while web1 ran
  when: web1_config.restart_required | default(false, true)
  block:
    - name: Shut web1 down and wait until it is gone
      ansible.builtin.command: xl shutdown -w web1
      changed_when: true

    - name: Create web1 again from its config file
      ansible.builtin.command: xl create /etc/xen/web1.cfg
      changed_when: true

- name: A config from scratch, with disk specs in xl's own syntax
  xenchannel.provision.xl_domain_config:
    path: /etc/xen/db1.cfg
    name: db1
    memory: 4096
    vcpus: 4
    disks: ["phy:/dev/vg0/db1,xvda,w"]
    vifs: ["mac=00:16:3e:00:00:12, bridge=xenbr0"]
    settings:
      type: pvh
      kernel: /usr/lib/grub-xen/grub-i386-xen_pvh.bin

- name: Remove a domain config
  xenchannel.provision.xl_domain_config:
    path: /etc/xen/old.cfg
    state: absent
"""

RETURN = r"""
path:
  description: The domain config file.
  returned: always
  type: str
  sample: /etc/xen/web1.cfg
created:
  description: Whether the file was (or, in check mode, would be) created.
  returned: always
  type: bool
  sample: true
config:
  description:
    - Every setting of the file after the change (or as it would be, in check mode), as xl
      reads it - integers for numbers, strings, lists. V(null) with O(state=absent).
  returned: always
  type: dict
  sample:
    name: web1
    uuid: 4a1f0c3e-7d2b-4c8e-9f61-0b5a2d7e3c19
    memory: 2048
    vcpus: 2
    disk: ["format=raw, vdev=xvda, access=rw, target=/dev/vg0/web1"]
    vif: ["mac=00:16:3e:00:00:11, bridge=xenbr0"]
backup_file:
  description: The backup copy of the original file; V(null) when none was made.
  returned: always
  type: str
  sample: /etc/xen/web1.cfg.12345.2026-01-01@10:00:00~
running:
  description:
    - Whether C(xl list <name>) found the domain - V(true) or V(false) - or V(unknown)
      when C(xl) is not on the PATH, failed for another reason (a warning says why), or
      O(state=absent).
  returned: always
  type: raw
  sample: true
restart_required:
  description:
    - V(true) when the domain is running and its settings changed (what xl reads, not
      comments or spacing), V(false) when it is not running or nothing changed, V(null)
      whenever RV(running) is V(unknown).
  returned: always
  type: bool
  sample: false
problems:
  description: Every validation problem, one sentence each, when the options are invalid.
  returned: failure
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.xenchannel.provision.plugins.module_utils.domain_config import (
    DomainConfigError,
    build_config,
    check_template,
    foreign_macs,
    wanted_settings,
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

NEW_FILE_MODE = 0o600
# Larger files in other_configs_dir are not domain configs (images, archives).
OTHER_CONFIG_MAX = 1 << 20


class XlDomainConfig:
    """Brings one domain config file to the requested settings."""

    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.path = self.params["path"]
        self.file = self.path  # the file written: path, or where its links lead

    def fail(self, msg, **extra):
        self.module.fail_json(msg=msg, path=self.path, **extra)

    def read(self, path, what):
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            self.fail(f"cannot read {what} {path}: {exc}")
        try:
            return data, XlConfig.parse(data, source=path)
        except XlConfigError as exc:
            self.fail(
                f"{exc}; fix {what} {path} by hand first, nothing was changed",
                line=exc.line,
                column=exc.column,
            )

    def wanted(self):
        params = self.params
        try:
            return wanted_settings(
                name=params["name"],
                uuid=params["uuid"],
                memory=params["memory"],
                maxmem=params["maxmem"],
                vcpus=params["vcpus"],
                disks=params["disks"],
                vifs=params["vifs"],
                channels=params["channels"],
                settings=params["settings"],
                socket_dir=params["socket_dir"],
            )
        except DomainConfigError as exc:
            self.fail(
                f"the options are invalid, so {self.path} was not changed: {exc}",
                problems=exc.problems,
            )

    def other_configs(self):
        """(path, parsed) of each xl config in other_configs_dir but this one's.

        Not a config - unreadable, not xl syntax, over OTHER_CONFIG_MAX bytes, hidden,
        not a regular file - is skipped: the directory also holds xl.conf, scripts and
        editors' leftovers, and a MAC it might hold is no domain's.
        """
        directory = self.params["other_configs_dir"]
        try:
            names = sorted(os.listdir(directory))
        except OSError as exc:
            self.fail(
                f"cannot list other_configs_dir {directory}: {exc.strerror}; give the "
                "directory of the host's xl domain configs"
            )
        own = os.path.realpath(self.path)
        found = []
        for entry in names:
            path = os.path.join(directory, entry)
            if entry.startswith(".") or os.path.realpath(path) == own:
                continue
            try:
                if not os.path.isfile(path) or os.path.getsize(path) > OTHER_CONFIG_MAX:
                    continue
                with open(path, "rb") as handle:
                    found.append((path, XlConfig.parse(handle.read(), source=path)))
            except (OSError, XlConfigError):
                continue
        return found

    def check_foreign_macs(self, wanted):
        vifs = dict(wanted).get("vif")
        if not vifs or self.params["other_configs_dir"] is None:
            return
        problems = foreign_macs(vifs, self.params["name"], self.other_configs())
        if problems:
            self.fail(f"{self.path} was not changed: {' '.join(problems)}", problems=problems)

    def start(self, wanted):
        """(old bytes or None, document to edit, edits, anchored)."""
        target = config_file(self.module, self.path)
        if target is not None:
            self.file = target
            data, doc = self.read(self.path, "the domain config")
            return data, doc, wanted, True
        template = self.params["template"]
        if template is None:
            return None, XlConfig(""), wanted, False
        if config_file(self.module, template, "template") is None:
            self.fail(f"template {template} does not exist; give an existing xl config file")
        _data, doc = self.read(template, "the template")
        problems = check_template(doc, self.params, template)
        if problems:
            self.fail(
                f"{self.path} was not created: {' '.join(problems)}",
                problems=problems,
            )
        if self.params["uuid"] is None:
            wanted = [("uuid", None), *wanted]
        return None, doc, wanted, True

    def run(self):
        if self.params["state"] == "absent":
            return self.remove()
        if not os.path.isabs(self.params["socket_dir"]):
            self.fail(f"socket_dir {self.params['socket_dir']!r} is not an absolute path; give one")
        template = self.params["template"]
        if template is not None and os.path.realpath(template) == os.path.realpath(self.path):
            # Checked even when path exists: editing it would rewrite the template itself.
            self.fail(
                f"template and path are both {self.path}; give the clone its own path, so the "
                "template stays as it is"
            )
        wanted = self.wanted()
        self.check_foreign_macs(wanted)
        data, doc, edits, anchored = self.start(wanted)
        before = XlConfig.parse(data).as_dict() if data is not None else {}
        try:
            build_config(doc, edits, anchored=anchored)
        except (ValueError, RuntimeError) as exc:
            self.fail(f"cannot write {self.path}: {exc}; nothing was changed")
        new_data = doc.render_bytes()
        created = data is None
        changed = created or new_data != data
        backup_file = None
        if changed and not self.module.check_mode:
            if self.params["backup"] and not created:
                backup_file = self.module.backup_local(self.file)
            # atomic_move gives a new file the umask's mode before attributes() sets
            # the wanted one; 077 closes that window for configs holding vncpasswd.
            umask = os.umask(0o077) if created else None
            try:
                write_atomic(self.module, self.file, new_data)
            finally:
                if umask is not None:
                    os.umask(umask)
        changed = self.attributes(changed, created)
        running = domain_running(self.module, self.params["name"])
        after = doc.as_dict()
        restart_required = None if running == "unknown" else bool(running and before != after)
        result = {
            "changed": changed,
            "created": created,
            "path": self.path,
            "config": after,
            "backup_file": backup_file,
            "running": running,
            "restart_required": restart_required,
        }
        if self.module._diff:
            result["diff"] = self.diff(data, new_data)
        return result

    def attributes(self, changed, created):
        """Apply mode, owner and group; a new file defaults to NEW_FILE_MODE."""
        mode = self.params["mode"]
        if mode is None and created:
            mode = NEW_FILE_MODE
        if not os.path.exists(self.file):
            return changed  # check mode, creating: nothing to compare yet
        # The file's own attributes, not a link's (which has none of its own to speak of).
        changed = self.module.set_mode_if_different(self.file, mode, changed)
        changed = self.module.set_owner_if_different(self.file, self.params["owner"], changed)
        return self.module.set_group_if_different(self.file, self.params["group"], changed)

    def remove(self):
        # A link is removed itself, as ansible.builtin.file removes one, even when it
        # leads nowhere; the file it points to stays.
        link = os.path.islink(self.path)
        exists = link or config_file(self.module, self.path) is not None
        data = None
        backup_file = None
        if exists:
            if os.path.isfile(self.path):
                try:
                    with open(self.path, "rb") as handle:
                        data = handle.read()
                except OSError as exc:
                    self.fail(f"cannot read {self.path}: {exc}")
            if not self.module.check_mode:
                if self.params["backup"] and data is not None:
                    backup_file = self.module.backup_local(self.path)
                try:
                    os.unlink(self.path)
                except OSError as exc:
                    self.fail(f"cannot remove {self.path}: {exc}")
        result = {
            "changed": exists,
            "created": False,
            "path": self.path,
            "config": None,
            "backup_file": backup_file,
            "running": "unknown",
            "restart_required": None,
        }
        if self.module._diff:
            result["diff"] = self.diff(data, b"")
        return result

    def diff(self, before, after):
        return {
            "before": (before or b"").decode("utf-8", "replace"),
            "after": after.decode("utf-8", "replace"),
            "before_header": self.path if before is not None else "(absent)",
            "after_header": self.path,
        }


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True, "aliases": ["dest"]},
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
            "template": {"type": "path"},
            "name": {"type": "str"},
            "uuid": {"type": "str"},
            "memory": {"type": "int"},
            "maxmem": {"type": "int"},
            "vcpus": {"type": "int"},
            "disks": {"type": "list", "elements": "raw"},
            "vifs": {"type": "list", "elements": "raw"},
            "channels": {
                "type": "list",
                "elements": "dict",
                "options": {
                    "name": {"type": "str", "required": True},
                    "connection": {
                        "type": "str",
                        "required": True,
                        "choices": ["socket", "pty"],
                    },
                    "path": {"type": "str"},
                    "backend": {"type": "str"},
                },
            },
            "socket_dir": {"type": "path", "default": "/run/xenchannel"},
            "other_configs_dir": {"type": "path"},
            "settings": {"type": "dict"},
            "backup": {"type": "bool", "default": False},
            "mode": {"type": "raw"},
            "owner": {"type": "str"},
            "group": {"type": "str"},
        },
        required_if=[("state", "present", ["name"])],
        supports_check_mode=True,
    )
    module.exit_json(**XlDomainConfig(module).run())


if __name__ == "__main__":
    main()
