"""Artifacts: the files a script named with createArtifact, kept by the supervisor at its end.

Each path must lie inside the run's working directory. It is opened from that directory's
descriptor one component at a time with O_NOFOLLOW (a symlink anywhere fails the open),
and kept only if it is a regular file owned by the project's account with a single link
(a hard link could stand for another account's file) that fits what is left of the
policy's `limits.artifacts`. The copy is `artifact-<n>` in the ticket's directory (0600);
each descriptor gains `kept` and, when it was not kept, `refused` with the reason. This
runs in a thread (a copy may be large): the caller records the result on the reactor.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from sandworker.sandbox.atomic import write_all

from .ticketdir import DIR_FLAGS, stored_artifact

CHUNK = 1 << 20
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Refused(Exception):
    pass


def collect(
    artifacts: list[dict[str, Any]], run_dir: Path, uid: int, budget: int, ticket_fd: int
) -> list[dict[str, Any]]:
    """Copy each named file into the ticket directory `ticket_fd`; the descriptors, updated."""
    left, updated = budget, []
    for index, artifact in enumerate(artifacts):
        entry = {k: v for k, v in artifact.items() if k not in ("kept", "refused")}
        try:
            into = (ticket_fd, stored_artifact(index))
            entry["length"] = _copy(str(artifact.get("path", "")), run_dir, uid, left, into)
            left -= entry["length"]
            entry["kept"] = True
        except (Refused, OSError) as exc:
            entry.update(kept=False, refused=str(exc) if isinstance(exc, Refused) else
                         f"cannot read it: {exc.strerror or exc}")  # fmt: skip
        updated.append(entry)
    return updated


def _copy(path: str, run_dir: Path, uid: int, left: int, into: tuple[int, str]) -> int:
    ticket_fd, name = into
    inside = os.path.normpath(path)
    base = str(run_dir)
    if not inside.startswith(base + "/"):
        raise Refused(f"{path} is outside the script's working directory {base}")
    parts = inside[len(base) + 1 :].split("/")
    fd = os.open(run_dir, DIR_FLAGS)
    try:
        for part in parts[:-1]:
            try:
                nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise Refused(f"{path}: {part} is not a directory of the workspace"
                              f" ({exc.strerror}; links are not followed)") from None  # fmt: skip
            os.close(fd)
            fd = nxt
        try:
            src = os.open(parts[-1], _FILE, dir_fd=fd)
        except OSError as exc:
            raise Refused(f"{path}: {exc.strerror} (links are not followed)") from None
    finally:
        os.close(fd)
    try:
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode):
            raise Refused(f"{path} is not a regular file")
        if st.st_uid != uid or st.st_nlink != 1:
            raise Refused(f"{path} is not the project's own file (owner {st.st_uid},"
                          f" {st.st_nlink} links)")  # fmt: skip
        if st.st_size > left:
            raise Refused(f"{path} is {st.st_size} bytes; limits.artifacts leaves {left}")
        dst = os.open(name, _NEW, 0o600, dir_fd=ticket_fd)
        try:
            copied = 0
            while chunk := os.read(src, min(CHUNK, left - copied + 1)):
                copied += len(chunk)
                if copied > left:  # (it grew while we copied)
                    raise Refused(f"{path} grew past the limits.artifacts budget")
                write_all(dst, chunk)
            os.fsync(dst)
        except BaseException:
            os.close(dst)
            os.unlink(name, dir_fd=ticket_fd)
            raise
        os.close(dst)
        return copied
    finally:
        os.close(src)
