"""The supervisor's handle on the pre-forked launcher (forkserver.py).

One zygote per Sandbox, started on first use. Thread-safe: `spawn` and `status`
may be called from several threads; every message read from the zygote is
filed under its pid, so nobody's exit status is lost.
"""

from __future__ import annotations

import array
import fcntl
import json
import os
import socket
import threading
from pathlib import Path

FORKSERVER = str(Path(__file__).with_name("forkserver.py"))
MAX_MESSAGE = 1 << 16


class ZygoteError(RuntimeError):
    """The launcher process is gone or answered nonsense."""


class Zygote:
    _shared: dict[str, Zygote] = {}  # noqa: RUF012 - one zygote per interpreter per process
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls, python: str) -> Zygote:
        with cls._shared_lock:
            if python not in cls._shared:
                cls._shared[python] = cls(python)
            return cls._shared[python]

    def __init__(self, python: str) -> None:
        self._python = python
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._pid: int | None = None
        self._exits: dict[int, int] = {}

    def _ensure(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        try:
            high = fcntl.fcntl(theirs.fileno(), fcntl.F_DUPFD_CLOEXEC, 10)
            self._pid = os.posix_spawn(
                self._python,
                [self._python, "-I", "-S", FORKSERVER],
                {},
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, null, 0),
                    (os.POSIX_SPAWN_DUP2, null, 1),
                    (os.POSIX_SPAWN_DUP2, high, 3),  # the zygote finds its socket here
                ],
                setsid=True,
            )
            os.close(high)
        finally:
            os.close(null)
            theirs.close()
        self._sock = ours
        return ours

    def spawn(self, spec: object, fds: list[int]) -> int:
        """Fork a launcher child with `fds` as its 0, 1, 2, 4, 5, 6, 7; return its pid."""
        data = json.dumps(spec).encode()
        with self._lock:
            sock = self._ensure()
            sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            while True:
                message = self._read(sock)
                if "spawned" in message:
                    return int(message["spawned"])

    def status(self, pid: int) -> int:
        """Block until the zygote reports `pid`'s raw wait status."""
        with self._lock:
            while pid not in self._exits:
                if self._sock is None:
                    raise ZygoteError(f"launcher gone before reporting pid {pid}")
                self._read(self._sock)
            return self._exits.pop(pid)

    def alive(self) -> bool:
        """False once the zygote process has died (it is then restarted on the next spawn)."""
        with self._lock:
            if self._pid is None:
                return False
            pid, _status = os.waitpid(self._pid, os.WNOHANG)
            if pid == 0:
                return True
            self._pid = None
            self.close()
            return False

    def _read(self, sock: socket.socket) -> dict[str, int]:
        data = sock.recv(MAX_MESSAGE)
        if not data:
            self.close()
            raise ZygoteError("the launcher zygote exited unexpectedly")
        message: dict[str, int] = json.loads(data)
        if "exit" in message:
            self._exits[int(message["exit"])] = int(message["status"])
        return message

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()  # EOF: the zygote kills its children and exits
            self._sock = None
        if self._pid is not None:
            os.waitpid(self._pid, 0)
            self._pid = None
