"""The client library: talk to a worker over pinned mutual TLS (the CLI and, later, the proxy).

It imports nothing of the server side. A profile names the worker's URL, its
pinned thumbprint and the client's certificate and key.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import ssl
import tomllib
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from .pinclient import client_context

PROFILE_ENV = "SANDWORKER_PROFILE"
POLL_SECONDS = 30  # long-poll window per status call
# Every status answer repeats its state and next_seq as headers, so a client can ask for the
# next page before it has parsed this one.
STATE_HEADER = b"sandworker-state"
NEXT_SEQ_HEADER = b"sandworker-next-seq"


def default_profile() -> Path:
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "sandworker" / "profile.toml"


class ClientError(Exception):
    """The worker could not be reached or refused the call; the message says why, and
    `status` is the worker's HTTP status when it answered one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


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


class _Channel:
    """One kept-alive HTTPS connection to the worker, with at most one request in flight.

    A request on a connection the worker had closed while it idled is sent once more on a
    new one (status, start and cancel are idempotent; complete answers the same again)."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, timeout: float) -> None:
        self._where, self._context, self._timeout = (host, port), context, timeout
        self._conn: http.client.HTTPSConnection | None = None
        self._reused = False  # the connection has answered before: it may have gone stale
        self._request: tuple[str, str, bytes | None] | None = None  # in flight

    def send(self, method: str, path: str, body: object = None) -> None:
        if self._request is not None:  # an answer nobody read: the connection is unusable
            self.close()
        self._request = (method, path, None if body is None else json.dumps(body).encode())
        self._send(retry=True)

    def send_file(self, path: str, body: BinaryIO, headers: dict[str, str]) -> None:
        """PUT a file's bytes (a package), streamed on a fresh connection, never resent."""
        self.close()
        host, port = self._where
        self._conn = http.client.HTTPSConnection(
            host, port, context=self._context, timeout=self._timeout
        )
        self._request = ("PUT", path, None)
        try:
            self._conn.request("PUT", path, body=body, headers=headers)
        except OSError as exc:
            raise self._unreachable(exc) from None

    def receive(self) -> http.client.HTTPResponse:
        """The answer to the request in flight: status and headers read, the body not yet."""
        assert self._conn is not None and self._request is not None, "receive() without send()"
        try:
            response = self._conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not self._reused:
                raise self._closed() from None
            self.close()
            self._send(retry=False)
            return self.receive()
        except http.client.HTTPException as exc:  # not HTTP at all, or cut off in the middle
            raise self._broken(exc) from None
        except OSError as exc:
            raise self._unreachable(exc) from None
        self._request, self._reused = None, True
        return response

    def decode(self, response: http.client.HTTPResponse) -> tuple[int, dict[str, Any]]:
        try:
            raw = response.read()
        except OSError as exc:
            raise self._unreachable(exc) from None
        except http.client.HTTPException as exc:
            raise self._broken(exc) from None
        try:
            doc = orjson.loads(raw or b"{}")
            if not isinstance(doc, dict):
                raise ValueError("not an object")
            return response.status, doc
        except ValueError:
            raise ClientError(
                f"the worker at {self._name()} answered {response.status} with a body that"
                " is not a JSON object; is the URL that of a sandworker?"
            ) from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn, self._reused = None, False

    def _send(self, *, retry: bool) -> None:
        assert self._request is not None
        method, path, data = self._request
        if self._conn is None:
            host, port = self._where
            self._conn = http.client.HTTPSConnection(
                host, port, context=self._context, timeout=self._timeout
            )
        try:
            self._conn.request(
                method, path, body=data, headers={"content-type": "application/json"}
            )
        except (BrokenPipeError, ConnectionResetError):
            if not (retry and self._reused):
                raise self._closed() from None
            self.close()
            self._send(retry=False)
        except OSError as exc:
            raise self._unreachable(exc) from None

    def _name(self) -> str:
        host, port = self._where
        return f"{host}:{port}"

    def _closed(self) -> ClientError:
        self.close()
        return ClientError(f"the worker at {self._name()} closed the connection")

    def _broken(self, exc: http.client.HTTPException) -> ClientError:
        self.close()
        return ClientError(
            f"the worker at {self._name()} sent a broken answer ({type(exc).__name__}: {exc})"
        )

    def _unreachable(self, exc: OSError) -> ClientError:
        self.close()
        return ClientError(f"cannot reach the worker at {self._name()}: {exc}")


class Client:
    def __init__(self, profile: Profile, timeout: float = POLL_SECONDS + 30) -> None:
        """`timeout`: for connecting and for each read (a long-poll takes up to 60 s)."""
        parsed = urllib.parse.urlsplit(profile.url)
        if parsed.scheme != "https" or not parsed.hostname:
            raise ClientError(f"worker URL {profile.url!r} must be https://HOST:PORT")
        context = client_context(profile.certificate, profile.key, profile.thumbprint)
        host, port = parsed.hostname, parsed.port or 10933
        # The second channel lets `follow` fetch the next page while this one is parsed.
        self._channels = (
            _Channel(host, port, context, timeout),
            _Channel(host, port, context, timeout),
        )

    def call(self, method: str, path: str, body: object = None) -> tuple[int, dict[str, Any]]:
        """One request on a kept-alive connection: the status code and the JSON answer."""
        channel = self._channels[0]
        channel.send(method, path, body)
        return channel.decode(channel.receive())

    def checked(self, method: str, path: str, body: object = None) -> dict[str, Any]:
        status, doc = self.call(method, path, body)
        if status >= 400:
            raise refused(status, doc)
        return doc

    def download(self, path: str, out: BinaryIO) -> int:
        """GET `path` and copy the body into `out` (an artifact); the bytes copied."""
        channel = self._channels[0]
        channel.send("GET", path)
        response = channel.receive()
        if response.status >= 400:
            raise refused(*channel.decode(response))
        copied = 0
        try:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                copied += len(chunk)
        except (OSError, http.client.HTTPException) as exc:
            channel.close()
            raise ClientError(f"the download of {path} broke off: {exc}") from None
        return copied

    def upload(self, project: str, name: str, path: Path) -> dict[str, Any]:
        """A package file into the project's cache at the worker, with its SHA-256."""
        digest = hashlib.sha256()
        with open(path, "rb") as data:
            while chunk := data.read(1 << 20):
                digest.update(chunk)
            length = data.tell()
            data.seek(0)
            headers = {"Content-Length": str(length), "Sandworker-Sha256": digest.hexdigest(),
                       "Content-Type": "application/octet-stream"}  # fmt: skip
            quoted = urllib.parse.quote(name, safe="")
            channel = self._channels[0]
            channel.send_file(f"/v1/projects/{project}/packages/{quoted}", data, headers)
            status, doc = channel.decode(channel.receive())
        if status >= 400:
            raise refused(status, doc)
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
        """Long-poll until the ticket is complete, passing every new line on; the last status.

        Pages alternate between the two channels: as soon as one answer's headers say where
        it ends, the next page is asked for on the other, and the worker prepares it while
        this one is read and parsed."""
        page = f"/v1/scripts/{ticket}?wait={POLL_SECONDS}&after="
        current, other = self._channels
        current.send("GET", page + str(after))
        response = current.receive()
        while True:
            ahead = _next_after(response)
            if ahead is not None:
                other.send("GET", page + str(ahead))
            status, doc = current.decode(response)
            if status >= 400:
                raise refused(status, doc)
            if ahead is not None and ahead != doc["next_seq"] - 1:
                raise ClientError(f"the worker's answer for ticket {ticket} contradicts itself")
            for line in doc["logs"]:
                on_line(line)
            if doc["state"] == "complete":
                return doc
            if ahead is None:  # a worker without the headers: one page after the other
                other.send("GET", page + str(doc["next_seq"] - 1))
            current, other = other, current
            response = current.receive()

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


def _next_after(response: http.client.HTTPResponse) -> int | None:
    """The `after` of the page following this answer, if it says so and there is one."""
    state = response.getheader(STATE_HEADER.decode())
    next_seq = response.getheader(NEXT_SEQ_HEADER.decode(), "")
    if response.status >= 400 or state in (None, "complete") or not next_seq.isdigit():
        return None
    return int(next_seq) - 1


def refused(status: int, doc: dict[str, Any]) -> ClientError:
    return ClientError(f"{status} {doc.get('title', '')}: {doc.get('detail', doc)}", status)
