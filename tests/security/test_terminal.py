"""TIOCSTI with a terminal really there: the supervisor runs on a pty (root only).

The escape suite's supervisor has no terminal in CI, so its TIOCSTI probe would
pass even without the session layer. Here `sandworker sandbox run` runs with a
pty as its controlling terminal, as when an administrator tries a policy by
hand. The positive control runs the same probe as an unprivileged process in
that session, outside the sandbox, and must be caught.
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sandboxing import scratch_dir

pytestmark = pytest.mark.root

PROBE = Path(__file__).with_name("probes") / "tiocsti.py"
SANDWORKER = str(Path(sys.executable).with_name("sandworker"))
NOBODY = 65534
POLICY = """\
version = 1

[[project]]
match = "red"
syntaxes = ["python"]
timeout = "30s"
require = ["session", "descriptors", "account"]
"""


@pytest.fixture
def base() -> Iterator[Path]:
    with scratch_dir("sandworker-tty-") as path:
        yield path


def on_a_pty(argv: list[str], timeout: float = 60) -> tuple[int, str]:
    """Run argv as the session leader of a new pty; return its exit status and all it printed."""
    pid, master = pty.fork()
    if pid == 0:  # child: the pty is now our controlling terminal
        try:
            os.execve(argv[0], argv, {"PATH": "/usr/bin:/bin", "HOME": "/"})
        finally:
            os._exit(127)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every slave side closed
                    break
                if not chunk:
                    break
                out += chunk
        else:
            os.kill(pid, 9)
    finally:
        os.close(master)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def test_probe_catches_a_process_that_shares_the_terminal(base: Path) -> None:
    # Positive control: without the sandbox, an unprivileged process on the same pty is caught.
    probe = base / "tiocsti.py"
    shutil.copy(PROBE, probe)
    probe.chmod(0o644)
    argv = ["/usr/bin/setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    code, out = on_a_pty([*argv, "/usr/bin/python3", "-I", str(probe)])
    assert code == 77, out
    assert "ESCAPE: the script has a controlling terminal" in out


def test_red_cannot_inject_into_the_supervisors_terminal(base: Path) -> None:
    (base / "policy.toml").write_text(POLICY)
    argv = [SANDWORKER, "sandbox", "run", "--project", "red", "--syntax", "python"]
    argv += ["--policy-dir", str(base / "policy.toml"), "--state-dir", str(base / "state")]
    code, out = on_a_pty([*argv, str(PROBE)])
    assert "ESCAPE" not in out, out
    assert "probe: done" in out and "denied: TIOCSTI" in out, out
    assert code == 0, out
