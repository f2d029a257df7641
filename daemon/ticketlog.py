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

import contextlib
import enum
import json
import os
import stat
import time
from collections.abc import Callable
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import NotRequired, Protocol, TypedDict, cast

LOG_FILE = "log.jsonl"
MAX_LINE_BYTES = 16 * 1024  # longer lines are split into several
INDEX_STRIDE = 256  # the index keeps the byte offset of every 256th line
SYNC_INTERVAL = 0.2  # seconds between fsyncs of a log that keeps growing
_READ_CHUNK = 256 * 1024
MAX_PAGE_BYTES = 8 * 1024 * 1024  # of stored entries in one status answer; an entry is < 100 KiB
# One line of log.jsonl; the text is quoted by the JSON encoder, so it is always one JSON string.
_ENTRY = '{"seq": %%d, "source": "%s", "time": "%s", "text": "%%b"}\n'
_ENTRY_LEVEL = '{"seq": %%d, "source": "%s", "level": "%s", "time": "%s", "text": "%%b"}\n'
# The bytes that stand for themselves inside a JSON string: printable ASCII but `"` and `\\`.
_PLAIN = bytes(b for b in range(0x20, 0x80) if b not in b'"\\') + b"\n"
_quote = encode_basestring  # the C encoder of one JSON string, non-ASCII kept as is

Opener = Callable[[int], int]  # open log.jsonl with these flags, return the descriptor


class Source(enum.StrEnum):
    STDOUT = "stdout"
    STDERR = "stderr"
    DEBUG = "debug"


class LogLine(TypedDict):
    seq: int
    source: str
    level: NotRequired[str]  # only when not "default"
    time: str
    text: str


def _entry(source: Source, level: str, stamp: str) -> bytes:
    """The template of a line: `%d` (seq) and `%b` (the escaped text) left to fill."""
    if level == "default":
        return (_ENTRY % (str(source), stamp)).encode()
    return (_ENTRY_LEVEL % (str(source), level, stamp)).encode()


def rfc3339(timestamp: float) -> str:
    """`2026-11-28T17:08:25.123Z`."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def text_lines(text: str, limit: int = MAX_LINE_BYTES) -> list[bytes]:
    """The daemon's own text (debug remarks) as escaped lines, split like a script's."""
    raw = text.encode("utf-8", "replace")  # a lone surrogate (an odd file name) becomes "?"
    return escape([piece for line in raw.split(b"\n") for piece in _cut(line, limit)])


def _cut(raw: bytes, limit: int) -> list[bytes]:
    """`raw` in pieces of at most `limit` bytes, never splitting a UTF-8 character (a run of
    more than three continuation bytes is invalid anyway, and is cut where it stands)."""
    pieces: list[bytes] = []
    while len(raw) > limit:
        cut = limit
        while cut > limit - 3 and raw[cut] & 0xC0 == 0x80:
            cut -= 1
        pieces.append(raw[:cut])
        raw = raw[cut:]
    pieces.append(raw)
    return pieces


class RawMask(Protocol):
    """Secrets to take out of raw output before it is framed (servicemessages.Masker)."""

    longest: int

    def mask_raw(self, data: bytes) -> bytes: ...


def _boundary(raw: bytes, at: int) -> int:
    """`at`, moved back to the start of a UTF-8 character."""
    while 0 < at < len(raw) and raw[at] & 0xC0 == 0x80:
        at -= 1
    return at


def escape(lines: list[bytes]) -> list[bytes]:
    """Each raw line (no newline in it) as the inside of a JSON string, in UTF-8: invalid
    UTF-8 becomes U+FFFD; quotes, backslashes and control characters are escaped."""
    texts = [line.decode("utf-8", "replace") for line in lines]
    joined = "\n".join(texts)
    if len(texts) >= 8 and "\\" not in joined:  # one encoder call for them all
        pieces = _quote(joined)[1:-1].split("\\n")
        if len(pieces) == len(texts):
            return [piece.encode() for piece in pieces]
    return [_quote(text)[1:-1].encode() for text in texts]


class LineFramer:
    """Turns one pipe's raw chunks into lines, each escaped as the inside of a JSON string.

    - Lines end at `\\n`; a `\\r\\n` ending counts as one line ending. A bare `\\r`
      (progress bars) stays in the text, where JSON escapes it.
    - Invalid UTF-8 becomes U+FFFD. Lines are cut from the bytes (a newline byte is never
      part of a UTF-8 character), so a character split across two chunks survives.
    - Lines longer than `limit` bytes are split, at a character boundary; an unfinished line
      is cut as soon as it exceeds the limit, so memory stays bounded however long a script
      prints without `\\n`.
    - `flush()` at the end returns the unfinished last line, if any.

    The common case, a chunk of printable ASCII without quotes or backslashes, needs no
    decoding or escaping: its lines are returned as they are (C-level checks only).
    """

    def __init__(self, limit: int = MAX_LINE_BYTES, mask: RawMask | None = None) -> None:
        self._limit, self._mask = limit, mask
        self._partial = b""

    def feed(self, data: bytes) -> list[bytes]:
        buffered = self._partial + data
        end = buffered.rfind(b"\n") + 1
        whole, rest = buffered[: end - 1], buffered[end:]
        lines: list[bytes] = []
        hold = 0
        if self._mask is not None and self._mask.longest:  # secrets go before lines are cut
            whole, rest = self._mask.mask_raw(whole), self._mask.mask_raw(rest)
            hold = self._mask.longest - 1  # a secret may be arriving at the end of `rest`
        if end:
            lines = whole.split(b"\n")
            if whole.translate(None, _PLAIN) or max(map(len, lines)) > self._limit:
                limit = self._limit
                lines = escape([p for line in lines for p in _cut(line.removesuffix(b"\r"), limit)])
        if len(rest) > self._limit + hold:
            keep = _boundary(rest, len(rest) - hold)
            *cut, last = _cut(rest[:keep], self._limit)
            lines += escape(cut)
            rest = last + rest[keep:]
        self._partial = rest
        return lines

    def flush(self) -> list[bytes]:
        rest, self._partial = self._partial, b""
        if self._mask is not None:
            rest = self._mask.mask_raw(rest)
        return escape(_cut(rest, self._limit)) if rest else []


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

    def append(self, source: Source, quoted: list[bytes], level: str = "default") -> int:
        """Write lines, each already escaped (`escape`, `LineFramer`), in one `write()`; on
        failure nothing of them stays in the file. A `level` other than default (a
        service message's stdout-verbose, ...) is a field of each line."""
        if self._fd is None:
            raise ValueError("the log is closed")
        if not quoted:
            return 0
        # One template per call, then C-level loops: this is the hot path of a chatty script.
        template = _entry(source, level, rfc3339(self.clock()))
        first = self._count
        seqs = range(first, first + len(quoted))
        return self._write(list(map(template.__mod__, zip(seqs, quoted, strict=True))))

    def append_copies(self, lines: list[tuple[Source, str, bytes, str]]) -> int:
        """Lines another worker numbered and timed (source, RFC 3339 time, escaped text, level),
        numbered on from this log's end: the proxy's copy of a ticket's log."""
        if self._fd is None:
            raise ValueError("the log is closed")
        first = self._count
        entries = [
            _entry(source, level, stamp) % (seq, quoted)
            for seq, (source, stamp, quoted, level) in enumerate(lines, first)
        ]
        return self._write(entries)

    def _write(self, entries: list[bytes]) -> int:
        """Entries numbered from `count` on, in one `write()`; on failure none stays."""
        assert self._fd is not None
        if not entries:
            return 0
        first = self._count
        strides: list[bytes] = []  # joined a stride at a time, to index each stride's start
        marks: list[int] = []
        offset, done = self._size, 0
        while done < len(entries):
            seq = first + done
            if seq % INDEX_STRIDE == 0:
                marks.append(offset)
            step = INDEX_STRIDE - seq % INDEX_STRIDE
            strides.append(b"".join(entries[done : done + step]))
            offset += len(strides[-1])
            done += step
        buffer = b"".join(strides)
        try:
            view = memoryview(buffer)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            raise
        self._marks.extend(marks)
        self._count, self._size, self._dirty = first + len(entries), offset, True
        if time.monotonic() - self._synced >= SYNC_INTERVAL:
            self.sync()
        return len(entries)

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
        """Like `read_after`, as the bytes of a JSON array and the number of lines in it (at
        most `limit`, and no more than about MAX_PAGE_BYTES of them unless one line is
        longer). The stored entries are one contiguous stretch of the file, read in one
        piece and spliced in as they are, never decoded and encoded again."""
        start = max(after + 1, 0)
        stop = min(self._count, start + max(limit, 0))
        if start >= stop:
            return b"[]", 0
        fd = self._fd if self._fd is not None else self._opener(os.O_RDONLY | os.O_CLOEXEC)
        try:
            begin, end = self._offset(fd, start), self._offset(fd, stop)
            raw = _pread(fd, min(end - begin, MAX_PAGE_BYTES), begin)
        finally:
            if fd != self._fd:
                os.close(fd)
        count = stop - start
        if begin + len(raw) < end:  # whole lines only (an entry is far smaller than a page)
            raw = raw[: raw.rfind(b"\n") + 1]
            count = raw.count(b"\n")
        # Entries end in "\n": as commas they separate the array's items (one copy, in C).
        return b"".join((b"[", memoryview(raw.replace(b"\n", b","))[:-1], b"]")), count

    def _offset(self, fd: int, seq: int) -> int:
        """The byte offset where line `seq` starts (the end of the log for `seq == count`)."""
        if seq >= self._count:
            return self._size
        offset, skip = self._marks[seq // INDEX_STRIDE], seq % INDEX_STRIDE
        while skip:
            chunk = os.pread(fd, _READ_CHUNK, offset)
            if not chunk:
                raise OSError(f"{LOG_FILE} is shorter than its index")
            pos = 0
            while skip and (newline := chunk.find(b"\n", pos)) >= 0:
                pos, skip = newline + 1, skip - 1
            offset += pos if not skip else len(chunk)
        return offset

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


def _pread(fd: int, size: int, offset: int) -> bytes:
    parts: list[bytes] = []
    while size > 0 and (chunk := os.pread(fd, size, offset)):
        parts.append(chunk)
        size, offset = size - len(chunk), offset + len(chunk)
    return b"".join(parts)


def _is_entry(raw: bytes, seq: int) -> bool:
    try:
        entry = json.loads(raw)
    except ValueError:
        return False
    return (
        isinstance(entry, dict) and entry.get("seq") == seq and isinstance(entry.get("text"), str)
    )
