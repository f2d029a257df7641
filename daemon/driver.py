"""Drive a sandboxed script from the Twisted reactor.

The sandbox hands back a `Running` (descriptors for stdout, stderr, the
launcher's status pipe and its pidfd); this module watches them with the
reactor instead of a blocking loop and applies the same `Supervision` rules as
`sandworker sandbox run`: TERM, grace, KILL, backup deadline, output cap.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from collections.abc import Callable
from typing import Any, Protocol, cast

from twisted.internet import reactor as _reactor
from twisted.internet import task
from twisted.python import log

from sandworker.sandbox.outcome import Outcome, Reason, setup_report
from sandworker.sandbox.runner import Running, Supervision
from sandworker.sandbox.zygote import Zygote, ZygoteError

TICK_SECONDS = 0.05
DRAIN_SECONDS = 2.0  # after the launcher exits, how long leftover output may still arrive
# A chatty script fills a bigger pipe between two reads, and each read hands on a bigger
# batch: fewer reactor turns and appends per megabyte. (Root is not held to pipe-max-size.)
PIPE_BYTES = 1024 * 1024
READ_BYTES = 256 * 1024


class _Reactor(Protocol):
    def addReader(self, reader: Any) -> None: ...
    def removeReader(self, reader: Any) -> None: ...
    def callLater(self, delay: float, fn: Callable[..., object], /, *args: object) -> Any: ...


reactor = cast(_Reactor, _reactor)


class _Reader:
    """An IReadDescriptor for one of the run's descriptors."""

    def __init__(self, fd: int, on_data: Callable[[bytes], None], *, read: bool = True) -> None:
        self.fd, self.on_data, self.read = fd, on_data, read

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "sandworker-script"

    def doRead(self) -> None:
        if not self.read:  # a pidfd: readable means the process exited; it has no data
            self.on_data(b"")
            return
        try:
            data = os.read(self.fd, READ_BYTES)
        except BlockingIOError:
            return
        self.on_data(data)

    def connectionLost(self, reason: object) -> None:
        # The reactor reports a hung-up pipe (EOF without data) here, not through doRead.
        self.on_data(b"")


class ScriptDriver:
    """One running script: output goes to `on_output`, the outcome to `on_done` (once)."""

    def __init__(
        self,
        running: Running,
        zygote: Zygote,
        on_output: Callable[[str, bytes], None],
        on_done: Callable[[Outcome], None],
    ) -> None:
        self.running = running
        self.rules = Supervision(running, zygote)
        self.on_output, self.on_done = on_output, on_done
        self.cancelled = False
        self._setup: list[bytes] = []
        self._setup_error: str | None = None
        self._setup_done = False
        self._spawn_seconds = 0.0
        self._raw: int | None = None
        self._readers: dict[int, _Reader] = {}
        self._finished = False
        for fd, handler in (
            (running.stdout, lambda data: self._output("stdout", running.stdout, data)),
            (running.stderr, lambda data: self._output("stderr", running.stderr, data)),
            (running.status, self._status),
            (running.pidfd, lambda _data: self._exited()),
        ):
            os.set_blocking(fd, False)
            if fd in (running.stdout, running.stderr):
                with contextlib.suppress(OSError):  # a smaller pipe is slower, not wrong
                    fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
            self._readers[fd] = _Reader(fd, handler, read=fd != running.pidfd)
            reactor.addReader(self._readers[fd])
        self._ticker = task.LoopingCall(self._tick)
        self._ticker.start(TICK_SECONDS, now=False)

    def cancel(self) -> None:
        """TERM the whole tree now; KILL follows after the policy's grace period."""
        self.cancelled = True
        self._tick()

    def stop_now(self) -> None:
        """Kill the run and finish it synchronously (the reactor is going away)."""
        if self._finished:
            return
        self.running.kill(Reason.CANCELLED)
        if self._raw is None:
            try:
                self._raw = self.rules.exited()
            except ZygoteError as exc:
                self._lost(exc)
                return
        self._finish()

    def _stop_reading(self, fd: int) -> None:
        reader = self._readers.pop(fd, None)
        if reader is not None:
            reactor.removeReader(reader)

    def _output(self, source: str, fd: int, data: bytes) -> None:
        if not data:
            self._stop_reading(fd)
            self._maybe_finish()
            return
        kept = self.rules.output(data)
        if kept:
            self.on_output(source, kept)

    def _status(self, data: bytes) -> None:
        if data:
            self._setup.append(data)
            return
        self._stop_reading(self.running.status)
        os.close(self.running.status)
        self._setup_done = True
        self._spawn_seconds = time.monotonic() - self.running.started
        self._setup_error = setup_report(b"".join(self._setup))

    def _exited(self) -> None:
        self._stop_reading(self.running.pidfd)
        try:
            self._raw = self.rules.exited()
        except ZygoteError as exc:
            self._lost(exc)
            return
        reactor.callLater(DRAIN_SECONDS, self._finish)
        self._maybe_finish()

    def _tick(self) -> None:
        if self._raw is not None or self._finished:
            return
        try:
            given_up = self.rules.tick(time.monotonic(), self.cancelled)
        except ZygoteError as exc:
            self._lost(exc)
            return
        if given_up is not None:
            self._raw = given_up
            self._finish()

    def _lost(self, exc: ZygoteError) -> None:
        self.running.kill(Reason.LOST)
        self.running.plan.debug.append(f"lost the launcher: {exc}")
        self._raw = signal.SIGKILL
        self._finish()

    def _maybe_finish(self) -> None:
        outputs = {self.running.stdout, self.running.stderr}
        if self._raw is not None and not outputs & set(self._readers):
            self._finish()

    def _finish(self) -> None:
        if self._finished or self._raw is None:
            return
        self._finished = True
        self._ticker.stop()
        for fd in list(self._readers):
            self._stop_reading(fd)
        if not self._setup_done:  # never reached exec: whatever it said is the reason
            self._status(b"")
        outcome = self.running.finish(self._raw, self._setup_error)
        outcome.spawn_seconds = self._spawn_seconds
        try:
            self.on_done(outcome)
        except Exception:
            log.err(None, "outcome callback failed")  # type: ignore[no-untyped-call]
