"""Import controller-side plugins without turning the whole test session into a controller.

Importing any ansible controller code (ansible.errors, ansible.plugins...) runs
ansible/_internal/__init__.py, which sets module_utils' `is_controller` and friends for
the rest of the process: AnsibleModule.warn then prints through Display instead of
recording the warning, and module tests that check `warnings` fail. The module tests run
in this same session, so plugin tests import their plugin inside `controller_module`,
which puts those globals back afterwards.
"""

import importlib
from typing import Any, Iterator

import pytest
from ansible.module_utils import _internal
from ansible.module_utils._internal import _traceback

_SAVED = ("is_controller", "get_controller_serialize_map", "import_controller_module")


def controller_module(name: str) -> Any:
    """A module-scoped fixture yielding the imported module `name`, globals restored after."""

    @pytest.fixture(scope="module")
    def fixture() -> Iterator[Any]:
        saved = {key: getattr(_internal, key) for key in _SAVED}
        traceback_enabled = _traceback._is_traceback_enabled
        try:
            yield importlib.import_module(name)
        finally:
            for key, value in saved.items():
                setattr(_internal, key, value)
            _traceback._is_traceback_enabled = traceback_enabled

    return fixture
