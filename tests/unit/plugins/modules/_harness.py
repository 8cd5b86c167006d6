"""Run a module's main() through AnsibleModule with ansible-core 2.19's patch_module_args."""

from typing import Any, Callable, Dict
from unittest import mock

from ansible.module_utils import basic
from ansible.module_utils.common import warnings
from ansible.module_utils.testing import patch_module_args


class AnsibleExitJson(Exception):
    """exit_json was called; args[0] is the result."""


class AnsibleFailJson(Exception):
    """fail_json was called; args[0] is the result, with msg."""


def _exit_json(self: Any, **kwargs: Any) -> None:
    kwargs.setdefault("changed", False)
    # The real exit_json adds these; the patched one must too, for tests to see them.
    kwargs["warnings"] = list(warnings.get_warning_messages())
    raise AnsibleExitJson(kwargs)


def _fail_json(self: Any, msg: str, **kwargs: Any) -> None:
    kwargs["failed"] = True
    kwargs["msg"] = msg
    raise AnsibleFailJson(kwargs)


def run_module(main: Callable[[], None], args: Dict[str, Any]) -> Dict[str, Any]:
    """The module's result; raises AnsibleFailJson (with the result) when it fails.

    Options whose value is None are left out, as Ansible leaves out options not given.
    """
    args = {key: value for key, value in args.items() if value is not None}
    warnings._global_warnings.clear()  # one module run's warnings, as in a real run
    patched = mock.patch.multiple(basic.AnsibleModule, exit_json=_exit_json, fail_json=_fail_json)
    with patch_module_args(args), patched:
        try:
            main()
        except AnsibleExitJson as exc:
            result: Dict[str, Any] = exc.args[0]
            return result
    raise AssertionError("the module returned without calling exit_json or fail_json")


def fail_module(main: Callable[[], None], args: Dict[str, Any]) -> Dict[str, Any]:
    """The result of a module run that must fail."""
    try:
        result = run_module(main, args)
    except AnsibleFailJson as exc:
        failed: Dict[str, Any] = exc.args[0]
        return failed
    raise AssertionError(f"the module succeeded: {result}")
