"""Project ids: the one name that picks a policy rule, an account and a workspace."""

from __future__ import annotations

import re

MAX_LENGTH = 64
_VALID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class InvalidProject(ValueError):
    """A project id that cannot be used as a name on disk or in a policy."""


def validate_project(project: str) -> str:
    """Return `project` if it is a valid id, else raise InvalidProject saying why."""
    if not project:
        raise InvalidProject("project id is empty")
    if len(project) > MAX_LENGTH:
        raise InvalidProject(f"project id is {len(project)} characters; at most {MAX_LENGTH}")
    if any(ord(c) < 32 or ord(c) == 127 for c in project):
        raise InvalidProject(f"project id {project!r} contains a NUL or control character")
    if "/" in project or "\\" in project:
        raise InvalidProject(f"project id {project!r} contains a path separator")
    if _VALID.fullmatch(project) is None:
        raise InvalidProject(
            f"project id {project!r} is not allowed: use letters, digits, '.', '_' and '-',"
            " starting with a letter or digit"
        )
    return project
