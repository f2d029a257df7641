"""Durable small files: write to temporary names, fsync, rename, fsync the directory."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new file."""
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        replace_files(dir_fd, {path.name: data}, mode=mode)
    finally:
        os.close(dir_fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def replace_files(
    dir_fd: int,
    files: Mapping[str, bytes],
    *,
    mode: int = 0o600,
) -> None:
    """Replace files of one directory (its descriptor) so that a crash leaves each either
    old or new: every temporary file is written before any is fsynced, then all are renamed
    and the directory is fsynced once."""
    written: list[tuple[str, str, int]] = []  # (temporary name, name, open descriptor)
    try:
        for name, data in files.items():
            tmp = f".{name}.tmp-{os.getpid()}"
            written.append((tmp, name, os.open(tmp, _TMP_FLAGS, mode, dir_fd=dir_fd)))
            os.fchmod(written[-1][2], mode)
            write_all(written[-1][2], data)
        for _tmp, _name, fd in written:
            os.fsync(fd)
    except BaseException:
        for tmp, _name, _fd in written:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
        raise
    finally:
        for _tmp, _name, fd in written:
            os.close(fd)
    for tmp, name, _fd in written:
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    os.fsync(dir_fd)
