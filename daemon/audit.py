"""The audit log: one JSON object per line, append-only, mode 0600, under the state directory.

It answers a security team's questions after the fact: which certificate tried
to connect and was refused, which client started, cancelled or completed which
ticket for which project, how each script ended, and when the daemon started
and stopped. Ticket records are purged after their retention; audit lines are
not (rotate the file with logrotate's `copytruncate`, or ship it).

Each record: `time` (RFC 3339, UTC), `event` (a name from `Event`), then the
event's fields. Values come from validated requests and certificates only, and
JSON encoding keeps a hostile value on its own line.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from .ticketlog import rfc3339

log = logging.getLogger(__name__)

AUDIT_FILE = "audit.jsonl"


class Event(enum.StrEnum):
    DAEMON_START = "daemon.start"
    DAEMON_STOP = "daemon.stop"
    DAEMON_RELOAD = "daemon.reload"  # ok, and the problems of a failed one
    CLIENT_REFUSED = "client.refused"  # TLS handshake: untrusted or missing certificate
    CLIENT_FORBIDDEN = "client.forbidden"  # trusted, but not for this project
    SCRIPT_START = "script.start"
    SCRIPT_END = "script.end"
    SCRIPT_CANCEL = "script.cancel"
    SCRIPT_COMPLETE = "script.complete"
    TICKET_RECOVERED = "ticket.recovered"
    TICKET_PURGED = "ticket.purged"
    WORKER_REFUSED = "worker.refused"  # an external worker presented the wrong certificate


class AuditLog:
    """Appends records with one `write()` each (O_APPEND: whole lines even if shared).

    A record that cannot be written (full disk) is logged as an error and dropped;
    it never fails the request that caused it."""

    def __init__(self, path: Path, *, clock: Any = time.time) -> None:
        self.path, self._clock = path, clock
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        self._fd = os.open(path, flags, 0o600)
        os.fchmod(self._fd, 0o600)

    def record(self, event: Event, **fields: Any) -> None:
        entry = {"time": rfc3339(self._clock()), "event": str(event), **fields}
        line = json.dumps(entry, sort_keys=False, ensure_ascii=True) + "\n"
        try:
            os.write(self._fd, line.encode())
        except OSError as exc:
            log.error("audit record lost (%s): %s", exc.strerror or exc, line.strip())

    def sync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as exc:
            log.error("cannot fsync the audit log %s: %s", self.path, exc)

    def close(self) -> None:
        self.sync()
        os.close(self._fd)
