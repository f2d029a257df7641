"""The daemon configuration: defaults, validation with file:line field: message."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandworker.daemon.cli import main
from sandworker.daemon.config import ConfigError, config_reference, config_schema, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sandworker.toml"
    path.write_text(text)
    return path


def test_empty_file_gives_safe_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config["server.listen"] == "127.0.0.1:10933"
    assert config["server.max_body"] == 1 << 20
    assert config["server.header_timeout"] == 15
    assert config["state.retention"] == 86400
    settings = config.sandbox_settings()
    assert settings.state_dir == Path("/var/lib/sandworker/sandbox")
    assert settings.uid_range == (420000, 485535)
    assert str(tmp_path) in settings.hidden  # the configuration's own directory


def test_values_are_parsed(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
[server]
listen = "[::1]:9000"
max_body = "64KiB"
[sandbox]
max_concurrent = 2
interpreters = { python = "/opt/py/bin/python3" }
""",
        )
    )
    assert config["server.listen"] == "[::1]:9000"
    assert config["server.max_body"] == 65536
    assert config["sandbox.max_concurrent"] == 2
    assert config.sandbox_settings().interpreters == {"python": "/opt/py/bin/python3"}


def test_every_problem_is_reported_with_file_line_and_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """[server]
listen = "somewhere"
max_connections = 0
colour = "blue"

[sandbox]
uid_min = 1000
interpreters = { python = "python3", ruby = "/usr/bin/ruby" }
""",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    lines = str(caught.value).splitlines()
    assert f'{path}:2 server.listen: expected "ADDRESS:PORT" with a literal IP,' in lines[0]
    text = str(caught.value)
    assert f"{path}:3 server.max_connections:" in text
    assert f"{path}:4 server.colour: unknown field" in text
    assert f"{path}:7 sandbox.uid_min:" in text
    assert f"{path}:8 sandbox.interpreters:" in text


def test_syntax_errors_and_missing_files_are_problems_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sandworker.toml:2 toml: "):
        load_config(write(tmp_path, "[server]\nlisten = \n"))
    with pytest.raises(ConfigError, match="cannot read: No such file or directory"):
        load_config(tmp_path / "missing.toml")


def test_uid_range_order_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sandbox\.uid_min: must not exceed uid_max"):
        load_config(write(tmp_path, "[sandbox]\nuid_min = 400000\nuid_max = 300000\n"))


def test_schema_and_reference_come_from_the_same_fields() -> None:
    schema = config_schema()
    tables = {"server", "tls", "state", "sandbox", "external", "metrics"}
    assert set(schema["properties"]) == tables
    assert "max_concurrent" in config_reference()
    assert "tls_server_config" in schema["properties"]["metrics"]["properties"]


def test_metrics_tls_needs_its_key_and_a_client_ca(tmp_path: Path) -> None:
    bad = write(tmp_path, '[metrics.tls_server_config]\ncert_file = "/etc/m.crt"\n')
    with pytest.raises(ConfigError) as error:
        load_config(bad)
    text = str(error.value)
    assert f"{bad}:2 metrics.tls_server_config.key_file: is needed with cert_file" in text
    assert "metrics.tls_server_config.client_ca_file: is needed with cert_file" in text
    ok = write(
        tmp_path,
        '[metrics.tls_server_config]\ncert_file = "/m.crt"\nkey_file = "/m.key"\n'
        'client_auth_type = "NoClientCert"\n',
    )
    assert load_config(ok)["metrics.tls_server_config.client_auth_type"] == "NoClientCert"
    off = write(tmp_path, '[metrics]\nlisten = ""\n')
    assert load_config(off)["metrics.listen"] == ""


def test_config_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, '[server]\nlisten = "127.0.0.1:9000"\n')
    assert main(["config", "check", str(good)]) == 0
    assert capsys.readouterr().out == f"ok: {good}\n"
    bad = write(tmp_path, "[server]\nmax_connections = 0\n[nope]\n")
    assert main(["config", "check", str(bad)]) == 1
    errors = capsys.readouterr().err
    assert f"{bad}:2 server.max_connections:" in errors and "nope" in errors
