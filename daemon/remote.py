"""A ticket handed to an external worker: started there and followed until it completes.

One thread per ticket followed runs the blocking client (threads are reused, see
`Followers`): it sends the start (again after a
restart only if the worker never acknowledged it, so a script never runs twice),
then long-polls the status from the end of the local copy and hands every page to
the reactor thread, which copies the lines into the local ticket. Status calls and
long-polls are answered from that copy, so they keep answering while the worker is
unreachable; after `lost_after` without reaching it the ticket completes with -46.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.threads import blockingCallFromThread

from .client import POLL_SECONDS, Client, ClientError, refused
from .pools import Pools
from .ticketlog import rfc3339
from .tickets import CANCELLED, FATAL, RESULT_LOST
from .workers import ExternalWorker

RETRY_SECONDS = 1.0  # between attempts to reach an unreachable worker (doubling, up to 10 s)
STUCK_PAGES = 3  # pages in a row that add nothing: the copy cannot go on
IDLE_SECONDS = 60.0  # a follower thread without a ticket for this long ends
log = logging.getLogger(__name__)


class Followers:
    """The threads that follow tickets: one per ticket followed at a time, kept for
    IDLE_SECONDS once its ticket is done, so that a start reuses one (making a thread
    costs about 0.3 ms here, on the path of every proxied start)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._idle = 0  # threads waiting for a job, less the jobs queued for them

    def run(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._idle > 0:
                self._idle -= 1
                self._jobs.put(job)
                return
        threading.Thread(target=self._serve, args=(job,), name="remote", daemon=True).start()

    def _serve(self, job: Callable[[], None]) -> None:
        while True:
            job()
            with self._lock:
                self._idle += 1
            try:
                job = self._jobs.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self._lock:  # (a job queued since the timeout is this thread's)
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        self._idle -= 1
                        return


FOLLOWERS = Followers()


@dataclass(frozen=True)
class PackageRef:
    """A package of the proxy's cache that a start names: the worker gets it first."""

    project: str
    name: str
    path: Path
    sha256: str


@dataclass
class Hooks:
    """What the thread hands to the reactor thread (each runs there)."""

    accepted: Callable[[], None]  # the worker acknowledged the start: never send it again
    page: Callable[[dict[str, Any]], tuple[int, bool]]  # copy a page: (next_seq, complete)
    unreachable: Callable[[str], None]
    end: Callable[[int, str, str], None]  # (exit_code, reason, message)


class RemoteRun:
    def __init__(
        self,
        ticket_id: str,
        worker: ExternalWorker,
        start: dict[str, Any],
        pools: Pools,
        hooks: Hooks,
        *,
        accepted: bool,
        package: PackageRef | None = None,
    ) -> None:
        self.ticket_id, self.address, self._start = ticket_id, worker.address, start
        self._package = package
        self._worker, self._pools, self._hooks, self._accepted = worker, pools, hooks, accepted
        self._stop, self._cancel = threading.Event(), threading.Event()
        FOLLOWERS.run(self._run)

    def stop(self) -> None:
        """The daemon stops: let go (the worker keeps running it; a restart follows on)."""
        self._stop.set()

    def cancel(self) -> None:
        """Cancel at the worker as soon as the start is acknowledged (or never send it)."""
        self._cancel.set()

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._stop.is_set():  # the reactor may be gone: nothing more is handed over
            raise _Stopped
        return blockingCallFromThread(_reactor, fn, *args)

    def _run(self) -> None:
        threading.current_thread().name = f"remote-{self.ticket_id}"
        try:
            self._follow()
        except _Stopped:
            pass
        except Exception as exc:  # never leave the ticket running for ever
            log.exception("ticket %s: following it at %s failed", self.ticket_id, self.address)
            with contextlib.suppress(_Stopped):
                self._call(self._hooks.end, FATAL, "lost", f"following it failed: {exc!r}")

    def _follow(self) -> None:
        after, lost_since, wait, stuck = -1, None, RETRY_SECONDS, 0
        while not self._stop.is_set():
            if self._cancel.is_set() and not self._accepted:
                self._call(self._hooks.end, CANCELLED, "cancelled", "cancelled before it started")
                return
            try:
                status, doc = self._exchange(after)
            except ClientError as exc:
                now = time.monotonic()
                if lost_since is None:
                    lost_since = (now, time.time())
                    since = rfc3339(lost_since[1])
                    self._call(
                        self._hooks.unreachable,
                        f"worker {self.address} unreachable since {since}: {exc};"
                        " status answers what arrived",
                    )
                if now - lost_since[0] >= self._pools.settings.lost_after:
                    message = f"worker {self.address} unreachable since {rfc3339(lost_since[1])}"
                    self._call(self._hooks.end, RESULT_LOST, "lost", f"{message}: {exc}")
                    return
                self._stop.wait(wait)
                wait = min(wait * 2, 10.0)
                continue
            lost_since, wait = None, RETRY_SECONDS
            if status == 404 and self._accepted:
                message = f"worker {self.address} no longer knows the ticket (purged, or replaced)"
                self._call(self._hooks.end, RESULT_LOST, "lost", message)
                return
            if status == 404:  # it never got the start: send it now
                continue
            if status >= 400:
                detail = f"{status} {doc.get('title', '')}: {doc.get('detail', doc)}"
                if status == 403:
                    detail = f"it does not trust this proxy for the project: {detail}"
                self._call(self._hooks.end, FATAL, "refused", f"worker {self.address}: {detail}")
                return
            next_seq, complete = self._call(self._hooks.page, doc)
            if complete:
                return
            if not self._accepted:  # (a start that ended at once needs no record of it)
                self._accepted = True
                self._call(self._hooks.accepted)
            stuck = stuck + 1 if next_seq - 1 == after else 0
            if stuck >= STUCK_PAGES:  # the worker's pages do not fit on, or cannot be kept
                self._pools.cancel_at(self._current(), self.ticket_id)
                message = f"the lines of worker {self.address} could not be copied after {after}"
                self._call(self._hooks.end, FATAL, "output lost", message)
                return
            after = next_seq - 1

    def _exchange(self, after: int) -> tuple[int, dict[str, Any]]:
        """One call to the worker: the start, a cancel then a status page, or a page."""
        with self._pools.client(self._current()) as client:
            if not self._accepted:
                if self._package is not None and (refusal := self._deliver(client)):
                    return refusal
                start = {
                    **self._start,
                    "wait_seconds": min(self._start.get("wait_seconds", 0), POLL_SECONDS),
                }
                status, doc = client.call("PUT", f"/v1/scripts/{self.ticket_id}", start)
                self._start = {**self._start, "wait_seconds": 0}
                return status, doc
            if self._cancel.is_set():
                client.call("POST", f"/v1/scripts/{self.ticket_id}/cancel")
                self._cancel.clear()
            path = f"/v1/scripts/{self.ticket_id}?after={after}&wait={POLL_SECONDS}"
            status, doc = client.call("GET", path)
        if status >= 500:  # the worker is in trouble, not the script: as if unreachable
            raise refused(status, doc)
        return status, doc

    def _deliver(self, client: Client) -> tuple[int, dict[str, Any]] | None:
        """Upload the package unless the worker holds it already (same name and SHA-256);
        a refusal to answer the start with. Unreachable: ClientError, as for any call."""
        ref = self._package
        assert ref is not None
        status, doc = client.call("GET", f"/v1/projects/{ref.project}/packages")
        if status >= 400:
            return status, doc
        held = doc.get("packages", [])
        if any(p.get("name") == ref.name and p.get("sha256") == ref.sha256 for p in held):
            return None
        try:
            sent = client.upload(ref.project, ref.name, ref.path)
        except ClientError as exc:
            if exc.status is None or exc.status >= 500:
                raise
            return exc.status, {"title": "the package upload was refused", "detail": str(exc)}
        except OSError as exc:  # the proxy's own copy is gone
            return 409, {"title": "", "detail": f"package {ref.name}: {exc}"}
        if sent.get("sha256") != ref.sha256:
            detail = f"package {ref.name} changed at the proxy while it was sent; start again"
            return 409, {"title": "Conflict", "detail": detail}
        return None

    def _current(self) -> ExternalWorker:
        """The worker as configured now (a new thumbprint applies), else as last known."""
        self._worker = self._pools.worker_at(self.address) or self._worker
        return self._worker


class _Stopped(Exception):
    pass
