"""Host-level settings of the sandbox: where state lives and which programs run scripts.

The daemon fills these from its configuration file; `sandbox run` from flags.
Policy (per project) is separate: see policy.py and effective.py.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

# Dynamic project uids live inside 65536-524287: above systemd's DynamicUser range
# (61184-65519) and below its container range (524288 and up).
UID_FLOOR, UID_CEILING = 65536, 524287
DEFAULT_UID_RANGE = (420000, 485535)

DEFAULT_INTERPRETERS: dict[str, str] = {
    "bash": "/bin/bash",
    "sh": "/bin/sh",
    "python": "/usr/bin/python3",
    "powershell": "/usr/bin/pwsh",
}

# Read-only system directories every sandbox sees (when they exist).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")


def default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/sandworker")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "sandworker"


def launcher_python() -> str:
    """An absolute interpreter for the launcher; never a PATH lookup or a shim."""
    return os.path.realpath(sys.executable)


@dataclass(frozen=True)
class SandboxSettings:
    state_dir: Path = field(default_factory=default_state_dir)
    uid_range: tuple[int, int] = DEFAULT_UID_RANGE
    interpreters: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_INTERPRETERS))
    # directories inside the read-only system view that scripts must not see
    hidden: tuple[str, ...] = ("/etc/sandworker",)
    launcher_python: str = field(default_factory=launcher_python)

    def __post_init__(self) -> None:
        low, high = self.uid_range
        if not (UID_FLOOR <= low <= high <= UID_CEILING):
            raise ValueError(
                f"uid range {low}-{high} must lie inside {UID_FLOOR}-{UID_CEILING}"
                " (outside systemd's DynamicUser and container ranges)"
            )
        for name, path in self.interpreters.items():
            if not os.path.isabs(path):
                raise ValueError(f"interpreter for {name} must be an absolute path, not {path!r}")
