"""A full state filesystem: new starts are refused clearly, accepted tickets stay (root only).

The daemon's state directory is a small tmpfs of its own, filled from the
host side while the daemon runs.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.daemon import SANDWORKER, Worker, _worker, lines

pytestmark = pytest.mark.root

SIZE = 48 << 20


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Worker]:
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0755", "sandworker-test", str(state)],
        check=True,
    )
    try:
        yield from _worker(tmp_path)
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def fill(state: Path, leave: int = 0) -> Path:
    """Write a host-side file until the filesystem is full (less `leave` bytes)."""
    filler = state / "filler"
    chunk = b"\0" * (1 << 20)
    with contextlib.suppress(OSError), open(filler, "wb") as out:
        while True:
            out.write(chunk)
            out.flush()
    if leave:
        size = filler.stat().st_size
        with open(filler, "r+b") as out:
            out.truncate(max(size - leave, 0))
    return filler


def start(worker: Worker, ticket: str, body: str) -> tuple[int, dict[str, object]]:
    return worker.call(
        "PUT", f"/v1/scripts/{ticket}", {"project": "web", "body": body, "wait_seconds": 20}
    )


def test_a_full_disk_refuses_new_starts_and_keeps_accepted_tickets(small: Worker) -> None:
    code, before = start(small, "before", "echo kept")
    assert code == 201 and lines(before) == ["kept"]
    filler = fill(small.state)
    code, problem = start(small, "during", "echo never")
    assert code == 507, problem
    detail = str(problem["detail"])
    assert "No space left on device" in detail and "Free space in the state directory" in detail
    code, status = small.call("GET", "/v1/scripts/before")
    assert code == 200 and lines(status) == ["kept"] and status["exit_code"] == 0
    assert small.call("GET", "/v1/scripts/during")[0] == 404  # refused means not accepted
    filler.unlink()
    code, after = start(small, "after", "echo back")
    assert code == 201 and lines(after) == ["back"] and after["exit_code"] == 0
    assert "refusing a start" in small.log


def test_output_that_cannot_be_kept_stops_the_script_with_a_reason(small: Worker) -> None:
    fill(small.state, leave=2 << 20)
    code, status = start(small, "flood", "echo first; yes 'a line of output' | head -c 64000000")
    assert code == 201, status
    assert lines(status)[0] == "first"  # what was kept is still served
    status = small.pages("flood", status["next_seq"] - 1)[-1]  # more lines than one page
    assert status["state"] == "complete" and status["exit_code"] == -41, status
    assert "output could not be recorded" in str(status["message"])
    assert "No space left on device" in str(status["message"])
    assert small.call("GET", "/v1/health")[0] == 200


def test_a_read_only_state_directory_stops_serve_at_start_up(small: Worker) -> None:
    # (While it runs, the daemon's open logs keep the filesystem from going read-only; a
    # full one is the run-time case, above.)
    small.stop()
    subprocess.run(["mount", "-o", "remount,ro", str(small.state)], check=True)
    try:
        refused = subprocess.run(
            [SANDWORKER, "serve", "--config", str(small.home / "sandworker.toml")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small.state)], check=True)
    assert refused.returncode == 2, refused.stderr
    assert "cannot start" in refused.stderr and "Read-only file system" in refused.stderr
    small.start()  # writable again: it serves, with the earlier state intact
