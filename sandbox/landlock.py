"""Landlock through ctypes: probe the ABI, build a ruleset, restrict self.

Imported by the launcher by path, so only the standard library is used.
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_VERSION_FLAG = 1
_RULE_PATH_BENEATH = 1

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_ALL_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1, 2
# access rights that make sense on a regular file (a rule on a file may not carry dir rights)
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | (1 << 14) | (1 << 15)  # + TRUNCATE, IOCTL_DEV


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def abi_version() -> int:
    """The kernel's Landlock ABI, or 0 when Landlock is unavailable or disabled."""
    rc = _syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_VERSION_FLAG))
    return max(int(rc), 0)


def all_fs_rights(abi: int) -> int:
    best = max((k for k in _ALL_BY_ABI if k <= abi), default=0)
    return _ALL_BY_ABI.get(best, 0)


def _fail(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"landlock {what}: {os.strerror(err)}")


def restrict(
    read_only: list[str], read_write: list[str], *, scoped: bool, list_only: list[str] | None = None
) -> int:
    """Allow RX on `read_only`, everything on `read_write`, directory listing only on
    `list_only`, and deny the rest; return the ABI.

    Paths that do not exist are skipped. The caller must have set no_new_privs.
    """
    abi = abi_version()
    if abi < 1:
        raise OSError(95, "landlock: not supported by this kernel")
    handled = all_fs_rights(abi)
    scope = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if scoped and abi >= 6 else 0
    attr = _RulesetAttr(handled, 0, scope)
    size = ctypes.sizeof(attr) if abi >= 6 else 16
    ruleset = int(_syscall(_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0))
    if ruleset < 0:
        raise _fail("create_ruleset")
    try:
        rx = EXECUTE | READ_FILE | READ_DIR
        for paths, rights in ((list_only or [], READ_DIR), (read_only, rx), (read_write, handled)):
            for path in paths:
                _add(ruleset, path, rights & handled)
        if _syscall(_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            raise _fail("restrict_self")
    finally:
        os.close(ruleset)
    return abi


def _add(ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if not os.path.isdir(f"/proc/self/fd/{fd}"):
            rights &= _FILE_RIGHTS
        rule = _PathBeneath(rights, fd)
        rc = _syscall(_ADD_RULE, ctypes.c_int(ruleset), _RULE_PATH_BENEATH, ctypes.byref(rule), 0)
        if rc != 0:
            raise _fail(f"add_rule {path}")
    finally:
        os.close(fd)
