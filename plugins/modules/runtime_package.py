#!/usr/bin/python
# Copyright (c) xenchannel contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# Ansible modules import after DOCUMENTATION, EXAMPLES and RETURN.
# ruff: noqa: E402

DOCUMENTATION = r"""
---
module: runtime_package
short_description: Install the xenchannel runtime package shipped in this collection
version_added: 0.1.0
author:
  - xenchannel contributors (@xenchannel)
description:
  - Installs the C(xenchannel) Python package, the collection's C(runtime/xenchannel), into
    O(dest) on the managed host, so that the host runs exactly the runtime of the collection
    that configures it. The C(xenchannel.provision.dom0_agent) and C(xenchannel.provision.guest)
    roles install the runtime with it.
  - Only the components the host runs are installed (O(components)), so dom0 holds no guest
    code and a guest no dom0 code, and everything installed imports there.
  - On the controller, the action plugin packs the collection's C(runtime/xenchannel) into
    one archive, without Python's caches (C(__pycache__), C(*.pyc)), with a manifest of each
    file's SHA-256, and sends it to the host in one transfer.
  - On the host, the module creates missing directories, replaces each file whose content
    differs (atomically, through a temporary file in the same directory), corrects modes
    and owners, and removes files and directories the collection no longer ships, so that
    a module dropped by a newer collection cannot linger and be imported. Python's caches
    in O(dest) are left alone.
  - Files are compared by SHA-256 with the manifest; a second run with the same collection
    changes nothing.
  - The action fails with one sentence, naming the fix, when the collection lacks
    C(runtime/xenchannel) or it is incomplete.
attributes:
  action:
    support: full
    description: The action plugin packs and sends the collection's runtime package.
  async:
    support: none
    description: The action plugin sends the package and runs the module in one step.
  check_mode:
    support: full
    description: Reports what would be installed, updated and removed, and changes nothing.
  diff_mode:
    support: full
    description: >-
      Returns the package's files before and after, one line per file with the start of its
      SHA-256; never their content.
  idempotent:
    support: full
    description: A second run with the same collection reports no change.
  platform:
    platforms: posix
    support: full
    description: Any POSIX host with Python 3.8 or later.
options:
  dest:
    description:
      - The package's directory on the host, C(<python_dir>/xenchannel), for example
        V(/usr/lib/python3/dist-packages/xenchannel).
      - Must be absolute, without V(..), and end in V(/xenchannel), because files there that
        the package does not ship are removed.
      - Its parent directory is created if it is missing.
    type: path
    required: true
  components:
    description:
      - What the host runs. V(guest) is the protocol, the guest client, the in-guest agent
        and what the C(XenChannel) datasource imports (C(xenchannel.guest)); it runs on
        Python 3.6 or later. V(dom0) is the protocol and the dom0 agent with the store and
        bundle rules this collection's modules import (C(xenchannel.dom0)).
      - Files of a component not listed are removed from O(dest), like any file the
        collection does not ship.
    type: list
    elements: str
    choices: [dom0, guest]
    required: true
  owner:
    description:
      - The owner of every installed file and directory, a user name or a numeric id.
    type: str
    default: root
  group:
    description:
      - The group of every installed file and directory, a group name or a numeric id.
    type: str
    default: root
  mode:
    description:
      - The mode of every installed file, in octal. Quote it (V('0644')); an unquoted
        V(0644) is read by YAML as the same number and also works.
    type: raw
    default: '0644'
  directory_mode:
    description:
      - The mode of every installed directory, O(dest) included, in octal.
    type: raw
    default: '0755'
  src:
    description:
      - Internal; the action plugin sets it to the archive it sent to the host. A task that
        sets it is refused.
    type: path
  manifest:
    description:
      - Internal; the action plugin sets it to the package-relative name and SHA-256 of each
        file of the package. A task that sets it is refused.
    type: dict
notes:
  - Run it with the privileges needed to write O(dest) and to set O(owner) and O(group),
    usually C(become=true).
  - Directories in the result lists end in V(/); the package directory itself is V(./).
seealso:
  - module: xenchannel.provision.channel_metadata
    description: Imports the runtime this module installs on dom0.
  - name: The xenchannel architecture
    description: Why the runtime ships inside the collection and how the roles install it.
    link: https://github.com/xenchannel/provision/blob/main/docs/architecture.md
"""

EXAMPLES = r"""
- name: Install the guest's runtime into Debian's system Python
  xenchannel.provision.runtime_package:
    dest: /usr/lib/python3/dist-packages/xenchannel
    components: [guest]
  become: true

- name: Install it into a virtual environment, owned by the service's user
  xenchannel.provision.runtime_package:
    dest: /opt/xenchannel/venv/lib/python3.11/site-packages/xenchannel
    components: [dom0]
    owner: xenchannel
    group: xenchannel
    mode: "0640"
    directory_mode: "0750"
  become: true
  register: runtime

- name: Show what changed
  ansible.builtin.debug:
    msg: >-
      installed {{ runtime.installed }}, updated {{ runtime.updated }},
      removed {{ runtime.removed }}
"""

RETURN = r"""
dest:
  description: The package's directory, normalised.
  returned: always
  type: str
  sample: /usr/lib/python3/dist-packages/xenchannel
components:
  description: The components installed, sorted.
  returned: always
  type: list
  elements: str
  sample: ["guest"]
installed:
  description:
    - Files and directories that did not exist and were (or, in check mode, would be)
      created, relative to O(dest). Directories end in V(/).
  returned: always
  type: list
  elements: str
  sample: ["./", "__init__.py", "dom0/", "dom0/__init__.py"]
updated:
  description:
    - Files whose content, mode or owner was (or would be) corrected, and directories whose
      mode or owner was, relative to O(dest).
  returned: always
  type: list
  elements: str
  sample: ["protocol.py"]
removed:
  description:
    - Files and directories the collection no longer ships that were (or would be) removed,
      relative to O(dest). Python's caches are not listed and not removed, except inside a
      removed directory.
  returned: always
  type: list
  elements: str
  sample: ["guest/old_module.py", "legacy/"]
"""

import traceback

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.xenchannel.provision.plugins.module_utils.runtime_package import (
    COMPONENTS,
    PackageError,
    RuntimeInstaller,
)

ARGUMENT_SPEC = {
    "dest": {"type": "path", "required": True},
    "components": {
        "type": "list",
        "elements": "str",
        "choices": sorted(COMPONENTS),
        "required": True,
    },
    "owner": {"type": "str", "default": "root"},
    "group": {"type": "str", "default": "root"},
    "mode": {"type": "raw", "default": "0644"},
    "directory_mode": {"type": "raw", "default": "0755"},
    "src": {"type": "path"},
    "manifest": {"type": "dict"},
}


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = module.params
    try:
        installer = RuntimeInstaller(
            params["dest"],
            params["manifest"],
            params["components"],
            owner=params["owner"],
            group=params["group"],
            mode=params["mode"],
            directory_mode=params["directory_mode"],
            check_mode=module.check_mode,
        )
        diff = installer.diff() if module._diff else None
        installer.apply(params["src"])
    except PackageError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(
            msg=f"cannot install the runtime package into {params['dest']}: {exc}; check that "
            "the task runs with the rights to write there (become: true)",
            exception=traceback.format_exc(),
        )
    result = installer.result()
    if diff is not None:
        result["diff"] = diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
