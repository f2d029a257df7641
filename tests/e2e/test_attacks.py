"""Attacks on the real daemon's listener, and what the audit log says of them (root only).

Every test talks to a real `sandworker serve` over real TLS sockets: slow and
silent clients, too many connections, oversized and chunked bodies, malformed
JSON, resumed sessions after a trust removal, path tricks, and clients that
the pin refuses.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandworker.daemon.certs import certificate_prints, write_pair
from sandworker.daemon.pinclient import client_context
from sandworker.daemon.trust import TrustStore
from tests.e2e.daemon import Worker, _worker

pytestmark = pytest.mark.root

DEADLINE = 3  # the handshake and header timeouts of this module's daemon, in seconds


@pytest.fixture
def strict(tmp_path: Path) -> Iterator[Worker]:
    """A daemon with short deadlines, a small body limit and a cap of 6 connections."""
    yield from _worker(
        tmp_path,
        server=f'handshake_timeout = "{DEADLINE}s"\nheader_timeout = "{DEADLINE}s"\n'
        'max_body = "4KiB"\nmax_connections = 6',
    )


def tls(worker: Worker, client: str = "client") -> ssl.SSLSocket:
    pin = certificate_prints(worker.home / "worker.crt").sha256
    home = worker.home
    context = client_context(home / f"{client}.crt", home / f"{client}.key", pin)
    raw = socket.create_connection(("127.0.0.1", worker.port), timeout=30)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def exchange(sock: ssl.SSLSocket, data: bytes) -> bytes:
    sock.sendall(data)
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def healthy(worker: Worker) -> bool:
    return worker.call("GET", "/v1/health")[0] == 200


def closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the peer closed `sock` (reading nothing); fails after `seconds`."""
    start = time.monotonic()
    sock.settimeout(seconds)
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(1) == b""
    return time.monotonic() - start


def test_a_silent_connection_is_cut_at_the_handshake_deadline(strict: Worker) -> None:
    with socket.create_connection(("127.0.0.1", strict.port)) as silent:
        assert healthy(strict)  # others are served meanwhile
        waited = closed_within(silent, DEADLINE * 4)
    assert DEADLINE - 0.5 <= waited <= DEADLINE * 2 + 1, waited


def test_headers_at_one_byte_per_second_are_cut_at_the_total_deadline(strict: Worker) -> None:
    sock = tls(strict)
    cut = threading.Event()
    start = time.monotonic()

    def drip() -> None:
        try:
            for byte in b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 60:
                sock.send(bytes([byte]))
                time.sleep(1)
        except OSError:
            cut.set()

    thread = threading.Thread(target=drip)
    thread.start()
    assert healthy(strict)  # a legitimate client is served while the drip goes on
    thread.join(DEADLINE * 4 + 5)
    sock.close()
    assert cut.is_set() and time.monotonic() - start <= DEADLINE * 2 + 3


def test_connections_beyond_the_cap_are_closed_at_accept_over_tls(strict: Worker) -> None:
    held = [socket.create_connection(("127.0.0.1", strict.port)) for _ in range(6)]
    try:
        time.sleep(0.3)
        extra = socket.create_connection(("127.0.0.1", strict.port))
        assert closed_within(extra, 2) < 1.5  # refused at once, not at a deadline
        extra.close()
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    assert healthy(strict)  # the freed slots serve again


def test_oversized_and_chunked_bodies_are_refused_before_they_are_read(strict: Worker) -> None:
    big = b"x" * 8192
    head = b"PUT /v1/scripts/big HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
    answer = exchange(tls(strict), head + b"content-length: 8192\r\n\r\n" + big)
    assert answer.startswith(b"HTTP/1.1 413 ") and b"application/problem+json" in answer
    assert b"at most 4096" in answer
    answer = exchange(
        tls(strict), head + b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 411 ") and b"Content-Length" in answer
    assert healthy(strict)


@pytest.mark.parametrize("body", [b"{", b"[]", b'{"project": 1, "body": "x"}', b"\xff\xfe"])
def test_malformed_json_gets_400_problem_json(worker: Worker, body: bytes) -> None:
    pin = certificate_prints(worker.home / "worker.crt").sha256
    context = client_context(worker.home / "client.crt", worker.home / "client.key", pin)
    conn = http.client.HTTPSConnection("127.0.0.1", worker.port, context=context, timeout=30)
    conn.request("PUT", "/v1/scripts/bad-json", body=body)
    response = conn.getresponse()
    assert response.status == 400
    assert response.getheader("content-type") == "application/problem+json"
    problem = json.loads(response.read())
    conn.close()
    assert problem["status"] == 400 and problem["detail"]
    assert worker.call("GET", "/v1/scripts/bad-json")[0] == 404  # nothing was accepted


@pytest.mark.parametrize(
    "path",
    ["/v1/scripts/../health", "/v1/scripts/%2e%2e", "/v1/scripts/a%01b", "/v1/scripts/a%20b"],
)
def test_path_tricks_reach_no_ticket(worker: Worker, path: str) -> None:
    argv = ["curl", "-sS", "-k", "--path-as-is", "-X", "PUT", "-w", "\n%{http_code}"]
    argv += ["--cert", str(worker.home / "client.crt"), "--key", str(worker.home / "client.key")]
    argv += ["--data-binary", '{"project": "web", "body": "echo RAN"}']
    argv += ["-H", "content-type: application/json", f"https://127.0.0.1:{worker.port}{path}"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    code = int(result.stdout.rpartition("\n")[2] or 0)
    assert code in (400, 404, 405), result
    assert not any(e["event"] == "script.start" for e in worker.audit())


def test_a_resumed_session_after_trust_removal_gets_nothing(worker: Worker, tmp_path: Path) -> None:
    home = worker.home
    write_pair(home / "temp.crt", home / "temp.key", "temporary")
    store = TrustStore(home / "trust.toml")
    store.add(certificate_prints(home / "temp.crt"))
    session = tmp_path / "session.pem"
    base = ["openssl", "s_client", "-connect", f"127.0.0.1:{worker.port}", "-tls1_2", "-ign_eof"]
    base += ["-cert", str(home / "temp.crt"), "-key", str(home / "temp.key")]
    ask = b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

    def s_client(*extra: str) -> str:
        done = subprocess.run(
            [*base, *extra], input=ask, capture_output=True, timeout=30, check=False
        )
        return (done.stdout + done.stderr).decode(errors="replace")

    first = s_client("-sess_out", str(session))
    assert "HTTP/1.1 200 OK" in first
    # a kept-alive connection opened while trusted: its next request is re-checked
    keep = tls(worker, "temp")
    keep.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert keep.recv(65536).startswith(b"HTTP/1.1 200 ")
    store.remove(certificate_prints(home / "temp.crt"))
    again = s_client("-sess_in", str(session))
    assert "HTTP/1.1 200 OK" not in again and "Reused" not in again
    assert exchange(keep, b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n").startswith(
        b"HTTP/1.1 403 "
    )


def test_refused_clients_are_in_the_audit_and_the_log(worker: Worker) -> None:
    stranger = certificate_prints(worker.home / "stranger.crt").sha256
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        exchange(tls(worker, "stranger"), b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.check_hostname, bare.verify_mode = False, ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", worker.port), timeout=30)
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        exchange(bare.wrap_socket(raw), b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.5)
    refused = [e for e in worker.audit() if e["event"] == "client.refused"]
    assert any(e["client"] == stranger and e["peer"].startswith("127.0.0.1:") for e in refused)
    assert any(e["client"] is None and "certificate" in e["reason"] for e in refused), refused
    assert f"refused client certificate SHA-256 {stranger}" in worker.log
