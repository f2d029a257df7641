"""The client half of pinning: a stdlib `ssl` context that accepts only the pinned worker.

Kept apart from pinning.py (pyOpenSSL and Twisted, the server half) so that the
client library and the CLI need neither.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import ClassVar

from .certs import Algorithm, CertPrints, Thumbprint, parse_thumbprint, thumbprints

# TLS 1.2 suites: ephemeral ECDH with AEAD only (TLS 1.3 suites are all AEAD and forward-secret).
TLS12_CIPHERS = b"ECDHE+AESGCM:ECDHE+CHACHA20"


class PinMismatch(ssl.SSLError):
    """The worker presented a certificate other than the pinned one."""

    def __init__(self, expected: Thumbprint, actual: CertPrints) -> None:
        shown = actual.sha256 if expected.algorithm is Algorithm.SHA256 else actual.sha1
        super().__init__(
            f"worker certificate thumbprint mismatch: expected {expected.algorithm.label}"
            f" {expected.hex}, got {shown} (SHA-256 {actual.sha256}); refusing to send the request"
        )
        self.expected, self.actual = expected, actual


class _PinnedSocket(ssl.SSLSocket):
    pin: ClassVar[Thumbprint]

    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        der = self.getpeercert(binary_form=True)
        actual = thumbprints(der or b"")
        if der is None or not actual.matches(self.pin):
            raise PinMismatch(self.pin, actual)


def client_context(cert: Path, key: Path, pinned_worker_thumbprint: str) -> ssl.SSLContext:
    """A stdlib client context presenting `cert`/`key` and accepting only the pinned worker.

    Every socket it wraps checks the worker's leaf thumbprint (SHA-256 or SHA-1 form) when
    the handshake completes and raises PinMismatch, naming both thumbprints, before any
    request byte is sent. Works with http.client, urllib and anything taking an SSLContext.
    """
    expected = parse_thumbprint(pinned_worker_thumbprint)

    class PinnedSocket(_PinnedSocket):
        pin = expected

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # self-signed: the pin replaces name and chain checks
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS.decode())
    context.load_cert_chain(cert, key)
    context.sslsocket_class = PinnedSocket
    return context
