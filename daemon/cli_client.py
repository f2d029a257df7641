"""`sandworker script run|status|cancel|complete`: the client side of the script service."""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path
from typing import Any

# Tentacle's reserved exit codes, and what `script run` exits with for each.
RESERVED = {
    -41: (125, "the worker could not run the script (fatal)"),
    -43: (130, "the script was cancelled"),
    -44: (124, "the script timed out"),
    -45: (2, "the worker does not know this ticket"),
    -46: (125, "the result was lost: the worker stopped while the script ran"),
}


def _client(args: argparse.Namespace) -> Any:
    from .client import Client, Profile  # noqa: PLC0415 - TLS loads only for client commands

    return Client(Profile.load(Path(args.profile) if args.profile else None))


def _print_line(line: dict[str, Any]) -> None:
    stream = sys.stdout if line["source"] == "stdout" else sys.stderr
    prefix = "sandworker: " if line["source"] == "debug" else ""
    print(prefix + line["text"], file=stream, flush=True)


def _exit_code(status: dict[str, Any]) -> int:
    code = int(status["exit_code"])
    if code >= 0:
        return code
    mapped, meaning = RESERVED.get(code, (125, "the worker reported an unknown failure"))
    print(f"sandworker: exit code {code}: {meaning}: {status.get('message', '')}", file=sys.stderr)
    return mapped


def cmd_run(args: argparse.Namespace) -> int:
    from .client import ClientError  # noqa: PLC0415

    body = args.command if args.command is not None else Path(args.file).read_text()
    request: dict[str, Any] = {"project": args.project, "syntax": args.syntax, "body": body}
    if args.timeout:
        request["timeout"] = args.timeout
    if args.isolation:
        request["isolation"] = args.isolation
    if args.mutex:
        request["mutex"] = args.mutex
    ticket = args.ticket or uuid.uuid4().hex
    try:
        client = _client(args)
        client.start(ticket, request)
        final = client.follow(ticket, _print_line)
        client.complete(ticket)
    except ClientError as exc:
        print(f"sandworker: {exc}", file=sys.stderr)
        return 125
    return _exit_code(final)


def cmd_simple(args: argparse.Namespace) -> int:
    from .client import ClientError  # noqa: PLC0415

    try:
        client = _client(args)
        doc = getattr(client, args.operation)(args.ticket)
    except ClientError as exc:
        print(f"sandworker: {exc}", file=sys.stderr)
        return 1
    for line in doc.get("logs", []):
        _print_line(line)
    print(
        f"sandworker: {args.ticket}: {doc['state']}, exit code {doc['exit_code']}", file=sys.stderr
    )
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    script = subparsers.add_parser("script", help="run scripts on a worker").add_subparsers(
        dest="script_command", required=True
    )

    def profile(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--profile",
            help="client profile (default $SANDWORKER_PROFILE or"
            " ~/.config/sandworker/profile.toml)",
        )

    run = script.add_parser("run", help="start a script, stream its output, exit with its code")
    profile(run)
    run.add_argument("--project", required=True)
    run.add_argument("--syntax", default="bash")
    run.add_argument("--timeout", type=float, help="seconds (at most the policy's)")
    run.add_argument("--isolation", choices=["full", "none"])
    run.add_argument("--mutex", help="isolation mutex name")
    run.add_argument("--ticket", help="ticket id (default: a new random one)")
    what = run.add_mutually_exclusive_group(required=True)
    what.add_argument("file", nargs="?")
    what.add_argument("-c", dest="command", metavar="TEXT")
    run.set_defaults(func=cmd_run)
    for operation in ("status", "cancel", "complete"):
        sub = script.add_parser(operation, help=f"{operation} a ticket")
        profile(sub)
        sub.add_argument("ticket")
        sub.set_defaults(func=cmd_simple, operation=operation)
