"""The CA: loading or generating the authorities of ``[mesh.ca]``, issuing workload
certificates and signing CSRs, and the trust bundle.

How this works: construction reads (or, for an authority with neither ``cert`` nor
``key``, generates once in ``state_dir/NAME/`` and reads again after restarts) every
authority, checks each one whole — key file private, key matching the certificate, a CA,
valid now, a chain file that chains — and keeps the signing authority's key object in
memory. Issuing then does no disk I/O: a fresh key pair (or the CSR's public key), one
certificate signed by the signing authority, the PEM chain. Every trusted authority's
root goes into the bundle, so a CA is rotated by adding the new authority (trusted by
all), making it the signing one, and removing the old one.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from xdsd.ca.files import (
    CAError,
    read_file,
    read_private,
    state_directory,
    write_private_files,
)
from xdsd.errors import XdsdError
from xdsd.model.mesh_config import WORKLOAD_KEY_TYPES, CAAuthority, MeshCA

__all__ = [
    "KEY_TYPES",
    "MAX_CSR_BYTES",
    "CAError",
    "CertificateAuthority",
    "IssueRefused",
    "IssuedCertificate",
]

#: The workload key types ``key_type`` may name.
KEY_TYPES = WORKLOAD_KEY_TYPES
#: The largest CSR ``sign_csr`` reads (a P-256 CSR is about 500 bytes, an RSA-4096 one 2 KB).
MAX_CSR_BYTES = 16384
#: How far before its issue a workload certificate's validity starts (proxies' clocks
#: may run behind xdsd's).
BACKDATE = timedelta(minutes=5)
#: How long a generated CA lives.
GENERATED_CA_LIFETIME = timedelta(days=3650)
#: File names of a generated authority in ``state_dir/NAME/``.
GENERATED_CERT = "ca.crt"
GENERATED_KEY = "ca.key"
#: What a namespace or service may be in a SPIFFE id's path (SPIFFE's path segment
#: characters).
_SEGMENT = re.compile(r"[A-Za-z0-9._-]{1,253}")

_PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class IssueRefused(XdsdError):
    """A certificate cannot be issued: a namespace or service that cannot be a SPIFFE
    path segment, a CSR that is unreadable, too large, badly signed or for a key xdsd
    does not accept, or a signing authority that has expired. ``reason`` is a short
    word for counting (``identity``, ``csr``, ``expired``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A workload certificate: its SPIFFE id, serial (hex), validity, the PEM chain (leaf
    first, up to the signing authority) and, when xdsd made the key pair, the PEM private
    key (never in ``repr``; empty for a signed CSR). ``issued_at`` is when it was made:
    ``not_before`` is backdated by ``BACKDATE`` for clock skew, so a renewal is timed
    from ``issued_at`` (``renew_at``)."""

    spiffe_id: str
    serial: str
    not_before: datetime
    not_after: datetime
    chain_pem: bytes
    key_pem: bytes = field(default=b"", repr=False)
    issued_at: datetime | None = None

    def renew_at(self, fraction: float) -> datetime:
        """When ``fraction`` (0-1) of the certificate's life since its issue has passed."""
        start = self.issued_at or self.not_before
        return start + (self.not_after - start) * fraction


@dataclass(frozen=True, slots=True)
class _Loaded:
    """One authority, checked: its certificate, key, ``intermediates`` (what a leaf's
    chain carries after the leaf: the authority's own certificate and those above it,
    short of a self-signed root) and the root the bundle trusts."""

    name: str
    cert: x509.Certificate
    key: _PrivateKey
    intermediates: tuple[x509.Certificate, ...]
    root: x509.Certificate


class CertificateAuthority:
    """The mesh's CA under ``config`` for ``trust_domain`` (see the module docstring).

    Raises CAError at construction for every authority that cannot be used (naming the
    file and the reason) and for a state directory that is not private. ``issue`` and
    ``sign_csr`` raise IssueRefused. Safe to share between threads: nothing changes
    after construction.
    """

    def __init__(self, config: MeshCA, trust_domain: str) -> None:
        self.config = config
        self.trust_domain = trust_domain
        if config.key_type not in KEY_TYPES:
            raise CAError(f"key_type {config.key_type!r}: must be one of {', '.join(KEY_TYPES)}")
        authorities = config.authorities or (CAAuthority("default"),)
        if any(not (a.cert or a.key) for a in authorities):
            state_directory(config.state_dir)
        now = datetime.now(UTC)
        self._authorities = tuple(self._load(a, now) for a in authorities)
        signing = config.signing_authority.name
        found = [a for a in self._authorities if a.name == signing]
        if not found:
            raise CAError(f"signing: no authority is called {signing!r}")
        self._signing = found[0]
        self.signing_name = signing
        roots: list[bytes] = []
        for loaded in self._authorities:
            pem = loaded.root.public_bytes(serialization.Encoding.PEM)
            if pem not in roots:
                roots.append(pem)
        self._bundle = b"".join(roots)
        self._chain_tail = b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in self._signing.intermediates
        )
        issuer = self._signing.cert
        self._signer = issuer.public_bytes(serialization.Encoding.PEM) + self._chain_tail
        self._issuer_name = issuer.subject
        self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer.public_key()  # type: ignore[arg-type]
        )
        self._hash = (
            None if isinstance(self._signing.key, ed25519.Ed25519PrivateKey) else (hashes.SHA256())
        )
        self._expires = min(
            c.not_valid_after_utc
            for c in (issuer, *self._signing.intermediates, self._signing.root)
        )
        self._ttl = timedelta(seconds=config.workload_ttl_seconds)

    # -- what others read --------------------------------------------------------------

    @property
    def authority_names(self) -> tuple[str, ...]:
        """The names of the trusted authorities, in the settings' order."""
        return tuple(a.name for a in self._authorities)

    @property
    def signing_expires(self) -> datetime:
        """When the signing authority (or an intermediate above it) expires: no workload
        certificate outlives it."""
        return self._expires

    def bundle_pem(self) -> bytes:
        """The PEM certificates of every trusted authority's root, in the settings' order
        (each once)."""
        return self._bundle

    def signer_pem(self) -> bytes:
        """The PEM certificate of the signing authority, then the chain above it that
        issued certificates carry (short of a self-signed root): what identifies the
        signer. Two CAs with the same ``signer_pem`` issue certificates that chain the
        same way; a certificate or key replaced under the same name or files gives
        another one."""
        return self._signer

    def identity(self, namespace: str, service: str) -> str:
        """The SPIFFE id of ``service`` in ``namespace``; raises IssueRefused when either
        cannot be a path segment of one."""
        for what, value in (("namespace", namespace), ("service", service)):
            if not _SEGMENT.fullmatch(value) or value in (".", ".."):
                raise IssueRefused(
                    "identity",
                    f"{what} {value[:64]!r} cannot be part of a SPIFFE id (letters, digits, "
                    "'.', '_' and '-' only)",
                )
        return f"spiffe://{self.trust_domain}/ns/{namespace}/sa/{service}"

    # -- issuing -----------------------------------------------------------------------

    def issue(self, namespace: str, service: str) -> IssuedCertificate:
        """A fresh key pair (``key_type``) and a certificate for ``service`` in
        ``namespace``, signed by the signing authority; the key is returned as PKCS#8
        PEM in ``key_pem`` and kept nowhere. Raises IssueRefused."""
        spiffe_id = self.identity(namespace, service)
        key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
        if self.config.key_type == "rsa-2048":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
        issued = self._sign(key.public_key(), spiffe_id)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return IssuedCertificate(
            issued.spiffe_id,
            issued.serial,
            issued.not_before,
            issued.not_after,
            issued.chain_pem,
            key_pem,
            issued.issued_at,
        )

    def sign_csr(self, csr_pem: bytes, namespace: str, service: str) -> IssuedCertificate:
        """A certificate for the key of ``csr_pem``, for ``service`` in ``namespace``
        (whatever names or extensions the CSR asks for: only its public key is used).
        Raises IssueRefused for a CSR larger than ``MAX_CSR_BYTES``, not PEM, badly
        signed, or for a key other than ECDSA P-256/P-384, RSA 2048-8192 or Ed25519."""
        spiffe_id = self.identity(namespace, service)
        if len(csr_pem) > MAX_CSR_BYTES:
            raise IssueRefused("csr", f"the CSR is larger than {MAX_CSR_BYTES} bytes")
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
            signed = csr.is_signature_valid
            public = csr.public_key()
        except (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion):
            raise IssueRefused("csr", "the CSR is not a PEM certificate request") from None
        if not signed:
            raise IssueRefused("csr", "the CSR's signature does not verify")
        if isinstance(public, ec.EllipticCurvePublicKey):
            acceptable = public.curve.name in ("secp256r1", "secp384r1")
        elif isinstance(public, rsa.RSAPublicKey):
            acceptable = 2048 <= public.key_size <= 8192
        else:
            acceptable = isinstance(public, ed25519.Ed25519PublicKey)
        if not acceptable:
            raise IssueRefused(
                "csr", "the CSR's key is not ECDSA P-256/P-384, RSA 2048-8192 or Ed25519"
            )
        return self._sign(public, spiffe_id)  # type: ignore[arg-type]

    def _sign(
        self,
        public: ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey,
        spiffe_id: str,
    ) -> IssuedCertificate:
        now = datetime.now(UTC).replace(microsecond=0)
        if now >= self._expires:
            raise IssueRefused(
                "expired",
                f"the signing authority {self.signing_name!r} expired at "
                f"{self._expires.isoformat()}",
            )
        not_before = max(now - BACKDATE, self._signing.cert.not_valid_before_utc)
        not_after = min(now + self._ttl, self._expires)
        serial = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self._issuer_name)
            .public_key(public)
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_LEAF_KEY_USAGE, critical=True)
            .add_extension(_LEAF_EXTENDED_KEY_USAGE, critical=False)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
                critical=True,
            )
            .add_extension(self._aki, critical=False)
            .sign(self._signing.key, self._hash)
        )
        chain = cert.public_bytes(serialization.Encoding.PEM) + self._chain_tail
        return IssuedCertificate(spiffe_id, f"{serial:x}", not_before, not_after, chain, b"", now)

    # -- loading -----------------------------------------------------------------------

    def _load(self, authority: CAAuthority, now: datetime) -> _Loaded:
        if not authority.cert and not authority.key:
            return self._generated(authority.name, now)
        if not authority.cert or not authority.key:
            raise CAError(f"authority {authority.name!r}: give both cert and key, or neither")
        return _checked(
            authority.name,
            authority.cert,
            read_file(authority.cert, "the CA certificate"),
            authority.key,
            read_private(authority.key, "the CA key"),
            now,
        )

    def _generated(self, name: str, now: datetime) -> _Loaded:
        """The authority xdsd keeps in ``state_dir/NAME``, made first when missing."""
        if not _SEGMENT.fullmatch(name) or name.startswith("."):
            raise CAError(
                f"authority {name!r}: a generated authority's name is a directory "
                "name (letters, digits, '.', '_' and '-', not starting with '.')"
            )
        directory = os.path.join(self.config.state_dir, name)
        if not os.path.isdir(directory):
            cert_pem, key_pem = _new_root(name, self.trust_domain, now)
            write_private_files(directory, {GENERATED_CERT: cert_pem, GENERATED_KEY: key_pem})
        cert_path = os.path.join(directory, GENERATED_CERT)
        key_path = os.path.join(directory, GENERATED_KEY)
        return _checked(
            name,
            cert_path,
            read_file(cert_path, "the generated CA certificate"),
            key_path,
            read_private(key_path, "the generated CA key"),
            now,
        )


_LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=True,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
_LEAF_EXTENDED_KEY_USAGE = x509.ExtendedKeyUsage(
    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
)


def _new_root(name: str, trust_domain: str, now: datetime) -> tuple[bytes, bytes]:
    """A self-signed ECDSA P-256 CA for ``trust_domain`` (certificate PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, f"xdsd CA {name}"),
        ]
    )
    start = now.replace(microsecond=0) - BACKDATE
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + GENERATED_CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _checked(
    name: str, cert_path: str, cert_pem: bytes, key_path: str, key_pem: bytes, now: datetime
) -> _Loaded:
    """Authority ``name`` from its files' bytes, checked whole; raises CAError naming the
    file at fault."""
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise CAError(f"{cert_path}: holds no PEM certificate that can be read") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise CAError(f"{key_path}: the CA key is encrypted: xdsd needs it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise CAError(f"{key_path}: holds no PEM private key that can be read") from None
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise CAError(f"{key_path}: the CA key must be ECDSA, RSA or Ed25519")
    cert = chain[0]
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise CAError(f"{key_path}: the key does not match the certificate in {cert_path}")
    for index, each in enumerate(chain):
        which = "the certificate" if index == 0 else f"certificate {index + 1} of the chain"
        try:
            constraints = each.extensions.get_extension_for_class(x509.BasicConstraints).value
            is_ca = constraints.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise CAError(f"{cert_path}: {which} is not a CA (basicConstraints CA:TRUE missing)")
        if now < each.not_valid_before_utc:
            raise CAError(
                f"{cert_path}: {which} is not valid before {each.not_valid_before_utc.isoformat()}"
            )
        if now >= each.not_valid_after_utc:
            raise CAError(f"{cert_path}: {which} expired at {each.not_valid_after_utc.isoformat()}")
        if index + 1 < len(chain):
            try:
                each.verify_directly_issued_by(chain[index + 1])
            except (ValueError, TypeError, InvalidSignature):
                raise CAError(
                    f"{cert_path}: {which} is not issued by the next certificate in the file "
                    "(give the chain in order, up to the root)"
                ) from None
    last = chain[-1]
    self_signed = last.issuer == last.subject and _signed_by_itself(last)
    # what a leaf's chain carries after the leaf: the signer and the certificates above
    # it, short of a self-signed root (the bundle's)
    intermediates = tuple(chain[:-1] if self_signed else chain)
    return _Loaded(name, cert, key, intermediates, last)


def _signed_by_itself(cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _spki(public: object) -> bytes:
    return public.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
