"""Dynamic project accounts: stable, unique, never an id NSS knows, persisted safely."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from sandworker.sandbox import accounts
from sandworker.sandbox.accounts import AccountError, Accounts
from sandworker.sandbox.atomic import write_atomic
from sandworker.sandbox.settings import SandboxSettings


def test_uids_are_stable_and_distinct(tmp_path: Path) -> None:
    acc = Accounts(tmp_path, (420000, 420010))
    blue = acc.for_project("blue", "dynamic")
    red = acc.for_project("red", "dynamic")
    assert blue.uid != red.uid and blue.gid == blue.uid
    assert Accounts(tmp_path, (420000, 420010)).for_project("blue", "dynamic") == blue
    path = tmp_path / "accounts.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"blue": blue.uid, "red": red.uid}


def test_ids_known_to_nss_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accounts, "_known_to_nss", lambda uid: uid in (420000, 420001))
    assert Accounts(tmp_path, (420000, 420005)).for_project("blue", "dynamic").uid == 420002


def test_exhausted_range_says_to_widen_it(tmp_path: Path) -> None:
    acc = Accounts(tmp_path, (420000, 420000))
    acc.for_project("blue", "dynamic")
    with pytest.raises(AccountError, match="no free uid left in the dynamic range 420000-420000"):
        acc.for_project("red", "dynamic")


def test_corrupt_map_is_refused_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "accounts.json").write_text("{not json")
    with pytest.raises(AccountError, match="corrupt"):
        Accounts(tmp_path, (420000, 420010)).for_project("blue", "dynamic")
    assert (tmp_path / "accounts.json").read_text() == "{not json"


def test_named_accounts(tmp_path: Path) -> None:
    acc = Accounts(tmp_path, (420000, 420010))
    assert acc.for_project("blue", "nobody").uid == 65534
    with pytest.raises(AccountError, match="scripts never run as root"):
        acc.for_project("blue", "root")
    with pytest.raises(AccountError, match="does not exist"):
        acc.for_project("blue", "no-such-account-here")


@pytest.mark.parametrize("bad", [(1000, 2000), (60000, 70000), (500000, 600000), (420010, 420000)])
def test_uid_range_must_lie_outside_systemd_ranges(bad: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="must lie inside 65536-524287"):
        SandboxSettings(state_dir=Path("/nonexistent"), uid_range=bad)


def test_relative_interpreter_is_refused() -> None:
    with pytest.raises(ValueError, match="absolute path"):
        SandboxSettings(state_dir=Path("/x"), interpreters={"python": "python3"})


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "f"
    write_atomic(target, b"one")
    write_atomic(target, b"two", mode=0o640)
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640
    assert os.listdir(tmp_path) == ["f"]


def test_ids_held_by_running_processes_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accounts, "_uids_of_running_processes", lambda: {420000})
    assert Accounts(tmp_path, (420000, 420005)).for_project("blue", "dynamic").uid == 420001


def test_running_process_scan_sees_this_process() -> None:
    assert os.getuid() in accounts._uids_of_running_processes()
