"""The HTTP layer against a real Twisted server: routing, problems, limits and deadlines."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

MAX_CONNECTIONS = 8


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.servers.http_echo", str(MAX_CONNECTIONS)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()


def call(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str, dict[str, object]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheader("content-type", ""), json.loads(response.read())
    finally:
        conn.close()


def test_routes_and_json(port: int) -> None:
    assert call(port, "GET", "/v1/health") == (200, "application/json", {"ok": True})
    status, _, body = call(port, "PUT", "/v1/scripts/t-1", b"x" * 100)
    assert (status, body) == (200, {"ticket": "t-1", "received": 100})


@pytest.mark.parametrize(
    ("method", "path", "status", "detail"),
    [
        ("GET", "/", 404, "no such resource '/'; the API lives under /v1/"),
        ("GET", "/v2/health", 404, "no such resource '/v2/health'; the API lives under /v1/"),
        ("GET", "/v1/nothing", 404, "no such resource '/v1/nothing'"),
        ("DELETE", "/v1/health", 405, "/v1/health takes GET"),
        ("GET", "/v1/boom", 500, "the worker failed; see its log"),
        ("GET", "/v1/conflict", 409, "stub conflict"),
    ],
)
def test_errors_are_problem_json(
    port: int, method: str, path: str, status: int, detail: str
) -> None:
    got, content_type, body = call(port, method, path)
    assert (got, content_type) == (status, "application/problem+json")
    assert body["status"] == status and body["detail"] == detail


@pytest.mark.parametrize("expect", [False, True])
def test_oversized_body_gets_413_before_it_is_read(port: int, expect: bool) -> None:
    headers = {"Expect": "100-continue"} if expect else {}
    status, _, body = call(port, "PUT", "/v1/scripts/t", b"x" * 100_000, headers)
    assert status == 413
    assert body["detail"] == "the body is 100000 bytes; this worker accepts at most 4096"


def test_chunked_body_gets_411(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"PUT /v1/scripts/t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n"
        )
        answer = sock.recv(65536).decode()
    assert answer.startswith("HTTP/1.1 411 Length Required")
    assert "chunked request bodies are refused; send Content-Length" in answer


def test_slow_headers_are_cut_at_the_total_deadline_while_others_are_served(port: int) -> None:
    slow = socket.create_connection(("127.0.0.1", port), timeout=10)
    started = time.monotonic()
    try:
        slow.sendall(b"GET /v1/health HTTP/1.1\r\n")
        for _ in range(10):  # one byte every 0.4 s never finishes the headers
            assert call(port, "GET", "/v1/health")[0] == 200
            try:
                slow.sendall(b"X")
            except OSError:
                break
            time.sleep(0.4)
        slow.settimeout(5)
        assert slow.recv(1024) == b""  # closed by the server
    except ConnectionResetError:
        pass
    finally:
        slow.close()
    assert time.monotonic() - started < 4.5


def test_connections_beyond_the_cap_are_refused_and_freed_later(port: int) -> None:
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", port), timeout=5)
        extra.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        with contextlib.suppress(ConnectionResetError):
            assert extra.recv(1024) == b""
        extra.close()
    finally:
        for sock in silent:
            sock.close()
    time.sleep(0.3)
    assert call(port, "GET", "/v1/health")[0] == 200
