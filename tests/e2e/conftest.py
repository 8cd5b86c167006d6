"""Keep the real-Xen tier out of the main ``pytest`` run: ``make e2e`` runs it on its own.

A cold run builds four Debian roots and boots Xen under software emulation (docs/e2e.md
has the minutes), so ``make pytest`` must not pull it in a second time: test_e2e.py is
collected only when asked for by path (``pytest tests/e2e``, which ``make e2e`` and so
``make test`` run) or with XENCHANNEL_E2E=1. This is not a skip: uncollected tests appear
nowhere, and a collected one fails with the reason when the machine cannot run it.
"""

import os


def pytest_ignore_collect(collection_path, config):
    if collection_path.name != "test_e2e.py":
        return None
    if os.environ.get("XENCHANNEL_E2E") == "1":
        return None
    base = str(config.invocation_params.dir)
    here = str(collection_path.parent)
    for arg in config.invocation_params.args:
        path = os.path.abspath(os.path.join(base, str(arg).split("::", maxsplit=1)[0]))
        if path in (here, str(collection_path)):
            return None
    return True


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """What the e2e tier booted and how long each phase took (set by test_e2e.py)."""
    lines = getattr(config, "xenchannel_e2e_summary", None)
    if lines:
        terminalreporter.section("xenchannel e2e")
        for line in lines:
            terminalreporter.write_line(line)
