"""TLS for xdsd's own listeners: server contexts built from the certificate files the
settings name.

Each context presents ``tls_cert``/``tls_key`` (TLS 1.2 or later) and, with
``tls_client_ca``, requires a client certificate issued by that CA: a client without
one fails the handshake and never reaches a handler. The gRPC context offers ALPN
``h2`` (Envoy's gRPC clients ask for it); the HTTP ones ``http/1.1``.
"""

from __future__ import annotations

import ssl

from xdsd.errors import UsageError
from xdsd.settings import Settings


def server_context(settings: Settings, *, alpn: str) -> ssl.SSLContext | None:
    """The server TLS context of ``settings`` offering ALPN ``alpn`` (``h2`` or
    ``http/1.1``); None when TLS is off. Raises UsageError naming a file that cannot be
    read or used."""
    if not settings.tls:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as e:
        raise UsageError(
            f"tls_cert {settings.tls_cert} / tls_key {settings.tls_key}: cannot use them: {e}"
        ) from None
    if settings.tls_client_ca:
        try:
            context.load_verify_locations(cafile=settings.tls_client_ca)
        except (OSError, ssl.SSLError) as e:
            raise UsageError(
                f"tls_client_ca {settings.tls_client_ca}: cannot use it: {e}"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols([alpn])
    return context
