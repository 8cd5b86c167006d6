"""Debian roots built with debootstrap, cached by a key over their inputs: one builder.

The real-Xen tier (``tests/e2e/build.py``), the pristine-machine test and the demo build
the machines they run on with this, rather than from whatever the host has installed::

    builder = Builder(".cache/demo", "demo")

    @builder.step("guestroot", params=("bookworm", PACKAGES), helpers=[Builder.debootstrap])
    def build_guestroot(out, deps):
        builder.debootstrap(os.path.join(out, "root"), PACKAGES, "guestroot", "bookworm")

    outs = builder.build(["guestroot"])       # {"guestroot": ".cache/demo/guestroot"}

Each step's output lives in ``<cache>/<step>/`` beside a ``<step>.key`` stamp. The key is
a hash of the step's own syntax tree and the helpers it names, its parameters, the files
it reads and the keys of the steps it builds on, so a rerun with unchanged inputs costs
only the hashing, and a change rebuilds that step and everything after it. A step is
built in ``<step>.tmp`` and renamed into place, so an interrupted build never leaves a
half-made output that looks finished. Downloaded .debs are kept in ``<cache>/debs``.

Every chroot runs in a private mount namespace, so nothing stays mounted on the host, even
when a build is killed. Needs root, debootstrap and util-linux's unshare.
"""

import ast
import contextlib
import fcntl
import hashlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Set, Tuple

from testbed import ansible_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIRROR = os.environ.get("XENCHANNEL_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# bookworm's debian-archive-keyring carries trixie's keys as well.
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# The chroot connection is community.general's; it comes from the `ansible` bundle on
# PyPI into <cache>/collections and never into .venv: the roles themselves may use only
# ansible.builtin and this collection, and a venv holding all of `ansible` would hide one
# that strays.
ANSIBLE_BUNDLE = "ansible==12.3.0"
# Trees whose content a root the collection provisioned depends on.
COLLECTION_INPUTS = ("roles", "runtime", "datasource", "plugins", "playbooks", "meta", "galaxy.yml")
LOCK_WAIT = 1800.0


class BuildError(Exception):
    """A build step could not finish; the message names the step and the fix."""


def run(argv: Sequence[str], what: str, timeout: float = 1800, **kw) -> str:
    """Run argv; on failure raise BuildError naming what was attempted, with output's tail."""
    try:
        proc = subprocess.run(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
            **kw,
        )
    except subprocess.TimeoutExpired as exc:
        raise BuildError(
            f"{what} took longer than {timeout:.0f} s; rerun, or look at the mirror"
        ) from exc
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-25:])
        raise BuildError(f"{what} failed (rc {proc.returncode}):\n{tail}")
    return proc.stdout


def tree_hash(paths: Sequence[str]) -> str:
    """A hash of the names and contents of the files under ``paths`` (repository-relative)."""
    h = hashlib.sha256()
    for top in paths:
        full = os.path.join(REPO, top)
        walk = [(full, [], [""])] if os.path.isfile(full) else os.walk(full)
        for dirpath, dirnames, filenames in walk:
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(filenames):
                path = os.path.join(dirpath, name) if name else dirpath
                if path.endswith(".pyc"):
                    continue
                h.update(os.path.relpath(path, REPO).encode() + b"\0")
                with open(path, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()


def source_hash(fn: Callable) -> str:
    """The hash of what fn does: its syntax tree, so reformatting or a comment does not
    rebuild a step (docstrings count; they are part of the tree)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()


@contextlib.contextmanager
def spaceless(path: str) -> Iterator[str]:
    """``path``, or while it has whitespace a symbolic link to it whose path has none.

    debootstrap splits its target on spaces in places, and a checkout may well live in
    "/home/me/my projects": tools that cannot take the path get the link instead."""
    if not any(c.isspace() for c in path):
        yield path
        return
    top = tempfile.mkdtemp(prefix="xc-rootfs-")
    link = os.path.join(top, os.path.basename(path.rstrip("/")) or "root")
    os.symlink(os.path.abspath(path), link)
    try:
        yield link
    finally:
        shutil.rmtree(top, ignore_errors=True)


def copy_root(src: str, dst: str) -> None:
    run(["cp", "-a", "--reflink=auto", src, dst], f"copying {src}")


class Step(NamedTuple):
    name: str
    deps: Sequence[str]
    files: Sequence[str]
    params: object
    helpers: Sequence[Callable]
    build: Callable[[str, Dict[str, str]], None]


class Builder:
    """Steps that build roots into ``cache``, each reused while its key is unchanged."""

    def __init__(
        self,
        cache: str,
        label: str,
        files_dir: Optional[str] = None,
        stale_ok: Sequence[str] = (),
        say: Optional[Callable[[str], None]] = None,
        report_cached: bool = True,
    ) -> None:
        self.cache = cache
        self.label = label
        self.files_dir = files_dir
        # For debugging a flow while roles/ or runtime/ change under one's feet: the steps
        # named here reuse an existing output even when their inputs changed, and say so
        # loudly. Never in CI.
        self.stale_ok = set(stale_ok)
        self.debs = os.path.join(cache, "debs")
        self.steps: Dict[str, Step] = {}
        # Where progress goes (default: stderr, prefixed with the label), and whether a
        # step found in the cache is worth a line.
        self.say = say
        self.report_cached = report_cached

    def log(self, msg: str) -> None:
        if self.say is not None:
            self.say(msg.strip())
        else:
            print(f"{self.label}: {msg}", file=sys.stderr, flush=True)

    # ---- steps and their keys

    def step(
        self,
        name: str,
        deps: Sequence[str] = (),
        files: Sequence[str] = (),
        params: object = None,
        helpers: Sequence[Callable] = (),
    ):
        """Register a build step. Its key covers the function, the helpers it names,
        params, files (under ``files_dir``) and the keys of deps."""

        def register(fn: Callable[[str, Dict[str, str]], None]):
            self.steps[name] = Step(name, tuple(deps), tuple(files), params, tuple(helpers), fn)
            return fn

        return register

    def key_of(self, name: str, keys: Dict[str, str]) -> str:
        s = self.steps[name]
        h = hashlib.sha256()
        for fn in (s.build, *s.helpers):
            h.update(source_hash(fn).encode())
        h.update(json.dumps(s.params, sort_keys=True).encode())
        for f in s.files:
            assert self.files_dir is not None, f"step {name} reads files but has no files_dir"
            with open(os.path.join(self.files_dir, f), "rb") as fh:
                h.update(f.encode() + b"\0" + fh.read())
        for d in s.deps:
            h.update(d.encode() + keys[d].encode())
        return h.hexdigest()[:16]

    def plan(self, targets: Sequence[str]) -> List[str]:
        order: List[str] = []

        def visit(n: str) -> None:
            for d in self.steps[n].deps:
                visit(d)
            if n not in order:
                order.append(n)

        for t in targets:
            visit(t)
        return order

    def keys(self, targets: Sequence[str]) -> Dict[str, str]:
        """Each planned step's key, without building anything."""
        keys: Dict[str, str] = {}
        for name in self.plan(targets):
            keys[name] = self.key_of(name, keys)
        return keys

    def output(self, name: str) -> str:
        return os.path.join(self.cache, name)

    def cached(self, name: str, key: str) -> bool:
        try:
            with open(self.output(name) + ".key") as f:
                return f.read().strip() == key and os.path.isdir(self.output(name))
        except FileNotFoundError:
            return False

    # ---- building

    def check_machine(self, tools: Sequence[Tuple[str, str]] = (), free_gib: float = 2) -> None:
        """Fail with the reason and the fix when this machine cannot build."""
        if os.geteuid() != 0:
            raise BuildError(f"building the {self.label} roots needs root (debootstrap, chroot)")
        for tool, fix in (
            ("debootstrap", "apt-get install debootstrap"),
            ("unshare", "apt-get install util-linux"),
            *tools,
        ):
            if shutil.which(tool) is None:
                raise BuildError(f"{tool} is missing; install it ({fix}) and rerun")
        os.makedirs(self.cache, exist_ok=True)
        free = shutil.disk_usage(self.cache).free
        if free < free_gib * 2**30:
            raise BuildError(
                f"{self.cache} has {free / 2**30:.1f} GiB free; the {self.label} build needs"
                f" {free_gib:g} GiB"
            )

    def build(
        self,
        targets: Sequence[str],
        on_build: Optional[Callable[[str], None]] = None,
    ) -> Dict[str, str]:
        """Build targets and what they depend on; return each step's output directory.

        ``on_build(name)`` is called before a step that is not cached is built."""
        with open(os.path.join(self.cache, ".lock"), "w") as lock:
            self.wait_for_lock(lock)
            keys: Dict[str, str] = {}
            outs: Dict[str, str] = {}
            # Steps reused stale, and those built on them: never stamped with their real key.
            stale: Set[str] = set()
            for name in self.plan(targets):
                key = keys[name] = self.key_of(name, keys)
                deps = {d: outs[d] for d in self.steps[name].deps}
                if stale.intersection(self.steps[name].deps):
                    stale.add(name)
                out = self.output(name)
                if self.cached(name, key) and name not in stale:
                    if self.report_cached:
                        self.log(f"{name}: cached ({key})")
                elif name in self.stale_ok and os.path.isdir(out):
                    stale.add(name)
                    self.log(f"{name}: STALE, reused as asked ({key} not built)")
                else:
                    if on_build is not None:
                        on_build(name)
                    t = time.monotonic()
                    self.log(f"{name}: building ({key})")
                    tmp = out + ".tmp"
                    shutil.rmtree(tmp, ignore_errors=True)
                    os.makedirs(tmp)
                    self.steps[name].build(tmp, deps)
                    shutil.rmtree(out, ignore_errors=True)
                    os.rename(tmp, out)
                    with open(out + ".key", "w") as f:
                        # Built on a stale step: a later normal build must rebuild it.
                        f.write(("stale-" if name in stale else "") + key + "\n")
                    self.log(f"{name}: built in {time.monotonic() - t:.1f} s")
                outs[name] = out
        return outs

    def wait_for_lock(self, lock) -> None:
        """One build at a time (bounded wait): two must not debootstrap into one root."""
        t = time.monotonic()
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() - t > LOCK_WAIT:
                    raise BuildError(
                        f"timed out after {LOCK_WAIT / 60:.0f} minutes waiting for another"
                        f" {self.label} build ({self.cache}/.lock)"
                    ) from None
                if time.monotonic() - t < 2.5:
                    self.log("another build holds the lock; waiting up to 30 minutes")
                time.sleep(2)

    # ---- what steps do

    def in_root(
        self, root: str, argv: Sequence[str], what: str, binds: Sequence[tuple] = (), **kw
    ) -> str:
        """Run argv chrooted into root, in a private mount namespace with /proc, /sys, /dev
        and the .deb cache mounted, so nothing is left mounted on the host even when killed."""
        mounts = [
            f'mount -t proc proc "{root}/proc"',
            f'mount -t sysfs sysfs "{root}/sys"',
            f'mount --rbind /dev "{root}/dev"',
            f'mkdir -p "{root}/var/cache/apt/archives" && '
            f'mount --bind "{self.debs}" "{root}/var/cache/apt/archives"',
            # apt needs the build host's resolver; the root keeps its own (empty) file.
            f'touch "{root}/etc/resolv.conf" && '
            f'mount --bind /etc/resolv.conf "{root}/etc/resolv.conf"',
        ]
        for src, dst in binds:
            mounts.append(f'mkdir -p "{root}{dst}" && mount --bind "{src}" "{root}{dst}"')
        script = " && ".join(mounts) + f' && exec chroot "{root}" "$@"'
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C.UTF-8")
        env.pop("PYTHONPATH", None)
        return run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv],
            what,
            env=env,
            **kw,
        )

    def debootstrap(self, root: str, packages: Sequence[str], name: str, suite: str) -> None:
        """A minbase root of ``suite`` with packages installed by apt (not by debootstrap
        --include, which resolves neither virtual packages nor alternatives: cloud-init's
        dependencies fail that way)."""
        os.makedirs(os.path.join(self.debs, "partial"), exist_ok=True)
        os.makedirs(root, exist_ok=True)
        t = time.monotonic()
        with spaceless(root) as target, spaceless(os.path.abspath(self.debs)) as debs:
            run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--cache-dir={debs}",
                    f"--keyring={KEYRING}",
                    suite,
                    target,
                    MIRROR,
                ],
                f"debootstrap {suite} for {name}",
            )
        self.log(f"  {name}: debootstrap {suite} minbase {time.monotonic() - t:.1f} s")
        # Daemons must not start inside a build root; invoke-rc.d asks policy-rc.d first.
        policy = os.path.join(root, "usr/sbin/policy-rc.d")
        with open(policy, "w") as f:
            f.write("#!/bin/sh\nexit 101\n")
        os.chmod(policy, 0o755)
        t = time.monotonic()
        self.in_root(root, ["apt-get", "update", "-q"], f"apt-get update in {name}")
        self.in_root(
            root,
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
            f"installing {' '.join(packages)} into {name}",
        )
        self.log(f"  {name}: apt-get install {len(packages)} packages {time.monotonic() - t:.1f} s")
        os.unlink(policy)
        # debootstrap copied the build host's resolver, which means nothing in the VM.
        open(os.path.join(root, "etc/resolv.conf"), "w").close()

    def community_general(self) -> str:
        """A collections path holding community.general (for its chroot connection)."""
        dest = os.path.join(self.cache, "collections")
        stamp = os.path.join(dest, ".bundle")
        try:
            with open(stamp) as f:
                if f.read().strip() == ANSIBLE_BUNDLE:
                    return dest
        except FileNotFoundError:
            pass
        wheels = os.path.join(self.cache, "wheels")
        os.makedirs(wheels, exist_ok=True)
        t = time.monotonic()
        # The molecule and e2e set-ups may have downloaded the same wheel already.
        run(
            [
                os.path.join(os.path.dirname(sys.executable), "pip"),
                "download",
                "--quiet",
                "--no-deps",
                "--disable-pip-version-check",
                "--find-links",
                os.path.join(REPO, ".cache", "molecule", "wheels"),
                "--find-links",
                os.path.join(REPO, ".cache", "e2e", "wheels"),
                "-d",
                wheels,
                ANSIBLE_BUNDLE,
            ],
            f"pip download {ANSIBLE_BUNDLE}",
        )
        version = ANSIBLE_BUNDLE.split("==")[1]
        wheel = os.path.join(wheels, f"ansible-{version}-py3-none-any.whl")
        shutil.rmtree(dest, ignore_errors=True)
        prefix = "ansible_collections/community/general/"
        with zipfile.ZipFile(wheel) as z:
            z.extractall(dest, [n for n in z.namelist() if n.startswith(prefix)])
        with open(stamp, "w") as f:
            f.write(ANSIBLE_BUNDLE + "\n")
        self.log(f"  community.general from {ANSIBLE_BUNDLE} {time.monotonic() - t:.1f} s")
        return dest

    def apply_playbook(
        self, root: str, group: str, playbook: str, extra_vars: dict, name: str
    ) -> str:
        """Run playbook against root through a chroot connection, as a user prepares an
        image.

        ansible-playbook itself runs in a private mount namespace in which root has /proc,
        /sys and /dev, so the chroot the connection enters looks like a booted system."""
        work = os.path.join(os.path.dirname(root), "ansible")
        os.makedirs(work, exist_ok=True)
        with spaceless(root) as target:
            return self._apply_playbook(root, target, work, group, playbook, extra_vars, name)

    def _apply_playbook(
        self,
        root: str,
        target: str,
        work: str,
        group: str,
        playbook: str,
        extra_vars: dict,
        name: str,
    ) -> str:
        host = {
            "ansible_host": target,
            "ansible_connection": "community.general.chroot",
            "ansible_python_interpreter": "/usr/bin/python3",
        }
        inventory = {"all": {"children": {group: {"hosts": {name: host}}}}}
        with open(os.path.join(work, "inventory.json"), "w") as f:
            json.dump(inventory, f)
        with open(os.path.join(work, "vars.json"), "w") as f:
            json.dump(extra_vars, f)
        with ansible_run.collection_tree("xc-rootfs-") as top:
            env = ansible_run.playbook_env(top + os.pathsep + self.community_general(), work)
            env.pop("PYTHONPATH", None)
            # Inside the root: the chroot connection creates it there, not on the host.
            env["ANSIBLE_REMOTE_TEMP"] = "/tmp/.xc-rootfs-ansible"
            # The resolver too, as a machine being prepared has its network (apt may run).
            script = (
                f'mount -t proc proc "{root}/proc" && mount -t sysfs sysfs "{root}/sys" && '
                f'mount --rbind /dev "{root}/dev" && touch "{root}/etc/resolv.conf" && '
                f'mount --bind /etc/resolv.conf "{root}/etc/resolv.conf" && exec "$@"'
            )
            t = time.monotonic()
            out = run(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    script,
                    "sh",
                    ansible_run.PLAYBOOK,
                    "-i",
                    os.path.join(work, "inventory.json"),
                    "-e",
                    "@" + os.path.join(work, "vars.json"),
                    playbook,
                ],
                f"ansible-playbook {os.path.basename(playbook)} on {name}",
                env=env,
                cwd=work,
            )
        shutil.rmtree(os.path.join(root, "tmp/.xc-rootfs-ansible"), ignore_errors=True)
        with open(os.path.join(work, "play.log"), "w") as f:
            f.write(out)
        recap = [line for line in out.splitlines() if line.startswith(name + " ")]
        took = time.monotonic() - t
        self.log(
            f"  {name}: {os.path.basename(playbook)} {took:.1f} s: {recap[-1] if recap else ''}"
        )
        return out
