"""Calamari's service messages, read from a script's stdout, and the masking of secrets.

A message is one whole line, `##octopus[name attr='base64(utf-8)' ...]` (notes/octopus.md
section 4). Lines reach here escaped as the inside of a JSON string (ticketlog.py), which
leaves a well-formed message as it is: base64 and `'` need no escaping. A line that starts
like a message but is not one stays in the log as text, followed by a debug line saying
why; nothing a script prints can do more than the messages below.

Messages understood: setVariable (name, value, sensitive), createArtifact (path, name,
length), progress (percentage, message), resultMessage (message), mask (value), and the
log levels stdout-default|verbose|highlight|wait|warning|error|ignore. Others known to
Calamari (targets, accounts, environment state) are taken, shown as a debug line, and
otherwise ignored.

Masking: every sensitive value (sensitive request variables, sensitive output variables,
`mask` values) is replaced by `********` in every line before it is written, in its
escaped form, in its base64 form, and, for a value of several lines, line by line
(pieces of at least MIN_PIECE characters). A value is masked from the moment it is known:
what a script printed before it declared a value sensitive was already written.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from .ticketlog import _quote

PREFIX = b"##octopus["
MASK = b"********"
MIN_PIECE = 3  # shorter pieces of a multi-line secret would mask ordinary text
LEVELS = ("default", "verbose", "highlight", "wait", "warning", "error", "ignore")
KNOWN_OTHERS = (
    "set-environmentstate", "delete-target", "create-azurewebapptarget", "foundPackage",
    "calamari-timed-operation", "calamari-script-isolation-alert",
)  # fmt: skip
_MESSAGE = re.compile(
    rb"##octopus\[([A-Za-z][\w-]*)((?:\s+[A-Za-z][\w-]*='[A-Za-z0-9+/=]*')*)\s*\]"
)
_ATTR = re.compile(rb"([A-Za-z][\w-]*)='([A-Za-z0-9+/=]*)'")


@dataclass(frozen=True)
class Message:
    name: str
    attrs: dict[str, str]


class Malformed(ValueError):
    pass


def parse(line: bytes) -> Message:
    """One line that starts with PREFIX; Malformed says what is wrong with it."""
    found = _MESSAGE.fullmatch(line.rstrip())
    if found is None:
        raise Malformed("not a service message: ##octopus[name attr='base64' ...]")
    attrs: dict[str, str] = {}
    for key, value in _ATTR.findall(found[2]):
        try:
            attrs[key.decode()] = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise Malformed(f"attribute {key.decode()!r} is not base64 of UTF-8 text") from None
    return Message(found[1].decode(), attrs)


class Masker:
    """The secrets of one ticket, as escaped byte patterns."""

    def __init__(self, values: tuple[str, ...] = ()) -> None:
        self._patterns: set[bytes] = set()
        self._raw: set[str] = set()
        self._raw_bytes: list[bytes] = []  # longest first
        self.longest = 0  # bytes of the longest raw pattern
        for value in values:
            self.add(value)

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def add(self, value: str) -> None:
        if not value:
            return
        pieces = [value, base64.b64encode(value.encode()).decode()]
        if "\n" in value:
            pieces += [p for p in value.replace("\r", "").split("\n") if len(p) >= MIN_PIECE]
        self._raw |= set(pieces)
        self._raw_bytes = sorted({p.encode() for p in self._raw}, key=len, reverse=True)
        self.longest = len(self._raw_bytes[0])
        self._patterns |= {_quote(p)[1:-1].encode() for p in pieces}

    def mask_raw(self, data: bytes) -> bytes:
        """Raw script output, before it is cut into lines and escaped."""
        for pattern in self._raw_bytes:
            if pattern in data:
                data = data.replace(pattern, MASK)
        return data

    def mask(self, lines: list[bytes]) -> list[bytes]:
        if not self._patterns:
            return lines
        joined = b"\n".join(lines)
        present = [p for p in self._patterns if p in joined]
        if not present:
            return lines
        present.sort(key=len, reverse=True)  # the whole value before its pieces
        masked = []
        for line in lines:
            text = line
            for pattern in present:
                if pattern in text:
                    text = text.replace(pattern, MASK)
            masked.append(text)
        return masked

    def mask_text(self, text: str) -> str:
        """Plain text (a message, a status field), unescaped."""
        for piece in sorted(self._raw, key=len, reverse=True):
            text = text.replace(piece, MASK.decode())
        return text
