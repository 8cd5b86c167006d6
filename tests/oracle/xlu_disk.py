"""Xen 4.17's own disk spec parser (`xlu_disk_parse` in libxlutil) as a test oracle.

xl hands every item of `disk = [ ... ]` to `xlu_disk_parse`, which fills a
`libxl_device_disk`. This loads it through ctypes, beside the config parser of
tests/oracle/libxlutil.py (same fetched library, same `OracleMissing` when absent), and
returns the fields a clone's config must get right: target (pdev_path), vdev, whether it
is writable, whether it is a CD-ROM. A spec xl refuses raises `DiskParseError` with
libxlutil's own message.

Field offsets are those of `libxl_device_disk` in Xen 4.17's libxl_types.idl on x86_64
(backend_domid, backend_domname, pdev_path, vdev, backend, format, script, removable,
readwrite, is_cdrom, ...); the tests check them on known specs, so a wrong offset fails
loudly rather than passing.
"""

import ctypes
from typing import Any, Dict, Optional

from tests.oracle import libxlutil

_SIZE = 1024  # larger than libxl_device_disk in 4.17
_PDEV_PATH, _VDEV, _READWRITE, _IS_CDROM = 16, 24, 52, 56


class DiskParseError(Exception):
    """xlu_disk_parse refused the spec; `message` is libxlutil's report."""

    def __init__(self, rc: int, message: str) -> None:
        super().__init__(f"xlu_disk_parse rc {rc}: {message.strip()}")
        self.rc = rc
        self.message = message


def _string_at(buf: Any, offset: int) -> Optional[str]:
    pointer = ctypes.c_void_p.from_buffer(buf, offset).value
    return None if not pointer else ctypes.string_at(pointer).decode("utf-8", "surrogateescape")


def parse_disk(spec: str) -> Dict[str, Any]:
    """What xl makes of one disk spec: target, vdev, readwrite, is_cdrom."""
    lib = libxlutil.load()
    libxl = ctypes.CDLL(lib.path.replace("libxlutil.so", "libxenlight.so"))
    libxl.libxl_device_disk_init.argtypes = [ctypes.c_void_p]
    libxl.libxl_device_disk_dispose.argtypes = [ctypes.c_void_p]
    xlu = lib.lib
    xlu.xlu_disk_parse.restype = ctypes.c_int
    xlu.xlu_disk_parse.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_char_p),
        ctypes.c_void_p,
    ]
    buf = ctypes.create_string_buffer(_SIZE)
    out = ctypes.c_void_p()
    size = ctypes.c_size_t()
    report = lib.libc.open_memstream(ctypes.byref(out), ctypes.byref(size))
    cfg = xlu.xlu_cfg_init(report, b"disk-oracle")
    libxl.libxl_device_disk_init(buf)
    try:
        specs = (ctypes.c_char_p * 1)(spec.encode("utf-8", "surrogateescape"))
        rc = xlu.xlu_disk_parse(ctypes.cast(cfg, ctypes.c_void_p), 1, specs, buf)
        lib.libc.fflush(report)
        message = ctypes.string_at(out, size.value).decode("utf-8", "replace")
        if rc:
            raise DiskParseError(rc, message)
        return {
            "target": _string_at(buf, _PDEV_PATH),
            "vdev": _string_at(buf, _VDEV),
            "readwrite": ctypes.c_int.from_buffer(buf, _READWRITE).value,
            "is_cdrom": ctypes.c_int.from_buffer(buf, _IS_CDROM).value,
        }
    finally:
        libxl.libxl_device_disk_dispose(buf)
        xlu.xlu_cfg_destroy(cfg)
        lib.libc.fclose(report)
        lib.libc.free(out)
