"""A small TOML file the daemon follows and commands edit: trust.toml, workers.toml.

Mode 0600, replaced atomically; edits are serialised with a lock on the directory.
Every read checks the file's identity with one `stat`, so an edit applies to the
next read without a restart. A file that cannot be read, parsed or validated is
an error at each read (fail closed) until it is fixed; a missing file is empty.
"""

from __future__ import annotations

import fcntl
import os
import threading
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar

from sandworker.sandbox.atomic import write_atomic

T = TypeVar("T")


class WatchedToml(Generic[T]):
    def __init__(
        self,
        path: Path,
        parse: Callable[[dict[str, Any]], T],
        empty: T,
        error: type[Exception],
    ) -> None:
        self.path, self._parse, self._empty, self._error_type = path, parse, empty, error
        self._stamp: tuple[int, int, int, int] | None = None
        self._value: T = empty
        self._error: Exception | None = None
        self._lock = threading.Lock()  # read from the reactor and from worker threads

    def read(self) -> T:
        """The parsed content, re-read if the file changed; the error if it is unusable."""
        with self._lock:
            return self._read()

    def _read(self) -> T:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._value, self._error = None, self._empty, None
            return self._empty
        except OSError as exc:
            raise self._error_type(f"cannot read {self.path}: {exc.strerror}") from exc
        stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._value, self._error = self._load(st.st_mode), None
            except self._error_type as exc:  # kept, and raised at every read until fixed
                self._value, self._error = self._empty, exc
        if self._error is not None:
            raise self._error
        return self._value

    def _load(self, mode: int) -> T:
        if mode & 0o022:
            raise self._error_type(f"{self.path} is writable by group or others: chmod 600 it")
        try:
            data = tomllib.loads(self.path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise self._error_type(f"cannot read {self.path}: {exc.strerror}") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise self._error_type(f"{self.path}: {exc}") from exc
        return self._parse(data)

    def save(self, content: bytes) -> None:
        try:
            write_atomic(self.path, content, mode=0o600)
        except OSError as exc:
            raise self._error_type(f"cannot write {self.path}: {exc.strerror}") from exc

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise read-modify-write cycles of concurrent commands."""
        try:
            self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise self._error_type(f"cannot open {self.path.parent}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def tables(path: Path, data: dict[str, Any], name: str, error: type[Exception]) -> list[Any]:
    """The `[[name]]` tables of a file that may hold nothing else (each still to check)."""
    unknown = set(data) - {name}
    if unknown:
        raise error(f"{path}: unknown field {sorted(unknown)[0]!r}")
    found = data.get(name, [])
    if not isinstance(found, list):
        raise error(f"{path}: {name}: expected [[{name}]] tables")
    return found
