"""Package uploads into a project's cache, over real mutual TLS, with curl as the client."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.daemon import Worker, _worker


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Worker]:
    yield from _worker(tmp_path, server='max_package = "1MiB"')


def curl(worker: Worker, path: str, *args: str) -> tuple[int, str]:
    home = worker.home
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "60", "-k", "--cert", str(home / "client.crt"),
         "--key", str(home / "client.key"), "-w", "\\n%{http_code}",
         f"https://127.0.0.1:{worker.port}{path}", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result
    body, _, code = result.stdout.rpartition("\n")
    return int(code), body


def upload(
    worker: Worker, name: str, data: Path, sha256: str, project: str = "web"
) -> tuple[int, str]:
    return curl(worker, f"/v1/projects/web/packages/{name}", "-X", "PUT",
                "--data-binary", f"@{data}", "-H", f"Sandworker-Sha256: {sha256}")  # fmt: skip


def test_an_upload_is_verified_kept_and_listed(small: Worker, tmp_path: Path) -> None:
    data = tmp_path / "app.zip"
    data.write_bytes(os.urandom(300_000))
    sha = hashlib.sha256(data.read_bytes()).hexdigest()
    status, body = upload(small, "app.zip", data, sha)
    assert status == 201, body
    assert json.loads(body) == {"project": "web", "name": "app.zip", "sha256": sha,
                                "length": 300_000}  # fmt: skip
    kept = small.state / "packages" / "web" / "app.zip"
    assert kept.read_bytes() == data.read_bytes()
    assert kept.stat().st_mode & 0o777 == 0o600
    status, body = curl(small, "/v1/projects/web/packages")
    assert (status, json.loads(body)["packages"]) == (200, [{"name": "app.zip", "length": 300_000}])
    audit = [e for e in small.audit() if e["event"] == "package.uploaded"]
    assert [(e["name"], e["sha256"]) for e in audit] == [("app.zip", sha)]


def test_bad_uploads_are_refused_and_nothing_is_kept(small: Worker, tmp_path: Path) -> None:
    data = tmp_path / "app.zip"
    data.write_bytes(b"some bytes")
    status, body = upload(small, "app.zip", data, "0" * 64)
    assert status == 400 and "SHA-256 is" in body and "not kept" in body, body
    status, body = upload(small, "app.zip", data, "not-hex")
    assert status == 400 and "Sandworker-Sha256" in body, body
    sha = hashlib.sha256(b"some bytes").hexdigest()
    for name in ("app.exe", "..%2Fescape.zip", ".hidden.zip"):
        status, body = upload(small, name, data, sha)
        assert status == 400 and "package name" in body, (name, body)
    big = tmp_path / "big.zip"
    big.write_bytes(b"x" * (2 << 20))
    status, body = upload(small, "big.zip", big, hashlib.sha256(big.read_bytes()).hexdigest())
    assert status == 413 and "at most 1048576" in body, body
    packages = small.state / "packages" / "web"
    assert not packages.exists() or not list(packages.iterdir()), list(packages.iterdir())
