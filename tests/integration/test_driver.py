"""The reactor driver runs real sandboxed scripts with the same rules as the blocking loop."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    state = tmp_path_factory.mktemp("driver")
    result = subprocess.run(
        [sys.executable, "-m", "tests.servers.drive_scripts", str(state)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout.splitlines()[-1]))


def test_output_and_exit_code(outcomes: dict[str, Any]) -> None:
    exit_ = outcomes["exit"]
    assert (exit_["reason"], exit_["exit_code"]) == ("exited", 3)
    assert "stdout:out\n" in exit_["text"] and "stderr:err\n" in exit_["text"]


def test_timeout_escalates_to_kill(outcomes: dict[str, Any]) -> None:
    assert outcomes["timeout"]["reason"] == "timeout"
    assert outcomes["timeout"]["signal"] == "SIGKILL"


def test_cancel_terminates_the_tree(outcomes: dict[str, Any]) -> None:
    assert outcomes["cancel"]["reason"] == "cancelled"
    assert outcomes["cancel"]["message"] == "cancelled; the whole process tree was killed"


def test_output_flood_is_cut_at_the_limit(outcomes: dict[str, Any]) -> None:
    flood = outcomes["flood"]
    assert flood["reason"] == "output" and flood["bytes"]["stdout"] == 100_000


def test_background_processes_do_not_keep_the_run_alive(outcomes: dict[str, Any]) -> None:
    lingering = outcomes["lingering"]
    assert (lingering["reason"], lingering["exit_code"]) == ("exited", 0)


def test_setup_failure_is_reported(outcomes: dict[str, Any]) -> None:
    assert outcomes["setup"]["reason"] == "setup_failed"
    assert outcomes["setup"]["message"].startswith("setup failed: mount:")
