"""The audit log: one JSON object per line, append-only, mode 0600, under the state directory.

It answers a security team's questions after the fact: which certificate tried
to connect and was refused, which client started, cancelled or completed which
ticket for which project, how each script ended, and when the daemon started
and stopped. Ticket records are purged after their retention; audit lines are
not (rotate the file with logrotate's `copytruncate` and keep the rotated files:
`verify` checks them, oldest first, as one chain).

Each record: `seq` (1, 2, ...), `time` (RFC 3339, UTC), `event` (a name from
`Event`), the event's fields, and `prev`: the SHA-256 of the previous record's line
(64 zeros for the first), so that an edited or deleted record breaks the chain at the
next one. `audit.head` (0600, replaced at every sync) holds the count and the hash of
the last record synced, so that cutting records off the end is found too; the daemon
also logs it when it stops. `verify` (`sandworker audit verify`) checks all of it and
names the first bad record. Values come from validated requests and certificates
only, and JSON encoding keeps a hostile value on its own line.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandworker.sandbox.atomic import write_atomic

from .ticketlog import rfc3339

log = logging.getLogger(__name__)

AUDIT_FILE = "audit.jsonl"
HEAD_FILE = "audit.head"
GENESIS = "0" * 64
TAIL_BYTES = 1 << 20  # the last record is found in this much of the file's end


class Event(enum.StrEnum):
    DAEMON_START = "daemon.start"
    DAEMON_STOP = "daemon.stop"
    DAEMON_RELOAD = "daemon.reload"  # ok, and the problems of a failed one
    CLIENT_REFUSED = "client.refused"  # TLS handshake: untrusted or missing certificate
    CLIENT_FORBIDDEN = "client.forbidden"  # trusted, but not for this project
    SCRIPT_START = "script.start"  # project, syntax, client, the script's sha256
    SCRIPT_RUN = "script.run"  # the built-in worker launched it: the account (uid) it runs as
    SCRIPT_END = "script.end"
    SCRIPT_CANCEL = "script.cancel"
    SCRIPT_COMPLETE = "script.complete"
    TICKET_RECOVERED = "ticket.recovered"
    TICKET_PURGED = "ticket.purged"
    WORKER_REFUSED = "worker.refused"  # an external worker presented the wrong certificate
    WORKER_HEALTH = "worker.health"  # an external worker became healthy or unhealthy
    PACKAGE_UPLOADED = "package.uploaded"  # project, name, sha256, length, client
    PACKAGE_FETCHED = "package.fetched"  # the same, and the url it was downloaded from
    PACKAGE_REMOVED = "package.removed"  # project, name, client
    TRUST_CHANGED = "trust.changed"  # the trust file now trusts other clients (added, removed)


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


class AuditLog:
    """Appends records with one `write()` each (O_APPEND: whole lines).

    A record that cannot be written (full disk) is logged as an error and dropped;
    it never fails the request that caused it (the chain goes on from the last one
    written)."""

    def __init__(self, path: Path, *, clock: Any = time.time) -> None:
        self.path, self._clock = path, clock
        self.head_path = path.with_name(HEAD_FILE)
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        self._fd = os.open(path, flags, 0o600)
        os.fchmod(self._fd, 0o600)
        self.seq, self.prev = self._resume()
        self._synced = self.seq

    def _resume(self) -> tuple[int, str]:
        """The last record's number and hash, to chain on from."""
        size = os.fstat(self._fd).st_size
        if size == 0:  # new, or emptied by a rotation: on from the head's last record
            try:
                head = json.loads(self.head_path.read_text())
                return int(head["records"]), str(head["sha256"])
            except (OSError, ValueError, KeyError, TypeError):
                return 0, GENESIS
        start = max(0, size - TAIL_BYTES)
        tail = os.pread(self._fd, size - start, start)
        if not tail.endswith(b"\n"):  # a torn write: left for `verify` to report
            log.error("%s ends in a torn record; the chain goes on after it", self.path)
            os.write(self._fd, b"\n")
            tail += b"\n"
        last = tail[:-1].rsplit(b"\n", 1)[-1]
        try:
            seq = int(json.loads(last)["seq"])
        except (ValueError, KeyError, TypeError):  # torn, or written before the chain
            seq = sum(1 for _ in open(self.path, "rb"))  # noqa: SIM115 - read once, closed
        return seq, line_hash(last)

    def record(self, event: Event, **fields: Any) -> None:
        entry = {"seq": self.seq + 1, "time": rfc3339(self._clock()), "event": str(event)}
        entry.update(fields)
        entry["prev"] = self.prev
        line = json.dumps(entry, sort_keys=False, ensure_ascii=True).encode()
        try:
            os.write(self._fd, line + b"\n")
        except OSError as exc:
            log.error("audit record lost (%s): %s", exc.strerror or exc, line.decode())
            return
        self.seq, self.prev = self.seq + 1, line_hash(line)

    def sync(self) -> None:
        try:
            os.fsync(self._fd)
            if self._synced != self.seq:
                head = json.dumps({"records": self.seq, "sha256": self.prev}) + "\n"
                write_atomic(self.head_path, head.encode(), mode=0o600)
                self._synced = self.seq
        except OSError as exc:
            log.error("cannot fsync the audit log %s: %s", self.path, exc)

    def close(self) -> None:
        self.sync()
        log.info("audit log %s: %d records, last sha256 %s", self.path, self.seq, self.prev)
        os.close(self._fd)


@dataclass
class Verdict:
    ok: bool
    records: int
    message: str


def verify(path: Path, *earlier: Path) -> Verdict:
    """Check the chain of `path` (after the rotated files `earlier`, oldest first) and its
    head file; name the first bad record."""
    seq = 0
    try:
        seq = _check_chain([*earlier, path])
        return Verdict(True, seq, _check_head([*earlier, path], seq))
    except _Bad as bad:
        return Verdict(False, bad.records, str(bad))


class _Bad(Exception):
    def __init__(self, records: int, message: str) -> None:
        super().__init__(message)
        self.records = records


def _lines(paths: list[Path]) -> Iterator[tuple[int, bytes]]:
    """(record number, raw line) across the files, in order."""
    number = 0
    for path in paths:
        with open(path, "rb") as f:
            for raw in f:
                number += 1
                yield number, raw


def _check_chain(paths: list[Path]) -> int:
    prev, seq = GENESIS, 0
    for number, raw in _lines(paths):
        line = raw.rstrip(b"\n")
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not isinstance(entry, dict) or not raw.endswith(b"\n"):
            raise _Bad(seq, f"record {number} (line {number}) is not a whole JSON record:"
                       " edited, or torn by a crash")  # fmt: skip
        if entry.get("seq") != number:
            raise _Bad(seq, f"line {number} holds record {entry.get('seq')}: records"
                       " before it were deleted or moved")  # fmt: skip
        if entry.get("prev") != prev:
            raise _Bad(seq, f"record {number - 1} was edited or deleted: record {number}"
                       f" chains to {entry.get('prev')}, not {prev}")  # fmt: skip
        prev, seq = line_hash(line), number
    return seq


def _check_head(paths: list[Path], seq: int) -> str:
    head = paths[-1].with_name(HEAD_FILE)
    try:
        anchor = json.loads(head.read_text())
        records, sha = int(anchor["records"]), str(anchor["sha256"])
    except FileNotFoundError:
        return f"{seq} records, chain intact; no {HEAD_FILE} to check the end against"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _Bad(seq, f"{head} is unreadable: {exc}") from None
    if seq < records:
        raise _Bad(seq, f"truncated: {head} says {records} records, the file has {seq}")
    if _hash_of(paths, records) != sha:
        raise _Bad(seq, f"record {records} differs from the one {head} recorded")
    return f"{seq} records, chain intact, the end matches {HEAD_FILE}"


def _hash_of(paths: list[Path], number: int) -> str:
    if number == 0:
        return GENESIS
    for n, raw in _lines(paths):
        if n == number:
            return line_hash(raw.rstrip(b"\n"))
    return ""
