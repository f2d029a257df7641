"""`sandworker new-certificate | show-thumbprint | trust add|remove|list`."""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .home import CERT_NAME, DEFAULT_HOME, KEY_NAME, TRUST_NAME

if TYPE_CHECKING:
    from .certs import CertPrints, Thumbprint

# The handlers import the TLS stack (cryptography) when they run, not when the
# CLI starts: `sandbox run`, `doctor` and `policy` must not need it.


def _fail(message: str) -> int:
    print(f"sandworker: {message}", file=sys.stderr)
    return 1


def _home(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--home",
        type=Path,
        default=DEFAULT_HOME,
        metavar="DIR",
        help=f"directory holding {CERT_NAME}, {KEY_NAME} and {TRUST_NAME} (default {DEFAULT_HOME})",
    )


def cmd_new_certificate(args: argparse.Namespace) -> int:
    from .certs import CertificateError, write_pair  # noqa: PLC0415 - see above

    home: Path = args.home
    try:
        prints = write_pair(
            home / CERT_NAME,
            home / KEY_NAME,
            args.common_name or f"sandworker {socket.gethostname()}",
            use_rsa=args.rsa,
            if_blank=args.if_blank,
        )
    except CertificateError as exc:
        return _fail(str(exc))
    if prints is None:
        print(f"{home / CERT_NAME} already exists; nothing to do")
        return 0
    print(f"wrote {home / CERT_NAME} and {home / KEY_NAME}")
    print(f"SHA-256 thumbprint: {prints.sha256}")
    print(f"SHA-1 thumbprint:   {prints.sha1}")
    return 0


def cmd_show_thumbprint(args: argparse.Namespace) -> int:
    from .certs import CertificateError, certificate_prints  # noqa: PLC0415

    try:
        prints = certificate_prints(args.home / CERT_NAME)
    except CertificateError as exc:
        return _fail(str(exc))
    print(prints.sha1 if args.sha1 else prints.sha256)
    return 0


def _key(text: str) -> Thumbprint | CertPrints:
    """A thumbprint, or a PEM certificate file (then both forms are known)."""
    from .certs import certificate_prints, parse_thumbprint  # noqa: PLC0415

    if Path(text).is_file():
        return certificate_prints(Path(text))
    return parse_thumbprint(text)


def cmd_trust_add(args: argparse.Namespace) -> int:
    from .certs import CertificateError, InvalidThumbprint  # noqa: PLC0415
    from .trust import TrustError, TrustStore  # noqa: PLC0415

    try:
        entry, changed = TrustStore(args.home / TRUST_NAME).add(
            _key(args.thumbprint), args.projects
        )
    except (InvalidThumbprint, CertificateError, TrustError) as exc:
        return _fail(str(exc))
    print(f"{'trusted' if changed else 'already trusted'}: {entry.describe()}")
    return 0


def cmd_trust_remove(args: argparse.Namespace) -> int:
    from .certs import CertificateError, InvalidThumbprint  # noqa: PLC0415
    from .trust import TrustError, TrustStore  # noqa: PLC0415

    try:
        removed = TrustStore(args.home / TRUST_NAME).remove(_key(args.thumbprint))
    except (InvalidThumbprint, CertificateError, TrustError) as exc:
        return _fail(str(exc))
    for entry in removed:
        print(f"no longer trusted: {entry.describe()}")
    return 0


def cmd_trust_list(args: argparse.Namespace) -> int:
    from .trust import TrustError, TrustStore  # noqa: PLC0415

    try:
        entries = TrustStore(args.home / TRUST_NAME).entries()
    except TrustError as exc:
        return _fail(str(exc))
    for entry in entries:
        print(entry.describe())
    if not entries:
        print("no client is trusted", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `new-certificate`, `show-thumbprint` and `trust`."""
    new = subparsers.add_parser(
        "new-certificate", help="create this worker's self-signed certificate and key"
    )
    _home(new)
    new.add_argument(
        "--if-blank", action="store_true", help="do nothing if a certificate already exists"
    )
    new.add_argument("--rsa", action="store_true", help="RSA-3072 instead of ECDSA P-256")
    new.add_argument("--common-name", metavar="CN", help="subject CN (default: sandworker HOST)")
    new.set_defaults(func=cmd_new_certificate)

    show = subparsers.add_parser("show-thumbprint", help="print this worker's thumbprint")
    _home(show)
    show.add_argument("--sha1", action="store_true", help="the SHA-1 form instead of SHA-256")
    show.set_defaults(func=cmd_show_thumbprint)

    trust = subparsers.add_parser("trust", help="manage the trusted client certificates")
    commands = trust.add_subparsers(dest="trust_command", required=True)
    what = "SHA-256 or SHA-1 thumbprint (colons and case ignored), or a PEM certificate file"
    add = commands.add_parser("add", help="trust a client certificate")
    add.add_argument("thumbprint", metavar="THUMBPRINT", help=what)
    add.add_argument(
        "--projects",
        nargs="+",
        default=[],
        metavar="GLOB",
        help="limit the client to these project patterns (default: all projects)",
    )
    _home(add)
    add.set_defaults(func=cmd_trust_add)
    remove = commands.add_parser("remove", help="stop trusting a client certificate")
    remove.add_argument("thumbprint", metavar="THUMBPRINT", help=what)
    _home(remove)
    remove.set_defaults(func=cmd_trust_remove)
    listing = commands.add_parser("list", help="show the trusted client certificates")
    _home(listing)
    listing.set_defaults(func=cmd_trust_list)
