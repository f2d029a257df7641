"""Per-script cgroups: placement, limits, kill and removal.

Groups are created only below the cgroups this process was started in (read
from /proc/self/cgroup), named ``sandworker-<tag>-<run>`` (`instance_tag`), and removed when the
script is done. On a cgroup v2 host one group carries everything. On a hybrid
v1 host (like Debian's default before systemd 256) the v1 memory, pids and cpu
controllers carry the limits and the v2 hierarchy, when mounted, gives
membership tracking and the atomic ``cgroup.kill``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from .effective import Limits
from .layers import Layer

PREFIX = "sandworker-"
V2 = "unified"
DELEGATE_XATTR = "trusted.delegate"  # systemd >= 251 marks a Delegate=yes cgroup with it
SUPERVISOR = "supervisor"  # the delegated group's leaf that holds the daemon itself


def _mountpoints() -> dict[str, Path]:
    """Controller (or "unified" for cgroup2) -> mount point."""
    found: dict[str, Path] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, _source, options = right.split()[:3]
            mountpoint = Path(left.split()[4].replace("\\040", " "))
            if fstype == "cgroup2":
                found.setdefault(V2, mountpoint)
            elif fstype == "cgroup":
                for opt in options.split(","):
                    found.setdefault(opt, mountpoint)
    return found


def own_groups() -> dict[str, Path]:
    """Controller name (memory, pids, cpu; or "unified") -> this process's own cgroup dir."""
    mounts = _mountpoints()
    groups: dict[str, Path] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _hid, controllers, path = line.rstrip("\n").split(":", 2)
            names = [V2] if controllers == "" else controllers.split(",")
            for name in names:
                if name in mounts:
                    groups[name] = mounts[name] / path.lstrip("/")
    return groups


@dataclass
class Hierarchy:
    """Where this host lets us put script cgroups, and with which controllers."""

    v2: Path | None = None  # our v2 group, when the v2 hierarchy is mounted and writable
    v2_controllers: frozenset[str] = frozenset()
    v1: dict[str, Path] = field(default_factory=dict)  # memory/pids/cpu -> our v1 group

    @classmethod
    def discover(cls) -> Hierarchy:
        groups = own_groups()
        found = cls()
        unified = groups.get(V2)
        if unified is not None:
            unified = enter_delegated_leaf(unified)
        if unified is not None and os.access(unified, os.W_OK):
            found.v2 = unified
            found.v2_controllers = _enable_for_children(unified)
        for name in ("memory", "pids", "cpu"):
            path = groups.get(name)
            owned_by_v2 = name in _read_words(unified / "cgroup.controllers") if unified else False
            if path is not None and not owned_by_v2 and os.access(path, os.W_OK):
                found.v1[name] = path
        return found

    def supported(self) -> dict[Layer, str | None]:
        """Layer -> None when supported, else the reason it is not."""

        def why(name: str) -> str | None:
            if name in self.v2_controllers or name in self.v1:
                return None
            return f"no writable cgroup with the {name} controller below this process"

        # cgroup.kill (Linux 5.14) exists in every group but the root, so ask the kernel version
        kill_ok = self.v2 is not None and kernel_at_least(5, 14)
        return {
            Layer.CGROUP_MEMORY: why("memory"),
            Layer.CGROUP_PIDS: why("pids"),
            Layer.CGROUP_CPU: why("cpu"),
            Layer.CGROUP_KILL: None if kill_ok else "no writable cgroup v2 with cgroup.kill",
        }


@dataclass
class ScriptGroup:
    """The cgroups of one script run."""

    dirs: dict[str, Path]  # "unified" or controller name -> the run's group

    @classmethod
    def create(
        cls, hierarchy: Hierarchy, run_id: str, limits: Limits, want: set[Layer]
    ) -> ScriptGroup:
        name = PREFIX + run_id
        dirs: dict[str, Path] = {}
        group = cls(dirs)
        try:
            if hierarchy.v2 is not None:
                dirs[V2] = _fresh(hierarchy.v2 / name)
                if hierarchy.v2_controllers:
                    group._limit_v2(limits, hierarchy.v2_controllers, want)
            for controller, base in hierarchy.v1.items():
                if _layer_of(controller) in want:
                    dirs[controller] = _fresh(base / name)
            group._limit_v1(limits)
        except BaseException:
            group.remove()
            raise
        return group

    def _limit_v2(self, limits: Limits, controllers: frozenset[str], want: set[Layer]) -> None:
        d = self.dirs[V2]
        if "memory" in controllers and Layer.CGROUP_MEMORY in want:
            (d / "memory.max").write_text(str(limits.memory_bytes))
            if (d / "memory.swap.max").exists():
                (d / "memory.swap.max").write_text("0")
        if "pids" in controllers and Layer.CGROUP_PIDS in want:
            (d / "pids.max").write_text(str(limits.processes + 2))  # + launcher and init
        if "cpu" in controllers and Layer.CGROUP_CPU in want:
            (d / "cpu.max").write_text(f"{limits.cpu_percent * 1000} 100000")

    def _limit_v1(self, limits: Limits) -> None:
        if "memory" in self.dirs:
            (self.dirs["memory"] / "memory.limit_in_bytes").write_text(str(limits.memory_bytes))
            memsw = self.dirs["memory"] / "memory.memsw.limit_in_bytes"
            if memsw.exists():
                memsw.write_text(str(limits.memory_bytes))
        if "pids" in self.dirs:
            (self.dirs["pids"] / "pids.max").write_text(str(limits.processes + 2))
        if "cpu" in self.dirs:
            (self.dirs["cpu"] / "cpu.cfs_period_us").write_text("100000")
            (self.dirs["cpu"] / "cpu.cfs_quota_us").write_text(str(limits.cpu_percent * 1000))

    def place(self, pid: int) -> None:
        for d in self.dirs.values():
            (d / "cgroup.procs").write_text(str(pid))

    def pids(self) -> set[int]:
        found: set[int] = set()
        for d in self.dirs.values():
            with contextlib.suppress(FileNotFoundError):
                found.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return found

    def signal_all(self, sig: int) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def kill(self, deadline: float = 5.0) -> bool:
        """Kill every process in the groups; True when they are all gone."""
        kill_file = self.dirs[V2] / "cgroup.kill" if V2 in self.dirs else None
        end = time.monotonic() + deadline
        while True:
            if kill_file is not None and kill_file.exists():
                kill_file.write_text("1")
            else:
                self.signal_all(signal.SIGKILL)
            if not self.pids():
                return True
            if time.monotonic() > end:
                return False
            time.sleep(0.01)

    def events(self) -> dict[str, int]:
        """Limit hits: {"memory": oom kills, "processes": fork refusals}."""
        hits = {"memory": 0, "processes": 0}
        for d in self.dirs.values():
            for fname, key, kind in (
                ("memory.oom_control", "oom_kill", "memory"),
                ("memory.events", "oom_kill", "memory"),
                ("pids.events", "max", "processes"),
            ):
                hits[kind] = max(hits[kind], _read_key(d / fname, key))
        return hits

    def remove(self) -> None:
        """Remove the groups; they must be empty (kill() first). Raises if one stays busy."""
        for d in self.dirs.values():
            for _ in range(200):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        raise
                    time.sleep(0.01)
            else:
                raise OSError(errno.EBUSY, f"cgroup {d} still busy after 2s; processes remain?")


def _read_words(path: Path) -> set[str]:
    try:
        return set(path.read_text().split())
    except OSError:
        return set()


def _enable_for_children(group: Path) -> frozenset[str]:
    """Enable memory, pids and cpu for child groups; return what children can use.

    cgroup v2 forbids this while `group` itself holds processes (the "no internal
    processes" rule), so under systemd the daemon must first move itself into a
    leaf of its delegated subtree; what cannot be enabled is reported as a
    missing layer, never assumed.
    """
    wanted = {"memory", "pids", "cpu"} & _read_words(group / "cgroup.controllers")
    missing = wanted - _read_words(group / "cgroup.subtree_control")
    if missing:
        with contextlib.suppress(OSError):
            (group / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in missing))
    return frozenset(wanted & _read_words(group / "cgroup.subtree_control"))


def _delegated(group: Path) -> bool:
    try:
        return os.getxattr(group, DELEGATE_XATTR) == b"1"
    except OSError:
        return False


def enter_delegated_leaf(own: Path) -> Path:
    """Where script groups go: beside this process, in the group systemd delegated to it.

    With Delegate=yes the unit's cgroup is ours, but cgroup v2 lets a group enable
    controllers for its children only while it holds no process itself. So the daemon
    moves into `<group>/supervisor` (before any child is started, and before READY=1)
    and every script's group is a sibling of that leaf. Without delegation (a shell, a
    container) nothing moves: script groups go below this process's own group."""
    if own.name == SUPERVISOR and _delegated(own.parent):
        return own.parent  # (moved already: discovered a second time)
    if not _delegated(own):
        return own
    leaf = own / SUPERVISOR
    with contextlib.suppress(FileExistsError):
        leaf.mkdir()
    (leaf / "cgroup.procs").write_text(str(os.getpid()))
    return own


def instance_tag(state_dir: Path) -> str:
    """A short tag of one supervisor's state directory, in every run group's name, so that
    two supervisors in one cgroup (tests, a proxy beside a worker) never sweep each other's."""
    return hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:8]


def sweep(hierarchy: Hierarchy, tag: str) -> list[str]:
    """Kill and remove every run group of ours left behind (a supervisor that crashed).

    Call once at start-up, before any script runs: every `sandworker-<tag>-*` group below
    this process's own groups belongs to a run that no supervisor watches any more.
    """
    bases = [b for b in (hierarchy.v2, *hierarchy.v1.values()) if b is not None]
    pattern = f"{PREFIX}{tag}-*"
    names = sorted({p.name for base in bases for p in base.glob(pattern) if p.is_dir()})
    for name in names:
        group = ScriptGroup(
            {key: base / name for key, base in _named(hierarchy).items() if (base / name).is_dir()}
        )
        group.kill()
        group.remove()
    return names


def _named(hierarchy: Hierarchy) -> dict[str, Path]:
    found = dict(hierarchy.v1)
    if hierarchy.v2 is not None:
        found[V2] = hierarchy.v2
    return found


def _fresh(path: Path) -> Path:
    """Create a run's group; an empty one left by a crashed supervisor is replaced."""
    try:
        path.mkdir(mode=0o755)
    except FileExistsError:
        if (path / "cgroup.procs").read_text().split():
            raise OSError(errno.EEXIST, f"cgroup {path} exists and still has processes") from None
        path.rmdir()
        path.mkdir(mode=0o755)
    return path


def kernel_at_least(major: int, minor: int) -> bool:
    release = os.uname().release.split("-")[0].split(".")
    return (int(release[0]), int(release[1])) >= (major, minor)


def _layer_of(controller: str) -> Layer:
    return {"memory": Layer.CGROUP_MEMORY, "pids": Layer.CGROUP_PIDS}.get(
        controller, Layer.CGROUP_CPU
    )


def _read_key(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (FileNotFoundError, ValueError):
        pass
    return 0
