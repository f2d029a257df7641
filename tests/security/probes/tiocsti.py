"""Push input into a terminal: TIOCSTI (also with high bits set) and TIOCLINUX.

The script has no controlling terminal, so every attempt must fail.
"""

import ctypes
import os
import sys

TIOCSTI, TIOCLINUX = 0x5412, 0x541C
TIOCL_PASTESEL = 3

libc = ctypes.CDLL(None, use_errno=True)


def escape(what: str) -> None:
    print(f"ESCAPE: {what}", flush=True)
    sys.exit(77)


def attack(fd: int, where: str) -> None:
    for cmd in (TIOCSTI, TIOCSTI | (1 << 32)):  # CVE-2019-10063: high bits fooled filters
        if libc.ioctl(fd, ctypes.c_ulong(cmd), ctypes.c_char_p(b"#")) == 0:
            escape(f"TIOCSTI {cmd:#x} on {where}")
        print(f"denied: TIOCSTI {cmd:#x} on {where}: {os.strerror(ctypes.get_errno())}")
    sub = ctypes.c_char(TIOCL_PASTESEL)
    if libc.ioctl(fd, ctypes.c_ulong(TIOCLINUX), ctypes.byref(sub)) == 0:
        escape(f"TIOCLINUX on {where}")
    print(f"denied: TIOCLINUX on {where}: {os.strerror(ctypes.get_errno())}")


def main() -> None:
    print("probe: start", flush=True)
    with open("/proc/self/stat") as f:
        tty_nr = int(f.read().rsplit(")", 1)[1].split()[4])
    if tty_nr != 0:
        escape(f"the script has a controlling terminal (tty_nr {tty_nr})")
    for fd in (0, 1, 2):
        if os.isatty(fd):
            escape(f"descriptor {fd} is a terminal")
        attack(fd, f"fd {fd}")
    for path in ("/dev/tty", "/dev/console", "/dev/tty0", "/dev/ptmx"):
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        except OSError as exc:
            print(f"denied: open {path}: {exc.strerror}")
            continue
        try:
            attack(fd, path)
        finally:
            os.close(fd)


main()
print("probe: done", flush=True)
