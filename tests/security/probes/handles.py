"""The "shocker" escape: open_by_handle_at needs CAP_DAC_READ_SEARCH in the host's namespace.

Tried directly and from inside a new user namespace.
"""

import ctypes
import os
import sys

AT_FDCWD = -100
CLONE_NEWUSER = 0x10000000

libc = ctypes.CDLL(None, use_errno=True)


class FileHandle(ctypes.Structure):
    _fields_ = [
        ("handle_bytes", ctypes.c_uint),
        ("handle_type", ctypes.c_int),
        ("f_handle", ctypes.c_ubyte * 128),
    ]


def escape(what: str) -> None:
    print(f"ESCAPE: {what}", flush=True)
    sys.exit(77)


def attempt(where: str) -> None:
    handle = FileHandle(128, 0)
    mount_id = ctypes.c_int()
    rc = libc.name_to_handle_at(
        AT_FDCWD, b"/etc/passwd", ctypes.byref(handle), ctypes.byref(mount_id), 0
    )
    if rc != 0:
        print(f"note: name_to_handle_at: {os.strerror(ctypes.get_errno())}")
        return
    mount_fd = os.open("/etc", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = libc.open_by_handle_at(mount_fd, ctypes.byref(handle), os.O_RDONLY)
        if fd >= 0:
            os.close(fd)
            escape(f"open_by_handle_at worked ({where})")
        print(f"denied: open_by_handle_at ({where}): {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(mount_fd)


def main() -> None:
    print("probe: start", flush=True)
    attempt("as the project")
    if libc.unshare(CLONE_NEWUSER) == 0:
        attempt("in a new user namespace")


main()
print("probe: done", flush=True)
