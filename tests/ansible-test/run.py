# Copyright (c) xenchannel contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Run ansible-test's quality gates on this collection: sanity, units, integration.

    .venv/bin/python tests/ansible-test/run.py [sanity|units|integration ...]

With no step named, all three run. The exit status is 0 only if every step passed; a
summary at the end names each step, its time and, for a failed one, the command to rerun
it, the lines that say what failed and the last lines it printed.

What this arranges first, all under .cache/ansible-test/ (idempotent, fast when done):

* ansible-test wants the collection at .../ansible_collections/xenchannel/provision and
  refuses a symlink to the repository, so the git-tracked and untracked-but-not-ignored
  files are copied there; files that no longer exist are removed from the copy, and its
  tests/output (ansible-test's results and its delegation virtual environments) is kept.
* HOME points at a private directory, so ansible-test's caches and the virtual
  environments it builds for sanity tests stay out of the user's home and are reused.
* ansible-test downloads get-pip from a host that cannot be reached; a stand-in
  (get_pip.py here) and a pip wheel from PyPI are put where it looks first.
* ansible-test passes only PATH and HOME through, so pyenv's shims cannot choose a
  version; a directory of python3.X symlinks to pyenv's interpreters goes first on PATH.
"""

import argparse
import contextlib
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
VENV_BIN = os.path.dirname(sys.executable)
ANSIBLE_TEST = os.path.join(VENV_BIN, "ansible-test")
CACHE = os.path.join(ROOT, ".cache", "ansible-test")
HOME = os.path.join(CACHE, "home")
PYTHON_LINKS = os.path.join(CACHE, "bin")
COPY = os.path.join(CACHE, "collections", "ansible_collections", "xenchannel", "provision")
# ansible-test's results and delegation venvs; kept between runs so reruns are fast.
KEEP = ("tests/output",)

# Every pyenv Python from 3.8 up. 3.8 is ansible-core 2.19's oldest module Python.
PYTHONS = ("3.8", "3.9", "3.10", "3.11", "3.12", "3.13")
# Controller-side tests (pylint, validate-modules, ansible-doc, yamllint...) run on the
# Python running ansible-test, and their results do not depend on the target Python.
# Only the tests that parse or import code on each target Python differ per version, so
# those run once per Python and everything else once: six full sanity runs would spend
# most of their time repeating pylint for nothing.
PER_PYTHON_TESTS = ("compile", "import")
CONTROLLER_PYTHON = "{}.{}".format(*sys.version_info)
# The modules' unit tests run under plain pytest on the controller's Python already (the
# fast tier); here they run where a module's Python can differ from it: the oldest and the
# newest Python a managed host may have. compile and import above cover every version in
# between, and a unit run per version cost a minute more for no finding of its own.
UNIT_PYTHONS = (PYTHONS[0], PYTHONS[-1])

TAIL_LINES = 40
SUMMARY_TAIL = 12
MAX_ERRORS = 80
# How ansible-test, pytest and ansible-playbook start the lines that say what failed.
FINDINGS = ("ERROR", "FATAL:", "FAILED ", "fatal:", "failed:", "[ERROR]", "Origin:")
STEPS = ("sanity", "units", "integration")


class SetupError(Exception):
    """A prerequisite is missing; the message names it and the fix."""


def log(message):
    print("ansible-test gate: " + message, file=sys.stderr, flush=True)


# --- preparation -------------------------------------------------------------------


def collection_files():
    """The repository's files as git sees them: tracked, plus untracked but not ignored."""
    if shutil.which("git") is None:
        raise SetupError("git is not on the PATH; install git (apt-get install git)")
    proc = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=False,
        timeout=60,
    )
    if proc.returncode != 0:
        raise SetupError(
            "git ls-files failed in {}: {}; run from a git checkout of the collection".format(
                ROOT, proc.stderr.decode(errors="replace").strip()
            )
        )
    names = [name for name in proc.stdout.decode().split("\0") if name]
    # A tracked file deleted in the working tree is still listed; the copy must lack it.
    return sorted(name for name in names if os.path.lexists(os.path.join(ROOT, name)))


def _kept(relative):
    return any(relative == keep or relative.startswith(keep + "/") for keep in KEEP)


def sync_copy():
    """Make COPY hold exactly the collection's files; returns how many were (re)copied."""
    wanted = set(collection_files())
    copied = 0
    for relative in sorted(wanted):
        source = os.path.join(ROOT, relative)
        target = os.path.join(COPY, relative)
        if os.path.isdir(source) and not os.path.islink(source):
            continue  # a nested git repository; git lists it as a directory
        src_stat = os.lstat(source)
        try:
            dst_stat = os.lstat(target)
        except FileNotFoundError:
            dst_stat = None
        if (
            dst_stat is not None
            and not os.path.islink(source)
            and not os.path.islink(target)
            and dst_stat.st_size == src_stat.st_size
            and int(dst_stat.st_mtime) == int(src_stat.st_mtime)
            and dst_stat.st_mode == src_stat.st_mode
        ):
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if dst_stat is not None:
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            else:
                os.unlink(target)
        if os.path.islink(source):
            os.symlink(os.readlink(source), target)
        else:
            shutil.copy2(source, target)
        copied += 1
    for directory, dirs, files in os.walk(COPY, topdown=True):
        relative_dir = os.path.relpath(directory, COPY)
        relative_dir = "" if relative_dir == "." else relative_dir + "/"
        dirs[:] = [d for d in dirs if not _kept(relative_dir + d)]
        for name in files + [d for d in dirs if os.path.islink(os.path.join(directory, d))]:
            if relative_dir + name not in wanted:
                os.unlink(os.path.join(directory, name))
    # Directories left empty by removed files would still be seen by ansible-test.
    for directory, _dirs, _files in os.walk(COPY, topdown=False):
        kept = directory == COPY or _kept(os.path.relpath(directory, COPY))
        if not kept and not os.listdir(directory):
            os.rmdir(directory)
    return copied


def pip_version():
    """The pip version ansible-test bootstraps into its virtual environments."""
    import ansible_test  # noqa: PLC0415 - only to find its source

    path = os.path.join(
        os.path.dirname(ansible_test.__file__), "_internal", "python_requirements.py"
    )
    with open(path) as handle:
        found = re.search(r"pip='([0-9.]+)'", handle.read())
    if not found:
        raise SetupError(
            f"cannot find the pip version ansible-test bootstraps in {path}; update "
            "tests/ansible-test/run.py for this ansible-core"
        )
    return found.group(1)


def install_get_pip():
    """Put the get-pip stand-in and a pip wheel where ansible-test looks for get-pip."""
    version = pip_version()
    cache = os.path.join(HOME, ".ansible", "test", "cache")
    os.makedirs(cache, exist_ok=True)
    wheel = os.path.join(cache, f"pip-{version}-py3-none-any.whl")
    if not os.path.exists(wheel):
        log(f"downloading pip {version} from PyPI")
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--only-binary=:all:",
                "--dest",
                cache,
                f"pip=={version}",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if proc.returncode != 0 or not os.path.exists(wheel):
            raise SetupError(
                f"cannot download pip {version} from PyPI ({proc.stderr.strip()[-300:]}); "
                "check that pypi.org is reachable"
            )
    stand_in = os.path.join(cache, "get_pip_{}.py".format(version.replace(".", "_")))
    with open(os.path.join(HERE, "get_pip.py")) as handle:
        text = handle.read()
    try:
        with open(stand_in) as handle:
            current = handle.read()
    except FileNotFoundError:
        current = None
    if current != text:
        with open(stand_in, "w") as handle:
            handle.write(text)


def pyenv_root():
    root = os.environ.get("PYENV_ROOT")
    if root:
        return root
    if shutil.which("pyenv"):
        proc = subprocess.run(
            ["pyenv", "root"], capture_output=True, text=True, check=False, timeout=30
        )
        if proc.returncode == 0 and proc.stdout.strip():
            return proc.stdout.strip()
    return os.path.expanduser("~/.pyenv")


def link_pythons(versions):
    """PYTHON_LINKS/python3.X -> pyenv's interpreter, for every version in ``versions``."""
    root = pyenv_root()
    os.makedirs(PYTHON_LINKS, exist_ok=True)
    missing = []
    for version in versions:
        found = sorted(
            glob.glob(os.path.join(root, "versions", version + ".*", "bin", "python" + version))
        )
        if not found:
            missing.append(version)
            continue
        link = os.path.join(PYTHON_LINKS, "python" + version)
        if os.path.islink(link) and os.readlink(link) == found[-1]:
            continue
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(found[-1], link)
    if missing:
        raise SetupError(
            "pyenv (root {}) has no Python {}; install it with `pyenv install {}`".format(
                root, ", ".join(missing), " ".join(v + ":latest" for v in missing)
            )
        )


def environment():
    env = {
        "HOME": HOME,
        # The python3.X links first, then the venv's bin for ansible-test's own tools.
        "PATH": os.pathsep.join([PYTHON_LINKS, VENV_BIN, "/usr/local/bin", "/usr/bin", "/bin"]),
        "LC_ALL": "C.UTF-8",
        # The copy lives inside this repository's (ignored) .cache; without this,
        # ansible-test walks up to the repository's .git and asks git for the files,
        # which ignores the whole copy.
        "ANSIBLE_TEST_CONTENT_ROOT": COPY,
    }
    return env


def prepare(versions):
    started = time.monotonic()
    link_pythons(versions)
    install_get_pip()
    copied = sync_copy()
    log(
        f"collection copy at {COPY} ({copied} files updated), "
        f"prepared in {time.monotonic() - started:.1f} s"
    )


# --- the steps ---------------------------------------------------------------------


class Step:
    def __init__(self, name, argv, rerun, around=None):
        self.name = name
        self.argv = argv
        self.rerun = rerun
        self.around = around or contextlib.nullcontext
        self.returncode = None
        self.seconds = 0.0
        self.tail = []
        self.errors = []

    def run(self, env, timeout):
        log("{}: {}".format(self.name, " ".join(self.argv)))
        started = time.monotonic()
        lines = []
        proc = subprocess.Popen(
            self.argv,
            cwd=COPY,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            # Its own process group, so the watchdog stops pytest, ansible-playbook and
            # the modules they started too, not only ansible-test.
            start_new_session=True,
        )
        timed_out = threading.Event()

        def stop():
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        # A silent, hung child would block the read loop forever; the timer does not.
        watchdog = threading.Timer(timeout, stop)
        watchdog.start()
        try:
            for line in proc.stdout:
                sys.stdout.write(line)
                lines.append(line.rstrip("\n"))
                del lines[:-TAIL_LINES]
                # The findings; pip's chatter would bury them in a plain tail.
                if line.startswith(FINDINGS) and len(self.errors) < MAX_ERRORS:
                    self.errors.append(line.rstrip("\n"))
            proc.wait()
        finally:
            watchdog.cancel()
        self.returncode = proc.returncode
        if timed_out.is_set():
            lines.append(f"(stopped: took more than {timeout:.0f} s; raise --timeout)")
            self.returncode = self.returncode or -1
        self.seconds = time.monotonic() - started
        self.tail = lines
        return self.returncode == 0


def ansible_test(command, version, *extra):
    return [ANSIBLE_TEST, command, *extra, "--color", "no", "--python", version]


def sanity_steps(versions):
    steps = [
        Step(
            f"sanity (all tests once, Python {CONTROLLER_PYTHON})",
            ansible_test("sanity", CONTROLLER_PYTHON, "--local"),
            f"sanity --python {CONTROLLER_PYTHON}",
        )
    ]
    per_python = [arg for test in PER_PYTHON_TESTS for arg in ("--test", test)]
    for version in versions:
        if version == CONTROLLER_PYTHON:
            continue  # the full run above covered it
        steps.append(
            Step(
                f"sanity {'+'.join(PER_PYTHON_TESTS)} (Python {version})",
                ansible_test("sanity", version, "--local", *per_python),
                f"sanity --python {version}",
            )
        )
    return steps


def units_steps(versions):
    # --venv, not --local: each Python needs pytest and tests/unit/requirements.txt,
    # which ansible-test installs from PyPI into a virtual environment it keeps in the
    # copy's tests/output. Only tests/unit/plugins/ is Ansible code; the rest of
    # tests/unit tests the runtime and runs under plain pytest (make check).
    return [
        Step(
            f"units (Python {version})",
            [*ansible_test("units", version, "--venv"), "tests/unit/plugins/"],
            f"units --python {version}",
            around=oracle_link,
        )
        for version in versions
    ]


@contextlib.contextmanager
def oracle_link():
    """Xen's parser, fetched into the repository's .cache, seen from the copy.

    The unit tests read xl configs back with libxlutil from <root>/.cache/xen-utils
    (tests/oracle/libxlutil.py). The link exists only while units run: sanity would
    report it as a symlink leaving the collection, and sync_copy removes it anyway.
    """
    source = os.path.join(ROOT, ".cache", "xen-utils")
    link = os.path.join(COPY, ".cache", "xen-utils")
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(source, link)
    try:
        yield
    finally:
        os.unlink(link)
        os.rmdir(os.path.dirname(link))


def integration_steps():
    # Every directory under tests/integration/targets/ is a target; ansible-test finds
    # them, so a new module's target needs no change here. The targets run on this
    # machine with the controller's Python, which is also the modules' Python.
    return [
        Step(
            f"integration (Python {CONTROLLER_PYTHON})",
            ansible_test("integration", CONTROLLER_PYTHON, "--local"),
            "integration",
        )
    ]


def summary(steps):
    print("\n==== ansible-test gate summary ====", flush=True)
    for step in steps:
        state = "ok" if step.returncode == 0 else "FAILED"
        print(f"{state:7} {step.seconds:7.1f} s  {step.name}")
    failed = [step for step in steps if step.returncode != 0]
    for step in failed:
        print(
            f"\n---- {step.name} FAILED (rc {step.returncode}); rerun it with "
            f"`{os.path.relpath(sys.executable, ROOT)} tests/ansible-test/run.py {step.rerun}`"
        )
        print("\n".join(step.errors))
        print("  last lines:")
        print("\n".join("  " + line for line in step.tail[-SUMMARY_TAIL:]))
    print(flush=True)
    return not failed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "steps", nargs="*", metavar="step", help="sanity, units or integration (default: all)"
    )
    parser.add_argument(
        "--python",
        action="append",
        choices=PYTHONS,
        help="only this Python (repeatable; default: {})".format(" ".join(PYTHONS)),
    )
    parser.add_argument(
        "--timeout", type=float, default=1800, help="seconds one step may take (default 1800)"
    )
    options = parser.parse_args(argv)
    wanted = options.steps or list(STEPS)
    unknown = sorted(set(wanted) - set(STEPS))
    if unknown:
        parser.error("unknown step {}; name one of {}".format(", ".join(unknown), ", ".join(STEPS)))
    versions = tuple(options.python or PYTHONS)
    try:
        prepare(sorted(set(versions) | {CONTROLLER_PYTHON}))
    except SetupError as exc:
        log(str(exc))
        return 2
    steps = []
    if "sanity" in wanted:
        steps += sanity_steps(versions)
    if "units" in wanted:
        steps += units_steps(tuple(options.python or UNIT_PYTHONS))
    if "integration" in wanted:
        steps += integration_steps()
    env = environment()
    for step in steps:
        with step.around():
            step.run(env, options.timeout)
    return 0 if summary(steps) else 1


if __name__ == "__main__":
    sys.exit(main())
