"""Admission of scripts: a global limit, per-project limits and named isolation mutexes.

Pure bookkeeping with an injected clock, so it is tested without processes.
The daemon calls `submit()` when a start is accepted, `admit()` whenever
something may have changed (a submit, a finish, a timer), and `finished()` when
a script is done; a queued ticket is `pending` and `why_waiting()` gives the
debug line that says why.

Isolation follows Tentacle's ScriptIsolationMutex: a named reader-writer lock
where `full` isolation takes it exclusively and `none` shares it. It is
concurrency control between scripts, not a security boundary. Waiting writers
block new readers, so an exclusive script cannot starve.

Fairness: among the queued tickets that may start, the one whose project has
the fewest scripts running starts first, oldest first within that; a ticket
held back by its project limit or a mutex never blocks others behind it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field

DEFAULT_MUTEX = "RunningScript"  # Tentacle's default isolation mutex name


class Isolation(enum.StrEnum):
    FULL = "full"  # exclusive hold of the mutex
    NONE = "none"  # shared hold of the mutex


@dataclass
class Waiting:
    ticket: str
    project: str
    project_limit: int
    isolation: Isolation
    mutex: str
    deadline: float | None  # when waiting for the mutex gives up; None waits forever
    queued_at: float


@dataclass
class Admission:
    started: list[str] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)  # gave up waiting for their mutex


@dataclass
class _Mutex:
    readers: set[str] = field(default_factory=set)
    writer: str | None = None

    def free_for(self, isolation: Isolation) -> bool:
        if isolation is Isolation.FULL:
            return self.writer is None and not self.readers
        return self.writer is None

    def holders(self) -> list[str]:
        return sorted(self.readers) + ([self.writer] if self.writer else [])


class Scheduler:
    def __init__(self, global_limit: int) -> None:
        if global_limit < 1:
            raise ValueError("the global concurrency limit must be at least 1")
        self.global_limit = global_limit
        self._queue: list[Waiting] = []
        self._running: dict[str, Waiting] = {}
        self._mutexes: dict[str, _Mutex] = {}

    def submit(
        self,
        ticket: str,
        project: str,
        project_limit: int,
        now: float,
        *,
        isolation: Isolation = Isolation.NONE,
        mutex: str = DEFAULT_MUTEX,
        acquire_timeout: float = 0.0,
    ) -> None:
        """Queue a ticket; an acquire timeout of 0 waits for the mutex forever (Tentacle)."""
        if ticket in self._running or any(w.ticket == ticket for w in self._queue):
            raise ValueError(f"ticket {ticket} is already scheduled")
        deadline = now + acquire_timeout if acquire_timeout > 0 else None
        self._queue.append(
            Waiting(ticket, project, max(project_limit, 1), isolation, mutex, deadline, now)
        )

    def admit(self, now: float) -> Admission:
        """Start what may start now; give up on tickets whose mutex wait timed out."""
        result = Admission()
        for waiting in list(self._queue):
            if (
                waiting.deadline is not None
                and now >= waiting.deadline
                and self._mutex_only(waiting)
            ):
                self._queue.remove(waiting)
                result.timed_out.append(waiting.ticket)
        while len(self._running) < self.global_limit:
            eligible = [w for w in self._queue if self._blocker(w) is None]
            if not eligible:
                break
            chosen = min(eligible, key=lambda w: (self._count(w.project), w.queued_at))
            self._queue.remove(chosen)
            self._take(chosen)
            result.started.append(chosen.ticket)
        return result

    def finished(self, ticket: str) -> None:
        """The ticket's script is done (or it was cancelled while queued)."""
        self._queue = [w for w in self._queue if w.ticket != ticket]
        waiting = self._running.pop(ticket, None)
        if waiting is None:
            return
        lock = self._mutexes[waiting.mutex]
        lock.readers.discard(ticket)
        if lock.writer == ticket:
            lock.writer = None
        if not lock.holders():
            del self._mutexes[waiting.mutex]

    def why_waiting(self, ticket: str) -> str | None:
        """A person-readable reason the ticket is still queued, or None if it is not."""
        for waiting in self._queue:
            if waiting.ticket == ticket:
                return self._blocker(waiting) or "waiting for a free slot"
        return None

    def next_deadline(self, now: float) -> float | None:
        """The earliest mutex-wait deadline still ahead, for the daemon's timer. (One that
        passed while the ticket waited for a slot is checked when a script finishes.)"""
        ahead = (w.deadline for w in self._queue if w.deadline is not None and w.deadline > now)
        return min(ahead, default=None)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _count(self, project: str) -> int:
        return sum(1 for w in self._running.values() if w.project == project)

    def _blocker(self, waiting: Waiting) -> str | None:
        return self._slot_blocker(waiting) or self._mutex_blocker(waiting)

    def _mutex_only(self, waiting: Waiting) -> bool:
        """Held back by its mutex alone: the acquire timeout runs only then, never while the
        ticket waits for a slot of the worker or of its project."""
        return self._slot_blocker(waiting) is None and self._mutex_blocker(waiting) is not None

    def _slot_blocker(self, waiting: Waiting) -> str | None:
        if len(self._running) >= self.global_limit:
            return f"waiting: all {self.global_limit} script slots of this worker are busy"
        if self._count(waiting.project) >= waiting.project_limit:
            names = ", ".join(
                sorted(t for t, w in self._running.items() if w.project == waiting.project)
            )
            return (
                f"waiting: project {waiting.project} already runs {waiting.project_limit}"
                f" script(s), its policy limit ({names})"
            )
        return None

    def _mutex_blocker(self, waiting: Waiting) -> str | None:
        lock = self._mutexes.get(waiting.mutex, _Mutex())
        holders = lock.holders()
        if not lock.free_for(waiting.isolation):
            return f"waiting for the script in ticket {holders[0]} (mutex {waiting.mutex})"
        if waiting.isolation is Isolation.NONE:
            for writer in self._writers_ahead(waiting):
                return (
                    f"waiting for ticket {writer.ticket}, queued earlier for exclusive use"
                    f" of mutex {waiting.mutex}"
                )
        return None

    def _writers_ahead(self, waiting: Waiting) -> Iterator[Waiting]:
        for other in self._queue:
            if other is waiting:
                return
            if other.mutex == waiting.mutex and other.isolation is Isolation.FULL:
                yield other

    def _take(self, waiting: Waiting) -> None:
        lock = self._mutexes.setdefault(waiting.mutex, _Mutex())
        if waiting.isolation is Isolation.FULL:
            lock.writer = waiting.ticket
        else:
            lock.readers.add(waiting.ticket)
        self._running[waiting.ticket] = waiting
