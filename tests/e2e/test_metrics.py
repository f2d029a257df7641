"""The metrics listener of a real daemon: a live scrape passes `promtool check metrics`,
counts what happened, carries no unbounded label, and serves /metrics only."""

from __future__ import annotations

import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.daemon import Worker

REPO = Path(__file__).resolve().parents[2]
PROMTOOL = REPO / ".build" / "promtool" / "root" / "usr" / "bin" / "promtool"


def promtool() -> str:
    found = str(PROMTOOL) if PROMTOOL.exists() else shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is missing: `make test` fetches it")
    return found


def scrape(worker: Worker, path: str = "/metrics") -> str:
    url = f"http://127.0.0.1:{worker.metrics_port}{path}"
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        return str(response.read().decode())


def test_a_live_scrape_passes_promtool_and_counts_what_happened(worker: Worker) -> None:
    run = {"project": "web", "body": "echo hi", "wait_seconds": 20}
    assert worker.call("PUT", "/v1/scripts/ok", run)[1]["exit_code"] == 0
    failing = {**run, "body": "exit 3"}
    assert worker.call("PUT", "/v1/scripts/bad", failing)[1]["exit_code"] == 3
    assert worker.call("PUT", "/v1/scripts/no", {**run, "project": "nope"})[0] == 403
    text = scrape(worker)
    check = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    for line in (
        'sandworker_scripts_started_total{syntax="bash"} 2.0',
        'sandworker_scripts_completed_total{outcome="success",syntax="bash"} 1.0',
        'sandworker_scripts_completed_total{outcome="failure",syntax="bash"} 1.0',
        'sandworker_start_refusals_total{reason="policy"} 1.0',
        "sandworker_script_duration_seconds_count 2.0",
        "sandworker_spawn_duration_seconds_count 2.0",
        "sandworker_scripts_running 0.0",
    ):
        assert line in text.splitlines(), line
    assert "process_resident_memory_bytes" in text
    for unbounded in ("web", "nope", "ok", worker.uid_of("web")):  # project, ticket, uid
        assert f'"{unbounded}"' not in text


def test_the_listener_serves_metrics_only(worker: Worker) -> None:
    with pytest.raises(urllib.error.HTTPError) as error:
        scrape(worker, "/v1/health")
    assert error.value.code == 404


def test_the_golden_exposition_passes_promtool() -> None:
    golden = (REPO / "tests" / "unit" / "metrics.golden.txt").read_text()
    check = subprocess.run(
        [promtool(), "check", "metrics"], input=golden, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
