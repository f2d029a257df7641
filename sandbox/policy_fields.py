"""The policy file's fields: types, built-in defaults, bounds and the checks on values.

This is the single declaration that `policy.py` validates against and that
the shipped JSON Schema (`policies/schema/policy.v1.json`) and reference
(`policies/REFERENCE.md`) are generated from. The built-in defaults are the
safe fallback for anything neither `[defaults]` nor a rule sets.
"""

from __future__ import annotations

from typing import Any

from .fielddocs import json_schema, markdown_reference
from .fields import Field, Kind
from .layers import Layer
from .policy_checks import (
    ACCOUNT_HELP,
    ACCOUNT_PATTERN,
    ENV_NAME_HELP,
    ENV_NAME_PATTERN,
    MATCH_HELP,
    MATCH_PATTERN,
    account_error,
    env_name_error,
    env_values_error,
    read_write_check,
    source_error,
    visible_error,
)

VERSION = 1  # the policy format this code reads
SYNTAXES = ("bash", "sh", "python", "powershell")
NETWORKS = ("none", "host")
BASELINE_LAYERS = (  # present on any root host with Linux >= 5.13
    "session",
    "descriptors",
    "environment",
    "account",
    "no_new_privs",
    "mount",
    "pid",
    "ipc",
    "uts",
    "rlimits",
)
KiB, MiB, GiB, TiB = 1024, 1024**2, 1024**3, 1024**4
DAY = 86400


def _not_empty(value: tuple[str, ...]) -> str | None:
    return None if value else "must list at least one entry"


MATCH = Field(
    "match",
    Kind.STR,
    "The projects this rule applies to: an exact project id, or a glob where `*` matches"
    " any run of characters and `?` exactly one (case-sensitive). An exact match wins;"
    " otherwise the matching glob with the most characters other than `*` wins. Two globs"
    " with the same count that could match the same project are refused as a tie.",
    required=True,
    pattern=MATCH_PATTERN,
    pattern_help=MATCH_HELP,
    example="web-*",
)

LIMITS = (
    Field(
        "memory",
        Kind.SIZE,
        "Memory limit for the script's whole process tree.",
        default="1GiB",
        minimum=16 * MiB,
        maximum=16 * TiB,
    ),
    Field(
        "processes",
        Kind.INT,
        "Most processes and threads the script may have at once.",
        default=256,
        minimum=1,
        maximum=65536,
    ),
    Field(
        "cpu_time",
        Kind.DURATION,
        "CPU time each process of the script may consume.",
        default="1h",
        minimum=1,
        maximum=7 * DAY,
    ),
    Field(
        "open_files",
        Kind.INT,
        "Most open file descriptors per process.",
        default=1024,
        minimum=16,
        maximum=1048576,
    ),
    Field(
        "file_size",
        Kind.SIZE,
        "Largest file the script may write.",
        default="1GiB",
        minimum=1 * MiB,
        maximum=16 * TiB,
    ),
    Field(
        "output",
        Kind.SIZE,
        "Most output (stdout and stderr together) kept for one script.",
        default="16MiB",
        minimum=64 * KiB,
        maximum=1 * GiB,
    ),
    Field(
        "artifacts",
        Kind.SIZE,
        "Most bytes of artifacts (`new_octopusartifact`) kept for one script; 0 keeps none.",
        default="256MiB",
        minimum=0,
        maximum=64 * GiB,
    ),
    Field(
        "package",
        Kind.SIZE,
        "Most bytes a package may unpack to (counted as written, whatever the archive"
        " claims); more refuses the package.",
        default="1GiB",
        minimum=1 * MiB,
        maximum=1 * TiB,
    ),
    Field(
        "package_files",
        Kind.INT,
        "Most entries (files, directories, links) in one package; more refuses it.",
        default=10000,
        minimum=1,
        maximum=1000000,
    ),
    Field(
        "tmp",
        Kind.SIZE,
        "Size of the script's private /tmp, and of its /dev/shm.",
        default="256MiB",
        minimum=1 * MiB,
        maximum=1 * TiB,
    ),
    Field(
        "cpu_percent",
        Kind.INT,
        "CPU bandwidth: 100 is one full core, 50 half a core, 200 two cores.",
        default=100,
        minimum=1,
        maximum=25600,
    ),
)

FILESYSTEM = (
    Field(
        "read_only",
        Kind.PATH_LIST,
        "Host paths the script may read, besides the system directories and its workspace."
        " Kernel interfaces, /run and sandworker's own state are refused.",
        default=[],
        item_validator=visible_error,
        example=["/opt/tools"],
    ),
    Field(
        "read_write",
        Kind.PATH_LIST,
        "Host paths the script may read and write. System directories, kernel interfaces,"
        " /run and sandworker's own state are refused, as are their parents.",
        default=[],
        item_validator=read_write_check,
        example=["/srv/shared-cache"],
    ),
)

ENVIRONMENT = (
    Field(
        "pass",
        Kind.STR_LIST,
        "Names of variables copied from the supervisor's environment, when it has them."
        " Loader, shell and interpreter hooks and the sandbox's own variables are refused.",
        default=[],
        pattern=ENV_NAME_PATTERN,
        pattern_help=ENV_NAME_HELP,
        item_validator=env_name_error,
        example=["LANG", "LC_ALL"],
    ),
    Field(
        "set",
        Kind.STR_TABLE,
        "Variables set to fixed values; a name both passed and set gets the value set here."
        " The same names are refused as for `pass`.",
        default={},
        pattern=ENV_NAME_PATTERN,
        pattern_help=ENV_NAME_HELP,
        item_validator=env_name_error,
        validator=env_values_error,
        example={"TZ": "UTC"},
    ),
)

PACKAGES = (
    Field(
        "sources",
        Kind.STR_LIST,
        "URL prefixes the worker may download this project's packages from"
        " (`POST /v1/projects/{project}/packages`), each `https://host[:port]/path/` or"
        " `http://...` (the SHA-256 every download must name keeps plain HTTP honest)."
        " A URL matches when its scheme, host and port are the prefix's and its path starts"
        " with the prefix's path; redirects must match too. Empty: no downloads.",
        default=[],
        item_validator=source_error,
        example=["https://packages.example.com/releases/"],
    ),
)

RULE = (
    Field(
        "account",
        Kind.STR,
        'The account scripts run as: "dynamic" (a stable uid of its own for each project)'
        " or an existing unprivileged account. Never root, nor any account with uid or gid 0.",
        default="dynamic",
        pattern=ACCOUNT_PATTERN,
        pattern_help=ACCOUNT_HELP,
        validator=account_error,
    ),
    Field(
        "syntaxes",
        Kind.ENUM_LIST,
        "Script syntaxes the project may use.",
        default=["bash", "sh", "python"],
        allowed=SYNTAXES,
        validator=_not_empty,
    ),
    Field(
        "timeout",
        Kind.DURATION,
        "Wall-clock limit for one script; then it is stopped (TERM, `kill_grace`, KILL).",
        default="1h",
        minimum=1,
        maximum=7 * DAY,
    ),
    Field(
        "kill_grace",
        Kind.DURATION,
        "Time between TERM and KILL when a script is stopped.",
        default="10s",
        minimum=0,
        maximum=10 * 60,
    ),
    Field(
        "network",
        Kind.ENUM,
        'Network access: "none" (a private network namespace with loopback only) or "host".',
        default="none",
        allowed=NETWORKS,
    ),
    Field(
        "concurrency",
        Kind.INT,
        "Most scripts of one project running at once.",
        default=4,
        minimum=1,
        maximum=1024,
    ),
    Field(
        "require",
        Kind.ENUM_LIST,
        "Isolation layers that must be applied: if the host cannot apply one, the script is"
        " refused rather than run with less isolation. `sandworker doctor` shows what this"
        ' host supports. "network" requires network = "none".',
        default=list(BASELINE_LAYERS),
        allowed=tuple(layer.value for layer in Layer),
    ),
    Field("limits", Kind.TABLE, "Resource limits.", fields=LIMITS),
    Field(
        "filesystem",
        Kind.TABLE,
        "Host paths made visible inside the sandbox.",
        fields=FILESYSTEM,
    ),
    Field(
        "packages",
        Kind.TABLE,
        "Where packages may come from, besides uploads.",
        fields=PACKAGES,
    ),
    Field(
        "environment",
        Kind.TABLE,
        "The script's environment. It starts empty; the sandbox sets HOME, USER, LOGNAME,"
        " PATH and TMPDIR itself, and LANG when it is neither passed nor set.",
        fields=ENVIRONMENT,
    ),
)

FILE = (
    Field(
        "version",
        Kind.INT,
        "The policy format version.",
        required=True,
        allowed=(VERSION,),
        example=VERSION,
    ),
    Field(
        "defaults",
        Kind.TABLE,
        "Settings for every rule. A rule overrides them field by field; a field set nowhere"
        " keeps the built-in default shown here. At most one policy file may have"
        " `[defaults]`.",
        fields=RULE,
    ),
    Field(
        "project",
        Kind.TABLE_LIST,
        "A rule: `match` plus any field of `[defaults]`, which it overrides field by field"
        " (an array or a table of variables replaces the inherited one as a whole)."
        " A project that no rule matches is refused.",
        fields=(MATCH, *RULE),
    ),
)


SCHEMA_ID = "urn:sandworker:schema:policy:v1"


def policy_schema() -> dict[str, Any]:
    """The JSON Schema of a policy file (shipped as policies/schema/policy.v1.json)."""
    return json_schema(
        FILE,
        schema_id=SCHEMA_ID,
        title="sandworker policy file, version 1",
        description="What scripts of each project may do. Policy is default-deny: a project"
        " that no [[project]] rule matches is refused. Check files with `sandworker policy"
        " check`; see a project's result with `sandworker policy explain --project P`.",
    )


def policy_reference() -> str:
    """The Markdown field reference (shipped as policies/REFERENCE.md)."""
    return markdown_reference(FILE, title="Policy file reference (version 1)", intro=INTRO)


INTRO = """\
Generated by `sandworker policy docs` from the field declarations in
`sandbox/policy_fields.py`; do not edit by hand.

Policy files live in `/etc/sandworker/policies/*.toml` and are read in name
order. Policy is **default-deny**: a project that no `[[project]]` rule
matches is refused. For a project, an exact `match` wins; otherwise the
matching glob with the most characters other than `*` wins, and two globs
that tie are refused when the files are loaded.

Each value comes from the matching rule, else from `[defaults]`, else from
the built-in default listed below, field by field: `[project.limits]` with
only `memory` keeps the other limits from `[defaults.limits]`. An array, or
the table `environment.set`, replaces the inherited one as a whole.

Sizes are an integer number of bytes or a whole number with a binary unit
(`"64KiB"`, `"512MiB"`, `"1GiB"`). Durations are a number of seconds or whole
numbers with the units d, h, m, s in that order (`"30s"`, `"10m"`, `"1h30m"`).

Problems are reported as `file:line field: message`, where the field is the
dotted path of the key: `defaults.limits.memory`, or `project[2].network` for
the second `[[project]]` of that file (counting from 1).

`sandworker policy check [PATH...]` validates files; `sandworker policy
explain --project P` shows the effective values and where each comes from.
"""
