"""The PowerShell helpers (Calamari's Bootstrap.ps1 names) over the API, where pwsh is
installed. It is not in Debian's archive, so on this project's CI machine these tests are
skipped, and that is the one skip the suite allows."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandworker.sandbox.settings import DEFAULT_INTERPRETERS
from tests.e2e.archives import make_zip
from tests.e2e.daemon import Worker, _worker, lines
from tests.e2e.test_deploy import deploy

PWSH = DEFAULT_INTERPRETERS["powershell"]
pytestmark = pytest.mark.skipif(
    not os.access(PWSH, os.X_OK),
    reason=f"allowed skip: {PWSH} (PowerShell 7) is not installed here; it is not in Debian's"
    " archive",
)
SCRIPT = r"""
Write-Host "$(Get-OctopusVariable 'Greeting')|$($OctopusParameters['Greeting'])|args=$args"
Set-OctopusVariable -name 'Plain' -value 'a value'
Set-OctopusVariable -name 'Token' -value 'tok-98765' -sensitive
Update-Progress 40 'nearly half'
Write-Highlight 'look here'
Write-Host 'tok-98765 and pa55-W0rd-xyz'
New-OctopusArtifact 'report.txt'
Fail-Step 'it went wrong'
"""
VARIABLES = [
    {"name": "Greeting", "value": "hello"},
    {"name": "Password", "value": "pa55-W0rd-xyz", "sensitive": True},
]


@pytest.fixture(scope="module")
def pwsh_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    policy = 'syntaxes = ["bash", "sh", "python", "powershell"]\n'
    yield from _worker(tmp_path_factory.mktemp("pwsh"), policy=policy)


def test_powershell_helpers_speak_service_messages(pwsh_worker: Worker) -> None:
    body = "Set-Content -Path report.txt -Value 'report'\n" + SCRIPT
    run = {"project": "web", "syntax": "powershell", "body": body, "variables": VARIABLES,
           "arguments": ["a1"], "wait_seconds": 60}  # fmt: skip
    status, doc = pwsh_worker.call("PUT", "/v1/scripts/ps-helpers", run)
    assert status == 201, doc
    assert doc["exit_code"] == 1 and doc["result_message"] == "it went wrong", doc
    assert doc["output_variables"] == {
        "Plain": {"value": "a value", "sensitive": False},
        "Token": {"value": "tok-98765", "sensitive": True},
    }
    assert doc["progress"] == {"percentage": 40, "message": "nearly half"}
    out = lines(doc)
    assert out[0] == "hello|hello|args=a1", doc
    assert "look here" in out and "******** and ********" in out, doc
    assert [a["name"] for a in doc["artifacts"]] == ["report.txt"], doc


def test_a_package_runs_its_powershell_stage(pwsh_worker: Worker, tmp_path: Path) -> None:
    entries = [("file", "Deploy.ps1", "Write-Host \"deploy $(Get-OctopusVariable 'Greeting')\"\n")]
    doc = deploy(pwsh_worker, tmp_path, "ps.zip", make_zip(entries), "ps-package",
                 variables=VARIABLES)  # fmt: skip
    assert doc["exit_code"] == 0, doc
    assert "deploy hello" in lines(doc), doc
