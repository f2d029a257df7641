"""Three real daemons on loopback: a proxy and two external workers, over pinned mTLS.

Each has its own home (certificates, trust), state directory and uid range. The
workers trust the proxy's certificate; the test client trusts only the proxy.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandworker.daemon.certs import certificate_prints
from sandworker.daemon.trust import TrustStore
from tests.e2e.archives import make_zip
from tests.e2e.daemon import SANDWORKER, Worker, _worker, lines
from tests.e2e.test_calamari import _download

pytestmark = pytest.mark.root

CHECKS = "check_interval = 1\ncheck_timeout = 2\nunhealthy_after = 1\nhealthy_after = 1"


@dataclass
class Fleet:
    proxy: Worker
    workers: list[Worker]

    def pool(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [SANDWORKER, *args, "--home", str(self.proxy.home)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)

    def add(self, worker: Worker, pool: str = "default", thumbprint: str = "") -> None:
        pin = thumbprint or certificate_prints(worker.home / "worker.crt").sha256
        address = f"https://127.0.0.1:{worker.port}"
        added = self.pool("pool", "add", pool, "--address", address, "--thumbprint", pin)
        assert added.returncode == 0, added.stderr

    def health(self) -> dict[str, dict[str, Any]]:
        doc = self.proxy.call("GET", "/v1/health")[1]
        return {w["address"]: w for w in doc["external_workers"]}

    def wait_health(self, *want: tuple[Worker, bool], seconds: float = 15) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            seen = self.health()
            if all(seen.get(address(w), {}).get("healthy") is ok for w, ok in want):
                return
            time.sleep(0.2)
        raise AssertionError(f"health never became {want}: {self.health()}")


def address(worker: Worker) -> str:
    return f"https://127.0.0.1:{worker.port}"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with contextlib.ExitStack() as stack:

        def start(name: str, base: int, **extra: Any) -> Worker:
            (tmp_path / name).mkdir()
            made = contextlib.contextmanager(_worker)(
                tmp_path / name, uids=(base, base + 999), **extra
            )
            return stack.enter_context(made)

        workers = [start("w1", 431000), start("w2", 432000)]
        proxy = start("proxy", 433000, external=CHECKS + "\nlost_after = 6")
        for worker in workers:  # the workers trust the proxy's own certificate
            TrustStore(worker.home / "trust.toml").add(
                certificate_prints(proxy.home / "worker.crt")
            )
        yield Fleet(proxy, workers)


def run(proxy: Worker, ticket: str, body: str, **extra: Any) -> dict[str, Any]:
    start = {"project": "web", "body": body, "wait_seconds": 20, **extra}
    status, doc = proxy.call("PUT", f"/v1/scripts/{ticket}", start)
    assert status == 201, doc
    return doc


def begun(fleet: Fleet, ticket: str, body: str) -> Worker:
    """The first worker, in rotation, running `body` (which prints "begun") via the proxy."""
    w1 = fleet.workers[0]
    fleet.add(w1)
    fleet.wait_health((w1, True))
    start = {"project": "web", "body": body}
    assert fleet.proxy.call("PUT", f"/v1/scripts/{ticket}", start)[0] == 201
    deadline = time.monotonic() + 10
    while "begun" not in lines(fleet.proxy.call("GET", f"/v1/scripts/{ticket}?wait=1")[1]):
        assert time.monotonic() < deadline
    return w1


def held_by(worker: Worker, ticket: str) -> bool:
    return worker.call("GET", f"/v1/scripts/{ticket}")[0] == 200


def test_scripts_go_to_both_workers_and_the_proxy_runs_none(fleet: Fleet) -> None:
    for worker in fleet.workers:
        fleet.add(worker)
    fleet.wait_health(*[(w, True) for w in fleet.workers])
    health = fleet.proxy.call("GET", "/v1/health")[1]
    assert health["builtin_worker"] is False
    home = fleet.proxy.home
    doctor = subprocess.run(
        [SANDWORKER, "doctor", "--config", str(home / "sandworker.toml"),
         "--policy-dir", str(home / "policies")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert "built-in worker: OFF" in doctor.stdout and "pools default (2)" in doctor.stdout
    for n in range(6):
        done = run(fleet.proxy, f"r-{n}", f"echo run {n}; echo err >&2")
        assert (done["state"], done["exit_code"]) == ("complete", 0), done
        assert lines(done) == [f"run {n}"] and lines(done, "stderr") == ["err"]
    placed = [[held_by(w, f"r-{n}") for w in fleet.workers] for n in range(6)]
    assert all(sum(row) == 1 for row in placed), placed  # each ticket at exactly one worker
    assert all(any(row[i] for row in placed) for i in range(2)), placed  # both got some
    proxy_state = fleet.proxy.state / "sandbox"
    assert not (proxy_state / "accounts.json").exists()  # no project account was ever made
    assert not list(Path("/sys/fs/cgroup").glob("sandworker-*"))  # nothing left running


def test_a_killed_worker_leaves_rotation_and_comes_back(fleet: Fleet) -> None:
    w1, w2 = fleet.workers
    for worker in fleet.workers:
        fleet.add(worker)
    fleet.wait_health((w1, True), (w2, True))
    w1.stop(signal.SIGKILL)
    fleet.wait_health((w1, False), (w2, True))
    assert "cannot reach the worker" in fleet.health()[address(w1)]["error"]
    for n in range(3):
        run(fleet.proxy, f"k-{n}", "echo on")
        assert held_by(w2, f"k-{n}")
    w1.start()
    fleet.wait_health((w1, True), (w2, True))
    sent = [run(fleet.proxy, f"b-{n}", "true") for n in range(4)]
    assert all(doc["exit_code"] == 0 for doc in sent)
    assert any(held_by(w1, f"b-{n}") for n in range(4))  # back in rotation
    listed = fleet.pool("pool", "list", "--state-dir", str(fleet.proxy.state))
    assert listed.returncode == 0 and listed.stdout.count("healthy") == 2, listed.stdout
    changes = [
        (e["healthy"], bool(e["error"]))
        for e in fleet.proxy.audit()
        if e["event"] == "worker.health" and e["worker"] == address(w1)
    ]
    assert changes == [(True, False), (False, True), (True, False)], changes  # in, out, back


def test_a_start_may_name_a_pool(fleet: Fleet) -> None:
    w1, w2 = fleet.workers
    fleet.add(w1)
    fleet.add(w2, pool="blue")
    fleet.wait_health((w1, True), (w2, True))
    for n in range(3):
        run(fleet.proxy, f"blue-{n}", "true", pool="blue")
        assert held_by(w2, f"blue-{n}") and not held_by(w1, f"blue-{n}")
    status, problem = fleet.proxy.call(
        "PUT", "/v1/scripts/nowhere", {"project": "web", "body": "true", "pool": "green"}
    )
    assert status == 400 and "configured pools: blue, default" in problem["detail"], problem


def test_no_healthy_worker_is_503_naming_each(fleet: Fleet) -> None:
    w1 = fleet.workers[0]
    fleet.add(w1)
    fleet.wait_health((w1, True))
    w1.stop(signal.SIGKILL)
    fleet.wait_health((w1, False))
    status, problem = fleet.proxy.call(
        "PUT", "/v1/scripts/none", {"project": "web", "body": "true"}
    )
    assert status == 503 and address(w1) in problem["detail"], problem
    assert fleet.proxy.call("GET", "/v1/scripts/none")[0] == 404  # nothing was accepted
    w1.start()


def test_a_worker_lost_mid_script_is_reported_then_minus_46(fleet: Fleet) -> None:
    w1 = begun(fleet, "lost", "echo begun; sleep 60")
    w1.stop(signal.SIGKILL)
    began = time.monotonic()
    body = fleet.proxy.call("GET", "/v1/scripts/lost?wait=1")[1]
    while "unreachable since" not in body["message"] and time.monotonic() - began < 10:
        body = fleet.proxy.call("GET", "/v1/scripts/lost?wait=1")[1]
    assert body["state"] == "running" and lines(body) == ["begun"], body  # what arrived stays
    while body["state"] != "complete" and time.monotonic() - began < 30:
        body = fleet.proxy.call("GET", f"/v1/scripts/lost?after={body['next_seq'] - 1}&wait=5")[1]
    _, final = fleet.proxy.call("GET", "/v1/scripts/lost")
    assert (final["state"], final["exit_code"]) == ("complete", -46), final
    assert f"worker {address(w1)} unreachable since" in final["message"]
    assert lines(final) == ["begun"] and 5 < time.monotonic() - began < 30  # lost_after = 6 s
    w1.start()


def test_a_restarted_proxy_follows_its_ticket_to_the_end(fleet: Fleet) -> None:
    w1 = begun(fleet, "long", "echo begun; sleep 3; echo ended; exit 7")
    fleet.proxy.stop(signal.SIGKILL)
    fleet.proxy.start()
    deadline = time.monotonic() + 20
    body = fleet.proxy.call("GET", "/v1/scripts/long")[1]
    while body["state"] != "complete" and time.monotonic() < deadline:
        body = fleet.proxy.call("GET", f"/v1/scripts/long?after={body['next_seq'] - 1}&wait=5")[1]
    _, whole = fleet.proxy.call("GET", "/v1/scripts/long")
    assert (whole["state"], whole["exit_code"]) == ("complete", 7), whole
    assert lines(whole) == ["begun", "ended"]
    _, there = w1.call("GET", "/v1/scripts/long")
    assert [line["seq"] for line in whole["logs"]] == [line["seq"] for line in there["logs"]]
    assert fleet.proxy.call("DELETE", "/v1/scripts/long")[0] == 200
    assert w1.call("GET", "/v1/scripts/long")[1]["state"] == "complete"  # completed there too


def test_a_worker_with_the_wrong_certificate_is_refused(fleet: Fleet) -> None:
    w1, w2 = fleet.workers
    wrong = certificate_prints(w2.home / "worker.crt").sha256
    fleet.add(w1, thumbprint=wrong)
    fleet.wait_health((w1, False))
    error = fleet.health()[address(w1)]["error"]
    actual = certificate_prints(w1.home / "worker.crt").sha256
    assert "thumbprint mismatch" in error and wrong in error and actual in error, error
    assert "refused" in fleet.proxy.log and wrong in fleet.proxy.log
    refused = [e for e in fleet.proxy.audit() if e["event"] == "worker.refused"]
    assert refused and refused[0]["worker"] == address(w1)


def test_reset_brings_the_built_in_worker_back(fleet: Fleet) -> None:
    w1, _ = fleet.workers
    set_one = fleet.pool(
        "external-worker", "--address", address(w1),
        "--thumbprint", certificate_prints(w1.home / "worker.crt").sha1,
    )  # fmt: skip
    assert set_one.returncode == 0, set_one.stderr
    fleet.wait_health((w1, True))
    assert held_by(w1, run(fleet.proxy, "via", "echo there")["ticket"])
    reset = fleet.pool("external-worker", "--reset")
    assert reset.returncode == 0 and "built-in worker runs scripts again" in reset.stdout
    deadline = time.monotonic() + 10
    while fleet.proxy.call("GET", "/v1/health")[1]["builtin_worker"] is False:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    here = run(fleet.proxy, "here", "echo here")
    assert lines(here) == ["here"] and not held_by(w1, "here")
    assert json.loads((fleet.proxy.state / "sandbox" / "accounts.json").read_text())


def test_variables_outputs_and_masking_through_the_proxy(fleet: Fleet) -> None:
    w1 = fleet.workers[0]
    fleet.add(w1)
    fleet.wait_health((w1, True))
    body = (
        'echo "in=$(get_octopusvariable In)"; echo "secret: $(get_octopusvariable Pw)"; '
        "set_octopusvariable Out done; write_warning careful; "
        "printf 'made at the worker' > a.txt; new_octopusartifact a.txt"
    )
    variables = [
        {"name": "In", "value": "v1"},
        {"name": "Pw", "value": "pw-4242", "sensitive": True},
    ]
    doc = run(fleet.proxy, "vars", body, variables=variables)
    assert doc["exit_code"] == 0, doc
    assert lines(doc) == ["in=v1", "secret: ********", "careful"], doc
    assert doc["output_variables"] == {"Out": {"value": "done", "sensitive": False}}
    assert [ln.get("level") for ln in doc["logs"] if ln["text"] == "careful"] == ["warning"]
    proxy_log = (fleet.proxy.state / "tickets" / "tickets" / "vars" / "log.jsonl").read_text()
    assert "pw-4242" not in proxy_log
    assert [(a["name"], a["kept"]) for a in doc["artifacts"]] == [("a.txt", True)]
    assert _download(fleet.proxy, "/v1/scripts/vars/artifacts/a.txt") == (
        200,
        b"made at the worker",
    )
    status, _ = _download(fleet.proxy, "/v1/scripts/vars/artifacts/nope")
    assert status == 404


def test_a_proxy_passes_its_packages_to_the_worker_it_chooses(fleet: Fleet, tmp_path: Path) -> None:
    w1 = fleet.workers[0]
    fleet.add(w1)
    fleet.wait_health((w1, True))
    package = tmp_path / "app.zip"
    package.write_bytes(make_zip([("file", "Deploy.sh", "echo deployed at the worker\n")]))
    status, body = fleet.proxy.upload("app.zip", package)
    assert status == 201, body
    sha = json.loads(body)["sha256"]
    url = "https://example.com/app.zip"
    fetch = json.dumps({"name": "app.zip", "url": url, "sha256": "a" * 64})
    status, body = fleet.proxy.curl("/v1/projects/web/packages", "-X", "POST", "--data-binary",
                                    fetch)  # fmt: skip
    assert status == 501 and "a proxy downloads nothing" in body, body
    for ticket in ("package-1", "package-2"):
        doc = run(fleet.proxy, ticket, "", package="app.zip")
        assert doc["exit_code"] == 0, doc
        assert "deployed at the worker" in lines(doc), doc
    held = json.loads(w1.curl("/v1/projects/web/packages")[1])["packages"]
    assert [(p["name"], p["sha256"]) for p in held] == [("app.zip", sha)]
    uploads = [e for e in w1.audit() if e["event"] == "package.uploaded"]
    assert len(uploads) == 1, uploads  # the second start found it there
    started = [e for e in fleet.proxy.audit() if e["event"] == "script.start"]
    assert {e.get("package_sha256") for e in started} == {sha}, started
    status, doc = fleet.proxy.call("PUT", "/v1/scripts/nope", {"project": "web",
                                                               "package": "nope.zip"})  # fmt: skip
    assert status == 400 and "not in project web's cache at this proxy" in doc["detail"], doc
