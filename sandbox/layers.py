"""The isolation layers: their names, and what this host supports.

A layer is either applied, refused with a reason, or reported. The names below
are the vocabulary shared by policy files (`require = [...]`), `sandworker
doctor`, a run's debug lines and the documentation.
"""

from __future__ import annotations

import enum


class Layer(enum.StrEnum):
    """One isolation layer, in the order the launcher applies it."""

    SESSION = "session"  # new session: no controlling terminal, no TIOCSTI into ours
    DESCRIPTORS = "descriptors"  # every inherited descriptor closed but the output pipes
    ENVIRONMENT = "environment"  # allow-listed environment only
    MOUNT = "mount"  # private mount namespace: own root, /tmp, /dev/shm; others hidden
    PID = "pid"  # private pid namespace with its own /proc
    IPC = "ipc"  # private System V IPC and POSIX message queues
    UTS = "uts"  # private hostname
    NETWORK = "network"  # private network namespace (only when network = "none")
    RLIMITS = "rlimits"  # setrlimit: CPU, files, file size, processes, core
    CGROUP_MEMORY = "cgroup_memory"  # memory limit in a per-script cgroup
    CGROUP_PIDS = "cgroup_pids"  # process-count limit in a per-script cgroup
    CGROUP_CPU = "cgroup_cpu"  # CPU bandwidth limit in a per-script cgroup
    CGROUP_KILL = "cgroup_kill"  # atomic kill of the whole tree (cgroup v2 cgroup.kill)
    ACCOUNT = "account"  # setgroups([]), setresgid, setresuid to the project account
    NO_NEW_PRIVS = "no_new_privs"  # PR_SET_NO_NEW_PRIVS: setuid binaries grant nothing
    LANDLOCK = "landlock"  # Landlock filesystem allow-list
    LANDLOCK_SCOPE = "landlock_scope"  # Landlock signal and abstract-socket scopes (ABI 6)


DESCRIPTIONS: dict[Layer, str] = {
    Layer.SESSION: "new session, no controlling terminal",
    Layer.DESCRIPTORS: "inherited descriptors closed except the output pipes",
    Layer.ENVIRONMENT: "clean environment from the policy's allow-list",
    Layer.MOUNT: "private mount namespace: own root, private /tmp and /dev/shm",
    Layer.PID: "private pid namespace with its own /proc",
    Layer.IPC: "private IPC namespace",
    Layer.UTS: "private UTS namespace (hostname)",
    Layer.NETWORK: "private network namespace with loopback only (network = none)",
    Layer.RLIMITS: "resource limits (setrlimit)",
    Layer.CGROUP_MEMORY: "memory limit in a per-script cgroup",
    Layer.CGROUP_PIDS: "process-count limit in a per-script cgroup",
    Layer.CGROUP_CPU: "CPU bandwidth limit in a per-script cgroup",
    Layer.CGROUP_KILL: "atomic kill of the whole process tree (cgroup v2)",
    Layer.ACCOUNT: "unprivileged per-project account, no supplementary groups",
    Layer.NO_NEW_PRIVS: "no_new_privs: setuid and file capabilities grant nothing",
    Layer.LANDLOCK: "Landlock filesystem allow-list",
    Layer.LANDLOCK_SCOPE: "Landlock signal and abstract unix socket scopes",
}
