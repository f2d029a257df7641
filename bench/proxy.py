"""The proxy's cost: the round trip of a trivial script via a proxy and directly, one run.

Two real daemons on loopback, each with its own throwaway home: a worker, and a
proxy whose one external worker it is (the worker trusts the proxy's certificate).
`true` is started with wait_seconds on a kept-alive mTLS connection, through the
proxy and directly to the worker, in turn, round by round; medians and their ratio.

It is measured twice: with both state directories on one filesystem (the target's
figure), and with the proxy's on a tmpfs of its own, which stands in for a proxy on
another machine: there its durable writes (the ticket it records before it answers)
neither wait for the worker's journal nor make the worker wait for its own.
Target (issue 4): proxied <= 1.3x direct. Needs root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from sandworker.daemon.certs import certificate_prints
from sandworker.daemon.client import Client, Profile
from sandworker.daemon.serve import dev_home
from sandworker.daemon.trust import TrustStore
from sandworker.daemon.workers import WorkerStore

sys.path.insert(0, str(Path(__file__).parent))
from daemons import free_port, serve

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "300"))
TARGET = 1.3


def trip(client: Client) -> float:
    began = time.perf_counter()
    doc = client.start(uuid.uuid4().hex, {"project": "bench", "body": "true", "wait_seconds": 30})
    took = time.perf_counter() - began
    if (doc["state"], doc["exit_code"]) != ("complete", 0):
        raise SystemExit(f"bench/proxy: a trivial script did not complete: {doc}")
    return took


def wait_healthy(client: Client) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        workers = client.checked("GET", "/v1/health")["external_workers"]
        if workers and all(w["healthy"] for w in workers):
            return
        time.sleep(0.2)
    raise SystemExit("bench/proxy: the proxy never saw its worker healthy")


@contextlib.contextmanager
def tmpfs(path: Path) -> Iterator[Path]:
    path.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256m,mode=0755", "bench", str(path)], check=True
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def measure(base: Path, proxy_state: Path | None) -> tuple[float, float]:
    """Medians (ms) of direct and proxied round trips, interleaved."""
    worker_config = dev_home(base / "worker", free_port())
    proxy_config = dev_home(base / "proxy", free_port())
    if proxy_state is not None:
        text = proxy_config.read_text()
        proxy_config.write_text(
            text.replace(f'directory = "{base}/proxy/state"', f'directory = "{proxy_state}"')
        )
    TrustStore(base / "worker" / "trust.toml").add(
        certificate_prints(base / "proxy" / "worker.crt")
    )
    worker_pin = certificate_prints(base / "worker" / "worker.crt").sha256
    worker_url = Profile.load(base / "worker" / "profile.toml").url
    WorkerStore(base / "proxy" / "workers.toml").add("default", worker_url, worker_pin)
    daemons = [serve(worker_config), serve(proxy_config)]
    direct = Client(Profile.load(base / "worker" / "profile.toml"))
    proxied = Client(Profile.load(base / "proxy" / "profile.toml"))
    try:
        wait_healthy(proxied)
        for _ in range(10):
            trip(direct), trip(proxied)
        pairs = [(trip(direct), trip(proxied)) for _ in range(ROUNDS)]
    finally:
        direct.close()
        proxied.close()
        for proc in daemons:
            proc.terminate()
            proc.wait(60)
    alone = statistics.median(d for d, _ in pairs) * 1000
    return alone, statistics.median(p for _, p in pairs) * 1000


def main() -> int:
    if os.geteuid() != 0:
        print("bench/proxy: needs root", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="sandworker-proxy-", dir="/var/tmp"))
    try:
        shared = measure(base / "shared", None)
        with tmpfs(base / "proxy-state") as own:
            apart = measure(base / "apart", own / "state")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"bench/proxy: {ROUNDS} rounds, round trip of true with wait_seconds (medians)")
    for label, (alone, via) in (("one filesystem", shared), ("proxy state apart", apart)):
        print(f"  {label:<18} direct {alone:6.1f} ms, via the proxy {via:6.1f} ms:"
              f" {via / alone:5.2f}x")  # fmt: skip
    ratio = shared[1] / shared[0]
    print(f"  target <= {TARGET}x on one filesystem: {'met' if ratio <= TARGET else 'MISSED'}")
    # A miss fails a developer's run; with BENCH_TARGETS=report (CI: figures only, since
    # this VM is shared and timed tests are not wanted) it is printed and the run goes on.
    return 0 if ratio <= TARGET or os.environ.get("BENCH_TARGETS") == "report" else 1


if __name__ == "__main__":
    sys.exit(main())
