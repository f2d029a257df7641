"""The ticket store: every ticket under `<state>/tickets`, recovered after a restart.

See tickets.py for the layout of one ticket and its guarantees.
"""

from __future__ import annotations

import contextlib
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

from .handoffs import HANDOFF_FILE, HandoffJournal
from .prepared import Prepared
from .ticketdir import (
    DIR_FLAGS,
    REQUEST_FILE,
    STATE_FILE,
    TicketDir,
    TicketError,
    TicketStoreError,
    check_private,
    remove_dir,
    store_error,
)
from .ticketlog import LOG_FILE, TicketLog
from .tickets import (
    DEFAULT_PURGE_AGE,
    LOST_MESSAGE,
    RESULT_LOST,
    InvalidTicketId,
    State,
    Ticket,
    TicketRecord,
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
        self.prepared: Prepared | None = None
        try:
            self.tickets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._fd = os.open(self.tickets_dir, DIR_FLAGS)
        except OSError as exc:
            raise TicketStoreError(f"cannot open the ticket store: {exc}") from exc
        try:
            check_private(self._fd, self.tickets_dir)
            self._handoffs = HandoffJournal(state_dir / HANDOFF_FILE)
        except (OSError, TicketStoreError) as exc:
            os.close(self._fd)
            if isinstance(exc, TicketStoreError):
                raise
            raise TicketStoreError(f"cannot open the ticket store: {exc}") from exc

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
        record = TicketRecord(
            id=ticket_id, state=State.PENDING, created=self._clock(), worker=worker
        )
        files = {REQUEST_FILE: body, STATE_FILE: record.to_json()}
        where = TicketDir(self._fd, key, self.tickets_dir / key)
        if _exists(self._fd, key):  # (recover() loads every ticket directory)
            raise TicketStoreError(
                f"ticket {ticket_id} has a directory in {self.tickets_dir} that this store has"
                " not loaded: run recover() before accepting tickets"
            )
        prepared = self.prepared
        spare = prepared.take() if prepared is not None else None
        try:
            if prepared is not None and spare is not None:
                prepared.place(spare, files, self._fd, key)
            else:
                os.mkdir(key, 0o700, dir_fd=self._fd)
        except OSError as exc:
            if prepared is not None and spare is not None:
                prepared.discard(spare)
            raise store_error(ticket_id, self.state_dir, exc) from exc
        ticket_log = None
        try:
            where.check_private(fix=True)
            # (created before the files are written, so that one fsync covers its name)
            ticket_log = TicketLog.open(where.log_opener(), self._clock, keep_open=True)
            if spare is None:
                where.write(files)
            os.fsync(self._fd)
        except OSError as exc:
            if ticket_log is not None:
                with contextlib.suppress(OSError):
                    ticket_log.close()
            self._remove(key)
            raise store_error(ticket_id, self.state_dir, exc) from exc
        ticket = self._tickets[key] = Ticket(where, record, dict(request), ticket_log)
        self._handoffs.placed(key)
        return ticket, True

    def hand_off(self, ticket_id: str, request: Mapping[str, Any], worker: str) -> None:
        """Record durably, before the start goes to `worker`, that it does (handoffs.py);
        `create` follows. A restart creates the ticket if `create` never did."""
        key = ticket_key(ticket_id)
        entry = {"id": ticket_id, "worker": worker, "request": dict(request)}
        try:
            self._handoffs.write(key, entry)
        except OSError as exc:
            raise store_error(ticket_id, self.state_dir, exc) from exc

    def prepare_ahead(self) -> None:
        """Keep ticket directories ready from now on (see prepared.py): the daemon calls it
        once recovery is done."""
        if self.prepared is None:
            try:
                self.prepared = Prepared(self.state_dir / "prepared")
            except OSError as exc:
                raise TicketStoreError(f"cannot prepare ticket directories: {exc}") from exc

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
        self._recover_handoffs(found)
        return found

    def _recover_handoffs(self, found: Recovery) -> None:
        """Create the tickets a proxy handed off but stopped before writing (handoffs.py)."""
        try:
            entries, problems = self._handoffs.entries()
        except OSError as exc:
            found.problems.append(f"cannot read {self._handoffs.path}: {exc}")
            return
        found.problems += problems
        complete = True
        for entry in entries:
            ticket_id, worker = entry.get("id"), entry.get("worker")
            try:
                if not isinstance(ticket_id, str) or not isinstance(worker, str):
                    raise ValueError("the hand-off has no ticket id or worker")
                if self.get(ticket_id) is not None:
                    continue
                self.create(ticket_id, entry["request"], worker=worker)
            except (TicketError, ValueError) as exc:
                found.problems.append(f"{self._handoffs.path}: cannot recover a hand-off: {exc}")
                complete = complete and not isinstance(exc, TicketStoreError)  # retry then
                continue
            found.restored.append(ticket_id)
            found.handed.append(ticket_id)
            found.problems.append(
                f"ticket {ticket_id}: the proxy stopped while handing it to {worker}, before"
                f" its directory was written: made from {self._handoffs.path}"
            )
        if complete:
            try:
                self._handoffs.clear()
            except OSError as exc:
                found.problems.append(f"cannot empty {self._handoffs.path}: {exc}")

    def close(self) -> None:
        """Fsync and release every descriptor; closing twice is harmless."""
        if self._fd < 0:
            return
        if self.prepared is not None:
            self.prepared.close()
            self.prepared = None
        self._handoffs.close()
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
        record, corrupt = self._load_record(where, info.st_mtime, found)
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

    def _load_record(
        self, where: TicketDir, mtime: float, found: Recovery
    ) -> tuple[TicketRecord, str | None]:
        """The last whole record (a running stand-in if corrupt), and what is corrupt about
        it. A torn record after it was never acknowledged: it is cut away."""
        raw = where.read(STATE_FILE)
        try:
            if raw is None:
                raise ValueError(f"{STATE_FILE} is missing")
            end = raw.rfind(b"\n") + 1
            if end == 0:
                raise ValueError("it holds no whole record")
            record = TicketRecord.from_json(raw[raw.rfind(b"\n", 0, end - 1) + 1 : end])
            if ticket_key(record.id) != where.key:
                raise ValueError(f"it names ticket {record.id}")
        except (ValueError, TypeError) as exc:
            why = f"result lost: {where.path / STATE_FILE} is corrupt ({exc})"
            return TicketRecord(id=where.key, state=State.RUNNING, created=mtime), why
        if end < len(raw):
            where.cut(STATE_FILE, end)
            found.problems.append(
                f"ticket {where.key}: cut {len(raw) - end} bytes of a torn last record"
                f" off {where.path / STATE_FILE}"
            )
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
        remove_dir(self._fd, key, strict=strict)


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


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
