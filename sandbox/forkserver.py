"""The zygote: a single-threaded root process that forks one launcher child per script.

Started once by the supervisor as ``<python> -I -S <this file>`` (see zygote.py for
the supervisor's side). It has already imported everything the launcher needs, so
a script's set-up starts from a fork instead of an interpreter start.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import sys

if __package__:
    from . import kernel
    from .launcher import GO_FD, STATUS_FD, fail, launch
    from .spec import LaunchSpec
else:  # run by path with -I -S: no site-packages, so load the siblings directly
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import kernel  # type: ignore[no-redef,import-not-found]
    from launcher import GO_FD, STATUS_FD, fail, launch  # type: ignore[no-redef,import-not-found]
    from spec import LaunchSpec  # type: ignore[no-redef,import-not-found]

# The zygote ---------------------------------------------------------------------------------
# Starting a Python interpreter costs ~15 ms here, bwrap ~3 ms. So the supervisor starts this
# file once as a zygote: a single-threaded root process that has already imported everything
# and forks one child per script. Protocol on the SOCK_SEQPACKET socket at descriptor 3:
#   supervisor -> zygote: JSON LaunchSpec, with SCM_RIGHTS [stdin, stdout, stderr, status,
#                         home, cwd, go] (descriptors 0, 1, 2, 4, 5, 6, 7 in the child)
#   zygote -> supervisor: {"spawned": pid} | {"exit": pid, "status": raw wait status}
# EOF from the supervisor (it died or closed us) kills every child and ends the zygote.

SOCKET_FD = 3
TARGET_FDS = (0, 1, 2, STATUS_FD, 5, 6, GO_FD)
MAX_MESSAGE = 1 << 20


def _child(spec: LaunchSpec, fds: list[int], sock: socket.socket) -> None:
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        sock.close()
        os.setsid()
        for src, dst in zip(fds, TARGET_FDS, strict=True):
            os.dup2(src, dst, inheritable=dst <= 2)
        for low, high in ((STATUS_FD + 1, 5), (GO_FD + 1, 65536)):
            os.closerange(low, high)
        os.closerange(3, STATUS_FD)
        launch(spec)
    except BaseException as exc:
        fail(f"{type(exc).__name__}: {exc}")
    os._exit(127)


def serve() -> None:
    sock = socket.socket(fileno=SOCKET_FD)
    # Orphans of our children (an init whose launcher died) come back to us to be reaped.
    kernel.prctl(kernel.PR_SET_CHILD_SUBREAPER, 1)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: set[int] = set()
    while True:
        ready, _, _ = select.select([sock.fileno(), wake_r], [], [])
        if wake_r in ready:
            while True:
                try:
                    os.read(wake_r, 4096)
                except BlockingIOError:
                    break
            _reap(sock, children)
        if sock.fileno() in ready:
            try:
                data, ancdata, _flags, _ = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(4 * 8))
            except ConnectionResetError:
                data, ancdata = b"", []
            if not data:
                for pid in children:
                    os.kill(pid, signal.SIGKILL)
                os._exit(0)
            fds = _received_fds(ancdata)
            pid = os.fork()
            if pid == 0:
                _child(json.loads(data), fds, sock)
            for fd in fds:
                os.close(fd)
            children.add(pid)
            sock.send(json.dumps({"spawned": pid}).encode())


def _received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds.extend(struct.unpack(f"{usable // 4}i", payload[:usable]))
    return fds


def _reap(sock: socket.socket, children: set[int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in children:
            children.discard(pid)
            sock.send(json.dumps({"exit": pid, "status": status}).encode())


if __name__ == "__main__":
    serve()
