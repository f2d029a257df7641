"""The trust store and the `trust` commands."""

from __future__ import annotations

import argparse
import os
import stat

import pytest

from sandworker.daemon import cli_certs
from sandworker.daemon.certs import CertPrints, parse_thumbprint
from sandworker.daemon.trust import TrustError, TrustStore

A = CertPrints("A1" * 32, "A2" * 20)
B = CertPrints("B1" * 32, "B2" * 20)


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli_certs.register(parser.add_subparsers(required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture
def store(tmp_path):
    return TrustStore(tmp_path / "trust.toml")


def test_empty_store_trusts_nobody(store):
    assert store.entries() == ()
    assert store.lookup(A.sha256, A.sha1) is None


def test_add_is_idempotent_and_file_is_private(store):
    entry, changed = store.add(parse_thumbprint(A.sha256.lower()))
    assert changed
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert store.add(parse_thumbprint(":".join(A.sha256[i : i + 2] for i in range(0, 64, 2)))) == (
        entry,
        False,
    )
    assert len(store.entries()) == 1


def test_lookup_by_either_form(store):
    store.add(parse_thumbprint(A.sha1))
    trust = store.lookup(A.sha256, A.sha1)
    assert trust is not None and trust.allows("anything")
    assert store.lookup(B.sha256, B.sha1) is None


def test_known_certificate_merges_both_forms(store):
    store.add(parse_thumbprint(A.sha1), ["web-*"])
    store.add(parse_thumbprint(A.sha256), ["db"])
    assert len(store.entries()) == 2
    entry, _ = store.add(A, ["api-?"])
    assert store.entries() == (entry,)
    assert (entry.sha256, entry.sha1) == (A.sha256, A.sha1)
    store.remove(parse_thumbprint(A.sha1))
    assert store.entries() == ()


def test_projects_limit(store):
    store.add(parse_thumbprint(A.sha256), ["web-*", "db"])
    trust = store.lookup(A.sha256, A.sha1)
    assert trust is not None
    assert trust.allows("web-1") and trust.allows("db")
    assert not trust.allows("dbx") and not trust.allows("other")


def test_bad_glob_refused(store):
    with pytest.raises(TrustError, match="not allowed"):
        store.add(parse_thumbprint(A.sha256), ["../x"])


def test_remove_absent_names_what_is_trusted(store):
    store.add(parse_thumbprint(A.sha256), ["web-*"])
    with pytest.raises(TrustError, match=f"{B.sha256} is not trusted; trusted: SHA-256 {A.sha256}"):
        store.remove(parse_thumbprint(B.sha256))


def test_reload_on_change_by_another_writer(store):
    reader = TrustStore(store.path)
    store.add(parse_thumbprint(A.sha256))
    assert reader.lookup(A.sha256, A.sha1) is not None
    store.remove(parse_thumbprint(A.sha256))
    assert reader.lookup(A.sha256, A.sha1) is None
    store.add(parse_thumbprint(B.sha1))
    assert reader.lookup(B.sha256, B.sha1) is not None


def test_unusable_file_fails_closed(store):
    store.path.write_text("[[client]]\nsha256 = 'nope'\n")
    os.chmod(store.path, 0o600)
    with pytest.raises(TrustError, match="not hexadecimal"):
        store.lookup(A.sha256, A.sha1)
    store.path.write_text("")
    os.chmod(store.path, 0o620)  # group-writable: refused
    with pytest.raises(TrustError, match="writable by group or others"):
        store.entries()


def test_cli_trust_add_list_remove(tmp_path, capsys):
    home = str(tmp_path)
    assert run("trust", "add", A.sha256, "--projects", "web-*", "db", "--home", home) == 0
    assert "trusted:" in capsys.readouterr().out
    assert run("trust", "add", A.sha256.lower(), "--projects", "web-*", "db", "--home", home) == 0
    assert "already trusted" in capsys.readouterr().out
    assert run("trust", "list", "--home", home) == 0
    assert capsys.readouterr().out == f"SHA-256 {A.sha256} (web-*, db)\n"
    assert run("trust", "remove", B.sha1, "--home", home) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and A.sha256 in err
    assert run("trust", "remove", A.sha256, "--home", home) == 0
    assert run("trust", "add", "12345", "--home", home) == 1
    assert "hex digits" in capsys.readouterr().err


def test_cli_trust_add_certificate_file(tmp_path, capsys):
    assert run("new-certificate", "--home", str(tmp_path / "client")) == 0
    cert = str(tmp_path / "client" / "worker.crt")
    assert run("trust", "add", cert, "--home", str(tmp_path)) == 0
    (entry,) = TrustStore(tmp_path / "trust.toml").entries()
    assert entry.sha256 and entry.sha1
