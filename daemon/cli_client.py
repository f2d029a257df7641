"""`sandworker script run|start|status|logs|cancel|complete|artifacts`: the client side."""

from __future__ import annotations

import argparse
import sys
import urllib.parse
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


def _request(args: argparse.Namespace) -> dict[str, Any]:
    body = args.command if args.command is not None else Path(args.file).read_text()
    request: dict[str, Any] = {"project": args.project, "syntax": args.syntax, "body": body}
    if args.timeout:
        request["timeout"] = args.timeout
    if args.isolation:
        request["isolation"] = args.isolation
    if args.mutex:
        request["mutex"] = args.mutex
    return request


def cmd_run(args: argparse.Namespace) -> int:
    from .client import ClientError  # noqa: PLC0415

    ticket = args.ticket or uuid.uuid4().hex
    try:
        client = _client(args)
        client.start(ticket, _request(args))
        final = client.follow(ticket, _print_line)
        client.complete(ticket)
    except ClientError as exc:
        print(f"sandworker: {exc}", file=sys.stderr)
        return 125
    return _exit_code(final)


def cmd_start(args: argparse.Namespace) -> int:
    """Start without waiting; print the ticket, for `status`, `logs`, `cancel`, `complete`."""
    from .client import ClientError  # noqa: PLC0415

    ticket = args.ticket or uuid.uuid4().hex
    try:
        doc = _client(args).start(ticket, _request(args))
    except ClientError as exc:
        print(f"sandworker: {exc}", file=sys.stderr)
        return 1
    print(ticket)
    print(f"sandworker: {ticket}: {doc['state']}", file=sys.stderr)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    """Print the log lines after --after; with --follow, until the script ends (then its code)."""
    from .client import ClientError  # noqa: PLC0415

    try:
        client = _client(args)
        if args.follow:
            return _exit_code(client.follow(args.ticket, _print_line, after=args.after))
        doc = client.status(args.ticket, args.after)
    except ClientError as exc:
        print(f"sandworker: {exc}", file=sys.stderr)
        return 1
    for line in doc["logs"]:
        _print_line(line)
    return 0


def cmd_simple(args: argparse.Namespace) -> int:
    from .client import ClientError  # noqa: PLC0415

    try:
        client = _client(args)
        if args.operation == "status":
            doc = client.status(args.ticket, args.after, args.wait)
        else:
            doc = getattr(client, args.operation)(args.ticket)
    except ClientError as exc:
        print(f"sandworker: {exc}", file=sys.stderr)
        return 1
    for line in doc.get("logs", []):
        _print_line(line)
    print(
        f"sandworker: {args.ticket}: {doc['state']}, exit code {doc['exit_code']},"
        f" next_seq {doc.get('next_seq')}",
        file=sys.stderr,
    )
    return 0


def cmd_artifacts(args: argparse.Namespace) -> int:
    """List a ticket's artifacts; with --download, fetch the kept ones into DIR."""
    from .client import ClientError  # noqa: PLC0415

    try:
        client = _client(args)
        doc = client.status(args.ticket)
        for artifact in doc.get("artifacts", []):
            name, kept = str(artifact.get("name", "")), artifact.get("kept")
            why = "" if kept else f"  (not kept: {artifact.get('refused', 'not collected yet')})"
            print(f"{name}\t{artifact.get('length', 0)} bytes{why}")
            if args.download and kept:
                target = Path(args.download) / (Path(name).name or "artifact")
                quoted = urllib.parse.quote(name, safe="")
                with open(target, "xb") as out:
                    client.download(f"/v1/scripts/{args.ticket}/artifacts/{quoted}", out)
                print(f"  -> {target}")
    except (ClientError, OSError) as exc:
        print(f"sandworker: {exc}", file=sys.stderr)
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    script = subparsers.add_parser("script", help="run scripts on a worker").add_subparsers(
        dest="script_command", required=True
    )

    def profile(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--profile",
            help="client profile (default $SANDWORKER_PROFILE, else"
            " $XDG_CONFIG_HOME or ~/.config, then sandworker/profile.toml)",
        )

    def script_args(p: argparse.ArgumentParser) -> None:
        profile(p)
        p.add_argument("--project", required=True)
        p.add_argument("--syntax", default="bash")
        p.add_argument("--timeout", type=float, help="seconds (at most the policy's)")
        p.add_argument("--isolation", choices=["full", "none"])
        p.add_argument("--mutex", help="isolation mutex name")
        p.add_argument("--ticket", help="ticket id (default: a new random one)")
        what = p.add_mutually_exclusive_group(required=True)
        what.add_argument("file", nargs="?")
        what.add_argument("-c", dest="command", metavar="TEXT")

    run = script.add_parser("run", help="start a script, stream its output, exit with its code")
    script_args(run)
    run.set_defaults(func=cmd_run)
    start = script.add_parser("start", help="start a script and print its ticket")
    script_args(start)
    start.set_defaults(func=cmd_start)
    logs = script.add_parser("logs", help="print a ticket's log lines")
    profile(logs)
    logs.add_argument("ticket")
    logs.add_argument("--after", type=int, default=-1, help="only lines after this sequence")
    logs.add_argument(
        "--follow",
        action="store_true",
        help="keep printing until the script ends; exit with its code",
    )
    logs.set_defaults(func=cmd_logs)
    for operation in ("status", "cancel", "complete"):
        sub = script.add_parser(operation, help=f"{operation} a ticket")
        profile(sub)
        sub.add_argument("ticket")
        if operation == "status":
            sub.add_argument("--after", type=int, default=-1, help="only lines after this sequence")
            sub.add_argument(
                "--wait", type=int, default=0, help="long-poll up to this many seconds"
            )
        sub.set_defaults(func=cmd_simple, operation=operation)
    artifacts = script.add_parser("artifacts", help="list (and --download) a ticket's artifacts")
    profile(artifacts)
    artifacts.add_argument("ticket")
    artifacts.add_argument("--download", metavar="DIR", help="fetch the kept ones into DIR")
    artifacts.set_defaults(func=cmd_artifacts)
