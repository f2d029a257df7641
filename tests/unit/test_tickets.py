"""Durable tickets: ids, states, exit codes, log framing, persistence, recovery and purge."""

from __future__ import annotations

import errno
import json
import os
import random
import stat
import subprocess
import time
from collections.abc import Iterator
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any

import pytest

from sandworker.daemon import prepared, ticketlog, tickets, ticketstore
from sandworker.daemon.ticketlog import INDEX_STRIDE, LineFramer, escape
from sandworker.daemon.tickets import (
    CANCELLED,
    FATAL,
    LOST_MESSAGE,
    RESULT_LOST,
    TIMEOUT,
    InvalidTicketId,
    InvalidTransition,
    State,
    TicketStoreError,
    exit_code_for,
    ticket_key,
)
from sandworker.daemon.ticketstore import TicketStore
from sandworker.sandbox.outcome import Outcome, Reason

REQUEST: dict[str, Any] = {"project": "web", "syntax": "bash", "body": "echo hi"}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[TicketStore]:
    opened = TicketStore(tmp_path / "state", clock=clock)
    yield opened
    opened.close()


def reopen(store: TicketStore, clock: Clock) -> tuple[TicketStore, ticketstore.Recovery]:
    """What a restarted daemon sees: a fresh store over the same directory."""
    store.close()
    fresh = TicketStore(store.state_dir, clock=clock)
    return fresh, fresh.recover()


def texts(ticket: tickets.Ticket, after: int = -1) -> list[tuple[str, str]]:
    return [(line["source"], line["text"]) for line in ticket.read_after(after, 1_000_000)]


# --- ids ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("good", ["a", "Ab-9._x", "x" * 128, ".hidden", "a..b"])
def test_valid_ids_normalise_to_lower_case(good: str) -> None:
    assert ticket_key(good) == good.lower()


@pytest.mark.parametrize(
    "bad", ["", ".", "..", "...", "x" * 129, "a/b", "a\\b", "a\nb", "a\x00b", "é", "a b", 7, None]
)
def test_traversal_and_control_characters_in_ids_are_refused(bad: object) -> None:
    with pytest.raises(InvalidTicketId, match="not allowed"):
        ticket_key(bad)


def test_ids_are_case_insensitive_so_a_retry_in_another_case_finds_the_ticket(
    store: TicketStore,
) -> None:
    ticket, new = store.create("AbC", REQUEST)
    again, new_again = store.create("abc", REQUEST)
    assert (new, new_again) == (True, False)
    assert again is ticket and ticket.id == "AbC"
    assert store.get("ABC") is ticket
    assert (store.state_dir / "tickets" / "abc").is_dir()


# --- states and exit codes --------------------------------------------------------------------


def test_allowed_transitions() -> None:
    State.PENDING.check(State.RUNNING)
    State.PENDING.check(State.COMPLETE)
    State.RUNNING.check(State.COMPLETE)


@pytest.mark.parametrize(
    ("start", "target"),
    [
        (State.RUNNING, State.PENDING),
        (State.COMPLETE, State.RUNNING),
        (State.COMPLETE, State.PENDING),
        (State.COMPLETE, State.COMPLETE),
        (State.RUNNING, State.RUNNING),
    ],
)
def test_other_transitions_are_refused(start: State, target: State) -> None:
    with pytest.raises(InvalidTransition):
        start.check(target)


def test_a_finished_ticket_cannot_run_again_or_take_output(store: TicketStore) -> None:
    ticket, _ = store.create("t1", REQUEST)
    ticket.running()
    ticket.finish(0, "exited", "")
    with pytest.raises(InvalidTransition, match="t1"):
        ticket.running()
    with pytest.raises(InvalidTransition):
        ticket.output("stdout", b"late\n")


@pytest.mark.parametrize(
    ("reason", "code", "sig", "expected"),
    [
        (Reason.EXITED, 3, None, 3),
        (Reason.EXITED, 0, None, 0),
        (Reason.EXITED, None, "SIGKILL", 137),
        (Reason.EXITED, None, "SIGTERM", 143),
        (Reason.TIMEOUT, None, "SIGKILL", TIMEOUT),
        (Reason.CANCELLED, None, "SIGKILL", CANCELLED),
        (Reason.REFUSED, None, None, FATAL),
        (Reason.SETUP_FAILED, 127, None, FATAL),
        (Reason.LOST, None, None, FATAL),
        (Reason.MEMORY, None, "SIGKILL", FATAL),
        (Reason.OUTPUT, None, "SIGKILL", FATAL),
        (Reason.CPU, None, "SIGXCPU", FATAL),
        (Reason.FILE_SIZE, None, "SIGXFSZ", FATAL),
    ],
)
def test_exit_code_mapping(
    reason: Reason, code: int | None, sig: str | None, expected: int
) -> None:
    assert exit_code_for(Outcome(reason, code, sig, "m")) == expected


def test_every_reason_has_an_exit_code() -> None:
    for reason in Reason:
        exit_code_for(Outcome(reason, 0, None, ""))


# --- framing ----------------------------------------------------------------------------------


def unescaped(lines: list[bytes]) -> list[str]:
    """The framer's escaped lines back as the texts a client decodes."""
    return [json.loads(b'"' + line + b'"') for line in lines]


def fed(framer: LineFramer, data: bytes) -> list[str]:
    return unescaped(framer.feed(data))


def test_framer_splits_on_newlines_and_keeps_a_partial_line_until_flush() -> None:
    framer = LineFramer()
    assert fed(framer, b"one\ntwo\n\nthr") == ["one", "two", ""]
    assert fed(framer, b"ee") == []
    assert unescaped(framer.flush()) == ["three"]
    assert unescaped(framer.flush()) == []


def test_framer_crlf_ends_a_line_and_a_bare_cr_stays_text() -> None:
    framer = LineFramer()
    assert fed(framer, b"a\r\nprogress 1\rprogress 2\r") == ["a"]
    assert fed(framer, b"\n") == ["progress 1\rprogress 2"]


def test_framer_splits_long_lines_and_bounds_an_unfinished_one() -> None:
    framer = LineFramer(limit=4)
    assert fed(framer, b"abcdefghij\n") == ["abcd", "efgh", "ij"]
    assert fed(framer, b"0123") == []
    assert fed(framer, b"45678") == ["0123", "4567"]
    assert fed(framer, b"\n") == ["8"]


def test_framer_line_of_exactly_the_limit_is_one_line() -> None:
    assert fed(LineFramer(limit=4), b"abcd\n") == ["abcd"]


def test_framer_keeps_multibyte_characters_split_across_chunks() -> None:
    framer = LineFramer()
    data = "héllo €\n".encode()
    out = [line for byte in data for line in fed(framer, bytes([byte]))]
    assert out == ["héllo €"]


def test_framer_replaces_invalid_utf8_including_a_truncated_tail() -> None:
    framer = LineFramer()
    assert fed(framer, b"a\xff\xfeb\n\xe2\x82") == ["a\ufffd\ufffdb"]
    assert unescaped(framer.flush()) == ["\ufffd"]


def _random_output(rng: random.Random, size: int) -> bytes:
    pieces = [
        b"plain text ",
        b"\n",
        b'"',
        b"\\",
        b"\r",
        b"\t",
        b"\x00",
        b"\xff",
        b"\xe2\x82",
        "é€😀".encode(),
        b"x" * 70,
    ]
    return b"".join(rng.choice(pieces) for _ in range(size))


def test_framer_gives_the_same_lines_however_the_output_is_chunked() -> None:
    # The plain-ASCII fast path and the decoding path must agree, wherever a chunk ends.
    rng = random.Random(99)  # noqa: S311 - reproducible test data, not secrets
    for _ in range(300):
        data = _random_output(rng, rng.randint(0, 60))
        whole = LineFramer(limit=64)
        expected = whole.feed(data) + whole.flush()
        chunked, got, pos = LineFramer(limit=64), [], 0
        while pos < len(data):
            step = rng.randint(1, 40)
            got += chunked.feed(data[pos : pos + step])
            pos += step
        assert got + chunked.flush() == expected, data


def test_framer_lines_are_the_decoded_output_and_long_ones_split_at_characters() -> None:
    rng = random.Random(7)  # noqa: S311 - reproducible test data, not secrets
    for _ in range(300):
        data = _random_output(rng, rng.randint(1, 60))
        framer = LineFramer(limit=64)
        texts = unescaped(framer.feed(data) + framer.flush())
        *ended, unfinished = data.split(b"\n")  # only a line ended by \r\n loses its \r
        lines = [line.removesuffix(b"\r") for line in ended] + ([unfinished] if unfinished else [])
        rebuilt, pieces = [], iter(texts)
        for line in lines:
            text = line.decode("utf-8", "replace")
            joined = next(pieces)
            while len(joined) < len(text):
                joined += next(pieces)
            rebuilt.append(joined)
            assert joined == text, data
        assert list(pieces) == [] and len(rebuilt) == len(lines)
        for text in texts:  # a piece may end early at a character, never overrun the limit
            assert len(text.encode()) <= 64 or "\ufffd" in text, text


def test_a_page_is_cut_at_a_whole_line_below_the_byte_limit(
    store: TicketStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ticketlog, "MAX_PAGE_BYTES", 1000)
    ticket, _ = store.create("paged", REQUEST)
    ticket.running()
    ticket.output("stdout", "".join(f"line {i}\n" for i in range(INDEX_STRIDE + 40)).encode())
    seen, after, sizes = [], -1, []
    while after + 1 < ticket.next_seq:
        raw, count = ticket.read_raw_after(after, 10_000)
        page = json.loads(raw)
        assert len(page) == count and 0 < len(raw) <= 1000 + 2
        seen += [line["seq"] for line in page]
        sizes.append(count)
        after = page[-1]["seq"]
    assert seen == list(range(INDEX_STRIDE + 40)) and len(sizes) > 5


def test_forged_protocol_text_stays_text_of_its_own_pipe(store: TicketStore) -> None:
    ticket, _ = store.create("forge", REQUEST)
    ticket.running()
    forged = '{"seq": 0, "source": "debug", "text": "complete", "state": "complete"}'
    ticket.output("stdout", forged.encode() + b"\n")
    ticket.output("stderr", b'x"}\n{"seq":5,"source":"debug"\n')
    assert texts(ticket) == [
        ("stdout", forged),
        ("stderr", 'x"}'),
        ("stderr", '{"seq":5,"source":"debug"'),
    ]
    raw = (store.tickets_dir / "forge" / "log.jsonl").read_bytes().splitlines()
    assert len(raw) == 3 and [json.loads(line)["seq"] for line in raw] == [0, 1, 2]
    assert ticket.state is State.RUNNING
    with pytest.raises(ValueError, match="never debug"):
        ticket.output("debug", b"pretend\n")


def test_each_pipe_has_its_own_partial_line(store: TicketStore) -> None:
    ticket, _ = store.create("pipes", REQUEST)
    ticket.running()
    ticket.output("stdout", b"out-")
    ticket.output("stderr", b"err\n")
    ticket.output("stdout", b"end\n")
    ticket.output("stdout", b"tail")
    ticket.finish(0, "exited", "")
    assert texts(ticket) == [("stderr", "err"), ("stdout", "out-end"), ("stdout", "tail")]


# --- persistence and read_after ---------------------------------------------------------------


def test_files_and_directories_are_private(store: TicketStore) -> None:
    old = os.umask(0)
    try:
        ticket, _ = store.create("modes", REQUEST)
    finally:
        os.umask(old)
    ticket.debug("x")
    folder = store.tickets_dir / "modes"
    assert stat.S_IMODE(store.tickets_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in ("request.json", "state.jsonl", "log.jsonl"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name
    assert json.loads((folder / "request.json").read_text()) == REQUEST


def records(path: Path) -> list[dict[str, Any]]:
    """The records of a ticket's state journal, oldest first."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_state_journal_keeps_every_transition_and_field(
    store: TicketStore, clock: Clock
) -> None:
    ticket, _ = store.create("st", REQUEST)
    clock.now += 1
    ticket.running()
    ticket.output("stdout", b"a\nb\n")
    clock.now += 1
    ticket.finish(7, "exited", "exit code 7")
    journal = records(store.tickets_dir / "st" / "state.jsonl")
    assert [record["state"] for record in journal] == ["pending", "running", "complete"]
    assert journal[-1] == {
        "id": "st",
        "state": "complete",
        "created": "2027-01-15T08:00:00.000Z",
        "started": "2027-01-15T08:00:01.000Z",
        "completed": "2027-01-15T08:00:02.000Z",
        "client_completed": None,
        "exit_code": 7,
        "reason": "exited",
        "message": "exit code 7",
        "log_lines": 2,
        "worker": None,
        "accepted": False,
        "outputs": {},
        "artifacts": [],
        "progress": None,
        "result_message": None,
    }


def test_log_lines_carry_seq_source_time_and_text(store: TicketStore) -> None:
    ticket, _ = store.create("lines", REQUEST)
    ticket.debug("starting\nin two lines")
    line = ticket.read_after(-1, 10)[0]
    assert line == {
        "seq": 0,
        "source": "debug",
        "time": "2027-01-15T08:00:00.000Z",
        "text": "starting",
    }
    assert ticket.next_seq == 2


def test_read_after_pages_through_many_lines_across_index_strides(store: TicketStore) -> None:
    ticket, _ = store.create("many", REQUEST)
    ticket.running()
    total = INDEX_STRIDE * 3 + 17
    ticket.output("stdout", "".join(f"line {i}\n" for i in range(total)).encode())
    assert ticket.next_seq == total
    for after in (-1, 0, INDEX_STRIDE - 2, INDEX_STRIDE - 1, INDEX_STRIDE, total - 2, total - 1):
        lines = ticket.read_after(after, 5)
        expected = list(range(after + 1, min(after + 6, total)))
        assert [line["seq"] for line in lines] == expected
        assert [line["text"] for line in lines] == [f"line {i}" for i in expected]
    assert ticket.read_after(total + 5, 5) == []
    assert ticket.read_after(-1, 0) == []
    ticket.finish(0, "exited", "")  # closed: reads reopen the file
    assert [line["seq"] for line in ticket.read_after(INDEX_STRIDE * 2 + 3, 2)] == [
        INDEX_STRIDE * 2 + 4,
        INDEX_STRIDE * 2 + 5,
    ]


def test_finished_tickets_hold_no_descriptor(store: TicketStore) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for n in range(20):
        ticket, _ = store.create(f"fd{n}", REQUEST)
        ticket.running()
        ticket.output("stdout", b"x\n")
        ticket.finish(0, "exited", "")
        ticket.read_after(-1, 10)
    assert len(os.listdir("/proc/self/fd")) == before


# --- recovery ---------------------------------------------------------------------------------


def test_restart_restores_finished_tickets_and_marks_interrupted_ones_lost(
    store: TicketStore, clock: Clock
) -> None:
    done, _ = store.create("Done", REQUEST)
    done.running()
    done.output("stdout", b"finished output\n")
    done.finish(0, "exited", "")
    running, _ = store.create("run", REQUEST)
    running.running()
    running.output("stdout", b"persisted before the crash\nunfinished")
    store.create("queued", REQUEST)

    fresh, recovery = reopen(store, clock)
    try:
        assert sorted(recovery.restored) == ["Done", "queued", "run"]
        assert sorted(recovery.lost) == ["queued", "run"]
        assert recovery.problems == []
        done_again = fresh.get("done")
        assert done_again is not None and done_again.exit_code == 0
        assert texts(done_again) == [("stdout", "finished output")]
        lost = fresh.get("run")
        assert lost is not None and lost.state is State.COMPLETE
        assert (lost.exit_code, lost.message) == (RESULT_LOST, LOST_MESSAGE)
        assert texts(lost) == [("stdout", "persisted before the crash"), ("debug", LOST_MESSAGE)]
        queued = fresh.get("queued")
        assert queued is not None and queued.exit_code == RESULT_LOST
    finally:
        fresh.close()
    # The lost state was persisted: a second restart finds it complete, nothing more lost.
    again = TicketStore(store.state_dir, clock=clock)
    assert again.recover().lost == []
    again.close()


def test_torn_last_line_is_cut_away_not_fatal(store: TicketStore, clock: Clock) -> None:
    ticket, _ = store.create("torn", REQUEST)
    ticket.running()
    ticket.output("stdout", b"kept\n")
    with (store.tickets_dir / "torn" / "log.jsonl").open("ab") as log:
        log.write(b'{"seq": 1, "source": "stdout", "ti')
    fresh, recovery = reopen(store, clock)
    try:
        assert any("torn last line" in problem for problem in recovery.problems)
        recovered = fresh.get("torn")
        assert recovered is not None
        assert texts(recovered) == [("stdout", "kept"), ("debug", LOST_MESSAGE)]
        raw = (fresh.tickets_dir / "torn" / "log.jsonl").read_bytes()
        assert raw.endswith(b"\n") and [json.loads(x)["seq"] for x in raw.splitlines()] == [0, 1]
    finally:
        fresh.close()


def test_garbage_whole_last_line_is_cut_away(store: TicketStore, clock: Clock) -> None:
    ticket, _ = store.create("garbage", REQUEST)
    ticket.running()
    ticket.output("stdout", b"kept\n")
    with (store.tickets_dir / "garbage" / "log.jsonl").open("ab") as log:
        log.write(b"\x00\x00\x00\n")
    fresh, _ = reopen(store, clock)
    recovered = fresh.get("garbage")
    assert recovered is not None
    assert texts(recovered) == [("stdout", "kept"), ("debug", LOST_MESSAGE)]
    fresh.close()


def test_corrupt_state_is_reported_and_the_ticket_still_answers_lost(
    store: TicketStore, clock: Clock
) -> None:
    ticket, _ = store.create("bad", REQUEST)
    ticket.running()
    ticket.output("stdout", b"before\n")
    ticket.finish(0, "exited", "")
    (store.tickets_dir / "bad" / "state.jsonl").write_bytes(b'{"state": "compl"\n')
    fresh, recovery = reopen(store, clock)
    try:
        assert recovery.lost == ["bad"]
        assert len(recovery.problems) == 1 and "state.jsonl is corrupt" in recovery.problems[0]
        recovered = fresh.get("bad")
        assert recovered is not None and recovered.exit_code == RESULT_LOST
        assert recovered.project == "web"
        assert texts(recovered)[0] == ("stdout", "before")
        assert "corrupt" in texts(recovered)[-1][1]
    finally:
        fresh.close()


def test_a_directory_without_request_was_never_acknowledged_and_is_removed(
    store: TicketStore, clock: Clock
) -> None:
    (store.tickets_dir / "half").mkdir(mode=0o700)
    (store.tickets_dir / "half" / "log.jsonl").write_bytes(b"")
    fresh, recovery = reopen(store, clock)
    assert fresh.get("half") is None and not (fresh.tickets_dir / "half").exists()
    assert "never acknowledged" in recovery.problems[0]
    fresh.close()


def test_recovery_leaves_symlinks_and_odd_names_alone(
    store: TicketStore, clock: Clock, tmp_path: Path
) -> None:
    (tmp_path / "elsewhere").mkdir()
    (store.tickets_dir / "link").symlink_to(tmp_path / "elsewhere")
    (store.tickets_dir / "UPPER").mkdir()
    fresh, recovery = reopen(store, clock)
    assert fresh.all() == [] and len(recovery.problems) == 2
    assert (tmp_path / "elsewhere").is_dir() and (store.tickets_dir / "link").is_symlink()
    fresh.close()


def test_create_refuses_a_directory_it_has_not_loaded(store: TicketStore) -> None:
    (store.tickets_dir / "ghost").mkdir(mode=0o700)
    with pytest.raises(TicketStoreError, match="recover"):
        store.create("ghost", REQUEST)


# --- client complete and purge ----------------------------------------------------------------


def test_purge_removes_tickets_a_day_after_they_finished_or_were_collected(
    store: TicketStore, clock: Clock
) -> None:
    day = tickets.DEFAULT_PURGE_AGE
    names = ("abandoned", "collected", "young", "live")
    made = {name: store.create(name, REQUEST)[0] for name in names}
    for name in ("abandoned", "collected"):
        made[name].finish(0, "exited", "")
    with pytest.raises(InvalidTransition, match="cancel it first"):
        store.complete("live")
    clock.now += 3600
    made["young"].finish(0, "exited", "")
    clock.now += 3600
    store.complete("Collected")  # counted from the client's complete, not from the end
    clock.now += day - 2 * 3600 + 1
    assert store.purge() == [made["abandoned"]]
    assert sorted(os.listdir(store.tickets_dir)) == ["collected", "live", "young"]
    assert store.get("abandoned") is None
    clock.now += 3600
    assert store.purge() == [made["young"]]
    clock.now += 3600
    assert store.purge() == [made["collected"]]
    clock.now += 10 * day
    assert store.purge() == [] and sorted(os.listdir(store.tickets_dir)) == ["live"]


# --- full disk --------------------------------------------------------------------------------


def test_enospc_on_create_raises_clearly_and_leaves_nothing(
    store: TicketStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept, _ = store.create("kept", REQUEST)
    kept.debug("accepted earlier")

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(TicketStoreError, match=r"cannot persist ticket new: No space left on dev"):
        store.create("new", REQUEST)
    with pytest.raises(TicketStoreError, match="No space left"):
        kept.debug("more")
    with pytest.raises(TicketStoreError, match="No space left"):
        kept.finish(0, "exited", "")
    assert kept.state is State.PENDING  # the failed transition was not applied
    monkeypatch.undo()
    assert sorted(os.listdir(store.tickets_dir)) == ["kept"]
    assert texts(kept) == [("debug", "accepted earlier")]
    assert records(store.tickets_dir / "kept" / "state.jsonl")[-1]["state"] == "pending"


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", mount], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", mount], check=True)


@pytest.mark.root
@pytest.mark.parametrize("ahead", [False, True], ids=["made-on-demand", "prepared-ahead"])
def test_a_really_full_disk_refuses_new_tickets_and_keeps_accepted_ones(
    tiny_disk: Path, clock: Clock, ahead: bool
) -> None:
    store = TicketStore(tiny_disk / "state", clock=clock)
    if ahead:
        store.prepare_ahead()
    try:
        first, _ = store.create("first", REQUEST)
        first.running()
        with pytest.raises(TicketStoreError, match="No space left on device"):
            for _ in range(1000):
                first.output("stdout", b"x" * 1000 + b"\n")
        persisted = first.next_seq
        assert persisted > 0
        with pytest.raises(TicketStoreError, match=r"cannot persist ticket second\d*: No space"):
            for n in range(1000):
                store.create("second" if n == 0 else f"second{n}", REQUEST)
        lines = first.read_after(-1, 100_000)
        assert [line["seq"] for line in lines] == list(range(persisted))
        for leftover in tiny_disk.joinpath("state", "tickets").iterdir():
            assert records(leftover / "state.jsonl")[-1]["state"] in {"pending", "running"}
    finally:
        store.close()
    if ahead:  # nothing half-made is left behind
        assert os.listdir(tiny_disk / "state" / "prepared") == []
    fresh = TicketStore(tiny_disk / "state", clock=clock)
    fresh.recover()
    again = fresh.get("first")
    assert again is not None and again.read_after(persisted - 2, 10)[0]["seq"] == persisted - 1
    fresh.close()


# --- the state journal and prepared directories ------------------------------------------------


def test_a_torn_last_record_is_cut_and_the_one_before_it_stands(
    store: TicketStore, clock: Clock
) -> None:
    ticket, _ = store.create("torn", REQUEST)
    ticket.running()
    ticket.finish(3, "exited", "exit code 3")
    journal = store.tickets_dir / "torn" / "state.jsonl"
    whole = journal.read_bytes()
    with journal.open("ab") as file:  # a crash in the middle of appending the next record
        file.write(b'{"id": "torn", "state": "compl')
    again, recovery = reopen(store, clock)
    recovered = again.get("torn")
    assert recovered is not None and recovered.exit_code == 3 and recovery.lost == []
    assert recovery.problems == [f"ticket torn: cut 30 bytes of a torn last record off {journal}"]
    assert journal.read_bytes() == whole
    again.complete("torn")
    assert records(journal)[-1]["client_completed"] is not None  # appended after a clean end
    again.close()


def test_a_hand_off_the_proxy_never_wrote_out_is_made_at_the_restart(
    store: TicketStore, clock: Clock
) -> None:
    store.hand_off("gone", REQUEST, "https://w:1")  # the start went out; then a crash
    store.hand_off("made", REQUEST, "https://w:2")
    store.create("made", REQUEST, worker="https://w:2")
    journal = store.state_dir / "handoffs.jsonl"
    with journal.open("ab") as file:
        file.write(b'{"id": "torn", "wor')  # never sent: the fsync comes before the start
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    again, recovery = reopen(store, clock)
    gone = again.get("gone")
    assert gone is not None and gone.record.worker == "https://w:1" and gone.request == REQUEST
    assert gone.state is State.PENDING and not gone.record.accepted
    assert sorted(recovery.handed) == ["gone", "made"] and again.get("torn") is None
    assert any("torn last line" in problem for problem in recovery.problems)
    assert any("ticket gone: the proxy stopped" in problem for problem in recovery.problems)
    assert not any("ticket made" in problem for problem in recovery.problems)
    assert journal.read_bytes() == b""  # every hand-off in it now has its directory
    again.close()
    third, recovery = reopen(again, clock)
    assert sorted(recovery.handed) == ["gone", "made"] and recovery.problems == []
    third.close()


def wait_prepared(store: TicketStore) -> list[str]:
    """The prepared directories, once the thread has made all it keeps."""
    folder = store.state_dir / "prepared"
    deadline = time.monotonic() + 10
    while store.prepared is None or store.prepared.ready < prepared.KEEP:
        assert time.monotonic() < deadline, "the prepared directories never got ready"
        time.sleep(0.01)
    return sorted(os.listdir(folder))


def test_a_prepared_directory_becomes_the_ticket(store: TicketStore, clock: Clock) -> None:
    old = os.umask(0)
    try:
        store.prepare_ahead()
        before = wait_prepared(store)
    finally:
        os.umask(old)
    assert len(before) == prepared.KEEP
    ticket, new = store.create("fast", REQUEST, worker="https://w:1")
    assert new and len(set(before) - set(os.listdir(store.state_dir / "prepared"))) == 1
    folder = store.tickets_dir / "fast"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in ("request.json", "state.jsonl", "log.jsonl"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name
    assert json.loads((folder / "request.json").read_text()) == REQUEST
    assert [r["state"] for r in records(folder / "state.jsonl")] == ["pending"]
    ticket.debug("hello")
    assert len(wait_prepared(store)) == prepared.KEEP  # made again
    again, recovery = reopen(store, clock)
    assert recovery.handed == ["fast"] and recovery.problems == []
    recovered = again.get("fast")
    assert recovered is not None and recovered.record.worker == "https://w:1"
    assert texts(recovered) == [("debug", "hello")]
    again.close()


def test_prepared_directories_never_outlive_the_store(tmp_path: Path, clock: Clock) -> None:
    folder = tmp_path / "state" / "prepared"
    folder.mkdir(parents=True, mode=0o700)
    (folder / "0123abcd").mkdir()  # a crash while one was being filled
    (folder / "0123abcd" / "request.json").write_text('{"project": "web"}')
    store = TicketStore(tmp_path / "state", clock=clock)
    assert store.recover().restored == []
    store.prepare_ahead()
    assert "0123abcd" not in wait_prepared(store)
    store.close()
    assert os.listdir(folder) == []
    assert os.listdir(tmp_path / "state" / "tickets") == []


def test_batch_escaping_equals_escaping_each_line_alone() -> None:
    # The fast path encodes many lines in one call; backslashes, quotes, controls, U+2028
    # and embedded newlines must come out exactly as the per-line encoder writes them.
    rng = random.Random(1234)  # noqa: S311 - reproducible test data, not secrets
    alphabet = 'ab"\\\r\t\x00\x1fé\u2028{}n\n'
    for _ in range(3000):
        texts = [
            "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
            for _ in range(rng.randint(0, 20))
        ]
        raw = [t.encode() for t in texts]
        assert escape(raw) == [encode_basestring(t)[1:-1].encode() for t in texts], texts


def test_copied_lines_are_checked_numbered_and_escaped(store: TicketStore) -> None:
    # A proxy's copy of a worker's log: the worker's numbers, nothing else trusted.
    ticket, _ = store.create("copy", REQUEST, worker="https://w:1")
    t = "2026-12-01T07:41:33.506Z"
    lines = [
        {"seq": 0, "source": "stdout", "time": t, "text": 'a "quoted"\nline'},
        {"seq": 1, "source": "stderr", "time": "yesterday", "text": "b"},
        {"seq": 1, "source": "stdout", "time": t, "text": "a duplicate"},
        {"seq": 2, "source": "debug", "time": t, "text": "c"},
        {"seq": 4, "source": "stdout", "time": t, "text": "after a gap"},
    ]
    assert ticket.copy_lines(lines) == 3
    got = ticket.read_after(-1, 10)
    assert [(x["seq"], x["source"], x["text"]) for x in got] == [
        (0, "stdout", 'a "quoted"\nline'),
        (1, "stderr", "b"),
        (2, "debug", "c"),
    ]
    assert got[0]["time"] == t and got[1]["time"] != "yesterday"  # replaced by ours
    assert ticket.copy_lines(lines) == 0  # all known already; the gap still stops it
    assert ticket.copy_lines([{"seq": 3, "source": "status", "text": "forged"}]) == 0
    assert ticket.copy_lines([{"seq": 3, "source": "stdout", "text": 7}]) == 0
    raw = (store.tickets_dir / "copy" / "log.jsonl").read_bytes().splitlines()
    assert [json.loads(line)["seq"] for line in raw] == [0, 1, 2]  # one object per line
    assert ticket.record.worker == "https://w:1"


def test_a_ticket_at_an_external_worker_is_followed_again_not_lost(
    store: TicketStore, clock: Clock
) -> None:
    ticket, _ = store.create("away", REQUEST, worker="https://w:1")
    ticket.copy_lines(
        [{"seq": 0, "source": "stdout", "time": "2026-12-01T07:41:33.506Z", "text": "x"}]
    )
    store.create("here", REQUEST)
    again, recovery = reopen(store, clock)
    assert recovery.handed == ["away"] and recovery.lost == ["here"]
    away = again.get("away")
    assert away is not None and away.state is State.PENDING and away.next_seq == 1
    assert away.copy_lines([{"seq": 1, "source": "stdout", "time": "t", "text": "y"}]) == 1
    again.close()


def test_a_workers_acknowledgement_is_kept_and_old_records_still_load(
    store: TicketStore, clock: Clock
) -> None:
    ticket, _ = store.create("acked", REQUEST, worker="https://w:1")
    ticket.mark_accepted()
    older = records(store.tickets_dir / "acked" / "state.jsonl")[-1]
    del older["accepted"]  # as a record written before the field existed
    store.create("old", REQUEST)
    (store.tickets_dir / "old" / "state.jsonl").write_text(json.dumps(older | {"id": "old"}) + "\n")
    again, recovery = reopen(store, clock)
    acked, old = again.get("acked"), again.get("old")
    assert acked is not None and acked.record.accepted is True
    assert old is not None and old.record.accepted is False and recovery.handed == ["acked", "old"]
    again.close()
