"""Each project's package cache: `<state>/packages/<project>/<name>`, root's, 0600.

A package arrives by upload (`PUT /v1/projects/{project}/packages/{name}`, the SHA-256 in
the `Sandworker-Sha256` header) or is downloaded by the worker itself (`POST
/v1/projects/{project}/packages` with name, url and sha256), only from a URL the
project's policy lists in `packages.sources`, redirects included. Either way it is
refused before anything is written when the state filesystem lacks room for it (plus
RESERVE); it is copied into a hidden temporary file beside its place, hashed on the way,
fsynced, and renamed into place only if the hash is the one announced; its SHA-256 is
kept beside it (`.<name>.sha256`). A crash leaves at most a temporary file, which the
next arrival of that name replaces. Names are one path component of letters, digits,
`.`, `-`, `_`, ending in .zip, .tar.gz, .tgz or .nupkg.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import secrets
import stat
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

from sandworker.sandbox.atomic import replace_files, write_all
from sandworker.sandbox.policy_checks import source_for
from sandworker.sandbox.projects import validate_project

RESERVE = 64 << 20  # bytes left free on the state filesystem after an upload
CHUNK = 1 << 20
PACKAGE_FORMATS = (".zip", ".tar.gz", ".tgz", ".nupkg")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}\.(zip|tar\.gz|tgz|nupkg)")
_SHA256 = re.compile(r"[0-9a-f]{64}")
FETCH_TIMEOUT = 30.0  # seconds without a byte from the source
FETCH_DEADLINE = 3600.0  # seconds for a whole download
ROOM_EVERY = 64 << 20  # a download of unannounced length checks free space this often
UPLOADING = ".upload"
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


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
    """The cache. Arrivals of one name may overlap: each copies into a temporary file of its
    own, and the last verified one wins. `take()` links a package into a ticket's directory,
    so the file a script runs is the one whose hash was audited, whatever arrives later."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()  # the commit of an arrival, a removal, a take()
        self._sweep()

    def store(
        self, project: str, name: str, body: IO[bytes] | _Download, *,
        length: int | None, sha256: str, limit: int,
    ) -> int:  # fmt: skip
        """Keep one package (blocking: run it in a thread); its length, once verified."""
        validate_project(project)
        check_name(name)
        if length is not None and length > limit:
            raise PackageError(413, f"the package is {length} bytes, more than the {limit}"
                               " this worker takes (server.max_package)")  # fmt: skip
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._check_room(length or 0)
        project_fd = self._project_dir(project, create=True)
        temporary = f".{name}.{secrets.token_hex(8)}{UPLOADING}"
        try:
            fd = os.open(temporary, _NEW, 0o600, dir_fd=project_fd)
            digest, copied = hashlib.sha256(), 0
            try:
                while chunk := body.read(CHUNK):
                    copied += len(chunk)
                    if copied > limit:
                        raise PackageError(413, f"the package is more than the {limit} bytes"
                                           " this worker takes (server.max_package)")  # fmt: skip
                    if length is None and copied % ROOM_EVERY < len(chunk):
                        self._check_room(ROOM_EVERY)  # a download of unannounced length
                    digest.update(chunk)
                    write_all(fd, chunk)
                os.fsync(fd)
                inode = os.fstat(fd).st_ino
            finally:
                os.close(fd)
            got = digest.hexdigest()
            if (length is not None and copied != length) or got != sha256:
                raise PackageError(400, f"the package's SHA-256 is {got} ({copied} bytes), not"
                                   f" the {sha256} announced; it was not kept")  # fmt: skip
            with self._lock:
                replace_files(project_fd, {f".{name}.sha256": f"{got} {inode}\n".encode()})
                os.rename(temporary, name, src_dir_fd=project_fd, dst_dir_fd=project_fd)
                os.fsync(project_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=project_fd)
            raise
        finally:
            os.close(project_fd)
        return copied

    def fetch(
        self, project: str, name: str, url: str, *, sha256: str, sources: tuple[str, ...],
        limit: int,
    ) -> int:  # fmt: skip
        """Download one package from an allowed source (blocking); its length."""
        check_source(url, sources)
        opener = urllib.request.build_opener(_CheckedRedirects(sources))
        request = urllib.request.Request(url)  # noqa: S310 - http(s) only: check_source
        try:
            with opener.open(request, timeout=FETCH_TIMEOUT) as response:
                announced = response.headers.get("Content-Length")
                length = int(announced) if announced and announced.isdigit() else None
                return self.store(
                    project, name, _Download(response, url, length), length=length, sha256=sha256,
                    limit=limit,
                )  # fmt: skip
        except urllib.error.HTTPError as exc:
            exc.close()
            raise PackageError(502, f"{url} answered {exc.code} {exc.reason}; nothing was"
                               " kept") from None  # fmt: skip
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise PackageError(504, f"{url} did not answer within {FETCH_TIMEOUT:.0f}s;"
                                   " nothing was kept") from None  # fmt: skip
            raise PackageError(502, f"could not download {url}: {exc.reason}") from None
        except TimeoutError:
            raise PackageError(504, f"{url} sent nothing for {FETCH_TIMEOUT:.0f}s; nothing"
                               " was kept") from None  # fmt: skip
        except (OSError, http.client.HTTPException) as exc:  # before the body: the source's
            raise PackageError(502, f"the download of {url} failed ({exc!r}); nothing was"
                               " kept") from None  # fmt: skip

    def remove(self, project: str, name: str) -> bool:
        """Remove a cached package and its hash (blocking); False if there was none. Tickets
        that took it keep their own link."""
        check_name(name)
        try:
            fd = self._project_dir(project, create=False)
        except FileNotFoundError:
            return False
        try:
            with self._lock:
                try:
                    os.unlink(name, dir_fd=fd)
                except FileNotFoundError:
                    return False
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f".{name}.sha256", dir_fd=fd)
                os.fsync(fd)
            return True
        finally:
            os.close(fd)

    def path(self, project: str, name: str) -> Path | None:
        """The cached package, if there is one by that name."""
        where = self.root / validate_project(project) / check_name(name)
        return where if where.is_file() and not where.is_symlink() else None

    def take(self, project: str, name: str, into_fd: int, as_name: str) -> str | None:
        """Hard-link the package into the directory open on `into_fd` (a ticket's, on the
        same filesystem); the SHA-256 it arrived with, None if that is not known."""
        fd = self._project_dir(project, create=False)
        try:
            with self._lock:
                os.link(check_name(name), as_name, src_dir_fd=fd, dst_dir_fd=into_fd,
                        follow_symlinks=False)  # fmt: skip
                return self._sha256(fd, name, os.stat(as_name, dir_fd=into_fd).st_ino)
        finally:
            os.close(fd)

    def sha256(self, project: str, name: str) -> str | None:
        try:
            fd = self._project_dir(project, create=False)
        except OSError:
            return None
        try:
            with self._lock:
                try:
                    inode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_ino
                except OSError:
                    return None
                return self._sha256(fd, name, inode)
        finally:
            os.close(fd)

    @staticmethod
    def _sha256(project_fd: int, name: str, inode: int) -> str | None:
        """The hash kept beside `name`, if it describes this inode (after a crash between
        the two renames of an arrival it may not: then the hash is unknown)."""
        try:
            fd = os.open(f".{name}.sha256", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=project_fd)  # fmt: skip
        except OSError:
            return None
        try:
            fields = os.read(fd, 200).decode("ascii", "replace").split()
        finally:
            os.close(fd)
        if len(fields) == 2 and _SHA256.fullmatch(fields[0]) and fields[1] == str(inode):
            return fields[0]
        return None

    def _project_dir(self, project: str, *, create: bool) -> int:
        validate_project(project)
        root_fd = os.open(self.root, _DIR)
        try:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(project, 0o700, dir_fd=root_fd)
            return os.open(project, _DIR, dir_fd=root_fd)
        finally:
            os.close(root_fd)

    def _check_room(self, length: int) -> None:
        free = os.statvfs(self.root)
        room = free.f_bavail * free.f_frsize - RESERVE
        if length > room:
            raise PackageError(507, f"the package needs {length} more bytes and the state"
                               f" filesystem has room for {max(room, 0)}; free space and"
                               " retry")  # fmt: skip

    def _sweep(self) -> None:
        """Temporary files of arrivals a crash cut short (none is in flight at start-up)."""
        with contextlib.suppress(FileNotFoundError):
            for project in os.scandir(self.root):
                if project.is_dir(follow_symlinks=False):
                    for entry in os.scandir(project.path):
                        if entry.name.startswith(".") and entry.name.endswith(UPLOADING):
                            with contextlib.suppress(OSError):
                                os.unlink(entry.path)

    def list(self, project: str) -> list[dict[str, object]]:
        try:
            fd = self._project_dir(project, create=False)
        except FileNotFoundError:
            return []
        found: list[dict[str, object]] = []
        try:
            with self._lock:
                for name in sorted(os.listdir(fd)):
                    info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if name.startswith(".") or not stat.S_ISREG(info.st_mode):
                        continue
                    sha256 = self._sha256(fd, name, info.st_ino)
                    found.append({"name": name, "length": info.st_size, "sha256": sha256})
        finally:
            os.close(fd)
        return found


def check_source(url: str, sources: tuple[str, ...]) -> str:
    try:
        source = source_for(url, sources)
    except ValueError as exc:
        raise PackageError(400, f"{url}: {exc}") from None
    if source is None:
        allowed = ", ".join(sources) or "none: the policy lists no packages.sources"
        raise PackageError(403, f"{url} is not under a source this project's policy allows"
                           f" (packages.sources: {allowed})")  # fmt: skip
    return source


class _Download:
    """The body of a download: a failure to read it is the source's, not the disk's."""

    def __init__(self, response: IO[bytes], url: str, length: int | None) -> None:
        self.response, self.url, self.length, self.got = response, url, length, 0
        self.deadline = time.monotonic() + FETCH_DEADLINE

    def read(self, size: int) -> bytes:
        if time.monotonic() > self.deadline:
            raise PackageError(504, f"the download of {self.url} took more than"
                               f" {FETCH_DEADLINE:.0f}s; nothing was kept")  # fmt: skip
        try:
            chunk = self.response.read(size)
            self.got += len(chunk)
            if not chunk and self.length is not None and self.got < self.length:
                raise http.client.IncompleteRead(b"", self.length - self.got)
            return chunk
        except TimeoutError:
            raise PackageError(504, f"{self.url} stopped sending for {FETCH_TIMEOUT:.0f}s;"
                               " nothing was kept") from None  # fmt: skip
        except (OSError, http.client.HTTPException) as exc:
            raise PackageError(502, f"the download of {self.url} broke off ({exc!r});"
                               " nothing was kept") from None  # fmt: skip


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to a URL the sources allow too."""

    def __init__(self, sources: tuple[str, ...]) -> None:
        self.sources = sources

    def redirect_request(  # noqa: PLR0917 - urllib's signature
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
        headers: Any, newurl: str,
    ) -> urllib.request.Request | None:  # fmt: skip
        try:
            check_source(newurl, self.sources)
        except PackageError as exc:
            fp.close()
            raise PackageError(403, f"{req.full_url} redirects to {exc}") from None
        return super().redirect_request(req, fp, code, msg, headers, newurl)
