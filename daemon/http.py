"""HTTP/1.1 for the script service on Twisted: routing, limits and deadlines.

Twisted's web server has no request body limit and an idle timeout that each
byte resets (notes/http-mtls.md), so this channel adds:

- a total deadline from connect to the end of the first request's headers
  (handshake plus headers), then per keep-alive request;
- 411 for chunked bodies and 413 for bodies over the limit, answered before the
  body is read, after which the rest of the body is drained, not read;
- a cap on open connections (more are closed at accept), wrapped around the
  outermost factory so that it works below TLS too.

Handlers are coroutines on the service object; errors are problem+json.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet import reactor as _reactor
from twisted.protocols import basic, policies
from twisted.python import log
from twisted.web import http, resource, server

from .api import Problem
from .pinning import REPORTED

access_log = logging.getLogger("sandworker.access")
JSON = b"application/json"
PROBLEM = b"application/problem+json"
DRAIN_SECONDS = 2.0


class _Clock(Protocol):
    def callLater(self, delay: float, fn: Callable[..., object], /, *args: object) -> Any: ...


clock = cast(_Clock, _reactor)


class Identity(Protocol):
    """Who is calling: resolved from the TLS peer certificate by the pinning layer."""

    def allows(self, project: str) -> bool: ...

    @property
    def thumbprint(self) -> str: ...  # SHA-256 of the client certificate, for the audit


@dataclass(frozen=True)
class Encoded:
    """A document already encoded as JSON, and headers to send with it."""

    body: bytes
    headers: dict[bytes, bytes] = field(default_factory=dict)


@dataclass
class FileBody:
    """A file to stream (an artifact): its descriptor, which the sending closes."""

    fd: int
    length: int


Body = dict[str, Any] | Encoded | FileBody
Handler = Callable[[server.Request, list[str], Identity], Awaitable[tuple[int, Body]]]


def _send(request: server.Request, status: int, reply: Encoded, content_type: bytes) -> None:
    if request.finished or request._disconnected:
        return
    body = reply.body
    request.setResponseCode(status)
    for name, value in reply.headers.items():
        request.setHeader(name, value)
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-length", b"%d" % len(body))  # one piece, not chunked
    request.write(body)
    request.finish()


def _send_file(request: server.Request, status: int, body: FileBody) -> None:
    stream = os.fdopen(body.fd, "rb")
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/octet-stream")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-length", b"%d" % body.length)

    def done(_result: object) -> None:
        stream.close()
        if not request.finished and not request._disconnected:
            request.finish()

    basic.FileSender().beginFileTransfer(stream, request).addBoth(done)


class Router(resource.Resource):
    """Dispatches `/v1/...` to handlers: routes map (method, first path parts) -> handler."""

    isLeaf = True

    def __init__(
        self,
        routes: dict[tuple[str, str], Handler],
        identify: Callable[[server.Request], Identity | None],
    ) -> None:
        super().__init__()
        self._routes = routes
        self._identify = identify

    def render(self, request: server.Request) -> int:
        defer.ensureDeferred(self._serve(request))
        return server.NOT_DONE_YET

    async def _serve(self, request: server.Request) -> None:
        try:
            identity = self._identify(request)
            if identity is None:  # the handshake already pinned the peer: this is belt and braces
                raise Problem(403, "Forbidden", "this client certificate is no longer trusted")
            handler, parts = self._route(request)
            status, body = await handler(request, parts, identity)
            if isinstance(body, FileBody):
                _send_file(request, status, body)
                return
            encoded = (
                body if isinstance(body, Encoded) else Encoded(json.dumps(body).encode() + b"\n")
            )
            _send(request, status, encoded, JSON)
        except Problem as problem:
            _send(request, problem.status, Encoded(problem.body()), PROBLEM)
        except Exception:  # a bug must not leave the client hanging
            log.err(None, "unhandled error serving a request")
            failure = Problem(500, "Internal Server Error", "the worker failed; see its log")
            _send(request, 500, Encoded(failure.body()), PROBLEM)

    def _route(self, request: server.Request) -> tuple[Handler, list[str]]:
        path = request.path.decode("ascii", "replace")
        parts = [p for p in path.split("/") if p]
        if len(parts) < 2 or parts[0] != "v1":
            raise Problem(404, "Not Found", f"no such resource {path!r}; the API lives under /v1/")
        method = request.method.decode("ascii", "replace")
        shape = "/".join(["{}" if i in (2, 4) else p for i, p in enumerate(parts[1:], 1)])
        handler = self._routes.get((method, shape))
        if handler is None:
            allowed = sorted(m for m, s in self._routes if s == shape)
            if allowed:
                raise Problem(405, "Method Not Allowed", f"{path} takes {', '.join(allowed)}")
            raise Problem(404, "Not Found", f"no such resource {path!r}")
        return handler, parts[2:]


class LimitedChannel(http.HTTPChannel):
    """An HTTPChannel with total header deadlines and body limits (see the module doc)."""

    max_body = 1 << 20
    max_package = 1 << 30  # the body of a package upload (PUT /v1/projects/P/packages/N)
    first_deadline = 25.0  # handshake plus headers of the first request
    header_deadline = 15.0
    # called with (peer, error) when a TLS handshake fails and nobody reported why yet
    on_failed_handshake: Callable[[str, str], None] | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._refusing = False
        self._deadline: Any = None  # an IDelayedCall
        self._arm(self.first_deadline)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = clock.callLater(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        transport: Any = self.transport
        transport.abortConnection()

    def allHeadersReceived(self) -> None:
        self._disarm()
        length: int | None = self.length
        upload = _is_upload(getattr(self, "_command", b""), getattr(self, "_path", b""))
        limit = self.max_package if upload else self.max_body
        if length is None or length > limit:
            status, title, detail = (
                (411, "Length Required", "chunked request bodies are refused; send Content-Length")
                if length is None
                else (
                    413,
                    "Content Too Large",
                    f"the body is {self.length} bytes; this worker accepts at most {limit}",
                )
            )
            self._refuse(Problem(status, title, detail))
            return
        super().allHeadersReceived()

    def _refuse(self, problem: Problem) -> None:
        body = problem.body()
        head = (
            f"HTTP/1.1 {problem.status} {problem.title}\r\ncontent-type: application/problem+json"
            f"\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self._refusing = True
        transport: Any = self.transport
        transport.write(head.encode() + body)
        # Keep reading (and dropping) what the client still sends for a moment, so that it
        # reads our answer instead of a reset; then close.
        clock.callLater(DRAIN_SECONDS, transport.loseConnection)

    def dataReceived(self, data: bytes) -> None:
        if not getattr(self, "_refusing", False):
            super().dataReceived(data)

    def rawDataReceived(self, data: bytes) -> None:
        if not self._refusing:  # the body of a refused request is dropped, never stored
            super().rawDataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if not self._refusing:
            super().lineReceived(line)

    def requestDone(self, request: http.Request) -> None:
        super().requestDone(request)
        if self.transport is not None and not getattr(self, "_refusing", False):
            self._arm(self.header_deadline)  # the next request's headers, or keep-alive idle

    def connectionLost(self, reason: Any = None) -> None:
        self._disarm()
        transport: Any = self.transport
        hook = type(self).on_failed_handshake
        failed = reason is not None and reason.check(SSL.Error)
        if hook is not None and failed and not getattr(transport, REPORTED, False):
            peer = transport.getPeer()
            hook(f"{peer.host}:{peer.port}", _ssl_reason(reason.value))
        super().connectionLost(reason)


def _ssl_reason(error: SSL.Error) -> str:
    """OpenSSL's reason strings of a failed handshake, e.g. "peer did not return a certificate"."""
    reasons = [str(item[2]) for item in error.args[0] if len(item) == 3] if error.args else []
    return "; ".join(reasons) or str(error)


class ConnectionCap(policies.WrappingFactory):
    """Closes connections beyond `limit` at accept, before any TLS or HTTP work.

    It wraps the outermost factory (the TLS one for the daemon), so a refused
    connection costs nothing but the accept."""

    noisy = False

    def __init__(self, wrapped: Any, limit: int) -> None:
        super().__init__(wrapped)
        self.limit = limit
        self.refused = 0

    def buildProtocol(self, addr: Any) -> Any:
        if len(self.protocols) >= self.limit:
            self.refused += 1
            return None
        return super().buildProtocol(addr)


class _Site(server.Site):
    """A Site whose access log is a debug line (a long-polling client makes one a page:
    at INFO it would bury the log; the audit log records what matters for security)."""

    noisy = False  # no "Starting factory" lines

    def log(self, request: http.Request) -> None:
        if access_log.isEnabledFor(logging.DEBUG):
            access_log.debug("%s", http.combinedLogFormatter(self._logDateTime, request))


def _is_upload(command: bytes, path: bytes) -> bool:
    parts = path.split(b"?", 1)[0].split(b"/")
    return (
        command == b"PUT"
        and len(parts) == 6
        and parts[1:3] == [b"v1", b"projects"]
        and (parts[4] == b"packages")
    )


def make_site(
    root: resource.Resource,
    *,
    max_body: int,
    max_package: int = 1 << 30,
    first_deadline: float,
    header_deadline: float,
    on_failed_handshake: Callable[[str, str], None] | None = None,
) -> server.Site:
    channel = type(
        "ConfiguredChannel",
        (LimitedChannel,),
        {
            "max_body": max_body,
            "max_package": max_package,
            "first_deadline": first_deadline,
            "header_deadline": header_deadline,
            "on_failed_handshake": staticmethod(on_failed_handshake)
            if on_failed_handshake
            else None,
        },
    )
    site = _Site(root, timeout=first_deadline)
    site.protocol = channel  # type: ignore[method-assign]
    site.displayTracebacks = False
    return site


class _MetricsResource(resource.Resource):
    """`/metrics` and nothing else (404), rendered on the reactor's thread."""

    isLeaf = True

    def __init__(self, render: Callable[[], bytes], content_type: bytes) -> None:
        super().__init__()
        self._render, self._type = render, content_type

    def render_GET(self, request: server.Request) -> bytes:
        if request.path != b"/metrics":
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"not found: this listener serves /metrics only\n"
        request.setHeader(b"content-type", self._type)
        request.setHeader(b"cache-control", b"no-store")
        return self._render()


class _QuietSite(server.Site):
    noisy = False

    def log(self, request: http.Request) -> None:  # no line per scrape
        pass


def metrics_site(render: Callable[[], bytes], content_type: bytes) -> server.Site:
    """The metrics listener's site: GET /metrics answers `render()`."""
    return _QuietSite(_MetricsResource(render, content_type))
