"""Ticket directories made ahead, so that accepting a ticket creates no inode.

On the disks this runs on, creating an inode (a directory or a file) costs about 0.5 ms,
and a ticket needs four: its directory, request.json, state.json and log.jsonl. A thread
of its own keeps `KEEP` such directories ready under `<state>/prepared`, with the files
empty and fsynced; `TicketStore.create` fills the files, fsyncs them, renames the
directory into `tickets/` and fsyncs that. A crash before the rename leaves a prepared
directory, never a ticket: the next start removes every one it finds.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import Mapping
from pathlib import Path

from sandworker.sandbox.atomic import write_all

from .ticketdir import DIR_FLAGS, REQUEST_FILE, STATE_FILE, check_private, remove_dir
from .ticketlog import LOG_FILE

KEEP = 2  # directories kept ready: enough for a burst of starts between two refills
FILES = (REQUEST_FILE, STATE_FILE, LOG_FILE)
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
log = logging.getLogger(__name__)


class Prepared:
    def __init__(self, path: Path) -> None:
        """Open (creating it) the directory and remove what an earlier run left there."""
        path.mkdir(mode=0o700, exist_ok=True)
        self.path, self.fd = path, os.open(path, DIR_FLAGS)
        try:
            check_private(self.fd, path)
            for name in os.listdir(self.fd):
                remove_dir(self.fd, name)
        except BaseException:
            os.close(self.fd)
            raise
        self._ready: list[str] = []
        self._lock, self._wanted = threading.Lock(), threading.Event()
        self._closed, self._failing = False, False
        self._thread = threading.Thread(target=self._run, name="prepare-tickets", daemon=True)
        self._thread.start()
        self._wanted.set()

    @property
    def ready(self) -> int:
        return len(self._ready)

    def take(self) -> str | None:
        """The name of a ready directory (its files empty), or None if there is none yet."""
        with self._lock:
            name = self._ready.pop() if self._ready else None
        self._wanted.set()
        return name

    def place(self, name: str, files: Mapping[str, bytes], dst_fd: int, key: str) -> None:
        """Write and fsync files of a directory `take` gave, then rename it to `key` in the
        directory `dst_fd` (the caller fsyncs that)."""
        dir_fd = os.open(name, DIR_FLAGS, dir_fd=self.fd)
        try:
            for file, data in files.items():
                fd = os.open(file, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                try:
                    write_all(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
        finally:
            os.close(dir_fd)
        os.rename(name, key, src_dir_fd=self.fd, dst_dir_fd=dst_fd)

    def discard(self, name: str) -> None:
        """A directory `take` gave that could not be placed."""
        remove_dir(self.fd, name)

    def close(self) -> None:
        """Stop the thread and remove the directories nobody took."""
        self._closed = True
        self._wanted.set()
        self._thread.join()
        for name in self._ready:
            remove_dir(self.fd, name)
        os.close(self.fd)

    def _run(self) -> None:
        while self._wanted.wait() and not self._closed:
            self._wanted.clear()
            while not self._closed and len(self._ready) < KEEP:
                try:
                    name = self._make()
                except OSError as exc:  # a full disk: tickets are created the slow way
                    if not self._failing:
                        log.warning("cannot prepare a ticket directory in %s: %s", self.path, exc)
                    self._failing = True
                    break
                self._failing = False
                with self._lock:
                    self._ready.append(name)

    def _make(self) -> str:
        name = secrets.token_hex(8)
        os.mkdir(name, 0o700, dir_fd=self.fd)
        try:
            dir_fd = os.open(name, DIR_FLAGS, dir_fd=self.fd)
            try:
                os.fchmod(dir_fd, 0o700)
                for file in FILES:
                    os.close(os.open(file, _NEW, 0o600, dir_fd=dir_fd))
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            os.fsync(self.fd)
        except OSError:
            remove_dir(self.fd, name)
            raise
        return name
