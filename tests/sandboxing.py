"""Helpers for tests that run real scripts in the real sandbox (as root)."""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from sandworker.sandbox.effective import EffectivePolicy, Limits
from sandworker.sandbox.outcome import Outcome
from sandworker.sandbox.runner import Request, Sandbox
from sandworker.sandbox.settings import SandboxSettings

_ids = itertools.count()

LIMITS = Limits(
    memory_bytes=256 << 20,
    processes=128,
    cpu_seconds=60,
    open_files=256,
    file_size_bytes=16 << 20,
    output_bytes=1 << 20,
    tmp_bytes=32 << 20,
    cpu_percent=100,
)


def make_policy(project: str, **changes: object) -> EffectivePolicy:
    """A strict-ish effective policy; `limits=dict(...)` overrides single limits."""
    limits = changes.pop("limits", {})
    base = EffectivePolicy(
        project=project,
        account="dynamic",
        syntaxes=("bash", "sh", "python"),
        timeout_seconds=60,
        kill_grace_seconds=1,
        limits=dataclasses.replace(LIMITS, **limits),  # type: ignore[arg-type]
        network="none",
        read_only_paths=(),
        read_write_paths=(),
        environment_pass=(),
        environment_set={},
        concurrency=4,
        require=frozenset(),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@dataclass
class Result:
    outcome: Outcome
    stdout: str = ""
    stderr: str = ""
    debug: str = ""
    run_id: str = ""
    chunks: list[tuple[str, bytes]] = field(default_factory=list)


def new_sandbox(tmp_path: Path) -> Sandbox:
    """A sandbox with its own state dir and its own slice of the uid range, so that test
    processes running side by side never hand one uid to two projects."""
    state = tmp_path / "state"
    base = 100_000 + zlib.crc32(str(state).encode()) % 400 * 1000
    return Sandbox(SandboxSettings(state_dir=state, uid_range=(base, base + 999)))


def run(
    sandbox: Sandbox,
    project: str,
    body: str,
    *,
    syntax: str = "bash",
    policy: EffectivePolicy | None = None,
    cancel: threading.Event | None = None,
    args: tuple[str, ...] = (),
    on_output: Callable[[list[tuple[str, bytes]]], None] = lambda _chunks: None,
    run_id: str | None = None,
    variables: tuple[tuple[str, str, bool], ...] = (),
) -> Result:
    """Run `body` to the end as `project`; collect output by source."""
    run_id = run_id or f"t{os.getpid()}-{next(_ids)}"
    chunks: list[tuple[str, bytes]] = []

    def sink(source: str, data: bytes) -> None:
        chunks.append((source, data))
        on_output(chunks)

    outcome = sandbox.run(
        Request(project, run_id, syntax, body, args, variables=variables),
        policy or make_policy(project),
        sink,
        cancel=(cancel.is_set if cancel else lambda: False),
    )
    return Result(
        outcome,
        _text(chunks, "stdout"),
        _text(chunks, "stderr"),
        _text(chunks, "debug"),
        run_id,
        chunks,
    )


def _text(chunks: list[tuple[str, bytes]], source: str) -> str:
    return b"".join(d for s, d in chunks if s == source).decode(errors="replace")


@contextmanager
def running(
    sandbox: Sandbox,
    project: str,
    body: str,
    *,
    ready: str = "READY",
    policy: EffectivePolicy | None = None,
    variables: tuple[tuple[str, str, bool], ...] = (),
) -> Iterator[Result]:
    """Start `body` in the background; yield once it printed `ready`; cancel it on exit."""
    stop = threading.Event()
    seen = threading.Event()
    box: list[Result] = []
    run_id = f"bg{os.getpid()}-{next(_ids)}"
    progress: list[tuple[str, bytes]] = []

    def watch(chunks: list[tuple[str, bytes]]) -> None:
        progress[:] = chunks
        if ready in _text(chunks, "stdout"):
            seen.set()

    def target() -> None:
        box.append(
            run(
                sandbox,
                project,
                body,
                policy=policy,
                cancel=stop,
                on_output=watch,
                run_id=run_id,
                variables=variables,
            )
        )

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        if not seen.wait(30):
            raise AssertionError(f"background script never printed {ready!r}: {progress}")
        partial = Result(outcome=None, run_id=run_id, chunks=progress)  # type: ignore[arg-type]
        partial.stdout = _text(progress, "stdout")
        yield partial
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "background script did not stop after cancel"


@contextmanager
def scratch_dir(prefix: str, mode: int = 0o755) -> Iterator[Path]:
    """A directory in /var/tmp that project uids can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    path.chmod(mode)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def processes_of_uid(uid: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["uids"]):
        try:
            if proc.info["uids"] and proc.info["uids"].real == uid:
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


def project_uid(sandbox: Sandbox, project: str) -> int:
    return sandbox.accounts.for_project(project, "dynamic").uid
