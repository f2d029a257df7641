"""The audit log's hash chain: every kind of tampering is found, and named."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from sandworker.daemon.audit import GENESIS, HEAD_FILE, AuditLog, Event, line_hash, verify


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    for n in range(5):
        audit.record(Event.SCRIPT_START, ticket=f"t{n}", project="web")
    audit.close()
    return path


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_records_chain_and_the_head_matches(log_path: Path) -> None:
    lines = _lines(log_path)
    first, second = json.loads(lines[0]), json.loads(lines[1])
    assert (first["seq"], first["prev"]) == (1, GENESIS)
    assert second["prev"] == line_hash(lines[0].rstrip(b"\n"))
    verdict = verify(log_path)
    assert verdict.ok and verdict.records == 5, verdict
    assert "the end matches" in verdict.message
    for path in (log_path, log_path.with_name(HEAD_FILE)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_reopened_log_chains_on(log_path: Path) -> None:
    audit = AuditLog(log_path)
    audit.record(Event.DAEMON_START, pid=1)
    audit.close()
    last = json.loads(_lines(log_path)[-1])
    assert last["seq"] == 6
    assert verify(log_path).ok


def test_an_edited_record_is_named(log_path: Path) -> None:
    lines = _lines(log_path)
    lines[2] = lines[2].replace(b'"t2"', b'"t9"')
    log_path.write_bytes(b"".join(lines))
    verdict = verify(log_path)
    assert not verdict.ok
    assert verdict.message.startswith("record 3 was edited or deleted"), verdict


def test_a_deleted_record_is_named(log_path: Path) -> None:
    lines = _lines(log_path)
    del lines[2]
    log_path.write_bytes(b"".join(lines))
    verdict = verify(log_path)
    assert not verdict.ok and "line 3 holds record 4" in verdict.message, verdict


def test_records_cut_off_the_end_are_found_by_the_head(log_path: Path) -> None:
    log_path.write_bytes(b"".join(_lines(log_path)[:3]))
    verdict = verify(log_path)
    assert not verdict.ok and "truncated" in verdict.message and "5 records" in verdict.message


def test_an_edited_last_record_is_found_by_the_head(log_path: Path) -> None:
    lines = _lines(log_path)
    lines[-1] = lines[-1].replace(b'"t4"', b'"t8"')
    log_path.write_bytes(b"".join(lines))
    verdict = verify(log_path)
    assert not verdict.ok and "record 5 differs" in verdict.message, verdict


def test_a_torn_record_is_reported_and_the_log_goes_on(log_path: Path) -> None:
    with log_path.open("ab") as f:
        f.write(b'{"seq": 6, "ti')  # a crash in the middle of a write
    audit = AuditLog(log_path)
    audit.record(Event.DAEMON_START, pid=1)
    audit.close()
    verdict = verify(log_path)
    assert not verdict.ok and "record 6 (line 6) is not a whole JSON record" in verdict.message


def test_a_log_rotated_by_copytruncate_verifies_with_its_rotated_files(log_path: Path) -> None:
    rotated = log_path.with_name("audit.jsonl.1")
    rotated.write_bytes(log_path.read_bytes())  # logrotate's copytruncate
    log_path.write_bytes(b"")
    audit = AuditLog(log_path)
    audit.record(Event.DAEMON_START, pid=1)  # (a running daemon chains on from memory)
    audit.close()
    assert not verify(log_path).ok  # alone, its first record follows others
    verdict = verify(log_path, rotated)
    assert verdict.ok and verdict.records == 6, verdict
