"""Start requests are validated field by field, with messages that say what is allowed."""

from __future__ import annotations

import json

import pytest

from sandworker.daemon.api import OPERATIONS, Problem, StartRequest, validate_name
from sandworker.daemon.scheduler import Isolation


def parse(**fields: object) -> StartRequest:
    doc = {"project": "web", "body": "echo hi", **fields}
    return StartRequest.parse(json.dumps(doc).encode())


def test_minimal_request_gets_tentacle_defaults() -> None:
    request = parse()
    assert (request.syntax, request.isolation, request.mutex) == (
        "bash",
        Isolation.NONE,
        "RunningScript",
    )
    assert (request.acquire_timeout, request.timeout, request.wait_seconds) == (0.0, None, 0.0)


def test_full_request_is_parsed() -> None:
    request = parse(
        syntax="python",
        arguments=["a", "b"],
        isolation="full",
        mutex="deploy",
        acquire_timeout=30,
        timeout=600,
        wait_seconds=2.5,
    )
    assert request.arguments == ("a", "b") and request.isolation is Isolation.FULL
    assert (request.timeout, request.wait_seconds) == (600.0, 2.5)


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        ({"project": "../etc"}, "project id '../etc' contains a path separator"),
        ({"project": "a\x07"}, "NUL or control character"),
        ({"syntax": "ruby"}, "syntax 'ruby' is unknown; known: bash, sh, python, powershell"),
        ({"body": 3}, "body must be a string"),
        ({"arguments": "x"}, "arguments must be a list"),
        ({"arguments": [1]}, "arguments must be at most 256 strings"),
        ({"isolation": "partial"}, 'isolation must be "full" (exclusive) or "none" (shared)'),
        ({"mutex": "../x"}, 'mutex "../x" is not allowed'),
        ({"timeout": 0}, "timeout must be a number of seconds from 1 to 604800"),
        ({"timeout": True}, "timeout must be a number of seconds"),
        ({"wait_seconds": 61}, "wait_seconds must be a number of seconds from 0 to 60"),
        ({"colour": "red"}, "unknown field(s) colour; known: acquire_timeout, arguments"),
        ({"body": "a\x00b"}, "may not contain NUL characters"),
        ({"package": 3}, "package must be the name of a package"),
        ({"package": "../app.zip"}, "package name '../app.zip'"),
        ({"package": "app.exe"}, "ending in .zip, .tar.gz, .tgz or .nupkg"),
        ({"substitute": ["a"]}, "name the package too"),
        ({"package": "a.zip", "substitute": "x"}, "substitute must be a list"),
        ({"package": "a.zip", "substitute": ["/etc/x"]}, "relative to the package's top"),
        ({"package": "a.zip", "substitute": ["a/../../x"]}, "relative to the package's top"),
        ({"package": "a.zip", "substitute": ["x"] * 65}, "at most 64"),
    ],
)
def test_bad_fields_are_refused_with_an_actionable_detail(
    fields: dict[str, object], detail: str
) -> None:
    with pytest.raises(Problem) as caught:
        parse(**fields)
    assert caught.value.status == 400
    assert detail in caught.value.detail


def test_a_package_step_needs_no_body() -> None:
    raw = json.dumps({"project": "web", "package": "app.1.0.tar.gz", "substitute": ["*.conf"]})
    request = StartRequest.parse(raw.encode())
    assert (request.package, request.substitute, request.body) == (
        "app.1.0.tar.gz", ("*.conf",), ""
    )  # fmt: skip
    assert request.forwarded()["package"] == "app.1.0.tar.gz"  # a proxy passes it on


@pytest.mark.parametrize("raw", [b"{", b"[]", b"\xff", b'"x"'])
def test_malformed_bodies_are_refused(raw: bytes) -> None:
    with pytest.raises(Problem, match="JSON"):
        StartRequest.parse(raw)


def test_required_fields() -> None:
    with pytest.raises(Problem, match="project is required"):
        StartRequest.parse(b'{"body": "x"}')
    with pytest.raises(Problem, match="body is required"):
        StartRequest.parse(b'{"project": "x"}')


def test_problem_documents_are_rfc9457() -> None:
    body = json.loads(Problem(404, "Not Found", "unknown ticket t1", exit_code=-45).body())
    assert body == {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": "unknown ticket t1",
        "exit_code": -45,
    }


def test_names_and_registry() -> None:
    assert validate_name("ticket", "Abc-1.2_3") == "Abc-1.2_3"
    for bad in ["", ".", "-x", "a/b", "a" * 129, "é"]:
        with pytest.raises(Problem):
            validate_name("ticket", bad)
    assert set(OPERATIONS.values()) == {
        "start",
        "status",
        "cancel",
        "complete",
        "health",
        "capabilities",
    }
