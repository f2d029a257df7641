"""Attach to, or read the memory of, any process that is not red's own.

argv: blue's host pids. Every pid visible in /proc is tried as well (init is
root). A pid that turns out to be one of red's own processes is skipped: red
may trace itself.
"""

import ctypes
import os
import sys

PTRACE_ATTACH, PTRACE_DETACH = 16, 17
EFAULT = 14

libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.process_vm_readv.restype = ctypes.c_ssize_t


class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def escape(what: str) -> None:
    print(f"ESCAPE: {what}", flush=True)
    sys.exit(77)


def ours(pid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}").st_uid == os.getuid()
    except FileNotFoundError:
        return False


def error() -> str:
    return os.strerror(ctypes.get_errno())


def main() -> None:
    print("probe: start", flush=True)
    visible = {int(name) for name in os.listdir("/proc") if name.isdigit()}
    targets = sorted({*(int(a) for a in sys.argv[1:]), *visible})
    for pid in targets:
        if ours(pid):
            continue
        if libc.ptrace(PTRACE_ATTACH, pid, None, None) == 0:
            libc.ptrace(PTRACE_DETACH, pid, None, None)
            escape(f"PTRACE_ATTACH to pid {pid}")
        print(f"denied: ptrace attach {pid}: {error()}")
        buf = ctypes.create_string_buffer(64)
        local = IoVec(ctypes.cast(buf, ctypes.c_void_p), 64)
        remote = IoVec(0x400000, 64)
        got = libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if got >= 0 or ctypes.get_errno() == EFAULT:  # EFAULT: the permission check passed
            escape(f"process_vm_readv of pid {pid} passed the permission check")
        print(f"denied: process_vm_readv {pid}: {error()}")
        try:
            with open(f"/proc/{pid}/mem", "rb"):
                escape(f"opened /proc/{pid}/mem")
        except OSError as exc:
            print(f"denied: open /proc/{pid}/mem: {exc.strerror}")
    # control: tracing our own child works, so a denial above is the sandbox's doing
    child = os.fork()
    if child == 0:
        os.execv("/bin/sleep", ["sleep", "30"])
    ok = libc.ptrace(PTRACE_ATTACH, child, None, None) == 0
    print(f"control: ptrace attach to own child: {'allowed' if ok else error()}")
    os.kill(child, 9)
    os.waitpid(child, 0)


main()
print("probe: done", flush=True)
