"""What this host supports: one probe, used by `doctor`, the planner and the tests."""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import kernel, landlock
from .cgroups import Hierarchy, kernel_at_least
from .layers import Layer

_NAMESPACES = {
    Layer.MOUNT: kernel.CLONE_NEWNS,
    Layer.PID: kernel.CLONE_NEWPID,
    Layer.IPC: kernel.CLONE_NEWIPC,
    Layer.UTS: kernel.CLONE_NEWUTS,
    Layer.NETWORK: kernel.CLONE_NEWNET,
}


@dataclass(frozen=True)
class HostSupport:
    root: bool
    userns: bool  # unprivileged mode: namespaces come from a user namespace
    landlock_abi: int
    hierarchy: Hierarchy
    missing: dict[Layer, str]  # layer -> why this host cannot apply it

    def supports(self, layer: Layer) -> bool:
        return layer not in self.missing


def _try_unshare(flags: int) -> str | None:
    """Fork a child that unshares `flags`; None on success, else the error text."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(read_fd)
        try:
            kernel.unshare(flags)
        except OSError as exc:
            os.write(write_fd, str(exc).encode()[:500])
            os._exit(1)
        os._exit(0)
    os.close(write_fd)
    message = os.read(read_fd, 1000).decode()
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    return None if os.waitstatus_to_exitcode(status) == 0 else message or "unshare failed"


def probe() -> HostSupport:
    root = os.geteuid() == 0
    missing: dict[Layer, str] = {}
    userns = False
    if not root:
        missing[Layer.ACCOUNT] = "not running as root: scripts run as the invoking user"
        error = _try_unshare(kernel.CLONE_NEWUSER)
        userns = error is None
    for layer, flag in _NAMESPACES.items():
        extra = kernel.CLONE_NEWUSER if not root else 0
        error = _try_unshare(flag | extra) if (root or userns) else "no user namespaces"
        if error is not None:
            missing[layer] = f"cannot create the namespace: {error}"
    if Layer.MOUNT not in missing and not kernel_at_least(5, 12):
        missing[Layer.MOUNT] = "kernel older than 5.12 (no mount_setattr)"
    abi = landlock.abi_version()
    if abi < 1:
        missing[Layer.LANDLOCK] = "Landlock is not enabled in this kernel (lsm= boot option)"
    if abi < 6:
        missing[Layer.LANDLOCK_SCOPE] = f"Landlock ABI {abi} < 6 has no signal/socket scopes"
    hierarchy = Hierarchy.discover() if root else Hierarchy()
    for layer, why in hierarchy.supported().items():
        if why is not None:
            missing[layer] = why if root else "not running as root: no cgroup delegation"
    return HostSupport(root, userns, abi, hierarchy, missing)
