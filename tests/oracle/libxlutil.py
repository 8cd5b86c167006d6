"""Xen 4.17's own xl config parser, loaded through ctypes, as a test oracle.

Debian bookworm's libxlutil.so.4.17 (package libxenmisc4.17, the library `xl` links)
parses xl domain config files with no hypervisor: `xlu_cfg_init`, `xlu_cfg_readdata`,
`xlu_cfg_get_string/long/list/listitem`, `xlu_cfg_destroy`. Whatever the project writes
into an xl config is handed to it here, and must parse and mean what was intended.

`parse(text)` returns an `OracleConfig`: what Xen sees for every setting (a string, or a
list of strings and nested lists), plus what `xlu_cfg_get_long` makes of each string.
A file Xen refuses raises `XlParseError` carrying Xen's rc (22, EINVAL) and its own
line-numbered message from the report stream.

The library is fetched by tests/oracle/fetch-xen-utils.sh into .cache/xen-utils/; when
it is missing, `load()` raises `OracleMissing` naming that command.
"""

import ctypes
import ctypes.util
import errno
import glob
import os
import re
from typing import Dict, List, Optional, Union

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FETCH_SCRIPT = os.path.join("tests", "oracle", "fetch-xen-utils.sh")
FETCH_COMMAND = "sh " + FETCH_SCRIPT
LIB_GLOB = os.path.join(ROOT, ".cache", "xen-utils", "root", "usr", "lib", "*", "libxlutil.so.4.17")

XLU_STRING = 0
XLU_LIST = 1
XLU_OP_ADDITION = 1

Value = Union[str, None, List["Value"]]
# strtol(s, &end, 0) consuming the whole string: C whitespace, a sign, then hex, octal
# or decimal digits and nothing after them.
_STRTOL0 = re.compile(r"[ \t\n\v\f\r]*([+-]?)(?:0[xX]([0-9a-fA-F]+)|(0[0-7]*)|([1-9][0-9]*))\Z")


class OracleMissing(RuntimeError):
    """libxlutil has not been fetched (or cannot be loaded) on this machine."""


class XlParseError(Exception):
    """libxlutil refused the text; `rc` is its errno, `message` its own report."""

    def __init__(self, rc: int, message: str) -> None:
        super().__init__(f"libxlutil rc {rc}: {message.strip()}")
        self.rc = rc
        self.message = message


class OracleConfig:
    """What Xen's parser made of one config text.

    `values` maps each setting name to the value `xlu_cfg_get_string` or
    `xlu_cfg_get_list` returns for it (list items that are lists stay lists; an item
    `xlu_cfg_get_listitem` cannot return as a string would be None). `longs` maps each
    string-valued name to `xlu_cfg_get_long`'s result, or None when Xen would refuse it
    as a number. `ops` records whether the effective setting was written with `+=`.
    """

    def __init__(
        self, values: Dict[str, Value], longs: Dict[str, Optional[int]], ops: Dict[str, str]
    ) -> None:
        self.values = values
        self.longs = longs
        self.ops = ops

    def __repr__(self) -> str:
        return f"OracleConfig({self.values!r})"


class _Setting(ctypes.Structure):
    pass


# libxlu_internal.h (Xen 4.17): the settings list xl itself walks through find().
_Setting._fields_ = [
    ("next", ctypes.POINTER(_Setting)),
    ("name", ctypes.c_char_p),
    ("value", ctypes.c_void_p),
    ("op", ctypes.c_int),
    ("lineno", ctypes.c_int),
]


class _Config(ctypes.Structure):
    _fields_ = [
        ("settings", ctypes.POINTER(_Setting)),
        ("report", ctypes.c_void_p),
        ("config_source", ctypes.c_char_p),
    ]


_LOADED: Optional["_Library"] = None


def library_path() -> Optional[str]:
    """The fetched libxlutil.so.4.17, or None when it has not been fetched."""
    found = sorted(glob.glob(LIB_GLOB))
    return found[0] if found else None


def missing_message() -> str:
    return (
        "Xen's libxlutil.so.4.17 is not under .cache/xen-utils/; fetch it (Debian bookworm "
        f"packages, no install) by running `{FETCH_COMMAND}` in {ROOT}."
    )


class _Library:
    def __init__(self, path: str) -> None:
        libdir = os.path.dirname(path)
        # libxlutil's dependencies live next to it, outside the loader's search path;
        # loading each one by path first lets the loader match them by soname.
        pending = sorted(
            p
            for p in glob.glob(os.path.join(libdir, "lib*.so.*"))
            if os.path.basename(p).count(".so.") == 1 and os.path.islink(p)
        )
        errors = {}
        while pending:
            progress = []
            for dep in pending:
                try:
                    ctypes.CDLL(dep, mode=ctypes.RTLD_GLOBAL)
                except OSError as exc:
                    errors[dep] = str(exc)
                else:
                    progress.append(dep)
            if not progress:
                break
            pending = [dep for dep in pending if dep not in progress]
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            raise OracleMissing(
                f"cannot load {path} ({exc}; dependency errors: {errors}); "
                f"re-run `{FETCH_COMMAND}`."
            ) from exc
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        self.path = path
        self.lib = lib
        self.libc = libc

        c_void_p, c_char_p, c_int = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        pp_char = ctypes.POINTER(ctypes.c_char_p)

        libc.open_memstream.restype = c_void_p
        libc.open_memstream.argtypes = [ctypes.POINTER(c_void_p), ctypes.POINTER(ctypes.c_size_t)]
        libc.fflush.argtypes = [c_void_p]
        libc.fclose.argtypes = [c_void_p]
        libc.free.argtypes = [c_void_p]

        lib.xlu_cfg_init.restype = ctypes.POINTER(_Config)
        lib.xlu_cfg_init.argtypes = [c_void_p, c_char_p]
        lib.xlu_cfg_readdata.restype = c_int
        lib.xlu_cfg_readdata.argtypes = [ctypes.POINTER(_Config), c_char_p, c_int]
        lib.xlu_cfg_destroy.restype = None
        lib.xlu_cfg_destroy.argtypes = [ctypes.POINTER(_Config)]
        lib.xlu_cfg_get_string.restype = c_int
        lib.xlu_cfg_get_string.argtypes = [ctypes.POINTER(_Config), c_char_p, pp_char, c_int]
        lib.xlu_cfg_get_long.restype = c_int
        lib.xlu_cfg_get_long.argtypes = [
            ctypes.POINTER(_Config),
            c_char_p,
            ctypes.POINTER(ctypes.c_long),
            c_int,
        ]
        lib.xlu_cfg_get_list.restype = c_int
        lib.xlu_cfg_get_list.argtypes = [
            ctypes.POINTER(_Config),
            c_char_p,
            ctypes.POINTER(c_void_p),
            ctypes.POINTER(c_int),
            c_int,
        ]
        lib.xlu_cfg_get_listitem.restype = c_char_p
        lib.xlu_cfg_get_listitem.argtypes = [c_void_p, c_int]
        lib.xlu_cfg_get_listitem2.restype = c_void_p
        lib.xlu_cfg_get_listitem2.argtypes = [c_void_p, c_int]
        lib.xlu_cfg_value_type.restype = c_int
        lib.xlu_cfg_value_type.argtypes = [c_void_p]
        lib.xlu_cfg_value_get_list.restype = c_int
        lib.xlu_cfg_value_get_list.argtypes = [
            ctypes.POINTER(_Config),
            c_void_p,
            ctypes.POINTER(c_void_p),
            c_int,
        ]

    def parse(self, data: bytes, source: str) -> OracleConfig:
        buf = ctypes.c_void_p()
        size = ctypes.c_size_t()
        report = self.libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
        if not report:
            raise OSError(ctypes.get_errno(), "open_memstream failed")
        cfg = None
        try:
            cfg = self.lib.xlu_cfg_init(report, source.encode())
            if not cfg:
                raise MemoryError("xlu_cfg_init failed")
            rc = self.lib.xlu_cfg_readdata(cfg, data, len(data))
            self.libc.fflush(report)
            message = ctypes.string_at(buf, size.value).decode("utf-8", "replace")
            if rc:
                raise XlParseError(rc, message)
            return self._read(cfg)
        finally:
            if cfg:
                self.lib.xlu_cfg_destroy(cfg)
            self.libc.fclose(report)
            self.libc.free(buf)

    def _read(self, cfg: "ctypes._Pointer[_Config]") -> OracleConfig:
        names: List[str] = []
        ops: Dict[str, str] = {}
        node = cfg.contents.settings
        # The list is newest first; find() returns the first match, so does this.
        while node:
            name = node.contents.name.decode("utf-8", "surrogateescape")
            if name not in ops:
                names.append(name)
                ops[name] = "+=" if node.contents.op == XLU_OP_ADDITION else "="
            node = node.contents.next
        values: Dict[str, Value] = {}
        longs: Dict[str, Optional[int]] = {}
        for name in reversed(names):
            key = name.encode("utf-8", "surrogateescape")
            lst = ctypes.c_void_p()
            count = ctypes.c_int()
            rc = self.lib.xlu_cfg_get_list(cfg, key, ctypes.byref(lst), ctypes.byref(count), 1)
            if rc == 0:
                values[name] = self._list(cfg, lst, count.value)
                continue
            out = ctypes.c_char_p()
            rc = self.lib.xlu_cfg_get_string(cfg, key, ctypes.byref(out), 1)
            if rc:
                raise AssertionError(f"libxlutil lists {name!r} but returns rc {rc} for it")
            values[name] = (out.value or b"").decode("utf-8", "surrogateescape")
            number = ctypes.c_long()
            rc = self.lib.xlu_cfg_get_long(cfg, key, ctypes.byref(number), 1)
            longs[name] = number.value if rc == 0 else None
        return OracleConfig(values, longs, ops)

    def _list(self, cfg: "ctypes._Pointer[_Config]", lst: ctypes.c_void_p, count: int) -> Value:
        items: List[Value] = []
        for i in range(count):
            text = self.lib.xlu_cfg_get_listitem(lst, i)
            if text is not None:
                items.append(text.decode("utf-8", "surrogateescape"))
                continue
            value = self.lib.xlu_cfg_get_listitem2(lst, i)
            if value and self.lib.xlu_cfg_value_type(value) == XLU_LIST:
                inner = ctypes.c_void_p()
                self.lib.xlu_cfg_value_get_list(cfg, value, ctypes.byref(inner), 1)
                n = 0
                while self.lib.xlu_cfg_get_listitem2(inner, n):
                    n += 1
                items.append(self._list(cfg, inner, n))
            else:
                items.append(None)
        return items


def load() -> _Library:
    """The loaded library; raises OracleMissing (with the fetch command) if absent."""
    global _LOADED  # noqa: PLW0603 - one process-wide handle, loaded once
    if _LOADED is None:
        path = library_path()
        if path is None:
            raise OracleMissing(missing_message())
        _LOADED = _Library(path)
    return _LOADED


def parse(text: Union[str, bytes], source: str = "oracle.cfg") -> OracleConfig:
    """Parse `text` with Xen's libxlutil exactly as `xl create` would read the file."""
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    if b"\x00" in data:
        # libxlutil 4.17 aborts the whole process on a NUL inside a string (an assert in
        # xlu__cfgl_dequote), so it never gets one.
        raise ValueError("libxlutil cannot be given NUL bytes: it aborts the process")
    return load().parse(data, source)


def accepts(text: Union[str, bytes]) -> bool:
    """Whether libxlutil parses `text` without error."""
    try:
        parse(text)
    except XlParseError as exc:
        if exc.rc != errno.EINVAL:
            raise
        return False
    return True


def strtol0(text: str) -> Optional[int]:
    """C `strtol(text, &end, 0)` as xlu_cfg_get_long uses it; None if Xen would refuse."""
    match = _STRTOL0.match(text)
    if match is None:
        return None
    sign, hexdigits, octdigits, decdigits = match.groups()
    if hexdigits is not None:
        value = int(hexdigits, 16)
    elif octdigits is not None:
        value = int(octdigits, 8)
    else:
        value = int(decdigits, 10)
    value = -value if sign == "-" else value
    return value if -(2**63) <= value < 2**63 else None


if __name__ == "__main__":
    import sys

    for path in sys.argv[1:]:
        with open(path, "rb") as handle:
            print(path, parse(handle.read(), path).values)
