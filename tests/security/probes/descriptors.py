"""The script inherits only stdin (/dev/null) and its two output pipes."""

import os
import sys


def escape(what: str) -> None:
    print(f"ESCAPE: {what}", flush=True)
    sys.exit(77)


def main() -> None:
    print("probe: start", flush=True)
    targets = {}
    for name in sorted(os.listdir("/proc/self/fd"), key=int):
        try:
            targets[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:  # the descriptor listdir itself used, closed by now
            continue
    print(f"descriptors: {targets}")
    if targets.get(0) != "/dev/null":
        escape(f"stdin is {targets.get(0)!r}, not /dev/null")
    for fd in (1, 2):
        if not targets.get(fd, "").startswith("pipe:"):
            escape(f"descriptor {fd} is {targets.get(fd)!r}, not a pipe")
    extra = {fd: target for fd, target in targets.items() if fd > 2}
    if extra:
        escape(f"inherited descriptors: {extra}")


main()
print("probe: done", flush=True)
