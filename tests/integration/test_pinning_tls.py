"""The pinning TLS context against real clients: openssl s_client, curl and our own."""

from __future__ import annotations

import http.client
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sandworker.daemon.certs import certificate_prints, parse_thumbprint, write_pair
from sandworker.daemon.pinning import PinMismatch, client_context
from sandworker.daemon.trust import TrustStore

SERVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from twisted.internet import reactor
    from twisted.web import resource, server
    from sandworker.daemon.pinning import server_context_factory
    from sandworker.daemon.trust import TrustStore

    class Hello(resource.Resource):
        isLeaf = True
        def render_GET(self, request):
            return b"hello"

    def reject(prints, reason, peer):
        print("REJECTED", prints.sha256, reason, peer, file=sys.stderr, flush=True)

    home = Path(sys.argv[1])
    factory = server_context_factory(
        home / "worker.crt", home / "worker.key", TrustStore(home / "trust.toml"), reject
    )
    port = reactor.listenSSL(0, server.Site(Hello()), factory, interface="127.0.0.1")
    print(port.getHost().port, flush=True)
    reactor.run()
    """
)


@pytest.fixture
def worker(tmp_path):
    home = tmp_path / "worker"
    write_pair(home / "worker.crt", home / "worker.key", "worker")
    for name in ("client", "rogue"):
        write_pair(tmp_path / name / "c.crt", tmp_path / name / "c.key", name)
    TrustStore(home / "trust.toml").add(certificate_prints(tmp_path / "client" / "c.crt"))
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(home)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield tmp_path, port, proc
    finally:
        proc.kill()
        proc.communicate(timeout=10)


def s_client(port: int, *extra: str) -> str:
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-ign_eof", *extra],
        input=b"GET / HTTP/1.0\r\n\r\n",
        capture_output=True,
        timeout=20,
        check=False,
    )
    return (done.stdout + done.stderr).decode(errors="replace")


def cert_args(base: Path, name: str) -> list[str]:
    return ["-cert", str(base / name / "c.crt"), "-key", str(base / name / "c.key")]


def test_openssl_s_client(worker):
    base, port, _ = worker
    assert "hello" in s_client(port, *cert_args(base, "client"))
    assert "hello" in s_client(port, "-tls1_2", *cert_args(base, "client"))
    rogue = s_client(port, *cert_args(base, "rogue"))
    assert "hello" not in rogue and "alert" in rogue
    assert "certificate required" in s_client(port)
    assert "alert protocol version" in s_client(port, "-tls1_1", *cert_args(base, "client"))
    weak = s_client(port, "-tls1_2", "-cipher", "AES128-SHA", *cert_args(base, "client"))
    assert "hello" not in weak and "alert handshake failure" in weak


def test_no_session_resumption(worker):
    base, port, _ = worker
    session = base / "session.pem"
    first = s_client(port, "-sess_out", str(session), *cert_args(base, "client"))
    assert "hello" in first
    second = s_client(port, "-sess_in", str(session), *cert_args(base, "client"))
    assert "Reused" not in second and "New" in second


def curl(base: Path, port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "curl",
            "-sS",
            "--insecure",
            *["--cert", str(base / "client" / "c.crt")],
            *["--key", str(base / "client" / "c.key"), f"https://127.0.0.1:{port}/"],
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def test_curl_trust_removed_applies_to_next_connection(worker):
    base, port, proc = worker
    assert curl(base, port).stdout == "hello"
    client = certificate_prints(base / "client" / "c.crt")
    TrustStore(base / "worker" / "trust.toml").remove(parse_thumbprint(client.sha1))
    assert curl(base, port).returncode != 0
    proc.kill()
    assert (
        f"REJECTED {client.sha256} thumbprint not trusted 127.0.0.1:"
        in proc.communicate(timeout=10)[1]
    )


def test_python_client_pins_worker(worker):
    base, port, _ = worker
    worker_prints = certificate_prints(base / "worker" / "worker.crt")
    crt, key = base / "client" / "c.crt", base / "client" / "c.key"
    for pin in (worker_prints.sha256, worker_prints.sha1):
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=client_context(crt, key, pin))
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"hello"
        conn.close()
    wrong = "00" * 32
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=client_context(crt, key, wrong))
    with pytest.raises(PinMismatch) as caught:
        conn.request("GET", "/")
    assert wrong in str(caught.value) and worker_prints.sha256 in str(caught.value)
