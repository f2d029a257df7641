"""The script service's wire protocol: versions, operations, request models and problems.

Protocol history (one line per change):
  v1  start/status/cancel/complete, health and capabilities (Tentacle's IScriptServiceV2
      made RESTful: client-chosen tickets, wait_seconds, after/wait long-poll)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from sandworker.sandbox.projects import InvalidProject, validate_project
from sandworker.sandbox.syntaxes import SYNTAXES

from .packages import PackageError, check_name
from .scheduler import DEFAULT_MUTEX, Isolation

PROTOCOL_VERSION = 1
OPERATIONS = {  # the registry: method, path pattern -> operation name
    ("PUT", "/v1/scripts/{ticket}"): "start",
    ("GET", "/v1/scripts/{ticket}"): "status",
    ("POST", "/v1/scripts/{ticket}/cancel"): "cancel",
    ("DELETE", "/v1/scripts/{ticket}"): "complete",
    ("GET", "/v1/health"): "health",
    ("GET", "/v1/capabilities"): "capabilities",
}

MAX_SCRIPT_BYTES = 512 * 1024
MAX_ARGUMENTS, MAX_ARGUMENT_BYTES = 256, 32 * 1024
MAX_VARIABLES, MAX_VARIABLE_NAME = 10_000, 256
MAX_WAIT_SECONDS = 60.0
MAX_SUBSTITUTE = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class Problem(Exception):
    """An error answered as application/problem+json (RFC 9457) with an actionable detail."""

    def __init__(
        self, status: int, title: str, detail: str, *, reason: str = "", **extra: object
    ) -> None:
        """`reason`: the refusal's label in the metrics (metrics.REFUSALS), not sent."""
        super().__init__(detail)
        self.status, self.title, self.detail, self.extra = status, title, detail, extra
        self.reason = reason

    def body(self) -> bytes:
        doc = {"type": "about:blank", "title": self.title, "status": self.status}
        doc.update(detail=self.detail, **self.extra)
        return json.dumps(doc).encode() + b"\n"


def bad_request(detail: str) -> Problem:
    return Problem(400, "Bad Request", detail)


def validate_name(kind: str, value: object) -> str:
    """Names such as mutexes: 1-128 of [A-Za-z0-9._-], starting alphanumeric. (Ticket ids
    follow the ticket store's own rules: tickets.ticket_key.)"""
    if not isinstance(value, str) or _NAME.fullmatch(value) is None:
        shown = json.dumps(value)[:80]
        raise bad_request(
            f"{kind} {shown} is not allowed: use 1-128 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )
    return value


@dataclass(frozen=True)
class StartRequest:
    project: str
    syntax: str
    body: str
    arguments: tuple[str, ...]
    isolation: Isolation
    mutex: str
    acquire_timeout: float  # seconds; 0 waits forever
    timeout: float | None  # seconds; None: the policy's
    wait_seconds: float
    pool: str | None = None  # the external workers' pool (a proxy only); None: `default`
    variables: tuple[Variable, ...] = ()  # for the script's helpers (sandbox/bootstrap.py)
    package: str | None = None  # a package of the project's cache: a package step
    substitute: tuple[str, ...] = ()  # globs of the package's files to substitute #{Name} in

    @property
    def sensitive(self) -> tuple[str, ...]:
        """The values that must never appear in a log line."""
        return tuple(v.value for v in self.variables if v.sensitive and v.value)

    @property
    def sha256(self) -> str:
        """Of the script's body (UTF-8), for the audit log."""
        return hashlib.sha256(self.body.encode("utf-8", "surrogatepass")).hexdigest()

    def forwarded(self) -> dict[str, Any]:
        """The start as a proxy sends it on to an external worker (pools are the proxy's)."""
        body = dataclasses.asdict(self)
        body.update(arguments=list(self.arguments), isolation=str(self.isolation))
        del body["pool"]
        if self.timeout is None:
            del body["timeout"]
        return body

    @classmethod
    def parse(cls, raw: bytes) -> StartRequest:
        """Validate a start body; every complaint names the field and what is allowed."""
        doc = json_object(raw, {
            "project",
            "syntax",
            "body",
            "arguments",
            "isolation",
            "mutex",
            "acquire_timeout",
            "timeout",
            "wait_seconds",
            "pool",
            "variables",
            "package",
            "substitute",
        })  # fmt: skip
        try:
            project = validate_project(_get(doc, "project", str, None))
        except InvalidProject as exc:
            raise bad_request(str(exc)) from None
        syntax = _get(doc, "syntax", str, "bash")
        if syntax not in SYNTAXES:
            raise bad_request(f"syntax {syntax!r} is unknown; known: {', '.join(SYNTAXES)}")
        package = _package(doc.get("package"))
        body = _get(doc, "body", str, "" if package else None)
        if len(body.encode()) > MAX_SCRIPT_BYTES:
            raise bad_request(f"body is larger than {MAX_SCRIPT_BYTES} bytes")
        arguments = _get(doc, "arguments", list, [])
        if len(arguments) > MAX_ARGUMENTS or not all(isinstance(a, str) for a in arguments):
            raise bad_request(f"arguments must be at most {MAX_ARGUMENTS} strings")
        if sum(len(a.encode()) for a in arguments) > MAX_ARGUMENT_BYTES:
            raise bad_request(f"arguments add up to more than {MAX_ARGUMENT_BYTES} bytes")
        if any("\0" in a for a in (body, *arguments)):
            raise bad_request("body and arguments may not contain NUL characters")
        isolation = _get(doc, "isolation", str, "none")
        if isolation not in (i.value for i in Isolation):
            raise bad_request('isolation must be "full" (exclusive) or "none" (shared)')
        timeout = _seconds(doc, "timeout", None, low=1)
        return cls(
            project=project,
            syntax=syntax,
            body=body,
            arguments=tuple(arguments),
            isolation=Isolation(isolation),
            mutex=validate_name("mutex", _get(doc, "mutex", str, DEFAULT_MUTEX)),
            acquire_timeout=_seconds(doc, "acquire_timeout", 0.0, low=0) or 0.0,
            timeout=timeout,
            wait_seconds=_seconds(doc, "wait_seconds", 0.0, low=0, high=MAX_WAIT_SECONDS) or 0.0,
            pool=validate_name("pool", doc["pool"]) if "pool" in doc else None,
            variables=_variables(doc.get("variables", [])),
            package=package,
            substitute=_substitute(doc.get("substitute", []), package),
        )


def json_object(raw: bytes, known: set[str]) -> dict[str, Any]:
    """A request body: a JSON object of only the `known` fields."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise bad_request(f"the body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise bad_request("the body must be a JSON object")
    unknown = sorted(set(doc) - known)
    if unknown:
        raise bad_request(
            f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return doc


@dataclasses.dataclass(frozen=True)
class Variable:
    name: str
    value: str
    sensitive: bool = False


def _variables(raw: object) -> tuple[Variable, ...]:
    """`variables`: [{"name", "value", "sensitive"?}], names unique, all UTF-8 text."""
    shape = 'variables must be a list of {"name": str, "value": str, "sensitive": bool}'
    if not isinstance(raw, list) or len(raw) > MAX_VARIABLES:
        raise bad_request(f"{shape}, at most {MAX_VARIABLES}")
    found: dict[str, Variable] = {}
    for item in raw:
        if not isinstance(item, dict) or set(item) - {"name", "value", "sensitive"}:
            raise bad_request(shape)
        name, value = item.get("name"), item.get("value", "")
        sensitive = item.get("sensitive", False)
        if not isinstance(name, str) or not isinstance(value, str) or type(sensitive) is not bool:
            raise bad_request(shape)
        if not 0 < len(name) <= MAX_VARIABLE_NAME or name in found:
            raise bad_request(f"variable names must be unique, 1-{MAX_VARIABLE_NAME} characters")
        try:
            (name + value).encode("utf-8")
        except UnicodeEncodeError:
            raise bad_request(f"variable {name!r} is not valid Unicode text") from None
        if "\0" in name + value:
            raise bad_request(f"variable {name!r} contains a NUL character")
        found[name] = Variable(name, value, sensitive)
    return tuple(found.values())


def _package(raw: object) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise bad_request("package must be the name of a package in the project's cache")
    try:
        return check_name(raw)
    except PackageError as exc:
        raise bad_request(str(exc)) from None


def _substitute(raw: object, package: str | None) -> tuple[str, ...]:
    """`substitute`: globs of package files (relative; `**/` spans directories)."""
    shape = f"substitute must be a list of at most {MAX_SUBSTITUTE} relative file globs"
    if raw and package is None:
        raise bad_request("substitute applies to a package's files: name the package too")
    if not isinstance(raw, list) or len(raw) > MAX_SUBSTITUTE:
        raise bad_request(shape)
    for item in raw:
        if not isinstance(item, str) or not 0 < len(item) <= 256 or "\0" in item:
            raise bad_request(shape)
        if item.startswith("/") or ".." in item.split("/") or "\\" in item:
            raise bad_request(
                f"substitute {item!r}: give a glob relative to the package's top, with '/'"
            )
    return tuple(raw)


def _get(doc: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    if name not in doc:
        if default is None:
            raise bad_request(f"{name} is required")
        return default
    value = doc[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise bad_request(f"{name} must be a {'string' if kind is str else kind.__name__}")
    return value


def _seconds(
    doc: dict[str, Any], name: str, default: float | None, *, low: float, high: float = 86400 * 7
) -> float | None:
    value = doc.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise bad_request(f"{name} must be a number of seconds from {low:g} to {high:g}")
    return float(value)
