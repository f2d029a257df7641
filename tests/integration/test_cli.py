"""`sandworker sandbox run`, `doctor` and non-root use, driven as a person would (root only)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sandboxing import scratch_dir

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
SANDWORKER = str(Path(sys.executable).with_name("sandworker"))
DEFAULT = str(REPO / "policies" / "default.toml")
STRICT = str(REPO / "policies" / "strict.toml")
NOBODY = 65534


def sandworker(
    *args: str, state: Path, user: int | None = None, policy: str = DEFAULT, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    argv = [SANDWORKER, args[0], *args[1:2]] if args[0] == "sandbox" else [SANDWORKER, args[0]]
    rest = args[2:] if args[0] == "sandbox" else args[1:]
    argv += ["--policy-dir", policy, "--state-dir", str(state / "state"), *rest]
    if user is not None:  # run a copy of the package readable by `user`, wherever CI cloned us
        entry = (
            "import sys; sys.path.insert(0, sys.argv.pop(1));"
            " from sandworker.daemon.cli import main; sys.exit(main())"
        )
        argv = [
            "setpriv",
            f"--reuid={user}",
            f"--regid={user}",
            "--clear-groups",
            "/usr/bin/python3.11",
            "-S",
            "-c",
            entry,
            str(_package_copy(state)),
            *argv[1:],
        ]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(state)}
    return subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def run_text(project: str, body: str, **options: object) -> subprocess.CompletedProcess[str]:
    """`sandworker sandbox run --project PROJECT -c BODY` with the given options."""
    return sandworker("sandbox", "run", "--project", project, "-c", body, **options)  # type: ignore[arg-type]


def _package_copy(state: Path) -> Path:
    target = state / "pkg"
    if not target.exists():
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(REPO / "sandworker", target / "sandworker", ignore=ignore)
        for part in ("sandbox", "daemon"):
            shutil.copytree(REPO / part, target / "sandworker" / part, ignore=ignore)
        subprocess.run(["chmod", "-R", "a+rX", str(target)], check=True)
    return target


@pytest.fixture
def state() -> Iterator[Path]:
    with scratch_dir("sandworker-cli-") as base:
        yield base


def test_run_streams_output_and_returns_the_scripts_exit_code(state: Path) -> None:
    result = run_text("blue", "echo out; echo err >&2; exit 3", state=state)
    assert result.returncode == 3
    assert result.stdout == "out\n"
    assert "err\n" in result.stderr and "exited: exited with code 3" in result.stderr
    assert list((state / "state" / "projects" / "blue" / "work").iterdir()) == []  # cleaned up


def test_run_a_program_by_absolute_path_only(state: Path) -> None:
    ok = sandworker(
        "sandbox", "run", "--project", "blue", "--", "/bin/sh", "-c", "exit 5", state=state
    )
    assert ok.returncode == 5
    relative = sandworker(
        "sandbox", "run", "--project", "blue", "--", "sh", "-c", "true", state=state
    )
    assert relative.returncode == 3 and "give the program as an absolute path" in relative.stderr


def test_run_a_script_file_in_another_syntax(state: Path) -> None:
    script = state / "hello.py"
    script.write_text("import sys; print('py', sys.argv[1:])\n")
    result = sandworker(
        "sandbox", "run", "--project", "blue", "--syntax", "python", str(script), state=state
    )
    assert result.returncode == 0 and result.stdout == "py []\n"


def test_invalid_project_and_default_deny_are_refused_clearly(state: Path) -> None:
    bad = run_text("../etc", "true", state=state)
    assert bad.returncode == 3 and "refused: project id '../etc'" in bad.stderr
    only_blue = state / "only-blue.toml"
    only_blue.write_text('version = 1\n[[project]]\nmatch = "blue"\n')
    denied = run_text("red", "true", state=state, policy=str(only_blue))
    assert denied.returncode == 3
    assert f"project 'red' matches no [[project]] rule in {only_blue}" in denied.stderr


def test_timeout_kills_the_tree_and_exits_124(state: Path) -> None:
    policy = state / "short.toml"
    policy.write_text('version = 1\n[[project]]\nmatch = "*"\ntimeout = "1s"\nkill_grace = "1s"\n')
    result = run_text(
        "blue",
        "trap '' TERM; sleep 60 & wait",
        state=state,
        policy=str(policy),
    )
    assert result.returncode == 124 and "timed out after 1s" in result.stderr


def test_doctor_passes_the_strict_policy_as_root(state: Path) -> None:
    result = sandworker("doctor", state=state, policy=STRICT)
    assert result.returncode == 0, result.stderr
    assert "MISSING" not in result.stdout.split("syntax")[0]
    assert "every required layer (17) is available" in result.stdout


def test_non_root_runs_with_unprivileged_layers_and_says_what_is_missing(state: Path) -> None:
    policy = state / "laptop.toml"
    policy.write_text(
        'version = 1\n[[project]]\nmatch = "demo"\nnetwork = "none"\n'
        'require = ["mount", "pid", "network", "landlock", "no_new_privs"]\n'
    )
    (state / "state").mkdir()
    os.chown(state / "state", NOBODY, NOBODY)
    result = run_text(
        "demo",
        "id -u; echo [0-9]* ; cd /proc && echo [0-9]*; ls /",
        state=state,
        user=NOBODY,
        policy=str(policy),
    )
    assert result.returncode == 0, result.stderr
    uid, _, pids, listing = result.stdout.split("\n", 3)
    assert uid == str(NOBODY) and pids == "1 2"
    assert "home" not in listing.split() and "root" not in listing.split()
    assert "layer account: NOT applied: not running as root" in result.stderr
    assert "layer cgroup_memory: NOT applied" in result.stderr


def test_non_root_refuses_a_policy_that_requires_more(state: Path) -> None:
    strict = shutil.copy(STRICT, state / "strict.toml")  # readable wherever CI cloned us
    result = run_text("demo", "echo ran", state=state, user=NOBODY, policy=str(strict))
    assert result.returncode == 3 and "ran" not in result.stdout
    assert "requires layers this host lacks: account:" in result.stderr
    doctor = sandworker("doctor", state=state, user=NOBODY, policy=str(strict))
    assert doctor.returncode == 1 and "account, cgroup_cpu" in doctor.stderr
