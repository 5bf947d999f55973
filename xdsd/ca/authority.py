"""The CA: loading or generating the authorities of ``[mesh.ca]``, issuing workload
certificates and signing CSRs, and the trust bundle."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from xdsd.model.mesh_config import MeshCA


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A workload certificate: its SPIFFE id, serial (hex), validity, the PEM chain (leaf
    first, up to the signing authority) and, when xdsd made the key pair, the PEM private
    key (never in ``repr``; empty for a signed CSR)."""

    spiffe_id: str
    serial: str
    not_before: datetime
    not_after: datetime
    chain_pem: bytes
    key_pem: bytes = field(default=b"", repr=False)


class CertificateAuthority:
    """The mesh's CA under ``config`` for ``trust_domain`` (see the module docstring)."""

    def __init__(self, config: MeshCA, trust_domain: str) -> None:
        self.config = config
        self.trust_domain = trust_domain

    def bundle_pem(self) -> bytes:
        """The PEM certificates of every trusted authority."""
        raise NotImplementedError

    def issue(self, namespace: str, service: str) -> IssuedCertificate:
        """A fresh key pair and a certificate for ``service`` in ``namespace``."""
        raise NotImplementedError

    def sign_csr(self, csr_pem: bytes, namespace: str, service: str) -> IssuedCertificate:
        """A certificate for the key of ``csr_pem``, for ``service`` in ``namespace``
        (whatever names the CSR asks for)."""
        raise NotImplementedError
