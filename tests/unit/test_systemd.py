"""The notify wrapper on real datagram sockets: what it reads from the environment, the
messages it sends, and that it never raises or blocks."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from sandworker.daemon.systemd import Notifier


def _receiver(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    return sock


def test_the_environment_is_read_once_and_removed(tmp_path: Path) -> None:
    env = {
        "NOTIFY_SOCKET": str(tmp_path / "n"),
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": str(os.getpid()),
        "PATH": "/usr/bin",
    }
    notifier = Notifier.from_environment(env)
    assert env == {"PATH": "/usr/bin"}
    assert notifier.watchdog_interval == 15.0
    other = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}
    assert Notifier.from_environment(other).watchdog_interval is None  # another process's
    assert Notifier.from_environment({}).watchdog_interval is None
    Notifier.from_environment({}).ready("nothing to notify: no error")


def test_messages_on_a_path_and_on_an_abstract_socket(tmp_path: Path) -> None:
    with _receiver(tmp_path / "n") as sock:
        notifier = Notifier(str(tmp_path / "n"))
        notifier.ready("2 running,\n0 queued")
        assert sock.recv(4096) == b"READY=1\nSTATUS=2 running, 0 queued"  # one line a field
        notifier.stopping("stopping", extend_seconds=12.5)
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping\nEXTEND_TIMEOUT_USEC=12500000"
        notifier.reloading()
        reloading = dict(f.split("=") for f in sock.recv(4096).decode().splitlines())
        assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
    name = f"@sandworker-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name[1:])
        sock.settimeout(5)
        Notifier(name).watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_a_gone_or_full_socket_is_logged_never_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    Notifier(str(tmp_path / "missing")).status("x")
    Notifier(str(tmp_path / "missing")).status("x")
    assert "cannot notify systemd" in caplog.text
    with _receiver(tmp_path / "slow"):
        notifier = Notifier(str(tmp_path / "slow"))
        for _ in range(1000):  # nobody reads: the queue fills, and sending goes on at once
            notifier.watchdog()
