"""Project accounts: a stable, unprivileged uid/gid per project.

Dynamic accounts come from a configured range, are never reused for another
project (no uid recycling: a later owner can never inherit files or setgid
bits left by an earlier one), never collide with an id NSS knows or a running
process holds, and are persisted in ``<state>/accounts.json`` (written
atomically, 0600) under a lock. The map is per state directory: two instances
on one host must be given disjoint uid ranges.
"""

from __future__ import annotations

import fcntl
import grp
import json
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from .atomic import write_atomic

DYNAMIC = "dynamic"


class AccountError(RuntimeError):
    """No account can be given to a project; the message says what to change."""


@dataclass(frozen=True)
class Account:
    uid: int
    gid: int
    name: str  # the NSS name, or "sandworker-<project>" for a dynamic account


def _known_to_nss(uid: int) -> bool:
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
        except KeyError:
            continue
        return True
    return False


def _uids_of_running_processes() -> set[int]:
    """Real uids of every process on the host: an id some process holds is not free, even
    when NSS does not know it (another instance's project, a container's user)."""
    uids: set[int] = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/status", "rb") as f:
                    for line in f:
                        if line.startswith(b"Uid:"):
                            uids.add(int(line.split()[1]))
                            break
            except OSError:
                continue
    return uids


class Accounts:
    """The persisted project -> uid map for one state directory."""

    def __init__(self, state_dir: Path, uid_range: tuple[int, int]) -> None:
        self._path = state_dir / "accounts.json"
        self._lock = state_dir / "accounts.lock"
        self._range = uid_range

    def for_project(self, project: str, account: str) -> Account:
        if account != DYNAMIC:
            return self._named(account)
        self._lock.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
        fd = os.open(self._lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            mapping = self._load()
            uid = mapping.get(project)
            if uid is None:
                uid = self._allocate(set(mapping.values()))
                mapping[project] = uid
                write_atomic(self._path, json.dumps(mapping, indent=1, sort_keys=True).encode())
        finally:
            os.close(fd)
        return Account(uid, uid, f"sandworker-{project}")

    def _load(self) -> dict[str, int]:
        try:
            data = json.loads(self._path.read_bytes())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise AccountError(f"{self._path} is corrupt ({exc}); restore it from backup") from exc
        if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
            raise AccountError(f"{self._path} is not a project -> uid map; restore it")
        return data

    def _allocate(self, taken: set[int]) -> int:
        low, high = self._range
        running = _uids_of_running_processes()
        for uid in range(low, high + 1):
            if uid not in taken and uid not in running and not _known_to_nss(uid):
                return uid
        raise AccountError(f"no free uid left in the dynamic range {low}-{high}; widen it")

    @staticmethod
    def _named(name: str) -> Account:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise AccountError(f"account {name!r} does not exist on this host") from None
        if entry.pw_uid == 0 or entry.pw_gid == 0:
            raise AccountError(
                f"account {name!r} is root (uid or gid 0); scripts never run as root"
            )
        return Account(entry.pw_uid, entry.pw_gid, name)
