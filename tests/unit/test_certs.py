"""Thumbprint parsing, certificate generation and the certificate CLI."""

from __future__ import annotations

import argparse
import hashlib
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sandworker.daemon import cli_certs
from sandworker.daemon.certs import (
    Algorithm,
    CertificateError,
    InvalidThumbprint,
    load_certificate,
    parse_thumbprint,
    thumbprints,
    write_pair,
)

SHA256 = "ab" * 32
SHA1 = "cd" * 20


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli_certs.register(parser.add_subparsers(required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_thumbprints_are_upper_hex_of_der():
    prints = thumbprints(b"der")
    assert prints.sha256 == hashlib.sha256(b"der").hexdigest().upper()
    assert prints.sha1 == hashlib.sha1(b"der").hexdigest().upper()  # noqa: S324


@pytest.mark.parametrize(
    ("text", "algorithm"),
    [
        (SHA256, Algorithm.SHA256),
        (":".join(SHA256[i : i + 2] for i in range(0, 64, 2)), Algorithm.SHA256),
        (SHA1.upper(), Algorithm.SHA1),
        (" " + ":".join(SHA1[i : i + 2] for i in range(0, 40, 2)).upper(), Algorithm.SHA1),
    ],
)
def test_parse_thumbprint_forms(text, algorithm):
    parsed = parse_thumbprint(text)
    assert parsed.algorithm is algorithm
    assert parsed.hex == (SHA256 if algorithm is Algorithm.SHA256 else SHA1).upper()


@pytest.mark.parametrize(("text", "says"), [("ab" * 31, "62 hex digits"), ("zz" * 32, "not hex")])
def test_parse_thumbprint_refuses(text, says):
    with pytest.raises(InvalidThumbprint, match=says):
        parse_thumbprint(text)


def test_write_pair_modes_and_key_types(tmp_path):
    cert, key = tmp_path / "h" / "worker.crt", tmp_path / "h" / "worker.key"
    prints = write_pair(cert, key, "unit")
    assert prints is not None
    assert stat.S_IMODE(cert.stat().st_mode) == 0o644
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    der = load_certificate(cert).public_bytes(serialization.Encoding.DER)
    assert thumbprints(der) == prints
    loaded = serialization.load_pem_private_key(key.read_bytes(), None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    write_pair(cert, key, "unit", use_rsa=True)
    loaded = serialization.load_pem_private_key(key.read_bytes(), None)
    assert isinstance(loaded, rsa.RSAPrivateKey)
    assert loaded.key_size == 3072


def test_if_blank(tmp_path):
    cert, key = tmp_path / "worker.crt", tmp_path / "worker.key"
    assert write_pair(cert, key, "a", if_blank=True) is not None
    before = cert.read_bytes()
    assert write_pair(cert, key, "a", if_blank=True) is None
    assert cert.read_bytes() == before
    key.unlink()
    with pytest.raises(CertificateError, match=r"worker\.key does not"):
        write_pair(cert, key, "a", if_blank=True)


def test_cli_new_certificate_and_show_thumbprint(tmp_path, capsys):
    assert run("new-certificate", "--home", str(tmp_path)) == 0
    prints = thumbprints(
        load_certificate(tmp_path / "worker.crt").public_bytes(serialization.Encoding.DER)
    )
    capsys.readouterr()
    assert run("new-certificate", "--home", str(tmp_path), "--if-blank") == 0
    assert "nothing to do" in capsys.readouterr().out
    assert run("show-thumbprint", "--home", str(tmp_path)) == 0
    assert capsys.readouterr().out.strip() == prints.sha256
    assert run("show-thumbprint", "--sha1", "--home", str(tmp_path)) == 0
    assert capsys.readouterr().out.strip() == prints.sha1


def test_cli_show_thumbprint_missing(tmp_path, capsys):
    assert run("show-thumbprint", "--home", str(tmp_path)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read certificate" in err
