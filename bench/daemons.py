"""Starting real daemons for the benchmarks (root; throwaway development homes)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

SANDWORKER = str(Path(sys.executable).with_name("sandworker"))


def serve(config: Path) -> subprocess.Popen[str]:
    """`sandworker serve --config CONFIG`, returned once it listens; its output is drained."""
    proc = subprocess.Popen(
        [SANDWORKER, "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "listening on" in line:
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc
    raise SystemExit(f"daemon did not start: {proc.wait()}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
