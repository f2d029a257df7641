"""The world the escape probes attack: one sandbox, a running `blue`, host-side bait.

`world` (module scope) starts project `blue` in the sandbox state directory that
`red` uses too. Blue plants a random canary in every place it owns: its working
directory (also held open on descriptor 7), its HOME, its private /tmp and
/dev/shm, its environment (inherited by a long-lived `sleep`) and System V IPC.
The host side adds bait of its own: a file in the host's /tmp, a TCP listener on
127.0.0.1 and an abstract unix socket in the host's network namespace.

After every test, `no_leftovers` checks that no process of red's uid survived and
that blue is still alive and running.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from sandworker.sandbox.outcome import Reason
from sandworker.sandbox.runner import Sandbox
from tests.sandboxing import make_policy, new_sandbox, processes_of_uid, project_uid, run, running

BLUE_BODY = """\
set -eu
printf '%s\\n' "$1" > canary.txt
printf '%s\\n' "$1" > "$HOME/canary.txt"
printf '%s\\n' "$1" > /tmp/canary.txt
printf '%s\\n' "$1" > /dev/shm/canary.txt
# blue may open up its own files: only the sandbox may keep red out, not blue's modes
chmod 755 . "$HOME"
chmod 644 canary.txt "$HOME/canary.txt"
ipcmk -M 4096 >/dev/null
ipcmk -Q >/dev/null
export CANARY="$1"
exec 7<canary.txt
sleep 3600 &
echo "cwd=$PWD pid=$$ child=$!"
echo READY
wait
"""


@dataclass(frozen=True)
class World:
    sandbox: Sandbox
    base: Path  # host-side directory of this module, inside the host's /tmp
    state: Path
    canary: str  # blue's secret; must never appear in anything red prints
    red_uid: int
    blue_uid: int
    red_home: Path
    blue_work: Path
    blue_home: Path
    blue_pids: tuple[int, ...]  # host pids of blue's processes
    host_secret: Path  # a world-readable host file in the host's /tmp
    tcp: socket.socket  # listening on 127.0.0.1 in the host's network namespace
    abstract: socket.socket  # listening abstract unix socket in the host's namespace
    abstract_name: str  # its name without the leading NUL

    @property
    def tcp_port(self) -> int:
        port: int = self.tcp.getsockname()[1]
        return port

    def blue_alive(self) -> list[str]:
        """Problems with blue's processes: gone, zombie or stopped."""
        problems = []
        for pid in self.blue_pids:
            try:
                status = psutil.Process(pid).status()
            except psutil.NoSuchProcess:
                problems.append(f"blue pid {pid} is gone")
                continue
            if status in (psutil.STATUS_ZOMBIE, psutil.STATUS_STOPPED, psutil.STATUS_DEAD):
                problems.append(f"blue pid {pid} is {status}")
        return problems

    def accepted(self) -> list[str]:
        """Connections that reached the host-side listeners (there must be none)."""
        found = []
        for sock in (self.tcp, self.abstract):
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                conn, peer = sock.accept()
                conn.close()
                found.append(f"{sock.getsockname()!r} accepted a connection from {peer!r}")
        return found


def live_processes(uid: int) -> list[psutil.Process]:
    """Processes of `uid` that still run (zombies wait for the host's pid 1 to reap them)."""
    found = []
    for proc in processes_of_uid(uid):
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


def wait_gone(uid: int, seconds: float = 3.0) -> list[psutil.Process]:
    end = time.monotonic() + seconds
    while (left := live_processes(uid)) and time.monotonic() < end:
        time.sleep(0.05)
    return left


def _blue_pids(uid: int, work: Path, canary: str) -> tuple[int, ...]:
    """Blue's processes once it is READY, checked from the host: right cwd, canary in env."""
    end = time.monotonic() + 10
    while True:
        procs = live_processes(uid)
        names = sorted(p.name() for p in procs)
        if "sleep" in names and "bash" in names:
            break
        assert time.monotonic() < end, f"blue's processes not found: {names}"
        time.sleep(0.05)
    for proc in procs:
        assert Path(proc.cwd()) == work, f"blue pid {proc.pid} runs in {proc.cwd()}, not {work}"
    sleeper = next(p for p in procs if p.name() == "sleep")
    assert sleeper.environ().get("CANARY") == canary, "blue's sleep does not carry the canary"
    return tuple(sorted(p.pid for p in procs))


def _blue_has_ipc(pid: int) -> bool:
    """Positive control: blue's IPC namespace really holds the segment and queue it made."""
    out = subprocess.run(
        ["nsenter", "-t", str(pid), "-i", "ipcs", "-m", "-q"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    return out.count("0x") >= 2


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("escapes")
    sandbox = new_sandbox(base)
    canary = "sw-canary-" + secrets.token_hex(16)

    warm = run(sandbox, "red", "echo warm-up ok")  # creates red's directories and account
    assert warm.outcome.reason is Reason.EXITED and warm.outcome.exit_code == 0, warm
    assert "warm-up ok" in warm.stdout, warm

    host_secret = base / "host-secret.txt"
    host_secret.write_text(canary + "\n")
    host_secret.chmod(0o644)  # readable by anyone who can reach it: only the view protects it

    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    abstract_name = "sandworker-escape-" + secrets.token_hex(8)
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind("\0" + abstract_name)
    abstract.listen(8)

    red_uid = project_uid(sandbox, "red")
    blue_policy = make_policy("blue", timeout_seconds=3600)
    body = BLUE_BODY.replace('"$1"', f"'{canary}'")
    with contextlib.ExitStack() as stack:
        stack.callback(abstract.close)
        stack.callback(tcp.close)
        secret = (("Canary", canary, True),)  # (its variables file is bait too)
        blue = stack.enter_context(
            running(sandbox, "blue", body, policy=blue_policy, variables=secret)
        )
        blue_uid = project_uid(sandbox, "blue")
        assert blue_uid != red_uid
        blue_work = sandbox.workspaces.projects / "blue" / "work" / blue.run_id
        assert f"cwd={blue_work} " in blue.stdout, blue.stdout
        assert (blue_work / "canary.txt").read_text().strip() == canary
        blue_pids = _blue_pids(blue_uid, blue_work, canary)
        assert _blue_has_ipc(blue_pids[0]), "blue's System V IPC objects are missing"
        yield World(
            sandbox=sandbox,
            base=base,
            state=sandbox.settings.state_dir,
            canary=canary,
            red_uid=red_uid,
            blue_uid=blue_uid,
            red_home=sandbox.workspaces.projects / "red" / "home",
            blue_work=blue_work,
            blue_home=sandbox.workspaces.projects / "blue" / "home",
            blue_pids=blue_pids,
            host_secret=host_secret,
            tcp=tcp,
            abstract=abstract,
            abstract_name=abstract_name,
        )
    assert not wait_gone(blue_uid, 10), "blue's processes survived its cancellation"


@pytest.fixture(autouse=True)
def no_leftovers(world: World) -> Iterator[None]:
    """After every probe: nothing of red's runs on, blue is untouched, no host listener was hit."""
    yield
    left = wait_gone(world.red_uid)
    assert not left, f"red processes survived the run: {[(p.pid, p.name()) for p in left]}"
    assert not world.blue_alive(), world.blue_alive()
    assert not world.accepted(), world.accepted()


@pytest.fixture
def inheritable_fds(world: World) -> Iterator[list[int]]:
    """Host descriptors a careless supervisor would hand down: a secret file and a socket."""
    fds = [os.open(world.host_secret, os.O_RDONLY)]
    fds.append(os.dup2(fds[0], 200))
    fds.append(os.dup(world.tcp.fileno()))
    for fd in fds:
        os.set_inheritable(fd, True)
    try:
        yield fds
    finally:
        for fd in fds:
            os.close(fd)
