"""Each layer, read back from the kernel by a real script in the real sandbox (root only)."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandworker.sandbox.cgroups import PREFIX, own_groups
from sandworker.sandbox.layers import Layer
from sandworker.sandbox.outcome import Reason
from sandworker.sandbox.runner import Request, Sandbox
from sandworker.sandbox.workspace import WorkspaceError
from tests.sandboxing import (
    make_policy,
    new_sandbox,
    processes_of_uid,
    project_uid,
    run,
    running,
    scratch_dir,
)

pytestmark = pytest.mark.root


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    return new_sandbox(tmp_path)


def _status(text: str, key: str) -> str:
    match = re.search(rf"^{key}:[ \t]*(.*)$", text, re.M)
    assert match, f"{key} missing from /proc/self/status:\n{text}"
    return match.group(1).strip()


def _absent_by_kernel_facts(sandbox: Sandbox) -> set[Layer]:
    """Layers this kernel cannot offer at all, read from the kernel, not from our probe."""
    abi = sandbox.host.landlock_abi
    absent = {Layer.LANDLOCK_SCOPE} if abi < 6 else set()
    return absent | ({Layer.LANDLOCK} if abi < 1 else set())


def test_every_layer_the_kernel_offers_is_applied(sandbox: Sandbox) -> None:
    # Root on a host with delegated cgroups (CI's): a missing layer here means isolation
    # silently weakened, unless the kernel itself lacks the feature.
    assert set(sandbox.host.missing) <= _absent_by_kernel_facts(sandbox), sandbox.host.missing
    result = run(sandbox, "blue", "true")
    for layer in set(Layer) - set(sandbox.host.missing):
        assert f"layer {layer}: applied" in result.debug


def test_credentials_are_the_project_account_with_nothing_extra(sandbox: Sandbox) -> None:
    result = run(sandbox, "blue", "cat /proc/self/status")
    uid = project_uid(sandbox, "blue")
    status = result.stdout
    assert _status(status, "Uid").split() == [str(uid)] * 4
    assert _status(status, "Gid").split() == [str(uid)] * 4
    assert _status(status, "Groups") == ""
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(_status(status, cap), 16) == 0, cap
    assert _status(status, "NoNewPrivs") == "1"
    assert 65536 <= uid <= 524287


def test_each_project_gets_its_own_stable_uid(sandbox: Sandbox, tmp_path: Path) -> None:
    blue, red = project_uid(sandbox, "blue"), project_uid(sandbox, "red")
    assert blue != red
    again = new_sandbox(tmp_path)  # a restarted supervisor reads the persisted map
    assert project_uid(again, "blue") == blue
    assert stat.S_IMODE(os.stat(tmp_path / "state" / "accounts.json").st_mode) == 0o600


def test_mount_view_holds_only_system_dirs_and_own_workspace(sandbox: Sandbox) -> None:
    run(sandbox, "red", "true")  # red's workspace exists and must stay invisible
    result = run(sandbox, "blue", "cat /proc/self/mountinfo; echo ===; ls -A /")
    mountinfo, listing = result.stdout.split("===\n")
    mounts = {line.split()[4]: line for line in mountinfo.splitlines()}
    assert " ro," in mounts["/"] and "tmpfs" in mounts["/"]
    for path in ("/usr", "/etc"):
        assert " ro,nosuid,nodev" in mounts[path], mounts[path]
    for path in ("/tmp", "/dev/shm"):
        assert "tmpfs" in mounts[path] and "nosuid,nodev" in mounts[path]
    state = str(sandbox.settings.state_dir)
    workspace_mounts = [m for m in mounts if m.startswith(state)]
    assert workspace_mounts and all("/projects/blue/" in m for m in workspace_mounts)
    assert set(listing.split()) <= {
        "bin",
        "dev",
        "etc",
        "lib",
        "lib32",
        "lib64",
        "libx32",
        "proc",
        "sbin",
        "tmp",
        "usr",
    }


def test_pid_namespace_shows_only_the_scripts_processes(sandbox: Sandbox) -> None:
    with running(sandbox, "red", "sleep 300 & echo READY; wait"):
        result = run(sandbox, "blue", "cd /proc && echo [0-9]*; echo $$")  # builtins: no children
    pids, own = result.stdout.splitlines()
    assert pids.split() == ["1", "2"], pids  # our init and the script itself, nothing else
    assert own == "2"


def test_namespaces_differ_from_the_supervisors(sandbox: Sandbox) -> None:
    kinds = ("mnt", "pid", "ipc", "uts", "net")
    body = "; ".join(f"readlink /proc/self/ns/{k}" for k in kinds) + "; hostname"
    result = run(sandbox, "blue", body)
    inside = result.stdout.split()
    for kind, seen in zip(kinds, inside, strict=False):
        assert seen != os.readlink(f"/proc/self/ns/{kind}"), kind
    assert inside[-1] == "sandworker"


def test_network_host_keeps_the_host_network_namespace(sandbox: Sandbox) -> None:
    result = run(
        sandbox, "blue", "readlink /proc/self/ns/net", policy=make_policy("blue", network="host")
    )
    assert result.stdout.strip() == os.readlink("/proc/self/ns/net")
    assert "layer network" not in result.debug


def test_rlimits_are_enforced_by_the_kernel(sandbox: Sandbox) -> None:
    policy = make_policy("blue", limits=dict(cpu_seconds=7, open_files=99, file_size_bytes=1 << 20))
    limits = run(sandbox, "blue", "cat /proc/self/limits", policy=policy).stdout

    def soft(name: str) -> str:
        return re.search(rf"^{name}\s+(\S+)", limits, re.M).group(1)  # type: ignore[union-attr]

    assert soft("Max cpu time") == "7"
    assert soft("Max open files") == "99"
    assert soft("Max file size") == str(1 << 20)
    assert soft("Max core file size") == "0"
    assert soft("Max processes") == str(policy.limits.processes * policy.concurrency)


def test_cgroup_limits_are_written_and_the_script_is_inside(sandbox: Sandbox) -> None:
    policy = make_policy("blue", limits=dict(memory_bytes=96 << 20, processes=40, cpu_percent=50))
    # READY comes after the fork of sleep, so the tree is steady while it is read back.
    with running(sandbox, "blue", "sleep 300 & echo READY; wait", policy=policy) as bg:
        groups = own_groups()
        name = f"{PREFIX}{sandbox.cgroup_tag}-{bg.run_id}"
        memory = groups["memory"] / name
        assert int((memory / "memory.limit_in_bytes").read_text()) == 96 << 20
        assert (groups["pids"] / name / "pids.max").read_text().strip() == "42"
        assert (groups["cpu"] / name / "cpu.cfs_quota_us").read_text().strip() == "50000"
        uid = project_uid(sandbox, "blue")
        # The project's processes first, then the members: a process forked in between
        # is in the cgroup by inheritance but not in the first list, so it cannot race.
        pids = {p.pid for p in processes_of_uid(uid)}
        members = {int(p) for p in (memory / "cgroup.procs").read_text().split()}
        assert pids and pids <= members
    assert not memory.exists() and not (groups["unified"] / name).exists()


@pytest.fixture
def open_sandbox() -> Iterator[Sandbox]:
    """A sandbox whose state dir any uid can traverse, for runs without the mount layer."""
    with scratch_dir("sandworker-test-", 0o711) as base:
        yield new_sandbox(base)


def test_landlock_alone_blocks_writes_outside_the_workspace(open_sandbox: Sandbox) -> None:
    # Without the mount layer, /var/tmp is the host's (mode 1777): only Landlock stands in the way.
    sandbox = open_sandbox
    sandbox.host = dataclasses.replace(sandbox.host, missing={Layer.MOUNT: "disabled by test"})
    marker = Path("/var/tmp") / f"sandworker-landlock-{os.getpid()}"
    try:
        result = run(
            sandbox, "blue", f"touch {marker} && exit 77; echo blocked; touch ok && echo own-ok"
        )
        assert result.outcome.exit_code == 0, result
        assert "blocked" in result.stdout and "own-ok" in result.stdout
        assert not marker.exists()
        assert "layer mount: NOT applied: disabled by test" in result.debug
    finally:
        marker.unlink(missing_ok=True)


def test_landlock_signal_scope_blocks_same_uid_processes_outside(sandbox: Sandbox) -> None:
    # Without the pid layer the other run's process is visible; Landlock's scope still denies kill.
    sandbox.host = dataclasses.replace(sandbox.host, missing={Layer.PID: "disabled by test"})
    with running(sandbox, "blue", "sleep 300 & echo READY; wait"):
        uid = project_uid(sandbox, "blue")
        deadline = time.monotonic() + 10  # READY may come before the background sleep execs
        while not (sleeps := [p.pid for p in processes_of_uid(uid) if p.name() == "sleep"]):
            assert time.monotonic() < deadline, "the background sleep never started"
            time.sleep(0.05)
        victim = sleeps[0]
        result = run(sandbox, "blue", f"kill -0 {victim} && exit 77; echo denied")
        assert result.outcome.exit_code == 0 and "denied" in result.stdout, result
        assert any(p.pid == victim for p in processes_of_uid(uid))


def test_required_layer_missing_refuses_before_anything_runs(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    sandbox.host = dataclasses.replace(sandbox.host, missing={Layer.LANDLOCK: "not in this kernel"})
    policy = make_policy("blue", require=frozenset({Layer.LANDLOCK}))
    result = run(sandbox, "blue", "touch /tmp/ran", policy=policy)
    assert result.outcome.reason is Reason.REFUSED
    assert "requires layers this host lacks: landlock: not in this kernel" in result.outcome.message
    assert not (tmp_path / "state" / "projects" / "blue").exists()


def test_missing_optional_layer_is_reported_not_hidden(sandbox: Sandbox) -> None:
    sandbox.host = dataclasses.replace(
        sandbox.host, missing={Layer.CGROUP_CPU: "no cpu controller"}
    )
    result = run(sandbox, "blue", "true")
    assert result.outcome.exit_code == 0
    assert "layer cgroup_cpu: NOT applied: no cpu controller" in result.debug


@pytest.mark.parametrize(
    ("syntax", "body", "expected"),
    [
        ("bash", 'echo "bash $BASH_VERSINFO $1"', "bash 5 arg1"),
        ("sh", 'echo "sh $1"', "sh arg1"),
        ("python", "import sys; print('python', sys.argv[1])", "python arg1"),
    ],
)
def test_syntaxes_run_with_arguments(
    sandbox: Sandbox, syntax: str, body: str, expected: str
) -> None:
    result = run(sandbox, "blue", body, syntax=syntax, args=("arg1",))
    assert result.stdout.strip() == expected, result


def test_syntax_not_allowed_by_policy_is_refused(sandbox: Sandbox) -> None:
    result = run(
        sandbox, "blue", "print(1)", syntax="python", policy=make_policy("blue", syntaxes=("bash",))
    )
    assert result.outcome.reason is Reason.REFUSED
    assert "syntax 'python' is not allowed" in result.outcome.message


def test_missing_interpreter_is_refused_naming_the_path(sandbox: Sandbox) -> None:
    sandbox.settings.interpreters["bash"] = "/nonexistent/bash"
    result = run(sandbox, "blue", "true")
    assert result.outcome.reason is Reason.REFUSED
    assert "/nonexistent/bash is missing" in result.outcome.message


def test_cleanup_removes_the_run_without_following_planted_symlinks(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("root's file")
    result = run(
        sandbox,
        "blue",
        f"ln -s {victim} link; ln -s {victim}/keep file-link; "
        "mkdir -p d/e; chmod 0500 d; echo done",
    )
    assert "done" in result.stdout
    run_dir = sandbox.settings.state_dir / "projects" / "blue" / "work" / result.run_id
    assert run_dir.is_dir()
    sandbox.cleanup(Request("blue", result.run_id), make_policy("blue"))
    assert not run_dir.exists()
    assert (victim / "keep").read_text() == "root's file"


def test_script_cannot_touch_its_project_dir_entries(sandbox: Sandbox) -> None:
    result = run(sandbox, "blue", "cd $HOME/.. && mv work work.old && exit 77; echo refused")
    assert result.outcome.exit_code == 0 and "refused" in result.stdout


def test_planted_symlink_instead_of_work_dir_is_refused(sandbox: Sandbox, tmp_path: Path) -> None:
    # Without the mount layer a script could rename work/ and plant a symlink: simulate that.
    run(sandbox, "blue", "true")
    outside = tmp_path / "outside"
    outside.mkdir()
    project = sandbox.settings.state_dir / "projects" / "blue"
    (project / "work").rename(project / "work.old")
    (project / "work").symlink_to(outside)
    with pytest.raises(WorkspaceError, match="work is not a plain directory"):
        sandbox.start(Request("blue", "after-plant", body="true"), make_policy("blue"))
    assert list(outside.iterdir()) == []


def test_workspace_modes_and_owners(sandbox: Sandbox) -> None:
    run(sandbox, "blue", "true")
    state = sandbox.settings.state_dir
    uid = project_uid(sandbox, "blue")
    for path, mode, owner in (
        (state, 0o711, 0),
        (state / "projects", 0o711, 0),
        (state / "projects" / "blue", 0o700, uid),
        (state / "projects" / "blue" / "home", 0o700, uid),
    ):
        st = os.lstat(path)
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (mode, owner), path


def test_setup_failure_is_reported_with_the_layer(sandbox: Sandbox, tmp_path: Path) -> None:
    policy = make_policy("blue", read_write_paths=(str(tmp_path / "does-not-exist"),))
    result = run(sandbox, "blue", "echo never", policy=policy)
    assert result.outcome.reason is Reason.SETUP_FAILED
    assert result.outcome.message.startswith("setup failed: mount:")
    assert "never" not in result.stdout


@pytest.mark.parametrize("sig", ["KILL", "TERM", "SEGV"])
def test_a_script_killed_by_a_signal_is_reported_as_that_signal(sandbox: Sandbox, sig: str) -> None:
    result = run(sandbox, "blue", f"echo before; kill -{sig} $$; echo after")
    assert result.stdout == "before\n"
    assert (result.outcome.reason, result.outcome.exit_code) == (Reason.EXITED, None)
    assert result.outcome.signal == f"SIG{sig}"
    assert result.outcome.message == f"killed by SIG{sig}"


def test_losing_the_launcher_zygote_kills_the_run_and_says_so(sandbox: Sandbox) -> None:
    def kill_zygote_once_ready(chunks: list[tuple[str, bytes]]) -> None:
        if any(b"READY" in data for source, data in chunks if source == "stdout"):
            pid = sandbox.zygote._pid
            if pid is not None:
                os.kill(pid, signal.SIGKILL)

    result = run(sandbox, "blue", "sleep 300 & echo READY; wait", on_output=kill_zygote_once_ready)
    assert result.outcome.reason is Reason.LOST
    assert "the launcher process was lost" in result.outcome.message
    assert processes_of_uid(project_uid(sandbox, "blue")) == []
    assert run(sandbox, "blue", "echo again").stdout == "again\n"  # a new zygote serves


def test_powershell_runs_noninteractive_or_is_refused_naming_its_path(sandbox: Sandbox) -> None:
    policy = make_policy("blue", syntaxes=("powershell",))
    pwsh = sandbox.settings.interpreters["powershell"]
    result = run(
        sandbox,
        "blue",
        "Write-Output ('ps ' + $args[0])",
        syntax="powershell",
        policy=policy,
        args=("arg1",),
    )
    if os.access(pwsh, os.X_OK):  # pwsh is not in Debian's archive; where installed, it must run
        assert result.stdout.strip() == "ps arg1", result
    else:
        assert result.outcome.reason is Reason.REFUSED
        assert (
            result.outcome.message
            == f"the powershell interpreter {pwsh} is missing or not executable"
        )
