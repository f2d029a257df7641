"""Admission: global and per-project limits, fairness, isolation mutexes and their timeouts."""

from __future__ import annotations

import pytest

from sandworker.daemon.scheduler import Isolation, Scheduler


def test_global_limit_queues_the_rest_and_says_why() -> None:
    s = Scheduler(global_limit=2)
    for i in range(3):
        s.submit(f"t{i}", f"p{i}", 5, now=i)
    assert s.admit(now=3).started == ["t0", "t1"]
    assert s.why_waiting("t2") == "waiting: all 2 script slots of this worker are busy"
    s.finished("t0")
    assert s.admit(now=4).started == ["t2"]
    assert (s.running, s.queued) == (2, 0)


def test_project_limit_does_not_block_other_projects() -> None:
    s = Scheduler(global_limit=10)
    s.submit("a1", "web", 1, now=0)
    s.submit("a2", "web", 1, now=1)
    s.submit("b1", "db", 1, now=2)
    assert s.admit(now=3).started == ["a1", "b1"]
    assert s.why_waiting("a2") == (
        "waiting: project web already runs 1 script(s), its policy limit (a1)"
    )


def test_fairness_prefers_the_project_with_fewer_running() -> None:
    s = Scheduler(global_limit=2)
    s.submit("a1", "web", 5, now=0)
    s.admit(now=0)
    s.submit("a2", "web", 5, now=1)  # queued first...
    s.submit("b1", "db", 5, now=2)  # ...but db runs nothing yet
    assert s.admit(now=3).started == ["b1"]


def test_full_isolation_is_exclusive_and_none_is_shared() -> None:
    s = Scheduler(global_limit=10)
    s.submit("r1", "p", 10, now=0, isolation=Isolation.NONE)
    s.submit("r2", "p", 10, now=1, isolation=Isolation.NONE)
    s.submit("w1", "p", 10, now=2, isolation=Isolation.FULL)
    s.submit("r3", "p", 10, now=3, isolation=Isolation.NONE)
    assert s.admit(now=4).started == ["r1", "r2"]
    assert s.why_waiting("w1") == "waiting for the script in ticket r1 (mutex RunningScript)"
    # a waiting writer holds back later readers, so it cannot starve
    assert s.why_waiting("r3") == (
        "waiting for ticket w1, queued earlier for exclusive use of mutex RunningScript"
    )
    s.finished("r1")
    s.finished("r2")
    assert s.admit(now=5).started == ["w1"]
    assert s.why_waiting("r3") == "waiting for the script in ticket w1 (mutex RunningScript)"
    s.finished("w1")
    assert s.admit(now=6).started == ["r3"]


def test_mutexes_with_different_names_do_not_interact() -> None:
    s = Scheduler(global_limit=10)
    s.submit("a", "p", 10, now=0, isolation=Isolation.FULL, mutex="deploy-a")
    s.submit("b", "p", 10, now=1, isolation=Isolation.FULL, mutex="deploy-b")
    assert s.admit(now=2).started == ["a", "b"]


def test_acquire_timeout_gives_up_and_zero_waits_forever() -> None:
    s = Scheduler(global_limit=10)
    s.submit("w1", "p", 10, now=0, isolation=Isolation.FULL)
    s.admit(now=0)
    s.submit("w2", "p", 10, now=1, isolation=Isolation.FULL, acquire_timeout=5)
    s.submit("w3", "p", 10, now=1, isolation=Isolation.FULL, acquire_timeout=0)
    assert s.next_deadline(now=1) == 6
    assert s.admit(now=5.9).timed_out == []
    result = s.admit(now=6)
    assert result.timed_out == ["w2"] and result.started == []
    assert s.why_waiting("w2") is None
    assert s.admit(now=10_000).timed_out == []  # w3 waits forever
    s.finished("w1")
    assert s.admit(now=10_001).started == ["w3"]


def test_the_acquire_timeout_does_not_run_while_waiting_for_a_slot() -> None:
    s = Scheduler(global_limit=1)
    s.submit("busy", "p", 10, now=0)
    s.admit(now=0)
    s.submit("late", "p", 10, now=1, isolation=Isolation.FULL, acquire_timeout=5)
    assert s.admit(now=100).timed_out == []  # the worker's one slot was busy, not the mutex
    assert s.next_deadline(now=100) is None  # no timer spins on a deadline already past
    assert "slots of this worker are busy" in str(s.why_waiting("late"))
    s.finished("busy")
    assert s.admit(now=101).started == ["late"]


def test_only_a_ticket_held_back_by_the_mutex_alone_times_out() -> None:
    s = Scheduler(global_limit=10)
    s.submit("holder", "p", 1, now=0, isolation=Isolation.FULL)
    s.admit(now=0)
    s.submit("mutex-only", "q", 1, now=1, isolation=Isolation.FULL, acquire_timeout=5)
    s.submit("slot-too", "p", 1, now=1, isolation=Isolation.FULL, acquire_timeout=5)
    result = s.admit(now=6)
    assert result.timed_out == ["mutex-only"]  # project p's one slot also holds back slot-too
    s.finished("holder")
    assert s.admit(now=7).started == ["slot-too"]


def test_cancel_while_queued_and_duplicates() -> None:
    s = Scheduler(global_limit=1)
    s.submit("a", "p", 1, now=0)
    s.submit("b", "p", 1, now=1)
    s.admit(now=1)
    s.finished("b")  # cancelled while queued
    assert s.queued == 0
    with pytest.raises(ValueError, match="already scheduled"):
        s.submit("a", "p", 1, now=2)
    with pytest.raises(ValueError, match="at least 1"):
        Scheduler(global_limit=0)
