"""Connect to an abstract unix socket that the host side listens on.

argv: the socket's name (without the leading NUL). A socket red binds itself
must still work (control), so a refusal is the sandbox's doing.
"""

import os
import socket
import sys


def escape(what: str) -> None:
    print(f"ESCAPE: {what}", flush=True)
    sys.exit(77)


def main() -> None:
    print("probe: start", flush=True)
    name = "\0" + sys.argv[1]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(3)
        try:
            sock.connect(name)
        except OSError as exc:
            print(f"denied: connect @{sys.argv[1]}: {exc}")
        else:
            escape(f"connected to the host's abstract socket @{sys.argv[1]}")
    for kind in (socket.SOCK_DGRAM, socket.SOCK_SEQPACKET):
        with socket.socket(socket.AF_UNIX, kind) as sock:
            try:
                sock.connect(name)
                sock.send(b"hello")
            except OSError as exc:
                print(f"denied: {kind!r} @{sys.argv[1]}: {exc}")
            else:
                escape(f"{kind!r} reached the host's abstract socket")
    own = f"\0red-own-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(own)
        server.listen(1)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            try:
                client.connect(own)
            except OSError as exc:
                print(f"CONTROL FAILED: own abstract socket: {exc}")
                sys.exit(3)
    print("control: own abstract socket works")


main()
print("probe: done", flush=True)
