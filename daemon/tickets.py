"""Durable tickets: one directory per accepted script, which a restarted daemon answers for.

Layout, all root's and private (directories 0700, files 0600):

    <state>/tickets/<id in lower case>/
        request.json   the accepted start request, written before the ticket is acknowledged
        state.jsonl    the state record, one whole record a line, appended and fsynced at
                       every transition: the last whole line is the ticket's state (a torn
                       last line was never acknowledged, and recovery cuts it away)
        log.jsonl      the numbered output lines (see ticketlog.py for the fsync guarantee)
        artifact-<n>   the artifacts kept at the script's end (artifacts.py)

Ticket ids are chosen by the client and compared case-insensitively, as Tentacle does.
Every file is reached through the tickets directory's descriptor with O_NOFOLLOW
(ticketdir.py: the directory, its files and the store's errors).

Exit codes: the script's own when it ended by itself (128 + signal number when a signal
ended it), otherwise one of Tentacle's reserved codes; see `exit_code_for`.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sandworker.sandbox.outcome import Outcome, Reason

from .scriptstate import ScriptMessages, adopted
from .servicemessages import LEVELS, Masker
from .ticketdir import STATE_FILE, TicketDir, store_error, stored_artifact
from .ticketdir import TicketError as TicketError  # noqa: PLC0414 - re-exported
from .ticketdir import TicketStoreError as TicketStoreError  # noqa: PLC0414 - re-exported
from .ticketlog import (
    MAX_LINE_BYTES,
    LineFramer,
    LogLine,
    Source,
    TicketLog,
    escape,
    rfc3339,
    text_lines,
)

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# Tentacle's reserved exit codes (ScriptExitCodes.cs).
FATAL = -41
CANCELLED = -43
TIMEOUT = -44
UNKNOWN_TICKET = -45
RESULT_LOST = -46

DEFAULT_PURGE_AGE = 24 * 3600.0
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z", re.ASCII)
LOST_MESSAGE = "result lost: the supervisor stopped while the script ran"
_TICKET_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


class InvalidTicketId(TicketError, ValueError):
    pass


class InvalidTransition(TicketError):
    pass


def ticket_key(ticket_id: object) -> str:
    """The normalised (lower-case) form of a valid ticket id, which names its directory."""
    if (
        not isinstance(ticket_id, str)
        or _TICKET_ID.fullmatch(ticket_id) is None
        or not ticket_id.strip(".")
    ):
        shown = json.dumps(ticket_id, default=repr)[:80]
        raise InvalidTicketId(
            f"ticket id {shown} is not allowed: use 1-128 letters, digits, '.', '_' or '-',"
            " not only dots"
        )
    return ticket_id.lower()


class State(enum.StrEnum):
    """Tentacle's ProcessState. Metric labels and audit events use these values."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETE = "complete"

    def check(self, target: State) -> None:
        if target not in _TRANSITIONS[self]:
            raise InvalidTransition(f"a ticket cannot go from {self} to {target}")


_TRANSITIONS = {
    State.PENDING: {State.RUNNING, State.COMPLETE},  # complete: refused or cancelled before start
    State.RUNNING: {State.COMPLETE},
    State.COMPLETE: set(),
}

# Reasons the worker ended or never started the script: Tentacle's "fatal". A limit kill is
# the worker's enforcement, not the script's exit, so it is -41 too (never 128 + SIGKILL,
# which would look as if the script died by itself); the reason and message tell which limit.
_RESERVED = {
    Reason.TIMEOUT: TIMEOUT,
    Reason.CANCELLED: CANCELLED,
    Reason.REFUSED: FATAL,
    Reason.SETUP_FAILED: FATAL,
    Reason.LOST: FATAL,
    Reason.MEMORY: FATAL,
    Reason.OUTPUT: FATAL,
    Reason.CPU: FATAL,
    Reason.FILE_SIZE: FATAL,
}


def exit_code_for(outcome: Outcome) -> int:
    """Exited: the script's own code, or 128 + signal number. Otherwise a reserved code."""
    if outcome.reason is not Reason.EXITED:
        return _RESERVED[outcome.reason]
    if outcome.exit_code is not None:
        return outcome.exit_code
    if outcome.signal is not None:
        return 128 + signal.Signals[outcome.signal].value
    return FATAL


@dataclass(frozen=True)
class TicketRecord:
    """A line of state.jsonl. Times are Unix seconds in memory, RFC 3339 on disk."""

    id: str
    state: State
    created: float
    started: float | None = None
    completed: float | None = None
    client_completed: float | None = None
    exit_code: int | None = None
    reason: str | None = None
    message: str = ""
    log_lines: int = 0
    worker: str | None = None  # the external worker it was handed to (a proxy's ticket)
    accepted: bool = False  # that worker acknowledged the start: it is never sent again
    # what the script's service messages set (scriptstate.py)
    outputs: dict[str, Any] = field(default_factory=dict)  # name -> {value, sensitive}
    artifacts: list[dict[str, Any]] = field(default_factory=list)  # {name, path, length}
    progress: dict[str, Any] | None = None  # {percentage, message}
    result_message: str | None = None

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {name: getattr(self, name) for name in self.__dataclass_fields__}
        for name in _TIMES:
            doc[name] = None if doc[name] is None else rfc3339(doc[name])
        return json.dumps(doc).encode() + b"\n"  # one line

    @classmethod
    def from_json(cls, raw: bytes) -> TicketRecord:
        """Parse a line of state.jsonl; ValueError says what is wrong."""
        doc = json.loads(raw)
        fields = set(cls.__dataclass_fields__)
        if not isinstance(doc, dict) or not set(doc) <= fields or fields - set(doc) - _NEWER:
            raise ValueError("not a ticket state record (missing or unknown fields)")
        for name in _TIMES:
            if doc[name] is not None:
                doc[name] = datetime.fromisoformat(doc[name]).timestamp()
        record = cls(**doc)
        ticket_key(record.id)
        if not isinstance(record.created, float) or not isinstance(record.log_lines, int):
            raise ValueError("created or log_lines has the wrong type")
        return replace(record, state=State(record.state))


_TIMES = ("created", "started", "completed", "client_completed")
_NEWER = {"accepted", "outputs", "artifacts", "progress", "result_message"}  # (older records)


class Ticket:
    """One accepted script: its request, state record and log. Every change is persisted
    first and applied in memory after, so a failed write leaves the ticket as it was."""

    def __init__(
        self, where: TicketDir, record: TicketRecord, request: dict[str, Any], log: TicketLog
    ) -> None:
        self._dir, self._record, self.request, self._log = where, record, request, log
        self.note = ""  # while it runs, the status message (the proxy's "unreachable since")
        self.masker = Masker(_sensitive(request.get("variables")) + _sensitive(record.outputs))
        self._framers = {
            pipe: LineFramer(mask=self.masker) for pipe in (Source.STDOUT, Source.STDERR)
        }
        self._messages = ScriptMessages(self.masker)

    @property
    def id(self) -> str:
        return self._record.id

    @property
    def record(self) -> TicketRecord:
        return self._record

    @property
    def state(self) -> State:
        return self._record.state

    @property
    def complete(self) -> bool:
        return self._record.state is State.COMPLETE

    @property
    def exit_code(self) -> int | None:
        return self._record.exit_code

    @property
    def message(self) -> str:
        return self._record.message

    @property
    def project(self) -> str:
        return str(self.request.get("project", ""))

    @property
    def next_seq(self) -> int:
        return self._log.count

    def running(self) -> None:
        self._commit(self._moved(State.RUNNING, started=self._log_clock()))

    def finish(self, exit_code: int, reason: str, message: str) -> None:
        """Flush unfinished lines, fsync the log, then record the final state."""
        self._moved(State.COMPLETE)  # refuse a bad transition before writing anything
        for source, framer in self._framers.items():
            self._emit(source, framer.flush())
        self._commit(self._final(exit_code, reason, message), also=self._log.sync)
        self.close()

    def finish_in_memory(self, exit_code: int, reason: str, message: str) -> None:
        """The disk refused `finish`: answer the final state from memory. After a restart,
        recovery finds the ticket unfinished and reports it as -46 with the output kept."""
        self._record = self._final(exit_code, reason, message)
        with contextlib.suppress(TicketStoreError):
            self.close()

    def _final(self, exit_code: int, reason: str, message: str) -> TicketRecord:
        return replace(
            self._moved(State.COMPLETE),
            completed=self._log_clock(),
            exit_code=exit_code,
            reason=reason,
            message=self.masker.mask_text(message),
            log_lines=self._log.count,
        )

    def output(self, source: str, data: bytes) -> None:
        """Raw bytes from the script's stdout or stderr pipe."""
        pipe = Source(source)
        if pipe is Source.DEBUG:
            raise ValueError("script output comes from stdout or stderr, never debug")
        self._emit(pipe, self._framers[pipe].feed(data))

    def _emit(self, pipe: Source, quoted: list[bytes]) -> None:
        """Script lines: stdout's service messages applied (and kept out of the log)."""
        if pipe is not Source.STDOUT or not quoted or not self._messages.wants(quoted):
            self._append(pipe, quoted)
            return
        split = self._messages.split(quoted, self._record)
        if split.changes:
            self._commit(replace(self._record, **split.changes))
        for level, lines in split.runs:
            self._append(pipe, lines, level)
        for note in split.notes:
            self.debug(note)

    @property
    def directory(self) -> Path:
        return self._dir.path

    def open_dir(self) -> int:
        """A descriptor of the ticket's directory (the caller closes it)."""
        return self._dir.fd()

    def set_artifacts(self, artifacts: list[dict[str, Any]]) -> None:
        self._commit(replace(self._record, artifacts=artifacts))

    def open_artifact(self, name: str) -> tuple[int, int] | None:
        """(descriptor, length) of the first kept artifact called `name`, or None."""
        for index, artifact in enumerate(self._record.artifacts):
            if artifact.get("name") == name and artifact.get("kept"):
                fd = self._dir.open(stored_artifact(index), os.O_RDONLY)
                return fd, os.fstat(fd).st_size
        return None

    def adopt_outputs(self, doc: dict[str, Any]) -> None:
        """A proxy: take what the worker's status page says the script set."""
        changes = adopted(self._record, doc)
        for value in _sensitive(changes.get("outputs")):
            self.masker.add(value)
        if changes:
            self._commit(replace(self._record, **changes))

    def debug(self, text: str) -> None:
        """The daemon's own remark, shown to the client as a debug line."""
        self._append(Source.DEBUG, text_lines(text))

    def mark_accepted(self) -> None:
        self._commit(replace(self._record, accepted=True))

    def copy_lines(self, lines: list[dict[str, Any]]) -> int:
        """The worker's lines, numbered by it: those this copy already has are skipped, and
        copying stops at a gap (the caller asks again from `next_seq`). How many were added.
        Nothing in them is trusted: the source must be one of the three, the time is
        replaced by this worker's clock if it is not RFC 3339, the text is escaped here."""
        wanted = self.next_seq
        copies: list[tuple[Source, str, bytes, str]] = []
        for line in lines:
            if not isinstance(line, dict):
                break
            seq, text = line.get("seq"), line.get("text")
            if type(seq) is not int or seq < wanted + len(copies):
                continue
            if seq > wanted + len(copies) or not isinstance(text, str):
                break
            if len(text.encode("utf-8", "replace")) > MAX_LINE_BYTES:  # no worker sends that
                break
            try:
                source = Source(str(line.get("source")))
            except ValueError:
                break
            stamp = line.get("time")
            if not isinstance(stamp, str) or _RFC3339.fullmatch(stamp) is None:
                stamp = rfc3339(self._log.clock())
            level = line.get("level", "default")
            quoted = self.masker.mask(escape([text.encode("utf-8", "replace")]))[0]
            copies.append((source, stamp, quoted, level if level in LEVELS else "default"))
        if self.complete and copies:
            raise InvalidTransition(f"ticket {self.id} is complete; its log is closed")
        return self._persist(lambda: self._log.append_copies(copies)) if copies else 0

    def read_after(self, after: int, limit: int) -> list[LogLine]:
        return self._persist(lambda: self._log.read_after(after, limit), "read")

    def read_raw_after(self, after: int, limit: int) -> tuple[bytes, int]:
        """The lines after `after` as the bytes of a JSON array, and how many there are."""
        return self._persist(lambda: self._log.read_raw_after(after, limit), "read")

    def sync(self) -> None:
        self._persist(self._log.sync)

    def close(self) -> None:
        """Fsync and release the log's descriptor (done by `finish`, or at shutdown)."""
        self._persist(self._log.close)

    def mark_completed_by_client(self) -> None:
        if not self.complete:
            raise InvalidTransition(f"ticket {self.id} is still {self.state}; cancel it first")
        if self._record.client_completed is None:
            self._commit(replace(self._record, client_completed=self._log_clock()))

    def adopt(self, record: TicketRecord) -> None:
        """Take a record in memory only (recovery, when the disk refuses it)."""
        self._record = record

    def _moved(self, target: State, **changes: Any) -> TicketRecord:
        try:
            self._record.state.check(target)
        except InvalidTransition as exc:
            raise InvalidTransition(f"ticket {self.id}: {exc}") from None
        return replace(self._record, state=target, **changes)

    def _append(self, source: Source, quoted: list[bytes], level: str = "default") -> None:
        if self.complete:
            raise InvalidTransition(f"ticket {self.id} is complete; its log is closed")
        if quoted:
            masked = self.masker.mask(quoted)
            self._persist(lambda: self._log.append(source, masked, level))

    def _commit(self, record: TicketRecord, also: Callable[[], None] = lambda: None) -> None:
        """Persist the record (`also` first: the log's fsync before a final state), then
        take it."""
        self._persist(lambda: self._dir.append(STATE_FILE, record.to_json(), also))
        self._record = record

    def _persist(self, action: Callable[[], _T], verb: str = "persist") -> _T:
        try:
            return action()
        except OSError as exc:
            raise store_error(self.id, self._dir.path.parent.parent, exc, verb) from exc

    def _log_clock(self) -> float:
        return self._log.clock()


def _sensitive(items: object) -> tuple[str, ...]:
    """The sensitive values among a start's variables (a list of {name, value, sensitive},
    as persisted) or output variables ({name: {value, sensitive}})."""
    if isinstance(items, dict):
        items = list(items.values())
    found = items if isinstance(items, (list, tuple)) else ()  # (a tuple until it is stored)
    return tuple(
        str(v.get("value", "")) for v in found if isinstance(v, dict) and v.get("sensitive")
    )
