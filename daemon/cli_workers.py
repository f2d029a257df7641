"""`sandworker external-worker` (as Octopus has it) and `sandworker pool add|remove|list`.

They edit the workers file (`--home`/workers.toml, the default of `[external] workers`);
a running daemon follows the file and applies a change at its next health check, with
no restart. While the file lists any worker, the daemon runs no script itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .home import DEFAULT_HOME, WORKERS_NAME

if TYPE_CHECKING:
    from .workers import WorkerError, WorkerStore

# The handlers import the workers file's code (and with it the TLS stack) when they run,
# not when the CLI starts, as cli_certs does.

DEFAULT_STATE = Path("/var/lib/sandworker")
_APPLIES = "the running daemon applies it at its next health check; no restart is needed"


def _store(args: argparse.Namespace) -> WorkerStore:
    from .workers import WorkerStore  # noqa: PLC0415 - see above

    return WorkerStore(args.home / WORKERS_NAME)


def _fail(error: WorkerError) -> int:
    print(f"sandworker: {error}", file=sys.stderr)
    return 1


def cmd_external_worker(args: argparse.Namespace) -> int:
    from .workers import DEFAULT_POOL, WorkerError  # noqa: PLC0415

    try:
        if args.reset:
            removed = _store(args).reset_default()
            for worker in removed:
                print(f"removed {worker.address} from pool {DEFAULT_POOL}")
            if not _store(args).workers():
                print("no external worker is left: the built-in worker runs scripts again")
        else:
            if not args.address or not args.thumbprint:
                print(
                    "sandworker: --address and --thumbprint are needed (or --reset)",
                    file=sys.stderr,
                )
                return 2
            worker = _store(args).set_default(args.address, args.thumbprint)
            print(f"pool {DEFAULT_POOL}: {worker.address} (thumbprint {worker.thumbprint})")
            print("the built-in worker is off: every script goes to an external worker")
    except WorkerError as exc:
        return _fail(exc)
    print(_APPLIES)
    return 0


def cmd_pool_add(args: argparse.Namespace) -> int:
    from .workers import WorkerError  # noqa: PLC0415

    try:
        worker, changed = _store(args).add(args.name, args.address, args.thumbprint)
    except WorkerError as exc:
        return _fail(exc)
    said = "added" if changed else "already there:"
    print(f"{said} {worker.address} in pool {worker.pool} (thumbprint {worker.thumbprint})")
    print(_APPLIES)
    return 0


def cmd_pool_remove(args: argparse.Namespace) -> int:
    from .workers import WorkerError  # noqa: PLC0415

    try:
        removed = _store(args).remove(args.name, args.address)
    except WorkerError as exc:
        return _fail(exc)
    for worker in removed:
        print(f"removed {worker.address} from pool {worker.pool}")
    print(_APPLIES)
    return 0


def cmd_pool_list(args: argparse.Namespace) -> int:
    from .workers import WorkerError  # noqa: PLC0415

    try:
        workers = _store(args).workers()
    except WorkerError as exc:
        return _fail(exc)
    if not workers:
        print("no external workers: the built-in worker runs scripts")
        return 0
    checks = _last_checks(args.state_dir / "workers.json")
    for worker in workers:
        seen = checks.get((worker.pool, worker.address))
        if seen is None or seen.get("healthy") is None:
            health = "not checked yet"
        else:
            state = "healthy" if seen.get("healthy") else "UNHEALTHY"
            latency = seen.get("latency_ms")
            health = (
                f"{state}, checked {seen.get('checked')}, running {seen.get('running', 0)}"
                + (f", {latency} ms" if latency is not None else "")
                + (f": {seen['error']}" if seen.get("error") else "")
            )
        print(f"{worker.pool}  {worker.address}  {health}")
    return 0


def _last_checks(path: Path) -> dict[tuple[str, str], dict[str, object]]:
    try:
        report = json.loads(path.read_text())
        return {(w["pool"], w["address"]): w for w in report["workers"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--home",
        type=Path,
        default=DEFAULT_HOME,
        metavar="DIR",
        help=f"directory holding {WORKERS_NAME} (default {DEFAULT_HOME})",
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    what = "the worker's SHA-256 or SHA-1 thumbprint (sandworker show-thumbprint on it)"
    external = subparsers.add_parser(
        "external-worker",
        help="hand every script to one external worker (Octopus's command), or --reset",
    )
    external.add_argument("--address", metavar="URL", help="https://HOST:PORT of the worker")
    external.add_argument("--thumbprint", metavar="THUMBPRINT", help=what)
    external.add_argument(
        "--reset", action="store_true", help="remove it: the built-in worker runs scripts again"
    )
    _common(external)
    external.set_defaults(func=cmd_external_worker)

    pool = subparsers.add_parser("pool", help="manage pools of external workers")
    commands = pool.add_subparsers(dest="pool_command", required=True)
    add = commands.add_parser("add", help="add a worker to a pool (created if new)")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--address", metavar="URL", required=True, help="https://HOST:PORT")
    add.add_argument("--thumbprint", metavar="THUMBPRINT", required=True, help=what)
    _common(add)
    add.set_defaults(func=cmd_pool_add)
    remove = commands.add_parser("remove", help="remove a worker, or a whole pool")
    remove.add_argument("name", metavar="NAME")
    remove.add_argument("--address", metavar="URL", help="only this worker (default: all)")
    _common(remove)
    remove.set_defaults(func=cmd_pool_remove)
    listing = commands.add_parser("list", help="every worker with its last health check")
    _common(listing)
    listing.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE,
        metavar="DIR",
        help=f"the daemon's state directory, where it keeps the checks (default {DEFAULT_STATE})",
    )
    listing.set_defaults(func=cmd_pool_list)
