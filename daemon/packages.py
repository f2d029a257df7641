"""Each project's package cache: `<state>/packages/<project>/<name>`, root's, 0600.

An upload (`PUT /v1/projects/{project}/packages/{name}`, the SHA-256 in the
`Sandworker-Sha256` header) is refused before anything is written when the state
filesystem lacks room for it (plus RESERVE); it is copied into a hidden temporary file
beside its place, hashed on the way, fsynced, and renamed into place only if the hash is
the one announced. A crash leaves at most a temporary file, which the next upload of
that name replaces. Names are one path component of letters, digits, `.`, `-`, `_`,
ending in .zip, .tar.gz, .tgz or .nupkg.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path
from typing import BinaryIO

from sandworker.sandbox.atomic import write_all
from sandworker.sandbox.projects import validate_project

RESERVE = 64 << 20  # bytes left free on the state filesystem after an upload
CHUNK = 1 << 20
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}\.(zip|tar\.gz|tgz|nupkg)")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class PackageError(Exception):
    """The upload is refused; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_name(name: str) -> str:
    if _NAME.fullmatch(name) is None or ".." in name:
        raise PackageError(400, f"package name {name!r}: use letters, digits, '.', '-', '_',"
                           " ending in .zip, .tar.gz, .tgz or .nupkg")  # fmt: skip
    return name


def check_sha256(value: str | None) -> str:
    wanted = (value or "").strip().lower()
    if _SHA256.fullmatch(wanted) is None:
        raise PackageError(400, "send the package's SHA-256 (64 hex digits) in the"
                           " Sandworker-Sha256 header")  # fmt: skip
    return wanted


class PackageCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def store(self, project: str, name: str, body: BinaryIO, length: int, sha256: str) -> str:
        """Keep one upload (blocking: run it in a thread); its path, once verified."""
        validate_project(project)
        check_name(name)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        free = os.statvfs(self.root)
        room = free.f_bavail * free.f_frsize - RESERVE
        if length > room:
            raise PackageError(507, f"the package is {length} bytes and the state filesystem"
                               f" has room for {max(room, 0)}; free space and retry")  # fmt: skip
        root_fd = os.open(self.root, _DIR)
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(project, 0o700, dir_fd=root_fd)
            project_fd = os.open(project, _DIR, dir_fd=root_fd)
        finally:
            os.close(root_fd)
        temporary = f".{name}.upload"
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary, dir_fd=project_fd)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(temporary, flags, 0o600, dir_fd=project_fd)
            digest, copied = hashlib.sha256(), 0
            try:
                while chunk := body.read(CHUNK):
                    digest.update(chunk)
                    write_all(fd, chunk)
                    copied += len(chunk)
                os.fsync(fd)
            finally:
                os.close(fd)
            got = digest.hexdigest()
            if copied != length or got != sha256:
                raise PackageError(400, f"the package's SHA-256 is {got} ({copied} bytes), not"
                                   f" the {sha256} announced; it was not kept")  # fmt: skip
            os.rename(temporary, name, src_dir_fd=project_fd, dst_dir_fd=project_fd)
            os.fsync(project_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=project_fd)
            raise
        finally:
            os.close(project_fd)
        return str(self.root / project / name)

    def list(self, project: str) -> list[dict[str, object]]:
        validate_project(project)
        where = self.root / project
        if not where.is_dir():
            return []
        found = []
        for entry in sorted(os.scandir(where), key=lambda e: e.name):
            if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                continue
            found.append({"name": entry.name, "length": entry.stat(follow_symlinks=False).st_size})
        return found
