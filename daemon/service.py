"""The script service: start, status (long-poll), cancel and complete, Tentacle-style (the
package routes are packageservice.py's).

On the reactor thread: validated requests (api.py) are authorised against the
caller's trust entry and handed to the built-in worker (builtin.py: policy,
scheduler, sandbox) or, while external workers are configured, to the proxy
(proxy.py). Both record each ticket before it is acknowledged; this module
answers status and long-polls from the ticket's log and records every outcome.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.parse
from collections.abc import Callable, Sequence

from twisted.internet import defer
from twisted.web import server

from sandworker import __version__
from sandworker.sandbox.layers import Layer
from sandworker.sandbox.policy import PolicySet
from sandworker.sandbox.projects import InvalidProject, validate_project
from sandworker.sandbox.runner import Sandbox
from sandworker.sandbox.syntaxes import SYNTAXES

from .api import PROTOCOL_VERSION, Problem, StartRequest, bad_request
from .audit import AuditLog, Event
from .builtin import BuiltinWorker
from .client import NEXT_SEQ_HEADER, STATE_HEADER
from .driver import reactor
from .http import Body, Encoded, FileBody, Handler, Identity
from .metrics import Metrics
from .packages import PACKAGE_FORMATS, PackageCache
from .packageservice import PackageRoutes
from .pools import Pools
from .proxy import Proxy
from .scheduler import Scheduler
from .tickets import (
    InvalidTicketId,
    State,
    Ticket,
    TicketStoreError,
    ticket_key,
)
from .ticketstore import TicketStore

MAX_LINES_PER_STATUS = 10_000
_REFUSALS = {403: "forbidden", 409: "conflict", 507: "disk_full"}  # by status (else 400)
log = logging.getLogger(__name__)


class ScriptService:
    def __init__(
        self,
        sandbox: Sandbox,
        policies: Callable[[], PolicySet],
        store: TicketStore,
        scheduler: Scheduler,
        audit: AuditLog,
        *,
        metrics: Metrics,
        pools: Pools,
        handed: Sequence[str] = (),
        max_package: int = 1 << 30,
    ) -> None:
        self.sandbox, self.store, self.audit, self.metrics = sandbox, store, audit, metrics
        self._waiters: dict[str, list[defer.Deferred[None]]] = {}
        self.builtin = BuiltinWorker(
            sandbox,
            policies,
            store,
            scheduler,
            audit,
            metrics=metrics,
            end=self._end,
            wake=self._wake,
        )
        self.proxy = Proxy(pools, store, audit, metrics, wake=self._wake, end=self._end)
        self._handed = list(handed)  # recovered tickets still at external workers
        self.stopping = False  # SIGTERM: starts get 503 while running scripts finish
        self.packages = PackageCache(store.state_dir.parent / "packages")
        self.builtin.packages = self.proxy.packages = self.packages
        self._package_routes = PackageRoutes(
            self.packages, audit, policies=policies, proxied=lambda: self.proxy.active,
            project=self._project, max_package=max_package,
        )  # fmt: skip

    def listening(self) -> None:
        """The listener is bound: follow again the tickets recovered at external workers."""
        self.proxy.resume(self._handed)
        self._handed = []

    def routes(self) -> dict[tuple[str, str], Handler]:
        return {
            ("PUT", "scripts/{}"): self.start,
            ("GET", "scripts/{}"): self.status,
            ("POST", "scripts/{}/cancel"): self.cancel,
            ("DELETE", "scripts/{}"): self.complete,
            ("GET", "scripts/{}/artifacts/{}"): self.artifact,
            **self._package_routes.routes(),
            ("GET", "health"): self.health,
            ("GET", "capabilities"): self.capabilities,
        }

    # --- the operations -------------------------------------------------------------------

    async def start(
        self, request: server.Request, parts: list[str], who: Identity
    ) -> tuple[int, Body]:
        try:
            return await self._start(request, parts, who)
        except Problem as problem:
            self.metrics.refused(problem.reason or _REFUSALS.get(problem.status, "bad_request"))
            raise

    async def _start(
        self, request: server.Request, parts: list[str], who: Identity
    ) -> tuple[int, Body]:
        ticket_id = _ticket_id(parts[0])
        start = StartRequest.parse(request.content.read() if request.content else b"")
        self._authorise(who, start.project)
        existing = self.store.get(ticket_id)
        if existing is not None:  # idempotent: a repeated start only reports
            if existing.project != start.project:
                raise Problem(
                    409, "Conflict", f"ticket {ticket_id} already exists for another project"
                )
            return 200, self._status_body(existing, after=-1)
        if self.stopping:
            raise Problem(
                503,
                "Service Unavailable",
                "the worker is stopping; the script was not started",
                reason="stopping",
            )
        if self.proxy.active:  # the workers' policies decide
            ticket = self.proxy.hand_off(ticket_id, start, who.thumbprint)
        else:
            ticket = self.builtin.accept(ticket_id, start, who.thumbprint)
        if start.wait_seconds > 0 and not ticket.complete:
            await self._wait(ticket.id, start.wait_seconds, until_complete=True)
        return 201, self._status_body(ticket, after=-1)

    async def status(
        self, request: server.Request, parts: list[str], who: Identity
    ) -> tuple[int, Body]:
        ticket = self._ticket(parts[0], who)
        after = _int_arg(request, b"after", -1, low=-1)
        wait = float(_int_arg(request, b"wait", 0, low=0, high=60))
        if wait and not ticket.complete and ticket.next_seq <= after + 1:
            await self._wait(ticket.id, wait, until_complete=False)
        return 200, self._status_body(ticket, after)

    def _project(self, raw: str, who: Identity) -> str:
        try:
            project = validate_project(raw)
        except InvalidProject as exc:
            raise Problem(400, "Bad Request", str(exc)) from None
        self._authorise(who, project)
        return project

    async def artifact(
        self, _request: server.Request, parts: list[str], who: Identity
    ) -> tuple[int, Body]:
        """One artifact the supervisor kept, by its name (the first, if names repeat)."""
        ticket = self._ticket(parts[0], who)
        name = urllib.parse.unquote(parts[2])
        if ticket.record.worker is not None:
            return 200, await self.proxy.artifact(ticket, name)
        found = ticket.open_artifact(name)
        if found is None:
            kept = [a["name"] for a in ticket.record.artifacts if a.get("kept")]
            raise Problem(
                404, "Not Found",
                f"ticket {ticket.id} has no kept artifact {name!r} (kept: {kept or 'none'};"
                " the status lists each with why one was not kept)",
            )  # fmt: skip
        return 200, FileBody(*found)

    async def cancel(
        self, _request: server.Request, parts: list[str], who: Identity
    ) -> tuple[int, Body]:
        ticket = self._ticket(parts[0], who)
        if not ticket.complete:
            self.audit.record(
                Event.SCRIPT_CANCEL, ticket=ticket.id, project=ticket.project, client=who.thumbprint
            )
        if ticket.record.worker is not None:
            await self.proxy.cancel(ticket)
        else:
            self.builtin.cancel(ticket)
        return 200, self._status_body(ticket, after=-1)

    async def complete(
        self, _request: server.Request, parts: list[str], who: Identity
    ) -> tuple[int, Body]:
        ticket = self._ticket(parts[0], who)
        if not ticket.complete:
            raise Problem(
                409, "Conflict", f"ticket {ticket.id} is still {ticket.state}; cancel it first"
            )
        if ticket.record.worker is not None:
            await self.proxy.complete(ticket)
        else:
            self.builtin.cleanup(ticket)
        self.store.complete(ticket.id)
        self.audit.record(
            Event.SCRIPT_COMPLETE, ticket=ticket.id, project=ticket.project, client=who.thumbprint
        )
        return 200, self._status_body(ticket, after=-1)

    async def health(
        self, _request: server.Request, _parts: list[str], _who: Identity
    ) -> tuple[int, Body]:
        host = self.sandbox.host
        return 200, {
            "status": "ok",
            "version": __version__,
            "builtin_worker": not self.proxy.active,
            "external_workers": self.proxy.pools.report(),
            "running": self.builtin.scheduler.running,
            "queued": self.builtin.scheduler.queued,
            "layers": {str(layer): host.missing.get(layer, "ok") for layer in Layer},
        }

    async def capabilities(
        self, _request: server.Request, _parts: list[str], _who: Identity
    ) -> tuple[int, Body]:
        host = self.sandbox.host
        return 200, {
            "protocol": PROTOCOL_VERSION,
            "version": __version__,
            "syntaxes": [s for s in SYNTAXES if s in self.sandbox.settings.interpreters],
            "layers": [str(layer) for layer in Layer if layer not in host.missing],
            "packages": {
                "formats": list(PACKAGE_FORMATS), "upload": True,
                "download": not self.proxy.active,  # (a proxy passes uploads on to workers)
                "stages": ["PreDeploy", "Deploy", "PostDeploy", "DeployFailed"],
            },
        }  # fmt: skip

    # --- running ----------------------------------------------------------------------------

    def _end(self, ticket: Ticket, exit_code: int, reason: str, message: str) -> None:
        """Record a ticket's outcome (from memory if the disk refuses it), audit it, and
        answer whoever waits on it."""
        try:
            ticket.finish(exit_code, reason, message)
        except TicketStoreError as exc:  # answer from memory; recovery gives -46 after a restart
            log.error("ticket %s: %s; its outcome is kept in memory only", ticket.id, exc)
            ticket.finish_in_memory(exit_code, reason, f"{message} (not recorded on disk: {exc})")
        record = ticket.record
        ended = record.completed if record.completed is not None else time.time()
        syntax = str(ticket.request.get("syntax", ""))
        began = record.started if record.started is not None else record.created
        self.metrics.script_ended(syntax, exit_code, reason, ended - began)
        self.audit.record(
            Event.SCRIPT_END,
            ticket=ticket.id,
            project=ticket.project,
            exit_code=exit_code,
            reason=reason,
        )
        self._wake(ticket.id)

    def purge(self, retention: float) -> None:
        """Remove tickets older than `retention` (ticketstore.purge), with their working files
        (already gone if a client completed the ticket)."""
        for ticket in self.store.purge(retention):
            if ticket.record.worker is None:  # (a worker's own purge removes its directory)
                self.builtin.cleanup(ticket)
            self.audit.record(Event.TICKET_PURGED, ticket=ticket.id, project=ticket.project)

    def shutdown(self) -> None:
        """The reactor is stopping: kill what runs, record an outcome for every ticket.
        (Tickets at external workers run on there; a restart follows them again.)"""
        self.proxy.stop()
        self.builtin.shutdown()
        self.store.sync()

    # --- helpers --------------------------------------------------------------------------------

    def _authorise(self, who: Identity, project: str) -> None:
        if not who.allows(project):
            self.audit.record(Event.CLIENT_FORBIDDEN, project=project, client=who.thumbprint)
            raise Problem(
                403, "Forbidden", f"this client certificate is not trusted for project {project}"
            )

    def _ticket(self, raw_id: str, who: Identity) -> Ticket:
        ticket = self.store.get(_ticket_id(raw_id))
        if ticket is None:
            raise Problem(404, "Not Found", f"unknown ticket {raw_id}", exit_code=-45)
        self._authorise(who, ticket.project)
        return ticket

    def _status_body(self, ticket: Ticket, after: int) -> Encoded:
        """The status document, encoded: the stored log lines are spliced in as they are.

        A page holds at most MAX_LINES_PER_STATUS lines. One that stops short of the end of a
        finished ticket's log says `running`: a client that polls until `complete` (as
        Tentacle's does) must not stop before it has every line. The state and `next_seq`
        are also headers, so a client may ask for the next page before parsing this one."""
        logs, count = ticket.read_raw_after(after, MAX_LINES_PER_STATUS)
        next_seq = max(after + 1, 0) + count
        final = not ticket.complete or next_seq >= ticket.next_seq
        state = ticket.state if final else State.RUNNING
        head = {
            "ticket": ticket.id,
            "state": str(state),
            "exit_code": ticket.exit_code if final else None,
            "message": ticket.message if final and ticket.complete else ticket.note,
            "next_seq": next_seq,
            "output_variables": ticket.record.outputs,
            "artifacts": ticket.record.artifacts,
            "progress": ticket.record.progress,
            "result_message": ticket.record.result_message,
        }
        body = b"".join((json.dumps(head)[:-1].encode(), b', "logs": ', logs, b"}\n"))
        return Encoded(body, {STATE_HEADER: str(state).encode(), NEXT_SEQ_HEADER: b"%d" % next_seq})

    async def _wait(self, ticket_id: str, seconds: float, *, until_complete: bool) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            waiter: defer.Deferred[None] = defer.Deferred()
            waiting = self._waiters.setdefault(ticket_id, [])
            waiting.append(waiter)
            timer = reactor.callLater(left, waiter.callback, None)
            try:
                await waiter
            finally:  # woken, timed out or the client gone: never left behind in the list
                if timer.active():
                    timer.cancel()
                if waiter in waiting:
                    waiting.remove(waiter)
                if not waiting and self._waiters.get(ticket_id) is waiting:
                    del self._waiters[ticket_id]
            ticket = self.store.get(ticket_id)
            if ticket is None or ticket.complete or not until_complete:
                return

    def _wake(self, ticket_id: str) -> None:
        for waiter in list(self._waiters.pop(ticket_id, [])):  # woken ones leave the list
            if not waiter.called:
                waiter.callback(None)


def _int_arg(
    request: server.Request, name: bytes, default: int, *, low: int, high: int = 2**62
) -> int:
    values = request.args.get(name) if request.args else None
    if not values:
        return default
    try:
        value = int(values[0])
    except ValueError:
        raise Problem(400, "Bad Request", f"{name.decode()} must be an integer") from None
    if not low <= value <= high:
        raise Problem(400, "Bad Request", f"{name.decode()} must be from {low} to {high}")
    return value


def _ticket_id(raw: str) -> str:
    """A client's ticket id, checked by the store's own rules (one set of rules, one place)."""
    try:
        ticket_key(raw)
    except InvalidTicketId as exc:
        raise bad_request(str(exc)) from None
    return raw
