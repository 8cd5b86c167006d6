# Copyright (c) xenchannel contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Private helper: import the xenchannel runtime on the managed host (dom0).

Not a public API; only this collection's modules may use it.

The store layout, its rules and the bundle rules live in one place, the ``xenchannel``
runtime package (``xenchannel.dom0.store``, ``xenchannel.dom0.state``,
``xenchannel.protocol``). The ``dom0_agent`` role installs that package into dom0's
system Python, so modules that run on dom0 import it there, like any module that needs
a Python library on the managed host. This helper does the import, honours the
``runtime_path`` option and turns a missing runtime into one sentence naming the fix.
"""

import sys
import traceback

RUNTIME_MISSING = (
    "the xenchannel runtime is not installed on this host; apply the "
    "xenchannel.provision.dom0_agent role first (or set runtime_path to the directory "
    "that holds the xenchannel package)"
)

# Options every module that imports the runtime accepts.
RUNTIME_ARGUMENT_SPEC = {"runtime_path": {"type": "path"}}


class Runtime:
    """The runtime modules the collection's modules use, imported on the target."""

    def __init__(self, protocol, store, state):
        self.protocol = protocol
        self.store = store
        self.state = state


def import_runtime(module):
    """The xenchannel runtime, or ``fail_json`` with the fix and the import error.

    ``module.params['runtime_path']``, when set, is put first on ``sys.path``.
    """
    runtime_path = module.params.get("runtime_path")
    if runtime_path and runtime_path not in sys.path:
        sys.path.insert(0, runtime_path)
    try:
        from xenchannel import protocol  # noqa: PLC0415 - imported on the target only
        from xenchannel.dom0 import state, store  # noqa: PLC0415
    except ImportError as exc:
        module.fail_json(
            msg=f"{RUNTIME_MISSING}: {exc}",
            exception=traceback.format_exc(),
        )
    return Runtime(protocol, store, state)
