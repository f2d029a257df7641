"""`sandworker policy check|explain|schema|docs`: the commands security reviewers use."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sandworker.sandbox.policy import (
    DEFAULT_POLICY_DIR,
    PolicyDenied,
    PolicyError,
    load_policies,
    policy_reference,
    policy_schema,
)

VALUE_WIDTH = 40  # longer values push their own row's source to the right


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `policy` command and its subcommands."""
    policy = subparsers.add_parser("policy", help="check, explain and document policy files")
    commands = policy.add_subparsers(dest="policy_command", required=True)

    check = commands.add_parser(
        "check",
        help="validate policy files; print every problem as file:line field: message",
    )
    check.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help=f"policy file or directory of *.toml files (default {DEFAULT_POLICY_DIR})",
    )
    check.set_defaults(func=cmd_check)

    explain = commands.add_parser(
        "explain", help="show a project's effective policy and where each value comes from"
    )
    explain.add_argument("--project", required=True, help="project id")
    explain.add_argument(
        "--policy-dir",
        action="append",
        metavar="PATH",
        help=f"policy directory or file (repeatable; default {DEFAULT_POLICY_DIR})",
    )
    explain.set_defaults(func=cmd_explain)

    schema = commands.add_parser("schema", help="print the policy JSON Schema")
    schema.set_defaults(func=cmd_schema)
    docs = commands.add_parser("docs", help="print the policy field reference (Markdown)")
    docs.set_defaults(func=cmd_docs)


def _paths(given: list[str] | None) -> list[Path]:
    return [Path(path) for path in given] if given else [DEFAULT_POLICY_DIR]


def _report(error: PolicyError) -> int:
    for problem in error.problems:
        print(problem, file=sys.stderr)
    return 1


def cmd_check(args: argparse.Namespace) -> int:
    try:
        policies = load_policies(_paths(args.paths))
    except PolicyError as error:
        return _report(error)
    print(f"ok: {policies.summary()}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    try:
        rows = load_policies(_paths(args.policy_dir)).explain(args.project)
    except PolicyError as error:
        return _report(error)
    except PolicyDenied as denied:
        print(f"denied: {denied}", file=sys.stderr)
        return 1
    table = [("FIELD", "VALUE", "SOURCE"), *rows]
    name_width = max(len(row[0]) for row in table)
    value_width = min(VALUE_WIDTH, max(len(row[1]) for row in table))
    print(f"project {args.project}")
    for name, value, source in table:
        print(f"{name:<{name_width}}  {value:<{value_width}}  {source}".rstrip())
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    sys.stdout.write(json.dumps(policy_schema(), indent=2, sort_keys=True) + "\n")
    return 0


def cmd_docs(args: argparse.Namespace) -> int:
    sys.stdout.write(policy_reference())
    return 0
