"""Gain power through a new user namespace: read blue's files, mount, leave the root.

argv: blue's working directory on the host. Creating the namespace may work
(the kernel allows it); what it must not bring is access to anything new.
"""

import ctypes
import os
import sys

CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
MS_BIND, MS_REC = 4096, 16384

libc = ctypes.CDLL(None, use_errno=True)


def escape(what: str) -> None:
    print(f"ESCAPE: {what}", flush=True)
    sys.exit(77)


def error() -> str:
    return os.strerror(ctypes.get_errno())


def try_read(path: str) -> None:
    try:
        with open(path, "rb") as f:
            data = f.read(200)
    except OSError as exc:
        print(f"denied: read {path}: {exc.strerror}")
    else:
        escape(f"read {path} from a user namespace: {data!r}")


def try_mount(source: str, target: str, fstype: str | None, flags: int) -> None:
    rc = libc.mount(source.encode(), target.encode(), fstype and fstype.encode(), flags, None)
    if rc == 0:
        escape(f"mounted {fstype or 'bind'} {source} on {target} from a user namespace")
    print(f"denied: mount {fstype or 'bind'} {source} on {target}: {error()}")


def main() -> None:
    print("probe: start", flush=True)
    blue = sys.argv[1]
    if libc.unshare(CLONE_NEWUSER) != 0:
        print(f"denied: unshare(CLONE_NEWUSER): {error()}")
        return
    print(f"unshare(CLONE_NEWUSER) worked; uid now {os.getuid()}")
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {sys.argv[2]} 1")):
        try:
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
            print(f"wrote /proc/self/{name}")
        except OSError as exc:
            print(f"note: write /proc/self/{name}: {exc.strerror}")
    for path in (f"{blue}/canary.txt", "/etc/shadow", "/proc/1/environ"):
        try_read(path)
    if libc.unshare(CLONE_NEWNS) != 0:
        print(f"denied: unshare(CLONE_NEWNS): {error()}")
    else:
        print("unshare(CLONE_NEWNS) worked")
        try_mount("none", "/tmp", "tmpfs", 0)
        try_mount("/", "/tmp", None, MS_BIND | MS_REC)
        try_mount("proc", "/tmp", "proc", 0)
    # the classic chroot escape: chroot into a subdirectory, climb out with "..", chroot "."
    os.makedirs("jail", exist_ok=True)
    if libc.chroot(b"jail") != 0:
        print(f"denied: chroot: {error()}")
    else:
        for _ in range(64):
            os.chdir("..")
        libc.chroot(b".")
        print(f"after the chroot escape / holds: {sorted(os.listdir('/'))}")
    for path in ("/.oldroot", blue, "/work", "/root", "/var", "/sys", "/home"):
        if os.path.exists(path):
            escape(f"{path} is visible after the chroot escape")
        print(f"denied: {path} not visible")
    try_read(f"{blue}/canary.txt")


main()
print("probe: done", flush=True)
