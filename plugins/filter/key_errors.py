# Copyright (c) xenchannel contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The key_errors filter: what is wrong with the keys of a role input, as sentences.

The roles check their mapping inputs (the domain role's domain_vm, each item of the
provision playbook's xenchannel_vms, the dom0_agent role's dom0_agent_config) with it
before they write anything: a misspelt key is named with the nearest known one, a
missing required key by its name. Its documentation is in key_errors.yml.
"""

import difflib
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError


def _nearest(key, known):
    close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1, cutoff=0.6)
    return close[0] if close else None


def key_errors(value, known, required=(), name="the settings"):
    """A list of sentences, empty when ``value`` is a mapping with only known keys and
    every required one."""
    if isinstance(known, (str, bytes)) or not isinstance(known, (list, tuple)):
        raise AnsibleFilterError("key_errors needs the list of known keys as its argument")
    if not isinstance(value, Mapping):
        kind = "null" if value is None else type(value).__name__
        return [f"{name} must be a mapping of settings, not {kind}."]
    errors = []
    for key in value:
        if key in known:
            continue
        nearest = _nearest(key, known)
        if nearest is not None:
            errors.append(f"{name} has an unknown key {str(key)!r}; did you mean {nearest!r}?")
        else:
            errors.append(
                f"{name} has an unknown key {str(key)!r}; the known keys are "
                f"{', '.join(str(k) for k in known)}."
            )
    for key in required:
        if key not in value:
            errors.append(f"{name} has no {key!r}, which is required; add it.")
    return errors


class FilterModule:
    def filters(self):
        return {"key_errors": key_errors}
