"""TLS for xdsd's own listeners: server contexts built from the certificate files the
settings name, and replaced when those files are.

Each context presents ``tls_cert``/``tls_key`` (TLS 1.2 or later) and, with
``tls_client_ca``, requires a client certificate issued by that CA: a client without
one fails the handshake and never reaches a handler. The gRPC context offers ALPN
``h2`` (Envoy's gRPC clients ask for it); the HTTP ones ``http/1.1``.

How reloading works: a listener keeps the ``SSLContext`` it was started with, so that
context carries an ``sni_callback`` (OpenSSL calls it for every ClientHello, with or
without SNI) that moves the new connection onto the *current* context of its ALPN
before the certificate is chosen or the client's verified. ``ServerCertificates.reload``
builds fresh contexts from the files and makes them current only when every one of them
builds; otherwise it logs the error and the previous certificate keeps serving. Since a
fresh context replaces the old one whole, a replaced ``tls_client_ca`` is the only CA
trusted for new connections (no old CA lingers). Connections already open keep the
certificate they were made with. grpcio's server is not an ``SSLContext`` user: it asks
for the current PEM bytes (``current()``) before every new connection.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass

from xdsd.errors import UsageError
from xdsd.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServerPem:
    """One consistent reading of xdsd's certificate files: the PEM ``chain`` (leaf
    first), its ``key`` and the ``client_ca`` (b"" without client certificates), and
    ``generation``, which grows by one with every successful reload."""

    generation: int
    chain: bytes
    key: bytes
    client_ca: bytes


class ServerCertificates:
    """xdsd's own certificate as the listeners use it, reloadable from its files.

    Built from ``settings`` (which must have TLS on); raises UsageError naming a file
    that cannot be read or used, at start. ``context(alpn)`` is what a Python listener
    binds with; ``current()`` what grpcio serves; ``reload()`` replaces both for new
    connections when the files changed (see the module docstring).
    """

    def __init__(self, settings: Settings) -> None:
        if not settings.tls:
            raise ValueError("TLS is off in these settings")
        self.cert_path = settings.tls_cert
        self.key_path = settings.tls_key
        self.client_ca_path = settings.tls_client_ca
        self._listening: dict[str, ssl.SSLContext] = {}
        self._current: dict[str, ssl.SSLContext] = {}
        self._signature = self._stat()
        self._pem, self._current = self._read(generation=1, alpns=("h2", "http/1.1"))

    @property
    def paths(self) -> frozenset[str]:
        """The files this certificate comes from (absolute paths)."""
        named = (self.cert_path, self.key_path, self.client_ca_path)
        return frozenset(os.path.abspath(p) for p in named if p)

    def current(self) -> ServerPem:
        """The certificate new connections get, as PEM bytes (safe to call from any
        thread: it is replaced, never changed)."""
        return self._pem

    def context(self, alpn: str) -> ssl.SSLContext:
        """The context a listener offering ALPN ``alpn`` (``h2`` or ``http/1.1``) binds
        with; its new connections always use the current certificate."""
        found = self._listening.get(alpn)
        if found is None:
            found = self._current[alpn]

            def use_current(
                connection: ssl.SSLObject | ssl.SSLSocket, _name: str | None, used: ssl.SSLContext
            ) -> None:
                current = self._current[alpn]
                if current is not used:
                    connection.context = current

            found.sni_callback = use_current
            self._listening[alpn] = found
        return found

    def reload(self, *, force: bool = False) -> bool:
        """Read the files again when they changed since the last attempt (by inode, size
        and modification time; ``force``: in any case) and serve what they hold to new
        connections. Returns True when a new certificate is current. A replacement that
        cannot be used (unreadable, a key that does not match, a file changing while it
        is read) is logged as an error and the current certificate keeps serving; it is
        tried again when the files change again (or on ``force``)."""
        signature = self._stat()
        if signature == self._signature and not force:
            return False
        self._signature = signature
        try:
            pem, contexts = self._read(self._pem.generation + 1, tuple(self._current))
        except UsageError as e:
            log.error("TLS: %s; still serving the previous certificate", e)
            return False
        old = self._pem
        if (pem.chain, pem.key, pem.client_ca) == (old.chain, old.key, old.client_ca):
            return False
        self._pem, self._current = pem, contexts
        log.info(
            "TLS: new connections get the certificate in %s%s",
            self.cert_path,
            f" and trust client certificates of {self.client_ca_path}"
            if self.client_ca_path
            else "",
        )
        return True

    def _stat(self) -> tuple[tuple[int, int, int, int] | None, ...]:
        """What identifies the files' current content cheaply (None: cannot stat)."""
        out: list[tuple[int, int, int, int] | None] = []
        for path in (self.cert_path, self.key_path, self.client_ca_path):
            try:
                st = os.stat(path) if path else None
            except OSError:
                st = None
            out.append(None if st is None else (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(out)

    def _read(
        self, generation: int, alpns: tuple[str, ...]
    ) -> tuple[ServerPem, dict[str, ssl.SSLContext]]:
        """The files' content and a context per ALPN in ``alpns`` built from it; raises
        UsageError naming the file that cannot be used."""
        before = self._bytes()
        contexts = {alpn: self._build(alpn) for alpn in alpns}
        if self._bytes() != before:
            raise UsageError(f"{self.cert_path}: the certificate files changed while being read")
        chain, key, client_ca = before
        return ServerPem(generation, chain, key, client_ca), contexts

    def _bytes(self) -> tuple[bytes, bytes, bytes]:
        out = []
        for setting, path in (
            ("tls_cert", self.cert_path),
            ("tls_key", self.key_path),
            ("tls_client_ca", self.client_ca_path),
        ):
            try:
                out.append(_read_file(path) if path else b"")
            except OSError as e:
                raise UsageError(f"{setting} {path}: cannot read it: {e}") from None
        return out[0], out[1], out[2]

    def _build(self, alpn: str) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.cert_path, self.key_path)
        except (OSError, ssl.SSLError) as e:
            raise UsageError(
                f"tls_cert {self.cert_path} / tls_key {self.key_path}: cannot use them: {e}"
            ) from None
        if self.client_ca_path:
            try:
                context.load_verify_locations(cafile=self.client_ca_path)
            except (OSError, ssl.SSLError) as e:
                raise UsageError(
                    f"tls_client_ca {self.client_ca_path}: cannot use it: {e}"
                ) from None
            context.verify_mode = ssl.CERT_REQUIRED
        context.set_alpn_protocols([alpn])
        return context


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
