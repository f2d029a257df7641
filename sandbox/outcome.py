"""How a run ended: the reason, the exit status, and a sentence a person can act on."""

from __future__ import annotations

import enum
import json
import os
import signal
from dataclasses import dataclass, field

from .effective import EffectivePolicy


class Reason(enum.StrEnum):
    """How a run ended. Metrics and audit events use these values."""

    EXITED = "exited"  # the script ended by itself (any exit code or signal)
    REFUSED = "refused"  # never started: policy, syntax or missing required layer
    SETUP_FAILED = "setup_failed"  # the launcher could not apply a layer
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    MEMORY = "memory"  # killed by the memory limit
    OUTPUT = "output"  # killed for printing more than the output limit
    CPU = "cpu"  # killed by the CPU time limit
    FILE_SIZE = "file_size"  # killed by the file size limit
    LOST = "lost"  # the launcher vanished; the run was killed, its exit status is unknown


@dataclass
class Outcome:
    reason: Reason
    exit_code: int | None  # None when killed by a signal
    signal: str | None
    message: str
    spawn_seconds: float = 0.0
    duration_seconds: float = 0.0
    limit_hits: dict[str, int] = field(default_factory=dict)


def setup_report(data: bytes) -> str | None:
    """What the launcher wrote on its status pipe before EOF: None means exec succeeded."""
    if not data:
        return None
    try:
        report = json.loads(data.splitlines()[0])
        return f"{report['layer']}: {report['error']}"
    except (ValueError, KeyError, IndexError):
        return data.decode(errors="replace").strip()


def describe(
    raw: int,
    setup_error: str | None,
    ended_by: Reason | None,
    hits: dict[str, int],
    policy: EffectivePolicy,
) -> Outcome:
    code = os.waitstatus_to_exitcode(raw)
    sig = signal.Signals(-code).name if code < 0 else None
    exit_code = None if code < 0 else code
    if setup_error is not None:
        return Outcome(Reason.SETUP_FAILED, exit_code, sig, f"setup failed: {setup_error}")
    if ended_by is not None:
        what = {
            Reason.TIMEOUT: f"timed out after {policy.timeout_seconds:g}s",
            Reason.CANCELLED: "cancelled",
            Reason.OUTPUT: f"printed more than {policy.limits.output_bytes} bytes",
            Reason.LOST: "the launcher process was lost",
        }.get(ended_by, str(ended_by))
        return Outcome(ended_by, exit_code, sig, f"{what}; the whole process tree was killed")
    if sig == "SIGKILL" and hits.get("memory"):
        return Outcome(
            Reason.MEMORY, None, sig, f"killed: memory limit {policy.limits.memory_bytes} bytes"
        )
    if sig == "SIGXCPU":
        return Outcome(
            Reason.CPU, None, sig, f"killed: CPU time limit {policy.limits.cpu_seconds}s"
        )
    if sig == "SIGXFSZ":
        return Outcome(
            Reason.FILE_SIZE,
            None,
            sig,
            f"killed: file size limit {policy.limits.file_size_bytes} bytes",
        )
    text = f"exited with code {exit_code}" if sig is None else f"killed by {sig}"
    hit = ", ".join(f"{kind} {count}x" for kind, count in sorted(hits.items()) if count)
    return Outcome(Reason.EXITED, exit_code, sig, text + (f" (limits hit: {hit})" if hit else ""))
