"""A real `sandworker serve` over real mutual TLS: lifecycle, pinning and crash recovery."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandworker.daemon.certs import certificate_prints, write_pair
from sandworker.daemon.pinning import client_context
from sandworker.daemon.trust import TrustStore

pytestmark = pytest.mark.root
SANDWORKER = str(Path(sys.executable).with_name("sandworker"))


@dataclass
class Worker:
    home: Path
    port: int
    process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [SANDWORKER, "serve", "--config", str(self.home / "sandworker.toml")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if "listening on" in line:
                return
        raise AssertionError(f"daemon did not start: exit {self.process.wait()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            self.process.send_signal(sig)
            self.process.wait(30)
            self.process = None

    def call(
        self, method: str, path: str, body: object = None, *, client: str = "client"
    ) -> tuple[int, Any]:
        pin = certificate_prints(self.home / "worker.crt").sha256
        context = client_context(self.home / f"{client}.crt", self.home / f"{client}.key", pin)
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=context, timeout=60)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data, headers={"content-type": "application/json"})
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Worker]:
    home = tmp_path / "home"
    home.mkdir()
    write_pair(home / "worker.crt", home / "worker.key", "worker")
    write_pair(home / "client.crt", home / "client.key", "client")
    write_pair(home / "stranger.crt", home / "stranger.key", "stranger")
    TrustStore(home / "trust.toml").add(certificate_prints(home / "client.crt"))
    (home / "policies").mkdir()
    (home / "policies" / "p.toml").write_text(
        'version = 1\n[[project]]\nmatch = "web"\ntimeout = "20s"\nkill_grace = "1s"\n'
    )
    port = _free_port()
    (home / "sandworker.toml").write_text(f"""
[server]
listen = "127.0.0.1:{port}"
[tls]
certificate = "{home}/worker.crt"
key = "{home}/worker.key"
trust = "{home}/trust.toml"
[state]
directory = "{tmp_path}/state"
[sandbox]
policy_dir = "{home}/policies"
uid_min = 430000
uid_max = 430999
""")
    w = Worker(home, port)
    w.start()
    try:
        yield w
    finally:
        w.stop(signal.SIGTERM)  # graceful: running scripts are killed and recorded


def lines(status: dict[str, Any], source: str = "stdout") -> list[str]:
    return [line["text"] for line in status["logs"] if line["source"] == source]


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


def test_long_poll_returns_when_output_arrives(worker: Worker) -> None:
    worker.call("PUT", "/v1/scripts/lp", {"project": "web", "body": "sleep 1; echo late; sleep 1"})
    began = time.monotonic()
    _, body = worker.call("GET", "/v1/scripts/lp?after=-1&wait=15")
    waited = time.monotonic() - began
    deadline = time.monotonic() + 10
    while "late" not in lines(body) and time.monotonic() < deadline:
        _, body = worker.call("GET", "/v1/scripts/lp?after=-1&wait=15")
    assert "late" in lines(body) and waited < 10


def test_cancel_records_minus_43_and_unknown_ticket_minus_45(worker: Worker) -> None:
    worker.call("PUT", "/v1/scripts/c1", {"project": "web", "body": "echo up; sleep 60"})
    time.sleep(0.5)
    worker.call("POST", "/v1/scripts/c1/cancel")
    _, body = worker.call("GET", "/v1/scripts/c1?wait=10")
    deadline = time.monotonic() + 10
    while body["state"] != "complete" and time.monotonic() < deadline:
        _, body = worker.call("GET", "/v1/scripts/c1?wait=5")
    assert (body["state"], body["exit_code"]) == ("complete", -43)
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


def test_kill_minus_9_then_restart_answers_minus_46_with_the_output(worker: Worker) -> None:
    worker.call("PUT", "/v1/scripts/crash", {"project": "web", "body": "echo before; sleep 30"})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        _, body = worker.call("GET", "/v1/scripts/crash?wait=2")
        if "before" in lines(body):
            break
    worker.stop(signal.SIGKILL)
    time.sleep(1.0)  # the zygote sees its supervisor gone and kills the run
    worker.start()
    _, body = worker.call("GET", "/v1/scripts/crash")
    assert (body["state"], body["exit_code"]) == ("complete", -46)
    assert "before" in lines(body)
    assert any("result lost" in text for text in lines(body, "debug"))


def test_health_and_capabilities(worker: Worker) -> None:
    _, health = worker.call("GET", "/v1/health")
    assert health["status"] == "ok" and health["builtin_worker"] is True
    _, caps = worker.call("GET", "/v1/capabilities")
    assert "bash" in caps["syntaxes"] and caps["protocol"] == 1


def test_no_script_process_is_left(worker: Worker) -> None:
    worker.call(
        "PUT",
        "/v1/scripts/bg",
        {"project": "web", "body": "sleep 100 & echo ok", "wait_seconds": 20},
    )
    time.sleep(0.5)
    leftovers = subprocess.run(["pgrep", "-u", "430000", "sleep"], capture_output=True, check=False)
    assert leftovers.stdout == b"", leftovers
    assert os.path.exists("/proc/self")


def test_stop_kills_running_scripts_and_records_them(worker: Worker, tmp_path: Path) -> None:
    worker.call("PUT", "/v1/scripts/long", {"project": "web", "body": "echo up; sleep 60"})
    time.sleep(1.0)
    worker.stop(signal.SIGTERM)
    assert not list(Path("/sys/fs/cgroup/pids").glob("sandworker-*"))
    worker.start()
    _, body = worker.call("GET", "/v1/scripts/long")
    assert (body["state"], body["exit_code"]) == ("complete", -43)
    assert any("the worker stopped" in text for text in lines(body, "debug"))
