"""The `sandworker` command line."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sandworker import __version__
from sandworker.sandbox.host import probe
from sandworker.sandbox.layers import DESCRIPTIONS, Layer
from sandworker.sandbox.outcome import Outcome, Reason
from sandworker.sandbox.policy import DEFAULT_POLICY_DIR, PolicyDenied, PolicyError, load_policies
from sandworker.sandbox.projects import InvalidProject, validate_project
from sandworker.sandbox.runner import Request, Sandbox
from sandworker.sandbox.settings import DEFAULT_INTERPRETERS, SandboxSettings, default_state_dir
from sandworker.sandbox.syntaxes import SYNTAXES

from . import cli_certs, cli_client, cli_config, cli_policy, cli_workers, daemonize
from .config import DEFAULT_CONFIG, ConfigError

# Exit codes of `sandbox run` when the script did not simply exit (documented in --help).
EXIT_REFUSED, EXIT_SETUP, EXIT_TIMEOUT = 3, 125, 124


def _policy_paths(args: argparse.Namespace) -> list[Path]:
    return [Path(p) for p in (args.policy_dir or [DEFAULT_POLICY_DIR])]


def _settings(args: argparse.Namespace) -> SandboxSettings:
    interpreters = dict(DEFAULT_INTERPRETERS)
    for item in args.interpreter or []:
        name, _, path = item.partition("=")
        interpreters[name] = path
    return SandboxSettings(state_dir=Path(args.state_dir), interpreters=interpreters)


def _exit_code(outcome: Outcome) -> int:
    if outcome.reason is Reason.REFUSED:
        return EXIT_REFUSED
    if outcome.reason in (Reason.SETUP_FAILED, Reason.LOST):
        return EXIT_SETUP
    if outcome.reason is Reason.TIMEOUT:
        return EXIT_TIMEOUT
    if outcome.exit_code is not None:
        return outcome.exit_code
    return 128 + signal.Signals[outcome.signal or "SIGKILL"].value


def cmd_sandbox_run(args: argparse.Namespace) -> int:
    try:
        project = validate_project(args.project)
        policy = load_policies(_policy_paths(args)).resolve(project)
    except (InvalidProject, PolicyDenied) as exc:
        print(f"sandworker: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except PolicyError as exc:
        print(f"sandworker: invalid policy:\n{exc}", file=sys.stderr)
        return EXIT_REFUSED
    if args.argv:
        argv = args.argv[1:] if args.argv[0] == "--" else args.argv
        request = Request(project, _run_id(), argv=tuple(argv))
    else:
        try:
            body = args.command if args.command is not None else Path(args.file).read_text()
        except OSError as exc:
            print(f"sandworker: cannot read script {args.file}: {exc.strerror}", file=sys.stderr)
            return 2
        request = Request(project, _run_id(), args.syntax, body, tuple(args.args or ()))
    cancelled = []
    signal.signal(signal.SIGINT, lambda *_: cancelled.append(True))
    signal.signal(signal.SIGTERM, lambda *_: cancelled.append(True))
    sandbox = Sandbox(_settings(args))

    def sink(source: str, data: bytes) -> None:
        if source == "debug":
            if args.verbose or not data.startswith(b"layer ") or b"NOT applied" in data:
                sys.stderr.buffer.write(b"sandworker: " + data)
            return
        stream = sys.stdout.buffer if source == "stdout" else sys.stderr.buffer
        stream.write(data)
        stream.flush()

    outcome = sandbox.run(request, policy, sink, cancel=lambda: bool(cancelled))
    sys.stdout.flush()
    print(
        f"sandworker: {request.run_id}: {outcome.reason}: {outcome.message}"
        f" (spawn {outcome.spawn_seconds * 1000:.1f} ms, total {outcome.duration_seconds:.2f} s)",
        file=sys.stderr,
    )
    if not args.keep and outcome.reason is not Reason.REFUSED:
        sandbox.cleanup(request, policy)
    return _exit_code(outcome)


def _run_id() -> str:
    return f"run-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{os.urandom(3).hex()}"


def cmd_doctor(args: argparse.Namespace) -> int:
    host = probe()
    print(
        f"sandworker {__version__} doctor: running as {'root' if host.root else 'non-root'}"
        f", Landlock ABI {host.landlock_abi}"
    )
    for layer in Layer:
        why = host.missing.get(layer)
        state = "ok" if why is None else "MISSING"
        print(
            f"  {layer:<15} {state:<8} {DESCRIPTIONS[layer]}" + ("" if why is None else f": {why}")
        )
    for name, path in sorted(_settings(args).interpreters.items()):
        found = "ok" if os.access(path, os.X_OK) else "MISSING"
        print(f"  syntax {name:<8} {found:<8} {path}")
    print(_builtin_worker(Path(args.config)))
    try:
        policies = load_policies(_policy_paths(args))
    except PolicyError as exc:
        print(f"policy: invalid:\n{exc}", file=sys.stderr)
        return 1
    required = policies.required_layers()
    lacking = sorted(layer for layer in required if layer in host.missing)
    if lacking:
        print(
            f"policy requires layers this host lacks: {', '.join(lacking)};"
            " those projects' scripts will be refused",
            file=sys.stderr,
        )
        return 1
    print(f"policy: every required layer ({len(required)}) is available")
    return 0


def _builtin_worker(config_path: Path) -> str:
    """Whether `serve` with this configuration runs scripts itself, in one line."""
    if not config_path.exists():
        return f"built-in worker: on (no configuration at {config_path}: no external workers)"
    from .config import ConfigError, load_config  # noqa: PLC0415 - only when there is one
    from .workers import WorkerError, WorkerStore  # noqa: PLC0415 - (it needs the TLS stack)

    try:
        store = WorkerStore(Path(load_config(config_path)["external.workers"]))
        pools = store.pools()
    except (ConfigError, WorkerError) as exc:
        return f"built-in worker: unknown: {exc}"
    if not pools:
        return f"built-in worker: on (no external workers in {store.path})"
    listed = ", ".join(f"{name} ({len(members)})" for name, members in sorted(pools.items()))
    return (
        f"built-in worker: OFF: {store.path} lists external workers (pools {listed}); the"
        " daemon runs no script itself and hands every one to them"
    )


def _serve(args: argparse.Namespace) -> int:
    ready = None
    if args.daemonize:  # before Twisted is imported: its reactor's descriptors would be closed
        try:
            ready = daemonize.start(args)
        except (ConfigError, daemonize.PidFileError, OSError) as exc:
            print(f"sandworker: cannot start: {exc}", file=sys.stderr)
            return daemonize.EXIT_START
    from .serve import cmd_serve  # noqa: PLC0415 - Twisted and TLS load only for the daemon

    return cmd_serve(args, ready)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sandworker", description=__doc__)
    parser.add_argument("--version", action="version", version=f"sandworker {__version__}")
    sub = parser.add_subparsers(dest="command_name", required=True)

    def host_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--policy-dir",
            action="append",
            metavar="PATH",
            help=f"policy directory or file (repeatable; default {DEFAULT_POLICY_DIR})",
        )
        p.add_argument(
            "--state-dir",
            default=str(default_state_dir()),
            help="where workspaces and the account map live (default %(default)s)",
        )
        p.add_argument(
            "--interpreter",
            action="append",
            metavar="SYNTAX=PATH",
            help="absolute interpreter path for a syntax (repeatable)",
        )

    doctor = sub.add_parser("doctor", help="report which isolation layers this host supports")
    host_options(doctor)
    doctor.add_argument(
        "--config", default=str(DEFAULT_CONFIG), help="the daemon's configuration file"
    )
    doctor.set_defaults(func=cmd_doctor)

    sandbox = sub.add_parser("sandbox", help="try the sandbox locally").add_subparsers(
        dest="sandbox_command", required=True
    )
    run = sandbox.add_parser(
        "run",
        help="run one script under a project's effective policy, in the foreground",
        epilog="To run a program instead of a script: sandworker sandbox run --project P -- "
        "/absolute/program ARGS... (no PATH lookup). "
        "Exit status: the script's own; 128+N if killed by signal N; "
        f"{EXIT_TIMEOUT} on timeout; {EXIT_REFUSED} if refused; {EXIT_SETUP} if setup failed "
        "or the launcher was lost.",
    )
    host_options(run)
    run.add_argument("--project", required=True)
    run.add_argument("--syntax", default="bash", choices=sorted(SYNTAXES))
    run.add_argument("--keep", action="store_true", help="keep the run's working directory")
    run.add_argument("-v", "--verbose", action="store_true", help="show every layer applied")
    what = run.add_mutually_exclusive_group(required=True)
    what.add_argument("file", nargs="?", help="script file")
    what.add_argument("-c", dest="command", metavar="TEXT", help="script text")
    run.add_argument("args", nargs="*", default=[], help=argparse.SUPPRESS)
    run.set_defaults(func=cmd_sandbox_run, argv=None)
    cli_policy.register(sub)
    cli_config.register(sub)
    cli_workers.register(sub)
    cli_certs.register(sub)
    cli_client.register(sub)
    serve = sub.add_parser("serve", help="run the worker daemon in the foreground")
    serve.add_argument("--config", default=str(DEFAULT_CONFIG), help="configuration file")
    serve.add_argument(
        "--dev",
        action="store_true",
        help="development mode: create ./dev-home (certificates, trust, profile,"
        " policy) on first use and listen on 127.0.0.1:10933",
    )
    serve.add_argument(
        "-v", "--verbose", action="store_true", help="debug lines too, one per HTTP request"
    )
    serve.add_argument(
        "--daemonize",
        action="store_true",
        help="detach (hosts without systemd; needs --pidfile): the command returns once the"
        " daemon is ready, or with its start-up error",
    )
    serve.add_argument("--pidfile", help="with --daemonize: the pidfile, locked while it runs")
    serve.add_argument("--log-file", help="with --daemonize: where the log goes (0600)")
    serve.set_defaults(func=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    program: list[str] | None = None
    if "--" in args_list and args_list[:2] == ["sandbox", "run"]:
        split = args_list.index("--")
        args_list, program = args_list[:split], args_list[split + 1 :]
        if not program:
            print("sandworker: nothing to run after --", file=sys.stderr)
            return 2
        args_list.append("-c")
        args_list.append("")
    args = build_parser().parse_args(args_list)
    if program is not None:
        args.argv, args.command = program, None
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
