"""The systemd files as a sysadmin installs them: the unit passes `systemd-analyze verify`
and `security` (threshold 4.5), and `make install-service` lays out the files, groups
and modes (staged with DESTDIR; its sysusers and tmpfiles run against that root)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "sandworker.service"
SANDWORKER = str(Path(sys.executable).with_name("sandworker"))
THRESHOLD = 4.5

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def _testable_unit(tmp_path: Path) -> Path:
    """The unit with its commands at this checkout's `sandworker` (verify wants them to
    exist and be executable; everything else as shipped)."""
    unit = tmp_path / "sandworker.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/sandworker", SANDWORKER))
    return unit


def test_the_unit_verifies_without_errors_or_warnings(tmp_path: Path) -> None:
    result = _run(
        "systemd-analyze", "verify", "--recursive-errors=yes", "--man=no",
        str(_testable_unit(tmp_path)),
    )  # fmt: skip
    assert result.returncode == 0, result
    assert "sandworker.service" not in result.stdout + result.stderr, result


def test_the_unit_scores_at_most_4_5_exposure(tmp_path: Path) -> None:
    result = _run(
        "systemd-analyze", "security", "--offline=true", f"--threshold={THRESHOLD * 10:.0f}",
        "--no-pager", str(_testable_unit(tmp_path)),
    )  # fmt: skip
    found = re.search(r"Overall exposure level for sandworker.service: (\d+\.\d)", result.stdout)
    assert found, result
    print(f"systemd-analyze security: {found[1]}")
    assert result.returncode == 0 and float(found[1]) <= THRESHOLD, result.stdout[-2000:]


def test_the_unit_commands_and_the_shipped_config_are_valid() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "NotifyAccess=main", "KillMode=mixed", "Delegate=yes"):
        assert line in text.splitlines()
    start = re.search(r"^ExecStart=/usr/local/bin/sandworker (.*)$", text, re.M)
    reload = re.search(r"^ExecReload=/usr/local/bin/sandworker (.*)$", text, re.M)
    assert start and reload
    assert start[1].split()[:2] == ["serve", "--config"]
    assert reload[1].split()[:2] == ["reload", "--config"]
    for args in (start[1].split(), reload[1].split()):
        assert _run(SANDWORKER, args[0], "--help").returncode == 0
    result = _run(SANDWORKER, "config", "check", str(REPO / "systemd" / "sandworker.toml"))
    assert result.returncode == 0, result


def test_make_install_service_lays_out_groups_files_and_modes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    result = _run("make", "-s", "-C", str(REPO), "install-service", f"DESTDIR={root}")
    assert result.returncode == 0, result
    groups = dict(
        (line.split(":")[0], int(line.split(":")[2]))
        for line in (root / "etc" / "group").read_text().splitlines()
    )
    gid = groups["sandworker"]
    etc = root / "etc" / "sandworker"
    for path, mode in (
        (etc, 0o750),
        (etc / "policies", 0o750),
        (etc / "sandworker.toml", 0o640),
        (etc / "policies" / "default.toml", 0o640),
        (etc / "policies" / "strict.toml", 0o640),
    ):
        st = path.stat()
        assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (mode, 0, gid), path
    unit = root / "etc" / "systemd" / "system" / "sandworker.service"
    assert unit.read_text() == UNIT.read_text()
    assert (root / "usr/lib/sysusers.d/sandworker.conf").exists()
    assert (root / "usr/lib/tmpfiles.d/sandworker.conf").exists()
    (etc / "sandworker.toml").write_text("# the sysadmin's own\n")  # kept by a reinstall
    result = _run("make", "-s", "-C", str(REPO), "install-service", f"DESTDIR={root}")
    assert result.returncode == 0, result
    assert (etc / "sandworker.toml").read_text() == "# the sysadmin's own\n"
    dry = _run(
        "systemd-sysusers", f"--root={root}", "--dry-run", str(REPO / "systemd/sandworker.sysusers")
    )
    assert dry.returncode == 0, dry


def test_make_install_venv_gives_a_working_command(tmp_path: Path) -> None:
    root = tmp_path / "root"
    result = _run("make", "-s", "-C", str(REPO), "install-venv", f"DESTDIR={root}")
    assert result.returncode == 0, result
    link = root / "usr" / "local" / "bin" / "sandworker"
    assert os.readlink(link) == "/opt/sandworker/bin/sandworker"  # where it will be
    staged = root / "opt" / "sandworker" / "bin" / "sandworker"
    assert _run(str(staged), "--version").stdout.startswith("sandworker ")
    check = _run(str(staged), "config", "check", str(REPO / "systemd" / "sandworker.toml"))
    assert check.returncode == 0, check
