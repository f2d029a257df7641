"""A ticket's output: raw pipe bytes framed into numbered lines, kept in an append-only log.jsonl.

Each line of `log.jsonl` is one JSON object, keys in this order:
`{"seq": N, "source": "stdout"|"stderr"|"debug", "time": RFC 3339 UTC, "text": "..."}`.
`seq` counts from 0 without gaps. The source is the pipe the bytes came from (or `debug` for
the daemon's own remarks), never anything in the text; the text is a JSON string, so nothing
a script prints can end a line early, forge a status or borrow another line's source.

Durability guarantee: `append` returns only after `write()` has put the lines into the
file, so they survive a crash of the daemon (kill -9) at once. They reach stable storage
(surviving a power cut or a kernel crash) at the first `append` more than `SYNC_INTERVAL`
seconds after the previous fsync, at `sync()` (the daemon calls it on a timer) and always
before the ticket's final state is written. A crash in the middle of a write leaves at most
a torn last line, which `TicketLog.open` cuts away.
"""

from __future__ import annotations

import codecs
import contextlib
import enum
import json
import os
import stat
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import TypedDict, cast

LOG_FILE = "log.jsonl"
MAX_LINE_CHARS = 16 * 1024  # longer lines are split into several; a line is at most 64 KiB
INDEX_STRIDE = 256  # the index keeps the byte offset of every 256th line
SYNC_INTERVAL = 0.2  # seconds between fsyncs of a log that keeps growing
_READ_CHUNK = 256 * 1024
# One line of log.jsonl; the text is quoted by the JSON encoder, so it is always one JSON string.
_ENTRY = '{"seq": %%d, "source": "%s", "time": "%s", "text": "%%s"}\n'
_quote = encode_basestring  # the C encoder of one JSON string, non-ASCII kept as is

Opener = Callable[[int], int]  # open log.jsonl with these flags, return the descriptor


class Source(enum.StrEnum):
    STDOUT = "stdout"
    STDERR = "stderr"
    DEBUG = "debug"


class LogLine(TypedDict):
    seq: int
    source: str
    time: str
    text: str


def rfc3339(timestamp: float) -> str:
    """`2026-11-28T17:08:25.123Z`."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def split_long(text: str, limit: int = MAX_LINE_CHARS) -> list[str]:
    """One line of text as one or more lines of at most `limit` characters."""
    return [text[i : i + limit] for i in range(0, len(text), limit)] or [""]


class LineFramer:
    """Turns one pipe's raw chunks into lines of text.

    - Lines end at `\\n`; a `\\r\\n` ending counts as one line ending. A bare `\\r` (progress
      bars) stays in the text, where JSON escapes it.
    - Invalid UTF-8 becomes U+FFFD. The decoder is incremental, so a character split across
      two chunks survives.
    - Lines longer than `limit` characters are split; an unfinished line is cut as soon as it
      exceeds the limit, so memory stays bounded however long a script prints without `\\n`.
    - `flush()` at the end returns the unfinished last line, if any.
    """

    def __init__(self, limit: int = MAX_LINE_CHARS) -> None:
        self._limit = limit
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""

    def feed(self, data: bytes) -> list[str]:
        return self._cut(self._decoder.decode(data), final=False)

    def flush(self) -> list[str]:
        return self._cut(self._decoder.decode(b"", final=True), final=True)

    def _cut(self, text: str, *, final: bool) -> list[str]:
        buffered = self._partial + text
        *complete, rest = buffered.split("\n")
        lines: list[str] = []
        if "\r" in buffered or any(len(line) > self._limit for line in complete):
            for line in complete:
                lines.extend(split_long(line.removesuffix("\r"), self._limit))
        else:
            lines.extend(complete)
        while len(rest) > self._limit:
            lines.append(rest[: self._limit])
            rest = rest[self._limit :]
        if final and rest:
            lines.append(rest)
            rest = ""
        self._partial = rest
        return lines


def _escape_each(texts: list[str]) -> list[str]:
    """Each text escaped as the inside of a JSON string. Lines hold no newline, so unless a
    backslash could make an escaped newline ambiguous, one encoder call does them all."""
    joined = "\n".join(texts)
    if len(texts) >= 8 and "\\" not in joined:
        pieces = _quote(joined)[1:-1].split("\\n")
        if len(pieces) == len(texts):
            return pieces
    return [_quote(text)[1:-1] for text in texts]


class TicketLog:
    """The numbered lines of one ticket, with an in-memory index for `read_after`.

    While the ticket is live the log keeps one descriptor open for appending; once closed,
    each read opens the file afresh through `opener`, so finished tickets hold no descriptor.
    """

    def __init__(self, opener: Opener, clock: Callable[[], float]) -> None:
        self._opener = opener
        self.clock = clock
        self._fd: int | None = None
        self._marks: list[int] = []  # _marks[i]: byte offset of line i * INDEX_STRIDE
        self._count = 0
        self._size = 0  # bytes of whole lines; reads never look past it
        self._dirty = False
        self._synced = time.monotonic()
        self.dropped_bytes = 0  # a torn tail cut away by open()

    @classmethod
    def open(cls, opener: Opener, clock: Callable[[], float], *, keep_open: bool) -> TicketLog:
        """Open (creating it if missing) and index the log, cutting away a torn last line."""
        log = cls(opener, clock)
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = opener(flags)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(f"{LOG_FILE} is not a regular file")
            os.fchmod(fd, 0o600)
            log._index(fd, info.st_size)
        except BaseException:
            os.close(fd)
            raise
        if keep_open:
            log._fd = fd
        else:
            os.close(fd)
        return log

    @property
    def count(self) -> int:
        return self._count

    def append(self, source: Source, texts: Iterable[str]) -> int:
        """Write lines in one `write()`; on failure nothing of them stays in the file."""
        if self._fd is None:
            raise ValueError("the log is closed")
        # One template per call, then a C-level loop: this is the hot path of a chatty script.
        template = _ENTRY % (str(source), rfc3339(self.clock()))
        quoted = _escape_each(list(texts))
        seqs = range(self._count, self._count + len(quoted))
        entries = list(map(template.__mod__, zip(seqs, quoted, strict=True)))
        buffer = bytearray()
        marks: list[int] = []
        seq, done = self._count, 0
        while done < len(entries):  # encoded a stride at a time, to index the stride's start
            if seq % INDEX_STRIDE == 0:
                marks.append(self._size + len(buffer))
            step = INDEX_STRIDE - seq % INDEX_STRIDE
            buffer += "".join(entries[done : done + step]).encode("utf-8", "replace")
            done += step
            seq += step
        count = self._count + len(entries)
        if not buffer:
            return 0
        try:
            view = memoryview(buffer)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            raise
        added = count - self._count
        self._marks.extend(marks)
        self._count, self._size, self._dirty = count, self._size + len(buffer), True
        if time.monotonic() - self._synced >= SYNC_INTERVAL:
            self.sync()
        return added

    def sync(self) -> None:
        if self._fd is not None and self._dirty:
            os.fsync(self._fd)
            self._dirty = False
            self._synced = time.monotonic()

    def close(self) -> None:
        if self._fd is not None:
            try:
                self.sync()
            finally:
                os.close(self._fd)
                self._fd = None

    def read_after(self, after: int, limit: int) -> list[LogLine]:
        """Up to `limit` lines with `seq > after`, read from the nearest indexed offset."""
        return cast(list[LogLine], json.loads(self.read_raw_after(after, limit)[0]))

    def read_raw_after(self, after: int, limit: int) -> tuple[bytes, int]:
        """Like `read_after`, as the bytes of a JSON array and the number of lines in it;
        the stored entries are spliced in as they are, never decoded and encoded again."""
        start = max(after + 1, 0)
        stop = min(self._count, start + max(limit, 0))
        if start >= stop:
            return b"[]", 0
        first = start - start % INDEX_STRIDE
        fd = self._fd if self._fd is not None else self._opener(os.O_RDONLY | os.O_CLOEXEC)
        try:
            wanted = self._lines(fd, self._marks[first // INDEX_STRIDE], first, start, stop)
        finally:
            if fd != self._fd:
                os.close(fd)
        return b"[" + b",".join(wanted) + b"]", len(wanted)

    def _lines(self, fd: int, offset: int, seq: int, start: int, stop: int) -> list[bytes]:
        wanted: list[bytes] = []
        pending = b""
        while seq < stop and offset < self._size:
            chunk = os.pread(fd, min(_READ_CHUNK, self._size - offset), offset)
            if not chunk:
                break
            offset += len(chunk)
            *whole, pending = (pending + chunk).split(b"\n")
            wanted += whole[max(start - seq, 0) : stop - seq]
            seq += len(whole)
        return wanted

    def _index(self, fd: int, size: int) -> None:
        offset = line_start = 0
        while offset < size:
            chunk = os.pread(fd, _READ_CHUNK, offset)
            if not chunk:
                break
            pos = 0
            while (newline := chunk.find(b"\n", pos)) >= 0:
                if self._count % INDEX_STRIDE == 0:
                    self._marks.append(line_start)
                self._count += 1
                line_start = offset + newline + 1
                pos = newline + 1
            offset += len(chunk)
        self._size = line_start
        self._check_tail(fd)
        if self._size < size:
            os.ftruncate(fd, self._size)
            os.fsync(fd)
            self.dropped_bytes = size - self._size

    def _check_tail(self, fd: int) -> None:
        """Keep the last indexed stretch only up to its first line that is not a valid entry."""
        if not self._marks:
            return
        base = (len(self._marks) - 1) * INDEX_STRIDE
        offset = self._marks[-1]
        for seq, raw in enumerate(
            os.pread(fd, self._size - offset, offset).split(b"\n")[:-1], base
        ):
            if not _is_entry(raw, seq):
                self._count, self._size = seq, offset
                del self._marks[(seq + INDEX_STRIDE - 1) // INDEX_STRIDE :]
                return
            offset += len(raw) + 1


def _is_entry(raw: bytes, seq: int) -> bool:
    try:
        entry = json.loads(raw)
    except ValueError:
        return False
    return (
        isinstance(entry, dict) and entry.get("seq") == seq and isinstance(entry.get("text"), str)
    )
