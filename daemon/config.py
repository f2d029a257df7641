"""The daemon's configuration file (`/etc/sandworker/sandworker.toml`): how it runs.

Declared once with the same field model as policy (sandbox/fields.py), so a
bad file is refused with every problem as `file:line field: message`, and
`sandworker config docs|schema` (and the reference) come from these fields.
What scripts may do is policy, not configuration.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandworker.sandbox.fielddocs import json_schema, markdown_reference
from sandworker.sandbox.fields import Field, Kind, Problem, leaves, read_toml, validate
from sandworker.sandbox.settings import (
    DEFAULT_INTERPRETERS,
    DEFAULT_UID_RANGE,
    UID_CEILING,
    UID_FLOOR,
    SandboxSettings,
)

DEFAULT_CONFIG = Path("/etc/sandworker/sandworker.toml")
DEFAULT_PORT = 10933  # Tentacle's listening port
DEFAULT_STATE = "/var/lib/sandworker"
SCHEMA_ID = "urn:sandworker:schema:config:v1"


def _listen_error(value: str) -> str | None:
    host, sep, port = value.rpartition(":")
    try:
        ipaddress.ip_address(host.strip("[]"))
        ok = bool(sep) and 0 < int(port) < 65536
    except ValueError:
        ok = False
    return None if ok else 'expected "ADDRESS:PORT" with a literal IP, e.g. "127.0.0.1:10933"'


def _interpreters_error(value: dict[str, str]) -> str | None:
    for name, path in value.items():
        if name not in DEFAULT_INTERPRETERS:
            return f"unknown syntax {name!r}; known: {', '.join(DEFAULT_INTERPRETERS)}"
        if not path.startswith("/"):
            return f"interpreter for {name} must be an absolute path (never a PATH lookup)"
    return None


SERVER = (
    Field(
        "listen",
        Kind.STR,
        "Address and port of the script service (mutual TLS only).",
        default=f"127.0.0.1:{DEFAULT_PORT}",
        validator=_listen_error,
        example=f"0.0.0.0:{DEFAULT_PORT}",
    ),
    Field(
        "max_connections",
        Kind.INT,
        "Connections served at once; more are closed at accept.",
        default=256,
        minimum=1,
        maximum=65536,
    ),
    Field(
        "handshake_timeout",
        Kind.DURATION,
        "Total time a client has to finish the TLS handshake.",
        default="10s",
        minimum=1,
        maximum=300,
    ),
    Field(
        "header_timeout",
        Kind.DURATION,
        "Total time a client has to send a request's"
        " headers (not reset by each byte); also the keep-alive idle limit.",
        default="15s",
        minimum=1,
        maximum=300,
    ),
    Field(
        "max_body",
        Kind.SIZE,
        "Largest request body; larger ones get 413, chunked 411.",
        default="1MiB",
        minimum=1024,
        maximum=64 << 20,
    ),
    Field(
        "max_package",
        Kind.SIZE,
        "Largest package upload (`PUT /v1/projects/P/packages/NAME`); larger ones get 413.",
        default="1GiB",
        minimum=1 << 20,
        maximum=64 << 30,
    ),
    Field(
        "stop_grace",
        Kind.DURATION,
        "On SIGTERM, how long running scripts may go on before they are cancelled"
        " (queued ones are cancelled at once; no new start is accepted).",
        default="30s",
        minimum=0,
        maximum=86400,
    ),
    Field(
        "control_socket",
        Kind.STR,
        "The local socket `sandworker reload` talks to (root only, mode 0600);"
        " empty: `control.sock` in the state directory.",
        default="",
        validator=lambda v: None if not v or v.startswith("/") else "must be an absolute path",
        example="/run/sandworker/control.sock",
    ),
)
TLS = (
    Field(
        "certificate",
        Kind.STR,
        "The worker's certificate (PEM).",
        default="/etc/sandworker/worker.crt",
    ),
    Field(
        "key",
        Kind.STR,
        "The worker's private key (PEM, mode 0600).",
        default="/etc/sandworker/worker.key",
    ),
    Field(
        "trust",
        Kind.STR,
        "The trusted client thumbprints (`sandworker trust ...`).",
        default="/etc/sandworker/trust.toml",
    ),
)
STATE = (
    Field(
        "directory",
        Kind.STR,
        "Tickets, logs, workspaces and the project uid map.",
        default=DEFAULT_STATE,
    ),
    Field(
        "retention",
        Kind.DURATION,
        "How long a ticket's record and log are kept after a client completed it, or after"
        " it finished if no client did; its working directory goes with it.",
        default="1d",
        minimum=60,
    ),
    Field(
        "audit_log",
        Kind.STR,
        "The audit log (its `audit.head` beside it); empty: `audit.jsonl` in the state directory.",
        default="",
        validator=lambda v: None if not v or v.startswith("/") else "must be an absolute path",
        example="/var/log/sandworker/audit.jsonl",
    ),
)
SANDBOX = (
    Field(
        "policy_dir",
        Kind.STR,
        "Directory of policy files (what scripts may do).",
        default="/etc/sandworker/policies",
    ),
    Field(
        "uid_min",
        Kind.INT,
        "Lowest uid for dynamic project accounts.",
        default=DEFAULT_UID_RANGE[0],
        minimum=UID_FLOOR,
        maximum=UID_CEILING,
    ),
    Field(
        "uid_max",
        Kind.INT,
        "Highest uid for dynamic project accounts.",
        default=DEFAULT_UID_RANGE[1],
        minimum=UID_FLOOR,
        maximum=UID_CEILING,
    ),
    Field(
        "interpreters",
        Kind.STR_TABLE,
        "Absolute interpreter path per syntax.",
        default=dict(DEFAULT_INTERPRETERS),
        validator=_interpreters_error,
    ),
    Field(
        "max_concurrent",
        Kind.INT,
        "Scripts running at once on this worker; the rest queue as pending.",
        default=8,
        minimum=1,
        maximum=4096,
    ),
)
EXTERNAL = (
    Field(
        "workers",
        Kind.STR,
        "The external workers file (`sandworker external-worker`, `sandworker pool`). While"
        " it lists any worker, this daemon runs no script itself: it hands each one to a"
        " healthy worker of the pool the start names (default `default`).",
        default="/etc/sandworker/workers.toml",
    ),
    Field(
        "check_interval",
        Kind.DURATION,
        "Time between two health checks (`GET /v1/health`) of each external worker.",
        default="10s",
        minimum=1,
        maximum=3600,
    ),
    Field(
        "check_timeout",
        Kind.DURATION,
        "How long one health check may take before it counts as failed.",
        default="5s",
        minimum=1,
        maximum=300,
    ),
    Field(
        "unhealthy_after",
        Kind.INT,
        "Failed checks in a row that take a worker out of rotation.",
        default=2,
        minimum=1,
        maximum=100,
    ),
    Field(
        "healthy_after",
        Kind.INT,
        "Passed checks in a row that bring it back.",
        default=2,
        minimum=1,
        maximum=100,
    ),
    Field(
        "lost_after",
        Kind.DURATION,
        "How long the worker of a running script may stay unreachable before its ticket"
        " completes with -46 (result lost). Until then status answers what arrived.",
        default="10m",
        minimum=5,
        maximum=7 * 86400,
    ),
)
METRICS_PORT = 10934  # beside the script service's 10933
TLS_SERVER_CONFIG = (  # exporter-toolkit's key names (its --web.config.file)
    Field("cert_file", Kind.STR, "Certificate (PEM) of the metrics listener.", default=""),
    Field("key_file", Kind.STR, "Its private key (PEM, mode 0600).", default=""),
    Field(
        "client_auth_type",
        Kind.STR,
        "`RequireAndVerifyClientCert` (scrapers present a certificate signed by"
        " `client_ca_file`) or `NoClientCert`.",
        default="RequireAndVerifyClientCert",
        validator=lambda v: (
            None
            if v in ("RequireAndVerifyClientCert", "NoClientCert")
            else "expected RequireAndVerifyClientCert or NoClientCert"
        ),
    ),
    Field(
        "client_ca_file",
        Kind.STR,
        "CA certificates (PEM) scrapers' certificates are checked against.",
        default="",
    ),
    Field(
        "min_version",
        Kind.STR,
        "Lowest TLS version: TLS12 or TLS13.",
        default="TLS12",
        validator=lambda v: None if v in ("TLS12", "TLS13") else "expected TLS12 or TLS13",
    ),
)
METRICS = (
    Field(
        "listen",
        Kind.STR,
        "Address and port of the Prometheus listener (`/metrics` only); empty: none.",
        default=f"127.0.0.1:{METRICS_PORT}",
        validator=lambda v: None if v == "" else _listen_error(v),
    ),
    Field(
        "tls_server_config",
        Kind.TABLE,
        "TLS for the metrics listener (off while `cert_file` is empty).",
        fields=TLS_SERVER_CONFIG,
    ),
)
FILE = (
    Field("server", Kind.TABLE, "The listener.", fields=SERVER),
    Field("tls", Kind.TABLE, "Certificate, key and trusted clients.", fields=TLS),
    Field("state", Kind.TABLE, "Durable state.", fields=STATE),
    Field("sandbox", Kind.TABLE, "How scripts are run.", fields=SANDBOX),
    Field("external", Kind.TABLE, "External workers this daemon proxies to.", fields=EXTERNAL),
    Field("metrics", Kind.TABLE, "Prometheus metrics.", fields=METRICS),
)


class ConfigError(ValueError):
    """An invalid configuration file; str() lists every problem, one per line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class Config:
    values: dict[str, Any]  # dotted field name -> parsed value
    path: Path

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    @property
    def audit_log(self) -> Path:
        return Path(self["state.audit_log"] or Path(self["state.directory"]) / "audit.jsonl")

    @property
    def control_socket(self) -> Path:
        return control_socket(self["server.control_socket"], self["state.directory"])

    def sandbox_settings(self) -> SandboxSettings:
        state = Path(self["state.directory"]) / "sandbox"
        return SandboxSettings(
            state_dir=state,
            uid_range=(self["sandbox.uid_min"], self["sandbox.uid_max"]),
            interpreters=dict(self["sandbox.interpreters"]),
            hidden=("/etc/sandworker", str(self.path.parent)),
        )


def control_socket(setting: str, state_dir: str) -> Path:
    """`server.control_socket`, or control.sock in the state directory when it is empty."""
    return Path(setting) if setting else Path(state_dir) / "control.sock"


def load_config(path: Path) -> Config:
    """Read, validate and complete the configuration with defaults; ConfigError if invalid."""
    parsed = read_toml(path)
    if isinstance(parsed, Problem):
        raise ConfigError([parsed])
    data, lines = parsed
    values, problems = validate(data, FILE, file=str(path), lines=lines)
    for name, field in leaves(FILE):
        values.setdefault(name, field.parsed_default())
    if values["sandbox.uid_min"] > values["sandbox.uid_max"]:
        line = lines.line(("sandbox", "uid_min"))
        problems.append(Problem(str(path), line, "sandbox.uid_min", "must not exceed uid_max"))
    tls = "metrics.tls_server_config."
    needs = [("key_file", "cert_file")]
    if values[tls + "client_auth_type"] == "RequireAndVerifyClientCert":
        needs.append(("client_ca_file", "cert_file"))
    for name, because in needs:
        if values[tls + because] and not values[tls + name]:
            line = lines.line(("metrics", "tls_server_config", because))
            problems.append(Problem(str(path), line, tls + name, f"is needed with {because}"))
    if problems:
        raise ConfigError(problems)
    return Config(values, path)


def config_schema() -> dict[str, Any]:
    return json_schema(
        FILE,
        schema_id=SCHEMA_ID,
        title="sandworker configuration",
        description="How the sandworker daemon runs: listener, TLS, state and sandbox.",
    )


def config_reference() -> str:
    return markdown_reference(
        FILE,
        title="sandworker configuration reference",
        intro="Every field of `/etc/sandworker/sandworker.toml`, generated from the code.",
    )
