"""Script syntaxes: file name and argv for each, interpreters by absolute path only."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Syntax:
    name: str
    filename: str  # the script file written into the run directory
    argv: Callable[[str, str, list[str]], list[str]]  # (interpreter, script, args) -> argv


def _plain(interp: str, script: str, args: list[str]) -> list[str]:
    return [interp, script, *args]


def _pwsh(interp: str, script: str, args: list[str]) -> list[str]:
    return [interp, "-NoProfile", "-NonInteractive", "-NoLogo", "-File", script, *args]


SYNTAXES: dict[str, Syntax] = {
    "bash": Syntax("bash", "Script.sh", _plain),
    "sh": Syntax("sh", "Script.sh", _plain),
    "python": Syntax("python", "Script.py", _plain),
    "powershell": Syntax("powershell", "Script.ps1", _pwsh),
}


class SyntaxRefused(ValueError):
    """The syntax is unknown, not allowed by policy, or its interpreter is missing."""


def interpreter_for(syntax: str, interpreters: Mapping[str, str], allowed: tuple[str, ...]) -> str:
    if syntax not in SYNTAXES:
        raise SyntaxRefused(f"unknown syntax {syntax!r}; known: {', '.join(SYNTAXES)}")
    if syntax not in allowed:
        raise SyntaxRefused(
            f"syntax {syntax!r} is not allowed for this project by policy"
            f" (allowed: {', '.join(allowed) or 'none'})"
        )
    path = interpreters.get(syntax)
    if path is None or not os.path.isabs(path):
        raise SyntaxRefused(f"no absolute interpreter path configured for {syntax}")
    if not os.access(path, os.X_OK):
        raise SyntaxRefused(f"the {syntax} interpreter {path} is missing or not executable")
    return path
