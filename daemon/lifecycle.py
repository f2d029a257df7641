"""The daemon's life under a service manager: ready, status and watchdog, reload, stop.

- READY=1 once the listener is bound and the tickets are recovered (`started`).
- Every `tick` (half of WatchdogSec, else 5 s) sends STATUS= when it changed, and
  WATCHDOG=1 while the daemon is healthy: the reactor runs this very loop, and the state
  directory is still there. A blocked reactor or a lost state directory sends nothing,
  and systemd restarts the daemon.
- SIGHUP and the control socket reload (control.py), between RELOADING=1 and READY=1.
- SIGTERM (or SIGINT) stops: STOPPING=1, starts get 503, queued scripts are cancelled,
  running ones have `server.stop_grace` to finish (EXTEND_TIMEOUT_USEC= asks systemd for
  that time), then the reactor stops and the shutdown kills what still runs, recording
  each outcome. A second SIGTERM stops at once.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet import task

from .control import Reloader, ReloadResult
from .service import ScriptService
from .systemd import Notifier

TICK_SECONDS = 5.0  # status updates when there is no watchdog
EXTEND_MARGIN = 15.0  # seconds asked beyond the grace left, for the shutdown itself
log = logging.getLogger(__name__)
reactor: Any = _reactor


class Lifecycle:
    def __init__(
        self,
        notifier: Notifier,
        service: ScriptService,
        reloader: Reloader,
        *,
        state_dir: Path,
    ) -> None:
        self.notifier, self.service, self.reloader = notifier, service, reloader
        self._state_dir = state_dir
        self._said = ""
        self._deadline: float | None = None  # monotonic end of the stop grace
        self._drain: task.LoopingCall | None = None

    def started(self) -> None:
        """The reactor runs: take over its signals, start the loop, tell systemd."""
        signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(self.reload))
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: reactor.callFromThread(self.stop))
        interval = self.notifier.watchdog_interval or TICK_SECONDS
        task.LoopingCall(self.tick).start(interval, now=False)
        self._said = self.summary()
        self.notifier.ready(self._said)

    def summary(self) -> str:
        service = self.service
        if service.proxy.active:
            workers = service.proxy.pools.report()
            healthy = sum(1 for w in workers if w["healthy"])
            text = f"proxying: {healthy} of {len(workers)} external workers healthy"
        else:
            scheduler = service.builtin.scheduler
            text = f"{scheduler.running} running, {scheduler.queued} queued"
        if self._deadline is not None:
            left = max(0.0, self._deadline - time.monotonic())
            text = f"stopping ({left:.0f} s of grace left): {text}"
        if self.reloader.last_failed:
            text += "; the last reload FAILED (see the log)"
        return text

    def tick(self) -> None:
        text = self.summary()
        if text != self._said:
            self._said = text
            self.notifier.status(text)
        if self.notifier.watchdog_interval is not None and self._healthy():
            self.notifier.watchdog()

    def _healthy(self) -> bool:
        try:
            os.stat(self._state_dir)
        except OSError as exc:
            log.error("unhealthy: the state directory %s: %s", self._state_dir, exc)
            return False
        return True

    def reload(self) -> ReloadResult:
        self.notifier.reloading()
        result = self.reloader.reload()
        self._said = self.summary()
        self.notifier.ready(self._said)
        return result

    def stop(self) -> None:
        if self._drain is not None:
            log.warning("second stop signal: stopping now")
            reactor.stop()
            return
        grace = float(self.reloader.config["server.stop_grace"])
        self._deadline = time.monotonic() + grace
        self.service.stopping = True
        self.service.builtin.cancel_queued("the worker is stopping; cancelled before it started")
        log.info(
            "stopping: new starts are refused; %d running scripts have %.0f s to finish",
            self.service.builtin.scheduler.running,
            grace,
        )
        self.notifier.stopping(self.summary(), extend_seconds=grace + EXTEND_MARGIN)
        self._drain = task.LoopingCall(self._drained)
        self._drain.start(0.2, now=True)

    def _drained(self) -> None:
        assert self._deadline is not None
        running = self.service.builtin.scheduler.running
        left = self._deadline - time.monotonic()
        if running == 0 or left <= 0:
            if running:
                log.warning("stop grace over: cancelling %d running scripts", running)
            if self._drain is not None and self._drain.running:
                self._drain.stop()
            reactor.stop()
            return
        text = self.summary()
        if text != self._said:  # (about once a second: the grace left is in it)
            self._said = text
            self.notifier.extend(left + EXTEND_MARGIN, text)
