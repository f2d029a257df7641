"""The one seam for OS side effects that Python's os module lacks.

Namespaces, mounts, pivot_root, prctl, capabilities and mount_setattr go
through ctypes here. The launcher imports this file by path (it runs with
``-I -S``), so it must import only the standard library. Every call checks its
return value and raises OSError with the errno and a readable name.
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_SET_CHILD_SUBREAPER = 36
PR_CAPBSET_DROP = 24

SYS_PIVOT_ROOT = 155
SYS_CAPSET = 126
SYS_MOUNT_SETATTR = 442
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None
) -> None:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else os.fsencode(s)

    rc = _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))
    _check(rc, f"mount {source or ''} on {target}")


def umount2(target: str, flags: int) -> None:
    _check(_libc.umount2(os.fsencode(target), ctypes.c_int(flags)), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    rc = _syscall(SYS_PIVOT_ROOT, os.fsencode(new_root), os.fsencode(put_old))
    _check(rc, "pivot_root")


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def restrict_mount_recursive(target: str, *, readonly: bool) -> None:
    """Set nosuid and nodev (and read-only) on a mount and every mount below it."""
    flags = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | (MOUNT_ATTR_RDONLY if readonly else 0)
    attr = _MountAttr(flags, 0, 0, 0)
    rc = _syscall(
        SYS_MOUNT_SETATTR,
        ctypes.c_int(-100),  # AT_FDCWD
        os.fsencode(target),
        ctypes.c_uint(AT_RECURSIVE),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    _check(rc, f"mount_setattr {target}")


def prctl(option: int, arg2: int = 0) -> int:
    rc = _libc.prctl(
        ctypes.c_int(option),
        ctypes.c_ulong(arg2),
        ctypes.c_ulong(0),
        ctypes.c_ulong(0),
        ctypes.c_ulong(0),
    )
    return _check(rc, f"prctl({option})")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def keep_only_capabilities(caps: int) -> None:
    """Reduce this process's capability sets to the given bit mask (caps < 32)."""
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)(_CapData(caps, caps, 0), _CapData(0, 0, 0))
    _check(_syscall(SYS_CAPSET, ctypes.byref(header), ctypes.byref(data)), "capset")


def drop_bounding_set() -> None:
    """Empty the capability bounding set: nothing exec'd later can ever gain a capability."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        prctl(PR_CAPBSET_DROP, cap)


SYS_KEYCTL = 250
KEYCTL_JOIN_SESSION_KEYRING = 1


def new_session_keyring() -> None:
    """Join a fresh anonymous session keyring: keys the supervisor's session holds are no
    longer possessed by this process. No-op on kernels built without keys."""
    rc = _syscall(SYS_KEYCTL, ctypes.c_int(KEYCTL_JOIN_SESSION_KEYRING), None)
    if rc < 0 and ctypes.get_errno() != 38:  # ENOSYS
        _check(rc, "keyctl(JOIN_SESSION_KEYRING)")
