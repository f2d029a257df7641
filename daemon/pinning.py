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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLContextFactory
from zope.interface import implementer  # type: ignore[import-untyped]

from .certs import CertPrints, thumbprints
from .pinclient import TLS12_CIPHERS, PinMismatch, client_context
from .trust import Trust, TrustError, TrustStore

log = logging.getLogger(__name__)

SERVER_OPTIONS = (
    SSL.OP_NO_COMPRESSION
    | SSL.OP_CIPHER_SERVER_PREFERENCE
    | SSL.OP_NO_RENEGOTIATION
    | SSL.OP_NO_TICKET
)

RejectHook = Callable[[CertPrints, str, str], None]
"""Called with the thumbprints of a refused client certificate, the reason and the peer."""


def log_rejection(prints: CertPrints, reason: str, peer: str) -> None:
    log.warning(
        "refused client certificate SHA-256 %s (SHA-1 %s) from %s: %s",
        prints.sha256,
        prints.sha1,
        peer,
        reason,
    )


REPORTED = "sandworker_refusal_reported"  # set on a TLS protocol whose refusal was reported


def _peer_of(conn: SSL.Connection) -> str:
    """The remote address of a connection being verified ("?" if Twisted hides it); marks
    the connection as reported, so the HTTP layer does not report its failed handshake again."""
    try:
        protocol = conn.get_app_data()
        setattr(protocol, REPORTED, True)
        address = protocol.transport.getPeer()
        return f"{address.host}:{address.port}"
    except AttributeError:
        return "?"


@dataclass(frozen=True)
class Caller:
    """The client of one request: its trust entry and the certificate it presented."""

    trust: Trust
    prints: CertPrints

    def allows(self, project: str) -> bool:
        return self.trust.allows(project)

    @property
    def thumbprint(self) -> str:
        return self.prints.sha256


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
    on_reject: RejectHook = log_rejection,
) -> PinningContextFactory:
    """The listener's TLS context: TLS >= 1.2, ECDHE+AEAD, no resumption, client pinned."""

    def verify(conn: SSL.Connection, cert: crypto.X509, _errno: int, depth: int, _ok: int) -> bool:
        # Trust is the pin on the leaf alone: the errno (18, self-signed, for every client
        # here) and any issuer above the leaf say nothing about it, so both are ignored.
        if depth > 0:
            return True
        prints = thumbprints(cert.to_cryptography().public_bytes(Encoding.DER))
        try:
            trusted = trust.lookup(prints.sha256, prints.sha1)
        except TrustError as exc:
            on_reject(prints, f"trust store unusable: {exc}", _peer_of(conn))
            return False
        if trusted is None:
            on_reject(prints, "thumbprint not trusted", _peer_of(conn))
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


def ca_context_factory(
    cert_path: Path, key_path: Path, client_ca: Path | None, *, tls13_only: bool = False
) -> PinningContextFactory:
    """A CA-verified TLS context (the metrics listener, as exporter-toolkit's): clients
    must present a certificate `client_ca` signed, or none is asked for without it."""
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_3_VERSION if tls13_only else SSL.TLS1_2_VERSION)
    context.set_cipher_list(TLS12_CIPHERS)
    context.set_options(SERVER_OPTIONS)
    try:
        context.use_certificate_file(str(cert_path))
        context.use_privatekey_file(str(key_path))
        context.check_privatekey()
        if client_ca is not None:
            context.load_verify_locations(str(client_ca))
    except SSL.Error as exc:
        raise TrustError(f"cannot use {cert_path}, {key_path} or {client_ca}: {exc}") from exc
    if client_ca is not None:
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *a: a[4])
    return PinningContextFactory(context)


def peer_identity(transport: object) -> CertPrints | None:
    """The thumbprints of the peer's certificate on a Twisted TLS transport, if it sent one."""
    get_handle = getattr(transport, "getHandle", None)
    connection = get_handle() if get_handle is not None else None
    if not isinstance(connection, SSL.Connection):
        return None
    cert = connection.get_peer_certificate(as_cryptography=True)
    return None if cert is None else thumbprints(cert.public_bytes(Encoding.DER))


def identify(transport: object, trust: TrustStore) -> Caller | None:
    """Re-check the peer against the current trust store (per request, after any change)."""
    prints = peer_identity(transport)
    if prints is None:
        return None
    try:
        found = trust.lookup(prints.sha256, prints.sha1)
    except TrustError:
        return None
    return None if found is None else Caller(found, prints)


__all__ = ["PinMismatch", "client_context"]  # the client half lives in pinclient.py
