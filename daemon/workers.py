"""External workers: other sandworkers this daemon hands every script to, in named pools.

The file (`[external] workers`, default /etc/sandworker/workers.toml; mode 0600,
replaced atomically, followed without a restart like trust.toml) is managed with
`sandworker external-worker` (Octopus's one worker, in the pool `default`) and
`sandworker pool add|remove|list`:

    [[worker]]
    pool = "default"
    address = "https://10.0.0.5:10933"
    thumbprint = "0A1B..."     # the worker's certificate, SHA-256 or SHA-1 form

While the file names any worker, the daemon's built-in worker is off: it runs no
script itself.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .api import Problem as _Problem
from .api import validate_name
from .certs import InvalidThumbprint, parse_thumbprint
from .watched import WatchedToml, tables

DEFAULT_POOL = "default"
_HEADER = (
    "# External workers: managed with `sandworker external-worker` and `sandworker pool`.\n"
    "# While any is listed, this daemon runs no script itself and proxies every one.\n"
)


class WorkerError(Exception):
    """An unusable workers file or a change that cannot be made; the message says why."""


@dataclass(frozen=True)
class ExternalWorker:
    pool: str
    address: str  # https://HOST:PORT, normalised
    thumbprint: str  # as given: SHA-256 or SHA-1 hex, upper case

    @property
    def name(self) -> str:
        return f"{self.pool}/{self.address}"


def check_pool(name: object) -> str:
    try:
        return validate_name("pool", name)
    except _Problem as exc:
        raise WorkerError(exc.detail) from None


def check_address(address: object) -> str:
    """`https://HOST:PORT` (the port defaults to 10933), or WorkerError saying why not."""
    if not isinstance(address, str):
        raise WorkerError("address must be a string such as https://10.0.0.5:10933")
    parsed = urllib.parse.urlsplit(address.strip())
    try:
        port = parsed.port or 10933
    except ValueError:
        port = 0
    if (
        parsed.scheme != "https"
        or not parsed.hostname
        or not 0 < port < 65536
        or parsed.path not in ("", "/")
        or parsed.query
        or parsed.fragment
        or parsed.username
    ):
        raise WorkerError(
            f"address {address!r} is not allowed: use https://HOST:PORT (mutual TLS only)"
        )
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    return f"https://{host}:{port}"


def check_thumbprint(thumbprint: object) -> str:
    try:
        return parse_thumbprint(thumbprint if isinstance(thumbprint, str) else "").hex
    except InvalidThumbprint as exc:
        raise WorkerError(f"thumbprint: {exc}") from None


def _parse(path: Path, data: dict[str, Any]) -> tuple[ExternalWorker, ...]:
    raw = tables(path, data, "worker", WorkerError)
    workers: list[ExternalWorker] = []
    for n, entry in enumerate(raw, 1):
        where = f"{path}: worker {n}"
        if not isinstance(entry, dict):
            raise WorkerError(f"{where}: expected a table")
        extra = set(entry) - {"pool", "address", "thumbprint"}
        if extra:
            raise WorkerError(f"{where}: unknown field {sorted(extra)[0]!r}")
        try:
            worker = ExternalWorker(
                check_pool(entry.get("pool", DEFAULT_POOL)),
                check_address(entry.get("address")),
                check_thumbprint(entry.get("thumbprint")),
            )
        except WorkerError as exc:
            raise WorkerError(f"{where}: {exc}") from None
        if any(w.pool == worker.pool and w.address == worker.address for w in workers):
            raise WorkerError(f"{where}: {worker.address} is listed twice in pool {worker.pool}")
        workers.append(worker)
    return tuple(workers)


def _render(workers: Sequence[ExternalWorker]) -> bytes:
    blocks = [_HEADER]
    for worker in workers:
        fields = {"pool": worker.pool, "address": worker.address, "thumbprint": worker.thumbprint}
        blocks.append(
            "[[worker]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in fields.items())
        )
    return "\n".join(blocks).encode()


class WorkerStore:
    """The workers file at `path`, re-read whenever it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        none: tuple[ExternalWorker, ...] = ()
        self._file = WatchedToml(path, lambda data: _parse(path, data), none, WorkerError)

    def workers(self) -> tuple[ExternalWorker, ...]:
        return self._file.read()

    def pools(self) -> dict[str, tuple[ExternalWorker, ...]]:
        pools: dict[str, list[ExternalWorker]] = {}
        for worker in self.workers():
            pools.setdefault(worker.pool, []).append(worker)
        return {name: tuple(members) for name, members in pools.items()}

    def set_default(self, address: str, thumbprint: str) -> ExternalWorker:
        """Octopus's `external-worker`: the pool `default` becomes exactly this worker."""
        worker = ExternalWorker(DEFAULT_POOL, check_address(address), check_thumbprint(thumbprint))
        with self._file.locked():
            kept = [w for w in self.workers() if w.pool != DEFAULT_POOL]
            self._file.save(_render([worker, *kept]))
        return worker

    def reset_default(self) -> tuple[ExternalWorker, ...]:
        """`external-worker --reset`: drop the pool `default`; the workers removed."""
        with self._file.locked():
            old = self.workers()
            removed = tuple(w for w in old if w.pool == DEFAULT_POOL)
            self._file.save(_render([w for w in old if w.pool != DEFAULT_POOL]))
        return removed

    def add(self, pool: str, address: str, thumbprint: str) -> tuple[ExternalWorker, bool]:
        """Add a worker to a pool (a new thumbprint replaces the old); whether it changed."""
        worker = ExternalWorker(
            check_pool(pool), check_address(address), check_thumbprint(thumbprint)
        )
        with self._file.locked():
            old = self.workers()
            same = [w for w in old if (w.pool, w.address) == (worker.pool, worker.address)]
            if same == [worker]:
                return worker, False
            new = [w for w in old if w not in same] + [worker]
            self._file.save(_render(new))
        return worker, True

    def remove(self, pool: str, address: str | None = None) -> tuple[ExternalWorker, ...]:
        """Remove one worker of a pool, or the whole pool; WorkerError if nothing matches."""
        wanted = None if address is None else check_address(address)
        with self._file.locked():
            old = self.workers()
            removed = tuple(
                w for w in old if w.pool == pool and (wanted is None or w.address == wanted)
            )
            if not removed:
                listed = ", ".join(w.name for w in old) or "none"
                raise WorkerError(f"no such worker in pool {pool!r}; configured: {listed}")
            self._file.save(_render([w for w in old if w not in removed]))
        return removed
