"""One ticket's directory on disk (the layout is in tickets.py), and its errors.

Everything is reached through the tickets directory's descriptor with O_NOFOLLOW; the
directories are 0700 and the files 0600, root's.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sandworker.sandbox.atomic import replace_files, write_all

from .ticketlog import LOG_FILE

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
REQUEST_FILE, STATE_FILE = "request.json", "state.jsonl"


class TicketError(Exception):
    """Base of every ticket error (here and in tickets.py)."""


class TicketStoreError(TicketError):
    """A ticket could not be persisted or read; the message names the ticket and the cause."""


@dataclass
class TicketDir:
    """One ticket's directory, reached through the tickets directory's descriptor."""

    parent_fd: int
    key: str
    path: Path

    def fd(self) -> int:
        """A descriptor of the directory (the caller closes it)."""
        return os.open(self.key, DIR_FLAGS, dir_fd=self.parent_fd)

    def open(self, name: str, flags: int, mode: int = 0o600) -> int:
        dir_fd = self.fd()
        try:
            return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)

    def check_private(self, *, fix: bool = False) -> None:
        fd = self.fd()
        try:
            check_private(fd, self.path, fix=fix)
        finally:
            os.close(fd)

    def read(self, name: str) -> bytes | None:
        try:
            fd = self.open(name, os.O_RDONLY)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as file:
            return file.read()

    def write(self, files: Mapping[str, bytes]) -> None:
        """Replace files of the ticket's directory atomically (see `replace_files`)."""
        dir_fd = self.fd()
        try:
            replace_files(dir_fd, files)
        finally:
            os.close(dir_fd)

    def append(self, name: str, data: bytes, also: Callable[[], None] = lambda: None) -> None:
        """Append `data` to a file and fsync it (`also` before: another file's fsync); on
        failure nothing of it stays in the file."""
        fd = self.open(name, os.O_WRONLY | os.O_APPEND)
        try:
            end = os.fstat(fd).st_size
            try:
                write_all(fd, data)
                also()
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, end)
                raise
        finally:
            os.close(fd)

    def cut(self, name: str, length: int) -> None:
        """Truncate a file to `length` bytes (a torn last record) and fsync it."""
        fd = self.open(name, os.O_WRONLY)
        try:
            os.ftruncate(fd, length)
            os.fsync(fd)
        finally:
            os.close(fd)

    def log_opener(self) -> Callable[[int], int]:
        """How TicketLog opens this ticket's log.jsonl (relative to the directory)."""
        return lambda flags: self.open(LOG_FILE, flags)


def stored_artifact(index: int) -> str:
    """The file in a ticket's directory that keeps its `index`th artifact (artifacts.py)."""
    return f"artifact-{index}"


def store_error(
    ticket_id: str, state_dir: Path, exc: OSError, verb: str = "persist"
) -> TicketStoreError:
    cause = exc.strerror or str(exc)
    return TicketStoreError(f"cannot {verb} ticket {ticket_id}: {cause} (state dir {state_dir})")


def remove_dir(parent_fd: int, name: str, *, strict: bool = False) -> None:
    """Unlink a ticket directory's files (request.json first, so a half-removed ticket is
    never resurrected), then the directory. Never recursive: a subdirectory is an error."""
    try:
        dir_fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
        try:
            for file in sorted(os.listdir(dir_fd), key=lambda file: file != REQUEST_FILE):
                os.unlink(file, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        os.rmdir(name, dir_fd=parent_fd)
    except OSError:
        if strict:
            raise


def check_private(fd: int, path: Path, *, fix: bool = False) -> None:
    """A directory of ours that nobody else may write; `fix` sets 0700 on a new one."""
    if fix:
        os.fchmod(fd, 0o700)
    info = os.fstat(fd)
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise TicketStoreError(
            f"{path} must be owned by uid {os.geteuid()} and writable by nobody else"
            f" (it is uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o})"
        )
