"""`sandworker serve --daemonize --pidfile FILE [--log-file FILE]`, for hosts without systemd.

python-daemon's DaemonContext detaches (double fork, new session, umask 077, `/` as the
working directory, every other descriptor closed, the standard streams to the log file)
before the daemon opens anything: its listeners, threads and launcher come after. The
pidfile is ours: locked with fcntl for the daemon's whole life, so a crashed daemon never
leaves a stale lock (the kernel drops it with the process), and a second daemon on the
same pidfile is refused. The command returns only once the daemon is ready (exit 0), or
with its start-up error (exit 2): the daemon reports over a pipe, as READY=1 would.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import signal
import sys
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from .config import load_config

EXIT_START = 2


class PidFileError(Exception):
    pass


class PidFile:
    """A pidfile held with an fcntl lock (a context manager, as DaemonContext wants)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def holder(self) -> int | None:
        """The pid of the live daemon that holds the lock, else None."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                text = os.pread(fd, 32, 0).decode(errors="replace").strip()
                return int(text) if text.isdigit() else -1
            return None
        finally:
            os.close(fd)

    def __enter__(self) -> PidFile:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.path, flags, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise PidFileError(f"{self.path} is held by a running daemon") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # (while the lock is still held: nobody else has it)
            os.close(self._fd)
            self._fd = None


class Ready:
    """The detached daemon's end of the start-up pipe."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    def say(self, text: str) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.write(self.fd, text.encode() + b"\n")
            os.close(self.fd)
            self.fd = None


def start(args: argparse.Namespace) -> Ready:
    """`serve --daemonize`: check what can be checked here, then detach."""
    if not args.pidfile:
        raise PidFileError("--daemonize needs --pidfile FILE")
    args.config = str(Path(args.config).absolute())  # (the daemon's directory is /)
    load_config(Path(args.config))  # (its problems shown here, before detaching)
    log_file = Path(args.log_file).absolute() if args.log_file else None
    return detach(Path(args.pidfile), log_file)


def detach(pidfile: Path, log_file: Path | None) -> Ready:
    """Become the detached daemon (the caller's process waits for its word, then exits)."""
    pidfile = pidfile.absolute()  # (the daemon's working directory is /)
    held = PidFile(pidfile).holder()
    if held is not None:
        raise PidFileError(f"{pidfile} is held by a running daemon (pid {held})")
    log: TextIO = open(log_file or os.devnull, "a", buffering=1)  # noqa: SIM115 - kept open
    if log_file is not None:
        os.chmod(log_file, 0o600)
    read, write = os.pipe()
    if os.fork() > 0:  # the command: wait for the daemon to say it is ready
        os.close(write)
        sys.exit(_wait(read))
    os.close(read)
    context = _context_class()(
        umask=0o077,
        detach_process=True,
        signal_map={},  # the daemon installs its own handlers once the reactor runs
        stdout=log,
        stderr=log,
        files_preserve=[write, log.fileno()],
        pidfile=PidFile(pidfile),
    )
    try:
        context.open()
    except PidFileError as exc:
        os.write(write, f"sandworker: cannot start: {exc}\n".encode())
        os._exit(EXIT_START)
    os.set_inheritable(write, False)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return Ready(write)


def _wait(read: int) -> int:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(read, 4096)
        if not chunk:
            break
        data += chunk
    text = data.decode(errors="replace").strip()
    if text.startswith("ready"):
        print(f"sandworker: {text}")
        return 0
    print(text or "sandworker: the daemon exited before it was ready", file=sys.stderr)
    return EXIT_START


def _context_class() -> Any:
    import daemon  # type: ignore[import-untyped]  # noqa: PLC0415 - python-daemon

    context = getattr(daemon, "DaemonContext", None)
    if context is None:
        raise PidFileError(
            f"the module 'daemon' found at {daemon.__file__} is not python-daemon"
            " (run sandworker from outside its source tree)"
        )
    return context
