"""The time table at the end of `make test` (tests/tiers.py): a line per make target, and
under a target that runs pytest a line per test tier it held, so that the roles, molecule,
demo, pristine-machine, cloud-init and load tests, which share `make pytest-needs`, each
show their time.

The run is real: tests/tiers.py runs make on a Makefile whose target runs pytest over a
test tree laid out like tests/, with a conftest that hands the session to the timer as
tests/conftest.py does.
"""

import os
import subprocess
import sys
from typing import Any, List

from tests import tiers

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Where each test tier's tests live, as in tests/ (tests/tiers.py's TEST_TIERS), and how
# long the one test there takes.
TREE = {
    "tests/roles/test_role_a.py": ("roles", 0.6),
    "tests/molecule/test_scenarios_a.py": ("molecule", 0.05),
    "tests/integration/test_demo.py": ("demo", 0.3),
    "tests/integration/test_other_a.py": ("integration", 0.05),
    "tests/pristine/test_pristine_a.py": ("pristine", 0.05),
    "tests/datasource/test_cloud_init_versions.py": ("cloud-init", 0.05),
    "tests/datasource/test_ds_a.py": ("datasource", 0.05),
    "tests/load/test_load_a.py": ("load", 0.05),
}

MAKEFILE = """\
pytest-needs:
\t{python} -m pytest -q -p no:cacheprovider tests
quiet:
\ttrue
"""


def lay_out(base: Any) -> None:
    for path, (_tier, seconds) in TREE.items():
        target = base / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"import time\n\n\ndef test_it():\n    time.sleep({seconds})\n")
    (base / "conftest.py").write_text(
        "from tests.tiers import time_tests\n\n\n"
        "def pytest_configure(config):\n    time_tests(config)\n"
    )
    (base / "pytest.ini").write_text("[pytest]\n")
    (base / "Makefile").write_text(MAKEFILE.format(python=sys.executable))


def run_tiers(base: Any, *targets: str) -> List[str]:
    """The lines of the time table that tests/tiers.py prints after running ``targets``."""
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop(tiers.TIMES_ENV, None)
    done = subprocess.run(
        [sys.executable, os.path.join(REPO, "tests", "tiers.py"), *targets],
        cwd=base, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.split("time per tier")[1].splitlines()[1:]


def shape(lines: List[str]) -> List[str]:
    """Each line's indent and name: ``"  quiet"``, ``"    roles"``."""
    return [line[: len(line) - len(line.lstrip())] + line.split()[0] for line in lines]


def test_each_test_tier_inside_a_pytest_target_gets_its_line(tmp_path: Any) -> None:
    lay_out(tmp_path)
    lines = run_tiers(tmp_path, "quiet", "pytest-needs")
    # Each make target's line, the test tiers it ran indented under it (in the order they
    # ran), what else the target took, then the total.
    assert shape(lines) == [
        "  quiet",
        "  pytest-needs",
        "    cloud-init",
        "    datasource",
        "    demo",
        "    integration",
        "    load",
        "    molecule",
        "    pristine",
        "    roles",
        "    (start-up,",
        "  all",
    ], lines
    # Seconds of stub work: well under a minute each, however busy the machine (pytest's
    # own start-up alone can show as 0.1 min).
    for line, tail in ((lines[0], ["min", "ok"]), (lines[1], ["min", "ok"])):
        assert line.split()[2:] == tail and float(line.split()[1]) < 1.0, line
    for line, word in ((lines[-2], "collection)"), (lines[-1], "tiers")):
        assert line.split()[1] == word and line.split()[3] == "min", line
        assert float(line.split()[2]) < 1.0, line


def test_the_report_splits_a_target_into_its_test_tiers(capsys: Any) -> None:
    tiers.report(
        [
            tiers.Result("lint", 0, 30.0, {}),
            tiers.Result("pytest-needs", 2, 900.0, {"roles": 240.0, "demo": 90.0, "load": 510.0}),
        ]
    )
    assert capsys.readouterr().out.splitlines()[2:] == [
        "  lint                        0.5 min  ok",
        "  pytest-needs               15.0 min  FAILED (exit 2)",
        "    roles                     4.0 min",
        "    demo                      1.5 min",
        "    load                      8.5 min",
        "    (start-up, collection)    1.0 min",
        "  all tiers                  15.5 min",
    ]


def test_the_timer_sums_each_test_tier_and_adds_to_an_earlier_run(tmp_path: Any) -> None:
    lay_out(tmp_path)
    times = tmp_path / "times.json"
    env = dict(os.environ, PYTHONPATH=REPO, **{tiers.TIMES_ENV: str(times)})
    for _run in range(2):
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
    seconds = tiers.read_times(str(times))
    assert sorted(seconds) == sorted(tier for tier, _seconds in TREE.values())
    for tier, slept in TREE.values():
        # Two runs of a test that sleeps `slept`: at least twice that, and no more than
        # twice that plus pytest's own overhead per test.
        assert 2 * slept <= seconds[tier] < 2 * slept + 1.0, (tier, seconds)


def test_the_repositorys_own_pytest_runs_are_timed(tmp_path: Any) -> None:
    """tests/conftest.py hands every session to the timer: `make pytest-needs` and the
    other pytest targets are timed without being told."""
    times = tmp_path / "times.json"
    env = dict(os.environ, **{tiers.TIMES_ENV: str(times)})
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/unit/test_tiers.py::test_the_report_splits_a_target_into_its_test_tiers"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(tiers.read_times(str(times))) == ["unit"]
