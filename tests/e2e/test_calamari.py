"""Calamari-style script semantics over the API: variables into bash, sh and python
through the helpers (never on a command line; the file only the project's account reads),
and service messages back."""

from __future__ import annotations

import base64
import http.client
import json
import subprocess
from typing import Any

import pytest

from sandworker.daemon.certs import certificate_prints
from sandworker.daemon.pinclient import client_context
from tests.e2e.daemon import SANDWORKER, Worker, lines

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


OUTPUTS_SH = """
set_octopusvariable Plain 'a value'
set_octopusvariable Token 'tok-98765' -sensitive
update_progress 40 'nearly half'
write_highlight 'look here'
echo after
"""
OUTPUTS_PY = """
set_octopusvariable("Plain", "a value")
set_octopusvariable("Token", "tok-98765", True)
updateprogress(40, "nearly half")
printhighlight("look here")
print("after")
"""


@pytest.mark.parametrize(
    ("syntax", "body"), [("bash", OUTPUTS_SH), ("sh", OUTPUTS_SH), ("python", OUTPUTS_PY)]
)
def test_output_variables_progress_and_levels_come_back(
    worker: Worker, syntax: str, body: str
) -> None:
    doc = start(worker, f"out-{syntax}", syntax, body + "echo tok-98765\n"
                if syntax != "python" else body + "print('tok-98765')\n")  # fmt: skip
    assert doc["exit_code"] == 0, doc
    assert doc["output_variables"] == {
        "Plain": {"value": "a value", "sensitive": False},
        "Token": {"value": "tok-98765", "sensitive": True},
    }
    assert doc["progress"] == {"percentage": 40, "message": "nearly half"}
    logs = [line for line in doc["logs"] if line["source"] == "stdout"]
    assert [(line.get("level", "default"), line["text"]) for line in logs] == [
        ("highlight", "look here"),
        ("default", "after"),
        ("default", "********"),  # a sensitive output's value, masked once it is known
    ], logs
    assert not [line for line in doc["logs"] if "##octopus" in line["text"]]


def test_fail_step_gives_the_result_message(worker: Worker) -> None:
    doc = start(worker, "fail", "bash", "echo before; fail_step 'the step failed: no disk'")
    assert (doc["exit_code"], doc["result_message"]) == (1, "the step failed: no disk"), doc
    assert lines(doc) == ["before"]


def test_malformed_and_unknown_messages_stay_as_text_with_a_note(worker: Worker) -> None:
    body = (
        "echo \"##octopus[setVariable name='!!!' value='x']\"; "
        "echo \"##octopus[frobnicate value='eA==']\"; "
        "echo '##octopus[unclosed'; echo done"
    )
    doc = start(worker, "malformed", "bash", body)
    assert doc["exit_code"] == 0, doc
    assert lines(doc) == [
        "##octopus[setVariable name='!!!' value='x']",
        "##octopus[frobnicate value='eA==']",
        "##octopus[unclosed",
        "done",
    ], doc
    notes = lines(doc, "debug")
    assert sum("printed as text" in n for n in notes) == 3, notes
    assert any("unknown service message 'frobnicate'" in n for n in notes), notes


SECRET = "s3cr3t-Pa55"
MULTI = "first-line-of-key\nsecond-line-of-key"


def test_sensitive_values_never_reach_a_log_line_or_the_disk(worker: Worker) -> None:
    b64 = base64.b64encode(SECRET.encode()).decode()
    learned = "learned-at-runtime"
    body = f"""
echo "plain {SECRET} inside"
printf 's3cr'; sleep 0.2; printf '3t-Pa55 split across writes\\n'
echo "to stderr {SECRET}" >&2
echo "base64 {b64}"
printf '%s\\n' "$(get_octopusvariable Key)"
echo "##octopus[mask value='$(printf %s {learned} | base64)']"
echo "then {learned}"
printf 'the last line, no newline: {SECRET}'
"""
    variables = [
        {"name": "Password", "value": SECRET, "sensitive": True},
        {"name": "Key", "value": MULTI, "sensitive": True},
    ]
    doc = start(worker, "masked", "bash", body, variables=variables)
    assert doc["exit_code"] == 0, doc
    out, err = lines(doc), lines(doc, "stderr")
    # the two-line value: one masked line when it arrives whole, else each line masked
    assert out[3:-2] in (["********"], ["********", "********"]), out
    assert out[:3] + out[-2:] == [
        "plain ******** inside",
        "******** split across writes",
        "base64 ********",
        "then ********",
        "the last line, no newline: ********",
    ], out
    assert err == ["to stderr ********"], err
    everything = json.dumps(doc)
    for secret in (SECRET, b64, learned, "first-line-of-key", "second-line-of-key"):
        assert secret not in everything
    ticket_dir = worker.state / "tickets" / "tickets" / "masked"
    for name in ("log.jsonl", "state.jsonl"):
        on_disk = (ticket_dir / name).read_text()
        assert SECRET not in on_disk and learned not in on_disk, name
    assert (ticket_dir / "request.json").stat().st_mode & 0o777 == 0o600  # (root's alone)


def _download(worker: Worker, path: str) -> tuple[int, bytes]:
    pin = certificate_prints(worker.home / "worker.crt").sha256
    context = client_context(worker.home / "client.crt", worker.home / "client.key", pin)
    conn = http.client.HTTPSConnection("127.0.0.1", worker.port, context=context, timeout=60)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _artifact(path: str, name: str) -> str:
    """Shell for a createArtifact message of `path` as given (the helper resolves links)."""
    return (
        f'echo "##octopus[createArtifact path=\'$(printf %s "{path}" | base64 -w0)\''
        f" name='$(printf %s {name} | base64 -w0)']\""
    )


def test_artifacts_are_kept_without_following_links_and_downloaded(worker: Worker) -> None:
    body = "\n".join([
        "printf 'artifact body\\n' > good.txt; new_octopusartifact good.txt",
        "ln -s /etc/shadow shadow; " + _artifact("$PWD/shadow", "shadow"),
        _artifact("/etc/passwd", "passwd"),
        _artifact("$PWD/../elsewhere/x", "dotdot"),
        "ln -s /etc etc; " + _artifact("$PWD/etc/passwd", "through-a-link"),
        "printf x > one; ln one two; " + _artifact("$PWD/two", "hardlinked"),
        "mkfifo fifo; " + _artifact("$PWD/fifo", "fifo"),
        "mkdir sub; printf 'deep\\n' > sub/f; new_octopusartifact sub/f deep.txt",
    ])  # fmt: skip
    doc = start(worker, "art", "bash", body)
    assert doc["exit_code"] == 0, doc
    kept = {a["name"]: a for a in doc["artifacts"]}
    assert kept["good.txt"]["kept"] and kept["good.txt"]["length"] == 14, kept
    assert kept["deep.txt"]["kept"], kept
    reasons = {name: a.get("refused", "") for name, a in kept.items() if not a["kept"]}
    assert set(reasons) == {"shadow", "passwd", "dotdot", "through-a-link", "hardlinked", "fifo"}
    assert "links are not followed" in reasons["shadow"]
    assert "outside the script's working directory" in reasons["passwd"]
    assert "outside the script's working directory" in reasons["dotdot"]
    assert "links are not followed" in reasons["through-a-link"]
    assert "2 links" in reasons["hardlinked"]
    assert "not a regular file" in reasons["fifo"]
    assert _download(worker, "/v1/scripts/art/artifacts/good.txt") == (200, b"artifact body\n")
    assert _download(worker, "/v1/scripts/art/artifacts/deep.txt") == (200, b"deep\n")
    status, problem = _download(worker, "/v1/scripts/art/artifacts/shadow")
    assert status == 404 and b"no kept artifact" in problem
    root_only = worker.state / "tickets" / "tickets" / "art" / "artifact-0"
    assert root_only.stat().st_mode & 0o777 == 0o600
    profile = worker.profile()
    into = worker.home / "downloaded"
    into.mkdir()
    listed = subprocess.run(
        [SANDWORKER, "script", "artifacts", "art", "--download", str(into),
         "--profile", str(profile)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert listed.returncode == 0, listed
    assert "shadow\t" in listed.stdout and "not kept: " in listed.stdout, listed.stdout
    assert sorted(p.name for p in into.iterdir()) == ["deep.txt", "good.txt"]
    assert (into / "good.txt").read_bytes() == b"artifact body\n"


def test_artifacts_beyond_the_policys_budget_are_refused(worker: Worker) -> None:
    policy = worker.home / "policies" / "p.toml"
    policy.write_text(policy.read_text() + '[project.limits]\nartifacts = "1KiB"\n')
    reload = subprocess.run(
        [SANDWORKER, "reload", "--config", str(worker.home / "sandworker.toml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert reload.returncode == 0, reload
    body = (
        "head -c 600 /dev/zero > a; head -c 600 /dev/zero > b; "
        "new_octopusartifact a; new_octopusartifact b"
    )
    doc = start(worker, "budget", "bash", body)
    first, second = doc["artifacts"]
    assert first["kept"] and not second["kept"], doc["artifacts"]
    assert "limits.artifacts leaves 424" in second["refused"]


def test_fail_script_on_error_output_turns_stderr_into_a_failure(worker: Worker) -> None:
    body = "echo fine; echo 'a warning on stderr' >&2"
    assert start(worker, "lenient", "bash", body)["exit_code"] == 0
    strict = [{"name": "Octopus.Action.FailScriptOnErrorOutput", "value": "True"}]
    doc = start(worker, "strict", "bash", body, variables=strict)
    assert doc["exit_code"] == 1, doc
    assert "wrote to stderr, and Octopus.Action.FailScriptOnErrorOutput is True" in doc["message"]
    quiet = start(worker, "strict-quiet", "bash", "echo fine", variables=strict)
    assert quiet["exit_code"] == 0, quiet
