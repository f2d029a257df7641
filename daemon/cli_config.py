"""`sandworker config check|schema|docs`, `sandworker metrics docs` and `sandworker reload`:
the daemon's configuration, its metrics and reloading it, for sysadmins."""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path

from .config import (
    DEFAULT_CONFIG,
    DEFAULT_STATE,
    ConfigError,
    config_reference,
    config_schema,
    control_socket,
    load_config,
)

EXIT_UNREACHABLE = 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = subparsers.add_parser("config", help="check and document the configuration file")
    commands = config.add_subparsers(dest="config_command", required=True)
    check = commands.add_parser(
        "check", help="validate a configuration file as `serve` would (exit 1 if invalid)"
    )
    check.add_argument("file", nargs="?", default=str(DEFAULT_CONFIG))
    check.set_defaults(func=cmd_check)
    schema = commands.add_parser("schema", help="print the configuration JSON Schema")
    schema.set_defaults(
        func=lambda _args: _print(json.dumps(config_schema(), indent=2, sort_keys=True) + "\n")
    )
    docs = commands.add_parser("docs", help="print the configuration field reference (Markdown)")
    docs.set_defaults(func=lambda _args: _print(config_reference()))
    metrics = subparsers.add_parser("metrics", help="document the Prometheus metrics")
    metrics_commands = metrics.add_subparsers(dest="metrics_command", required=True)
    metrics_docs = metrics_commands.add_parser("docs", help="print the metrics reference")
    metrics_docs.set_defaults(func=_metrics_docs)
    audit = subparsers.add_parser("audit", help="check the audit log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser(
        "verify",
        help="check the audit log's hash chain and its head: exit 1 and the first bad record"
        " if any record was edited, deleted or cut off",
    )
    verify.add_argument("file", nargs="?", help="default: the config's state.audit_log")
    verify.add_argument(
        "--after",
        action="append",
        default=[],
        metavar="ROTATED",
        help="a rotated file that comes before it (repeat, oldest first)",
    )
    verify.add_argument("--config", default=str(DEFAULT_CONFIG), help="the daemon's config file")
    verify.set_defaults(func=cmd_audit_verify)
    reload = subparsers.add_parser(
        "reload",
        help="make the running daemon re-read configuration, policy, trust and workers",
        description="Ask the daemon (over its control socket) to reload, and wait for the"
        " answer. Running scripts are untouched. Exit status: 0 reloaded, 1 the reload failed"
        " (the daemon keeps its last good state; the problems are printed), 2 no daemon"
        " answered.",
    )
    reload.add_argument("--config", default=str(DEFAULT_CONFIG), help="the daemon's config file")
    reload.add_argument("--socket", help="the control socket (default: from the config file)")
    reload.add_argument("--timeout", type=float, default=120.0, help="seconds to wait")
    reload.set_defaults(func=cmd_reload)


def cmd_check(args: argparse.Namespace) -> int:
    try:
        load_config(Path(args.file))
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 1
    print(f"ok: {args.file}")
    return 0


def _print(text: str) -> int:
    sys.stdout.write(text)
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    from .control import request_reload  # noqa: PLC0415 - Twisted loads only when needed

    path = Path(args.socket) if args.socket else _control_socket(Path(args.config))
    try:
        result = request_reload(path, args.timeout)
    except (OSError, ValueError, KeyError) as exc:
        print(f"sandworker: no daemon answered at {path}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if not result.ok:
        print("sandworker: the reload failed; the daemon keeps its last good state:",
              file=sys.stderr)  # fmt: skip
        for problem in result.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print("reloaded")
    for note in result.notes:
        print(f"  note: {note}")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from .audit import verify  # noqa: PLC0415

    if args.file:
        path = Path(args.file)
    else:
        try:
            path = load_config(Path(args.config)).audit_log
        except ConfigError as error:
            print(f"sandworker: name the audit log, or fix {args.config}:\n{error}",
                  file=sys.stderr)  # fmt: skip
            return 2
    try:
        verdict = verify(path, *map(Path, args.after))
    except OSError as exc:
        print(f"sandworker: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    print(f"{'ok' if verdict.ok else 'BAD'}: {path}: {verdict.message}")
    return 0 if verdict.ok else 1


def _metrics_docs(_args: argparse.Namespace) -> int:
    from .metrics import metrics_reference  # noqa: PLC0415 - prometheus_client only here

    return _print(metrics_reference())


def _control_socket(config: Path) -> Path:
    """The control socket the config file names: read leniently when it is invalid, since
    the file may be the very thing that is wrong (the daemon then reports its problems)."""
    try:
        return load_config(config).control_socket
    except ConfigError:
        pass
    try:
        raw = tomllib.loads(config.read_text())
        server, state = raw.get("server", {}), raw.get("state", {})
        return control_socket(
            str(server.get("control_socket", "")), str(state.get("directory", DEFAULT_STATE))
        )
    except (OSError, ValueError, AttributeError):
        return control_socket("", DEFAULT_STATE)
