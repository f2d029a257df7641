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

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from .certs import Algorithm, CertPrints, InvalidThumbprint, Thumbprint, parse_thumbprint
from .watched import WatchedToml, tables

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


def _parse_file(path: Path, data: dict[str, Any]) -> tuple[Trust, ...]:
    clients = tables(path, data, "client", TrustError)
    return tuple(_parse_entry(raw, f"{path}: client {n}") for n, raw in enumerate(clients, 1))


class TrustStore:
    """The trust file at `path` (a WatchedToml: re-read whenever it changes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        none: tuple[Trust, ...] = ()
        self._file = WatchedToml(path, lambda data: _parse_file(path, data), none, TrustError)

    def entries(self) -> tuple[Trust, ...]:
        """The current entries; TrustError if the file is unusable."""
        return self._file.read()

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
        with self._file.locked():
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
        with self._file.locked():
            old = self.entries()
            removed = [entry for entry in old if entry.matches(key)]
            if not removed:
                trusted = "; ".join(e.describe() for e in old) or "nothing"
                raise TrustError(f"{key} is not trusted; trusted: {trusted}")
            self._save(tuple(e for e in old if e not in removed))
            return removed

    def _save(self, entries: Sequence[Trust]) -> None:
        self._file.save(_render(entries))
