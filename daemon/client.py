"""The client library: talk to a worker over pinned mutual TLS (the CLI and, later, the proxy).

It imports nothing of the server side. A profile names the worker's URL, its
pinned thumbprint and the client's certificate and key.
"""

from __future__ import annotations

import http.client
import json
import os
import tomllib
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .pinclient import client_context

PROFILE_ENV = "SANDWORKER_PROFILE"
POLL_SECONDS = 30  # long-poll window per status call


def default_profile() -> Path:
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "sandworker" / "profile.toml"


class ClientError(Exception):
    """The worker could not be reached or refused the call; the message says why."""


@dataclass(frozen=True)
class Profile:
    url: str
    thumbprint: str
    certificate: Path
    key: Path

    @classmethod
    def load(cls, path: Path | None = None) -> Profile:
        """From `path`, else $SANDWORKER_PROFILE, else the user's config directory
        ($XDG_CONFIG_HOME, or ~/.config)/sandworker/profile.toml."""
        if path is None:
            env = os.environ.get(PROFILE_ENV)
            path = Path(env) if env else default_profile()
        try:
            data = tomllib.loads(path.read_text())
            base = path.parent
            return cls(
                url=str(data["url"]),
                thumbprint=str(data["thumbprint"]),
                certificate=base / str(data["certificate"]),
                key=base / str(data["key"]),
            )
        except (OSError, ValueError, KeyError) as exc:
            raise ClientError(
                f"cannot use profile {path}: {exc}; it needs url, thumbprint, certificate and key"
            ) from None


class Client:
    def __init__(self, profile: Profile) -> None:
        parsed = urllib.parse.urlsplit(profile.url)
        if parsed.scheme != "https" or not parsed.hostname:
            raise ClientError(f"worker URL {profile.url!r} must be https://HOST:PORT")
        self._host, self._port = parsed.hostname, parsed.port or 10933
        self._context = client_context(profile.certificate, profile.key, profile.thumbprint)
        self._conn: http.client.HTTPSConnection | None = None

    def call(self, method: str, path: str, body: object = None) -> tuple[int, dict[str, Any]]:
        """One request on a kept-alive connection (reconnecting once if it was closed)."""
        data = None if body is None else json.dumps(body).encode()
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, context=self._context, timeout=POLL_SECONDS + 30
                )
            try:
                self._conn.request(
                    method, path, body=data, headers={"content-type": "application/json"}
                )
                response = self._conn.getresponse()
                return response.status, json.loads(response.read() or b"{}")
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt == 2:
                    raise ClientError(
                        f"the worker at {self._host}:{self._port} closed the connection"
                    ) from None
            except OSError as exc:
                self.close()
                raise ClientError(
                    f"cannot reach the worker at {self._host}:{self._port}: {exc}"
                ) from None
        raise AssertionError("unreachable")

    def checked(self, method: str, path: str, body: object = None) -> dict[str, Any]:
        status, doc = self.call(method, path, body)
        if status >= 400:
            raise ClientError(f"{status} {doc.get('title', '')}: {doc.get('detail', doc)}")
        return doc

    def start(self, ticket: str, request: dict[str, Any]) -> dict[str, Any]:
        return self.checked("PUT", f"/v1/scripts/{ticket}", request)

    def status(self, ticket: str, after: int = -1, wait: int = 0) -> dict[str, Any]:
        return self.checked("GET", f"/v1/scripts/{ticket}?after={after}&wait={wait}")

    def cancel(self, ticket: str) -> dict[str, Any]:
        return self.checked("POST", f"/v1/scripts/{ticket}/cancel")

    def complete(self, ticket: str) -> dict[str, Any]:
        return self.checked("DELETE", f"/v1/scripts/{ticket}")

    def follow(
        self, ticket: str, on_line: Callable[[dict[str, Any]], None], after: int = -1
    ) -> dict[str, Any]:
        """Long-poll until the ticket is complete, passing every new line on; the last status."""
        while True:
            doc = self.status(ticket, after, POLL_SECONDS)
            for line in doc["logs"]:
                on_line(line)
            after = doc["next_seq"] - 1
            if doc["state"] == "complete":
                return doc

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
