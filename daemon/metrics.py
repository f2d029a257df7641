"""Prometheus metrics: declared once here, served by a listener of their own (`/metrics`).

Names follow Prometheus' rules (one `sandworker_` prefix, base units, `_total` on
counters). No label is unbounded: outcomes, syntaxes, reasons and limit kinds are fixed
sets, and external workers are the configured ones; never a project, ticket, thumbprint
or uid. Every label combination of a fixed set exists from the start, at zero. Gauges of
the daemon's state (running, queued, external workers, reloads) are read when scraped,
on the reactor's thread like everything else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sandworker import __version__
from sandworker.sandbox.outcome import Outcome, Reason
from sandworker.sandbox.syntaxes import SYNTAXES

from .tickets import CANCELLED, FATAL, RESULT_LOST, TIMEOUT

disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"  # the text exposition format
OUTCOMES = ("success", "failure", "cancelled", "timeout", "refused", "fatal", "lost")
REFUSALS = (
    "bad_request",  # 400: the start itself is wrong
    "forbidden",  # 403: the client is not trusted for the project
    "policy",  # 403: the policy refuses the project or the syntax
    "conflict",  # 409
    "stopping",  # 503: the daemon is stopping
    "no_healthy_worker",  # 503: a proxy with no healthy external worker in the pool
    "disk_full",  # 507: the ticket could not be recorded
)
LIMITS = ("timeout", "memory", "processes", "output")
SCRIPT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)
SPAWN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


def outcome_of(exit_code: int, reason: str) -> str:
    """The `outcome` label of a ticket's end."""
    if exit_code == 0:
        return "success"
    if exit_code == FATAL:
        return "refused" if reason in (Reason.REFUSED, Reason.SETUP_FAILED, "refused") else "fatal"
    return {CANCELLED: "cancelled", TIMEOUT: "timeout", RESULT_LOST: "lost"}.get(
        exit_code, "failure"
    )


class Live(Protocol):
    """What the scrape reads of the running daemon."""

    def running(self) -> int: ...
    def queued(self) -> int: ...
    def workers(self) -> list[dict[str, Any]]: ...  # pools.report()
    def reloads(self) -> tuple[float | None, bool]: ...  # (last success, last one failed)


class Idle:
    """A daemon with nothing going on (for tests and before `Metrics.watch`)."""

    def running(self) -> int:
        return 0

    def queued(self) -> int:
        return 0

    def workers(self) -> list[dict[str, Any]]:
        return []

    def reloads(self) -> tuple[float | None, bool]:
        return None, False


class Metrics:
    def __init__(self, *, process: bool = True) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.started = Counter(
            "sandworker_scripts_started", "Scripts started (run here, or handed to an"
            " external worker by a proxy), by syntax.", ["syntax"], registry=r,
        )  # fmt: skip
        self.completed = Counter(
            "sandworker_scripts_completed", "Scripts that ended, by outcome and syntax.",
            ["outcome", "syntax"], registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "sandworker_script_duration_seconds", "From start to end of each script.",
            buckets=SCRIPT_BUCKETS, registry=r,
        )  # fmt: skip
        self.spawn = Histogram(
            "sandworker_spawn_duration_seconds", "From the sandbox's launch to the script's"
            " exec, every layer applied.", buckets=SPAWN_BUCKETS, registry=r,
        )  # fmt: skip
        self.refusals = Counter(
            "sandworker_start_refusals", "Starts refused, by reason.", ["reason"], registry=r
        )
        self.limits = Counter(
            "sandworker_limit_hits", "Scripts stopped by a limit (timeout, memory: an OOM"
            " kill, output: too much printed), or refused a fork at the processes limit.",
            ["kind"], registry=r,
        )  # fmt: skip
        self.handshake_failures = Counter(
            "sandworker_tls_handshake_failures", "TLS handshakes that failed for a reason"
            " other than the client's certificate (protocol, timeout).", registry=r,
        )  # fmt: skip
        self.untrusted = Counter(
            "sandworker_untrusted_clients", "Connections refused at the handshake: the client"
            " certificate is not trusted, or none was sent.", registry=r,
        )  # fmt: skip
        self.reload_failures = Counter(
            "sandworker_reload_failures", "Reloads refused (the last good state stayed).",
            registry=r,
        )  # fmt: skip
        Gauge(
            "sandworker_build_info", "The running version (always 1).", ["version"], registry=r
        ).labels(__version__).set(1)
        for syntax in SYNTAXES:
            self.started.labels(syntax)
            for outcome in OUTCOMES:
                self.completed.labels(outcome, syntax)
        for name in REFUSALS:
            self.refusals.labels(name)
        for kind in LIMITS:
            self.limits.labels(kind)
        self.live: Live = Idle()
        r.register(_LiveCollector(lambda: self.live))
        if process:
            ProcessCollector(registry=r)

    def watch(self, live: Live) -> None:
        self.live = live

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # --- what the daemon records ------------------------------------------------------

    def script_started(self, syntax: str) -> None:
        self.started.labels(_syntax(syntax)).inc()

    def script_ended(self, syntax: str, exit_code: int, reason: str, seconds: float) -> None:
        self.completed.labels(outcome_of(exit_code, reason), _syntax(syntax)).inc()
        self.duration.observe(max(seconds, 0.0))

    def ran(self, outcome: Outcome) -> None:
        """What the built-in worker learns of a run: its spawn time and the limits hit."""
        if outcome.spawn_seconds > 0:
            self.spawn.observe(outcome.spawn_seconds)
        kinds = {Reason.TIMEOUT: "timeout", Reason.MEMORY: "memory", Reason.OUTPUT: "output"}
        if outcome.reason in kinds:
            self.limits.labels(kinds[outcome.reason]).inc()
        if outcome.limit_hits.get("processes", 0) > 0:
            self.limits.labels("processes").inc()

    def refused(self, reason: str) -> None:
        self.refusals.labels(reason if reason in REFUSALS else "bad_request").inc()


class _Example(Idle):
    """One external worker, so that its families show their labels in the reference."""

    def workers(self) -> list[dict[str, Any]]:
        return [{"pool": "", "address": "", "healthy": True, "latency_ms": 1.0, "running": 0}]


def metrics_reference() -> str:
    """The metrics reference (Markdown), from the families declared here."""
    metrics = Metrics(process=False)
    metrics.watch(_Example())
    rows = ["| metric | type | labels | meaning |", "| --- | --- | --- | --- |"]
    for family in metrics.registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = sorted({k for sample in family.samples for k in sample.labels} - {"le"})
        shown = ", ".join(f"`{label}`" for label in labels) or "-"
        rows.append(f"| `{name}` | {family.type} | {shown} | {family.documentation} |")
    values = {
        "`outcome`": ", ".join(OUTCOMES),
        "`reason`": ", ".join(REFUSALS),
        "`kind`": ", ".join(LIMITS),
        "`syntax`": ", ".join(SYNTAXES),
    }
    notes = [f"- {label}: {listed}" for label, listed in values.items()]
    return (
        "# sandworker metrics\n\nGenerated by `sandworker metrics docs` from"
        " `daemon/metrics.py`; served at `/metrics` on `metrics.listen` (127.0.0.1:10934 by"
        " default). Every combination of these fixed label values exists from the start, at"
        " 0. `pool` and `worker` are the configured external workers. The process"
        " collector adds the standard `process_*` metrics (CPU, memory, file descriptors,"
        " start time).\n\n" + "\n".join(rows) + "\n\nLabel values:\n\n" + "\n".join(notes) + "\n"
    )


def _syntax(syntax: str) -> str:
    return syntax if syntax in SYNTAXES else "bash"  # (the default; starts are validated)


class _LiveCollector(Collector):
    def __init__(self, live: Callable[[], Live]) -> None:
        self._live = live

    def collect(self) -> Iterable[Metric]:
        return list(self._families(self._live()))

    def _families(self, live: Live) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "sandworker_scripts_running", "Scripts running now.", live.running()
        )
        yield GaugeMetricFamily("sandworker_scripts_queued", "Scripts waiting for a slot or a"
                                " mutex.", live.queued())  # fmt: skip
        last, failed = live.reloads()
        yield GaugeMetricFamily(
            "sandworker_reload_last_success_timestamp_seconds",
            "When configuration and policy were last (re)loaded successfully.",
            last if last is not None else 0,
        )
        yield GaugeMetricFamily(
            "sandworker_reload_failing", "1 while the last reload failed.", 1 if failed else 0
        )
        up = GaugeMetricFamily(
            "sandworker_external_worker_up", "1 while an external worker is healthy.",
            labels=["pool", "worker"],
        )  # fmt: skip
        latency = GaugeMetricFamily(
            "sandworker_external_worker_check_duration_seconds",
            "How long the last health check of an external worker took.",
            labels=["pool", "worker"],
        )
        at_worker = GaugeMetricFamily(
            "sandworker_external_worker_scripts_running",
            "Scripts this proxy has running at an external worker.",
            labels=["pool", "worker"],
        )
        for worker in live.workers():
            key = [str(worker["pool"]), str(worker["address"])]
            up.add_metric(key, 1 if worker["healthy"] else 0)
            ms = worker["latency_ms"]
            latency.add_metric(key, 0 if ms is None else ms / 1000)
            at_worker.add_metric(key, worker["running"])
        yield from (up, latency, at_worker)
