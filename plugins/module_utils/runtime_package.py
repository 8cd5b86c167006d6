# Copyright (c) xenchannel contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Private helper: install the xenchannel runtime package on a managed host.

Not a public API; only this collection's runtime_package action plugin and module use it.

The rules the controller side (the action plugin, which packs the collection's
``runtime/xenchannel``) and the target side (the module, which installs it) must agree on
live here once: which files belong to the package, which of them each kind of host runs
(its components), which names are acceptable, and what the package must hold. The
module's work is the ``RuntimeInstaller`` class. It runs on the target, so it must work
on Python 3.8 and imports only the standard library.
"""

import grp
import hashlib
import os
import posixpath
import pwd
import re
import shutil
import stat
import tarfile
import tempfile

PACKAGE = "xenchannel"
# What each kind of host runs, as package-relative names; a name ending in / stands for
# everything under that directory. A guest runs the guest client, the in-guest agent and
# what the datasource imports (xenchannel.guest), dom0 runs its agent and the store and
# bundle rules the collection's modules import (xenchannel.dom0); both speak the protocol
# and watch paths with inotify, and both know the one rule for a channel's name.
# No guest code on dom0, no dom0 code on a guest: each host runs and imports all it has.
COMPONENTS = {
    "dom0": (
        "__init__.py",
        "protocol.py",
        "session.py",
        "inotify.py",
        "channel_name.py",
        "domain_name.py",
        "dom0/",
    ),
    "guest": (
        "__init__.py",
        "protocol.py",
        "session.py",
        "inotify.py",
        "channel_name.py",
        "guest/",
    ),
}
# Without these a component cannot run; a collection that lacks them was built or
# installed wrongly.
REQUIRED_FILES = {
    "dom0": ("__init__.py", "protocol.py", "session.py", "inotify.py", "dom0/agent.py"),
    "guest": ("__init__.py", "protocol.py", "session.py", "inotify.py", "guest/agent.py"),
}
# Python's own caches: never shipped, and left alone where the package is installed.
CACHE_DIR = "__pycache__"
CACHE_SUFFIXES = (".pyc", ".pyo")
OCTAL_MODE = re.compile(r"^0?[0-7]{3,4}$")
DIGEST = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1 << 16


class PackageError(Exception):
    """The package, its manifest or an option is unusable; the message names the fix."""


def is_cache(relative):
    """True for Python's caches: anything under ``__pycache__`` and ``*.pyc``/``*.pyo``."""
    parts = relative.split("/")
    return CACHE_DIR in parts or parts[-1].endswith(CACHE_SUFFIXES)


def check_components(components):
    """The chosen components, sorted without repeats, if each is one this package has.

    A string is a comma-separated list, as Ansible's ``list`` options read it.
    """
    if isinstance(components, str):
        components = [name.strip() for name in components.split(",") if name.strip()]
    chosen = components if isinstance(components, (list, tuple)) else []
    unknown = [str(name) for name in chosen if name not in COMPONENTS]
    if not chosen or unknown:
        given = f"{', '.join(unknown)} is not one" if unknown else "none is given"
        raise PackageError(
            f"components must name what the host runs, one or more of "
            f"{', '.join(sorted(COMPONENTS))}, and {given}; for example components: [guest]"
        )
    return tuple(sorted(set(chosen)))


def in_components(relative, components):
    """True if the package-relative file ``relative`` belongs to one of ``components``."""
    for component in components:
        for name in COMPONENTS[component]:
            if relative == name or (name.endswith("/") and relative.startswith(name)):
                return True
    return False


def required_files(components):
    """The files without which ``components`` cannot run, sorted."""
    return sorted({name for component in components for name in REQUIRED_FILES[component]})


def check_name(name):
    """``name`` if it is a clean relative path inside the package, else PackageError."""
    parts = name.split("/") if isinstance(name, str) else []
    if (
        not parts
        or name.startswith("/")
        or "\\" in name
        or "\0" in name
        or any(part in ("", ".", "..") for part in parts)
        or is_cache(name)
    ):
        raise PackageError(
            f"the package manifest names {name!r}, which is not a relative path inside the "
            "package; run the task again with an intact xenchannel.provision collection"
        )
    return name


def check_dest(dest):
    """The normalised ``dest``: absolute, without ``..``, ending in the package's name.

    The module removes whatever it finds there that the package does not ship, so a
    ``dest`` one level too high (the Python directory itself) must be refused.
    """
    parts = dest.split("/") if isinstance(dest, str) else []
    if not dest or not dest.startswith("/") or ".." in parts:
        raise PackageError(
            f"dest {dest!r} must be an absolute path without '..', such as "
            f"/usr/lib/python3/dist-packages/{PACKAGE}"
        )
    normal = posixpath.normpath(dest)
    if posixpath.basename(normal) != PACKAGE:
        raise PackageError(
            f"dest {dest!r} must be the package's own directory, ending in /{PACKAGE} (such "
            f"as /usr/lib/python3/dist-packages/{PACKAGE}), because files there that the "
            "package does not ship are removed"
        )
    return normal


def check_manifest(manifest, components):
    """The manifest (relative name -> SHA-256) if well formed and exactly ``components``."""
    if not isinstance(manifest, dict) or not manifest:
        raise PackageError(
            "the package manifest is missing; use xenchannel.provision.runtime_package as a "
            "task, whose action plugin packs the collection's runtime and sends it"
        )
    for name, digest in manifest.items():
        check_name(name)
        if not isinstance(digest, str) or not DIGEST.match(digest):
            raise PackageError(
                f"the package manifest has no SHA-256 for {name}; run the task again with an "
                "intact xenchannel.provision collection"
            )
        if not in_components(name, components):
            raise PackageError(
                f"the package manifest names {name}, which is not part of the components "
                f"{', '.join(components)}; run the task again with an intact "
                "xenchannel.provision collection"
            )
    missing = [name for name in required_files(components) if name not in manifest]
    if missing:
        raise PackageError(
            f"the runtime package lacks {', '.join(missing)}; reinstall the "
            "xenchannel.provision collection"
        )
    return manifest


def parse_mode(value, option):
    """An octal mode given as a string (V('0644')) or as YAML's integer for 0644."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o7777:
        return value
    if isinstance(value, str) and OCTAL_MODE.match(value):
        return int(value, 8)
    raise PackageError(f"{option} {value!r} is not an octal mode; quote it, as in {option}: '0644'")


def account_id(name, option):
    """The numeric id of ``owner`` (a user) or ``group`` (a group), given as name or digits."""
    if name.isdigit():
        return int(name)
    kind, lookup = ("user", pwd.getpwnam) if option == "owner" else ("group", grp.getgrnam)
    try:
        return lookup(name)[2]  # pw_uid, gr_gid
    except KeyError:
        raise PackageError(
            f"{option} {name!r} is not a {kind} on this host; name an existing {kind}"
        ) from None


def file_sha256(path):
    """The file's SHA-256, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _member(tar, relative):
    """The content of a regular file in the archive, None if it is something else."""
    member = tar.getmember(relative)
    handle = tar.extractfile(member) if member.isfile() else None
    return handle.read() if handle is not None else None


def _label(relative, is_dir):
    """How the result names a path: package-relative, directories with a trailing /."""
    if not is_dir:
        return relative
    return (relative or ".") + "/"


class _Found:
    """What is installed at ``dest`` now, Python's caches left out."""

    def __init__(self):
        self.files = {}  # relative name -> lstat result (regular files and symlinks)
        self.dirs = {}  # relative name -> lstat result ("" is dest itself)


def scan(dest):
    """The files and directories under ``dest`` (following no symlink below it)."""
    found = _Found()
    if not os.path.lexists(dest):
        return found
    if not os.path.isdir(dest):
        raise PackageError(
            f"dest {dest} exists and is not a directory; remove it, or choose another dest"
        )
    found.dirs[""] = os.stat(dest)
    for top, dirs, files in os.walk(dest):
        relative_top = os.path.relpath(top, dest)
        relative_top = "" if relative_top == "." else relative_top + "/"
        kept = []
        for name in sorted(dirs):
            relative = relative_top + name
            if name == CACHE_DIR:
                continue
            path = os.path.join(top, name)
            if os.path.islink(path):
                found.files[relative] = os.lstat(path)
                continue
            found.dirs[relative] = os.lstat(path)
            kept.append(name)
        dirs[:] = kept
        for name in sorted(files):
            relative = relative_top + name
            if not is_cache(relative):
                found.files[relative] = os.lstat(os.path.join(top, name))
    return found


class RuntimeInstaller:
    """Brings ``dest`` to exactly the package's files, modes and owners."""

    def __init__(
        self,
        dest,
        manifest,
        components,
        *,
        owner="root",
        group="root",
        mode="0644",
        directory_mode="0755",
        check_mode=False,
    ):
        self.dest = check_dest(dest)
        self.components = check_components(components)
        self.manifest = check_manifest(manifest, self.components)
        self.uid = account_id(owner, "owner")
        self.gid = account_id(group, "group")
        self.mode = parse_mode(mode, "mode")
        self.directory_mode = parse_mode(directory_mode, "directory_mode")
        self.check_mode = check_mode
        self.found = scan(self.dest)
        self.wanted_dirs = {""}
        for name in self.manifest:
            parent = posixpath.dirname(name)
            while parent:
                self.wanted_dirs.add(parent)
                parent = posixpath.dirname(parent)
        self.installed = []
        self.updated = []
        self.removed = []
        # Files whose content must be written (the rest of the changes are attributes).
        self.to_write = []
        self.to_fix = []  # (relative, is_dir) whose mode or owner is wrong
        self.to_remove = []  # (relative, is_dir) not shipped, or in the way
        self.to_mkdir = []
        self._digests = {}
        self._plan()

    # --- the plan --------------------------------------------------------------------

    def _attributes_ok(self, st, mode):
        return stat.S_IMODE(st.st_mode) == mode and st.st_uid == self.uid and st.st_gid == self.gid

    def _plan(self):
        found = self.found
        for relative in sorted(found.dirs):
            # A directory where the package has a file is replaced below, not "removed".
            if relative and relative not in self.wanted_dirs and relative not in self.manifest:
                self.to_remove.append((relative, True))
                self.removed.append(_label(relative, True))
        for relative in sorted(found.files):
            gone_with_dir = any(
                relative.startswith(top + "/") for top, is_dir in self.to_remove if is_dir
            )
            in_the_way = relative in self.wanted_dirs  # replaced by a directory below
            if relative not in self.manifest and not gone_with_dir and not in_the_way:
                self.to_remove.append((relative, False))
                self.removed.append(relative)
        for relative in sorted(self.wanted_dirs):
            st = found.dirs.get(relative)
            if st is None:
                if relative in found.files:  # a file or symlink where a directory belongs
                    self.to_remove.append((relative, False))
                    self.updated.append(_label(relative, True))
                else:
                    self.installed.append(_label(relative, True))
                self.to_mkdir.append(relative)
            elif not self._attributes_ok(st, self.directory_mode):
                self.to_fix.append((relative, True))
                self.updated.append(_label(relative, True))
        for relative in sorted(self.manifest):
            st = found.files.get(relative)
            if relative in found.dirs:  # a directory where a file belongs
                self.to_remove.append((relative, True))
                self.to_write.append(relative)
                self.updated.append(relative)
            elif st is None:
                self.to_write.append(relative)
                self.installed.append(relative)
            elif not stat.S_ISREG(st.st_mode) or self._digest(relative) != self.manifest[relative]:
                self.to_write.append(relative)
                self.updated.append(relative)
            elif not self._attributes_ok(st, self.mode):
                self.to_fix.append((relative, False))
                self.updated.append(relative)

    def _digest(self, relative):
        """The installed file's SHA-256, read once (the plan and the diff both ask)."""
        if relative not in self._digests:
            self._digests[relative] = file_sha256(os.path.join(self.dest, relative))
        return self._digests[relative]

    @property
    def changed(self):
        return bool(self.installed or self.updated or self.removed)

    def diff(self):
        """Before and after as listings of file names with a short SHA-256 each.

        Call it before ``apply``: "before" is what the scan found.
        """
        before = []
        for relative in sorted(self.found.files):
            st = self.found.files[relative]
            if stat.S_ISREG(st.st_mode):
                before.append(f"{relative}  sha256:{self._digest(relative)[:16]}")
            else:
                before.append(f"{relative}  (not a regular file)")
        after = [
            f"{relative}  sha256:{self.manifest[relative][:16]}"
            for relative in sorted(self.manifest)
        ]
        return {
            "before": "".join(line + "\n" for line in before),
            "after": "".join(line + "\n" for line in after),
            "before_header": self.dest + " (files)",
            "after_header": self.dest + " (files)",
        }

    # --- doing it ----------------------------------------------------------------------

    def apply(self, archive):
        """Carry out the plan; ``archive`` is the package's .tar.gz (read only if needed)."""
        if self.check_mode or not self.changed:
            return
        contents = self._read(archive) if self.to_write else {}
        for relative, is_dir in self.to_remove:
            path = os.path.join(self.dest, relative)
            if is_dir and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.unlink(path)
        for relative in self.to_mkdir:  # sorted: parents first
            path = os.path.join(self.dest, relative) if relative else self.dest
            if not relative:
                # Like ansible.builtin.file, make the Python directory if it is missing.
                os.makedirs(os.path.dirname(path), exist_ok=True)
            os.mkdir(path, self.directory_mode)
            self._set_attributes(path, self.directory_mode)
        for relative, is_dir in self.to_fix:
            path = os.path.join(self.dest, relative) if relative else self.dest
            self._set_attributes(path, self.directory_mode if is_dir else self.mode)
        for relative in self.to_write:
            self._write(relative, contents[relative])

    def _set_attributes(self, path, mode):
        os.chown(path, self.uid, self.gid)
        os.chmod(path, mode)

    def _read(self, archive):
        """The content of every file to write, checked against the manifest."""
        if not archive:
            raise PackageError(
                "no package archive was sent; use xenchannel.provision.runtime_package as a "
                "task, whose action plugin packs the collection's runtime and sends it"
            )
        contents = {}
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for relative in self.to_write:
                    contents[relative] = _member(tar, relative)
        except (OSError, EOFError, KeyError, tarfile.TarError) as exc:
            raise PackageError(
                f"the package archive sent to this host cannot be read ({exc}); run the task again"
            ) from None
        for relative, data in contents.items():
            if data is None or hashlib.sha256(data).hexdigest() != self.manifest[relative]:
                raise PackageError(
                    f"the package archive sent to this host does not match its manifest at "
                    f"{relative}; run the task again"
                )
        return contents

    def _write(self, relative, data):
        """Replace the file atomically: a temporary file beside it, renamed over it."""
        path = os.path.join(self.dest, relative)
        fd, temporary = tempfile.mkstemp(
            prefix=f".{posixpath.basename(relative)}.", dir=os.path.dirname(path)
        )
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fchown(handle.fileno(), self.uid, self.gid)
                os.fchmod(handle.fileno(), self.mode)
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            if os.path.lexists(temporary):
                os.unlink(temporary)
            raise

    def result(self):
        return {
            "changed": self.changed,
            "dest": self.dest,
            "components": list(self.components),
            "installed": sorted(self.installed),
            "updated": sorted(self.updated),
            "removed": sorted(self.removed),
        }
