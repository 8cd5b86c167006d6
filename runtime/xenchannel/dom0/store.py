"""The dom0 domain store: one directory per domain, holding its socket and its bundle.

Layout::

    <store_dir>/<domain>/domain.json   mode 0600, owned by the agent's user

``domain.json`` is a JSON object::

    {"socket": "/run/xenchannel/web1.sock",
     "meta-data": {"instance-id": "...", "local-hostname": "web1", ...},
     "user-data": "#cloud-config\\n..." | {"base64": "..."},      (optional)
     "vendor-data": "..." | {"base64": "..."},                  (optional)
     "network-config": {"version": 2, ...}}                     (optional)

The Ansible module writes it (``write_domain``), the dom0 agent reads it
(``scan_store`` every second, ``load_domain`` when a file changed and whenever a guest
asks for its bundle).  This module is the only place that knows the layout and its
rules: valid domain names, socket paths confined to the socket root, and files that
nobody but their owner may read - they hold user-data, which often holds secrets.

Error messages name the file and the fix, and never quote user-data or vendor-data.
"""

import base64
import binascii
import hashlib
import json
import os
import shutil
import stat
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Set, Tuple

from xenchannel.dom0.files import atomic_write
from xenchannel.domain_name import DOMAIN_NAME_RULE, domain_name_problem, valid_domain_name
from xenchannel.protocol import MAX_BUNDLE_SIZE, MAX_JSON_DEPTH, Bundle, BundleError, ChannelError

DOMAIN_FILE = "domain.json"
KNOWN_KEYS = ("socket", "meta-data", "user-data", "vendor-data", "network-config")
# base64 inflates by 4/3 and JSON adds a little: a file this size cannot hold a bundle
# under MAX_BUNDLE_SIZE, so reading stops there rather than loading something huge.
MAX_FILE_SIZE = MAX_BUNDLE_SIZE * 4 // 3 + 1024 * 1024
# sun_path holds 108 bytes including the terminating NUL on Linux.
MAX_SOCKET_PATH = 107

# (st_ino, st_size, st_mtime_ns, st_ctime_ns) of domain.json.  The inode changes on
# every atomic replace; ctime also changes on chmod and chown, so fixing a file's mode
# after a refusal is noticed without a restart.
Signature = Tuple[int, int, int, int]


class StoreError(ChannelError):
    """A store entry is unusable; str() is one sentence naming the file and the fix.

    ``socket`` is the entry's socket path when the file was safe and named a valid
    socket but its bundle is invalid: the agent can still connect and tell the guest.
    """

    def __init__(
        self, message: str, socket: Optional[str] = None, guest_message: Optional[str] = None
    ) -> None:
        super().__init__(message)
        self.socket = socket
        # What the guest may be told: the bundle's problem without dom0's file paths.
        self.guest_message = guest_message


class DomainEntry(NamedTuple):
    """One loaded, validated store entry."""

    name: str
    socket: str
    bundle: Bundle
    digest: str
    instance_id: str
    size: int  # of the encoded bundle
    signature: Signature
    encoded: bytes  # the bundle as the guest receives it (what ``digest`` is of)

    @property
    def hostname(self) -> Optional[str]:
        return self.bundle.hostname


def check_domain_name(name: str) -> None:
    problem = domain_name_problem(name)
    if problem is not None:
        raise StoreError(problem)


def domain_dir(store_dir: str, name: str) -> str:
    check_domain_name(name)
    return os.path.join(store_dir, name)


def domain_file(store_dir: str, name: str) -> str:
    return os.path.join(domain_dir(store_dir, name), DOMAIN_FILE)


def signature_of(st: os.stat_result) -> Signature:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# --------------------------------------------------------------------------- scanning


def scan_store(
    store_dir: str,
    problems: Optional[List[str]] = None,
    directories: Optional[Set[str]] = None,
) -> Dict[str, Signature]:
    """Every domain with a domain.json, by name, with its file signature.

    One scandir and one stat per domain.  Entries that are not domains are skipped; if
    ``problems`` is given, a sentence for each is appended to it (hidden names, such as
    editors' files, silently).  ``directories`` collects every validly named directory,
    with or without its domain.json (those are what a watch must cover).
    """
    found: Dict[str, Signature] = {}
    try:
        entries = list(os.scandir(store_dir))
    except FileNotFoundError:
        if problems is not None:
            problems.append(f"the store directory {store_dir} does not exist; create it")
        return found
    except OSError as exc:
        if problems is not None:
            problems.append(f"cannot list the store directory {store_dir}: {exc.strerror}")
        return found
    for entry in entries:
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        _scan_entry(
            entry.path, entry.name, is_dir, found=found, problems=problems, directories=directories
        )
    return found


def scan_names(
    store_dir: str,
    names: Iterable[str],
    problems: Optional[List[str]] = None,
    directories: Optional[Set[str]] = None,
) -> Dict[str, Signature]:
    """``scan_store`` for just these names: the ones missing from the result are gone
    (or not domains)."""
    found: Dict[str, Signature] = {}
    for name in names:
        path = os.path.join(store_dir, name)
        try:
            is_dir = stat.S_ISDIR(os.lstat(path).st_mode)
        except FileNotFoundError:
            continue
        except OSError:
            is_dir = False
        _scan_entry(path, name, is_dir, found=found, problems=problems, directories=directories)
    return found


def _scan_entry(
    path: str,
    name: str,
    is_dir: bool,
    *,
    found: Dict[str, Signature],
    problems: Optional[List[str]],
    directories: Optional[Set[str]],
) -> None:
    if name.startswith("."):
        return
    if not valid_domain_name(name):
        if problems is not None:
            problems.append(
                f"{path} is ignored: {name!r} is not a valid domain name ({DOMAIN_NAME_RULE})"
            )
        return
    if not is_dir:
        if problems is not None:
            problems.append(f"{path} is ignored: it is not a directory")
        return
    if directories is not None:
        directories.add(name)
    try:
        st = os.stat(os.path.join(path, DOMAIN_FILE), follow_symlinks=False)
    except FileNotFoundError:
        if problems is not None:
            problems.append(f"{path} is ignored: it has no {DOMAIN_FILE}")
        return
    except OSError as exc:
        if problems is not None:
            problems.append(f"cannot stat {path}/{DOMAIN_FILE}: {exc.strerror}")
        return
    found[name] = signature_of(st)


# --------------------------------------------------------------------------- loading


def load_domain(store_dir: str, name: str, socket_root: str) -> DomainEntry:
    """Read and validate one domain's entry; StoreError with one sentence if unusable."""
    check_domain_name(name)
    _check_private_directory(os.path.join(store_dir, name))
    path = os.path.join(store_dir, name, DOMAIN_FILE)
    raw, st = _read_private_file(path)
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise StoreError(f"{path} is not UTF-8 text; rewrite it as UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise StoreError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            "fix the syntax or rewrite the file"
        ) from None
    except RecursionError:
        raise StoreError(
            f"{path} nests JSON too deeply to read; rewrite it with channel_metadata, whose "
            f"meta-data and network-config may nest at most {MAX_JSON_DEPTH} levels"
        ) from None
    if not isinstance(doc, dict):
        raise StoreError(f"{path} must hold a JSON object with socket and meta-data keys")
    unknown = sorted(str(key)[:64] for key in doc if key not in KNOWN_KEYS)
    if unknown:
        raise StoreError(
            f"{path} has unknown key {unknown[0]!r}; use only " + ", ".join(KNOWN_KEYS)
        )
    socket = check_socket_path(doc.get("socket"), socket_root, path)
    problem = resolved_socket_problem(socket, socket_root)
    if problem is not None:
        raise StoreError(f"{path} names {problem}")
    if "meta-data" not in doc:
        raise StoreError(f"{path} has no meta-data; add a meta-data object", socket)
    user_data = _opaque_part(doc, "user-data", path, socket)
    vendor_data = _opaque_part(doc, "vendor-data", path, socket)
    network_config = doc.get("network-config")
    bundle = Bundle(doc["meta-data"], user_data, vendor_data, network_config)
    try:
        bundle.validate()
    except BundleError as exc:
        raise StoreError(
            f"{path} holds an invalid bundle: {exc}",
            socket,
            guest_message=f"dom0 holds an invalid bundle for this domain: {exc}",
        ) from None
    encoded = bundle.encode()
    instance_id = bundle.instance_id
    assert instance_id is not None  # validate() guarantees it
    return DomainEntry(
        name=name,
        socket=socket,
        bundle=bundle,
        digest=encoded_digest(encoded),
        instance_id=instance_id,
        size=len(encoded),
        signature=signature_of(st),
        encoded=encoded,
    )


def encoded_digest(encoded: bytes) -> str:
    """Bundle.digest() of an already encoded bundle, without encoding it again."""
    return hashlib.sha256(encoded).hexdigest()


def _read_private_file(path: str) -> Tuple[bytes, os.stat_result]:
    """The file's bytes, if it is a regular file only its owner - the agent - can use."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | os.O_NONBLOCK)
    except FileNotFoundError:
        raise StoreError(
            f"{path} does not exist; write the domain's entry or remove its directory"
        ) from None
    except OSError as exc:
        raise StoreError(
            f"cannot open {path} ({exc.strerror}); make it a regular file readable by the "
            "agent's user"
        ) from None
    try:
        # fstat of the open file: what is checked is exactly what is read.
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"{path} is not a regular file; replace it with one")
        _check_owner(path, st)
        if st.st_mode & 0o077:
            raise StoreError(
                f"{path} is readable or writable by group or others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}) and may hold secrets; run chmod 600 {path}"
            )
        if st.st_size > MAX_FILE_SIZE:
            raise StoreError(
                f"{path} is {st.st_size} bytes, too large to hold a bundle of at most "
                f"{MAX_BUNDLE_SIZE} bytes; shrink user-data (gzip it)"
            )
        chunks: List[bytes] = []
        total = 0
        while True:
            data = os.read(fd, 1024 * 1024)
            if not data:
                break
            total += len(data)
            if total > MAX_FILE_SIZE:
                raise StoreError(
                    f"{path} grew past {MAX_FILE_SIZE} bytes while being read; write it "
                    "atomically and keep the bundle under the maximum"
                )
            chunks.append(data)
        return b"".join(chunks), st
    finally:
        os.close(fd)


def _check_owner(path: str, st: os.stat_result) -> None:
    uid = os.geteuid()
    if st.st_uid != uid:
        raise StoreError(
            f"{path} is owned by uid {st.st_uid}, not by the agent's uid {uid}; "
            f"run chown {uid} {path}"
        )


def _check_private_directory(directory: str) -> None:
    """The domain's directory is a real directory only the agent's user can enter."""
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        raise StoreError(
            f"{directory} does not exist; write the domain's entry with channel_metadata"
        ) from None
    except OSError as exc:
        raise StoreError(f"cannot stat {directory} ({exc.strerror}); fix its permissions") from None
    if stat.S_ISLNK(st.st_mode):
        raise StoreError(
            f"{directory} is a symlink; make it a directory of its own (a link lets whoever "
            "controls its target choose what this domain is served)"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(f"{directory} is not a directory; remove it and write the entry again")
    _check_owner(directory, st)
    if st.st_mode & 0o077:
        raise StoreError(
            f"{directory} is open to group or others (mode {stat.S_IMODE(st.st_mode):04o}), "
            f"so they could swap its entry; run chmod 700 {directory}"
        )


def resolved_socket_problem(socket: str, socket_root: str) -> Optional[str]:
    """Why ``socket`` (already inside ``socket_root`` by its text) is unsafe by what it
    resolves to, or None: its directory must resolve inside the socket root, and the
    socket, once it exists, must be the socket itself, not a symlink to one."""
    root = os.path.realpath(socket_root)
    parent = os.path.realpath(os.path.dirname(socket))
    if parent != root and os.path.commonpath([parent, root]) != root:
        return (
            f"socket {socket}, whose directory resolves to {parent}, outside the socket "
            f"root {root}; remove the symlink or put the socket under {root}"
        )
    try:
        st = os.lstat(socket)
    except OSError:
        return None  # not there yet: the domain is not running
    if stat.S_ISLNK(st.st_mode):
        return (
            f"socket {socket}, which is a symlink (to {os.readlink(socket)}); name QEMU's "
            "socket itself, one per domain"
        )
    return None


def check_socket_path(value: Any, socket_root: str, path: str = "the store entry") -> str:
    """The normalised socket path, if it is absolute and inside ``socket_root``."""
    if not isinstance(value, str) or not value:
        raise StoreError(f"{path} has no socket; set socket to the channel's absolute path")
    if "\x00" in value:
        raise StoreError(f"{path} has a socket path containing NUL; fix the socket path")
    if not os.path.isabs(value):
        raise StoreError(
            f"{path} has a relative socket path {value!r}; use an absolute path under {socket_root}"
        )
    socket = os.path.normpath(value)
    root = os.path.normpath(os.path.abspath(socket_root))
    # normpath folds "..", so "/run/xenchannel/../x.sock" is judged as "/run/x.sock".
    if socket == root or os.path.commonpath([socket, root]) != root:
        raise StoreError(
            f"{path} names socket {value!r}, which is outside the socket root {root}; "
            f"put the channel socket under {root}"
        )
    if len(os.fsencode(socket)) > MAX_SOCKET_PATH:
        raise StoreError(
            f"{path} names a socket path of {len(os.fsencode(socket))} bytes, over the "
            f"{MAX_SOCKET_PATH} a Unix socket path can hold; use a shorter path"
        )
    return socket


def _opaque_part(doc: Dict[str, Any], key: str, path: str, socket: str) -> Optional[bytes]:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and set(value) == {"base64"} and isinstance(value["base64"], str):
        try:
            return base64.b64decode(value["base64"].encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise StoreError(
                f"{path} has {key} that is not valid base64; encode it with base64 "
                "(standard alphabet, with padding)",
                socket,
            ) from None
    raise StoreError(
        f'{path} has {key} that is neither a string nor {{"base64": "..."}}; use one of them',
        socket,
    )


# --------------------------------------------------------------------------- writing


def encode_domain(socket: str, bundle: Bundle) -> Dict[str, Any]:
    """The domain.json object for a socket and a bundle (inverse of load_domain)."""
    doc: Dict[str, Any] = {"socket": socket, "meta-data": bundle.meta_data}
    for key, value in (("user-data", bundle.user_data), ("vendor-data", bundle.vendor_data)):
        if value is None:
            continue
        try:
            doc[key] = value.decode("utf-8")
        except UnicodeDecodeError:
            doc[key] = {"base64": base64.b64encode(value).decode("ascii")}
    if bundle.network_config is not None:
        doc["network-config"] = bundle.network_config
    return doc


def write_domain(store_dir: str, name: str, socket: str, bundle: Bundle) -> str:
    """Atomically write a domain's entry (mode 0600, directories 0700); returns its path."""
    check_domain_name(name)
    if not isinstance(socket, str) or not os.path.isabs(socket):
        raise StoreError(f"the socket path for domain {name} must be absolute")
    try:
        bundle.validate()
    except BundleError as exc:
        raise StoreError(f"the bundle for domain {name} is invalid: {exc}") from None
    directory = os.path.join(store_dir, name)
    os.makedirs(store_dir, mode=0o700, exist_ok=True)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    data = json.dumps(encode_domain(os.path.normpath(socket), bundle), indent=2, sort_keys=True)
    path = os.path.join(directory, DOMAIN_FILE)
    atomic_write(path, data.encode("utf-8") + b"\n")
    return path


def remove_domain(store_dir: str, name: str) -> bool:
    """Remove a domain's entry and directory; False if there was none."""
    directory = domain_dir(store_dir, name)
    path = os.path.join(directory, DOMAIN_FILE)
    removed = False
    try:
        # domain.json first: from that moment the agent sees the domain as gone.
        os.unlink(path)
        removed = True
    except FileNotFoundError:
        pass
    if os.path.isdir(directory) and not os.path.islink(directory):
        shutil.rmtree(directory)
        removed = True
    return removed
