"""The package routes of the API: a project's cache (packages.py) over pinned mutual TLS.

Upload (`PUT /v1/projects/{p}/packages/{name}`), download by the worker (`POST
/v1/projects/{p}/packages`, from the sources the project's policy lists), listing and
removal; each audited. Arrivals and removals block on the disk or the network, so they run
in a pool of ARRIVALS threads of their own: a slow download never holds up the threads the
rest of the daemon uses. A proxy keeps a cache too (it passes packages on to its workers,
remote.py) but downloads nothing: the workers' policies list the sources.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import reactor as _reactor
from twisted.internet import threads
from twisted.python.threadpool import ThreadPool
from twisted.web import server

from sandworker.sandbox.policy import PolicyDenied, PolicySet

from .api import Problem, bad_request, json_object
from .audit import AuditLog, Event
from .http import Body, Handler, Identity
from .packages import PackageCache, PackageError, check_name, check_sha256

ARRIVALS = 4  # packages arriving (or removed) at once; more wait for a thread
_TITLES = {400: "Bad Request", 403: "Forbidden", 413: "Content Too Large", 502: "Bad Gateway",
           504: "Gateway Timeout", 507: "Insufficient Storage"}  # fmt: skip
_T = TypeVar("_T")


class PackageRoutes:
    def __init__(
        self,
        cache: PackageCache,
        audit: AuditLog,
        *,
        policies: Callable[[], PolicySet],
        proxied: Callable[[], bool],
        project: Callable[[str, Identity], str],  # a checked project the caller may use
        max_package: int,
    ) -> None:
        self.cache, self.audit, self.max_package = cache, audit, max_package
        self._policies, self._proxied, self._project = policies, proxied, project
        self._pool = ThreadPool(0, ARRIVALS, name="packages")

    def routes(self) -> dict[tuple[str, str], Handler]:
        return {
            ("PUT", "projects/{}/packages/{}"): self.upload,
            ("GET", "projects/{}/packages"): self.listing,
            ("POST", "projects/{}/packages"): self.fetch,
            ("DELETE", "projects/{}/packages/{}"): self.remove,
        }

    async def upload(
        self, request: server.Request, parts: list[str], who: Identity
    ) -> tuple[int, Body]:
        """A package into the project's cache, its SHA-256 checked."""
        project = self._project(parts[0], who)
        name = urllib.parse.unquote(parts[2])

        def keep() -> tuple[int, str]:
            check_name(name)
            sha256 = check_sha256((request.getHeader(b"sandworker-sha256") or b"").decode())
            length = int(request.getHeader(b"content-length") or 0)
            assert request.content is not None
            request.content.seek(0)
            kept = self.cache.store(
                project, name, request.content, length=length, sha256=sha256,
                limit=self.max_package,
            )  # fmt: skip
            return kept, sha256

        length, sha256 = await self._blocking(keep, "the package was not kept")
        self.audit.record(
            Event.PACKAGE_UPLOADED, project=project, name=name, sha256=sha256, length=length,
            client=who.thumbprint,
        )  # fmt: skip
        return 201, {"project": project, "name": name, "sha256": sha256, "length": length}

    async def fetch(
        self, request: server.Request, parts: list[str], who: Identity
    ) -> tuple[int, Body]:
        """A package the worker downloads itself, from a source the project's policy lists."""
        project = self._project(parts[0], who)
        if self._proxied():
            raise Problem(501, "Not Implemented", "a proxy downloads nothing (the workers'"
                          " policies list the sources): have a worker download the package,"
                          " or upload it here")  # fmt: skip
        doc = json_object(request.content.read() if request.content else b"",
                          {"name", "url", "sha256"})  # fmt: skip
        name, url = doc.get("name"), doc.get("url")
        if not isinstance(name, str) or not isinstance(url, str):
            raise bad_request('send {"name": "...", "url": "https://...", "sha256": "..."}')
        try:
            sources = self._policies().resolve(project).package_sources
        except PolicyDenied as exc:
            raise Problem(403, "Forbidden", str(exc), reason="policy") from None

        def keep() -> tuple[int, str]:
            check_name(name)
            sha256 = check_sha256(doc.get("sha256") if isinstance(doc.get("sha256"), str) else "")
            length = self.cache.fetch(
                project, name, url, sha256=sha256, sources=sources, limit=self.max_package
            )
            return length, sha256

        length, sha256 = await self._blocking(keep, "the package was not kept")
        self.audit.record(
            Event.PACKAGE_FETCHED, project=project, name=name, sha256=sha256, length=length,
            url=url, client=who.thumbprint,
        )  # fmt: skip
        return 201, {"project": project, "name": name, "sha256": sha256, "length": length,
                     "url": url}  # fmt: skip

    async def remove(
        self, _request: server.Request, parts: list[str], who: Identity
    ) -> tuple[int, Body]:
        """Remove a package from the cache (steps already accepted keep their own link)."""
        project = self._project(parts[0], who)
        name = urllib.parse.unquote(parts[2])
        removed = await self._blocking(lambda: self.cache.remove(project, name), "it stays")
        if not removed:
            raise Problem(404, "Not Found", f"project {project} has no package {name}")
        self.audit.record(Event.PACKAGE_REMOVED, project=project, name=name, client=who.thumbprint)
        return 200, {"project": project, "name": name, "removed": True}

    async def listing(
        self, _request: server.Request, parts: list[str], who: Identity
    ) -> tuple[int, Body]:
        project = self._project(parts[0], who)
        return 200, {"project": project, "packages": self.cache.list(project)}

    async def _blocking(self, work: Callable[[], _T], failed: str) -> _T:
        """`work` in the pool; its refusals as HTTP problems (a disk error: 507, `failed`)."""
        reactor: Any = _reactor
        if not self._pool.started:
            self._pool.start()
            reactor.addSystemEventTrigger("during", "shutdown", self._pool.stop)
        try:
            return await threads.deferToThreadPool(reactor, self._pool, work)
        except PackageError as exc:
            raise Problem(exc.status, _TITLES.get(exc.status, "Error"), str(exc)) from None
        except OSError as exc:
            raise Problem(507, "Insufficient Storage", f"{failed}: {exc}") from None
