"""Run scripts from a supervisor process started just for them, and report as JSON.

The sandbox starts its launcher once per supervisor process and the launcher
inherits what the supervisor had at that moment: environment, open descriptors,
session keyring. Probes of those layers therefore need a supervisor that had the
bait from the start, as the daemon would (a systemd service has a session
keyring of its own; an operator's shell exports LD_PRELOAD; a library leaks a
descriptor). This process is that supervisor: it inherits the test's environment
and any descriptors the test passes, optionally joins a new session keyring and
stores a secret in it, then runs the requested scripts through a Sandbox of its
own and prints one JSON line as its last line of output.

Usage: python -m tests.security.fresh_supervisor < request.json
request: {"state": dir, "keyring_secret": str | null,
          "runs": [{"project", "body", "syntax", "args"}, ...]}
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
import sys
from pathlib import Path

from sandworker.sandbox.runner import Sandbox
from sandworker.sandbox.settings import SandboxSettings
from tests.sandboxing import make_policy, run

SYS_ADD_KEY, SYS_KEYCTL = 248, 250
JOIN_SESSION_KEYRING, READ = 1, 11
SESSION = -3
SECRET_KEY = b"sandworker-supervisor-secret"

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def check(result: int, what: str) -> int:
    if result < 0:
        raise OSError(ctypes.get_errno(), f"{what}: {os.strerror(ctypes.get_errno())}")
    return result


def keys_in(ring: int) -> list[int]:
    buf = ctypes.create_string_buffer(4096)
    got = libc.syscall(SYS_KEYCTL, ctypes.c_long(READ), ctypes.c_long(ring), buf, 4096)
    check(got, "read keyring")
    return list(struct.unpack(f"{got // 4}i", buf.raw[:got]))


def main() -> None:
    request = json.load(sys.stdin)
    report: dict[str, object] = {"runs": []}
    secret = request.get("keyring_secret")
    if secret:
        ring = check(libc.syscall(SYS_KEYCTL, ctypes.c_long(JOIN_SESSION_KEYRING), None), "join")
        data = secret.encode()
        key = libc.syscall(
            SYS_ADD_KEY, b"user", SECRET_KEY, data, len(data), ctypes.c_long(SESSION)
        )
        report.update(ring=ring, key=check(key, "add_key"))
    # what this supervisor holds, so the test can check that the bait was really there
    report["environ_names"] = sorted(os.environ)
    report["open_fds"] = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
    sandbox = Sandbox(SandboxSettings(state_dir=Path(request["state"])))
    for item in request["runs"]:
        args = tuple(a.format(**report) for a in item.get("args", ()))
        policy = make_policy(item["project"])
        result = run(
            sandbox,
            item["project"],
            item["body"],
            syntax=item.get("syntax", "bash"),
            policy=policy,
            args=args,
        )
        report["runs"].append(  # type: ignore[attr-defined]
            {
                "reason": str(result.outcome.reason),
                "exit_code": result.outcome.exit_code,
                "signal": result.outcome.signal,
                "stdout": result.stdout,
                "stderr": result.stderr,
            }
        )
    if secret:
        report["keys_after"] = keys_in(int(report["ring"]))  # type: ignore[call-overload]
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
