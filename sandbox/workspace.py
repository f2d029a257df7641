"""Project workspaces under the state directory, created and removed without races.

Layout (modes in brackets)::

    <state>/                 root [0711]
      projects/              root [0711]
        <project>/           project uid [0700]
          home/              project uid [0700]  HOME of every run
          work/              project uid [0700]
            <run>/           project uid [0700]  the run's working directory

Everything below ``<project>/`` is writable by the project's scripts, so the
root side only ever works relative to directory descriptors opened with
O_NOFOLLOW, creates entries exclusively, and never walks the tree: removal is
done by a helper running as the project's own account (remover.py).
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .accounts import Account
from .atomic import write_all
from .projects import validate_project

REMOVER = Path(__file__).with_name("remover.py")
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class WorkspaceError(RuntimeError):
    """The workspace is not in the state the supervisor created; the message says where."""


@dataclass(frozen=True)
class RunDirs:
    project_dir: Path
    home: Path
    cwd: Path
    # O_PATH descriptors of home and cwd, opened without following links: the launcher binds
    # and Landlock-allows these exact directories, never whatever a path resolves to later.
    home_fd: int = -1
    cwd_fd: int = -1

    def close(self) -> None:
        for fd in (self.home_fd, self.cwd_fd):
            if fd >= 0:
                os.close(fd)


def _ensure_root_dir(path: Path, mode: int) -> None:
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, mode)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise WorkspaceError(f"{path} must be a directory owned by uid {os.geteuid()}")
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)


def _subdir(parent_fd: int, name: str, account: Account, where: Path, *, fresh: bool) -> int:
    """Open (creating if needed) a directory owned by `account`; refuse anything planted."""
    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    except FileExistsError:
        if fresh:
            raise WorkspaceError(f"{where / name} already exists; run ids must be unique") from None
    try:
        fd = os.open(name, _DIR, dir_fd=parent_fd)
    except OSError as exc:
        raise WorkspaceError(f"{where / name} is not a plain directory ({exc.strerror})") from None
    st = os.fstat(fd)
    if st.st_uid == os.geteuid() and st.st_uid != account.uid:
        os.fchmod(fd, 0o700)
        os.fchown(fd, account.uid, account.gid)
    elif (st.st_uid, st.st_gid) != (account.uid, account.gid):
        os.close(fd)
        raise WorkspaceError(f"{where / name} is owned by {st.st_uid}:{st.st_gid}, not the project")
    return fd


def _as_path_fd(fd: int) -> int:
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    finally:
        os.close(fd)


class Workspaces:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.projects = state_dir / "projects"

    def prepare(self) -> None:
        self.state_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
        _ensure_root_dir(self.state_dir, 0o711)
        _ensure_root_dir(self.projects, 0o711)

    def run_path(self, project: str, run_id: str) -> Path:
        """Where create_run() puts the run's working directory."""
        return self.projects / validate_project(project) / "work" / validate_project(run_id)

    def create_run(
        self, project: str, run_id: str, account: Account, files: dict[str, bytes]
    ) -> RunDirs:
        """Create the project's directories and a fresh run directory holding `files`."""
        validate_project(project)
        validate_project(run_id)
        self.prepare()
        pdir = self.projects / project
        projects_fd = os.open(self.projects, _DIR)
        try:
            project_fd = _subdir(projects_fd, project, account, self.projects, fresh=False)
        finally:
            os.close(projects_fd)
        try:
            home_fd = _as_path_fd(_subdir(project_fd, "home", account, pdir, fresh=False))
            work_fd = _subdir(project_fd, "work", account, pdir, fresh=False)
            try:
                self._fresh_run(work_fd, run_id, account, files, pdir / "work")
                cwd_fd = os.open(run_id, _DIR | os.O_PATH, dir_fd=work_fd)
            finally:
                os.close(work_fd)
        finally:
            os.close(project_fd)
        return RunDirs(pdir, pdir / "home", pdir / "work" / run_id, home_fd, cwd_fd)

    @staticmethod
    def _fresh_run(
        work_fd: int, run_id: str, account: Account, files: dict[str, bytes], where: Path
    ) -> None:
        # Created root-owned 0700, filled, then handed over: the script never sees it half made.
        try:
            os.mkdir(run_id, 0o700, dir_fd=work_fd)
        except FileExistsError:
            raise WorkspaceError(
                f"{where / run_id} already exists; run ids must be unique"
            ) from None
        run_fd = os.open(run_id, _DIR, dir_fd=work_fd)
        try:
            for name, data in files.items():
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                fd = os.open(name, flags, 0o600, dir_fd=run_fd)
                try:
                    write_all(fd, data)
                    os.fchown(fd, account.uid, account.gid)
                finally:
                    os.close(fd)
            os.fchown(run_fd, account.uid, account.gid)
        finally:
            os.close(run_fd)

    def remove_run(self, project: str, run_id: str, account: Account, python: str) -> None:
        """Delete a run directory as the project's own account, never as root.

        The root side only opens ``projects/<project>/work`` (O_NOFOLLOW at each
        step) and hands that descriptor to the remover, which runs as the project's
        uid and deletes ``<run_id>`` relative to it.
        """
        validate_project(project)
        validate_project(run_id)
        where = self.projects / project / "work"
        projects_fd = os.open(self.projects, _DIR)
        try:
            project_fd = os.open(project, _DIR, dir_fd=projects_fd)
            try:
                work_fd = os.open("work", _DIR, dir_fd=project_fd)
            finally:
                os.close(project_fd)
        except FileNotFoundError:
            return
        finally:
            os.close(projects_fd)
        as_account = os.geteuid() == 0 and account.uid != 0
        try:
            result = subprocess.run(
                [
                    python,
                    "-I",
                    "-S",
                    "-c",  # the code itself, not its path: the account may not reach our files
                    REMOVER.read_text(),
                    str(work_fd),
                    run_id,
                ],
                user=account.uid if as_account else None,
                group=account.gid if as_account else None,
                extra_groups=[] if as_account else None,
                pass_fds=(work_fd,),
                env={},
                cwd="/",
                capture_output=True,
                check=False,
                timeout=600,
            )
        finally:
            os.close(work_fd)
        if result.returncode != 0:
            raise WorkspaceError(
                f"could not remove {where / run_id}: {result.stderr.decode().strip()}"
            )
