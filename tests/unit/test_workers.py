"""External workers: the workers file, and the pools' health bookkeeping and routing."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest

from sandworker.daemon import remote
from sandworker.daemon.pools import CheckSettings, NoHealthyWorker, Pools, UnknownPool
from sandworker.daemon.workers import ExternalWorker, WorkerError, WorkerStore

PIN = "AB" * 32
OTHER = "CD" * 32


@pytest.fixture
def store(tmp_path: Path) -> WorkerStore:
    return WorkerStore(tmp_path / "workers.toml")


def test_external_worker_sets_the_default_pool_and_reset_removes_it(store: WorkerStore) -> None:
    store.add("blue", "https://b:1", PIN)
    store.set_default("https://a:10933", PIN)
    store.set_default("https://a2", OTHER.lower())  # the default pool is exactly one worker
    assert [(w.pool, w.address, w.thumbprint) for w in store.workers()] == [
        ("default", "https://a2:10933", OTHER),
        ("blue", "https://b:1", PIN),
    ]
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert [w.address for w in store.reset_default()] == ["https://a2:10933"]
    assert list(store.pools()) == ["blue"]


def test_pool_add_is_idempotent_and_a_new_thumbprint_replaces(store: WorkerStore) -> None:
    assert store.add("p", "https://h:2", PIN)[1] is True
    assert store.add("p", "https://h:2", PIN)[1] is False
    store.add("p", "https://h:2", OTHER)
    assert [w.thumbprint for w in store.workers()] == [OTHER]
    store.add("p", "https://g:2", PIN)
    assert [w.address for w in store.remove("p", "https://h:2")] == ["https://h:2"]
    assert [w.address for w in store.remove("p")] == ["https://g:2"]
    with pytest.raises(WorkerError, match="no such worker in pool 'p'; configured: none"):
        store.remove("p")


@pytest.mark.parametrize(
    ("pool", "address", "thumbprint", "says"),
    [
        ("p", "http://h:1", PIN, "use https://HOST:PORT"),
        ("p", "https://h:1/x", PIN, "use https://HOST:PORT"),
        ("p", "https://user@h:1", PIN, "use https://HOST:PORT"),
        ("p", "https://h:99999", PIN, "use https://HOST:PORT"),
        ("p", "https://h:1", "12", "thumbprint"),
        ("../p", "https://h:1", PIN, "pool"),
    ],
)
def test_bad_workers_are_refused_with_the_reason(
    store: WorkerStore, pool: str, address: str, thumbprint: str, says: str
) -> None:
    with pytest.raises(WorkerError, match=says):
        store.add(pool, address, thumbprint)
    assert not store.path.exists()


def test_an_unusable_file_fails_closed(store: WorkerStore, tmp_path: Path) -> None:
    store.path.write_text(f'[[worker]]\naddress = "https://h:1"\nthumbprint = "{PIN}"\nport = 1\n')
    store.path.chmod(0o600)
    with pytest.raises(WorkerError, match="worker 1: unknown field 'port'"):
        store.workers()
    pools = _pools(store, tmp_path)
    assert pools.configured()  # broken: the built-in worker stays off
    with pytest.raises(NoHealthyWorker, match="unusable"):
        pools.choose(None)
    store.path.write_text("")
    store.path.chmod(0o666)
    with pytest.raises(WorkerError, match="writable by group or others"):
        store.workers()


def _pools(store: WorkerStore, tmp_path: Path) -> Pools:
    settings = CheckSettings(
        interval=1, timeout=1, unhealthy_after=2, healthy_after=2, lost_after=5
    )
    return Pools(
        store,
        certificate=tmp_path / "c.crt",
        key=tmp_path / "c.key",
        settings=settings,
        state_dir=tmp_path,
        on_refused=lambda worker, error: None,
    )


def test_routing_takes_the_least_loaded_healthy_worker_in_turn(
    store: WorkerStore, tmp_path: Path
) -> None:
    for host in ("a", "b", "c"):
        store.add("default", f"https://{host}:1", PIN)
    store.add("blue", "https://d:1", PIN)
    pools = _pools(store, tmp_path)
    health = {h.worker.address: h for h in pools.current()}
    for address, running in (("https://a:1", 3), ("https://b:1", 0), ("https://c:1", 0)):
        pools._passed(health[address], {"running": running, "builtin_worker": True}, 0.01)
    picks = [pools.choose(None).address for _ in range(4)]
    assert sorted(picks[:2]) == ["https://b:1", "https://c:1"]  # equals, in turn
    assert "https://a:1" not in picks[:3]  # the busy one waits until the others catch up
    with pytest.raises(NoHealthyWorker, match="https://d:1: not checked yet"):
        pools.choose("blue")
    with pytest.raises(UnknownPool, match="configured pools: blue, default"):
        pools.choose("green")


def test_health_thresholds_and_proxies_are_not_workers(store: WorkerStore, tmp_path: Path) -> None:
    store.add("default", "https://a:1", PIN)
    pools = _pools(store, tmp_path)
    (health,) = pools.current()
    pools._failed(health, "cannot reach")
    assert health.healthy is False  # the first check decides
    pools._passed(health, {"running": 0}, 0.01)
    assert health.healthy is False  # healthy_after = 2
    pools._passed(health, {"running": 0}, 0.01)
    assert health.healthy is True
    pools._failed(health, "cannot reach")
    assert health.healthy is True  # unhealthy_after = 2
    pools._failed(health, "cannot reach")
    assert health.healthy is False and pools.report()[0]["error"] == "cannot reach"
    pools._passed(health, {"running": 0, "builtin_worker": False}, 0.01)
    assert health.healthy is False and "proxies to external workers itself" in health.error
    store.add("default", "https://a:1", OTHER)  # a new certificate: checked afresh
    assert pools.current()[0].healthy is None
    assert ExternalWorker("default", "https://a:1", OTHER).name == "default/https://a:1"


def test_a_health_answer_that_is_not_a_sandworkers_fails_the_check(
    store: WorkerStore, tmp_path: Path
) -> None:
    store.add("default", "https://a:1", PIN)
    refused: list[str] = []
    pools = _pools(store, tmp_path)
    pools._on_refused = lambda worker, error: refused.append(error)
    (health,) = pools.current()
    for doc in ({"running": "many"}, {"running": -3}, {}):
        pools._passed(health, doc, 0.01)
        assert health.healthy is False and "not a sandworker's" in health.error
    for _ in range(3):  # the same refusal is audited once, not at every check
        pools._failed(health, "thumbprint mismatch: expected X, got Y")
    assert refused == ["thumbprint mismatch: expected X, got Y"]


def test_follower_threads_are_reused_run_side_by_side_and_end_when_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(remote, "IDLE_SECONDS", 0.3)
    followers = remote.Followers()
    ran: list[threading.Thread] = []
    done = threading.Event()

    def job() -> None:
        ran.append(threading.current_thread())
        done.set()

    def settle(idle: int) -> None:
        for _ in range(250):
            if followers._idle == idle:
                return
            time.sleep(0.02)

    followers.run(job)
    assert done.wait(5)
    settle(1)  # the first thread is idle again: the next job is its
    done.clear()
    followers.run(job)
    assert done.wait(5)
    assert ran[0] is ran[1]
    gate, started = threading.Event(), threading.Barrier(3, timeout=5)

    def held() -> None:
        ran.append(threading.current_thread())
        started.wait()  # both jobs run at once, each in a thread of its own
        gate.wait(5)

    followers.run(held)
    followers.run(held)
    started.wait()
    gate.set()
    assert len({id(t) for t in ran[2:]}) == 2
    settle(2)
    settle(0)  # every thread ends once it has idled for IDLE_SECONDS
    for thread in ran:
        thread.join(5)
        assert not thread.is_alive()
    assert followers._idle == 0
