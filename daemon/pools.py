"""The external workers at run time: health checks, routing, and connections to them.

Checks run in the reactor's thread pool (the client library blocks); their results
are applied on the reactor thread. A worker is in rotation while healthy: its
first check decides, then `unhealthy_after` failures in a row take it out and
`healthy_after` passes in a row bring it back. Routing picks, in the pool a start
names, the healthy worker with the fewest scripts running (as it last said, plus
those sent to it since), in turn among equals.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import defer, threads

from sandworker.sandbox.atomic import write_atomic

from .client import Client, ClientError, Profile
from .ticketlog import rfc3339
from .workers import DEFAULT_POOL, ExternalWorker, WorkerError, WorkerStore

MAX_IDLE = 8  # kept-alive connections per worker and timeout
CANCEL_TIMEOUT = 15.0  # seconds for a cancel or complete passed on to a worker
HEALTH_FILE = "workers.json"  # <state>/workers.json: the last checks, for `pool list`
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckSettings:
    interval: float
    timeout: float
    unhealthy_after: int
    healthy_after: int
    lost_after: float


@dataclass
class Health:
    worker: ExternalWorker
    healthy: bool | None = None  # None: not checked yet
    passes: int = 0  # in a row
    failures: int = 0
    checked: float | None = None  # wall clock of the last check
    error: str = ""
    latency: float | None = None
    running: int = 0  # as it last said
    sent: int = 0  # scripts sent to it since

    def report(self) -> dict[str, Any]:
        return {
            "pool": self.worker.pool,
            "address": self.worker.address,
            "healthy": self.healthy,  # None until its first check
            "checked": rfc3339(self.checked) if self.checked else None,
            "error": self.error,
            "latency_ms": None if self.latency is None else round(self.latency * 1000, 1),
            "running": self.running,
        }

    def why_not(self) -> str:
        if self.healthy is None:
            return "not checked yet"
        return self.error or "recovering: not enough passed checks in a row yet"


class NoHealthyWorker(Exception):
    """No worker of the pool may take a script; the message lists each and why."""


class UnknownPool(NoHealthyWorker):
    """The start names a pool that is not configured; the message lists those that are."""


class Pools:
    def __init__(
        self,
        store: WorkerStore,
        *,
        certificate: Path,
        key: Path,
        settings: CheckSettings,
        state_dir: Path,
        on_refused: Callable[[ExternalWorker, str], None],
        on_health: Callable[[ExternalWorker, bool, str], None] = lambda *_: None,
    ) -> None:
        """`on_health(worker, healthy, error)`: a worker went in or out of rotation."""
        self.store, self.settings = store, settings
        self._cert, self._key, self._state_dir = certificate, key, state_dir
        self._on_refused, self._on_health = on_refused, on_health
        self._health: dict[tuple[str, str], Health] = {}
        self._turn = 0
        self._idle: dict[tuple[ExternalWorker, float | None], list[Client]] = {}
        self._lock = threading.Lock()  # guards _idle (used from pool threads)

    # --- configuration -------------------------------------------------------------------

    def configured(self) -> bool:
        """Whether external workers are configured, so the built-in worker is off. An
        unusable workers file counts as configured: fail closed, never run scripts here
        because the list of where to send them is broken."""
        try:
            return bool(self.store.workers())
        except WorkerError:
            return True

    def current(self) -> list[Health]:
        """The configured workers with their health (kept across edits of the file)."""
        workers = self.store.workers()
        keys = {(w.pool, w.address): w for w in workers}
        for key in list(self._health):
            if key not in keys or self._health[key].worker != keys[key]:
                self._drop_connections(self._health.pop(key).worker)  # removed, or re-pinned
        for key, worker in keys.items():
            self._health.setdefault(key, Health(worker))
        return [self._health[(w.pool, w.address)] for w in workers]

    def worker_at(self, address: str) -> ExternalWorker | None:
        with contextlib.suppress(WorkerError):
            for worker in self.store.workers():
                if worker.address == address:
                    return worker
        return None

    # --- routing -------------------------------------------------------------------------

    def choose(self, pool: str | None) -> ExternalWorker:
        try:
            members = [h for h in self.current() if h.worker.pool == (pool or DEFAULT_POOL)]
        except WorkerError as exc:
            raise NoHealthyWorker(f"the external workers file is unusable: {exc}") from None
        if not members:
            names = sorted({h.worker.pool for h in self._health.values()})
            raise UnknownPool(
                f"no pool {pool or DEFAULT_POOL!r}; configured pools: {', '.join(names)}"
            )
        healthy = [h for h in members if h.healthy]
        if not healthy:
            listed = "; ".join(f"{h.worker.address}: {h.why_not()}" for h in members)
            raise NoHealthyWorker(f"no healthy worker in pool {members[0].worker.pool}: {listed}")
        self._turn += 1
        load = min(h.running + h.sent for h in healthy)
        equal = [h for h in healthy if h.running + h.sent == load]
        chosen = equal[self._turn % len(equal)]
        chosen.sent += 1
        return chosen.worker

    # --- health checks -------------------------------------------------------------------

    def check_all(self) -> defer.Deferred[None]:
        try:
            members = self.current()
        except WorkerError as exc:
            log.error("external workers: %s", exc)
            return defer.succeed(None)
        if not members:
            return defer.succeed(None)
        checks = [self._check(h) for h in members]
        done: defer.Deferred[None] = defer.DeferredList(checks).addCallback(
            lambda _: self._write_report()
        )
        return done

    def _check(self, health: Health) -> defer.Deferred[Any]:
        began = time.monotonic()
        asked = threads.deferToThread(self._ask_health, health.worker)
        asked.addCallbacks(
            lambda doc: self._passed(health, doc, time.monotonic() - began),
            lambda failure: self._failed(health, failure.getErrorMessage()),
        )
        return asked

    def _ask_health(self, worker: ExternalWorker) -> dict[str, Any]:
        with self.client(worker, timeout=self.settings.timeout) as client:
            return client.checked("GET", "/v1/health")

    def _passed(self, health: Health, doc: dict[str, Any], latency: float) -> None:
        running = doc.get("running") if isinstance(doc, dict) else None
        if type(running) is not int or running < 0:
            self._failed(health, f"its health answer is not a sandworker's: {str(doc)[:200]}")
            return
        if doc.get("builtin_worker") is False:  # another proxy: no loops, no second hops
            self._failed(health, "it proxies to external workers itself; list a worker")
            return
        health.checked, health.latency, health.error = time.time(), latency, ""
        health.running, health.sent = running, 0
        health.passes, health.failures = health.passes + 1, 0
        if not health.healthy and (
            health.healthy is None or health.passes >= self.settings.healthy_after
        ):
            if health.healthy is False:
                log.warning("external worker %s is healthy again", health.worker.name)
            health.healthy = True
            self._on_health(health.worker, True, "")

    def _failed(self, health: Health, error: str) -> None:
        if "thumbprint mismatch" in error and error != health.error:  # audited once a change
            self._on_refused(health.worker, error)
        health.checked, health.latency, health.error = time.time(), None, error
        health.passes, health.failures = 0, health.failures + 1
        if health.healthy is None or (
            health.healthy and health.failures >= self.settings.unhealthy_after
        ):
            log.warning("external worker %s is unhealthy: %s", health.worker.name, error)
            health.healthy = False
            self._on_health(health.worker, False, error)

    def _write_report(self) -> None:
        report = [h.report() for h in self._health.values()]
        with contextlib.suppress(OSError):
            body = json.dumps({"checked": rfc3339(time.time()), "workers": report}, indent=1)
            write_atomic(self._state_dir / HEALTH_FILE, body.encode() + b"\n", mode=0o600)

    def report(self) -> list[dict[str, Any]]:
        with contextlib.suppress(WorkerError):
            self.current()
        return [h.report() for h in self._health.values()]

    # --- connections ---------------------------------------------------------------------

    def cancel_at(self, worker: ExternalWorker, ticket_id: str) -> None:
        """Cancel a ticket at its worker, best effort (any thread): a failure is logged."""
        try:
            with self.client(worker, timeout=CANCEL_TIMEOUT) as client:
                client.call("POST", f"/v1/scripts/{ticket_id}/cancel")
        except ClientError as exc:
            log.warning("ticket %s: cancel at %s failed: %s", ticket_id, worker.address, exc)

    def _drop_connections(self, worker: ExternalWorker) -> None:
        with self._lock:
            dropped = [c for (w, _), idle in self._idle.items() if w == worker for c in idle]
            self._idle = {k: v for k, v in self._idle.items() if k[0] != worker}
        for client in dropped:
            client.close()

    @contextlib.contextmanager
    def client(self, worker: ExternalWorker, timeout: float | None = None) -> Iterator[Client]:
        """A kept-alive client for `worker` (any thread), presenting this daemon's own
        certificate; `timeout` for connecting and each read (default: long enough for a
        long-poll). A client whose call failed is closed, not kept."""
        key = (worker, timeout)
        with self._lock:
            idle = self._idle.setdefault(key, [])
            client = idle.pop() if idle else None
        if client is None:
            profile = Profile(worker.address, worker.thumbprint, self._cert, self._key)
            client = Client(profile) if timeout is None else Client(profile, timeout=timeout)
        try:
            yield client
        except BaseException:
            client.close()
            raise
        with self._lock:
            kept = self._idle.get(key)
            if kept is None or len(kept) >= MAX_IDLE or worker != self._configured(worker):
                keep = False  # removed or re-pinned meanwhile, or enough kept already
            else:
                kept.append(client)
                keep = True
        if not keep:
            client.close()

    def _configured(self, worker: ExternalWorker) -> ExternalWorker | None:
        health = self._health.get((worker.pool, worker.address))
        return health.worker if health is not None else worker  # unknown yet: as it is
