"""Policy files: load and check them, then resolve a project to its EffectivePolicy.

Policy is default-deny. Each `[[project]]` rule names the projects it covers
with `match`: an exact project id wins; otherwise the matching glob with the
highest specificity (characters other than `*`) wins. Two globs with equal
specificity that could both match one project are a tie, refused at load.

A value comes from the matching rule, else from `[defaults]`, else from the
built-in default, field by field (`policy_fields.RULE`).

Problems are reported as `file:line field: message`. The field is the dotted
path of the key: `version`, `defaults.limits.memory`, `project[2].network`
(the second `[[project]]` of that file, counting from 1), and for a variable
of `environment.set` its name: `project[1].environment.set.LD_PRELOAD`.
TOML syntax errors use the field `toml`; file-level problems have no line.
"""

from __future__ import annotations

import math
import pwd
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .effective import EffectivePolicy, Limits
from .fields import Problem, dotted, leaves, read_toml, toml_value, validate
from .globs import common_name, is_glob, specificity
from .keylines import KeyLines
from .layers import Layer
from .policy_fields import FILE, RULE, policy_reference, policy_schema

__all__ = [
    "DEFAULT_POLICY_DIR",
    "PolicyDenied",
    "PolicyError",
    "PolicySet",
    "Problem",
    "Rule",
    "load_policies",
    "nss_account",
    "policy_reference",
    "policy_schema",
]

DEFAULT_POLICY_DIR = Path("/etc/sandworker/policies")
BUILT_IN = "built-in default"
RULE_FIELDS = dict(leaves(RULE))  # dotted name -> Field
BUILT_IN_VALUES = {name: field.parsed_default() for name, field in RULE_FIELDS.items()}

AccountLookup = Callable[[str], tuple[int, int] | None]


def nss_account(name: str) -> tuple[int, int] | None:
    """(uid, gid) of an account from NSS, or None if there is no such account."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


class PolicyError(Exception):
    """The policy files are invalid; `problems` lists everything found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


class PolicyDenied(Exception):
    """No rule matches the project: policy is default-deny."""


@dataclass(frozen=True)
class Rule:
    """A `[[project]]` rule, or the `[defaults]` table (match None)."""

    match: str | None
    file: str
    line: int  # of the table header
    index: int  # position among the file's [[project]] tables, from 0
    values: Mapping[str, Any]  # dotted field name -> parsed value
    lines: Mapping[str, int]  # dotted field name -> line

    @property
    def name(self) -> str:
        """The rule as messages show it: `defaults` or `project[2]`."""
        return "defaults" if self.match is None else dotted(("project", self.index))

    @property
    def label(self) -> str:
        return "[defaults]" if self.match is None else f"[[project]] match = '{self.match}'"

    @property
    def is_glob(self) -> bool:
        return self.match is not None and is_glob(self.match)

    @property
    def specificity(self) -> int:
        return specificity(self.match or "")

    def source(self, field: str) -> str:
        return f"{self.file}:{self.lines.get(field, self.line)} {self.label}"


@dataclass(frozen=True)
class PolicySet:
    """Every rule of the loaded files. Build it with `load_policies`."""

    paths: tuple[Path, ...]
    files: tuple[Path, ...]
    defaults: Rule | None
    rules: tuple[Rule, ...]

    def summary(self) -> str:
        files, rules = len(self.files), len(self.rules)
        text = f"{files} file{'s' * (files != 1)}, {rules} rule{'s' * (rules != 1)}"
        return text + (" (no [[project]] rule: every project is refused)" if not rules else "")

    def rule_for(self, project: str) -> Rule:
        """The exact rule for `project`, else its most specific glob; PolicyDenied if none."""
        for rule in self.rules:
            if rule.match == project and not rule.is_glob:
                return rule
        globs = [
            rule for rule in self.rules if rule.is_glob and fnmatchcase(project, rule.match or "")
        ]
        if not globs:
            where = ", ".join(str(path) for path in self.paths)
            raise PolicyDenied(
                f"project '{project}' matches no [[project]] rule in {where} (policy is"
                " default-deny: add a rule whose match covers it)"
            )
        return max(globs, key=lambda rule: rule.specificity)

    def resolve(self, project: str) -> EffectivePolicy:
        """The settings `project`'s scripts run under; PolicyDenied if no rule matches."""
        merged = _merge(self.defaults, self.rule_for(project))
        value = {name: item[0] for name, item in merged.items()}
        limits = Limits(
            memory_bytes=value["limits.memory"],
            processes=value["limits.processes"],
            cpu_seconds=math.ceil(value["limits.cpu_time"]),
            open_files=value["limits.open_files"],
            file_size_bytes=value["limits.file_size"],
            output_bytes=value["limits.output"],
            tmp_bytes=value["limits.tmp"],
            artifact_bytes=value["limits.artifacts"],
            package_bytes=value["limits.package"],
            package_files=value["limits.package_files"],
            cpu_percent=value["limits.cpu_percent"],
        )
        return EffectivePolicy(
            project=project,
            account=value["account"],
            syntaxes=tuple(value["syntaxes"]),
            timeout_seconds=value["timeout"],
            kill_grace_seconds=value["kill_grace"],
            limits=limits,
            network=value["network"],
            read_only_paths=tuple(value["filesystem.read_only"]),
            read_write_paths=tuple(value["filesystem.read_write"]),
            environment_pass=tuple(value["environment.pass"]),
            environment_set=MappingProxyType(dict(value["environment.set"])),
            concurrency=value["concurrency"],
            require=frozenset(Layer(name) for name in value["require"]),
            package_sources=tuple(value["packages.sources"]),
            sources=MappingProxyType(
                {name: _source(rule, name) for name, (_, rule) in merged.items()}
            ),
        )

    def required_layers(self) -> frozenset[Layer]:
        """Every layer some rule requires (what `doctor` checks the host for)."""
        required: set[str] = set()
        for rule in self.rules:
            required.update(_merge(self.defaults, rule)["require"][0])
        return frozenset(Layer(name) for name in required)

    def explain(self, project: str) -> list[tuple[str, str, str]]:
        """(field, value as TOML, source) for every field, the matching rule first."""
        rule = self.rule_for(project)
        rows = [("match", toml_value(rule.match), rule.source("match"))]
        for name, (value, source) in _merge(self.defaults, rule).items():
            rows.append((name, RULE_FIELDS[name].render(value), _source(source, name)))
        return rows


def _merge(defaults: Rule | None, rule: Rule | None) -> dict[str, tuple[Any, Rule | None]]:
    """Every rule field -> (value, the Rule it came from, None for built-in)."""
    merged: dict[str, tuple[Any, Rule | None]] = {}
    for name, builtin in BUILT_IN_VALUES.items():
        merged[name] = (builtin, None)
        for layer in (defaults, rule):
            if layer is not None and name in layer.values:
                merged[name] = (layer.values[name], layer)
    return merged


def _source(rule: Rule | None, name: str) -> str:
    return BUILT_IN if rule is None else rule.source(name)


# -- loading -------------------------------------------------------------------


def load_policies(
    paths: Sequence[Path], *, lookup_account: AccountLookup = nss_account
) -> PolicySet:
    """Load and check policy files and directories (their `*.toml`, not recursive).

    Raises PolicyError with every problem found, in file and line order.
    """
    problems: list[Problem] = []
    files = _policy_files(paths, problems)
    tables: list[Rule] = []
    invalid: set[tuple[str, str]] = set()  # (file, rule name) with problems of their own
    for file in files:
        tables += _load_file(file, problems, invalid)
    defaults = [rule for rule in tables if rule.match is None]
    rules = tuple(rule for rule in tables if rule.match is not None)
    for extra in defaults[1:]:
        first = defaults[0]
        message = f"[defaults] is already defined at {first.file}:{first.line}; keep one [defaults]"
        problems.append(Problem(extra.file, extra.line, "defaults", message))
    problems += _match_problems(rules)
    policy = PolicySet(tuple(paths), tuple(files), defaults[0] if defaults else None, rules)
    base = policy.defaults
    if base is None or (base.file, base.name) not in invalid:
        for rule in (base, *rules):
            if rule is not None and (rule.file, rule.name) not in invalid:
                problems += _merged_problems(base, rule, lookup_account)
    if problems:
        order = {str(file): index for index, file in enumerate(files)}
        unique = {str(problem): problem for problem in problems}.values()
        raise PolicyError(
            sorted(unique, key=lambda p: (order.get(p.file, -1), p.file, p.line or 0, p.field))
        )
    return policy


def _policy_files(paths: Sequence[Path], problems: list[Problem]) -> list[Path]:
    if not paths:
        problems.append(Problem("policy", None, "", "no policy file or directory given"))
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(item for item in path.glob("*.toml") if item.is_file())
            if not found:
                problems.append(Problem(str(path), None, "", f"no policy files in {path} (*.toml)"))
            files += found
        elif path.is_file():
            files.append(path)
        else:
            problems.append(Problem(str(path), None, "", "no such file or directory"))
    return files


def _load_file(file: Path, problems: list[Problem], invalid: set[tuple[str, str]]) -> list[Rule]:
    name = str(file)
    parsed = read_toml(file)
    if isinstance(parsed, Problem):
        problems.append(parsed)
        return []
    data, lines = parsed
    values, found = validate(data, FILE, file=name, lines=lines)
    problems += found
    invalid.update((name, problem.field.split(".")[0]) for problem in found)
    tables: list[Rule] = []
    if "defaults" in data:
        mine = {key[9:]: value for key, value in values.items() if key.startswith("defaults.")}
        tables.append(_rule(name, lines, ("defaults",), None, mine))
    for index, rule in enumerate(values.get("project", [])):
        if "match" in rule:
            tables.append(_rule(name, lines, ("project", index), rule["match"], rule))
    return tables


def _rule(
    file: str,
    lines: KeyLines,
    at: tuple[str, int] | tuple[str],
    match: str | None,
    values: dict[str, Any],
) -> Rule:
    fields = {name: value for name, value in values.items() if name != "match"}
    where = {name: lines.line((*at, *name.split("."))) for name in values}
    index = at[1] if len(at) == 2 else -1
    return Rule(match, file, lines.line(at), index, fields, where)


def _match_problems(rules: Sequence[Rule]) -> list[Problem]:
    """Duplicate patterns, and globs that tie (equal specificity, a common name)."""
    problems: list[Problem] = []
    first_of: dict[str, Rule] = {}
    for rule in rules:
        line, field = rule.lines.get("match", rule.line), f"{rule.name}.match"
        first = first_of.setdefault(rule.match or "", rule)
        if first is not rule:
            message = (
                f"duplicate match '{rule.match}': already used at {_where(first)};"
                " merge the two rules"
            )
            problems.append(Problem(rule.file, line, field, message))
            continue
        for other in first_of.values():
            if other is rule or not (rule.is_glob and other.is_glob):
                continue
            example = common_name(other.match or "", rule.match or "")
            if other.specificity == rule.specificity and example is not None:
                message = (
                    f"'{rule.match}' ties with '{other.match}' at {_where(other)}: both match"
                    f" e.g. '{example}' and both have {rule.specificity} characters other than *;"
                    " make one more specific or merge them"
                )
                problems.append(Problem(rule.file, line, field, message))
    return problems


def _where(rule: Rule) -> str:
    return f"{rule.file}:{rule.lines.get('match', rule.line)}"


def _merged_problems(
    defaults: Rule | None, rule: Rule, lookup_account: AccountLookup
) -> list[Problem]:
    """Checks on the values a rule ends up with: accounts, and contradictions."""
    merged = _merge(defaults, rule)
    problems: list[Problem] = []

    def at(name: str, message: str) -> None:
        source = merged[name][1] or rule
        line = source.lines.get(name, source.line)
        problems.append(Problem(source.file, line, f"{source.name}.{name}", message))

    account = merged["account"][0]
    if account != "dynamic":
        ids = lookup_account(account)
        if ids is None:
            at(
                "account",
                f"no account named '{account}' on this host: create it, or use \"dynamic\"",
            )
        elif 0 in ids:
            which = "uid 0" if ids[0] == 0 else "gid 0"
            at(
                "account",
                f"account '{account}' has {which}, which is root's: use an unprivileged account",
            )
    if merged["network"][0] == "host" and Layer.NETWORK.value in merged["require"][0]:

        def rank(source: Rule | None) -> int:
            return 0 if source is None else 1 if source is defaults else 2

        here, other = ("network", "require")
        if rank(merged["require"][1]) > rank(merged["network"][1]):
            here, other = other, here
        at(
            here,
            f'network = "host" contradicts require listing "network" ({other} from'
            f' {_source(merged[other][1], other)}): set network = "none" or remove "network"'
            " from require",
        )
    return problems
