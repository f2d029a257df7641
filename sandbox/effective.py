"""The effective policy for one project: what the launcher is allowed to grant.

`sandworker.sandbox.policy` builds it from the policy files; everything after
that (plan, launcher, runner) reads only this frozen value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .layers import Layer


@dataclass(frozen=True)
class Limits:
    """Resource limits, in base units. 0 means "no limit" only where documented."""

    memory_bytes: int
    processes: int
    cpu_seconds: int
    open_files: int
    file_size_bytes: int
    output_bytes: int
    tmp_bytes: int  # size of the private /tmp and /dev/shm (each)
    cpu_percent: int  # CPU bandwidth, 100 = one core
    artifact_bytes: int = 256 << 20  # artifacts the supervisor keeps of one run
    package_bytes: int = 1 << 30  # what one package may unpack to
    package_files: int = 10000  # entries in one package


@dataclass(frozen=True)
class EffectivePolicy:
    """The settings one project's scripts run under."""

    project: str
    account: str  # "dynamic" or the name of an existing account
    syntaxes: tuple[str, ...]
    timeout_seconds: float
    kill_grace_seconds: float
    limits: Limits
    network: str  # "none" or "host"
    read_only_paths: tuple[str, ...]
    read_write_paths: tuple[str, ...]
    environment_pass: tuple[str, ...]
    environment_set: Mapping[str, str]
    concurrency: int
    require: frozenset[Layer]
    package_sources: tuple[str, ...] = ()  # URL prefixes packages may be downloaded from
    # field name (dotted, e.g. "limits.memory") -> "file:line [[project]] match = '...'"
    sources: Mapping[str, str] = field(default_factory=dict)
