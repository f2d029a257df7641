"""Packages into a project's cache, over real mutual TLS, with curl as the client: uploads
(SHA-256 checked on the way, size-limited) and downloads by the worker itself, only from
the sources the project's policy lists, redirects included."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from tests.e2e.daemon import Worker, _free_port, _worker


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Worker]:
    yield from _worker(tmp_path, server='max_package = "1MiB"')


def test_an_upload_is_verified_kept_and_listed(small: Worker, tmp_path: Path) -> None:
    data = tmp_path / "app.zip"
    data.write_bytes(os.urandom(300_000))
    sha = hashlib.sha256(data.read_bytes()).hexdigest()
    status, body = small.upload("app.zip", data)
    assert status == 201, body
    assert json.loads(body) == {"project": "web", "name": "app.zip", "sha256": sha,
                                "length": 300_000}  # fmt: skip
    kept = small.state / "packages" / "web" / "app.zip"
    assert kept.read_bytes() == data.read_bytes()
    assert kept.stat().st_mode & 0o777 == 0o600
    status, body = small.curl("/v1/projects/web/packages")
    assert (status, json.loads(body)["packages"]) == (
        200, [{"name": "app.zip", "length": 300_000, "sha256": sha}]
    )  # fmt: skip
    audit = [e for e in small.audit() if e["event"] == "package.uploaded"]
    assert [(e["name"], e["sha256"]) for e in audit] == [("app.zip", sha)]


def test_bad_uploads_are_refused_and_nothing_is_kept(small: Worker, tmp_path: Path) -> None:
    data = tmp_path / "app.zip"
    data.write_bytes(b"some bytes")
    status, body = small.upload_as("app.zip", data, "0" * 64)
    assert status == 400 and "SHA-256 is" in body and "not kept" in body, body
    status, body = small.upload_as("app.zip", data, "not-hex")
    assert status == 400 and "Sandworker-Sha256" in body, body
    for name in ("app.exe", "..%2Fescape.zip", ".hidden.zip"):
        status, body = small.upload(name, data)
        assert status == 400 and "package name" in body, (name, body)
    big = tmp_path / "big.zip"
    big.write_bytes(b"x" * (2 << 20))
    status, body = small.upload("big.zip", big)
    assert status == 413 and "at most 1048576" in body, body
    packages = small.state / "packages" / "web"
    assert not packages.exists() or not list(packages.iterdir()), list(packages.iterdir())


# --- downloads ------------------------------------------------------------------------


class _Files(http.server.BaseHTTPRequestHandler):
    """/ok/<name> and /other/<name> serve files; /ok/jump redirects to /other/app.zip."""

    files: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        if self.path == "/ok/jump":
            self.send_response(302)
            self.send_header("Location", "/other/app.zip")
            self.end_headers()
            return
        if self.path == "/ok/back":  # a backslash that some servers read as '/'
            self.send_response(302)
            self.send_header("Location", "..\\other\\app.zip")
            self.end_headers()
            return
        if self.path == "/ok/hop":  # a redirect that stays inside the source
            self.send_response(301)
            self.send_header("Location", "/ok/app.zip")
            self.end_headers()
            return
        if self.path == "/ok/cut.zip":  # promises more than it sends, then hangs up
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"x" * 1000)
            self.close_connection = True
            return
        data = self.files.get(self.path.rsplit("/", 1)[-1])
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def source() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def fetcher(tmp_path: Path, source: str) -> Iterator[Worker]:
    yield from _worker(
        tmp_path, server='max_package = "1MiB"', policy=f'packages.sources = ["{source}/ok/"]\n'
    )


def fetch(worker: Worker, url: str, sha256: str, name: str = "app.zip") -> tuple[int, str]:
    doc = json.dumps({"name": name, "url": url, "sha256": sha256})
    return worker.curl("/v1/projects/web/packages", "-X", "POST", "--data-binary", doc,
                       "-H", "Content-Type: application/json")  # fmt: skip


def test_the_worker_downloads_a_package_from_an_allowed_source(
    fetcher: Worker, source: str
) -> None:
    data = os.urandom(200_000)
    _Files.files = {"app.zip": data}
    sha = hashlib.sha256(data).hexdigest()
    status, body = fetch(fetcher, f"{source}/ok/app.zip", sha)
    assert status == 201, body
    assert json.loads(body)["length"] == len(data)
    assert (fetcher.state / "packages" / "web" / "app.zip").read_bytes() == data
    status, body = fetch(fetcher, f"{source}/ok/hop", sha, name="again.zip")  # redirect inside
    assert status == 201, body
    audit = [e for e in fetcher.audit() if e["event"] == "package.fetched"]
    assert [(e["name"], e["url"], e["sha256"]) for e in audit] == [
        ("app.zip", f"{source}/ok/app.zip", sha), ("again.zip", f"{source}/ok/hop", sha)
    ]  # fmt: skip


def test_downloads_outside_the_sources_or_not_matching_are_refused(
    fetcher: Worker, source: str
) -> None:
    data = os.urandom(5000)
    _Files.files = {"app.zip": data, "big.zip": b"x" * (2 << 20)}
    sha = hashlib.sha256(data).hexdigest()
    port = source.rsplit(":", 1)[1]
    cases = [
        (f"{source}/other/app.zip", sha, 403, "not under a source"),
        (f"{source}/ok-other/app.zip", sha, 403, "not under a source"),  # a prefix, not a path
        (f"http://localhost:{port}/ok/app.zip", sha, 403, "not under a source"),  # another host
        (f"{source}/ok/../other/app.zip", sha, 400, "'..'"),
        (f"{source}/ok/%2e%2e/other/app.zip", sha, 400, "encoded"),
        ("file:///etc/passwd", sha, 400, "https:// or http://"),
        (f"{source}/ok/jump", sha, 403, "redirects to"),
        (f"{source}/ok/back", sha, 403, "redirects to"),
        (f"{source}/ok/..\\other\\app.zip", sha, 400, "backslash"),
        (f"{source}/ok/%252e%252e/other/app.zip", sha, 400, "double encoding"),
        (f"{source}/ok/app.zip\r\nX-Injected: 1", sha, 400, "control character"),
        (f"{source}/ok/app.zip", "0" * 64, 400, "not the " + "0" * 64),
        (f"{source}/ok/app.zip", "nope", 400, "SHA-256"),
        (f"{source}/ok/missing.zip", sha, 502, "answered 404"),
        (f"{source}/ok/cut.zip", sha, 502, "broke off"),
        (f"{source}/ok/big.zip", sha, 413, "server.max_package"),
        (f"http://127.0.0.1:{_free_port()}/ok/app.zip", sha, 403, "not under a source"),
    ]
    for url, wanted_sha, status_wanted, said in cases:
        status, body = fetch(fetcher, url, wanted_sha)
        assert (status, said in body) == (status_wanted, True), (url, status, body)
    packages = fetcher.state / "packages" / "web"
    assert not packages.exists() or not list(packages.iterdir()), list(packages.iterdir())


def test_an_unreachable_source_is_reported(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{_free_port()}"
    for worker in _worker(tmp_path, policy=f'packages.sources = ["{dead}/"]\n'):
        status, body = fetch(worker, f"{dead}/app.zip", "a" * 64)
        assert status == 502 and "could not download" in body, body


def test_no_sources_means_no_downloads(small: Worker) -> None:
    status, body = fetch(small, "https://example.com/app.zip", "a" * 64)
    assert status == 403 and "lists no packages.sources" in body, body
