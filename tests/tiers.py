"""Run ``make test``'s tiers one after another and print each one's time and outcome.

    python3 tests/tiers.py venv system lint typecheck pytest ansible-test e2e

Each tier is ``make <tier>`` in its own process, so a tier runs exactly as it does on its
own (``make e2e`` and friends). A failed test tier does not stop the later ones: CI then
shows every failure of the run, not only the first; a failed set-up tier (venv, system)
does, since every later tier needs it. The exit code is non-zero if any tier failed. The
tiers are told that the set-up has run (SETUP_DONE=1), so that they do not repeat it.
Standard library only: it runs before the venv exists.
"""

import subprocess
import sys
import time

# Every later tier needs these; after one fails, running the rest only repeats its error.
SETUP = ("venv", "system")


def run(tiers):
    results = []
    for tier in tiers:
        print(f"==> make {tier}", flush=True)
        start = time.monotonic()
        rc = subprocess.call(["make", "--no-print-directory", tier, "SETUP_DONE=1"])
        results.append((tier, rc, time.monotonic() - start))
        print(f"<== make {tier}: {'ok' if rc == 0 else f'failed (exit {rc})'}", flush=True)
        if rc != 0 and tier in SETUP:
            break
    return results


def report(results):
    total = sum(seconds for _tier, _rc, seconds in results)
    print("\n==================== time per tier ====================")
    for tier, rc, seconds in results:
        outcome = "ok" if rc == 0 else f"FAILED (exit {rc})"
        print(f"  {tier:<14} {seconds / 60:6.1f} min  {outcome}")
    print(f"  {'all tiers':<14} {total / 60:6.1f} min")


def main(argv):
    results = run(argv)
    report(results)
    return 0 if all(rc == 0 for _tier, rc, _seconds in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
