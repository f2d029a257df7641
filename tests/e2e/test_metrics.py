"""The metrics listener of a real daemon: a live scrape passes `promtool check metrics`,
counts what happened, carries no unbounded label, and serves /metrics only."""

from __future__ import annotations

import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.daemon import Worker, _worker

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


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], capture_output=True, check=True, timeout=60)


def _ca_and_client(where: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA (made by openssl, not by sandworker) and a client certificate it signed."""
    ca_key, ca, key, csr, crt = (where / f"{name}{s}" for s in
                                 ("-ca.key", "-ca.crt", ".key", ".csr", ".crt"))  # fmt: skip
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", ca_key, "-out", ca, "-subj", f"/CN={name} CA", "-days", "2")  # fmt: skip
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", key, "-out", csr, "-subj", f"/CN={name} scraper")  # fmt: skip
    _openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
             "-out", crt, "-days", "2")  # fmt: skip
    return ca, crt, key


def _curl(url: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", "-k", *map(str, args), url],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_metrics_over_tls_need_a_client_certificate_of_the_ca(tmp_path: Path) -> None:
    ca, crt, key = _ca_and_client(tmp_path, "ok")
    _, other_crt, other_key = _ca_and_client(tmp_path, "other")
    tls = (
        '[metrics.tls_server_config]\ncert_file = "{home}/worker.crt"\n'
        'key_file = "{home}/worker.key"\n'
        f'client_ca_file = "{ca}"\nmin_version = "TLS13"\n'
    )
    home = tmp_path / "home"
    for worker in _worker(tmp_path, metrics=tls.replace("{home}", str(home))):
        url = f"https://127.0.0.1:{worker.metrics_port}/metrics"
        got = _curl(url, "--cert", crt, "--key", key)
        assert got.returncode == 0 and "sandworker_build_info" in got.stdout, got
        assert _curl(url).returncode != 0  # no client certificate
        assert _curl(url, "--cert", other_crt, "--key", other_key).returncode != 0  # other CA
        old = _curl(url, "--cert", crt, "--key", key, "--tls-max", "1.2")
        assert old.returncode != 0  # below min_version
