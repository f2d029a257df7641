"""A real Twisted server with sandworker's HTTP layer and stub handlers (plain TCP).

Run as a subprocess by tests/integration/test_http_layer.py: prints its port, serves until
killed. TLS and pinning are exercised by the end-to-end tests instead.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import reactor
from twisted.web import server

from sandworker.daemon.api import Problem
from sandworker.daemon.http import ConnectionCap, Identity, Router, make_site


class Everyone:
    thumbprint = "STUB"

    def allows(self, project: str) -> bool:
        return True


async def put_script(
    request: server.Request, parts: list[str], _who: Identity
) -> tuple[int, dict[str, Any]]:
    return 200, {"ticket": parts[0], "received": len(request.content.read())}


async def health(
    _request: server.Request, _parts: list[str], _who: Identity
) -> tuple[int, dict[str, Any]]:
    return 200, {"ok": True}


async def boom(
    _request: server.Request, _parts: list[str], _who: Identity
) -> tuple[int, dict[str, Any]]:
    raise RuntimeError("a bug")


async def refuse(
    _request: server.Request, _parts: list[str], _who: Identity
) -> tuple[int, dict[str, Any]]:
    raise Problem(409, "Conflict", "stub conflict")


def main() -> None:
    routes = {
        ("PUT", "scripts/{}"): put_script,
        ("GET", "health"): health,
        ("GET", "boom"): boom,
        ("GET", "conflict"): refuse,
    }
    site = make_site(
        Router(routes, lambda _r: Everyone()),
        max_body=4096,
        first_deadline=2.0,
        header_deadline=2.0,
    )
    capped = ConnectionCap(site, int(sys.argv[1]))
    port = reactor.listenTCP(0, capped, interface="127.0.0.1")  # type: ignore[attr-defined]
    print(port.getHost().port, flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
