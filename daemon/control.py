"""Reload: re-read configuration, policy, trust and workers without touching running scripts.

A reload comes from SIGHUP or from `sandworker reload` over the control socket (a Unix
socket, mode 0600, that answers root and the daemon's own user only; SO_PEERCRED is
checked too). The socket answers one JSON line: `ok`, the `problems` that made the
reload fail and the `notes` of a successful one. An invalid file keeps the last good
state: nothing of a failed reload applies.

What applies at once: the policy directory's files (and `sandbox.policy_dir` itself) and
`sandbox.max_concurrent`. The trust and workers files are followed on every read anyway
(watched.py; trust fails closed while it is invalid); a reload checks them now and
reports their problems, and runs the health checks at once. Any other setting that
changed is named in the notes: it applies at the next start.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import protocol

from sandworker.sandbox.policy import PolicyError, PolicySet, load_policies

from .audit import AuditLog, Event
from .config import Config, ConfigError, load_config
from .trust import TrustError, TrustStore
from .workers import WorkerError, WorkerStore

LIVE = {"sandbox.policy_dir", "sandbox.max_concurrent"}  # applied by a reload
log = logging.getLogger(__name__)


@dataclass
class ReloadResult:
    ok: bool
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> bytes:
        return json.dumps({"ok": self.ok, "problems": self.problems, "notes": self.notes}).encode()


class Reloader:
    """The current configuration and policies; `reload` replaces both, or neither."""

    def __init__(
        self,
        config: Config,
        policies: PolicySet,
        audit: AuditLog,
        *,
        set_limit: Callable[[int], None],
        check_workers: Callable[[], object],
        on_failed: Callable[[], object] = lambda: None,
    ) -> None:
        self.config, self.policies, self._audit = config, policies, audit
        self._set_limit, self._check_workers, self._on_failed = set_limit, check_workers, on_failed
        self.last_failed = False  # (the count is the metrics' reload_failures)
        self.last_success = time.time()  # of the last good load (the first one: now)

    def reload(self) -> ReloadResult:
        try:
            config = load_config(self.config.path)
            policies = load_policies([Path(config["sandbox.policy_dir"])])
        except (ConfigError, PolicyError, OSError) as exc:
            return self._failed(str(exc).splitlines() or [repr(exc)])
        problems = _check_watched(config)
        if problems:
            return self._failed(problems)
        notes = [
            f"{name} changed: it applies at the next start"
            for name in sorted(config.values)
            if name not in LIVE and config[name] != self.config[name]
        ]
        self.config, self.policies = config, policies
        self._set_limit(config["sandbox.max_concurrent"])
        self._check_workers()
        self.last_success, self.last_failed = time.time(), False
        log.info("reloaded %s; policy: %s", config.path, policies.summary())
        for note in notes:
            log.warning("reload: %s", note)
        self._audit.record(Event.DAEMON_RELOAD, ok=True, notes=notes)
        return ReloadResult(True, notes=notes)

    def _failed(self, problems: list[str]) -> ReloadResult:
        self.last_failed = True
        self._on_failed()
        log.error("reload failed; the last good configuration stays:\n%s", "\n".join(problems))
        self._audit.record(Event.DAEMON_RELOAD, ok=False, problems=problems)
        return ReloadResult(False, problems=problems)


def _check_watched(config: Config) -> list[str]:
    problems = []
    try:
        TrustStore(Path(config["tls.trust"])).entries()
    except TrustError as exc:
        problems.append(f"{exc} (until it is fixed, every client is refused)")
    try:
        WorkerStore(Path(config["external.workers"])).workers()
    except WorkerError as exc:
        problems.append(str(exc))
    return problems


class _Control(protocol.Protocol):
    """One request line, one answer line, then the connection closes."""

    MAX_REQUEST = 1024

    def __init__(self, on_reload: Callable[[], ReloadResult]) -> None:
        self._on_reload, self._buffer = on_reload, b""
        self.transport: Any = None

    def connectionMade(self) -> None:
        sock = self.transport.getHandle()
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid not in (0, os.geteuid()):
            log.warning("control socket: refused a connection from uid %d", uid)
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        if b"\n" not in self._buffer and len(self._buffer) < self.MAX_REQUEST:
            return
        line = self._buffer.partition(b"\n")[0].strip()
        if line == b"reload":
            result = self._on_reload()
        else:
            result = ReloadResult(
                False, [f"unknown request {line[:40]!r}; this socket takes: reload"]
            )
        self.transport.write(result.to_json() + b"\n")
        self.transport.loseConnection()


class ControlFactory(protocol.Factory):
    noisy = False  # (no "Starting factory" line in the log)

    def __init__(self, on_reload: Callable[[], ReloadResult]) -> None:
        self._on_reload = on_reload

    def buildProtocol(self, addr: Any) -> _Control:
        return _Control(self._on_reload)


def clear_stale_socket(path: Path) -> None:
    """Remove a socket a crashed daemon left (never anything else) before listening."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(f"{path} exists and is not a socket; remove it or set server.control_socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            os.unlink(path)
            return
    raise OSError(f"{path}: another daemon listens there (one daemon per state directory)")


def request_reload(path: Path, timeout: float = 60.0) -> ReloadResult:
    """What `sandworker reload` does: ask the daemon at `path`, wait for its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(b"reload\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    doc = json.loads(data)
    return ReloadResult(bool(doc["ok"]), list(doc["problems"]), list(doc["notes"]))
