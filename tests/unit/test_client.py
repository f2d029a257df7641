"""The client library against a stand-in worker: a real TLS server with scripted answers."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from sandworker.daemon.certs import write_pair
from sandworker.daemon.client import Client, ClientError, Profile


class _Worker(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    pages: ClassVar[dict[str, tuple[int, bytes, dict[str, str]]]] = {}
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        status, body, headers = self.pages[self.path]
        self.send_response(status)
        for name, value in {"content-length": str(len(body)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that dropped a connection it had asked on: not this test's concern


@pytest.fixture
def stand_in(tmp_path: Path) -> Iterator[tuple[Client, type[_Worker]]]:
    prints = write_pair(tmp_path / "w.crt", tmp_path / "w.key", "worker")
    write_pair(tmp_path / "c.crt", tmp_path / "c.key", "client")
    assert prints is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "w.crt", tmp_path / "w.key")
    handler = type("Handler", (_Worker,), {"pages": {}, "seen": []})
    server = _Server(("127.0.0.1", 0), handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{server.server_address[1]}"
    client = Client(Profile(url, prints.sha256, tmp_path / "c.crt", tmp_path / "c.key"))
    try:
        yield client, handler
    finally:
        client.close()
        server.shutdown()
        server.server_close()
        thread.join()


def _page(state: str, first: int, count: int) -> bytes:
    logs = [
        {"seq": n, "source": "stdout", "time": "t", "text": str(n)}
        for n in range(first, first + count)
    ]
    doc = {
        "ticket": "t",
        "state": state,
        "exit_code": 0 if state == "complete" else None,
        "message": "",
        "next_seq": first + count,
        "logs": logs,
    }
    return json.dumps(doc).encode()


PAGE = "/v1/scripts/t?wait=30&after="
RUNNING = {"sandworker-state": "running"}


def _answer(worker: type[_Worker], pages: dict[int, tuple[bytes, dict[str, str]]]) -> None:
    """The stand-in's answer to the status page after each seq."""
    worker.pages = {PAGE + str(after): (200, body, head) for after, (body, head) in pages.items()}


def test_follow_pages_one_after_the_other_without_the_headers(
    stand_in: tuple[Client, type[_Worker]],
) -> None:
    # An older worker that does not say where a page ends: no page is asked for early.
    client, worker = stand_in
    _answer(
        worker,
        {
            -1: (_page("running", 0, 3), {}),
            2: (_page("running", 3, 1), {}),
            3: (_page("complete", 4, 1), {}),
        },
    )
    got: list[int] = []
    last = client.follow("t", lambda line: got.append(line["seq"]))
    assert got == [0, 1, 2, 3, 4] and last["state"] == "complete"
    assert worker.seen == [PAGE + "-1", PAGE + "2", PAGE + "3"]


def test_follow_asks_for_the_next_page_from_the_headers(
    stand_in: tuple[Client, type[_Worker]],
) -> None:
    client, worker = stand_in
    ahead = {**RUNNING, "sandworker-next-seq": "2"}
    _answer(worker, {-1: (_page("running", 0, 2), ahead), 1: (_page("complete", 2, 1), {})})
    got: list[int] = []
    client.follow("t", lambda line: got.append(line["seq"]))
    assert got == [0, 1, 2] and worker.seen == [PAGE + "-1", PAGE + "1"]


def test_follow_refuses_headers_that_contradict_the_body(
    stand_in: tuple[Client, type[_Worker]],
) -> None:
    client, worker = stand_in
    lying = {**RUNNING, "sandworker-next-seq": "9"}
    _answer(worker, {-1: (_page("running", 0, 2), lying), 8: (_page("complete", 9, 0), {})})
    with pytest.raises(ClientError, match="contradicts itself"):
        client.follow("t", lambda _line: None)


def test_a_body_that_is_not_json_is_a_clear_error(stand_in: tuple[Client, type[_Worker]]) -> None:
    client, worker = stand_in
    worker.pages = {"/v1/health": (502, b"<html>bad gateway</html>", {})}
    with pytest.raises(ClientError, match="answered 502 with a body that is not a JSON object"):
        client.call("GET", "/v1/health")
    worker.pages = {"/v1/health": (200, b"[1, 2]", {})}
    with pytest.raises(ClientError, match="answered 200 with a body that is not a JSON object"):
        client.call("GET", "/v1/health")
