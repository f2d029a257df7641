"""Purging by age in a real daemon: what a client collected, what nobody did, what still runs."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandworker.daemon.ticketlog import rfc3339
from tests.e2e.daemon import Worker, _worker

pytestmark = pytest.mark.root


@pytest.fixture
def short(tmp_path: Path) -> Iterator[Worker]:
    yield from _worker(tmp_path, state='retention = "60s"')


def _age(worker: Worker, ticket: str, seconds: float) -> None:
    """Move a stopped daemon's record of `ticket` `seconds` into the past, as time would."""
    path = worker.state / "tickets" / "tickets" / ticket / "state.jsonl"
    record = json.loads(path.read_text().splitlines()[-1])
    for field in ("completed", "client_completed"):
        if record[field] is not None:
            record[field] = rfc3339(time.time() - seconds)
    with path.open("a") as journal:  # a later record, as the daemon appends them
        journal.write(json.dumps(record) + "\n")


def test_tickets_older_than_the_retention_are_purged_at_start_up(
    short: Worker, tmp_path: Path
) -> None:
    run = {"project": "web", "body": "echo kept > file; echo out", "wait_seconds": 20}
    for ticket in ("abandoned", "collected", "recent"):
        assert short.call("PUT", f"/v1/scripts/{ticket}", run)[1]["state"] == "complete"
    short.call("PUT", "/v1/scripts/running", {"project": "web", "body": "sleep 30"})
    assert short.call("DELETE", "/v1/scripts/collected")[0] == 200
    work = tmp_path / "state" / "sandbox" / "projects" / "web" / "work"
    assert len(list(work.iterdir())) == 3  # abandoned, recent, running; collected's is gone
    short.stop()  # graceful: the sleeping script is killed and recorded as cancelled
    for ticket in ("abandoned", "collected"):
        _age(short, ticket, 61)
    _age(short, "recent", 30)
    short.start()  # the purge runs at start-up, then hourly
    for ticket in ("abandoned", "collected"):
        status, problem = short.call("GET", f"/v1/scripts/{ticket}")
        assert (status, problem["exit_code"]) == (404, -45), problem
    for ticket in ("recent", "running"):
        assert short.call("GET", f"/v1/scripts/{ticket}")[1]["state"] == "complete"
    tickets = sorted(p.name for p in (short.state / "tickets" / "tickets").iterdir())
    assert tickets == ["recent", "running"]
    assert len(list(work.iterdir())) == 2  # abandoned's working directory went with it
    purged = [e["ticket"] for e in short.audit() if e["event"] == "ticket.purged"]
    assert sorted(purged) == ["abandoned", "collected"]
