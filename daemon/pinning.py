"""Mutual TLS pinned by certificate thumbprint, both roles (notes/http-mtls.md).

Server: a pyOpenSSL context for `reactor.listenSSL` whose verify callback pins the
client's leaf certificate against the live trust store, so an untrusted or
missing certificate gets no further than the handshake. Session resumption is
off, because a resumed session skips the callback and would let a de-trusted
client back in.

Client: a stdlib `ssl` context that checks the worker's leaf thumbprint as the
handshake completes, before any request byte is sent.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLContextFactory
from zope.interface import implementer  # type: ignore[import-untyped]

from .certs import Algorithm, CertPrints, Thumbprint, parse_thumbprint, thumbprints
from .trust import Trust, TrustError, TrustStore

log = logging.getLogger(__name__)

# TLS 1.2 suites: ephemeral ECDH with AEAD only (TLS 1.3 suites are all AEAD and forward-secret).
TLS12_CIPHERS = b"ECDHE+AESGCM:ECDHE+CHACHA20"
SERVER_OPTIONS = (
    SSL.OP_NO_COMPRESSION
    | SSL.OP_CIPHER_SERVER_PREFERENCE
    | SSL.OP_NO_RENEGOTIATION
    | SSL.OP_NO_TICKET
)

RejectHook = Callable[[CertPrints, str], None]
"""Called with the thumbprints of a refused client certificate and the reason."""


class PinMismatch(ssl.SSLError):
    """The worker presented a certificate other than the pinned one."""

    def __init__(self, expected: Thumbprint, actual: CertPrints) -> None:
        shown = actual.sha256 if expected.algorithm is Algorithm.SHA256 else actual.sha1
        super().__init__(
            f"worker certificate thumbprint mismatch: expected {expected.algorithm.label}"
            f" {expected.hex}, got {shown} (SHA-256 {actual.sha256}); refusing to send the request"
        )
        self.expected, self.actual = expected, actual


def _log_rejection(prints: CertPrints, reason: str) -> None:
    log.warning(
        "refused client certificate SHA-256 %s (SHA-1 %s): %s", prints.sha256, prints.sha1, reason
    )


@implementer(IOpenSSLContextFactory)
class PinningContextFactory:
    """One server context shared by every connection; the trust store is read per handshake."""

    def __init__(self, context: SSL.Context) -> None:
        self._context = context

    def getContext(self) -> SSL.Context:
        return self._context


def server_context_factory(
    cert_path: Path,
    key_path: Path,
    trust: TrustStore,
    on_reject: RejectHook = _log_rejection,
) -> PinningContextFactory:
    """The listener's TLS context: TLS >= 1.2, ECDHE+AEAD, no resumption, client pinned."""

    def verify(_conn: SSL.Connection, cert: crypto.X509, _errno: int, depth: int, _ok: int) -> bool:
        # Trust is the pin on the leaf alone: the errno (18, self-signed, for every client
        # here) and any issuer above the leaf say nothing about it, so both are ignored.
        if depth > 0:
            return True
        prints = thumbprints(cert.to_cryptography().public_bytes(Encoding.DER))
        try:
            trusted = trust.lookup(prints.sha256, prints.sha1)
        except TrustError as exc:
            on_reject(prints, f"trust store unusable: {exc}")
            return False
        if trusted is None:
            on_reject(prints, "thumbprint not trusted")
            return False
        return True

    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_cipher_list(TLS12_CIPHERS)
    context.set_options(SERVER_OPTIONS)
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    context.set_session_id(b"sandworker")
    try:
        context.use_certificate_file(str(cert_path))
        context.use_privatekey_file(str(key_path))
        context.check_privatekey()
    except SSL.Error as exc:
        raise TrustError(f"cannot use certificate {cert_path} with key {key_path}: {exc}") from exc
    context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)
    return PinningContextFactory(context)


def peer_identity(transport: object) -> CertPrints | None:
    """The thumbprints of the peer's certificate on a Twisted TLS transport, if it sent one."""
    get_handle = getattr(transport, "getHandle", None)
    connection = get_handle() if get_handle is not None else None
    if not isinstance(connection, SSL.Connection):
        return None
    cert = connection.get_peer_certificate(as_cryptography=True)
    return None if cert is None else thumbprints(cert.public_bytes(Encoding.DER))


def identify(transport: object, trust: TrustStore) -> Trust | None:
    """Re-check the peer against the current trust store (per request, after any change)."""
    prints = peer_identity(transport)
    if prints is None:
        return None
    try:
        return trust.lookup(prints.sha256, prints.sha1)
    except TrustError:
        return None


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
