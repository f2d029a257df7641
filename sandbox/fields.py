"""A declarative field model for TOML files (policy now, the daemon's configuration next).

Each setting is declared once as a `Field` (type, default, bounds, validator,
description). `validate` checks a parsed table against the fields and returns
every `Problem` with its file, line and dotted field name; `fielddocs`
generates the JSON Schema and the Markdown reference from the same
declarations, so the shipped schema and docs cannot drift from the code.

Defaults and examples are written as they would be in TOML (`"1GiB"`, not
1073741824). Bounds are in base units: bytes for sizes, seconds for durations.
"""

from __future__ import annotations

import enum
import json
import posixpath
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .keylines import KeyLines, KeyPath
from .units import format_duration, format_size, parse_duration, parse_size

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class Kind(enum.Enum):
    """A field's value type, named as the docs show it."""

    STR = "string"
    INT = "integer"
    BOOL = "boolean"
    FLOAT = "number"
    DURATION = "duration"
    SIZE = "size"
    ENUM = "enum"
    STR_LIST = "array of strings"
    ENUM_LIST = "array of enum values"
    PATH_LIST = "array of absolute paths"
    STR_TABLE = "table of strings"
    TABLE = "table"
    TABLE_LIST = "array of tables"


_EXPECTED = {
    Kind.STR: "a string",
    Kind.INT: "an integer",
    Kind.BOOL: "true or false",
    Kind.FLOAT: "a number",
    Kind.DURATION: 'a duration such as "30s", "10m" or "1h30m", or a number of seconds',
    Kind.SIZE: 'a size such as "64KiB", "512MiB" or "1GiB", or an integer number of bytes',
    Kind.ENUM: "a string",
    Kind.STR_LIST: "an array of strings",
    Kind.ENUM_LIST: "an array of strings",
    Kind.PATH_LIST: "an array of absolute paths",
    Kind.STR_TABLE: "a table of strings",
    Kind.TABLE: "a table",
    Kind.TABLE_LIST: "an array of tables",
}
_LISTS = (Kind.STR_LIST, Kind.ENUM_LIST, Kind.PATH_LIST)


@dataclass(frozen=True)
class Field:
    """One setting. `name` is its key in the enclosing table."""

    name: str
    kind: Kind
    description: str
    default: object = None  # as written in TOML; None: no default
    required: bool = False
    allowed: tuple[object, ...] = ()  # for ENUM, ENUM_LIST, STR and INT
    minimum: float | None = None  # base units
    maximum: float | None = None
    pattern: str | None = None  # strings, list items and table keys must match it
    pattern_help: str = ""  # the pattern in words, for messages
    validator: Callable[[Any], str | None] | None = None  # whole value -> error or None
    item_validator: Callable[[str], str | None] | None = None  # list item / table key
    fields: tuple[Field, ...] = ()  # for TABLE and TABLE_LIST
    example: object = None  # as written in TOML

    def render(self, value: object) -> str:
        """A parsed value written back as TOML (sizes and durations in units)."""
        if self.kind is Kind.SIZE and isinstance(value, int):
            return toml_value(format_size(value))
        if self.kind is Kind.DURATION and isinstance(value, int | float):
            return toml_value(format_duration(value))
        return toml_value(value)

    def human(self, value: float) -> str:
        """A bound or number in this field's units: 16777216 -> 16MiB for a size."""
        if self.kind is Kind.SIZE:
            return format_size(int(value))
        if self.kind is Kind.DURATION:
            return str(format_duration(value))
        return toml_value(value)

    def parsed_default(self) -> Any:
        """The default converted like a value from a file (raises if it is invalid)."""
        values, problems = validate({self.name: self.default}, [self], file="<default>")
        if problems:
            raise ValueError(f"invalid default for {self.name}: {problems[0].message}")
        return values[self.name]


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a file, rendered as `file:line field: message`."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where} {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


def dotted(path: KeyPath) -> str:
    """`("project", 1, "limits")` -> `project[2].limits`: indices count from 1."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part + 1}]"
        else:
            key = part if _BARE_KEY.fullmatch(part) else json.dumps(part)
            text += f".{key}" if text else key
    return text


def leaves(fields: Sequence[Field], prefix: str = "") -> Iterator[tuple[str, Field]]:
    """(dotted name, field) for every non-table field, sub-tables flattened."""
    for field in fields:
        if field.kind is Kind.TABLE:
            yield from leaves(field.fields, f"{prefix}{field.name}.")
        else:
            yield f"{prefix}{field.name}", field


# -- rendering ------------------------------------------------------------------


def toml_value(value: object) -> str:
    """A value written as TOML (tuples as arrays, mappings as inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple | frozenset):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        pairs = [f"{dotted((str(k),))} = {toml_value(v)}" for k, v in value.items()]
        return "{ " + ", ".join(pairs) + " }" if pairs else "{}"
    return str(value)


def _describe(value: object) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string"}
    name = names.get(type(value), "array" if isinstance(value, list) else "")
    if isinstance(value, dict):
        return "a table"
    return f"{name or type(value).__name__} {toml_value(value)}"


# -- validation ---------------------------------------------------------------


@dataclass
class _Check:
    file: str
    lines: KeyLines
    problems: list[Problem]

    def add(self, at: KeyPath, message: str, field: KeyPath | None = None) -> None:
        name = dotted(at if field is None else field)
        self.problems.append(Problem(self.file, self.lines.line(at), name, message))


def validate(
    data: Mapping[str, Any],
    fields: Sequence[Field],
    *,
    file: str,
    lines: KeyLines | None = None,
    at: KeyPath = (),
) -> tuple[dict[str, Any], list[Problem]]:
    """Check `data` (a table from `tomllib`, found at path `at`) against `fields`.

    Returns the valid values converted (sizes to bytes, durations to seconds,
    arrays to tuples), keyed by dotted name with sub-tables flattened
    (`"limits.memory"`); an array of tables gives a list of such dicts. Invalid
    values are left out and reported as problems.
    """
    check = _Check(file, lines or KeyLines(""), [])
    return _table(check, data, fields, at), check.problems


def _table(
    check: _Check, data: Mapping[str, Any], fields: Sequence[Field], at: KeyPath
) -> dict[str, Any]:
    known = {field.name: field for field in fields}
    values: dict[str, Any] = {}
    for key, raw in data.items():
        field, path = known.get(key), (*at, key)
        if field is None:
            check.add(path, f"unknown field; known fields are: {', '.join(known)}")
        elif field.kind is Kind.TABLE and isinstance(raw, dict):
            for name, value in _table(check, raw, field.fields, path).items():
                values[f"{key}.{name}"] = value
        elif field.kind is Kind.TABLE_LIST and isinstance(raw, list):
            if all(isinstance(item, dict) for item in raw):
                values[key] = [
                    _table(check, t, field.fields, (*path, i)) for i, t in enumerate(raw)
                ]
            else:
                check.add(path, f"expected an array of tables: write each one as [[{key}]]")
        elif field.kind in (Kind.TABLE, Kind.TABLE_LIST):
            check.add(path, f"expected {_EXPECTED[field.kind]}, got {_describe(raw)}")
        else:
            value = _value(check, field, raw, path)
            if value is not None:
                values[key] = value
    for field in fields:
        if field.required and field.name not in data:
            hint = (
                ""
                if field.example is None
                else f"; add e.g. {field.name} = {toml_value(field.example)}"
            )
            check.add(at, f"required field is missing{hint}", (*at, field.name))
    return values


def _value(check: _Check, field: Field, raw: object, path: KeyPath) -> Any:
    """The converted value, or None after reporting what is wrong with it."""
    errors_before = len(check.problems)
    value: Any
    if field.kind in _LISTS or field.kind is Kind.STR_TABLE:
        ok = isinstance(raw, list) if field.kind in _LISTS else isinstance(raw, dict)
        if not ok:
            check.add(path, f"expected {_EXPECTED[field.kind]}, got {_describe(raw)}")
            return None
        value = (
            _list(check, field, raw, path)
            if field.kind in _LISTS
            else _strings(check, field, raw, path)
        )
    else:
        try:
            value = _scalar(field, raw)
        except ValueError as error:
            check.add(path, str(error))
            return None
    if len(check.problems) == errors_before and field.validator is not None:
        message = field.validator(value)
        if message:
            check.add(path, message)
    return value if len(check.problems) == errors_before else None


def _list(check: _Check, field: Field, raw: Any, path: KeyPath) -> tuple[str, ...]:
    for index, item in enumerate(raw):
        error = _item_error(field, item)
        if error is None and item in raw[:index]:
            error = f"duplicate entry {toml_value(item)}: list it once"
        if error:
            check.add((*path, index), error, path)
    return tuple(raw)


def _strings(check: _Check, field: Field, raw: Any, path: KeyPath) -> dict[str, str]:
    for key, item in raw.items():
        error = _text_error(field, key, field.item_validator)
        if error is None and not isinstance(item, str):
            error = f"expected a string value, got {_describe(item)}"
        if error:
            check.add((*path, key), error)
    return dict(raw)


def _scalar(field: Field, raw: object) -> Any:
    kind = field.kind
    value: Any = raw
    if kind is Kind.SIZE:
        value = parse_size(raw)
    elif kind is Kind.DURATION:
        value = parse_duration(raw)
    elif kind is Kind.FLOAT and isinstance(raw, int | float) and not isinstance(raw, bool):
        value = float(raw)
    elif not _is(kind, raw):
        raise ValueError(f"expected {_EXPECTED[kind]}, got {_describe(raw)}")
    if field.allowed and value not in field.allowed:
        raise ValueError(f"{toml_value(value)} is not allowed; use one of: {_choices(field)}")
    if isinstance(value, str):
        error = _text_error(field, value, None)
        if error:
            raise ValueError(error)
    if field.minimum is not None and value < field.minimum:
        raise ValueError(f"must be at least {field.human(field.minimum)}, got {field.human(value)}")
    if field.maximum is not None and value > field.maximum:
        raise ValueError(f"must be at most {field.human(field.maximum)}, got {field.human(value)}")
    return value


def _is(kind: Kind, raw: object) -> bool:
    if kind is Kind.BOOL:
        return isinstance(raw, bool)
    if kind is Kind.INT:
        return isinstance(raw, int) and not isinstance(raw, bool)
    return kind in (Kind.STR, Kind.ENUM) and isinstance(raw, str)


def _item_error(field: Field, item: object) -> str | None:
    if not isinstance(item, str):
        return f"expected a string, got {_describe(item)}"
    if field.kind is Kind.ENUM_LIST and item not in field.allowed:
        return f"{toml_value(item)} is not allowed; use one of: {_choices(field)}"
    if field.kind is Kind.PATH_LIST:
        error = path_error(item)
        if error:
            return error
    return _text_error(field, item, field.item_validator)


def _text_error(
    field: Field, text: str, validator: Callable[[str], str | None] | None
) -> str | None:
    if field.pattern and not re.fullmatch(field.pattern, text):
        rule = field.pattern_help or f"it must match {field.pattern}"
        return f"{toml_value(text)} is not valid: {rule}"
    return validator(text) if validator else None


def path_error(path: str) -> str | None:
    """Why `path` is not an absolute, normalised path without `..`, or None."""
    if any(ord(char) < 32 or ord(char) == 127 for char in path):
        return f"{toml_value(path)} contains a control character"
    if not path.startswith("/"):
        return f"{toml_value(path)} is not absolute: write the full path, starting with /"
    if ".." in path.split("/"):
        return f"{toml_value(path)} contains '..': write the path it leads to instead"
    normal = "/" + posixpath.normpath(path).lstrip("/")
    if normal != path:
        return f"{toml_value(path)} is not normalised: write it as {toml_value(normal)}"
    return None


def _choices(field: Field) -> str:
    return ", ".join(toml_value(choice) for choice in field.allowed)


def read_toml(file: Path) -> tuple[dict[str, Any], KeyLines] | Problem:
    """Parse a UTF-8 TOML file; a problem (with its line) if it cannot be read or parsed."""
    name = str(file)
    try:
        raw = file.read_bytes()
        text = raw.decode("utf-8")
    except OSError as error:
        return Problem(name, None, "", f"cannot read: {error.strerror or error}")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        return Problem(name, line, "toml", "not UTF-8 text: save the file as UTF-8")
    try:
        return tomllib.loads(text), KeyLines(text)
    except tomllib.TOMLDecodeError as error:
        return _syntax_problem(name, text, error)


def _syntax_problem(file: str, text: str, error: tomllib.TOMLDecodeError) -> Problem:
    message = str(error)
    at = re.search(r" \(at line (\d+), column (\d+)\)$", message)
    if at:
        line, message = int(at[1]), f"{message[: at.start()]} (column {at[2]})"
    else:
        line, message = (
            max(1, len(text.splitlines())),
            message.replace("(at end of document)", "(at the end of the file)"),
        )
    return Problem(file, line, "toml", message[:1].lower() + message[1:])
