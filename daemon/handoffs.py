"""The proxy's write-ahead record of hand-offs: which ticket went to which worker.

A proxy sends a start to its worker before the ticket's directory is written (that costs
about 1 ms, spent while the worker runs the script), so it first appends the ticket's id,
request and worker here as one line and fsyncs it: one write to a file kept open, no new
inode. A restart creates every ticket named here that has no directory yet and follows
it at its worker (the start is sent again, and a worker that has it answers for it),
then empties the file. A torn last line was never sent anywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from sandworker.sandbox.atomic import write_all

HANDOFF_FILE = "handoffs.jsonl"
TRIM_BYTES = 64 * 1024  # emptied when it is larger and every ticket in it has its directory


class HandoffJournal:
    def __init__(self, path: Path) -> None:
        self.path = path
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        self._fd = os.open(path, flags, 0o600)
        os.fchmod(self._fd, 0o600)
        self._unplaced: set[str] = set()  # keys written here whose directory is not yet

    def write(self, key: str, entry: dict[str, Any]) -> None:
        """Append one hand-off and fsync it; on failure nothing of it stays."""
        end = os.fstat(self._fd).st_size
        try:
            write_all(self._fd, json.dumps(entry).encode() + b"\n")
            os.fsync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, end)
            raise
        self._unplaced.add(key)

    def placed(self, key: str) -> None:
        """The ticket's directory is written: its line is no longer needed."""
        if key not in self._unplaced:  # (a ticket of the built-in worker, or recovered)
            return
        self._unplaced.discard(key)
        if not self._unplaced and os.fstat(self._fd).st_size > TRIM_BYTES:
            self.clear()

    def entries(self) -> tuple[list[dict[str, Any]], list[str]]:
        """The whole lines (oldest first), and what was wrong with the others."""
        raw = os.pread(self._fd, os.fstat(self._fd).st_size, 0)
        entries, problems = [], []
        lines = raw.split(b"\n")
        if lines[-1]:
            problems.append(f"{self.path}: a torn last line (a hand-off never sent) is ignored")
        for number, line in enumerate(lines[:-1], 1):
            try:
                entry = json.loads(line)
                if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
                    raise ValueError("not a hand-off record")
                entries.append(entry)
            except ValueError as exc:
                problems.append(f"{self.path}:{number}: ignored ({exc})")
        return entries, problems

    def clear(self) -> None:
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)
