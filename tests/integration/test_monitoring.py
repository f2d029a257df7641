"""monitoring/: the alerting rules pass `promtool check rules` and their unit tests, and the
rules and the Grafana dashboard name only metrics the daemon exposes, in valid PromQL."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from sandworker.daemon.metrics import Metrics
from tests.e2e.test_metrics import promtool

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
NAMES = re.compile(r"\b((?:sandworker|process)_[a-z_]+)\b")


def _promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def _exposed() -> set[str]:
    """Every series name the daemon can expose (families without samples yet included)."""
    names = set()
    for line in Metrics().exposition().decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
            names |= {name + suffix for suffix in suffixes}
    return names


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((MONITORING / "sandworker.dashboard.json").read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def test_the_rules_check_and_their_unit_tests_pass() -> None:
    check = _promtool("check", "rules", "sandworker.rules.yml")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 7 rules found" in check.stdout
    tests = _promtool("test", "rules", "sandworker.rules.test.yml")
    assert tests.returncode == 0, tests.stdout + tests.stderr


def test_rules_and_dashboard_use_only_exposed_metrics() -> None:
    exposed = _exposed() | {"up"}
    rules = (MONITORING / "sandworker.rules.yml").read_text()
    used = set(NAMES.findall(rules)) | {n for e in _dashboard_exprs() for n in NAMES.findall(e)}
    assert used, "no metric found in the rules or the dashboard"
    assert used <= exposed, sorted(used - exposed)


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    exprs = _dashboard_exprs()
    assert len(exprs) >= 14
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{n}", "expr": expr.replace("$__rate_interval", "5m")}
        for n, expr in enumerate(exprs)
    ]}]}  # fmt: skip
    path = tmp_path / "dashboard.rules.json"  # (YAML is a superset of JSON)
    path.write_text(json.dumps(rules))
    check = _promtool("check", "rules", str(path), cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
