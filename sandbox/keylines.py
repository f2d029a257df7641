"""Line numbers for the keys of a TOML document, which `tomllib` does not report.

A key is addressed by its path from the document root: table names and keys
as strings, array indices (arrays of tables and inline arrays) as ints from 0.
For `[[project]]` then `[project.limits]`, `memory = ...` is at
`("project", 0, "limits", "memory")`.

The scanner reads only the structure (headers, keys, brackets, strings), so
run it on text that `tomllib` has already accepted.
"""

from __future__ import annotations

import contextlib
import re
import tomllib

KeyPath = tuple[str | int, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR = re.compile(r"[^,\]}\n#]+")


class KeyLines:
    """Maps key paths of one TOML text to the 1-based line they are written on."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0
        self._line = 1
        self._found: dict[KeyPath, int] = {}
        self._arrays: dict[KeyPath, int] = {}  # array-of-tables path -> tables seen
        with contextlib.suppress(IndexError, ValueError):
            self._document()  # on text that is not TOML, keep what was found

    def line(self, path: KeyPath) -> int:
        """The line of `path`, else of its nearest enclosing table or key, else 1."""
        for end in range(len(path), 0, -1):
            if path[:end] in self._found:
                return self._found[path[:end]]
        return 1

    # -- scanner -------------------------------------------------------------

    def _peek(self, ahead: int = 0) -> str:
        return self._text[self._pos + ahead : self._pos + ahead + 1]

    def _advance(self, count: int = 1) -> None:
        self._line += self._text.count("\n", self._pos, self._pos + count)
        self._pos += count

    def _expect(self, token: str) -> None:
        if not self._text.startswith(token, self._pos):
            raise ValueError(f"expected {token!r} at line {self._line}")
        self._advance(len(token))

    def _skip(self, newlines: bool) -> None:
        while self._pos < len(self._text):
            char = self._peek()
            if char in " \t\r" or (newlines and char == "\n"):
                self._advance()
            elif char == "#":
                end = self._text.find("\n", self._pos)
                self._advance((end if end >= 0 else len(self._text)) - self._pos)
            else:
                return

    def _record(self, path: KeyPath, line: int) -> None:
        for end in range(1, len(path)):
            self._found.setdefault(path[:end], line)
        self._found[path] = line

    def _document(self) -> None:
        table: KeyPath = ()
        while True:
            self._skip(newlines=True)
            if self._pos >= len(self._text):
                return
            line = self._line
            if self._text.startswith("[[", self._pos):
                self._advance(2)
                keys = self._key()
                self._skip(newlines=False)
                self._expect("]]")
                array = self._resolve(keys)
                count = self._arrays.get(array, 0)
                self._arrays[array] = count + 1
                self._found.setdefault(array, line)
                table = (*array, count)
                self._record(table, line)
            elif self._peek() == "[":
                self._advance()
                keys = self._key()
                self._skip(newlines=False)
                self._expect("]")
                table = self._resolve(keys)
                self._record(table, line)
            else:
                self._key_value(table)

    def _resolve(self, keys: list[str]) -> KeyPath:
        """A header's path, entering the latest table of each array of tables."""
        path: KeyPath = ()
        for index, key in enumerate(keys):
            path = (*path, key)
            if path in self._arrays and index < len(keys) - 1:
                path = (*path, self._arrays[path] - 1)
        return path

    def _key(self) -> list[str]:
        keys: list[str] = []
        while True:
            self._skip(newlines=False)
            start = self._pos
            if self._peek() in ("'", '"'):
                self._string(self._peek())
                raw = self._text[start : self._pos]
                keys.append(raw[1:-1] if raw[0] == "'" else tomllib.loads(f"k = {raw}")["k"])
            else:
                match = _BARE_KEY.match(self._text, self._pos)
                if match is None:
                    raise ValueError(f"no key at line {self._line}")
                keys.append(match.group())
                self._advance(match.end() - start)
            self._skip(newlines=False)
            if self._peek() != ".":
                return keys
            self._advance()

    def _key_value(self, table: KeyPath) -> None:
        line = self._line
        path = (*table, *self._key())
        self._expect("=")
        self._record(path, line)
        self._value(path)

    def _value(self, path: KeyPath) -> None:
        self._skip(newlines=False)
        char = self._peek()
        if char in ("'", '"'):
            triple = char * 3
            self._string(triple if self._text.startswith(triple, self._pos) else char)
        elif char == "[":
            self._advance()
            index = 0
            while True:
                self._skip(newlines=True)
                if self._peek() == "]":
                    self._advance()
                    return
                self._record((*path, index), self._line)
                self._value((*path, index))
                index += 1
                self._skip(newlines=True)
                if self._peek() == ",":
                    self._advance()
        elif char == "{":
            self._advance()
            while True:
                self._skip(newlines=True)
                if self._peek() == "}":
                    self._advance()
                    return
                self._key_value(path)
                self._skip(newlines=True)
                if self._peek() == ",":
                    self._advance()
        else:  # number, boolean, date: up to the next delimiter
            match = _SCALAR.match(self._text, self._pos)
            if match is None:
                raise ValueError(f"no value at line {self._line}")
            self._advance(match.end() - self._pos)

    def _string(self, delimiter: str) -> None:
        self._advance(len(delimiter))
        escapes = delimiter[0] == '"'
        while self._pos < len(self._text):
            if escapes and self._peek() == "\\":
                self._advance(2)
            elif self._text.startswith(delimiter, self._pos):
                self._advance(len(delimiter))
                # A multi-line string may end with up to two quotes of its own.
                extra = 0
                while len(delimiter) == 3 and extra < 2 and self._peek() == delimiter[0]:
                    self._advance()
                    extra += 1
                return
            else:
                self._advance()
        raise ValueError("unterminated string")
