"""The JSON Schema and the Markdown reference, generated from `Field` declarations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .fields import Field, Kind, toml_value
from .units import DURATION_PATTERN, SIZE_PATTERN

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def json_schema(
    fields: Sequence[Field], *, schema_id: str, title: str, description: str
) -> dict[str, Any]:
    """A draft 2020-12 schema for a document made of `fields`."""
    header = {"$schema": DRAFT, "$id": schema_id, "title": title, "description": description}
    return header | _object(fields)


def _object(fields: Sequence[Field]) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {field.name: _property(field) for field in fields},
    }
    required = [field.name for field in fields if field.required]
    if required:
        schema["required"] = required
    return schema


def _property(field: Field) -> dict[str, Any]:
    schema = _kind_schema(field)
    schema["description"] = field.description
    if field.default is not None:
        schema["default"] = field.default
    if field.example is not None:
        schema["examples"] = [field.example]
    return schema


def _kind_schema(field: Field) -> dict[str, Any]:
    kind = field.kind
    schema: dict[str, Any]
    if kind in (Kind.SIZE, Kind.DURATION):
        number = {"type": "integer" if kind is Kind.SIZE else "number", "minimum": 0}
        pattern = SIZE_PATTERN if kind is Kind.SIZE else DURATION_PATTERN
        schema = {"anyOf": [number | _bounds(field), {"type": "string", "pattern": pattern}]}
    elif kind in (Kind.INT, Kind.FLOAT):
        schema = {"type": kind.value} | _bounds(field) | _enum(field)
    elif kind in (Kind.STR, Kind.ENUM, Kind.BOOL):
        schema = {"type": "boolean" if kind is Kind.BOOL else "string"}
        schema |= _enum(field) | _pattern(field)
    elif kind in (Kind.STR_LIST, Kind.ENUM_LIST, Kind.PATH_LIST):
        item = {"type": "string"} | _enum(field) | _pattern(field)
        if kind is Kind.PATH_LIST:
            item["pattern"] = "^/"
        schema = {"type": "array", "items": item, "uniqueItems": True}
    elif kind is Kind.STR_TABLE:
        schema = {"type": "object", "additionalProperties": {"type": "string"}}
        if field.pattern:
            schema["propertyNames"] = {"pattern": field.pattern}
    elif kind is Kind.TABLE:
        schema = _object(field.fields)
    else:
        schema = {"type": "array", "items": _object(field.fields)}
    return schema


def _bounds(field: Field) -> dict[str, Any]:
    bounds: dict[str, Any] = {}
    if field.minimum is not None:
        bounds["minimum"] = field.minimum
    if field.maximum is not None:
        bounds["maximum"] = field.maximum
    return bounds


def _enum(field: Field) -> dict[str, Any]:
    return {"enum": list(field.allowed)} if field.allowed else {}


def _pattern(field: Field) -> dict[str, Any]:
    return {"pattern": field.pattern} if field.pattern else {}


# -- Markdown ------------------------------------------------------------------


def markdown_reference(fields: Sequence[Field], *, title: str, intro: str) -> str:
    """A reference page: top-level fields, then a section per table.

    A field object documented once is not repeated in a later section, so a
    table that reuses another's fields says so in its own description.
    """
    lines = [f"# {title}", "", intro.strip(), "", "## Top level", ""]
    seen: set[int] = set()
    for field in fields:
        if field.kind not in (Kind.TABLE, Kind.TABLE_LIST):
            _entry(lines, field.name, field, seen)
    for field in fields:
        if field.kind in (Kind.TABLE, Kind.TABLE_LIST):
            header = f"[{field.name}]" if field.kind is Kind.TABLE else f"[[{field.name}]]"
            lines += [f"## `{header}`", "", field.description, ""]
            _section(lines, field.fields, "", seen)
    return "\n".join(lines).rstrip("\n") + "\n"


def _section(lines: list[str], fields: Sequence[Field], prefix: str, seen: set[int]) -> None:
    for field in fields:
        if id(field) in seen:
            continue
        _entry(lines, prefix + field.name, field, seen)
        if field.kind is Kind.TABLE:
            _section(lines, field.fields, f"{prefix}{field.name}.", seen)


def _entry(lines: list[str], name: str, field: Field, seen: set[int]) -> None:
    seen.add(id(field))
    lines += [f"### `{name}`", "", field.description, "", f"- Type: {_type(field)}"]
    if field.required:
        lines.append("- Required.")
    if field.default is not None:
        lines.append(f"- Default: `{toml_value(field.default)}`")
    if field.allowed:
        lines.append("- Allowed: " + ", ".join(f"`{toml_value(a)}`" for a in field.allowed))
    if field.minimum is not None or field.maximum is not None:
        low = "" if field.minimum is None else field.human(field.minimum)
        high = "" if field.maximum is None else field.human(field.maximum)
        lines.append(f"- Range: {low or 'any'} to {high or 'any'}")
    if field.pattern:
        lines.append(f"- Format: {field.pattern_help or f'matches `{field.pattern}`'}")
    if field.example is not None:
        lines.append(f"- Example: `{field.name} = {toml_value(field.example)}`")
    lines.append("")


def _type(field: Field) -> str:
    if field.kind is Kind.SIZE:
        return (
            "size: an integer number of bytes, or a string with a unit"
            ' B, KiB, MiB, GiB or TiB ("512MiB")'
        )
    if field.kind is Kind.DURATION:
        return 'duration: a number of seconds, or a string with units d, h, m, s ("1h30m")'
    if field.kind is Kind.ENUM:
        return "string, one of the allowed values"
    if field.kind is Kind.ENUM_LIST:
        return "array of strings, each one of the allowed values"
    if field.kind is Kind.PATH_LIST:
        return "array of absolute, normalised paths (no `..`)"
    return str(field.kind.value)
