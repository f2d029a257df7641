"""The generic field engine: units, key lines, validation, schema and docs."""

from __future__ import annotations

import json
import tomllib

import pytest

from sandworker.sandbox.fielddocs import json_schema, markdown_reference
from sandworker.sandbox.fields import Field, Kind, Problem, dotted, leaves, toml_value, validate
from sandworker.sandbox.keylines import KeyLines
from sandworker.sandbox.units import format_duration, format_size, parse_duration, parse_size

# -- sizes and durations ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512MiB", 512 * 1024**2),
        ("1GiB", 1024**3),
        ("64KiB", 64 * 1024),
        ("7B", 7),
        ("2TiB", 2 * 1024**4),
        (4096, 4096),
        (0, 0),
    ],
)
def test_parse_size_accepts_binary_units_and_plain_bytes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text", ["1GB", "1G", "1gib", "1.5GiB", " 1GiB", "1 GiB", "", -1, True, 1.5]
)
def test_parse_size_refuses_ambiguous_or_fractional_sizes(text: object) -> None:
    with pytest.raises(ValueError, match=r'units B, KiB, MiB, GiB, TiB, e\.g\. "512MiB"'):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("10m", 600),
        ("1h", 3600),
        ("1h30m", 5400),
        ("2d1s", 172801),
        (90, 90),
        (2.5, 2.5),
    ],
)
def test_parse_duration_accepts_units_in_order_and_plain_seconds(
    text: object, seconds: float
) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["30", "1 h", "30m1h", "1h1h", "s", "", "1.5h", -1, False, float("nan")]
)
def test_parse_duration_refuses_other_forms(text: object) -> None:
    with pytest.raises(ValueError, match="in that order"):
        parse_duration(text)


def test_sizes_and_durations_format_back_to_what_they_parse_from() -> None:
    assert format_size(1024**3) == "1GiB"
    assert format_size(1536 * 1024) == "1536KiB"
    assert format_size(1000) == "1000B"
    assert format_duration(5400) == "1h30m"
    assert format_duration(0) == "0s"
    assert format_duration(2.5) == 2.5
    for size in (1, 1023, 1024, 3 * 1024**2, 5 * 1024**4):
        assert parse_size(format_size(size)) == size


def test_toml_value_writes_toml_that_reads_back() -> None:
    value = {"a": ["x", 'q"uote'], "b c": True, "n": 3, "t": {}}
    assert tomllib.loads(f"v = {toml_value(value)}")["v"] == value


# -- key lines ---------------------------------------------------------------------

DOCUMENT = """\
version = 1            # line 1
[defaults]
account = "x"
[ defaults . limits ]
memory = "1GiB"
[[project]]
match = "a"
limits = { memory = "1GiB", processes = 3 }
note = '''
text with key = "value" and [brackets]
'''
[project.environment]
pass = [
  "LANG",  # a comment ] with a bracket
  "TZ",
]
[[project]]
"match" = "b"
environment.set.TZ = "UTC"
[["project"]]
match = "c"
"""


@pytest.mark.parametrize(
    ("path", "line"),
    [
        (("version",), 1),
        (("defaults",), 2),
        (("defaults", "account"), 3),
        (("defaults", "limits"), 4),
        (("defaults", "limits", "memory"), 5),
        (("project", 0), 6),
        (("project", 0, "match"), 7),
        (("project", 0, "limits", "processes"), 8),
        (("project", 0, "environment"), 12),
        (("project", 0, "environment", "pass"), 13),
        (("project", 0, "environment", "pass", 1), 15),
        (("project", 1), 17),
        (("project", 1, "match"), 18),
        (("project", 1, "environment", "set", "TZ"), 19),
        (("project", 2, "match"), 21),
        (("project", 1, "missing"), 17),  # falls back to the table
        (("nowhere",), 1),
    ],
)
def test_key_lines_find_keys_headers_and_array_items(
    path: tuple[str | int, ...], line: int
) -> None:
    tomllib.loads(DOCUMENT)  # the fixture is valid TOML
    assert KeyLines(DOCUMENT).line(path) == line


def test_key_lines_survive_text_that_is_not_toml() -> None:
    assert KeyLines('a = 1\nb = "unterminated\n').line(("a",)) == 1


# -- validation ----------------------------------------------------------------------

FIELDS = (
    Field("name", Kind.STR, "A name.", required=True, example="web"),
    Field("count", Kind.INT, "A count.", default=2, minimum=1, maximum=9),
    Field("size", Kind.SIZE, "A size.", default="1MiB", minimum=1024),
    Field("wait", Kind.DURATION, "A wait.", default="5s"),
    Field("mode", Kind.ENUM, "A mode.", default="a", allowed=("a", "b")),
    Field("tags", Kind.STR_LIST, "Tags.", default=[], pattern=r"^[a-z]+$"),
    Field("paths", Kind.PATH_LIST, "Paths.", default=[]),
    Field(
        "limits",
        Kind.TABLE,
        "Limits.",
        fields=(Field("flag", Kind.BOOL, "A flag.", default=False),),
    ),
    Field(
        "item",
        Kind.TABLE_LIST,
        "Items.",
        fields=(Field("id", Kind.STR, "An id.", required=True),),
    ),
)


def check(text: str) -> tuple[dict[str, object], list[str]]:
    values, problems = validate(tomllib.loads(text), FIELDS, file="f.toml", lines=KeyLines(text))
    return values, [str(problem) for problem in problems]


def test_valid_values_are_converted_and_sub_tables_flattened() -> None:
    values, problems = check(
        'name = "w"\nsize = "2KiB"\nwait = "1m"\ntags = ["x"]\n'
        '[limits]\nflag = true\n[[item]]\nid = "1"\n'
    )
    assert problems == []
    assert values == {
        "name": "w",
        "size": 2048,
        "wait": 60.0,
        "tags": ("x",),
        "limits.flag": True,
        "item": [{"id": "1"}],
    }


def test_every_problem_is_reported_with_file_line_and_dotted_field() -> None:
    _, problems = check(
        'count = 0\nmode = "c"\ntags = ["ok", "Bad", "ok"]\npaths = ["rel"]\n'
        'extra = 1\n[limits]\nflag = "yes"\n[[item]]\n[[item]]\nid = 5\n'
    )
    assert problems == [
        "f.toml:1 count: must be at least 1, got 0",
        'f.toml:2 mode: "c" is not allowed; use one of: "a", "b"',
        'f.toml:3 tags: "Bad" is not valid: it must match ^[a-z]+$',
        'f.toml:3 tags: duplicate entry "ok": list it once',
        'f.toml:4 paths: "rel" is not absolute: write the full path, starting with /',
        "f.toml:5 extra: unknown field; known fields are: name, count, size, wait, mode, tags,"
        " paths, limits, item",
        'f.toml:7 limits.flag: expected true or false, got string "yes"',
        "f.toml:8 item[1].id: required field is missing",
        "f.toml:10 item[2].id: expected a string, got integer 5",
        'f.toml:1 name: required field is missing; add e.g. name = "web"',
    ]


def test_booleans_are_not_integers() -> None:
    _, problems = check('name = "w"\ncount = true\n')
    assert problems == ["f.toml:2 count: expected an integer, got boolean true"]


def test_problem_renders_without_line_or_field_when_unknown() -> None:
    assert str(Problem("dir", None, "", "no files")) == "dir: no files"
    assert str(Problem("f", 3, "a.b", "bad")) == "f:3 a.b: bad"


def test_dotted_counts_array_indices_from_one_and_quotes_odd_keys() -> None:
    assert dotted(("project", 1, "limits", "memory")) == "project[2].limits.memory"
    assert dotted(("set", "A B")) == 'set."A B"'


def test_leaves_flatten_tables() -> None:
    assert [name for name, _ in leaves(FIELDS)][-2:] == ["limits.flag", "item"]


def test_parsed_default_converts_like_a_file_value() -> None:
    assert FIELDS[2].parsed_default() == 1024**2
    with pytest.raises(ValueError, match="invalid default"):
        Field("x", Kind.INT, "X.", default=0, minimum=1).parsed_default()


# -- schema and docs ---------------------------------------------------------------


def _objects(schema: object) -> list[dict[str, object]]:
    found: list[dict[str, object]] = []
    if isinstance(schema, dict):
        if schema.get("type") == "object" and "properties" in schema:
            found.append(schema)
        for value in schema.values():
            found += _objects(value)
    elif isinstance(schema, list):
        for value in schema:
            found += _objects(value)
    return found


def test_schema_closes_every_object_and_describes_every_field() -> None:
    schema = json_schema(FIELDS, schema_id="urn:test", title="T", description="D")
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    objects = _objects(schema)
    assert len(objects) == 3  # the document, [limits], [[item]]
    for obj in objects:
        assert obj["additionalProperties"] is False
        properties = obj["properties"]
        assert isinstance(properties, dict)
        assert all(prop.get("description") for prop in properties.values())
    assert schema["required"] == ["name"]
    assert schema["properties"]["size"]["default"] == "1MiB"


def test_schema_is_plain_json_and_stable() -> None:
    first = json.dumps(
        json_schema(FIELDS, schema_id="u", title="t", description="d"), sort_keys=True
    )
    second = json.dumps(
        json_schema(FIELDS, schema_id="u", title="t", description="d"), sort_keys=True
    )
    assert first == second


def test_markdown_reference_has_a_section_per_table_and_an_entry_per_field() -> None:
    text = markdown_reference(FIELDS, title="Ref", intro="Intro.")
    assert text.startswith("# Ref\n\nIntro.\n")
    for heading in ("## `[limits]`", "## `[[item]]`", "### `name`", "### `flag`", "### `id`"):
        assert heading in text
    assert "- Range: 1 to 9" in text
    assert "- Range: 1KiB to any" in text
    assert text.endswith("\n") and not text.endswith("\n\n")
