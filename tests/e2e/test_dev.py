"""`make run`'s daemon: `serve --dev` builds a development home; `script run` uses it."""

from __future__ import annotations

import signal
import subprocess
import sys
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
