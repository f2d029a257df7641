"""Connect to a TCP port the host side listens on at 127.0.0.1 (network = none).

argv: the port. A listener red opens itself on loopback must work (control).
"""

import socket
import sys


def escape(what: str) -> None:
    print(f"ESCAPE: {what}", flush=True)
    sys.exit(77)


def main() -> None:
    print("probe: start", flush=True)
    port = int(sys.argv[1])
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            print(f"denied: socket {family!r}: {exc}")
            continue
        with sock:
            sock.settimeout(3)
            try:
                sock.connect((host, port))
            except OSError as exc:
                print(f"denied: connect {host}:{port}: {exc}")
            else:
                escape(f"connected to the host's listener at {host}:{port}")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=3):
            print("control: own loopback listener works")


main()
print("probe: done", flush=True)
