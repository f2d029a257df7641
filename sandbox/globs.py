"""Project patterns: exact ids and globs with `*` (any run) and `?` (one character).

A glob's specificity is its number of characters other than `*`, which is the
length of the shortest id it can match. Two globs tie when they have the same
specificity and some id matches both; `common_name` decides that exactly.
"""

from __future__ import annotations

from collections import deque

WILDCARDS = "*?"


def is_glob(pattern: str) -> bool:
    return any(char in pattern for char in WILDCARDS)


def specificity(pattern: str) -> int:
    """Characters other than `*`: "web-*" -> 4, "web-?" -> 5, "*" -> 0."""
    return len(pattern) - pattern.count("*")


def common_name(first: str, second: str) -> str | None:
    """A shortest name that both patterns match, or None if no name matches both.

    A breadth-first walk over pairs of positions in the two patterns: a `*`
    may match nothing (move past it) or one more character (stay on it).
    """
    start, end = (0, 0), (len(first), len(second))
    came_from: dict[tuple[int, int], tuple[tuple[int, int], str]] = {}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        if state == end:
            name = ""
            while state != start:
                state, char = came_from[state]
                name = char + name
            return name
        i, j = state
        a = first[i] if i < len(first) else ""
        b = second[j] if j < len(second) else ""
        moves = []
        if a == "*":
            moves.append(((i + 1, j), ""))
        if b == "*":
            moves.append(((i, j + 1), ""))
        char = _shared_char(a, b)
        if char:
            moves.append(((i + (a != "*"), j + (b != "*")), char))
        for target, text in moves:
            if target != start and target not in came_from:
                came_from[target] = (state, text)
                queue.append(target)
    return None


def _shared_char(a: str, b: str) -> str:
    """A character that pattern items `a` and `b` both accept ("" if none)."""
    if not a or not b:
        return ""
    if a in WILDCARDS and b in WILDCARDS:
        return "x"
    if a in WILDCARDS:
        return b
    if b in WILDCARDS:
        return a
    return a if a == b else ""
