"""Run ``make test``'s tiers one after another and print each one's time and outcome.

    python3 tests/tiers.py venv system lint typecheck pytest ansible-test e2e

Each tier is ``make <tier>`` in its own process, so a tier runs exactly as it does on its
own (``make e2e`` and friends). A failed test tier does not stop the later ones: CI then
shows every failure of the run, not only the first; a failed set-up tier (venv, system)
does, since every later tier needs it. The exit code is non-zero if any tier failed. The
tiers are told that the set-up has run (SETUP_DONE=1), so that they do not repeat it.

Several tiers share one pytest run (``make pytest-needs`` holds the roles, molecule, demo,
pristine-machine, cloud-init and load tests), so a make target's time alone does not say
where the time went. Each pytest run a tier makes is timed per test tier too: tests/
conftest.py hands every pytest session to ``time_tests``, which sums each test's set-up,
call and tear-down under its test tier (``TEST_TIERS``) into the file that TIMES_ENV
names; the report prints those sums under the make target's line, with the rest of the
target's time (pytest's start-up and collection, make's prerequisites) last.

Standard library only: it runs before the venv exists.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, NamedTuple

# Every later tier needs these; after one fails, running the rest only repeats its error.
SETUP = ("venv", "system")

# The test tiers inside a pytest run, by the path of their tests (the first prefix that
# matches); any other test counts under its directory in tests/ ("unit", "integration").
TEST_TIERS = {
    "tests/roles/": "roles",
    "tests/molecule/": "molecule",
    "tests/integration/test_demo.py": "demo",
    "tests/pristine/": "pristine",
    "tests/datasource/test_cloud_init_": "cloud-init",
    "tests/load/": "load",
}

# The file a pytest run adds its per-test-tier seconds to (JSON: tier -> seconds).
TIMES_ENV = "XENCHANNEL_TIER_TIMES"


class Result(NamedTuple):
    tier: str  # the make target
    rc: int
    seconds: float
    parts: Dict[str, float]  # test tier -> seconds, in the order they ran


def tier_of_test(path: str) -> str:
    """The test tier of a test file, by its path from the repository root."""
    for prefix, tier in TEST_TIERS.items():
        if path.startswith(prefix):
            return tier
    parts = path.split("/")
    return parts[1] if parts[0] == "tests" and len(parts) > 2 else "other"


class _TestTimes:
    """A pytest plugin: seconds per test tier, added to a file when the session ends."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.seconds: Dict[str, float] = {}

    def pytest_runtest_logreport(self, report: Any) -> None:
        tier = tier_of_test(report.nodeid.split("::")[0])
        self.seconds[tier] = self.seconds.get(tier, 0.0) + report.duration

    def pytest_sessionfinish(self) -> None:
        if not self.seconds:
            return
        # A tier may run pytest more than once: each run adds to what the earlier ones
        # wrote.
        total = read_times(self.path)
        for tier, seconds in self.seconds.items():
            total[tier] = total.get(tier, 0.0) + seconds
        with open(self.path, "w") as handle:
            json.dump(total, handle)


def time_tests(config: Any) -> None:
    """Time this pytest session per test tier, when a tier run asked for it. The variable
    goes from the environment here, so that a pytest a test starts does not count its
    time a second time."""
    path = os.environ.pop(TIMES_ENV, None)
    if path:
        config.pluginmanager.register(_TestTimes(path), "xenchannel-test-tier-times")


def read_times(path: str) -> Dict[str, float]:
    try:
        with open(path) as handle:
            found = json.load(handle)
    except FileNotFoundError:
        return {}
    return {str(tier): float(seconds) for tier, seconds in found.items()}


def run(tiers: List[str]) -> List[Result]:
    results = []
    with tempfile.TemporaryDirectory(prefix="xenchannel-tiers-") as times:
        for tier in tiers:
            print(f"==> make {tier}", flush=True)
            path = os.path.join(times, tier + ".json")
            env = dict(os.environ, **{TIMES_ENV: path})
            start = time.monotonic()
            rc = subprocess.call(["make", "--no-print-directory", tier, "SETUP_DONE=1"], env=env)
            results.append(Result(tier, rc, time.monotonic() - start, read_times(path)))
            print(f"<== make {tier}: {'ok' if rc == 0 else f'failed (exit {rc})'}", flush=True)
            if rc != 0 and tier in SETUP:
                break
    return results


def report(results: List[Result]) -> None:
    total = sum(result.seconds for result in results)
    print("\n==================== time per tier ====================")
    for result in results:
        outcome = "ok" if result.rc == 0 else f"FAILED (exit {result.rc})"
        print(f"  {result.tier:<24} {result.seconds / 60:6.1f} min  {outcome}")
        if not result.parts:
            continue
        for tier, seconds in result.parts.items():
            print(f"    {tier:<22} {seconds / 60:6.1f} min")
        rest = max(0.0, result.seconds - sum(result.parts.values()))
        print(f"    {'(start-up, collection)':<22} {rest / 60:6.1f} min")
    print(f"  {'all tiers':<24} {total / 60:6.1f} min")


def main(argv: List[str]) -> int:
    results = run(argv)
    report(results)
    return 0 if all(result.rc == 0 for result in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
