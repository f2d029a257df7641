"""A real `sandworker serve` over real mutual TLS: lifecycle, pinning and crash recovery."""

from __future__ import annotations

import http.client
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandworker.daemon.certs import certificate_prints
from sandworker.daemon.client import Client, ClientError, Profile
from tests.e2e.daemon import SANDWORKER, Worker, _worker, lines

pytestmark = pytest.mark.root


def test_start_waits_runs_and_is_idempotent(worker: Worker) -> None:
    start = {"project": "web", "body": "echo hello; echo oops >&2; exit 3", "wait_seconds": 20}
    status, body = worker.call("PUT", "/v1/scripts/T-1", start)
    assert status == 201, body
    assert (body["state"], body["exit_code"]) == ("complete", 3)
    assert lines(body) == ["hello"] and lines(body, "stderr") == ["oops"]
    again_status, again = worker.call("PUT", "/v1/scripts/t-1", start)  # ids ignore case
    assert again_status == 200 and lines(again) == ["hello"]  # reported, never run twice
    _, after = worker.call("GET", f"/v1/scripts/T-1?after={body['next_seq'] - 1}")
    assert after["logs"] == [] and after["state"] == "complete"


def _after_setup(worker: Worker, ticket: str) -> int:
    """The `after` that skips a started script's debug lines (layers applied)."""
    _, body = worker.call("GET", f"/v1/scripts/{ticket}")
    assert body["logs"] and all(line["source"] == "debug" for line in body["logs"]), body
    return int(body["next_seq"]) - 1


def test_a_start_repeated_while_it_runs_only_reports(worker: Worker) -> None:
    start = {"project": "web", "body": "echo once; sleep 2"}
    assert worker.call("PUT", "/v1/scripts/twice", start)[0] == 201
    _wait_line(worker, "twice", "once")
    status, again = worker.call("PUT", "/v1/scripts/twice", start)
    assert (status, again["state"]) == (200, "running")
    done = _wait_state(worker, "twice", "complete")
    assert lines(done) == ["once"]  # one run, not two
    starts = [e for e in worker.audit() if e["event"] == "script.start" and e["ticket"] == "twice"]
    assert len(starts) == 1


def _started(worker: Worker, ticket: str, body: str) -> int:
    """Start a script; the `after` that skips its debug lines (layers applied)."""
    worker.call("PUT", f"/v1/scripts/{ticket}", {"project": "web", "body": body})
    time.sleep(0.5)
    return _after_setup(worker, ticket)


def _timed(worker: Worker, path: str) -> tuple[dict[str, Any], float]:
    began = time.monotonic()
    _, body = worker.call("GET", path)
    return body, time.monotonic() - began


def test_long_poll_waits_for_a_line_then_for_the_end(worker: Worker) -> None:
    after = _started(worker, "lp", "sleep 2; echo late; sleep 2")
    body, waited = _timed(worker, f"/v1/scripts/lp?after={after}&wait=15")
    assert lines(body) == ["late"] and body["state"] == "running"
    assert 0.8 < waited < 5, waited  # held until the line came, answered when it did
    body, waited = _timed(worker, f"/v1/scripts/lp?after={body['next_seq'] - 1}&wait=15")
    assert (body["state"], body["exit_code"], lines(body)) == ("complete", 0, [])
    assert 1 < waited < 6, waited  # woken by the completion, not by the 15 s wait


def test_long_poll_on_a_silent_script_answers_after_wait(worker: Worker) -> None:
    after = _started(worker, "quiet", "sleep 10")
    body, waited = _timed(worker, f"/v1/scripts/quiet?after={after}&wait=2")
    assert (body["state"], body["logs"], body["next_seq"]) == ("running", [], after + 1)
    assert 1.9 < waited < 4, waited
    worker.call("POST", "/v1/scripts/quiet/cancel")


def test_cancel_kills_the_tree_records_minus_43_and_unknown_ticket_minus_45(
    worker: Worker,
) -> None:
    tree = "sleep 60 & (sleep 60 &) ; setsid sleep 60 & echo up; wait"
    worker.call("PUT", "/v1/scripts/c1", {"project": "web", "body": tree})
    _wait_line(worker, "c1", "up")
    assert worker.processes_of("web").count(b"\n") >= 4  # bash and three sleeps, one detached
    worker.call("POST", "/v1/scripts/c1/cancel")
    body = _wait_state(worker, "c1", "complete")
    assert (body["state"], body["exit_code"]) == ("complete", -43)
    assert worker.processes_of("web") == b""  # the whole tree, the detached one included
    status, problem = worker.call("GET", "/v1/scripts/nope")
    assert status == 404 and problem["exit_code"] == -45


def test_refusals_are_problems(worker: Worker) -> None:
    status, problem = worker.call("PUT", "/v1/scripts/x", {"project": "other", "body": "true"})
    assert status == 403 and "matches no [[project]] rule" in problem["detail"]
    status, problem = worker.call("PUT", "/v1/scripts/x", {"project": "web"})
    assert status == 400 and problem["detail"] == "body is required"


def test_untrusted_client_gets_nowhere(worker: Worker) -> None:
    with pytest.raises((OSError, http.client.HTTPException)):
        worker.call("GET", "/v1/health", client="stranger")


def test_complete_removes_the_working_directory(worker: Worker, tmp_path: Path) -> None:
    worker.call(
        "PUT", "/v1/scripts/done", {"project": "web", "body": "touch made-here", "wait_seconds": 20}
    )
    work = tmp_path / "state" / "sandbox" / "projects" / "web" / "work"
    assert len(list(work.iterdir())) == 1
    status, body = worker.call("DELETE", "/v1/scripts/done")
    assert status == 200 and body["state"] == "complete"
    assert list(work.iterdir()) == []


def test_kill_minus_9_then_restart_answers_every_ticket(worker: Worker) -> None:
    done = {"project": "web", "body": "seq 1 500", "wait_seconds": 20}
    assert worker.call("PUT", "/v1/scripts/done", done)[1]["state"] == "complete"
    hold = {"isolation": "full", "mutex": "m"}
    body = "echo before; sleep 30"
    worker.call("PUT", "/v1/scripts/crash", {"project": "web", "body": body, **hold})
    worker.call("PUT", "/v1/scripts/queued", {"project": "web", "body": "echo never", **hold})
    _wait_line(worker, "crash", "before")
    assert worker.call("GET", "/v1/scripts/queued")[1]["state"] == "pending"
    worker.stop(signal.SIGKILL)
    worker.start()  # at once: the start-up sweep, not a grace period, ends the orphans
    assert worker.processes_of("web") == b""  # nothing of the interrupted run survived
    _, finished = worker.call("GET", "/v1/scripts/done")
    assert (finished["exit_code"], lines(finished)) == (0, [str(n) for n in range(1, 501)])
    for ticket in ("crash", "queued"):
        _, body = worker.call("GET", f"/v1/scripts/{ticket}")
        assert (body["state"], body["exit_code"]) == ("complete", -46), body
        assert any("result lost" in text for text in lines(body, "debug")), body
    _, crashed = worker.call("GET", "/v1/scripts/crash")
    assert "before" in lines(crashed) and lines(worker.call("GET", "/v1/scripts/queued")[1]) == []


def test_health_and_capabilities(worker: Worker) -> None:
    _, health = worker.call("GET", "/v1/health")
    assert health["status"] == "ok" and health["builtin_worker"] is True
    assert health["version"] and (health["running"], health["queued"]) == (0, 0)
    assert health["layers"]["account"] == "ok" and set(health["layers"]) >= {"mount", "pid"}
    worker.call("PUT", "/v1/scripts/h1", {"project": "web", "body": "echo go; sleep 30"})
    worker.call("GET", "/v1/scripts/h1?wait=5")
    assert worker.call("GET", "/v1/health")[1]["running"] == 1
    _, caps = worker.call("GET", "/v1/capabilities")
    assert "bash" in caps["syntaxes"] and caps["protocol"] == 1
    assert caps["packages"]["formats"] == [".zip", ".tar.gz", ".tgz", ".nupkg"], caps


def test_no_script_process_is_left(worker: Worker) -> None:
    worker.call(
        "PUT",
        "/v1/scripts/bg",
        {"project": "web", "body": "sleep 100 & echo ok", "wait_seconds": 20},
    )
    time.sleep(0.5)
    assert worker.processes_of("web") == b""  # the backgrounded sleep went with the run


def test_stop_kills_running_scripts_and_records_them(worker: Worker, tmp_path: Path) -> None:
    worker.call("PUT", "/v1/scripts/long", {"project": "web", "body": "echo up; sleep 60"})
    time.sleep(1.0)
    worker.stop(signal.SIGTERM)
    assert not list(Path("/sys/fs/cgroup/pids").glob("sandworker-*"))
    worker.start()
    _, body = worker.call("GET", "/v1/scripts/long")
    assert (body["state"], body["exit_code"]) == ("complete", -43)
    assert any("the worker stopped" in text for text in lines(body, "debug"))


def test_a_finished_script_is_reported_at_once_not_after_a_drain_timeout(worker: Worker) -> None:
    # Regression: the reactor reports a hung-up pipe through connectionLost, not doRead;
    # missing that made every run wait out the 2 s drain timer.
    worker.call("PUT", "/v1/scripts/warm", {"project": "web", "body": "true", "wait_seconds": 20})
    began = time.monotonic()
    _, body = worker.call(
        "PUT", "/v1/scripts/quick", {"project": "web", "body": "true", "wait_seconds": 20}
    )
    assert body["state"] == "complete" and time.monotonic() - began < 1.0


def test_a_page_short_of_the_end_never_says_complete(worker: Worker) -> None:
    # Regression: a finished ticket with more lines than one page said `complete` on the
    # first page, so a client polling until `complete` silently lost the rest.
    body = "seq 1 25000"
    worker.call("PUT", "/v1/scripts/many", {"project": "web", "body": body, "wait_seconds": 20})
    pages = worker.pages("many")
    texts = [text for page in pages for text in lines(page)]
    assert texts == [str(n) for n in range(1, 25001)]
    assert [page["state"] for page in pages] == ["running", "running", "complete"]
    assert pages[0]["exit_code"] is None and pages[-1]["exit_code"] == 0
    assert len(pages[0]["logs"]) == 10_000


def _client(worker: Worker) -> Client:
    pin = certificate_prints(worker.home / "worker.crt").sha256
    home = worker.home
    return Client(
        Profile(f"https://127.0.0.1:{worker.port}", pin, home / "client.crt", home / "client.key")
    )


def test_the_client_library_follows_every_line_of_many_pages(worker: Worker) -> None:
    # follow() asks for the next page on its second connection before parsing this one.
    client = _client(worker)
    try:
        client.start("pages", {"project": "web", "body": "seq 1 35000; echo end >&2"})
        got: list[tuple[int, str, str]] = []
        last = client.follow(
            "pages", lambda line: got.append((line["seq"], line["source"], line["text"]))
        )
    finally:
        client.close()
    assert [seq for seq, _, _ in got] == list(range(len(got)))  # none lost, none twice
    assert [text for _, source, text in got if source == "stdout"] == [
        str(n) for n in range(1, 35001)
    ]
    assert ("stderr", "end") in [(source, text) for _, source, text in got]
    assert (last["state"], last["exit_code"], last["next_seq"]) == ("complete", 0, len(got))


def test_the_client_reconnects_once_after_the_worker_restarted(worker: Worker) -> None:
    client = _client(worker)
    try:
        assert client.checked("GET", "/v1/health")["running"] == 0
        worker.stop()
        worker.start()  # the kept-alive connection is gone; the next call makes a new one
        assert client.checked("GET", "/v1/health")["running"] == 0
        worker.stop()
        with pytest.raises(ClientError, match="cannot reach the worker"):
            client.checked("GET", "/v1/health")
    finally:
        client.close()
        worker.start()


def _wait_line(worker: Worker, ticket: str, text: str, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if text in lines(worker.call("GET", f"/v1/scripts/{ticket}?wait=1")[1]):
            return
        time.sleep(0.1)
    raise AssertionError(f"ticket {ticket} never printed {text!r}")


def _wait_state(worker: Worker, ticket: str, state: str, seconds: float = 15) -> dict[str, object]:
    deadline = time.monotonic() + seconds
    while True:
        _, body = worker.call("GET", f"/v1/scripts/{ticket}?wait=1")
        if body["state"] == state or time.monotonic() > deadline:
            return body


def test_a_full_isolation_mutex_queues_the_second_script_and_says_for_whom(
    worker: Worker,
) -> None:
    first = {"project": "web", "body": "echo one; sleep 2", "isolation": "full", "mutex": "m"}
    second = {"project": "web", "body": "echo two", "isolation": "full", "mutex": "m"}
    worker.call("PUT", "/v1/scripts/mx-1", first)
    _wait_state(worker, "mx-1", "running")
    worker.call("PUT", "/v1/scripts/mx-2", second)
    waiting = worker.call("GET", "/v1/scripts/mx-2")[1]
    assert waiting["state"] == "pending"
    assert any("mx-1" in text for text in lines(waiting, "debug")), waiting
    done = _wait_state(worker, "mx-2", "complete")
    first_done = worker.call("GET", "/v1/scripts/mx-1")[1]
    assert first_done["state"] == "complete" and lines(done) == ["two"]


def test_a_mutex_acquire_timeout_ends_the_waiting_script_with_minus_44(worker: Worker) -> None:
    hold = {"project": "web", "body": "sleep 10", "isolation": "full", "mutex": "t"}
    worker.call("PUT", "/v1/scripts/to-1", hold)
    _wait_state(worker, "to-1", "running")
    waiter = dict(hold, body="echo never", acquire_timeout=1)
    worker.call("PUT", "/v1/scripts/to-2", waiter)
    body = _wait_state(worker, "to-2", "complete")
    assert body["exit_code"] == -44 and lines(body) == []
    worker.call("POST", "/v1/scripts/to-1/cancel")


def test_the_policys_per_project_concurrency_queues_the_rest(worker: Worker) -> None:
    # project web's policy (tests/e2e/daemon.py) leaves concurrency at the default of 4
    for n in range(5):
        worker.call("PUT", f"/v1/scripts/cc-{n}", {"project": "web", "body": "sleep 3"})
    time.sleep(1)
    states = [worker.call("GET", f"/v1/scripts/cc-{n}")[1]["state"] for n in range(5)]
    assert states.count("running") == 4 and states.count("pending") == 1, states
    health = worker.call("GET", "/v1/health")[1]
    assert (health["running"], health["queued"]) == (4, 1)
    last = _wait_state(worker, f"cc-{states.index('pending')}", "complete", 20)
    assert last["exit_code"] == 0


@pytest.fixture
def two_slots(tmp_path: Path) -> Iterator[Worker]:
    yield from _worker(tmp_path, sandbox="max_concurrent = 2")


def test_the_global_limit_queues_scripts_and_says_why(two_slots: Worker) -> None:
    for n in range(3):
        two_slots.call("PUT", f"/v1/scripts/g-{n}", {"project": "web", "body": "sleep 2"})
    time.sleep(1)
    states = [two_slots.call("GET", f"/v1/scripts/g-{n}")[1]["state"] for n in range(3)]
    assert states == ["running", "running", "pending"], states
    waiting = _wait_state(two_slots, "g-2", "complete", 20)
    assert "waiting: all 2 script slots of this worker are busy" in lines(waiting, "debug")
    assert waiting["exit_code"] == 0


def test_a_configuration_it_cannot_use_stops_it_with_exit_2(worker: Worker) -> None:
    config = worker.home / "sandworker.toml"
    bad = worker.home / "bad.toml"
    bad.write_text(config.read_text().replace("[server]", '[server]\nmax_connections = "many"'))
    refused = _serve(bad)
    assert refused.returncode == 2 and f"{bad}:3 server.max_connections:" in refused.stderr
    taken = _serve(config)  # the running worker holds the port
    assert taken.returncode == 2 and "cannot start" in taken.stderr, taken.stderr
    assert "address already in use" in taken.stderr.lower()


def _serve(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SANDWORKER, "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_requests_are_logged_only_with_verbose(worker: Worker) -> None:
    worker.call("GET", "/v1/health")
    assert "GET /v1/health" not in worker.log and "Starting factory" not in worker.log
    worker.stop()
    worker.start("--verbose")
    worker.call("GET", "/v1/health")
    deadline = time.monotonic() + 5
    while '"GET /v1/health HTTP/1.1" 200' not in worker.log and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "DEBUG sandworker.access" in worker.log, worker.log
