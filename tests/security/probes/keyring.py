"""Reach keys outside the project through the kernel keyrings.

argv: "plant" DESCRIPTION SECRET: add a user key to the script's session keyring
(another project's run does this first), or "probe" RING KEY DESCRIPTION...: the
supervisor's session keyring and key ids, then key descriptions to look for in
every keyring the script can name. Keyrings are not files: Landlock and the mount
namespace do not cover them, only a private session keyring per script does.
"""

import ctypes
import os
import sys

GET_KEYRING_ID, DESCRIBE, SEARCH, READ = 0, 6, 10, 11
SESSION, USER, USER_SESSION = -3, -4, -5

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


ESCAPES: list[str] = []


def escape(what: str) -> None:
    """Record and go on: every way in is worth reporting. Exit 77 at the end."""
    print(f"ESCAPE: {what}", flush=True)
    ESCAPES.append(what)


def keyctl(*args: object) -> int:
    call = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    return int(libc.syscall(250, *call))


def error() -> str:
    return os.strerror(ctypes.get_errno())


def read(key: int) -> bytes | None:
    buf = ctypes.create_string_buffer(512)
    got = keyctl(READ, key, buf, 512)
    return None if got < 0 else buf.raw[: min(got, 512)]


def probe(ring: int, key: int, descriptions: list[str]) -> None:
    session = keyctl(GET_KEYRING_ID, SESSION, 0)
    print(f"own session keyring: {session}; the supervisor's: {ring}")
    if session == ring:
        escape("the script holds the supervisor's session keyring")
    buf = ctypes.create_string_buffer(512)
    for target, what in ((ring, "the supervisor's session keyring"), (key, "the supervisor's key")):
        if keyctl(DESCRIBE, target, buf, 512) >= 0:
            escape(f"described {what}: {buf.value!r}")
        else:
            print(f"denied: describe {what}: {error()}")
        data = read(target)
        if data is not None:
            escape(f"read {what}: {data!r}")
        else:
            print(f"denied: read {what}: {error()}")
    for name in descriptions:
        for spec in (SESSION, USER, USER_SESSION):
            found = keyctl(SEARCH, spec, b"user", name.encode(), 0)
            if found < 0:
                print(f"denied: search {spec} for {name}: {error()}")
                continue
            escape(f"found key {name!r} ({found}) from keyring {spec}: {read(found)!r}")
            break


def main() -> None:
    print("probe: start", flush=True)
    if sys.argv[1] == "plant":
        name, secret = sys.argv[2].encode(), sys.argv[3].encode()
        key = libc.syscall(248, b"user", name, secret, len(secret), ctypes.c_long(SESSION))
        if key < 0:
            print(f"CONTROL FAILED: add_key: {error()}")
            sys.exit(3)
        print(f"planted key {key} in own session keyring")
        return
    probe(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
    planted = libc.syscall(248, b"user", b"red-was-here", b"red", 3, ctypes.c_long(SESSION))
    print(f"added key {planted} to own session keyring")


main()
print("probe: done", flush=True)
sys.exit(77 if ESCAPES else 0)
