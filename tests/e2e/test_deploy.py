"""Package steps over the API: a package from the project's cache is extracted inside the
sandbox as the project's account, its PreDeploy, Deploy and PostDeploy scripts run in order
(DeployFailed on a failure), `#{Name}` is substituted in the files the start lists, and every
hostile archive shape is refused with a reason, writing nothing outside the run directory."""

from __future__ import annotations

import hashlib
import json
import re
import stat
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from sandworker.daemon.builtin import run_id
from tests.e2e.archives import Entry, damaged_lzma_zip, make_tar, make_zip
from tests.e2e.daemon import SANDWORKER, Worker, _worker, lines


@pytest.fixture(scope="module")
def deployer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    policy = 'limits.package = "16MiB"\nlimits.package_files = 50\n'
    yield from _worker(tmp_path_factory.mktemp("deploy"), policy=policy)


def deploy(
    worker: Worker, tmp: Path, name: str, data: bytes, ticket: str, **start: Any
) -> dict[str, Any]:
    path = tmp / name
    path.write_bytes(data)
    status, body = worker.upload(name, path)
    assert status == 201, body
    run = {"project": "web", "package": name, "wait_seconds": 30, **start}
    status, doc = worker.call("PUT", f"/v1/scripts/{ticket}", run)
    assert status == 201, doc
    assert doc["state"] == "complete", doc
    return doc


GREETING = {"name": "Greeting", "value": "hello"}
SECRET = {"name": "Password", "value": "pa55-W0rd-xyz", "sensitive": True}
GOOD: list[Entry] = [
    ("file", "PreDeploy.sh", 'echo "pre $(get_octopusvariable Greeting)"; cat config/app.conf\n'),
    (
        "file",
        "Deploy.py",
        (
            "import os, stat\n"
            "print('deploy', open('config/app.conf').read().replace(chr(10), ';'))\n"
            "print('tool', oct(stat.S_IMODE(os.stat('bin/tool').st_mode)))\n"
            "print('link', os.readlink('current'), open('current/app.conf').read().count('='))\n"
            "set_octopusvariable('Deployed', 'yes')\n"
        ),
    ),
    ("file", "Deploy.ps1", "Write-Host 'the .py comes first on Linux'\n"),
    ("file", "postdeploy.SH", "echo post; echo args=$*\n"),
    ("file", "DeployFailed.sh", "echo deploy-failed\n"),
    ("dir", "config/", None),
    (
        "file",
        "config/app.conf",
        ("greeting=#{Greeting}\npassword=#{Password}\nliteral=##{Greeting}\nunknown=#{Unknown}\n"),
    ),
    ("file", "bin/tool", "#!/bin/sh\n"),
    ("symlink", "current", "config"),
    ("file", "json.py", "print('SHADOWED the helpers own import')\n"),  # never imported by them
]


@pytest.mark.parametrize("archive", ["app.zip", "app.tar.gz"])
def test_a_good_package_runs_its_stages_in_order(
    deployer: Worker, tmp_path: Path, archive: str
) -> None:
    make = make_zip if archive.endswith(".zip") else make_tar
    data = make(GOOD, modes={"bin/tool": stat.S_IFREG | 0o4755 if make is make_zip else 0o4755})
    doc = deploy(
        deployer, tmp_path, archive, data, f"good-{archive}", variables=[GREETING, SECRET],
        substitute=["config/*.conf", "nothing/*"], body="echo step $(get_octopusvariable Greeting)",
        arguments=["a1"],
    )  # fmt: skip
    assert doc["exit_code"] == 0, doc
    said = [line for line in lines(doc) if not line.startswith("sandworker: ")]
    assert said == [
        "pre hello",
        "greeting=#{Greeting}",
        "password=#{Password}",
        "literal=##{Greeting}",
        "unknown=#{Unknown}",  # PreDeploy runs before the substitution, as in Calamari
        "deploy greeting=hello;password=********;literal=#{Greeting};unknown=#{Unknown};",
        "tool 0o755",  # never setuid
        "link config 4",
        "step hello",
        "post",
        "args=a1",
    ], doc
    steps = [line for line in lines(doc) if line.startswith("sandworker: running")]
    assert steps == ["sandworker: running PreDeploy.sh", "sandworker: running Deploy.py",
                     "sandworker: running .octopus.Script.sh",
                     "sandworker: running postdeploy.SH"], doc  # fmt: skip
    assert "sandworker: warning: no file matches the substitution pattern 'nothing/*'" in lines(doc)
    assert doc["output_variables"] == {"Deployed": {"value": "yes", "sensitive": False}}
    assert SECRET["value"] not in str(doc)
    run_dir = next((deployer.state / "sandbox" / "projects" / "web" / "work").iterdir())
    conf = run_dir / "config" / "app.conf"
    assert "password=pa55-W0rd-xyz" in conf.read_text()  # the file itself has the value
    assert conf.stat().st_uid == deployer.uid_of("web")
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700  # only the project's account
    started = [e for e in deployer.audit() if e["event"] == "script.start"
               and e["ticket"] == f"good-{archive}"]  # fmt: skip
    assert started[0]["package_sha256"] == hashlib.sha256(data).hexdigest(), started
    deployer.call("DELETE", f"/v1/scripts/good-{archive}")


def test_a_failing_stage_runs_deploy_failed_and_ends_the_step(
    deployer: Worker, tmp_path: Path
) -> None:
    entries: list[Entry] = [
        ("file", "PreDeploy.sh", "echo pre\n"),
        ("file", "Deploy.sh", "echo deploying; fail_step 'the database is gone'\n"),
        ("file", "PostDeploy.sh", "echo post\n"),
        ("file", "DeployFailed.py", "print('cleaning up after', 'failure')\n"),
    ]
    doc = deploy(deployer, tmp_path, "bad.tar.gz", make_tar(entries), "failing", body="echo step")
    assert doc["exit_code"] == 1, doc
    said = [line for line in lines(doc) if not line.startswith("sandworker: ")]
    assert said == ["pre", "deploying", "cleaning up after failure"], doc
    assert doc["result_message"] == "the database is gone", doc
    assert "sandworker: Deploy.sh failed with exit code 1" in lines(doc, "stderr"), doc
    deployer.call("DELETE", "/v1/scripts/failing")


def test_a_queued_step_runs_the_package_it_was_started_with(
    deployer: Worker, tmp_path: Path
) -> None:
    first = make_zip([("file", "Deploy.sh", "echo version one\n")])
    path = tmp_path / "v.zip"
    path.write_bytes(first)
    assert deployer.upload("v.zip", path)[0] == 201
    hold = {"project": "web", "body": "sleep 2", "isolation": "full", "mutex": "m"}
    assert deployer.call("PUT", "/v1/scripts/holder", hold)[0] == 201
    queued = {"project": "web", "package": "v.zip", "isolation": "full", "mutex": "m"}
    status, doc = deployer.call("PUT", "/v1/scripts/queued", queued)
    assert status == 201 and doc["state"] != "complete", doc
    path.write_bytes(make_zip([("file", "Deploy.sh", "echo version two\n")]))
    assert deployer.upload("v.zip", path)[0] == 201  # arrives while the step waits
    said = [line for page in deployer.pages("queued") for line in lines(page)]
    assert "version one" in said and "version two" not in said, said
    started = [e for e in deployer.audit() if e["event"] == "script.start"
               and e["ticket"] == "queued"]  # fmt: skip
    assert started[0]["package_sha256"] == hashlib.sha256(first).hexdigest()
    ticket_dir = deployer.state / "tickets" / "tickets" / "queued"
    assert not (ticket_dir / "package").exists()  # the run had it open: no copy is kept
    for ticket in ("holder", "queued"):
        deployer.call("DELETE", f"/v1/scripts/{ticket}")


def test_a_nupkg_is_extracted_without_its_nuget_metadata(deployer: Worker, tmp_path: Path) -> None:
    entries: list[Entry] = [
        ("file", "[Content_Types].xml", "<Types/>"),
        ("file", "_rels/.rels", "<Relationships/>"),
        ("file", "package/services/metadata/core-properties/1.psmdcp", "<x/>"),
        ("file", "My%20App.nuspec", "<package/>"),
        ("file", "Deploy.sh", "ls -A | sort | grep -v '^[.]octopus[.]'\n"),
    ]
    doc = deploy(deployer, tmp_path, "My.App.1.0.0.nupkg", make_zip(entries), "nupkg")
    assert doc["exit_code"] == 0, doc
    assert [line for line in lines(doc) if not line.startswith("sandworker: ")] == [
        "Deploy.sh", "My App.nuspec"
    ], doc  # fmt: skip
    deployer.call("DELETE", "/v1/scripts/nupkg")


def test_run_scripts_false_skips_the_packaged_scripts(deployer: Worker, tmp_path: Path) -> None:
    entries: list[Entry] = [("file", "Deploy.sh", "echo packaged\n")]
    skip = [{"name": "Octopus.Action.Package.RunScripts", "value": "False"}]
    doc = deploy(deployer, tmp_path, "skip.zip", make_zip(entries), "skip", body="cat Deploy.sh",
                 variables=skip)  # fmt: skip
    assert doc["exit_code"] == 0, doc
    assert lines(doc)[-1] == "echo packaged", doc  # extracted, shown, not run
    assert "sandworker: running Deploy.sh" not in lines(doc), doc
    deployer.call("DELETE", "/v1/scripts/skip")


def test_a_stage_in_a_syntax_the_policy_refuses_fails_with_the_reason(
    deployer: Worker, tmp_path: Path
) -> None:
    entries: list[Entry] = [("file", "Deploy.ps1", "Write-Host hi\n")]
    doc = deploy(deployer, tmp_path, "ps.zip", make_zip(entries), "ps-only")
    assert doc["exit_code"] == 1, doc
    assert "Deploy.ps1 (powershell): not a syntax this project may run" in doc["result_message"]
    deployer.call("DELETE", "/v1/scripts/ps-only")


def test_a_start_naming_a_missing_package_is_refused(deployer: Worker) -> None:
    status, doc = deployer.call(
        "PUT", "/v1/scripts/missing", {"project": "web", "package": "nowhere.zip"}
    )
    assert status == 400 and "not in project web's cache" in doc["detail"], doc
    status, doc = deployer.call(
        "PUT", "/v1/scripts/subst", {"project": "web", "body": "true", "substitute": ["x"]}
    )
    assert status == 400 and "name the package too" in doc["detail"], doc


BOMB = b"\0" * (64 << 20)  # 64 MiB of zeros: about 64 KiB compressed; the limit is 16 MiB
# fmt: off
HOSTILE: dict[str, tuple[Callable[[list[Entry]], bytes], list[Entry], str]] = {
    "absolute": (make_zip, [("file", "/tmp/sw-escape", "x")], "is an absolute path"),
    "dotdot": (make_zip, [("file", "../escape", "x")], "climbs out of the working directory"),
    "dotdot-deep": (make_tar, [("file", "a/b/../../../escape", "x")], "climbs out"),
    "backslash": (make_zip, [("file", "..\\escape", "x")], "uses a backslash"),
    "link-absolute": (make_tar, [("symlink", "etc", "/etc")], "link to the absolute path"),
    "link-up": (make_tar, [("symlink", "up", "../..")], "pointing outside"),
    "link-chain": (make_tar, [("symlink", "here", "."), ("symlink", "out", "here/..")],
                   "'..' after a name"),
    "zip-link-out": (make_zip, [("symlink", "up", "../../home")], "pointing outside"),
    "through-link": (make_tar, [("dir", "real/", None), ("symlink", "alias", "real"),
                                ("file", "alias/x", "x")], "passes through 'alias'"),
    "hardlink-out": (make_tar, [("hardlink", "shadow", "/etc/shadow")], "outside the package"),
    "hardlink-unknown": (make_tar, [("hardlink", "h", "nothere")], "not a file extracted"),
    "char-device": (make_tar, [("chr", "null", None)], "is a device file"),
    "block-device": (make_tar, [("blk", "disk", None)], "is a device file"),
    "fifo": (make_tar, [("fifo", "pipe", None)], "is a FIFO"),
    "zip-device": (make_zip, [("chr", "null", "")], "is a character device"),
    "duplicate": (make_tar, [("file", "x", "1"), ("file", "x", "2")], "appears twice"),
    "link-then-file": (make_tar, [("symlink", "x", "y"), ("file", "x", "2")], "appears twice"),
    "reserved": (make_zip, [("file", ".octopus.variables.json", "{}")], "reserved"),
    "too-many": (make_zip, [("file", f"f{i}", "x") for i in range(60)], "more than 50"),
    "too-many-tar": (make_tar, [("file", f"f{i}", "x") for i in range(60)], "more than 50"),
    "bomb-zip": (make_zip, [("file", "zeros", BOMB)], "unpacks to more than 16777216"),
    "bomb-tar": (make_tar, [("file", "zeros", BOMB)], "unpacks to more than 16777216"),
    "deep-dirs": (make_zip, [("file", f"{i}/" + "d/" * 29 + "f", "x") for i in range(3)],
                  "more than 50 entries"),  # the directories made on the way count too
    "huge-header": (make_tar, [("file", "n" * 70000, "x")], "tar header (at most 65536)"),
    "not-utf8": (partial(make_tar, encoding="latin-1", form=tarfile.GNU_FORMAT),
                 [("file", "caf\u00e9", "x")],
                 "not UTF-8"),
    "damaged-lzma": (damaged_lzma_zip, [("file", "data", "abc" * 100000)], "damaged"),
}
# fmt: on


@pytest.mark.parametrize("shape", sorted(HOSTILE))
def test_a_hostile_package_is_refused_with_the_reason(
    deployer: Worker, tmp_path: Path, shape: str
) -> None:
    make, entries, reason = HOSTILE[shape]
    entries = [*entries, ("file", "Deploy.sh", "echo SHOULD-NOT-RUN\n")]
    name = f"{shape}.zip" if make in (make_zip, damaged_lzma_zip) else f"{shape}.tar.gz"
    doc = deploy(deployer, tmp_path, name, make(entries), f"hostile-{shape}")
    assert doc["exit_code"] == 1, doc
    assert doc["result_message"].startswith(f"the package {name} was refused: "), doc
    assert reason in doc["result_message"], doc
    assert "SHOULD-NOT-RUN" not in str(lines(doc)), doc
    work = deployer.state / "sandbox" / "projects" / "web" / "work"
    assert run_id(f"hostile-{shape}") in {p.name for p in work.iterdir()}
    assert all(re.fullmatch("t[0-9a-f]{24}", p.name) for p in work.iterdir())  # run dirs only
    assert not (deployer.state / "sandbox" / "projects" / "web" / "escape").exists()
    assert not Path("/tmp/sw-escape").exists()
    deployer.call("DELETE", f"/v1/scripts/hostile-{shape}")


def test_a_damaged_archive_is_refused(deployer: Worker, tmp_path: Path) -> None:
    for name in ("junk.zip", "junk.tar.gz"):
        doc = deploy(deployer, tmp_path, name, b"not an archive at all" * 100, f"junk-{name}")
        assert doc["exit_code"] == 1, doc
        assert "refused: it is not a valid" in doc["result_message"], doc
        deployer.call("DELETE", f"/v1/scripts/junk-{name}")


def test_the_cli_uploads_lists_and_runs_a_package(deployer: Worker, tmp_path: Path) -> None:
    entries: list[Entry] = [
        ("file", "Deploy.sh", "cat app.conf; fail_step 'stopped on purpose'\n"),
        ("file", "app.conf", "to=#{Target} key=#{Key}\n"),
    ]
    package = tmp_path / "cli.tar.gz"
    package.write_bytes(make_tar(entries))
    profile = str(deployer.profile())

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([SANDWORKER, *args, "--profile", profile], capture_output=True,
                              text=True, timeout=120, check=False)  # fmt: skip

    uploaded = cli("package", "upload", "--project", "web", str(package))
    assert uploaded.returncode == 0, uploaded
    sha = hashlib.sha256(package.read_bytes()).hexdigest()
    assert uploaded.stdout == f"cli.tar.gz\t{package.stat().st_size} bytes\tsha256 {sha}\n"
    assert (
        f"cli.tar.gz\t{package.stat().st_size} bytes"
        in cli("package", "list", "--project", "web").stdout
    )
    variables = tmp_path / "vars.json"
    variables.write_text(
        json.dumps(
            [
                {"name": "Target", "value": "prod"},
                {"name": "Key", "value": "k-3141", "sensitive": True},
            ]
        )
    )
    ran = cli("script", "run", "--project", "web", "--package", "cli.tar.gz",
              "--variables", str(variables), "--substitute", "*.conf")  # fmt: skip
    assert ran.returncode == 1, ran
    assert "to=prod key=********" in ran.stdout and "k-3141" not in ran.stdout, ran
    refused = cli("package", "fetch", "--project", "web", "--sha256", "a" * 64,
                  "https://example.com/x.zip")  # fmt: skip
    assert refused.returncode == 1 and "lists no packages.sources" in refused.stderr, refused
    nothing = cli("script", "run", "--project", "web")
    assert nothing.returncode == 125 and "give the script" in nothing.stderr, nothing
    removed = cli("package", "remove", "--project", "web", "cli.tar.gz")
    assert removed.returncode == 0 and removed.stdout == "removed cli.tar.gz\n", removed
    assert not (deployer.state / "packages" / "web" / "cli.tar.gz").exists()
    again = cli("package", "remove", "--project", "web", "cli.tar.gz")
    assert again.returncode == 1 and "has no package cli.tar.gz" in again.stderr, again
    gone = cli("script", "run", "--project", "web", "--package", "cli.tar.gz")
    assert gone.returncode == 125 and "not in project web's cache" in gone.stderr, gone
    assert [e["name"] for e in deployer.audit() if e["event"] == "package.removed"] == [
        "cli.tar.gz"
    ]
