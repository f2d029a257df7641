"""The package runner's pure parts (sandbox/deploy.py): names, link targets, substitution,
the stage scripts' order and syntax choice. Whole archives are tested over the API, inside
the real sandbox (tests/e2e/test_deploy.py)."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandworker.sandbox import deploy
from sandworker.sandbox.deploy import Extractor, Refused


@pytest.fixture
def out(tmp_path: Path) -> Iterator[Extractor]:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield Extractor(fd, 1 << 20, 100)
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("link", "target"),
    [("l", "x"), ("a/l", "../x"), ("a/b/l", "../../x/y"), ("a/l", "./x"), ("a/b/l", "../b/c")],
)
def test_links_that_resolve_inside_are_made(
    out: Extractor, tmp_path: Path, link: str, target: str
) -> None:
    out.symlink(link, target)
    assert os.readlink(tmp_path / link) == target


@pytest.mark.parametrize(
    ("link", "target", "why"),
    [
        ("l", "..", "pointing outside"),
        ("a/l", "../../x", "pointing outside"),
        ("l", "/etc/passwd", "absolute path"),
        ("l", "x/../y", "'..' after a name"),
        ("a/l", "../a/../..", "'..' after a name"),
        ("l", "", "unusable target"),
    ],
)
def test_links_that_could_leave_are_refused(
    out: Extractor, link: str, target: str, why: str
) -> None:
    with pytest.raises(Refused, match=why):
        out.symlink(link, target)


def test_a_file_is_never_written_through_a_link_or_twice(out: Extractor, tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", tmp_path / "sneaky")  # as if planted
    with pytest.raises(Refused, match="passes through 'sneaky'"):
        out.file("sneaky/x", 0o644, io.BytesIO(b"x"))
    out.file("f", 0o4755, io.BytesIO(b"x"))
    assert (tmp_path / "f").stat().st_mode & 0o7777 == 0o755
    with pytest.raises(Refused, match="appears twice"):
        out.file("f", 0o644, io.BytesIO(b"y"))
    assert list((tmp_path / "outside").iterdir()) == []


def test_the_size_limit_counts_bytes_written(out: Extractor) -> None:
    out.file("a", 0o644, io.BytesIO(b"x" * (1 << 19)))
    with pytest.raises(Refused, match="unpacks to more than 1048576 bytes"):
        out.file("b", 0o644, io.BytesIO(b"x" * ((1 << 19) + 1)))


@pytest.mark.parametrize(
    ("text", "wanted"),
    [
        ("a=#{Name}", "a=value"),
        ("#{ Name }", "value"),
        ("##{Name}", "#{Name}"),
        ("#{Unknown}", "#{Unknown}"),
        ("#{Name}#{Name}", "valuevalue"),
        ("#{Na{me}", "#{Na{me}"),
        ("#{}", "#{}"),
        ("#{Dotted.Name-1}", "d"),
    ],
)
def test_substitution_is_octostaches_simplest_form(text: str, wanted: str) -> None:
    assert deploy.substitute(text, {"Name": "value", "Dotted.Name-1": "d"}) == wanted


def test_stage_scripts_are_matched_case_insensitively_sh_before_py_before_ps1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("deploy.PY", "Deploy.ps1", "PREDEPLOY.sh", "PreDeploy.py", "PostDeploy.ps1"):
        (tmp_path / name).write_text("")
    os.symlink("deploy.PY", tmp_path / "DeployFailed.sh")  # a link is not a stage script
    syntaxes = {"bash": ["/bin/bash", "b"], "python": ["/usr/bin/python3", "p"]}
    assert deploy.stage_script("PreDeploy", syntaxes) == ("PREDEPLOY.sh", ["/bin/bash", "b"])
    assert deploy.stage_script("Deploy", syntaxes) == ("deploy.PY", ["/usr/bin/python3", "p"])
    assert deploy.stage_script("DeployFailed", syntaxes) is None
    with pytest.raises(Refused, match=r"PostDeploy.ps1 \(powershell\): not a syntax"):
        deploy.stage_script("PostDeploy", syntaxes)
    sh_only = {"sh": ["/bin/sh", "b"]}
    assert deploy.stage_script("PreDeploy", sh_only) == ("PREDEPLOY.sh", ["/bin/sh", "b"])


def test_the_steps_run_in_calamaris_order() -> None:
    config = {"script": ".octopus.Script.sh"}
    assert deploy.steps(config, run_packaged=True) == [
        "PreDeploy", "substitute", "Deploy", "script", "PostDeploy"
    ]  # fmt: skip
    assert deploy.steps(config, run_packaged=False) == ["substitute", "script"]
    assert deploy.steps({"script": ""}, run_packaged=True) == [
        "PreDeploy", "substitute", "Deploy", "PostDeploy"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("*.config", "web.config", True),
        ("*.config", "sub/web.config", False),
        ("**/*.config", "web.config", True),
        ("**/*.config", "a/b/web.config", True),
        ("config/**", "config/a/b", True),
        ("config/*.conf", "config/app.conf", True),
        ("config/*.conf", "config/x/app.conf", False),
        ("a?.txt", "ab.txt", True),
        ("a?.txt", "a/.txt", False),
        ("web.[ch]onfig", "web.[ch]onfig", True),  # no character classes: literal
    ],
)
def test_substitution_globs(pattern: str, path: str, matches: bool) -> None:
    assert bool(deploy.glob(pattern).fullmatch(path)) is matches


def test_substitution_skips_links_and_follows_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "app.config").write_text("v=#{V}")
    os.symlink("app.config", tmp_path / "link.config")
    deploy.substitute_files(["*.config"], {"V": "1"})
    assert (tmp_path / "app.config").read_text() == "v=1"
    assert os.readlink(tmp_path / "link.config") == "app.config"
