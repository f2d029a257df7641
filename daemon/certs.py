"""Self-signed certificates and their thumbprints (DESIGN decision 3).

Both ends of a connection hold a self-signed certificate; trust is the SHA-256
thumbprint of the DER certificate, with the SHA-1 form accepted and shown too
for Octopus habits. Thumbprints are written as upper-case hex without colons.
"""

from __future__ import annotations

import datetime
import enum
import hashlib
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sandworker.sandbox.atomic import write_atomic

VALIDITY = datetime.timedelta(days=20 * 365)  # pinning, not expiry, is what protects us
RSA_BITS = 3072
_BACKDATE = datetime.timedelta(days=1)  # tolerate a peer whose clock runs a little behind
_HEX = re.compile(r"[0-9A-F]+")


class CertificateError(Exception):
    """A certificate or key that cannot be created or read; the message says why."""


class InvalidThumbprint(ValueError):
    """Text that is neither a SHA-256 (64 hex) nor a SHA-1 (40 hex) thumbprint."""


class Algorithm(enum.Enum):
    SHA256 = ("SHA-256", 64)
    SHA1 = ("SHA-1", 40)

    def __init__(self, label: str, length: int) -> None:
        self.label = label
        self.length = length


@dataclass(frozen=True)
class Thumbprint:
    """One typed thumbprint: which hash it is and its normalised upper-case hex."""

    algorithm: Algorithm
    hex: str

    def __str__(self) -> str:
        return self.hex


@dataclass(frozen=True)
class CertPrints:
    """Both thumbprints of one known certificate."""

    sha256: str
    sha1: str

    def matches(self, thumbprint: Thumbprint) -> bool:
        own = self.sha256 if thumbprint.algorithm is Algorithm.SHA256 else self.sha1
        return own == thumbprint.hex


def thumbprints(der: bytes) -> CertPrints:
    """The SHA-256 and SHA-1 thumbprints of a DER certificate (upper-case hex)."""
    return CertPrints(
        hashlib.sha256(der).hexdigest().upper(),
        hashlib.sha1(der, usedforsecurity=False).hexdigest().upper(),
    )


def parse_thumbprint(text: str) -> Thumbprint:
    """Normalise a typed thumbprint: colons, spaces and case do not matter."""
    cleaned = re.sub(r"[\s:]", "", text).upper()
    if not _HEX.fullmatch(cleaned):
        raise InvalidThumbprint(
            f"thumbprint {text!r} is not hexadecimal: expected 64 hex digits (SHA-256)"
            " or 40 (SHA-1), with or without colons"
        )
    for algorithm in Algorithm:
        if len(cleaned) == algorithm.length:
            return Thumbprint(algorithm, cleaned)
    raise InvalidThumbprint(
        f"thumbprint {text!r} has {len(cleaned)} hex digits: expected 64 (SHA-256) or 40 (SHA-1)"
    )


def load_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise CertificateError(f"cannot read certificate {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise CertificateError(f"{path} is not a PEM certificate: {exc}") from exc


def certificate_prints(path: Path) -> CertPrints:
    """Both thumbprints of the PEM certificate at `path`."""
    return thumbprints(load_certificate(path).public_bytes(serialization.Encoding.DER))


def generate(
    common_name: str, *, use_rsa: bool = False
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey]:
    """A new self-signed certificate for both TLS roles, ECDSA P-256 or RSA-3072."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if use_rsa:
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    usage = x509.KeyUsage(
        digital_signature=True,
        key_encipherment=use_rsa,
        content_commitment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    purposes = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate, key


def write_pair(
    cert_path: Path,
    key_path: Path,
    common_name: str,
    *,
    use_rsa: bool = False,
    if_blank: bool = False,
) -> CertPrints | None:
    """Create and store a certificate and key (key 0600, certificate 0644), atomically each.

    With `if_blank`, nothing is done (None) when both files exist, and it is an
    error when only one does. Otherwise an existing pair is replaced.
    """
    present = [p for p in (cert_path, key_path) if p.exists()]
    if if_blank and len(present) == 2:
        return None
    if if_blank and present:
        missing = key_path if present[0] == cert_path else cert_path
        raise CertificateError(
            f"{present[0]} exists but {missing} does not: restore it, or remove {present[0]}"
            " and run new-certificate again"
        )
    certificate, key = generate(common_name, use_rsa=use_rsa)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        cert_path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        write_atomic(key_path, key_pem, mode=0o600)
        write_atomic(cert_path, certificate.public_bytes(serialization.Encoding.PEM), mode=0o644)
    except OSError as exc:
        raise CertificateError(f"cannot write {exc.filename}: {exc.strerror}") from exc
    return thumbprints(certificate.public_bytes(serialization.Encoding.DER))
