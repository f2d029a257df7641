"""The worker's trusted clients: thumbprints, each optionally limited to project globs.

The store is a TOML file (mode 0600, replaced atomically), managed with
`sandworker trust add|remove|list`. Every read checks the file's identity with
one `stat`, so a change applies to the next lookup without a restart. A file
that cannot be read or parsed trusts nobody (fail closed) and says why.

    [[client]]
    sha256 = "0A1B..."      # either form, or both when the certificate was known
    sha1 = "9F8E..."
    projects = ["web-*"]    # absent or empty: every project
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import tomllib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from pathlib import Path

from sandworker.sandbox.atomic import write_atomic

from .certs import Algorithm, CertPrints, InvalidThumbprint, Thumbprint, parse_thumbprint

_GLOB = re.compile(r"[A-Za-z0-9._*?-]{1,64}")
_HEADER = (
    "# Trusted client certificates: managed with `sandworker trust add|remove|list`.\n"
    "# A client matches by either thumbprint; no `projects` means every project.\n"
)


class TrustError(Exception):
    """An unusable trust file or a trust change that cannot be made; the message says why."""


def validate_glob(pattern: str) -> str:
    if _GLOB.fullmatch(pattern) is None:
        raise TrustError(
            f"project pattern {pattern!r} is not allowed: use letters, digits, '.', '_', '-'"
            " and the wildcards '*' and '?' (at most 64 characters)"
        )
    return pattern


@dataclass(frozen=True)
class Trust:
    """One trusted client: at least one thumbprint form, and the projects it may use."""

    sha256: str | None
    sha1: str | None
    projects: tuple[str, ...] = ()

    def allows(self, project: str) -> bool:
        return not self.projects or any(fnmatchcase(project, glob) for glob in self.projects)

    def matches(self, key: Thumbprint | CertPrints) -> bool:
        if isinstance(key, CertPrints):
            return key.sha256 == self.sha256 or key.sha1 == self.sha1
        own = self.sha256 if key.algorithm is Algorithm.SHA256 else self.sha1
        return own == key.hex

    def describe(self) -> str:
        forms = [
            f"{label} {value}"
            for label, value in (("SHA-256", self.sha256), ("SHA-1", self.sha1))
            if value
        ]
        scope = ", ".join(self.projects) if self.projects else "all projects"
        return f"{' / '.join(forms)} ({scope})"


def _merge(
    key: Thumbprint | CertPrints, found: Sequence[Trust], projects: tuple[str, ...]
) -> Trust:
    """The one entry that replaces `found` for `key`: every known form, the new projects."""
    if isinstance(key, CertPrints):
        return Trust(key.sha256, key.sha1, projects)
    merged = Trust(None, None, projects)
    for entry in found:
        merged = replace(
            merged, sha256=merged.sha256 or entry.sha256, sha1=merged.sha1 or entry.sha1
        )
    if key.algorithm is Algorithm.SHA256:
        return replace(merged, sha256=key.hex)
    return replace(merged, sha1=key.hex)


def _parse_entry(raw: object, where: str) -> Trust:
    if not isinstance(raw, dict):
        raise TrustError(f"{where}: expected a table")
    unknown = set(raw) - {"sha256", "sha1", "projects"}
    if unknown:
        raise TrustError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    forms: dict[Algorithm, str | None] = {}
    for algorithm, field in ((Algorithm.SHA256, "sha256"), (Algorithm.SHA1, "sha1")):
        value = raw.get(field)
        if value is None:
            forms[algorithm] = None
            continue
        try:
            parsed = parse_thumbprint(value) if isinstance(value, str) else None
        except InvalidThumbprint as exc:
            raise TrustError(f"{where} {field}: {exc}") from exc
        if parsed is None or parsed.algorithm is not algorithm:
            raise TrustError(f"{where} {field}: expected a {algorithm.label} thumbprint")
        forms[algorithm] = parsed.hex
    if not any(forms.values()):
        raise TrustError(f"{where}: needs sha256 or sha1")
    projects = raw.get("projects", [])
    if not isinstance(projects, list) or not all(isinstance(p, str) for p in projects):
        raise TrustError(f"{where} projects: expected a list of strings")
    try:
        globs = tuple(validate_glob(p) for p in projects)
    except TrustError as exc:
        raise TrustError(f"{where} projects: {exc}") from exc
    return Trust(forms[Algorithm.SHA256], forms[Algorithm.SHA1], globs)


def _render(entries: Sequence[Trust]) -> bytes:
    blocks = [_HEADER]
    for entry in entries:
        lines = ["[[client]]"]
        lines += [
            f"{k} = {json.dumps(v)}"
            for k, v in (("sha256", entry.sha256), ("sha1", entry.sha1))
            if v
        ]
        if entry.projects:
            lines.append(f"projects = {json.dumps(list(entry.projects))}")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks).encode()


class TrustStore:
    """The trust file at `path`, re-read whenever its inode, size or mtime changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int, int] | None = None
        self._entries: tuple[Trust, ...] = ()
        self._error: TrustError | None = None

    def entries(self) -> tuple[Trust, ...]:
        """The current entries; TrustError if the file is unusable."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._entries, self._error = None, (), None
            return ()
        except OSError as exc:
            raise TrustError(f"cannot read {self.path}: {exc.strerror}") from exc
        stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._entries, self._error = self._load(st.st_mode), None
            except TrustError as exc:
                self._entries, self._error = (), exc
        if self._error is not None:
            raise self._error
        return self._entries

    def _load(self, mode: int) -> tuple[Trust, ...]:
        if mode & 0o022:
            raise TrustError(f"{self.path} is writable by group or others: chmod 600 it")
        try:
            data = tomllib.loads(self.path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise TrustError(f"cannot read {self.path}: {exc.strerror}") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise TrustError(f"{self.path}: {exc}") from exc
        unknown = set(data) - {"client"}
        if unknown:
            raise TrustError(f"{self.path}: unknown field {sorted(unknown)[0]!r}")
        clients = data.get("client", [])
        if not isinstance(clients, list):
            raise TrustError(f"{self.path}: client: expected [[client]] tables")
        return tuple(
            _parse_entry(raw, f"{self.path}: client {n}") for n, raw in enumerate(clients, 1)
        )

    def lookup(self, sha256: str, sha1: str) -> Trust | None:
        """The trust of a presented certificate, or None; TrustError if the file is unusable.

        A certificate trusted under both forms in separate entries gets the union of their projects.
        """
        found = [entry for entry in self.entries() if entry.matches(CertPrints(sha256, sha1))]
        if not found:
            return None
        every = any(not entry.projects for entry in found)
        globs = () if every else tuple(dict.fromkeys(g for entry in found for g in entry.projects))
        return Trust(sha256, sha1, globs)

    def add(self, key: Thumbprint | CertPrints, projects: Sequence[str] = ()) -> tuple[Trust, bool]:
        """Trust `key` for `projects` (none: all); returns the entry and whether it changed."""
        globs = tuple(dict.fromkeys(validate_glob(p) for p in projects))
        with self._locked():
            old = self.entries()
            found = [entry for entry in old if entry.matches(key)]
            entry = _merge(key, found, globs)
            kept = [e for e in old if e not in found]
            position = old.index(found[0]) if found else len(old)
            new = (*kept[:position], entry, *kept[position:])
            if new != old:
                self._save(new)
            return entry, new != old

    def remove(self, key: Thumbprint | CertPrints) -> list[Trust]:
        """Stop trusting `key`: the removed entries, or TrustError naming what is trusted."""
        with self._locked():
            old = self.entries()
            removed = [entry for entry in old if entry.matches(key)]
            if not removed:
                trusted = "; ".join(e.describe() for e in old) or "nothing"
                raise TrustError(f"{key} is not trusted; trusted: {trusted}")
            self._save(tuple(e for e in old if e not in removed))
            return removed

    def _save(self, entries: Sequence[Trust]) -> None:
        try:
            write_atomic(self.path, _render(entries), mode=0o600)
        except OSError as exc:
            raise TrustError(f"cannot write {self.path}: {exc.strerror}") from exc

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise read-modify-write cycles of concurrent `trust` commands."""
        try:
            self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise TrustError(f"cannot open {self.path.parent}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
