"""The systemd notify protocol (sd_notify(3)), spoken directly: one datagram a message.

`Notifier.from_environment` reads NOTIFY_SOCKET (a path, or an abstract name written
with a leading "@"), WATCHDOG_USEC and WATCHDOG_PID, and removes all three from the
environment, so that no process the daemon starts inherits them. Without NOTIFY_SOCKET
every method does nothing. A message that cannot be sent is logged once, never raised:
systemd's bookkeeping must not stop the daemon.

The daemon sends READY=1 once it listens and has recovered its tickets; STATUS= with its
running and queued counts; WATCHDOG=1 from the reactor's own loop (a blocked reactor
sends nothing, and systemd restarts it), at half of WATCHDOG_USEC and only while it is
healthy; RELOADING=1 with MONOTONIC_USEC= then READY=1 around a reload; and STOPPING=1,
with EXTEND_TIMEOUT_USEC= while it lets running scripts finish.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import MutableMapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        self._warned = False
        if address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] = os.environ) -> Notifier:
        address = environ.pop("NOTIFY_SOCKET", None) or None
        usec, pid = environ.pop("WATCHDOG_USEC", None), environ.pop("WATCHDOG_PID", None)
        watchdog = None
        if usec is not None and (pid is None or pid == str(os.getpid())):
            try:
                watchdog = int(usec) if int(usec) > 0 else None
            except ValueError:
                log.warning("WATCHDOG_USEC=%r is not a number of microseconds: ignored", usec)
        return cls(address, watchdog)

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 messages (half the unit's WatchdogSec), or None."""
        if self._sock is None or self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2e6

    def ready(self, status: str) -> None:
        self.send(READY="1", STATUS=status)

    def status(self, status: str) -> None:
        self.send(STATUS=status)

    def watchdog(self) -> None:
        self.send(WATCHDOG="1")

    def reloading(self) -> None:
        self.send(RELOADING="1", MONOTONIC_USEC=str(time.monotonic_ns() // 1000))

    def stopping(self, status: str, extend_seconds: float | None = None) -> None:
        fields = {"STOPPING": "1", "STATUS": status}
        if extend_seconds is not None:
            fields["EXTEND_TIMEOUT_USEC"] = str(int(extend_seconds * 1e6))
        self.send(**fields)

    def extend(self, seconds: float, status: str) -> None:
        """Ask for more time to stop (systemd counts it from now)."""
        self.send(EXTEND_TIMEOUT_USEC=str(int(seconds * 1e6)), STATUS=status)

    def send(self, **fields: str) -> None:
        if self._sock is None or self.address is None:
            return
        # one line a field: a newline inside a value would start a field of its own
        text = "\n".join(f"{k}={' '.join(v.splitlines())}" for k, v in fields.items())
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:  # never blocking the reactor: a message systemd is too slow to take is dropped
            self._sock.sendto(text.encode(), socket.MSG_DONTWAIT, target)
            self._warned = False
        except OSError as exc:
            if not self._warned:
                log.warning("cannot notify systemd at %s: %s", self.address, exc)
            self._warned = True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
