"""Install the upstream cloud-init releases of tests/fixtures/cloud-init/ the way their
distributions' packages are built, each into a throwaway root under .cache/cloud-init/.

Run by tests/setup-cloud-init.sh (``make system``) with the venv's Python; nothing is
installed into the venv or the system, and no cloud-init command is run.

For each version:

1. the tarball is checked against tests/fixtures/cloud-init/SHA256SUMS, then unpacked
   into a scratch build directory;
2. the requirements its own requirements.txt declares (23.4 asks for
   ``jsonschema<=4.20.0``, say) are installed from PyPI with pip into ``<version>/deps``,
   wheels only: a user need not have a compiler (``netifaces``, which only the VMware
   datasource imports and which has no wheel, is left out);
3. the tree is installed into ``<version>/root`` by its own build system, as the
   distributions that ship it do:

   - 23.4 (RHEL 9) and 24.4 (RHEL 10): RHEL's spec runs ``setup.py install --root=...
     --init-system=systemd`` (``%py3_install``) on a RHEL build host; setup.py reads the
     host's ``/etc/redhat-release`` to choose ``/usr/libexec`` over ``/usr/lib``, so that
     one file is shown to it as present, and ``--distro=rhel`` renders the templates (the
     systemd generator among them) for RHEL;
   - 26.2 (Ubuntu, newest): there is no setup.py any more; ``meson setup`` +
     ``meson install --destdir``. Its generator, rendered for a Debian-family variant,
     looks for ds-identify in ``/usr/lib/cloud-init``, so ``--libexecdir=lib`` as a
     Debian-family package must; Python code into ``/usr/lib/python3/dist-packages``.

   Both ask pkg-config for systemd's and udev's directories: a build root's answer
   (``/usr/lib/systemd/system``, ...) comes from .pc files written here, not the host.

``<version>/layout.json`` says where things landed (testbed/cloud_init_trees.py reads it).
Cached by a key over the tarball's digest, the requirement set, the build tools, this
file and the Python version: a warm run checks the key and prints nothing.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from typing import Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "cloud-init")
CACHE = os.path.join(REPO, ".cache", "cloud-init")
BUILD_REQUIREMENTS = os.path.join(REPO, "requirements", "cloud-init-build.txt")
TOOLS = os.path.join(CACHE, "build-tools")

# version directory -> (tarball, how its distributions build it)
RELEASES = {
    "23.4": ("cloud-init-23.4.4.tar.gz", "setup.py-rhel"),
    "24.4": ("cloud-init-24.4.1.tar.gz", "setup.py-rhel"),
    "26.2": ("cloud-init-26.2.tar.gz", "meson-debian"),
}
# Only DataSourceVMware imports it, and it has no wheel for Python 3.11.
LEFT_OUT = {"netifaces"}

PC_FILES = {
    "systemd.pc": (
        "prefix=/usr\n"
        "systemdsystemunitdir=/usr/lib/systemd/system\n"
        "systemdsystemconfdir=/etc/systemd/system\n"
        "systemdsystemgeneratordir=/usr/lib/systemd/system-generators\n"
        "Name: systemd\nDescription: systemd (a build root's)\nVersion: 252\n"
    ),
    "udev.pc": "udevdir=/usr/lib/udev\nName: udev\nDescription: udev\nVersion: 252\n",
}

# Run in place of setup.py: a RHEL build host has /etc/redhat-release (setup.py's only
# test for the /usr/libexec layout); nothing else about the host is changed.
RHEL_SETUP = """
import os.path, runpy, sys
_isfile = os.path.isfile
os.path.isfile = lambda p: p == "/etc/redhat-release" or _isfile(p)
sys.argv[0] = "setup.py"
runpy.run_path("setup.py", run_name="__main__")
"""


def log(message: str) -> None:
    print(f"setup-cloud-init-upstream: {message}", file=sys.stderr, flush=True)


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def expected_sums() -> Dict[str, str]:
    sums = {}
    with open(os.path.join(FIXTURES, "SHA256SUMS")) as handle:
        for line in handle:
            if line.strip():
                digest, name = line.split()
                sums[name.lstrip("*")] = digest
    return sums


def checked_tarball(name: str) -> str:
    """The tarball's path once its digest matches SHA256SUMS; else one clear failure."""
    path = os.path.join(FIXTURES, name)
    want = expected_sums().get(name)
    if want is None:
        raise SystemExit(f"{name} is not listed in {FIXTURES}/SHA256SUMS: add its sum there")
    got = sha256(path)
    if got != want:
        raise SystemExit(
            f"{path} has SHA-256 {got}, not {want} as SHA256SUMS says: the fixture is "
            "damaged or was replaced; restore it with `git checkout -- tests/fixtures`"
        )
    return path


def requirements(tarball: str) -> List[str]:
    """The requirement lines of the release's own requirements.txt, minus LEFT_OUT."""
    found = []
    with tarfile.open(tarball) as archive:
        top = archive.next()
        assert top is not None
        member = archive.extractfile(top.name.split("/")[0] + "/requirements.txt")
        assert member is not None
        text = member.read().decode()
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name = line.split(";")[0]
        for mark in "<>=!~[ ":
            name = name.split(mark)[0]
        if name.lower() not in LEFT_OUT:
            found.append(line)
    return found


def pip_install(target: str, args: List[str]) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-compile", "--only-binary", ":all:", "--target", target, *args],
        check=True,
        stdout=sys.stderr,
    )  # fmt: skip


def build_tools() -> str:
    """setuptools, meson, ninja and pkgconf (requirements/cloud-init-build.txt), cached."""
    key = sha256(BUILD_REQUIREMENTS) + sys.version.split()[0]
    stamp = os.path.join(TOOLS, ".key")
    if os.path.exists(stamp):
        with open(stamp) as handle:
            if handle.read() == key:
                return TOOLS
    log("installing the build tools (requirements/cloud-init-build.txt)")
    shutil.rmtree(TOOLS, ignore_errors=True)
    pip_install(TOOLS, ["-r", BUILD_REQUIREMENTS])
    pc = os.path.join(TOOLS, "pkgconfig")
    os.makedirs(pc)
    for name, text in PC_FILES.items():
        with open(os.path.join(pc, name), "w") as handle:
            handle.write(text)
    with open(stamp, "w") as handle:
        handle.write(key)
    return TOOLS


def unpack(tarball: str, into: str) -> str:
    with tarfile.open(tarball) as archive:
        members = archive.getmembers()
        for member in members:
            if member.name.startswith("/") or ".." in member.name.split("/"):
                raise SystemExit(f"{tarball}: unsafe member {member.name!r}")
        if hasattr(tarfile, "data_filter"):
            archive.extractall(into, filter="data")
        else:  # a Python without the filter: the names were checked above
            archive.extractall(into)
    tops = {m.name.split("/")[0] for m in members}
    assert len(tops) == 1, tops
    return os.path.join(into, tops.pop())


def build_env(tools: str, deps: str) -> Dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.path.join(tools, "bin") + os.pathsep + env.get("PATH", "/usr/bin:/bin")
    # cloud-init's templates are rendered with its own code: it needs its requirements.
    env["PYTHONPATH"] = os.pathsep.join([tools, deps])
    env["PKG_CONFIG"] = os.path.join(tools, "bin", "pkgconf")
    env["PKG_CONFIG_PATH"] = env["PKG_CONFIG_LIBDIR"] = os.path.join(tools, "pkgconfig")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def install_tree(method: str, tree: str, root: str, env: Dict[str, str], scratch: str) -> None:
    def run(argv: List[str]) -> None:
        out = subprocess.run(
            argv, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, timeout=600, check=False,
        )  # fmt: skip
        if out.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed in {tree}:\n{out.stdout[-4000:]}")

    if method == "setup.py-rhel":
        run([sys.executable, "-c", RHEL_SETUP, "install", f"--root={root}", "--prefix=/usr",
             "--init-system=systemd", "--distro=rhel"])  # fmt: skip
    elif method == "meson-debian":
        build = os.path.join(scratch, "build")
        run([sys.executable, "-m", "mesonbuild.mesonmain", "setup", build, "--prefix=/usr",
             "--libexecdir=lib", "-Dpython.purelibdir=lib/python3/dist-packages",
             "-Dinit_system=systemd", "-Dbash_completion=false"])  # fmt: skip
        run([sys.executable, "-m", "mesonbuild.mesonmain", "install", "-C", build,
             "--destdir", root, "--quiet"])  # fmt: skip
    else:
        raise AssertionError(method)


def layout(root: str) -> Dict[str, str]:
    """Where the install put cloudinit, its generator and the ds-identify it runs."""
    python = [
        os.path.relpath(d, root)
        for d, dirs, _files in os.walk(os.path.join(root, "usr", "lib"))
        if "cloudinit" in dirs and os.path.isfile(os.path.join(d, "cloudinit", "version.py"))
    ]
    assert len(python) == 1, python
    generator = "usr/lib/systemd/system-generators/cloud-init-generator"
    with open(os.path.join(root, generator)) as handle:
        lines = [line.strip() for line in handle if line.strip().startswith("dsidentify=")]
    assert len(lines) == 1, lines  # rendered: one branch of the template's choice is left
    ds_identify = lines[0].split("=", 1)[1].strip("\"'").lstrip("/")
    assert os.path.isfile(os.path.join(root, ds_identify)), ds_identify
    return {"python": python[0], "generator": generator, "ds_identify": ds_identify}


def setup(version: str) -> None:
    name, method = RELEASES[version]
    tarball = checked_tarball(name)
    dest = os.path.join(CACHE, version)
    reqs = requirements(tarball)
    inputs = [sha256(tarball), method, sorted(reqs), sha256(BUILD_REQUIREMENTS)]
    inputs += [sha256(os.path.abspath(__file__)), sys.version.split()[0]]
    key = hashlib.sha256(json.dumps(inputs).encode()).hexdigest()
    stamp = os.path.join(dest, "layout.json")
    if os.path.exists(stamp):
        with open(stamp) as handle:
            if json.load(handle).get("key") == key:
                return
    with tempfile.TemporaryDirectory(prefix="ci-upstream-") as scratch:
        tree = unpack(tarball, scratch)
        log(f"installing cloud-init {name[len('cloud-init-') : -len('.tar.gz')]} ({method})")
        tools = build_tools()
        work = dest + ".new"
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        deps = os.path.join(work, "deps")
        pip_install(deps, reqs)
        root = os.path.join(work, "root")
        install_tree(method, tree, root, build_env(tools, deps), scratch)
        record: Dict[str, object] = dict(layout(root))
        record.update(key=key, release=name, method=method, requirements=reqs)
        with open(os.path.join(work, "layout.json"), "w") as handle:
            json.dump(record, handle, indent=1)
        shutil.rmtree(dest, ignore_errors=True)
        os.rename(work, dest)


def main(argv: List[str]) -> int:
    for version in argv or sorted(RELEASES):
        if version not in RELEASES:
            raise SystemExit(f"no upstream release {version!r}; known: {', '.join(RELEASES)}")
        setup(version)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
