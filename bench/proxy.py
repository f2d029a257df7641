"""The proxy's cost: the round trip of a trivial script via a proxy and directly, one run.

Two real daemons on loopback, each with its own throwaway home: a worker, and a
proxy whose one external worker it is (the worker trusts the proxy's certificate).
`true` is started with wait_seconds on a kept-alive mTLS connection, through the
proxy and directly to the worker, in turn, round by round; medians and their ratio.

It is measured twice: with the proxy's state on a tmpfs of its own, which stands in for
a proxy on another machine (the target's figure), and with both state directories on one
filesystem. On one filesystem the proxy's durable writes, made while the worker runs the
script, slow the worker itself: the bench shows it as the worker's own time per script
(from its ticket records: created to completed) for the direct and the proxied starts.
Target (issue 4): proxied <= 1.3x direct. Needs root.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
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


def trip(client: Client, ids: list[str]) -> float:
    ids.append(uuid.uuid4().hex)
    began = time.perf_counter()
    doc = client.start(ids[-1], {"project": "bench", "body": "true", "wait_seconds": 30})
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


def own_time(tickets: Path, ids: list[str]) -> float:
    """The worker's own time per script (ms): created to completed in its ticket records,
    which keep milliseconds, so a trimmed mean (the middle 80%) rather than a median."""
    spans = []
    for ticket_id in ids:
        last = (tickets / ticket_id / "state.jsonl").read_bytes().splitlines()[-1]
        record = json.loads(last)
        began, ended = (datetime.fromisoformat(record[k]) for k in ("created", "completed"))
        spans.append((ended - began).total_seconds())
    spans.sort()
    cut = len(spans) // 10
    return statistics.mean(spans[cut : len(spans) - cut]) * 1000


@dataclass
class Figures:
    direct: float  # medians of the round trips, ms
    proxied: float
    own_direct: float  # the worker's own time per script, ms
    own_proxied: float

    @property
    def ratio(self) -> float:
        return self.proxied / self.direct


def measure(base: Path, proxy_state: Path | None) -> Figures:
    """Round trips, direct and proxied, interleaved; and the worker's own times."""
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
            trip(direct, []), trip(proxied, [])
        direct_ids: list[str] = []
        proxied_ids: list[str] = []
        pairs = [(trip(direct, direct_ids), trip(proxied, proxied_ids)) for _ in range(ROUNDS)]
        tickets = base / "worker" / "state" / "tickets" / "tickets"
        own = own_time(tickets, direct_ids), own_time(tickets, proxied_ids)
    finally:
        direct.close()
        proxied.close()
        for proc in daemons:
            proc.terminate()
            proc.wait(60)
    return Figures(
        statistics.median(d for d, _ in pairs) * 1000,
        statistics.median(p for _, p in pairs) * 1000,
        *own,
    )


def main() -> int:
    if os.geteuid() != 0:
        print("bench/proxy: needs root", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="sandworker-proxy-", dir="/var/tmp"))
    try:
        with tmpfs(base / "proxy-state") as own:
            apart = measure(base / "apart", own / "state")
        shared = measure(base / "shared", None)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"bench/proxy: {ROUNDS} rounds, round trip of true with wait_seconds (medians)")
    for label, got in (("proxy state apart", apart), ("one filesystem", shared)):
        print(f"  {label:<18} direct {got.direct:6.1f} ms, via the proxy {got.proxied:6.1f} ms:"
              f" {got.ratio:5.2f}x; the worker's own time per script: direct"
              f" {got.own_direct:5.1f} ms, proxied {got.own_proxied:5.1f} ms")  # fmt: skip
    met = apart.ratio <= TARGET
    print(f"  target <= {TARGET}x with the proxy's state apart: {'met' if met else 'MISSED'}")
    # A miss fails a developer's run; with BENCH_TARGETS=report (CI: figures only, since
    # this VM is shared and timed tests are not wanted) it is printed and the run goes on.
    return 0 if met or os.environ.get("BENCH_TARGETS") == "report" else 1


if __name__ == "__main__":
    sys.exit(main())
