# Copyright (c) xenchannel contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filters for a VM's network interfaces (xen_mac, domain_interfaces,
name_matched_interfaces).

Thin wrappers of module_utils/interfaces.py, where the rules are: the domain role turns
its interfaces into vifs and a network-config that matches each NIC by its MAC with
them. Their documentation is in xen_mac.yml, domain_interfaces.yml and
name_matched_interfaces.yml next to this file.
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.xenchannel.provision.plugins.module_utils.interfaces import (
    domain_interfaces,
    name_matched_interfaces,
)
from ansible_collections.xenchannel.provision.plugins.module_utils.interfaces import (
    xen_mac as _xen_mac,
)


def xen_mac(uuid, index=0):
    try:
        return _xen_mac(uuid, index)
    except ValueError as exc:
        raise AnsibleFilterError(f"xen_mac: {exc}") from None


class FilterModule:
    def filters(self):
        return {
            "xen_mac": xen_mac,
            "domain_interfaces": domain_interfaces,
            "name_matched_interfaces": name_matched_interfaces,
        }
