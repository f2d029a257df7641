"""`sandworker script run|start|status|logs|cancel|complete|artifacts` and `sandworker
package upload|fetch|list|remove`: the client side."""

from __future__ import annotations

import argparse
import json
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
    """The start request of `script run|start`; ClientError for what cannot be read."""
    from .client import ClientError  # noqa: PLC0415

    if args.command is None and args.file is None and args.package is None:
        raise ClientError("give the script (FILE or -c TEXT), a --package, or both")
    try:
        body = args.command if args.command is not None else ""
        if args.file is not None:
            body = Path(args.file).read_text()
        request: dict[str, Any] = {"project": args.project, "syntax": args.syntax, "body": body}
        if args.variables:  # a file: values never go on a command line
            request["variables"] = json.loads(Path(args.variables).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ClientError(f"cannot read the request's files: {exc}") from None
    if args.package:
        request["package"] = args.package
    if args.substitute:
        request["substitute"] = args.substitute
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


def cmd_package(args: argparse.Namespace) -> int:
    from .client import ClientError  # noqa: PLC0415

    where = f"/v1/projects/{urllib.parse.quote(args.project, safe='')}/packages"
    try:
        client = _client(args)
        if args.operation == "list":
            for item in client.checked("GET", where)["packages"]:
                print(f"{item['name']}\t{item['length']} bytes\tsha256 {item.get('sha256')}")
            return 0
        if args.operation == "remove":
            client.checked("DELETE", f"{where}/{urllib.parse.quote(args.name, safe='')}")
            print(f"removed {args.name}")
            return 0
        if args.operation == "upload":
            name = args.name or Path(args.file).name
            doc = client.upload(args.project, name, Path(args.file))
        else:
            name = args.name or urllib.parse.urlsplit(args.url).path.rsplit("/", 1)[-1]
            doc = client.checked("POST", where, {"name": name, "url": args.url,
                                                 "sha256": args.sha256})  # fmt: skip
    except (ClientError, OSError) as exc:
        print(f"sandworker: {exc}", file=sys.stderr)
        return 1
    print(f"{doc['name']}\t{doc['length']} bytes\tsha256 {doc['sha256']}")
    return 0


def profile(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--profile",
        help="client profile (default $SANDWORKER_PROFILE, else"
        " $XDG_CONFIG_HOME or ~/.config, then sandworker/profile.toml)",
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    script = subparsers.add_parser("script", help="run scripts on a worker").add_subparsers(
        dest="script_command", required=True
    )

    def script_args(p: argparse.ArgumentParser) -> None:
        profile(p)
        p.add_argument("--project", required=True)
        p.add_argument("--syntax", default="bash")
        p.add_argument("--timeout", type=float, help="seconds (at most the policy's)")
        p.add_argument("--isolation", choices=["full", "none"])
        p.add_argument("--mutex", help="isolation mutex name")
        p.add_argument("--ticket", help="ticket id (default: a new random one)")
        p.add_argument(
            "--package",
            metavar="NAME",
            help="a package of the project's cache: run its stage scripts",
        )
        p.add_argument(
            "--substitute",
            action="append",
            metavar="GLOB",
            help="substitute #{Name} in the package's files matching GLOB",
        )
        p.add_argument("--variables", metavar="FILE",
                       help='a JSON list of {"name", "value", "sensitive"}')  # fmt: skip
        what = p.add_mutually_exclusive_group()
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
    _register_packages(subparsers)


def _register_packages(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    package = subparsers.add_parser(
        "package", help="packages in a project's cache on a worker"
    ).add_subparsers(dest="package_command", required=True)
    upload = package.add_parser("upload", help="upload a package file (its SHA-256 checked)")
    fetch = package.add_parser("fetch", help="have the worker download a package itself")
    listing = package.add_parser("list", help="list the project's cached packages")
    remove = package.add_parser("remove", help="remove a package from the project's cache")
    remove.add_argument("name")
    for sub in (upload, fetch, listing, remove):
        profile(sub)
        sub.add_argument("--project", required=True)
    upload.add_argument("file")
    upload.add_argument("--name", help="its name in the cache (default: the file's)")
    fetch.add_argument("url")
    fetch.add_argument("--sha256", required=True, help="the SHA-256 the download must have")
    fetch.add_argument("--name", help="its name in the cache (default: the URL's last part)")
    upload.set_defaults(func=cmd_package, operation="upload")
    fetch.set_defaults(func=cmd_package, operation="fetch")
    listing.set_defaults(func=cmd_package, operation="list")
    remove.set_defaults(func=cmd_package, operation="remove")
