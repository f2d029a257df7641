"""The proxy's cost: the round trip of a trivial script via a proxy and directly, one run.

Two real daemons on loopback, each with its own throwaway home: a worker, and a
proxy whose one external worker it is (the worker trusts the proxy's certificate).
`true` is started with wait_seconds on a kept-alive mTLS connection, through the
proxy and directly to the worker, in turn, round by round; medians and their ratio.
Target (issue 4): proxied <= 1.3x direct. Needs root.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sandworker.daemon.certs import certificate_prints
from sandworker.daemon.client import Client, Profile
from sandworker.daemon.serve import dev_home
from sandworker.daemon.trust import TrustStore
from sandworker.daemon.workers import WorkerStore

sys.path.insert(0, str(Path(__file__).parent))
from daemons import free_port, serve

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "100"))
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


def main() -> int:
    if os.geteuid() != 0:
        print("bench/proxy: needs root", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="sandworker-proxy-", dir="/var/tmp"))
    worker_config = dev_home(base / "worker", free_port())
    proxy_config = dev_home(base / "proxy", free_port())
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
        shutil.rmtree(base, ignore_errors=True)
    alone = statistics.median(d for d, _ in pairs) * 1000
    via = statistics.median(p for _, p in pairs) * 1000
    ratio = via / alone
    print(f"bench/proxy: {ROUNDS} rounds, round trip of true with wait_seconds (medians)")
    print(f"  direct to the worker   {alone:7.1f} ms")
    print(f"  through the proxy      {via:7.1f} ms")
    verdict = "met" if ratio <= TARGET else "MISSED"
    print(f"  ratio                  {ratio:7.2f}x  [<= {TARGET}x: {verdict}]")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
