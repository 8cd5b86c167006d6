# Copyright (c) xenchannel contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# Ansible plugins import after DOCUMENTATION, EXAMPLES and RETURN.
# ruff: noqa: E402

DOCUMENTATION = r"""
---
name: channel_socket
author:
  - xenchannel contributors (@xenchannel)
version_added: 0.1.0
short_description: The channel socket path of a domain
description:
  - Returns C(<socket_dir>/<domain>.sock) for each domain name, the socket path the dom0
    agent and M(xenchannel.provision.xl_channel) expect for the domain's provisioning
    channel.
  - Deterministic - the same domain always gets the same path, so reruns are idempotent -
    and unique, because domain names are unique on a host.
  - Domain names are checked as the dom0 agent checks them - 1 to 64 letters, digits,
    V(_), V(.) and V(-), starting with a letter or digit, without V(..) - and a path that
    would not be directly inside O(socket_dir), or is longer than the 107 bytes a Unix
    socket path holds, is refused.
  - Runs on the controller and touches no file.
options:
  _terms:
    description: Domain names.
    required: true
    type: list
    elements: str
  socket_dir:
    description:
      - The directory of the sockets (the dom0 agent's C(socket_root)); an absolute path.
    type: path
    default: /run/xenchannel
seealso:
  - module: xenchannel.provision.xl_channel
"""

EXAMPLES = r"""
- name: web1's provisioning channel
  xenchannel.provision.xl_channel:
    path: /etc/xen/web1.cfg
    channels:
      - name: org.xenchannel.provision.0
        connection: socket
        path: "{{ lookup('xenchannel.provision.channel_socket', 'web1') }}"

- name: Sockets under another root
  ansible.builtin.debug:
    msg: "{{ lookup('xenchannel.provision.channel_socket', 'web1', socket_dir='/srv/xc') }}"
"""

RETURN = r"""
_raw:
  description: One socket path per domain name.
  type: list
  elements: str
  sample: [/run/xenchannel/web1.sock]
"""

import posixpath

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase
from ansible_collections.xenchannel.provision.plugins.module_utils.domain_name import (
    domain_name_problem,
)

MAX_SOCKET_PATH = 107


def socket_path(domain, socket_dir="/run/xenchannel"):
    """`<socket_dir>/<domain>.sock`; ValueError with one sentence if it cannot be."""
    problem = domain_name_problem(domain)
    if problem is not None:
        raise ValueError(problem)
    if not isinstance(socket_dir, str) or not socket_dir.startswith("/"):
        raise ValueError(f"socket_dir {socket_dir!r} is not an absolute path; give one")
    root = posixpath.normpath(socket_dir)
    if root.startswith("//"):
        root = "/" + root.lstrip("/")
    if root == "/":
        raise ValueError("socket_dir must not be /; give a directory for the sockets only")
    path = posixpath.normpath(posixpath.join(root, domain + ".sock"))
    if posixpath.dirname(path) != root:
        raise ValueError(f"the socket path {path!r} for {domain!r} escapes {root}")
    size = len(path.encode("utf-8", "surrogateescape"))
    if size > MAX_SOCKET_PATH:
        raise ValueError(
            f"the socket path {path!r} for {domain!r} has {size} bytes, over the "
            f"{MAX_SOCKET_PATH} a Unix socket path can hold; use a shorter socket_dir"
        )
    return path


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        socket_dir = self.get_option("socket_dir")
        paths = []
        for term in terms:
            try:
                paths.append(socket_path(term, socket_dir))
            except ValueError as exc:
                raise AnsibleLookupError(str(exc)) from None
        return paths
