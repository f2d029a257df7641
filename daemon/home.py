"""The files of a sandworker home directory (default /etc/sandworker)."""

from pathlib import Path

DEFAULT_HOME = Path("/etc/sandworker")
CERT_NAME, KEY_NAME = "worker.crt", "worker.key"
TRUST_NAME = "trust.toml"
WORKERS_NAME = "workers.toml"
