"""Calamari-style script semantics over the API: variables into bash, sh and python
through the helpers (never on a command line; the file only the project's account reads),
and service messages back."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.daemon import Worker, lines

VARIABLES = [
    {"name": "Greeting", "value": "hello world"},
    {"name": "Odd Name.With-Dots", "value": "quote ' and \" and $HOME and `x`\nsecond line"},
    {"name": "Password", "value": "s3cr3t-Pa55", "sensitive": True},
]


def start(worker: Worker, ticket: str, syntax: str, body: str, **extra: Any) -> dict[str, Any]:
    run = {"project": "web", "syntax": syntax, "body": body, "wait_seconds": 20, **extra}
    status, doc = worker.call("PUT", f"/v1/scripts/{ticket}", run)
    assert status == 201, doc
    return doc


SHELL = """
printf '%s|' "$(get_octopusvariable Greeting)"
get_octopusvariable 'Odd Name.With-Dots'; echo
echo "missing=[$(get_octopusvariable Nope)]"
echo "args=$*"
"""
PYTHON = """
import sys
print(get_octopusvariable("Greeting"), end="|")
print(get_octopusvariable("Odd Name.With-Dots"))
print(f"missing=[{get_octopusvariable('Nope')}]")
print("args=" + " ".join(sys.argv[1:]))
"""


@pytest.mark.parametrize(("syntax", "body"), [("bash", SHELL), ("sh", SHELL), ("python", PYTHON)])
def test_variables_reach_the_script_through_its_helpers(
    worker: Worker, syntax: str, body: str
) -> None:
    doc = start(worker, f"vars-{syntax}", syntax, body, variables=VARIABLES, arguments=["a", "b"])
    assert doc["exit_code"] == 0, doc
    assert lines(doc) == [
        "hello world|quote ' and \" and $HOME and `x`",
        "second line",
        "missing=[]",
        "args=a b",
    ], doc


def test_the_variables_file_is_the_accounts_alone_and_never_on_a_command_line(
    worker: Worker,
) -> None:
    body = (
        "stat -c '%u %a' .octopus.variables; "
        "cat /proc/$$/cmdline | tr '\\0' ' '; echo; "
        # the value is put together in the shell, so no argv of this test holds it
        'p=s3cr3; p="${p}t-Pa55"; for f in /proc/[0-9]*/cmdline; do'
        " c=$(tr '\\0' ' ' < \"$f\" 2>/dev/null);"
        ' case "$c" in *"$p"*) echo "$f";; esac; done | wc -l'
    )
    doc = start(worker, "file", "bash", body, variables=VARIABLES)
    out = lines(doc)
    assert out[0] == f"{worker.uid_of('web')} 600", doc
    assert "s3cr3t" not in out[1] and "Script.sh" in out[1], doc
    assert out[2] == "0", doc
