"""`sandworker config check|schema|docs`: the daemon's configuration file, for sysadmins."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import DEFAULT_CONFIG, ConfigError, config_reference, config_schema, load_config


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
