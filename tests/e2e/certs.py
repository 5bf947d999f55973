"""A throwaway certificate authority for tests, the PEM files it writes, and the TLS client
side of a test: a client context for a CA file (and a client certificate), and what a
handshake negotiated."""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class CertFiles:
    """PEM files of one certificate: ``cert`` (leaf), ``key``, and ``ca`` (its issuer)."""

    cert: Path
    key: Path
    ca: Path


class CertAuthority:
    """A throwaway CA in ``directory`` issuing leaf certificates for tests."""

    def __init__(self, directory: Path, name: str = "xdsd test CA") -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.ca_path = directory / "ca.pem"
        self.ca_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        name: str,
        dns_names: Iterable[str] = (),
        uris: Iterable[str] = (),
        *,
        directory: Path | None = None,
    ) -> CertFiles:
        """A leaf certificate for ``name`` with these DNS and URI SANs (server and client
        use), written as ``NAME.pem`` and ``NAME-key.pem`` (in ``directory``, default the
        CA's)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
        sans += [x509.UniformResourceIdentifier(u) for u in uris]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        where = directory or self.directory
        where.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = where / f"{name}.pem", where / f"{name}-key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return CertFiles(cert_path, key_path, self.ca_path)

    def server_context(
        self, files: CertFiles, *, require_client_cert: bool = False
    ) -> ssl.SSLContext:
        """A server-side TLS context presenting ``files``, optionally requiring a client
        certificate issued by this CA."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(files.cert, files.key)
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(self.ca_path)
        return ctx


@dataclass
class TlsSession:
    """What a TLS client saw of a handshake: protocol version, cipher suite name, and
    the server's certificate (``ssl.getpeercert()``, empty without verification)."""

    version: str
    cipher: str
    peer: dict[str, Any]


def client_tls_context(cafile: Path | None, cert: CertFiles | None = None) -> ssl.SSLContext:
    """A client TLS context verifying the server against ``cafile`` (no verification
    when None), presenting ``cert`` when given."""
    if cafile is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=str(cafile))
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    return ctx
