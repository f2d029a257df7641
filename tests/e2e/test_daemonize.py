"""`serve --daemonize` for hosts without systemd: a real detached daemon, its locked
pidfile, a script served, SIGTERM, and a crash that leaves no stale lock."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.e2e.daemon import SANDWORKER, Worker


class Detached:
    def __init__(self, worker: Worker, tmp_path: Path) -> None:
        self.config = str(worker.home / "sandworker.toml")
        self.pidfile = tmp_path / "run" / "sandworker.pid"
        self.pidfile.parent.mkdir()
        self.log = tmp_path / "daemon.log"
        self.started: list[int] = []

    def start(self) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [SANDWORKER, "serve", "--config", self.config, "--daemonize",
             "--pidfile", str(self.pidfile), "--log-file", str(self.log)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if result.returncode == 0:
            self.started.append(self.pid())
        return result

    def pid(self) -> int:
        return int(self.pidfile.read_text())

    def stop(self, pid: int, sig: int = signal.SIGTERM) -> None:
        with pytest.raises(psutil.NoSuchProcess):
            process = psutil.Process(pid)
            process.send_signal(sig)
            process.wait(30)
            process.status()  # (gone: raises)


@pytest.fixture
def detached(worker: Worker, tmp_path: Path) -> Iterator[Detached]:
    worker.stop()  # its configuration is used by the detached daemon instead
    d = Detached(worker, tmp_path)
    try:
        yield d
    finally:
        for pid in d.started:
            if psutil.pid_exists(pid):
                os.kill(pid, signal.SIGKILL)


def _held(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def test_a_detached_daemon_serves_holds_its_pidfile_and_stops_on_sigterm(
    detached: Detached, worker: Worker
) -> None:
    result = detached.start()
    assert result.returncode == 0, result
    pid = detached.pid()
    assert f"ready: pid {pid}, listening on 127.0.0.1:{worker.port}" in result.stdout
    assert _held(detached.pidfile)
    assert os.getsid(pid) != os.getsid(0)  # a session of its own (not its leader: no tty)
    assert os.stat(detached.log).st_mode & 0o777 == 0o600
    run = {"project": "web", "body": "echo detached", "wait_seconds": 20}
    done = worker.call("PUT", "/v1/scripts/d", run)[1]
    assert done["exit_code"] == 0, (done, detached.log.read_text()[-3000:])
    again = detached.start()
    assert again.returncode == 2, again
    assert f"is held by a running daemon (pid {pid})" in again.stderr
    detached.stop(pid)
    assert not detached.pidfile.exists()
    assert "Main loop terminated" in detached.log.read_text()


def test_a_crashed_daemon_leaves_no_stale_lock(detached: Detached) -> None:
    detached.pidfile.write_text("4194000\n")  # a pidfile nobody holds
    assert detached.start().returncode == 0
    crashed = detached.pid()
    detached.stop(crashed, signal.SIGKILL)
    assert detached.pidfile.exists() and not _held(detached.pidfile)
    result = detached.start()
    assert result.returncode == 0, result
    assert detached.pid() != crashed
    detached.stop(detached.pid())


def test_a_start_up_error_after_detaching_is_the_commands(
    detached: Detached, worker: Worker
) -> None:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", worker.port))
        taken.listen()
        result = detached.start()
    assert result.returncode == 2, result
    assert "cannot start" in result.stderr and str(worker.port) in result.stderr, result.stderr
    time.sleep(0.5)
    assert not detached.pidfile.exists()


def test_daemonize_needs_a_pidfile(worker: Worker) -> None:
    config = str(worker.home / "sandworker.toml")
    result = subprocess.run(
        [SANDWORKER, "serve", "--config", config, "--daemonize"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "--daemonize needs --pidfile" in result.stderr
