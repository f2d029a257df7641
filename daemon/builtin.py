"""The built-in worker: the scripts this daemon runs itself, in its own sandbox.

A start checked against policy is recorded as a ticket, queued by the scheduler
(global and per-project limits, isolation mutexes), run by the sandbox through
the reactor driver, and its output is framed into numbered log lines as it
arrives. Outcomes go back to the script service (`end`), which records them and
answers whoever waits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import threads

from sandworker.sandbox.effective import EffectivePolicy
from sandworker.sandbox.outcome import Outcome
from sandworker.sandbox.plan import Refused
from sandworker.sandbox.policy import PolicyDenied, PolicySet
from sandworker.sandbox.runner import Package, Request, Sandbox

from .api import Problem, StartRequest, bad_request
from .artifacts import collect
from .audit import AuditLog, Event
from .driver import ScriptDriver, reactor
from .metrics import Metrics
from .packages import PackageCache
from .scheduler import Scheduler
from .tickets import CANCELLED, FATAL, TIMEOUT, Ticket, TicketStoreError, exit_code_for, ticket_key
from .ticketstore import TicketStore

log = logging.getLogger(__name__)
PACKAGE_LINK = "package"  # in a ticket's directory: the package it runs, from accept to start
FAIL_ON_STDERR = "Octopus.Action.FailScriptOnErrorOutput"  # True: any stderr fails the step


class BuiltinWorker:
    def __init__(
        self,
        sandbox: Sandbox,
        policies: Callable[[], PolicySet],
        store: TicketStore,
        scheduler: Scheduler,
        audit: AuditLog,
        *,
        metrics: Metrics,
        end: Callable[[Ticket, int, str, str], None],
        wake: Callable[[str], None],
    ) -> None:
        self.sandbox, self.policies, self.store, self.scheduler = (
            sandbox,
            policies,
            store,
            scheduler,
        )
        self.audit, self.metrics, self._end, self._wake = audit, metrics, end, wake
        self._drivers: dict[str, ScriptDriver] = {}
        self._queued: dict[str, tuple[StartRequest, Ticket]] = {}
        self._timer: Any = None
        self._said: dict[str, str] = {}  # ticket -> the last "why waiting" line logged
        self._output_lost: dict[str, str] = {}  # ticket -> why its output stopped being kept
        self._strict_stderr: dict[str, bool] = {}  # FailScriptOnErrorOutput: stderr seen yet
        self._workdirs: dict[str, tuple[Path, int, EffectivePolicy]] = {}  # for artifacts
        self.packages: PackageCache | None = None  # the projects' package caches

    def accept(self, ticket_id: str, start: StartRequest, client: str) -> Ticket:
        """A start for the built-in worker: checked against policy, recorded, queued."""
        if start.pool is not None:
            raise bad_request(
                f"pool {start.pool!r}: this worker runs scripts itself and has no pools of"
                " external workers; leave pool out"
            )
        try:
            policy = self.policies().resolve(start.project)
        except PolicyDenied as exc:
            raise Problem(403, "Forbidden", str(exc), reason="policy") from None
        self._check_package(start)
        if (start.body or start.package is None) and start.syntax not in policy.syntaxes:
            raise Problem(
                403,
                "Forbidden",
                f"syntax {start.syntax!r} is not allowed for project"
                f" {start.project} (allowed: {', '.join(policy.syntaxes)})",
                reason="policy",
            )
        try:
            ticket, _new = self.store.create(ticket_id, dataclasses.asdict(start))
        except TicketStoreError as exc:  # full disk, unwritable state: refuse, keep the rest
            log.error("refusing a start: %s", exc)
            raise Problem(
                507,
                "Insufficient Storage",
                f"the worker cannot record a new ticket, so it was not started: {exc}."
                " Free space in the state directory (or fix its permissions) and retry;"
                " tickets already accepted are unaffected",
            ) from None
        self.audit.record(
            Event.SCRIPT_START,
            ticket=ticket.id,
            project=start.project,
            syntax=start.syntax,
            client=client,
            sha256=start.sha256,
            **({"package": start.package, "package_sha256": self._take_package(ticket, start)}
               if start.package else {}),
        )  # fmt: skip
        self._queued[ticket.id] = (start, ticket)
        self.scheduler.submit(
            ticket.id,
            start.project,
            policy.concurrency,
            time.monotonic(),
            isolation=start.isolation,
            mutex=start.mutex,
            acquire_timeout=start.acquire_timeout,
        )
        self._admit()
        return ticket

    def _check_package(self, start: StartRequest) -> None:
        """A start naming a package the cache does not hold is refused now."""
        if start.package is None:
            return
        if self.packages is None or self.packages.path(start.project, start.package) is None:
            p, name = start.project, start.package
            raise bad_request(
                f"package {name} is not in project {p}'s cache on this worker; upload it"
                f" (PUT /v1/projects/{p}/packages/{name}) or have the worker download it"
                f" (POST /v1/projects/{p}/packages)"
            )

    def _take_package(self, ticket: Ticket, start: StartRequest) -> str | None:
        """Link the package into the ticket's directory, so that the script runs the very
        file audited now, whatever arrives in the cache later; its SHA-256."""
        assert self.packages is not None and start.package is not None
        fd = ticket.open_dir()
        try:
            return self.packages.take(start.project, start.package, fd, PACKAGE_LINK)
        except OSError as exc:  # e.g. a cache on another filesystem: the cache's file, then
            ticket.debug(f"the package stays in the cache until the script starts ({exc})")
            return self.packages.sha256(start.project, start.package)
        finally:
            os.close(fd)

    def cancel(self, ticket: Ticket) -> None:
        """TERM the run's tree (KILL after the grace), or end a queued ticket at once."""
        if ticket.id in self._queued:
            self._queued.pop(ticket.id)
            self.scheduler.finished(ticket.id)
            self._end(ticket, CANCELLED, "cancelled", "cancelled before it started")
            self._admit()
        elif ticket.id in self._drivers:
            self._drivers[ticket.id].cancel()

    def cleanup(self, ticket: Ticket) -> None:
        """Remove the ticket's working directory, as its project's account. A project the
        policy no longer allows keeps its directory (no account to remove it as); the log
        says so and the ticket goes on."""
        try:
            policy = self.policies().resolve(ticket.project)
            self.sandbox.cleanup(Request(ticket.project, run_id(ticket.id)), policy)
        except (PolicyDenied, OSError, ValueError) as exc:
            log.warning("ticket %s: its working directory stays: %s", ticket.id, exc)

    def set_limit(self, global_limit: int) -> None:
        """A reload changed sandbox.max_concurrent: a higher limit starts queued scripts now
        (a lower one lets running ones finish)."""
        self.scheduler.global_limit = global_limit
        self._admit()

    def cancel_queued(self, message: str) -> None:
        """Cancel every script that has not started (the worker is stopping)."""
        queued, self._queued = self._queued, {}
        for ticket_id, (_start, ticket) in queued.items():
            self.scheduler.finished(ticket_id)
            self._end(ticket, CANCELLED, "cancelled", message)

    def shutdown(self) -> None:
        """The reactor is stopping: kill what runs, record an outcome for every ticket."""
        self.cancel_queued("the worker stopped before the script started")
        for ticket_id, driver in list(self._drivers.items()):
            found = self.store.get(ticket_id)
            if found is not None:
                found.debug("the worker stopped while the script ran; it was killed")
            driver.stop_now()

    # --- running ----------------------------------------------------------------------------

    def _admit(self) -> None:
        admission = self.scheduler.admit(time.monotonic())
        for ticket_id in admission.timed_out:
            _start, ticket = self._queued.pop(ticket_id)
            self._end(ticket, TIMEOUT, "timeout", "timed out waiting for its isolation mutex")
        for ticket_id in admission.started:
            self._launch(*self._queued.pop(ticket_id))
        for ticket_id, (_start, ticket) in self._queued.items():
            why = self.scheduler.why_waiting(ticket_id)
            if why and why != self._said.get(ticket_id):
                self._said[ticket_id] = why
                ticket.debug(why)
        self._arm_timer()

    def _arm_timer(self) -> None:
        deadline = self.scheduler.next_deadline(time.monotonic())
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if deadline is not None:
            self._timer = reactor.callLater(max(deadline - time.monotonic(), 0), self._admit)

    def _launch(self, start: StartRequest, ticket: Ticket) -> None:
        policy = self.policies().resolve(start.project)
        if start.timeout is not None:
            timeout = min(start.timeout, policy.timeout_seconds)
            policy = dataclasses.replace(policy, timeout_seconds=timeout)
        self._said.pop(ticket.id, None)
        request = Request(
            start.project,
            run_id(ticket.id),
            start.syntax,
            start.body,
            start.arguments,
            variables=tuple((v.name, v.value, v.sensitive) for v in start.variables),
            package=self._package_step(ticket, start),
        )
        try:
            running = self.sandbox.start(request, policy)
        except (Refused, OSError, ValueError) as exc:
            self._done(ticket, None, f"refused: {exc}")
            return
        if start.package is not None:  # the run has it open now: the ticket needs no copy
            with contextlib.suppress(OSError):
                os.unlink(ticket.directory / PACKAGE_LINK)
        self.metrics.script_started(start.syntax)
        account = running.plan.spec["account"]
        owner = account[0] if account else os.geteuid()
        self._workdirs[ticket.id] = (Path(running.plan.spec["cwd"]), owner, policy)
        self.audit.record(
            Event.SCRIPT_RUN, ticket=ticket.id, project=start.project,
            uid=account[0] if account else None, gid=account[1] if account else None,
        )  # fmt: skip

        if any(v.name == FAIL_ON_STDERR and v.value.lower() == "true" for v in start.variables):
            self._strict_stderr[ticket.id] = False

        def on_output(source: str, data: bytes) -> None:
            if source == "stderr" and ticket.id in self._strict_stderr:
                self._strict_stderr[ticket.id] = True
            try:
                ticket.output(source, data)
            except TicketStoreError as exc:  # the output cannot be kept: stop the script
                self._lost_output(ticket, exc)
            self._wake(ticket.id)

        self._drivers[ticket.id] = ScriptDriver(
            running, self.sandbox.zygote, on_output, lambda outcome: self._done(ticket, outcome, "")
        )
        try:
            ticket.running()
            if running.plan.debug:
                ticket.debug("\n".join(running.plan.debug))
        except TicketStoreError as exc:
            self._lost_output(ticket, exc)

    def _package_step(self, ticket: Ticket, start: StartRequest) -> Package | None:
        if start.package is None or self.packages is None:
            return None
        path = ticket.directory / PACKAGE_LINK  # (a missing one: refused at launch, saying so)
        if not path.exists():
            path = self.packages.root / start.project / start.package
        return Package(str(path), start.package, start.substitute)

    def _lost_output(self, ticket: Ticket, exc: TicketStoreError) -> None:
        driver = self._drivers.get(ticket.id)
        if ticket.id not in self._output_lost and driver is not None:
            log.error("stopping ticket %s: its output cannot be recorded: %s", ticket.id, exc)
            self._output_lost[ticket.id] = f"output could not be recorded: {exc}"
            driver.cancel()

    def _done(self, ticket: Ticket, outcome: Outcome | None, message: str) -> None:
        if outcome is not None:
            self.metrics.ran(outcome)
        self._drivers.pop(ticket.id, None)
        self.scheduler.finished(ticket.id)
        lost = self._output_lost.pop(ticket.id, None)
        wrote_stderr = self._strict_stderr.pop(ticket.id, False)
        if lost is not None:
            exit_code, reason, message = FATAL, "output lost", lost
        elif outcome is None:
            exit_code, reason = FATAL, "refused"
        else:
            exit_code, reason, message = (
                exit_code_for(outcome),
                str(outcome.reason),
                outcome.message,
            )
            if exit_code == 0 and wrote_stderr:  # Calamari's rule, when the step asks for it
                exit_code = 1
                message = f"the script wrote to stderr, and {FAIL_ON_STDERR} is True"
        workdir = self._workdirs.pop(ticket.id, None)
        if workdir is None or not ticket.record.artifacts:
            self._end(ticket, exit_code, reason, message)
            self._admit()
            return
        run_dir, uid, policy = workdir  # artifacts first: complete means they are there

        def keep() -> list[dict[str, Any]]:
            fd = ticket.open_dir()
            try:
                budget = policy.limits.artifact_bytes
                return collect(list(ticket.record.artifacts), run_dir, uid, budget, fd)
            finally:
                os.close(fd)

        def kept(artifacts: list[dict[str, Any]]) -> None:
            try:
                ticket.set_artifacts(artifacts)
            except TicketStoreError as exc:
                log.error("ticket %s: its artifacts could not be recorded: %s", ticket.id, exc)
            self._end(ticket, exit_code, reason, message)
            self._admit()

        def failed(failure: Any) -> None:
            log.error("ticket %s: collecting artifacts failed: %s", ticket.id, failure.value)
            self._end(ticket, exit_code, reason, message)
            self._admit()

        threads.deferToThread(keep).addCallbacks(kept, failed)


def run_id(ticket_id: str) -> str:
    """The sandbox run (working directory, cgroup) of a ticket: stable, short, safe."""
    return "t" + hashlib.sha256(ticket_key(ticket_id).encode()).hexdigest()[:24]
