"""Loading, checking and resolving policy files; the shipped files; the policy CLI."""

from __future__ import annotations

import argparse
import json
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

from sandworker.daemon import cli_policy
from sandworker.sandbox.effective import EffectivePolicy
from sandworker.sandbox.globs import common_name, specificity
from sandworker.sandbox.layers import Layer
from sandworker.sandbox.policy import (
    BUILT_IN,
    DEFAULT_POLICY_DIR,
    PolicyDenied,
    PolicyError,
    PolicySet,
    load_policies,
    policy_reference,
    policy_schema,
)
from sandworker.sandbox.policy_fields import BASELINE_LAYERS

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "policies"


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def problems(paths: list[Path], **kwargs: object) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policies(paths, **kwargs)  # type: ignore[arg-type]
    return [str(problem) for problem in caught.value.problems]


# -- shipped files --------------------------------------------------------------------


def test_shipped_default_policy_loads_and_gives_every_project_the_baseline() -> None:
    policies = load_policies([SHIPPED / "default.toml"])
    policy = policies.resolve("any-project")
    assert policy.require == frozenset(Layer(name) for name in BASELINE_LAYERS)
    assert policy.network == "host"
    assert policy.account == "dynamic"
    assert policy.syntaxes == ("bash", "sh", "python")
    assert policies.summary() == "1 file, 1 rule"


def test_shipped_strict_policy_requires_every_layer_without_network() -> None:
    policy = load_policies([SHIPPED / "strict.toml"]).resolve("any-project")
    assert policy.require == frozenset(Layer)
    assert policy.network == "none"
    assert policy.environment_pass == ("LANG",)
    assert policy.environment_set == {}
    default = load_policies([SHIPPED / "default.toml"]).resolve("any-project")
    assert policy.limits.memory_bytes < default.limits.memory_bytes
    assert policy.timeout_seconds < default.timeout_seconds


def test_default_policy_dir_is_under_etc() -> None:
    assert Path("/etc/sandworker/policies") == DEFAULT_POLICY_DIR


# -- schema and reference ----------------------------------------------------------------


def render_schema() -> str:
    return json.dumps(policy_schema(), indent=2, sort_keys=True) + "\n"


def test_schema_generation_is_stable() -> None:
    assert render_schema() == render_schema()


def test_committed_schema_equals_a_fresh_generation() -> None:
    committed = (SHIPPED / "schema" / "policy.v1.json").read_text(encoding="utf-8")
    assert committed == render_schema(), "run `make schema` and commit the result"


def test_committed_reference_equals_a_fresh_generation() -> None:
    committed = (SHIPPED / "REFERENCE.md").read_text(encoding="utf-8")
    assert committed == policy_reference(), "regenerate with `sandworker policy docs`"


def test_schema_lists_every_layer_for_require() -> None:
    schema = policy_schema()
    require = schema["properties"]["defaults"]["properties"]["require"]
    assert require["items"]["enum"] == [layer.value for layer in Layer]
    assert schema["required"] == ["version"]
    assert schema["properties"]["project"]["items"]["required"] == ["match"]


# -- resolution ------------------------------------------------------------------------------


RULES = """\
version = 1

[defaults]
network = "host"

[defaults.limits]
memory = "2GiB"
processes = 100

[[project]]
match = "web-*"
limits.memory = "512MiB"

[[project]]
match = "web-prod-*"
concurrency = 2

[[project]]
match = "web-prod-db"
network = "none"
"""


@pytest.fixture
def rules(tmp_path: Path) -> tuple[PolicySet, Path]:
    path = write(tmp_path, "rules.toml", RULES)
    return load_policies([path]), path


def test_exact_match_wins_over_every_glob(rules: tuple[PolicySet, Path]) -> None:
    policies, _ = rules
    assert policies.rule_for("web-prod-db").match == "web-prod-db"
    assert policies.resolve("web-prod-db").network == "none"


def test_most_specific_glob_wins(rules: tuple[PolicySet, Path]) -> None:
    policies, _ = rules
    assert policies.rule_for("web-prod-eu").match == "web-prod-*"
    assert policies.rule_for("web-dev").match == "web-*"


def test_fields_inherit_one_by_one_and_record_their_source(rules: tuple[PolicySet, Path]) -> None:
    policies, path = rules
    policy = policies.resolve("web-prod-eu")
    assert isinstance(policy, EffectivePolicy)
    assert policy.project == "web-prod-eu"
    assert policy.concurrency == 2
    assert policy.limits.memory_bytes == 2 * 1024**3  # web-prod-* does not set it
    assert policy.limits.processes == 100
    assert policy.limits.cpu_seconds == 3600
    assert policy.network == "host"
    assert policy.sources["concurrency"] == f"{path}:16 [[project]] match = 'web-prod-*'"
    assert policy.sources["limits.memory"] == f"{path}:7 [defaults]"
    assert policy.sources["limits.cpu_time"] == BUILT_IN
    assert policy.sources["network"] == f"{path}:4 [defaults]"
    dev = policies.resolve("web-dev")
    assert dev.limits.memory_bytes == 512 * 1024**2
    assert dev.sources["limits.memory"] == f"{path}:12 [[project]] match = 'web-*'"


def test_every_rule_field_has_a_source(rules: tuple[PolicySet, Path]) -> None:
    policy = rules[0].resolve("web-1")
    names = [name for name, _, _ in rules[0].explain("web-1")]
    assert set(policy.sources) == set(names[1:])


def test_default_deny_names_the_policy_paths(tmp_path: Path) -> None:
    path = write(tmp_path, "a.toml", RULES)
    policies = load_policies([tmp_path])
    with pytest.raises(PolicyDenied) as denied:
        policies.resolve("api-1")
    assert str(denied.value) == (
        f"project 'api-1' matches no [[project]] rule in {tmp_path} (policy is default-deny:"
        " add a rule whose match covers it)"
    )
    assert path.exists()


def test_a_policy_without_rules_refuses_every_project(tmp_path: Path) -> None:
    policies = load_policies([write(tmp_path, "a.toml", "version = 1\n")])
    assert "every project is refused" in policies.summary()
    with pytest.raises(PolicyDenied):
        policies.resolve("web-1")


def test_environment_set_and_arrays_replace_the_inherited_value(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "a.toml",
        'version = 1\n[defaults.environment]\nset = { A = "1", B = "2" }\npass = ["LANG"]\n'
        '[[project]]\nmatch = "x"\nenvironment.set = { C = "3" }\n',
    )
    policy = load_policies([path]).resolve("x")
    assert dict(policy.environment_set) == {"C": "3"}
    assert policy.environment_pass == ("LANG",)


def test_explain_renders_values_as_toml_with_their_source(rules: tuple[PolicySet, Path]) -> None:
    policies, path = rules
    rows = policies.explain("web-dev")
    assert rows[0] == ("match", '"web-*"', f"{path}:11 [[project]] match = 'web-*'")
    table = {name: (value, source) for name, value, source in rows}
    assert table["limits.memory"] == ('"512MiB"', f"{path}:12 [[project]] match = 'web-*'")
    assert table["timeout"] == ('"1h"', BUILT_IN)
    assert table["environment.set"] == ("{}", BUILT_IN)


def test_required_layers_unites_every_rule(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "a.toml",
        'version = 1\n[defaults]\nrequire = ["account"]\n'
        '[[project]]\nmatch = "a"\n[[project]]\nmatch = "b"\nnetwork = "none"\n'
        'require = ["network", "landlock"]\n',
    )
    assert load_policies([path]).required_layers() == {
        Layer.ACCOUNT,
        Layer.NETWORK,
        Layer.LANDLOCK,
    }


# -- globs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "common"),
    [
        ("web-*", "*-api", "web-api"),
        ("a?c", "ab?", "abc"),
        ("*", "*", ""),
        ("web-*", "api-*", None),  # different literal prefixes
        ("*-prod", "*-test", None),  # different literal suffixes
        ("a*b*c", "*x*", "axbc"),
        ("abc", "a*", "abc"),
        ("a?", "a", None),
    ],
)
def test_common_name_finds_a_witness_or_proves_disjointness(
    first: str, second: str, common: str | None
) -> None:
    found = common_name(first, second)
    if common is None:
        assert found is None
    else:
        assert found is not None and len(found) == len(common)
        assert fnmatchcase(found, first) and fnmatchcase(found, second)


def test_specificity_counts_every_character_but_star() -> None:
    assert specificity("web-*") == 4
    assert specificity("web-?") == 5
    assert specificity("*") == 0


# -- loading errors -------------------------------------------------------------------


def test_directory_loads_its_toml_files_sorted_and_not_recursively(tmp_path: Path) -> None:
    write(tmp_path, "b.toml", 'version = 1\n[[project]]\nmatch = "b"\n')
    write(tmp_path, "a.toml", 'version = 1\n[[project]]\nmatch = "a"\n')
    write(tmp_path, "notes.txt", "not a policy")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "c.toml", "this is not toml")
    policies = load_policies([tmp_path])
    assert [path.name for path in policies.files] == ["a.toml", "b.toml"]
    assert policies.summary() == "2 files, 2 rules"


def test_empty_directory_is_an_error(tmp_path: Path) -> None:
    assert problems([tmp_path]) == [f"{tmp_path}: no policy files in {tmp_path} (*.toml)"]


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert problems([missing]) == [f"{missing}: no such file or directory"]


def test_defaults_in_two_files_names_both(tmp_path: Path) -> None:
    first = write(tmp_path, "a.toml", 'version = 1\n[defaults]\nnetwork = "none"\n')
    second = write(tmp_path, "b.toml", "version = 1\n\n[defaults]\n")
    assert problems([tmp_path]) == [
        f"{second}:3 defaults: [defaults] is already defined at {first}:2; keep one [defaults]"
    ]


def test_duplicate_match_across_files(tmp_path: Path) -> None:
    first = write(tmp_path, "a.toml", 'version = 1\n[[project]]\nmatch = "web-*"\n')
    second = write(tmp_path, "b.toml", 'version = 1\n[[project]]\nmatch = "web-*"\n')
    assert problems([first, second]) == [
        f"{second}:3 project[1].match: duplicate match 'web-*': already used at {first}:3;"
        " merge the two rules"
    ]


def test_all_problems_of_all_files_are_reported_in_file_order(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", "version = 2\n")
    write(tmp_path, "b.toml", 'version = 1\n[[project]]\nmatch = "x\n')
    write(tmp_path, "c.toml", "version = [\n")
    assert problems([tmp_path]) == [
        f"{tmp_path}/a.toml:1 version: 2 is not allowed; use one of: 1",
        f"{tmp_path}/b.toml:3 toml: illegal character '\\n' (column 11)",
        f"{tmp_path}/c.toml:1 toml: invalid value (at the end of the file)",
    ]


def test_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_bytes(b"version = 1\n# caf\xe9\n")
    assert problems([path]) == [f"{path}:2 toml: not UTF-8 text: save the file as UTF-8"]


def test_policy_error_message_is_one_problem_per_line(tmp_path: Path) -> None:
    path = write(tmp_path, "a.toml", "version = 1\nx = 1\ny = 2\n")
    with pytest.raises(PolicyError) as caught:
        load_policies([path])
    assert str(caught.value).splitlines() == [str(p) for p in caught.value.problems]
    assert len(caught.value.problems) == 2


# -- accounts ---------------------------------------------------------------------------


ACCOUNT_RULE = 'version = 1\n[[project]]\nmatch = "web-*"\naccount = "deploy"\n'


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (None, "no account named 'deploy' on this host: create it, or use \"dynamic\""),
        ((0, 100), "account 'deploy' has uid 0, which is root's: use an unprivileged account"),
        ((1000, 0), "account 'deploy' has gid 0, which is root's: use an unprivileged account"),
    ],
)
def test_accounts_must_exist_and_be_unprivileged(
    tmp_path: Path, ids: tuple[int, int] | None, message: str
) -> None:
    path = write(tmp_path, "a.toml", ACCOUNT_RULE)
    found = problems([path], lookup_account=lambda name: ids)
    assert found == [f"{path}:4 project[1].account: {message}"]


def test_existing_unprivileged_account_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "a.toml", ACCOUNT_RULE)
    policy = load_policies([path], lookup_account=lambda name: (1000, 1000)).resolve("web-1")
    assert policy.account == "deploy"


def test_dynamic_account_is_never_looked_up(tmp_path: Path) -> None:
    path = write(tmp_path, "a.toml", 'version = 1\n[[project]]\nmatch = "x"\n')

    def lookup(name: str) -> tuple[int, int] | None:
        raise AssertionError(f"looked up {name}")

    load_policies([path], lookup_account=lookup)


# -- contradictions -----------------------------------------------------------------------


def test_host_network_with_required_network_layer_points_at_the_rule_that_set_it(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        "a.toml",
        'version = 1\n[defaults]\nrequire = ["network"]\nnetwork = "none"\n'
        '[[project]]\nmatch = "x"\nnetwork = "host"\n',
    )
    assert problems([path]) == [
        f'{path}:7 project[1].network: network = "host" contradicts require listing "network"'
        f' (require from {path}:3 [defaults]): set network = "none" or remove "network" from'
        " require"
    ]


# -- CLI ------------------------------------------------------------------------------------


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="sandworker")
    cli_policy.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["policy", *argv])
    result: int = args.func(args)
    return result


def test_cli_check_prints_a_summary_when_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("check", str(SHIPPED / "default.toml")) == 0
    assert capsys.readouterr().out == "ok: 1 file, 1 rule\n"


def test_cli_check_prints_every_problem_to_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "a.toml", "version = 1\nx = 1\n[defaults]\nnetwork = 3\n")
    assert run_cli("check", str(path)) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{path}:2 x: unknown field; known fields are: version, defaults, project",
        f"{path}:4 defaults.network: expected a string, got integer 3",
    ]


def test_cli_explain_shows_field_value_and_source(
    rules: tuple[PolicySet, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, path = rules
    assert run_cli("explain", "--project", "web-dev", "--policy-dir", str(path)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "project web-dev"
    assert lines[1].split() == ["FIELD", "VALUE", "SOURCE"]
    memory = next(line for line in lines if line.startswith("limits.memory "))
    assert memory.split(maxsplit=2) == [
        "limits.memory",
        '"512MiB"',
        f"{path}:12 [[project]] match = 'web-*'",
    ]


def test_cli_explain_refuses_a_project_no_rule_matches(
    rules: tuple[PolicySet, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, path = rules
    assert run_cli("explain", "--project", "api", "--policy-dir", str(path)) == 1
    assert "policy is default-deny" in capsys.readouterr().err


def test_cli_schema_prints_the_committed_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("schema") == 0
    committed = (SHIPPED / "schema" / "policy.v1.json").read_text(encoding="utf-8")
    assert capsys.readouterr().out == committed


def test_cli_docs_prints_the_committed_reference(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("docs") == 0
    assert capsys.readouterr().out == (SHIPPED / "REFERENCE.md").read_text(encoding="utf-8")
