"""The proxy: while external workers are configured, every script goes to one of them.

The caller sees the same API: a local ticket is created (persisted before it is
acknowledged, as always) and remembers its worker; a RemoteRun starts it there and
copies every line and the outcome into the local ticket, from which status and
long-polls are answered. Cancel and complete are forwarded to the ticket's worker.
This daemon spawns no script process while it proxies.
"""

from __future__ import annotations

import logging
import os
import tempfile
import urllib.parse
from collections.abc import Callable
from typing import Any

from twisted.internet import threads

from .api import Problem, StartRequest
from .audit import AuditLog, Event
from .client import ClientError
from .http import FileBody
from .metrics import Metrics
from .packages import PackageCache
from .pools import CANCEL_TIMEOUT, NoHealthyWorker, Pools, UnknownPool
from .remote import Hooks, PackageRef, RemoteRun
from .tickets import FATAL, RESULT_LOST, InvalidTransition, State, Ticket, TicketStoreError
from .ticketstore import TicketStore
from .workers import ExternalWorker

log = logging.getLogger(__name__)


class Proxy:
    def __init__(
        self,
        pools: Pools,
        store: TicketStore,
        audit: AuditLog,
        metrics: Metrics,
        *,
        wake: Callable[[str], None],
        end: Callable[[Ticket, int, str, str], None],
    ) -> None:
        self.pools, self.store, self.audit, self.metrics = pools, store, audit, metrics
        self._wake, self._end = wake, end
        self._runs: dict[str, RemoteRun] = {}
        self.packages: PackageCache | None = None  # the proxy's own cache (service.py)

    @property
    def active(self) -> bool:
        return self.pools.configured()

    def hand_off(self, ticket_id: str, start: StartRequest, client: str) -> Ticket:
        """Choose a worker, record the ticket with it, and start following it there."""
        try:
            worker = self.pools.choose(start.pool)
        except UnknownPool as exc:
            raise Problem(400, "Bad Request", str(exc)) from None
        except NoHealthyWorker as exc:
            raise Problem(
                503,
                "Service Unavailable",
                f"{exc}; the script was not started",
                reason="no_healthy_worker",
            ) from None
        package = self._package_ref(start.project, start.package)
        forwarded = start.forwarded()
        request = forwarded | {"pool": start.pool}
        try:  # durable first; the directory is written while the start travels (handoffs.py)
            self.store.hand_off(ticket_id, request, worker.address)
        except TicketStoreError as exc:
            raise Problem(
                507, "Insufficient Storage", f"{exc}; the script was not started"
            ) from None
        self._follow(ticket_id, worker, forwarded, accepted=False, package=package)
        try:
            ticket, _new = self.store.create(ticket_id, request, worker=worker.address)
        except TicketStoreError as exc:
            self._runs[ticket_id].cancel()
            raise Problem(
                507,
                "Insufficient Storage",
                f"{exc}; the start may have reached worker {worker.address}: it is cancelled there",
            ) from None
        self.metrics.script_started(start.syntax)
        self.audit.record(
            Event.SCRIPT_START, ticket=ticket.id, project=start.project, client=client,
            syntax=start.syntax, sha256=start.sha256,
            worker=worker.address,
            **({"package": package.name, "package_sha256": package.sha256} if package else {}),
        )  # fmt: skip
        return ticket

    def _package_ref(self, project: str, name: str | None) -> PackageRef | None:
        """The proxy's copy of a package a start names (400 if it has none)."""
        if name is None:
            return None
        path = self.packages.path(project, name) if self.packages else None
        sha256 = self.packages.sha256(project, name) if self.packages and path else None
        if path is None or sha256 is None:
            raise Problem(400, "Bad Request", f"package {name} is not in project {project}'s"
                          f" cache at this proxy; upload it here (PUT /v1/projects/{project}"
                          f"/packages/{name}), and the proxy passes it to the worker it"
                          " chooses")  # fmt: skip
        return PackageRef(project, name, path, sha256)

    def resume(self, ticket_ids: list[str]) -> None:
        """After a restart: follow the tickets that were still running at their workers."""
        for ticket_id in ticket_ids:
            ticket = self.store.get(ticket_id)
            if ticket is None or ticket.record.worker is None:
                continue
            worker = self.pools.worker_at(ticket.record.worker)
            if worker is None:
                message = f"worker {ticket.record.worker} is no longer configured; outcome unknown"
                self._end(ticket, RESULT_LOST, "lost", message)
                continue
            log.info("ticket %s: following it again at %s", ticket.id, worker.address)
            start = {k: v for k, v in ticket.request.items() if k != "pool"} | {"wait_seconds": 0}
            try:
                package = None if ticket.record.accepted else self._package_ref(
                    ticket.project, start.get("package"))  # fmt: skip
            except Problem as problem:
                self._end(ticket, FATAL, "refused", problem.detail)
                continue
            self._follow(ticket.id, worker, start, accepted=ticket.record.accepted,
                         package=package)  # fmt: skip

    def stop(self) -> None:
        for run in self._runs.values():
            run.stop()

    async def cancel(self, ticket: Ticket) -> None:
        """Cancel at the worker; one not reached yet gets it when it is (or never the start)."""
        run = self._runs.get(ticket.id)
        if ticket.complete or run is None:
            return
        if not ticket.record.accepted:
            run.cancel()
            return
        try:
            await self._forward(ticket, "POST", f"/v1/scripts/{ticket.id}/cancel")
        except Problem as problem:
            if problem.status != 503:
                raise
            log.warning("ticket %s: %s; the cancel goes when it is back", ticket.id, problem.detail)
            run.cancel()

    async def complete(self, ticket: Ticket) -> None:
        """Complete at the worker first (it removes the working directory there)."""
        if ticket.record.worker is None:
            return
        try:
            await self._forward(ticket, "DELETE", f"/v1/scripts/{ticket.id}")
        except Problem as problem:
            if problem.status == 409:  # ended here (lost, refused) but still running there
                await self._forward_quietly(ticket, "POST", f"/v1/scripts/{ticket.id}/cancel")
            elif problem.status != 503:
                raise
            log.warning("ticket %s: completed here only: %s", ticket.id, problem.detail)

    async def artifact(self, ticket: Ticket, name: str) -> FileBody:
        """An artifact the ticket's worker kept, fetched into an unnamed file here."""
        address = ticket.record.worker or ""
        worker = self.pools.worker_at(address)
        if worker is None:
            raise Problem(503, "Service Unavailable", f"worker {address} is no longer configured")
        path = f"/v1/scripts/{ticket.id}/artifacts/{urllib.parse.quote(name, safe='')}"

        def fetch() -> FileBody:
            out = tempfile.TemporaryFile(dir=self.store.state_dir)  # noqa: SIM115 - handed on
            try:
                with self.pools.client(worker) as client:
                    length = client.download(path, out)
                out.flush()
                fd = os.dup(out.fileno())
                os.lseek(fd, 0, os.SEEK_SET)
                return FileBody(fd, length)
            finally:
                out.close()

        try:
            return await threads.deferToThread(fetch)
        except ClientError as exc:
            status = 404 if exc.status == 404 else 503
            raise Problem(status, "Not Found" if status == 404 else "Service Unavailable",
                          f"worker {address}: {exc}") from None  # fmt: skip

    async def _forward(self, ticket: Ticket, method: str, path: str) -> None:
        address = ticket.record.worker or ""
        worker = self.pools.worker_at(address)
        if worker is None:
            raise Problem(503, "Service Unavailable", f"worker {address} is no longer configured")

        def call() -> tuple[int, dict[str, Any]]:
            with self.pools.client(worker, timeout=CANCEL_TIMEOUT) as client:
                return client.call(method, path)

        try:
            status, doc = await threads.deferToThread(call)
        except ClientError as exc:
            raise Problem(503, "Service Unavailable", f"{exc}; retry when it is back") from None
        if status >= 400 and status != 404:
            detail = f"worker {address}: {doc.get('detail', doc)}"
            raise Problem(status, str(doc.get("title", "")), detail)

    async def _forward_quietly(self, ticket: Ticket, method: str, path: str) -> None:
        try:
            await self._forward(ticket, method, path)
        except Problem as problem:
            log.warning("ticket %s: %s %s: %s", ticket.id, method, path, problem.detail)

    def _follow(
        self, ticket_id: str, worker: ExternalWorker, start: dict[str, Any], *, accepted: bool,
        package: PackageRef | None = None,
    ) -> None:  # fmt: skip
        """Start following a ticket at its worker. The hooks find the ticket when they run
        (on the reactor thread, after `hand_off` has created it); one whose creation failed
        is only cancelled there and let go."""

        def accepted_hook() -> None:
            if (ticket := self.store.get(ticket_id)) is None:
                return
            try:
                ticket.mark_accepted()
            except TicketStoreError as exc:  # a restart may send the start again: it is
                log.error("ticket %s: %s", ticket.id, exc)  # idempotent at the worker

        def unreachable(message: str) -> None:
            # Never a line of its own: the log's numbers are the worker's, copied as they are.
            log.warning("ticket %s: %s", ticket_id, message)
            if (ticket := self.store.get(ticket_id)) is not None:
                ticket.note = message
                self._wake(ticket.id)

        def page(doc: dict[str, Any]) -> tuple[int, bool]:
            if (ticket := self.store.get(ticket_id)) is not None:
                return self._copy(ticket, doc)
            complete = doc.get("state") == "complete"
            if complete:
                self._runs.pop(ticket_id, None)
            next_seq = doc.get("next_seq")
            return (next_seq if type(next_seq) is int else 0), complete

        def end(exit_code: int, reason: str, message: str) -> None:
            self._runs.pop(ticket_id, None)
            ticket = self.store.get(ticket_id)
            if ticket is not None and not ticket.complete:
                self._end(ticket, exit_code, reason, message)

        hooks = Hooks(accepted_hook, page, unreachable, end)
        self._runs[ticket_id] = RemoteRun(
            ticket_id, worker, start, self.pools, hooks, accepted=accepted, package=package
        )

    def _copy(self, ticket: Ticket, doc: dict[str, Any]) -> tuple[int, bool]:
        """One status page of the worker's: copy its lines; end the ticket when it ends."""
        if ticket.complete:
            return ticket.next_seq, True
        ticket.note = ""  # reached again
        try:
            ticket.adopt_outputs(doc)
            added = ticket.copy_lines(list(doc.get("logs", [])))
            if doc.get("state") == "running" and ticket.state is State.PENDING:
                ticket.running()  # (a first answer that is already the end skips this)
        except (TicketStoreError, InvalidTransition) as exc:  # as a direct worker: -41
            self._runs.pop(ticket.id, None)
            self._end(ticket, FATAL, "output lost", f"output could not be recorded: {exc}")
            worker = self.pools.worker_at(ticket.record.worker or "")
            if worker is not None:
                threads.deferToThread(self.pools.cancel_at, worker, ticket.id)
            return ticket.next_seq, True
        if added:
            self._wake(ticket.id)
        next_seq = doc.get("next_seq")
        whole = type(next_seq) is int and ticket.next_seq >= next_seq
        if doc.get("state") == "complete" and whole:
            self._runs.pop(ticket.id, None)
            code = doc.get("exit_code")
            exit_code = code if type(code) is int else FATAL
            self._end(ticket, exit_code, "remote", str(doc.get("message", "")))
            return ticket.next_seq, True
        return ticket.next_seq, False
