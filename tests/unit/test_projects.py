"""Project ids: what may name a policy rule, an account and a directory."""

from __future__ import annotations

import pytest

from sandworker.sandbox.projects import MAX_LENGTH, InvalidProject, validate_project


@pytest.mark.parametrize("good", ["web", "Web-01", "a", "proj_1.2", "x" * MAX_LENGTH])
def test_valid_ids_pass(good: str) -> None:
    assert validate_project(good) == good


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("", "empty"),
        ("x" * (MAX_LENGTH + 1), "at most 64"),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("..", "not allowed"),
        (".", "not allowed"),
        (".hidden", "not allowed"),
        ("-rf", "not allowed"),
        ("a\x00b", "NUL or control"),
        ("a\nb", "NUL or control"),
        ("a\x7fb", "NUL or control"),
        ("caf\u00e9", "not allowed"),
        ("a b", "not allowed"),
        ("a*", "not allowed"),
    ],
)
def test_invalid_ids_are_refused_with_a_reason(bad: str, reason: str) -> None:
    with pytest.raises(InvalidProject, match=reason):
        validate_project(bad)
