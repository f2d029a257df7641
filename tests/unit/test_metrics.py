"""The metrics' exposition, byte for byte for a fixed state, and what the daemon's events
count (every label combination of a fixed set present from the start)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sandworker import __version__
from sandworker.daemon.metrics import OUTCOMES, Metrics, outcome_of
from sandworker.daemon.tickets import CANCELLED, FATAL, RESULT_LOST, TIMEOUT
from sandworker.sandbox.outcome import Outcome, Reason
from sandworker.sandbox.syntaxes import SYNTAXES

GOLDEN = Path(__file__).with_name("metrics.golden.txt")


class Busy:
    def running(self) -> int:
        return 2

    def queued(self) -> int:
        return 1

    def workers(self) -> list[dict[str, Any]]:
        return [
            {"pool": "default", "address": "https://w1:10933", "healthy": True,
             "latency_ms": 12.5, "running": 1},
            {"pool": "blue", "address": "https://w2:10933", "healthy": False,
             "latency_ms": None, "running": 0},
        ]  # fmt: skip

    def reloads(self) -> tuple[float | None, bool]:
        return 1764590000.0, True


def _fixed() -> Metrics:
    metrics = Metrics(process=False)
    metrics.watch(Busy())
    metrics.script_started("bash")
    metrics.script_started("python")
    metrics.script_ended("bash", 0, "exited", 3.0)
    metrics.script_ended("python", TIMEOUT, "timeout", 700.0)
    metrics.ran(Outcome(Reason.TIMEOUT, None, "SIGKILL", "timed out", spawn_seconds=0.02))
    metrics.ran(Outcome(Reason.EXITED, 0, None, "", spawn_seconds=0.007,
                        limit_hits={"processes": 3, "memory": 0}))  # fmt: skip
    metrics.refused("policy")
    metrics.refused("not a reason")  # (counted as a bad request, never a new label)
    metrics.untrusted.inc()
    metrics.reload_failures.inc()
    return metrics


def test_the_exposition_of_a_fixed_state_byte_for_byte() -> None:
    got = _fixed().exposition().decode()
    want = GOLDEN.read_text().replace("{version}", __version__)
    assert got == want, "\n".join(
        f"{a!r} != {b!r}" for a, b in zip(got.splitlines(), want.splitlines(), strict=False)
        if a != b
    )  # fmt: skip


def test_every_label_combination_exists_at_zero() -> None:
    text = Metrics(process=False).exposition().decode()
    for syntax in SYNTAXES:
        assert f'sandworker_scripts_started_total{{syntax="{syntax}"}} 0.0' in text
        for outcome in OUTCOMES:
            line = f'sandworker_scripts_completed_total{{outcome="{outcome}",syntax="{syntax}"}}'
            assert f"{line} 0.0" in text
    assert "_created" not in text


def test_outcomes() -> None:
    assert outcome_of(0, "exited") == "success"
    assert outcome_of(3, "exited") == "failure"
    assert outcome_of(CANCELLED, "cancelled") == "cancelled"
    assert outcome_of(TIMEOUT, "timeout") == "timeout"
    assert outcome_of(RESULT_LOST, "lost") == "lost"
    assert outcome_of(FATAL, "refused") == "refused"
    assert outcome_of(FATAL, "setup_failed") == "refused"
    assert outcome_of(FATAL, "output lost") == "fatal"
