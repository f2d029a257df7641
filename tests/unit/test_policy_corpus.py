"""The policy corpus: tests/policy/cases/*.good.toml load, *.bad.toml fail exactly as stated.

Directives, in comment lines of each case (`{file}` stands for the case's path):

    # expect: {file}:LINE field: message     (bad cases: the exact set of problems)
    # resolve: PROJECT FIELD=VALUE           (good cases: value as `policy explain` shows it)
    # source: PROJECT FIELD=SOURCE           (good cases: where the value came from)
    # deny: PROJECT                          (good cases: no rule matches)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sandworker.sandbox.policy import PolicyDenied, PolicyError, load_policies

CASES = Path(__file__).resolve().parents[1] / "policy" / "cases"
DIRECTIVE = re.compile(r"^# (expect|resolve|source|deny): (.*)$")


def directives(case: Path) -> list[tuple[str, str]]:
    found = []
    for line in case.read_text(encoding="utf-8").splitlines():
        match = DIRECTIVE.match(line)
        if match:
            found.append((match[1], match[2].replace("{file}", str(case))))
    return found


def cases(kind: str) -> list[Path]:
    return sorted(CASES.glob(f"*.{kind}.toml"))


def test_corpus_is_not_empty() -> None:
    assert len(cases("bad")) >= 20
    assert len(cases("good")) >= 4


@pytest.mark.parametrize("case", cases("bad"), ids=lambda path: path.name)
def test_bad_case_reports_exactly_its_expected_problems(case: Path) -> None:
    expected = {text for kind, text in directives(case) if kind == "expect"}
    assert expected, f"{case.name} states no '# expect:' lines"
    with pytest.raises(PolicyError) as caught:
        load_policies([case])
    assert {str(problem) for problem in caught.value.problems} == expected


@pytest.mark.parametrize("case", cases("good"), ids=lambda path: path.name)
def test_good_case_loads_and_resolves_as_stated(case: Path) -> None:
    policies = load_policies([case])
    for kind, text in directives(case):
        assert kind != "expect", f"{case.name}: a good case cannot expect problems"
        if kind == "deny":
            with pytest.raises(PolicyDenied):
                policies.resolve(text)
            continue
        project, _, assignment = text.partition(" ")
        field, _, wanted = assignment.partition("=")
        rows = {name: (value, source) for name, value, source in policies.explain(project)}
        value, source = rows[field]
        assert (value if kind == "resolve" else source) == wanted, f"{kind}: {text}"
