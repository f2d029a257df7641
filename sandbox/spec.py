"""The launch specification: what the supervisor sends the launcher on descriptor 3.

Plain JSON of these TypedDicts. The launcher imports this file by path, so it
uses only the standard library.
"""

from __future__ import annotations

from typing import TypedDict


class Mounts(TypedDict):
    read_only: list[str]  # bound read-only (nosuid, nodev) at the same path
    read_write: list[str]  # bound read-write (nosuid, nodev) at the same path
    hide: list[str]  # directories inside the read-only binds covered by an empty tmpfs
    tmp_bytes: int  # size of the private /tmp and /dev/shm


class LandlockRules(TypedDict):
    list_only: list[str]  # directory listing only (the private "/" and "/dev")
    read_only: list[str]
    read_write: list[str]
    scoped: bool  # signal and abstract unix socket scopes (ABI >= 6)


class LaunchSpec(TypedDict):
    argv: list[str]  # argv[0] is an absolute path
    env: dict[str, str]
    cwd: str
    fds: dict[str, int]  # host path -> inherited O_PATH descriptor standing for it (home, cwd)
    account: list[int] | None  # [uid, gid] to switch to, or None to stay
    userns: bool  # unprivileged mode: a user namespace mapping only our own ids
    namespaces: list[str]  # of: mount, pid, ipc, uts, network
    mounts: Mounts
    rlimits: dict[str, list[int]]  # resource.RLIMIT_* name -> [soft, hard]
    landlock: LandlockRules | None
