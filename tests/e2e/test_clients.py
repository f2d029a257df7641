"""The daemon driven by clients nobody here wrote (curl, openssl s_client), and abuse."""

from __future__ import annotations

import base64
import hashlib
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sandworker.daemon.certs import certificate_prints, write_pair
from sandworker.daemon.trust import TrustStore
from tests.e2e.daemon import Worker, lines

pytestmark = pytest.mark.root


def spki_pin(cert: Path) -> str:
    """curl pins the public key: sha256//BASE64 of the SubjectPublicKeyInfo."""
    der = (
        x509.load_pem_x509_certificate(cert.read_bytes())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return "sha256//" + base64.b64encode(hashlib.sha256(der).digest()).decode()


def curl(
    worker: Worker,
    method: str,
    path: str,
    body: object = None,
    *,
    client: str = "client",
    pin: Path | None = None,
) -> tuple[int, dict[str, object]]:
    home = worker.home
    argv = [
        "curl",
        "-sS",
        "-k",
        "--max-time",
        "60",
        "-X",
        method,
        "--cert",
        str(home / f"{client}.crt"),
        "--key",
        str(home / f"{client}.key"),
        "--pinnedpubkey",
        spki_pin(pin or home / "worker.crt"),
        "-w",
        "\n%{http_code}",
        f"https://127.0.0.1:{worker.port}{path}",
    ]
    if body is not None:
        argv += ["-H", "content-type: application/json", "--data-binary", json.dumps(body)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)
    if result.returncode != 0:
        return -result.returncode, {"curl": result.stderr}
    text, _, code = result.stdout.rpartition("\n")
    return int(code), json.loads(text)


def test_curl_full_lifecycle(worker: Worker) -> None:
    code, body = curl(
        worker,
        "PUT",
        "/v1/scripts/c-1",
        {"project": "web", "body": "echo from-curl", "wait_seconds": 20},
    )
    assert code == 201 and lines(body) == ["from-curl"] and body["exit_code"] == 0  # type: ignore[arg-type]
    after = int(body["next_seq"]) - 1  # type: ignore[call-overload]
    assert curl(worker, "GET", f"/v1/scripts/c-1?after={after}")[1]["logs"] == []
    assert curl(worker, "DELETE", "/v1/scripts/c-1")[0] == 200


def test_curl_long_poll_cancel_and_timeout(worker: Worker) -> None:
    start = {"project": "web", "body": "sleep 1; echo woke; sleep 60"}
    assert curl(worker, "PUT", "/v1/scripts/c-2", start)[0] == 201
    _, first = curl(worker, "GET", "/v1/scripts/c-2")
    after = int(first["next_seq"]) - 1  # type: ignore[call-overload]
    began = time.monotonic()
    _, woke = curl(worker, "GET", f"/v1/scripts/c-2?after={after}&wait=20")
    assert lines(woke) == ["woke"] and time.monotonic() - began < 10  # type: ignore[arg-type]
    code, cancelled = curl(worker, "POST", "/v1/scripts/c-2/cancel")
    assert code == 200
    after = int(cancelled["next_seq"]) - 1  # type: ignore[call-overload]
    while cancelled["state"] != "complete" and time.monotonic() - began < 30:
        _, cancelled = curl(worker, "GET", f"/v1/scripts/c-2?after={after}&wait=5")
    assert cancelled["exit_code"] == -43
    slow = {"project": "web", "body": "sleep 30", "timeout": 1, "wait_seconds": 20}
    _, timed_out = curl(worker, "PUT", "/v1/scripts/c-3", slow)
    assert (timed_out["state"], timed_out["exit_code"]) == ("complete", -44)


def test_curl_refuses_a_worker_with_another_key(worker: Worker, tmp_path: Path) -> None:
    write_pair(tmp_path / "other.crt", tmp_path / "other.key", "impostor")
    code, body = curl(worker, "GET", "/v1/health", pin=tmp_path / "other.crt")
    assert code == -90 and "pinned public key" in str(body["curl"])  # curl exit 90: pin mismatch


def test_openssl_s_client_speaks_http_over_the_pinned_session(worker: Worker) -> None:
    home = worker.home
    request = b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    result = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{worker.port}",
            "-quiet",
            "-cert",
            str(home / "client.crt"),
            "-key",
            str(home / "client.key"),
        ],
        input=request,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert b"HTTP/1.1 200 OK" in result.stdout and b'"status": "ok"' in result.stdout
    tls11 = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{worker.port}",
            "-tls1_1",
            "-cert",
            str(home / "client.crt"),
            "-key",
            str(home / "client.key"),
        ],
        input=b"",
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert tls11.returncode != 0


def test_project_limited_client_gets_403_elsewhere(worker: Worker) -> None:
    home = worker.home
    write_pair(home / "webonly.crt", home / "webonly.key", "web only")
    TrustStore(home / "trust.toml").add(certificate_prints(home / "webonly.crt"), ["web"])
    assert (
        curl(
            worker, "PUT", "/v1/scripts/ok-1", {"project": "web", "body": "true"}, client="webonly"
        )[0]
        == 201
    )
    code, problem = curl(
        worker, "PUT", "/v1/scripts/no-1", {"project": "db", "body": "true"}, client="webonly"
    )
    assert (
        code == 403 and problem["detail"] == "this client certificate is not trusted for project db"
    )


def test_trust_removed_applies_to_the_next_connection(worker: Worker) -> None:
    home = worker.home
    write_pair(home / "temp.crt", home / "temp.key", "temporary")
    store = TrustStore(home / "trust.toml")
    store.add(certificate_prints(home / "temp.crt"))
    assert curl(worker, "GET", "/v1/health", client="temp")[0] == 200
    store.remove(certificate_prints(home / "temp.crt"))
    code, _ = curl(worker, "GET", "/v1/health", client="temp")
    assert code < 0  # the handshake fails: no session was resumed


@pytest.mark.parametrize("ticket", ["..", "a%2Fb", "x%00y", "%C3%A9", "a" * 129])
def test_hostile_ticket_ids_are_refused(worker: Worker, ticket: str) -> None:
    code, problem = curl(worker, "PUT", f"/v1/scripts/{ticket}", {"project": "web", "body": "true"})
    assert code in (400, 404), problem


def test_forged_protocol_text_stays_the_scripts_own_output(worker: Worker) -> None:
    forged = '{"seq": 99, "source": "debug", "text": "state: complete"}'
    code, body = curl(
        worker,
        "PUT",
        "/v1/scripts/forge",
        {
            "project": "web",
            "wait_seconds": 20,
            "body": f"echo '{forged}'; printf 'HTTP/1.1 200 OK\\r\\n\\r\\n';"
            " echo '##octopus[x]' >&2",
        },
    )
    assert code == 201
    stdout = [line for line in body["logs"] if line["source"] == "stdout"]  # type: ignore[index,union-attr]
    assert stdout[0]["text"] == forged and stdout[0]["seq"] != 99
    assert all(line["source"] in ("stdout", "stderr", "debug") for line in body["logs"])  # type: ignore[union-attr]
    assert body["state"] == "complete" and body["exit_code"] == 0


def test_daemon_survives_a_signal_storm_of_bad_requests(worker: Worker) -> None:
    for body in (b"{", b"[]", b'{"project": 1}', b"\xff" * 10):
        subprocess.run(
            [
                "curl",
                "-sS",
                "-k",
                "-X",
                "PUT",
                "--cert",
                str(worker.home / "client.crt"),
                "--key",
                str(worker.home / "client.key"),
                "--data-binary",
                body,
                f"https://127.0.0.1:{worker.port}/v1/scripts/bad",
            ],
            capture_output=True,
            timeout=30,
            check=False,
        )
    assert curl(worker, "GET", "/v1/health")[0] == 200
    assert worker.process is not None and worker.process.poll() is None
    assert signal.SIGTERM  # the fixture stops it gracefully


@pytest.mark.parametrize("project", ["../web", "web/..", "we\nb", "web\u0000", "", "a" * 300])
def test_hostile_project_ids_are_refused(worker: Worker, project: str) -> None:
    code, problem = curl(worker, "PUT", "/v1/scripts/hp", {"project": project, "body": "true"})
    assert code == 400 and "project" in str(problem["detail"]), problem
    assert curl(worker, "GET", "/v1/scripts/hp")[0] == 404  # nothing was accepted
