"""`make run`'s daemon: `serve --dev` builds a development home; `script run` uses it."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.root
SANDWORKER = str(Path(sys.executable).with_name("sandworker"))


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    proc = subprocess.Popen(
        [SANDWORKER, "serve", "--dev"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    banner = []
    for line in proc.stdout:
        banner.append(line)
        if "listening on" in line:
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # drain its log
            break
    try:
        yield tmp_path / "dev-home", "".join(banner)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def script(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            SANDWORKER,
            "script",
            "run",
            "--profile",
            str(home / "profile.toml"),
            "--project",
            "demo",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_dev_home_and_a_pasted_command_work(dev: tuple[Path, str]) -> None:
    home, banner = dev
    assert "development mode, full isolation (root)" in banner
    assert "script run --profile" in banner and str(home / "profile.toml") in banner
    for name in ("worker.key", "client.key", "trust.toml"):
        assert (home / name).stat().st_mode & 0o077 == 0, name
    result = script(home, "-c", "echo hello; echo warn >&2; exit 7")
    assert result.stdout == "hello\n"
    assert "warn" in result.stderr and result.returncode == 7


def test_reserved_exit_codes_are_explained(dev: tuple[Path, str]) -> None:
    home, _ = dev
    result = script(home, "--timeout", "1", "-c", "sleep 30")
    assert result.returncode == 124
    assert "exit code -44: the script timed out" in result.stderr


def test_wrong_pin_is_refused_with_both_thumbprints(dev: tuple[Path, str]) -> None:
    home, _ = dev
    profile = home / "profile.toml"
    good = profile.read_text()
    actual = good.split('thumbprint = "')[1].split('"')[0]
    profile.write_text(good.replace(actual, "AB" * 32))
    try:
        result = script(home, "-c", "true")
    finally:
        profile.write_text(good)
    assert result.returncode == 125
    assert "expected SHA-256 " + "AB" * 32 in result.stderr and actual in result.stderr


def detached(home: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SANDWORKER, "script", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_the_detached_flow_with_the_profile_from_the_environment(dev: tuple[Path, str]) -> None:
    home, _ = dev
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/nonexistent",
        "SANDWORKER_PROFILE": str(home / "profile.toml"),
    }
    started = detached(
        home, "start", "--project", "demo", "-c", "echo one; sleep 1; echo two; exit 4", env=env
    )
    assert started.returncode == 0, started.stderr
    ticket = started.stdout.strip()
    followed = detached(home, "logs", ticket, "--follow", env=env)
    assert followed.returncode == 4 and followed.stdout == "one\ntwo\n", followed
    status = detached(home, "status", ticket, "--after", "0", "--wait", "1", env=env)
    assert "complete, exit code 4" in status.stderr, status
    assert detached(home, "logs", ticket, env=env).stdout == "one\ntwo\n"
    assert detached(home, "complete", ticket, env=env).returncode == 0


def test_the_default_profile_lives_in_the_users_config_directory(
    dev: tuple[Path, str], tmp_path: Path
) -> None:
    home, _ = dev
    config = tmp_path / "xdg" / "sandworker"
    config.mkdir(parents=True)
    for name in ("profile.toml", "client.crt", "client.key"):
        (config / name).write_bytes((home / name).read_bytes())
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/nonexistent",
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
    }
    started = detached(home, "start", "--project", "demo", "-c", "sleep 30", env=env)
    assert started.returncode == 0, started.stderr
    ticket = started.stdout.strip()
    assert detached(home, "cancel", ticket, env=env).returncode == 0
    followed = detached(home, "logs", ticket, "--follow", env=env)
    assert (
        followed.returncode == 130 and "exit code -43: the script was cancelled" in followed.stderr
    )
    missing = detached(home, "status", "x", env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert missing.returncode == 1 and "cannot use profile" in missing.stderr
    assert str(tmp_path / ".config" / "sandworker" / "profile.toml") in missing.stderr
