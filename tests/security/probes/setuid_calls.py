"""Become root, or another project, with the set*id system calls."""

import os
import sys


def escape(what: str) -> None:
    print(f"ESCAPE: {what}", flush=True)
    sys.exit(77)


def main() -> None:
    print("probe: start", flush=True)
    blue = int(sys.argv[1])
    attempts = {
        "setuid(0)": lambda: os.setuid(0),
        "setgid(0)": lambda: os.setgid(0),
        "setresuid(0,0,0)": lambda: os.setresuid(0, 0, 0),
        "seteuid(0)": lambda: os.seteuid(0),
        "setgroups([0])": lambda: os.setgroups([0]),
        f"setuid({blue})": lambda: os.setuid(blue),
        f"setresgid({blue})": lambda: os.setresgid(blue, blue, blue),
    }
    for name, call in attempts.items():
        try:
            call()
        except OSError as exc:
            print(f"denied: {name}: {exc.strerror}")
        else:
            escape(f"{name} worked; now uid {os.getresuid()} gid {os.getresgid()}")


main()
print("probe: done", flush=True)
