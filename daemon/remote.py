"""A ticket handed to an external worker: started there and followed until it completes.

One thread per ticket runs the blocking client: it sends the start (idempotent, so
it is simply sent again when the worker never got it), then long-polls the status
from the end of the local copy and hands every page to the reactor thread, which
copies the lines into the local ticket. Status calls and long-polls are answered
from that copy, so they keep answering while the worker is unreachable; after
`lost_after` without reaching it the ticket completes with -46.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.threads import blockingCallFromThread

from .client import POLL_SECONDS, ClientError
from .pools import Pools
from .ticketlog import rfc3339
from .tickets import FATAL, RESULT_LOST

RETRY_SECONDS = 1.0  # between attempts to reach an unreachable worker (doubling, up to 10 s)


class RemoteRun:
    def __init__(
        self,
        ticket_id: str,
        address: str,
        start: dict[str, Any],
        pools: Pools,
        *,
        lost_after: float,
        started: bool,
        on_page: Callable[[dict[str, Any]], tuple[int, bool]],
        on_unreachable: Callable[[str], None],
        on_end: Callable[[int, str, str], None],
    ) -> None:
        """`on_page(status) -> (next_seq, complete)`, `on_unreachable(message)` and
        `on_end(exit_code, reason, message)` run on the reactor thread."""
        self.ticket_id, self.address, self._start = ticket_id, address, start
        self._pools, self._lost_after, self._started = pools, lost_after, started
        self._on_page, self._on_unreachable, self._on_end = on_page, on_unreachable, on_end
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"remote-{ticket_id}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """The daemon stops: let go (the worker keeps running it; a restart follows on)."""
        self._stop.set()

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return blockingCallFromThread(_reactor, fn, *args)

    def _run(self) -> None:
        after, lost_since, wait = -1, None, RETRY_SECONDS
        while not self._stop.is_set():
            worker = self._pools.worker_at(self.address)
            try:
                if worker is None:
                    raise ClientError(f"worker {self.address} is no longer configured")
                with self._pools.client(worker) as client:
                    if self._started:
                        path = f"/v1/scripts/{self.ticket_id}?after={after}&wait={POLL_SECONDS}"
                        status, doc = client.call("GET", path)
                    else:
                        status, doc = client.call(
                            "PUT", f"/v1/scripts/{self.ticket_id}", self._start
                        )
            except ClientError as exc:
                now = time.monotonic()
                if lost_since is None:
                    lost_since = (now, time.time())
                    self._call(
                        self._on_unreachable,
                        f"worker {self.address} unreachable since"
                        f" {rfc3339(lost_since[1])}: {exc}; status answers what arrived",
                    )
                if now - lost_since[0] >= self._lost_after:
                    message = f"worker {self.address} unreachable since {rfc3339(lost_since[1])}"
                    self._call(self._on_end, RESULT_LOST, "lost", f"{message}: {exc}")
                    return
                self._stop.wait(wait)
                wait = min(wait * 2, 10.0)
                continue
            lost_since, wait = None, RETRY_SECONDS
            if status == 404 and self._started:  # it never got the start: send it again
                self._started = False
                continue
            if status >= 400:
                detail = f"{status} {doc.get('title', '')}: {doc.get('detail', doc)}"
                self._call(self._on_end, FATAL, "refused", f"worker {self.address}: {detail}")
                return
            self._started = True
            self._start = {**self._start, "wait_seconds": 0}
            next_seq, complete = self._call(self._on_page, doc)
            if complete:
                return
            after = next_seq - 1
