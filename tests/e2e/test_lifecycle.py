"""The daemon under a service manager, for real: the notify protocol on a datagram socket
the test binds, reload (SIGHUP and `sandworker reload`) and the graceful stop."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from sandworker.daemon.certs import certificate_prints
from sandworker.sandbox.cgroups import DELEGATE_XATTR, PREFIX, SUPERVISOR, V2, own_groups
from tests.e2e.daemon import SANDWORKER, Worker, _worker, lines
from tests.e2e.test_metrics import scrape

POLICY = 'version = 1\n[[project]]\nmatch = "web"\ntimeout = "20s"\nkill_grace = "1s"\n'


class Systemd:
    """The receiving end of NOTIFY_SOCKET: every datagram, split into its fields, read by a
    thread of its own (as systemd reads them: a sender never finds the queue full)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []
        self._seen = 0  # messages wait_for has looked at
        self._arrived = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            with self._arrived:
                self.messages.append(dict(x.split("=", 1) for x in data.decode().splitlines()))
                self._arrived.notify_all()

    def wait_for(self, key: str, value: str | None = None, timeout: float = 15) -> dict[str, str]:
        """The first message not looked at yet that has `key` (= `value`)."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                for message in self.messages[self._seen :]:
                    self._seen += 1
                    if key in message and (value is None or message[key] == value):
                        return message
                if not self._arrived.wait(deadline - time.monotonic()):
                    raise AssertionError(f"no {key}={value} from the daemon: {self.messages}")

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


@pytest.fixture
def notified(tmp_path: Path) -> Iterator[tuple[Worker, Systemd]]:
    systemd = Systemd(tmp_path / "notify.sock")
    for w in _worker(tmp_path, server='stop_grace = "8s"'):
        w.stop()  # (started without the socket by the helper): again, as systemd would
        env = dict(os.environ, NOTIFY_SOCKET=str(systemd.path), WATCHDOG_USEC="400000")
        w.start(env=env)
        yield w, systemd
    systemd.close()


def test_ready_status_watchdog_and_no_notify_socket_for_what_the_daemon_starts(
    notified: tuple[Worker, Systemd],
) -> None:
    worker, systemd = notified
    ready = systemd.wait_for("READY", "1")
    assert ready["STATUS"] == "0 running, 0 queued"
    began = time.monotonic()
    systemd.wait_for("WATCHDOG", "1")
    systemd.wait_for("WATCHDOG", "1")  # every 0.2 s: half of WATCHDOG_USEC
    assert time.monotonic() - began < 2
    worker.call("PUT", "/v1/scripts/env", {"project": "web", "body": "env; sleep 2"})
    systemd.wait_for("STATUS", "1 running, 0 queued")
    assert worker.process is not None
    children = psutil.Process(worker.process.pid).children(recursive=True)
    assert children  # the launcher, the zygote and the script
    for child in children:
        with pytest.raises(KeyError):
            child.environ()["NOTIFY_SOCKET"]
    done = worker.pages("env")[-1]
    assert done["exit_code"] == 0
    assert not [text for text in lines(done) if "NOTIFY" in text or "WATCHDOG" in text]
    systemd.wait_for("STATUS", "0 running, 0 queued")


def test_sighup_reloads_between_reloading_and_ready(notified: tuple[Worker, Systemd]) -> None:
    worker, systemd = notified
    systemd.wait_for("READY", "1")
    assert worker.process is not None
    before = time.monotonic_ns() // 1000
    worker.process.send_signal(signal.SIGHUP)
    reloading = systemd.wait_for("RELOADING", "1")
    assert before <= int(reloading["MONOTONIC_USEC"]) <= time.monotonic_ns() // 1000
    systemd.wait_for("READY", "1")
    assert [e["ok"] for e in worker.audit() if e["event"] == "daemon.reload"] == [True]


def test_sigterm_refuses_starts_lets_running_scripts_finish_then_exits(
    notified: tuple[Worker, Systemd],
) -> None:
    worker, systemd = notified
    systemd.wait_for("READY", "1")
    assert worker.process is not None
    body = "echo begun; sleep 2; echo finished"
    worker.call("PUT", "/v1/scripts/finishing", {"project": "web", "body": body})
    systemd.wait_for("STATUS", "1 running, 0 queued")
    worker.process.send_signal(signal.SIGTERM)
    stopping = systemd.wait_for("STOPPING", "1")
    assert 8_000_000 < int(stopping["EXTEND_TIMEOUT_USEC"]) <= 23_000_000
    assert "stopping" in stopping["STATUS"]
    status, problem = worker.call("PUT", "/v1/scripts/late", {"project": "web", "body": "true"})
    assert status == 503 and "stopping" in problem["detail"], problem
    assert worker.call("GET", "/v1/scripts/finishing")[0] == 200  # status is still answered
    assert worker.process.wait(20) == 0
    worker.process = None
    worker.start()
    done = worker.pages("finishing")[-1]
    assert (done["state"], done["exit_code"]) == ("complete", 0)
    assert lines(done) == ["begun", "finished"]
    assert worker.call("GET", "/v1/scripts/late")[0] == 404  # refused, so never recorded


def test_past_the_grace_running_scripts_are_cancelled_and_queued_ones_at_once(
    tmp_path: Path,
) -> None:
    for worker in _worker(tmp_path, server='stop_grace = "1s"', sandbox="max_concurrent = 1"):
        worker.call("PUT", "/v1/scripts/long", {"project": "web", "body": "echo up; sleep 60"})
        worker.call("PUT", "/v1/scripts/queued", {"project": "web", "body": "echo never"})
        time.sleep(0.5)
        assert worker.process is not None
        began = time.monotonic()
        worker.process.send_signal(signal.SIGTERM)
        assert worker.process.wait(20) == 0
        assert 1 <= time.monotonic() - began < 10
        worker.process = None
        worker.start()
        long, queued = worker.pages("long")[-1], worker.pages("queued")[-1]
        assert (long["exit_code"], lines(long)) == (-43, ["up"])
        assert any("the worker stopped" in text for text in lines(long, "debug"))
        assert queued["exit_code"] == -43 and "stopping" in queued["message"], queued
        assert lines(queued) == []


def _reload(worker: Worker) -> subprocess.CompletedProcess[str]:
    config = str(worker.home / "sandworker.toml")
    return subprocess.run(
        [SANDWORKER, "reload", "--config", config],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_reload_applies_policy_keeps_running_scripts_and_refuses_a_bad_file(
    worker: Worker,
) -> None:
    run = {"project": "api", "body": "echo hi", "wait_seconds": 20}
    status, problem = worker.call("PUT", "/v1/scripts/before", run)
    assert (status, "matches no [[project]] rule" in problem["detail"]) == (403, True), problem
    worker.call("PUT", "/v1/scripts/survivor", {"project": "web", "body": "sleep 2; echo kept"})
    policy = worker.home / "policies" / "p.toml"
    policy.write_text(POLICY + '[[project]]\nmatch = "api"\n')
    result = _reload(worker)
    assert (result.returncode, result.stdout.strip()) == (0, "reloaded"), result
    assert worker.call("PUT", "/v1/scripts/after", run)[1]["exit_code"] == 0
    pages = worker.pages("survivor")
    assert pages[-1]["exit_code"] == 0
    assert [text for page in pages for text in lines(page)] == ["kept"]

    policy.write_text(POLICY + '[[project]]\nmatch = "api"\ntimeout = "forever"\n')
    result = _reload(worker)
    assert result.returncode == 1, result
    assert "last good state" in result.stderr
    assert f"{policy}:8 project[2].timeout: invalid duration" in result.stderr, result.stderr
    again = {**run, "body": "echo still"}  # the last good policy stands
    assert worker.call("PUT", "/v1/scripts/still", again)[1]["exit_code"] == 0
    assert "reload failed" in worker.log
    scraped = scrape(worker).splitlines()
    assert "sandworker_reload_failing 1.0" in scraped
    assert "sandworker_reload_failures_total 1.0" in scraped
    audit = [e for e in worker.audit() if e["event"] == "daemon.reload"]
    assert [e["ok"] for e in audit] == [True, False]
    assert any("timeout" in p for p in audit[1]["problems"])


def test_reload_names_settings_that_need_a_restart(worker: Worker) -> None:
    config = worker.home / "sandworker.toml"
    config.write_text(config.read_text().replace("[server]", '[server]\nmax_body = "2MiB"', 1))
    result = _reload(worker)
    assert result.returncode == 0, result
    assert "server.max_body changed: it applies at the next start" in result.stdout
    config.write_text(config.read_text().replace('max_body = "2MiB"', "max_body = -1"))
    result = _reload(worker)
    assert result.returncode == 1 and "max_body" in result.stderr, result


def test_reload_without_a_daemon_says_so(tmp_path: Path) -> None:
    result = subprocess.run(
        [SANDWORKER, "reload", "--socket", str(tmp_path / "none.sock")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert f"no daemon answered at {tmp_path / 'none.sock'}" in result.stderr


def test_the_control_socket_is_root_only(worker: Worker) -> None:
    path = worker.state / "control.sock"
    assert (os.stat(path).st_mode & 0o777) == 0o600
    probe = "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])"
    result = subprocess.run(
        ["/usr/bin/python3", "-c", probe, str(path)],
        user=65534,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0 and "Permission denied" in result.stderr, result


@pytest.fixture
def delegated() -> Iterator[Path]:
    """A cgroup v2 group marked as systemd marks a Delegate=yes unit's, removed afterwards."""
    own = own_groups().get(V2)
    if own is None:
        pytest.skip("no cgroup v2 hierarchy is mounted")
    group = own / f"sw-delegated-{os.getpid()}"
    group.mkdir()
    os.setxattr(group, DELEGATE_XATTR, b"1")
    try:
        yield group
    finally:
        for leaf in [*group.glob(f"{PREFIX}*"), group / SUPERVISOR, group]:
            for _ in range(100):
                try:
                    leaf.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # (a process still leaving it)
                    time.sleep(0.05)


def test_under_delegation_the_daemon_moves_into_a_leaf_and_scripts_go_beside_it(
    delegated: Path,
    worker: Worker,  # (in this order: the worker stops before the group goes)
) -> None:
    worker.stop()
    worker.start(wrapper=["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', delegated])
    assert worker.process is not None
    assert (delegated / "cgroup.procs").read_text() == ""  # the group itself holds nothing
    supervisor = {int(pid) for pid in (delegated / SUPERVISOR / "cgroup.procs").read_text().split()}
    assert worker.process.pid in supervisor
    worker.call("PUT", "/v1/scripts/placed", {"project": "web", "body": "sleep 3"})
    deadline = time.monotonic() + 10
    while not (runs := list(delegated.glob(f"{PREFIX}*"))) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(runs) == 1, runs  # the script's group: a sibling of the supervisor's leaf
    pids = {int(pid) for pid in (runs[0] / "cgroup.procs").read_text().split()}
    assert pids and not pids & supervisor
    assert worker.pages("placed")[-1]["exit_code"] == 0
    assert not list(delegated.glob(f"{PREFIX}*"))  # removed with the run


def test_the_daemons_audit_log_verifies_and_tampering_fails_the_command(worker: Worker) -> None:
    body = "echo audited"
    run = {"project": "web", "body": body, "wait_seconds": 20}
    assert worker.call("PUT", "/v1/scripts/audited", run)[1]["exit_code"] == 0
    worker.stop()  # (the head is written at every sync, and at the stop)
    records = worker.audit()
    start = next(r for r in records if r["event"] == "script.start")
    assert start["sha256"] == hashlib.sha256(body.encode()).hexdigest()
    ran = next(r for r in records if r["event"] == "script.run")
    assert ran["uid"] == worker.uid_of("web")
    path = worker.state / "audit.jsonl"
    command = [SANDWORKER, "audit", "verify", "--config", str(worker.home / "sandworker.toml")]
    ok = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0 and ok.stdout.startswith(f"ok: {path}: "), ok
    path.write_text(path.read_text().replace('"audited"', '"other"', 1))
    bad = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 1 and "was edited or deleted" in bad.stdout, bad


def test_trust_changes_are_audited(worker: Worker) -> None:
    stranger = certificate_prints(worker.home / "stranger.crt").sha256
    home = ["--home", str(worker.home)]
    added = subprocess.run(
        [SANDWORKER, "trust", "add", stranger, *home],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert added.returncode == 0, added
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        changes = [e for e in worker.audit() if e["event"] == "trust.changed"]
        if changes:
            break
        time.sleep(0.2)
    assert [(c["added"], c["removed"]) for c in changes] == [([stranger], [])], changes


def test_the_units_umask_0077_does_not_reach_scripts(worker: Worker) -> None:
    worker.stop()
    worker.start(wrapper=["/bin/sh", "-c", 'umask 077 && exec "$@"', "umask"])
    body = "umask; echo x > f; stat -c %a f"
    done = worker.call("PUT", "/v1/scripts/u", {"project": "web", "body": body, "wait_seconds": 20})
    assert (done[1]["exit_code"], lines(done[1])) == (0, ["0022", "644"]), done


def test_no_watchdog_while_the_state_directory_is_gone(notified: tuple[Worker, Systemd]) -> None:
    worker, systemd = notified
    systemd.wait_for("READY", "1")
    systemd.wait_for("WATCHDOG", "1")
    moved = worker.state.with_name("moved-away")
    worker.state.rename(moved)
    try:
        time.sleep(0.5)  # (a message sent before the move may still be in the queue)
        seen = len(systemd.messages)
        time.sleep(1.5)  # seven intervals of 0.2 s
        assert not [m for m in systemd.messages[seen:] if "WATCHDOG" in m]
    finally:
        moved.rename(worker.state)
    systemd.wait_for("WATCHDOG", "1")  # healthy again
