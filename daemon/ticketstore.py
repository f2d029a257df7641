"""The ticket store: every ticket under `<state>/tickets`, recovered after a restart.

See tickets.py for the layout of one ticket and its guarantees.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sandworker.sandbox.outcome import Reason

from .ticketlog import LOG_FILE, TicketLog
from .tickets import (
    DEFAULT_PURGE_AGE,
    DIR_FLAGS,
    LOST_MESSAGE,
    REQUEST_FILE,
    RESULT_LOST,
    STATE_FILE,
    InvalidTicketId,
    State,
    Ticket,
    TicketDir,
    TicketError,
    TicketRecord,
    TicketStoreError,
    check_private,
    store_error,
    ticket_key,
)

log = logging.getLogger(__name__)


@dataclass
class Recovery:
    """What `TicketStore.recover` found, for the daemon's log."""

    restored: list[str] = field(default_factory=list)  # ids, as recorded
    lost: list[str] = field(default_factory=list)  # ids now complete with RESULT_LOST
    handed: list[str] = field(default_factory=list)  # unfinished, at an external worker
    problems: list[str] = field(default_factory=list)


class TicketStore:
    """Every ticket under `<state_dir>/tickets`, in memory and on disk."""

    def __init__(self, state_dir: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.state_dir, self.tickets_dir, self._clock = state_dir, state_dir / "tickets", clock
        self._tickets: dict[str, Ticket] = {}
        try:
            self.tickets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._fd = os.open(self.tickets_dir, DIR_FLAGS)
        except OSError as exc:
            raise TicketStoreError(f"cannot open the ticket store: {exc}") from exc
        try:
            check_private(self._fd, self.tickets_dir)
        except TicketStoreError:
            os.close(self._fd)
            raise

    def create(
        self, ticket_id: str, request: Mapping[str, Any], worker: str | None = None
    ) -> tuple[Ticket, bool]:
        """Persist a new ticket (pending) before it is acknowledged; `(ticket, is_new)`.
        `worker`: the external worker it is handed to, if any.

        An id already known (case-insensitively) returns that ticket and False."""
        key = ticket_key(ticket_id)
        if (existing := self._tickets.get(key)) is not None:
            return existing, False
        body = json.dumps(dict(request), indent=1, sort_keys=True).encode() + b"\n"
        where = TicketDir(self._fd, key, self.tickets_dir / key)
        try:
            os.mkdir(key, 0o700, dir_fd=self._fd)
        except FileExistsError:
            raise TicketStoreError(
                f"ticket {ticket_id} has a directory in {self.tickets_dir} that this store has"
                " not loaded: run recover() before accepting tickets"
            ) from None
        except OSError as exc:
            raise store_error(ticket_id, self.state_dir, exc) from exc
        try:
            where.check_private(fix=True)
            where.write(REQUEST_FILE, body)
            record = TicketRecord(
                id=ticket_id, state=State.PENDING, created=self._clock(), worker=worker
            )
            where.write(STATE_FILE, record.to_json())
            ticket_log = TicketLog.open(where.log_opener(), self._clock, keep_open=True)
            os.fsync(self._fd)
        except OSError as exc:
            self._remove(key)
            raise store_error(ticket_id, self.state_dir, exc) from exc
        ticket = self._tickets[key] = Ticket(where, record, dict(request), ticket_log)
        return ticket, True

    def get(self, ticket_id: str) -> Ticket | None:
        return self._tickets.get(ticket_key(ticket_id))

    def complete(self, ticket_id: str) -> Ticket:
        """The client's complete call: the ticket's record stays, marked as collected."""
        ticket = self.get(ticket_id)
        if ticket is None:
            raise TicketError(f"unknown ticket {ticket_id}")
        ticket.mark_completed_by_client()
        return ticket

    def all(self) -> list[Ticket]:
        return sorted(self._tickets.values(), key=lambda ticket: ticket.record.created)

    def sync(self) -> None:
        """Fsync every live log with unsynced lines (the daemon calls it on a timer)."""
        for ticket in self._tickets.values():
            if not ticket.complete:
                ticket.sync()

    def purge(self, older_than: float = DEFAULT_PURGE_AGE) -> list[Ticket]:
        """Remove tickets a client completed `older_than` seconds ago, and those that
        finished that long ago and no client completed (the audit log keeps their events)."""
        cutoff = self._clock() - older_than
        purged = []
        for key, ticket in list(self._tickets.items()):
            record = ticket.record
            since = record.client_completed or record.completed
            if since is not None and since <= cutoff:
                try:
                    self._remove(key, strict=True)
                except OSError as exc:
                    log.warning("cannot purge ticket %s: %s", ticket.id, exc)
                    continue
                del self._tickets[key]
                purged.append(ticket)
        return purged

    def recover(self) -> Recovery:
        """Load every ticket on disk; ones a crash left unfinished become RESULT_LOST."""
        found = Recovery()
        for name in sorted(os.listdir(self._fd)):
            if name in self._tickets:
                continue
            try:
                problem = self._load(name, found)
            except (OSError, TicketStoreError) as exc:
                problem = f"cannot recover ticket directory {name}: {exc}"
            if problem:
                found.problems.append(problem)
                log.warning("%s", problem)
        return found

    def close(self) -> None:
        """Fsync and release every descriptor; closing twice is harmless."""
        if self._fd < 0:
            return
        for ticket in self._tickets.values():
            ticket.close()
        os.close(self._fd)
        self._fd = -1

    def _load(self, name: str, found: Recovery) -> str | None:
        if not _is_key(name):
            return f"{self.tickets_dir / name}: not a ticket directory name; left alone"
        info = os.stat(name, dir_fd=self._fd, follow_symlinks=False)
        if not stat.S_ISDIR(info.st_mode):
            return f"{self.tickets_dir / name}: not a directory; left alone"
        where = TicketDir(self._fd, name, self.tickets_dir / name)
        where.check_private()
        raw_request = where.read(REQUEST_FILE)
        if raw_request is None:
            self._remove(name)
            return f"ticket {name} has no {REQUEST_FILE} (never acknowledged): removed"
        request, problem = _parse_request(raw_request)
        record, corrupt = self._load_record(where, info.st_mtime)
        unfinished = corrupt is None and record.state is not State.COMPLETE
        handed = unfinished and record.worker is not None  # runs on, at an external worker
        lost = corrupt is not None or (unfinished and not handed)
        ticket_log = TicketLog.open(where.log_opener(), self._clock, keep_open=lost or handed)
        if ticket_log.dropped_bytes:
            found.problems.append(
                f"ticket {name}: cut {ticket_log.dropped_bytes} bytes of a torn last line"
                f" off {where.path / LOG_FILE}"
            )
        ticket = self._tickets[name] = Ticket(where, record, request, ticket_log)
        found.restored.append(ticket.id)
        if handed:
            found.handed.append(ticket.id)
        if lost:
            found.lost.append(ticket.id)
            self._mark_lost(ticket, corrupt or LOST_MESSAGE, found)
        return f"ticket {name}: {problem}" if problem else corrupt

    def _load_record(self, where: TicketDir, mtime: float) -> tuple[TicketRecord, str | None]:
        """The record (a running stand-in if corrupt), and what is corrupt about it."""
        raw = where.read(STATE_FILE)
        try:
            if raw is None:
                raise ValueError(f"{STATE_FILE} is missing")
            record = TicketRecord.from_json(raw)
            if ticket_key(record.id) != where.key:
                raise ValueError(f"it names ticket {record.id}")
        except (ValueError, TypeError) as exc:
            why = f"result lost: {where.path / STATE_FILE} is corrupt ({exc})"
            return TicketRecord(id=where.key, state=State.RUNNING, created=mtime), why
        return record, None

    def _mark_lost(self, ticket: Ticket, message: str, found: Recovery) -> None:
        try:
            ticket.debug(message)
            ticket.finish(RESULT_LOST, str(Reason.LOST), message)
        except TicketStoreError as exc:
            found.problems.append(f"{exc}; it answers {RESULT_LOST} until the next restart")
            ticket.adopt(
                replace(ticket.record, state=State.COMPLETE, completed=self._clock(),
                        exit_code=RESULT_LOST, reason=str(Reason.LOST), message=message)
            )  # fmt: skip
            ticket.close()

    def _remove(self, key: str, *, strict: bool = False) -> None:
        """Unlink a ticket's files (request.json first, so a half-removed ticket is never
        resurrected), then its directory. Never recursive: a subdirectory is an error."""
        try:
            dir_fd = os.open(key, DIR_FLAGS, dir_fd=self._fd)
            try:
                names = sorted(os.listdir(dir_fd), key=lambda name: name != REQUEST_FILE)
                for name in names:
                    os.unlink(name, dir_fd=dir_fd)
            finally:
                os.close(dir_fd)
            os.rmdir(key, dir_fd=self._fd)
        except OSError:
            if strict:
                raise


def _is_key(name: str) -> bool:
    """Whether a directory name is a ticket's own (a valid id, already in lower case)."""
    try:
        return ticket_key(name) == name
    except InvalidTicketId:
        return False


def _parse_request(raw: bytes) -> tuple[dict[str, Any], str | None]:
    try:
        request = json.loads(raw)
    except ValueError as exc:
        return {}, f"{REQUEST_FILE} is corrupt: {exc}"
    if not isinstance(request, dict):
        return {}, f"{REQUEST_FILE} is not a JSON object"
    return request, None
