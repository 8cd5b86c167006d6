"""The README's two commands on a machine that has exactly what the README asks for.

A Debian bookworm minbase root with python3, python3-venv, make, git and debootstrap, and
nothing else (``tests/e2e/build.py pristine``, cached by a key over its inputs; the test
checks that the README names exactly these), is copied afresh for
each run and entered with namespaces (``chroot`` inside ``unshare --mount --pid``): no
container engine is needed, and the root sees this machine's kernel, /dev and network as
a user's machine would see its own. Carried in, as a user's machine has its own: the
package registries' set-up (apt's sources, configuration and keys; pip's configuration
and the local indexes it names; the CA certificates and the environment variables that
point at them). Nothing else of this machine is visible inside.

Inside, the repository is cloned where a user clones things, a home directory, into a
path with a space, and the README's first command runs there; its result lines are
checked. Then the set-up part of the README's test command (``make venv system``) runs in
the same root.
"""

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from tests.integration.demo_result import assert_demo_result

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "tests" / "e2e" / "build.py"
README = REPO / "README.md"
# A home directory and a space: the demo must run from wherever it is cloned.
CLONE = "/root/xenchannel demo"
# The registry set-up of this machine that a user's machine has in its own form.
REGISTRY_FILES = (
    "/etc/apt/sources.list",
    "/etc/apt/sources.list.d",
    "/etc/apt/apt.conf.d",
    "/etc/apt/preferences.d",
    "/etc/apt/trusted.gpg.d",
    "/etc/apt/keyrings",
    "/etc/pip.conf",
    "/etc/xdg/pip",
    "/root/.config/pip",
    "/root/.pip",
    "/etc/ssl/certs/ca-certificates.crt",
    "/usr/local/share/ca-certificates",
    # How this machine reaches them. A copy, not a bind: the demo's sandboxes overlay /etc,
    # and an overlay does not see what is mounted inside its lower directory.
    "/etc/resolv.conf",
)
REGISTRY_ENV = re.compile(
    r"^(PIP_.*|.*_CA_.*|.*CA_BUNDLE|.*CAINFO|SSL_CERT_.*|(?i:https?_proxy|no_proxy))$"
)
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}


def readme_commands() -> List[str]:
    """The shell blocks of the README, in order: the first is the demo, the second the tests."""
    return re.findall(r"^```sh\n(.*?)\n```$", README.read_text(), flags=re.M | re.S)


def readme_packages() -> List[str]:
    """The Debian packages the README's "Try it" section asks for, in backticks."""
    section = README.read_text().split("## Try it", 1)[1].split("```sh", 1)[0]
    sentence = section.split("the Debian packages", 1)[1].split(", in the directory", 1)[0]
    return re.findall(r"`([a-z0-9][a-z0-9.+-]*)`", sentence)


def test_the_pristine_root_has_what_the_readme_lists() -> None:
    # tests/e2e/build.py, which builds the pristine root (a script, not a package).
    spec = importlib.util.spec_from_file_location("xenchannel_e2e_build", BUILD)
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    assert readme_packages() == build.PRISTINE_PACKAGES, (
        "the README's prerequisites and the pristine root's packages differ; keep them one list"
    )


def pristine_root() -> Path:
    proc = subprocess.run(
        [sys.executable, str(BUILD), "pristine"],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return REPO / ".cache" / "e2e" / "pristine" / "root"


def registry_env() -> Dict[str, str]:
    return {k: v for k, v in os.environ.items() if REGISTRY_ENV.match(k)}


def local_indexes(root: Path) -> List[str]:
    """Directories on this machine that the carried pip set-up names (find-links, file://
    indexes): bound read-only, since they are part of this machine's registries."""
    text = " ".join(registry_env().values())
    for conf in ("etc/pip.conf", "etc/xdg/pip/pip.conf", "root/.config/pip/pip.conf",
                 "root/.pip/pip.conf"):  # fmt: skip
        if (root / conf).is_file():
            text += " " + (root / conf).read_text()
    found = []
    for token in re.findall(r"(?:file://)?(/[^\s'\"]+)", text):
        path = os.path.normpath(token)
        # An index's directory, not a file in it: its top two levels (/opt/pypi).
        top = "/".join(path.split("/")[:3])
        if os.path.isdir(top) and top not in found and not top.startswith(("/etc", "/root")):
            found.append(top)
    return found


def carry_registry_setup(root: Path) -> None:
    """This machine's registry set-up replaces the root's own (debootstrap's sources.list)."""
    for path in REGISTRY_FILES:
        if not os.path.lexists(path):
            if path == "/etc/apt/sources.list":
                (root / path.lstrip("/")).unlink(missing_ok=True)
            continue
        dest = root / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if os.path.isdir(path):
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(path, dest, symlinks=False)
        else:
            shutil.copy2(path, dest)


def working_tree_patch() -> str:
    """Uncommitted changes to tracked files, applied to the clone so a developer tests
    what they see; empty on CI's fresh clone."""
    return subprocess.run(
        ["git", "-C", str(REPO), "diff", "HEAD", "--binary"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


def in_root(root: Path, script: str, timeout: float, binds: List[Tuple[str, str]]) -> str:
    """Run script with sh inside root: own mount and pid namespaces, this machine's
    network (for the registries), fresh /proc, /sys and /run."""
    mounts = [
        # A mount point, as a machine's / is: unshare --propagation inside needs one.
        f"mount --bind {shlex.quote(str(root))} {shlex.quote(str(root))}",
        f"mount -t proc proc {shlex.quote(f'{root}/proc')}",
        f"mount -t sysfs sysfs {shlex.quote(f'{root}/sys')}",
        f"mount --rbind /dev {shlex.quote(f'{root}/dev')}",
        f"mount -t tmpfs -o mode=0755 tmpfs {shlex.quote(f'{root}/run')}",
    ]
    for src, dst in binds:
        target = shlex.quote(f"{root}{dst}")
        mounts.append(f"mkdir -p {target} && mount --bind -o ro {shlex.quote(src)} {target}")
    outer = " && ".join(mounts) + f' && exec chroot {shlex.quote(str(root))} /bin/sh -ec "$0"'
    env = dict(BASE_ENV, **registry_env())
    proc = subprocess.run(
        ["unshare", "--mount", "--pid", "--fork", "--propagation", "private", "--kill-child",
         "sh", "-ec", outer, script],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"rc {proc.returncode}:\n{proc.stdout[-12000:]}"
    return proc.stdout


@pytest.mark.timeout(3600)
def test_readme_commands_on_a_pristine_machine(tmp_path: Path) -> None:
    demo_command, test_command = readme_commands()[:2]
    assert demo_command == "make demo" and test_command == "make test", (
        "the README's first two shell blocks are the demo and the test command; "
        "update this test with them"
    )
    root = tmp_path / "root"
    subprocess.run(["cp", "-a", str(pristine_root()), str(root)], check=True, timeout=600)
    carry_registry_setup(root)
    # The pristine root has no CA bundle of its own: the carried one is the machine's.
    assert (root / "etc/ssl/certs/ca-certificates.crt").is_file()
    (root / "src").mkdir()
    binds = [(str(REPO), "/src")] + [(d, d) for d in local_indexes(root)]
    patch = working_tree_patch()
    (root / "tmp" / "working-tree.patch").write_text(patch)
    clone = shlex.quote(CLONE)
    demo = in_root(
        root,
        # This machine has no udev: the guest role must bring it (command -v fails).
        "! command -v udevadm\n"
        f"git clone --quiet /src {clone}\n"
        f"cd {clone}\n"
        "test ! -s /tmp/working-tree.patch || git apply --binary /tmp/working-tree.patch\n"
        f"{demo_command}\n",
        timeout=2400,
        binds=binds,
    )
    assert_demo_result(demo)
    # The set-up half of the README's test command: what it installs before testing.
    in_root(
        root,
        f"cd {clone}\nmake venv system\ncommand -v shellcheck debootstrap udevadm\n",
        timeout=1200,
        binds=binds,
    )
