"""A real `sandworker serve` under test: its home, certificates, policy and a client."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandworker.daemon.certs import certificate_prints, write_pair
from sandworker.daemon.pinclient import client_context
from sandworker.daemon.trust import TrustStore

SANDWORKER = str(Path(sys.executable).with_name("sandworker"))


@dataclass
class Worker:
    home: Path
    port: int
    metrics_port: int = 0
    process: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)  # everything the daemon printed
    headers: dict[str, str] = field(default_factory=dict)  # of the last answer to call()

    def start(
        self, *extra: str, env: dict[str, str] | None = None, wrapper: Sequence[str] = ()
    ) -> None:
        """`wrapper`: a command the daemon's command line is appended to (it execs it)."""
        if env is None:  # (a test run under systemd must not notify it)
            env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        self.process = subprocess.Popen(
            [*wrapper, SANDWORKER, "serve", "--config", str(self.home / "sandworker.toml"), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        stream = self.process.stdout
        assert stream is not None
        for line in stream:
            self.output.append(line)
            if "listening on" in line:
                # keep draining, so that the daemon's log never blocks on a full pipe
                threading.Thread(target=self.output.extend, args=(stream,), daemon=True).start()
                return
        raise AssertionError(f"daemon did not start: exit {self.process.wait()}:\n{self.log}")

    @property
    def log(self) -> str:
        return "".join(self.output)

    def audit(self) -> list[dict[str, Any]]:
        path = self.state / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]

    @property
    def state(self) -> Path:
        return self.home.parent / "state"

    def uid_of(self, project: str) -> int:
        """The uid the daemon gave `project` (its persisted account map)."""
        mapping = json.loads((self.state / "sandbox" / "accounts.json").read_text())
        return int(mapping[project])

    def processes_of(self, project: str) -> bytes:
        """pgrep's list of every process running as the project's account (b"" if none)."""
        uid = str(self.uid_of(project))
        return subprocess.run(["pgrep", "-u", uid], capture_output=True, check=False).stdout

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
            self.headers = {name.lower(): value for name, value in response.getheaders()}
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    def profile(self) -> Path:
        """A client profile for the `sandworker script|package` commands."""
        profile = self.home / "profile.toml"
        pin = certificate_prints(self.home / "worker.crt").sha256
        profile.write_text(
            f'url = "https://127.0.0.1:{self.port}"\nthumbprint = "{pin}"\n'
            'certificate = "client.crt"\nkey = "client.key"\n'
        )
        return profile

    def curl(self, path: str, *args: str) -> tuple[int, str]:
        """curl as an independent client: (status, body)."""
        result = subprocess.run(
            ["curl", "-sS", "--max-time", "60", "-k", "--cert", str(self.home / "client.crt"),
             "--key", str(self.home / "client.key"), "-w", "\\n%{http_code}",
             f"https://127.0.0.1:{self.port}{path}", *args],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result
        body, _, code = result.stdout.rpartition("\n")
        return int(code), body

    def upload(self, name: str, data: Path, project: str = "web") -> tuple[int, str]:
        """PUT a package file (with its SHA-256) into the project's cache, with curl."""
        sha256 = hashlib.sha256(data.read_bytes()).hexdigest()
        return self.upload_as(name, data, sha256, project)

    def upload_as(
        self, name: str, data: Path, sha256: str, project: str = "web"
    ) -> tuple[int, str]:
        path = f"/v1/projects/{project}/packages/{name}"
        header = f"Sandworker-Sha256: {sha256}"
        return self.curl(path, "-X", "PUT", "--data-binary", f"@{data}", "-H", header)

    def pages(self, ticket: str, after: int = -1) -> list[dict[str, Any]]:
        """Every status page from `after` on, until one says complete (at most 100)."""
        pages: list[dict[str, Any]] = []
        while len(pages) < 100:
            _, page = self.call("GET", f"/v1/scripts/{ticket}?after={after}&wait=10")
            pages.append(page)
            # the headers repeat the page's state and end, for clients that ask ahead
            assert self.headers["sandworker-state"] == page["state"], self.headers
            assert self.headers["sandworker-next-seq"] == str(page["next_seq"]), self.headers
            if page["state"] == "complete":
                break
            after = page["next_seq"] - 1
        return pages


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(
    tmp_path: Path,
    *,
    server: str = "",
    state: str = "",
    sandbox: str = "",
    external: str = "",
    metrics: str = "",
    policy: str = "",
    uids: tuple[int, int] = (430000, 430999),
) -> Iterator[Worker]:
    """A started daemon; `server`, `state`, `sandbox`, `external` and `metrics` are extra
    lines for those tables, `policy` for the project rule of "web"."""
    home = tmp_path / "home"
    home.mkdir()
    write_pair(home / "worker.crt", home / "worker.key", "worker")
    write_pair(home / "client.crt", home / "client.key", "client")
    write_pair(home / "stranger.crt", home / "stranger.key", "stranger")
    TrustStore(home / "trust.toml").add(certificate_prints(home / "client.crt"))
    (home / "policies").mkdir()
    (home / "policies" / "p.toml").write_text(
        'version = 1\n[[project]]\nmatch = "web"\ntimeout = "20s"\nkill_grace = "1s"\n' + policy
    )
    port, metrics_port = _free_port(), _free_port()
    if "stop_grace" not in server:  # a stop kills running scripts at once, as tests expect
        server += '\nstop_grace = "0s"'
    (home / "sandworker.toml").write_text(f"""
[server]
listen = "127.0.0.1:{port}"
{server}
[tls]
certificate = "{home}/worker.crt"
key = "{home}/worker.key"
trust = "{home}/trust.toml"
[state]
directory = "{tmp_path}/state"
{state}
[sandbox]
policy_dir = "{home}/policies"
uid_min = {uids[0]}
uid_max = {uids[1]}
{sandbox}
[external]
workers = "{home}/workers.toml"
{external}
[metrics]
listen = "127.0.0.1:{metrics_port}"
{metrics}
""")
    w = Worker(home, port, metrics_port=metrics_port)
    w.start()
    try:
        yield w
    finally:
        w.stop(signal.SIGTERM)  # graceful: running scripts are killed and recorded


def lines(status: dict[str, Any], source: str = "stdout") -> list[str]:
    return [line["text"] for line in status["logs"] if line["source"] == source]
