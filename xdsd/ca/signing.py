"""Signing proxyless clients' certificate requests for token holders: the
``CertificateSigner`` the daemon gives the transports' signing method
(``xdsd.transports.signing``) when ``[mesh.ca]`` is on.

A request is signed only when its token verifies (absent, malformed, forged, expired or
revoked: UNAUTHENTICATED, counted as ``token_absent``, ``token_malformed``,
``token_forged``, ``token_expired``, ``token_revoked``) and names the very namespace and
service asked for (else PERMISSION_DENIED, ``identity_mismatch``); a CSR the CA refuses
is INVALID_ARGUMENT (``bad_csr``), a signing authority that expired UNAVAILABLE
(``ca_expired``). Only the CSR's public key is used: the certificate says what the token
says. The CA and the token authority are asked for on every call, so a SIGHUP that
replaces them (a new signing authority, a changed revocation list) applies to the next
request.
"""

from __future__ import annotations

from collections.abc import Callable

from xdsd.ca.authority import CertificateAuthority, IssuedCertificate, IssueRefused
from xdsd.ca.tokens import InvalidToken, TokenAuthority
from xdsd.errors import CredentialRefused


def _ignore_issued() -> None:
    """The default ``on_signed``: nothing counted."""


class TokenSigner:
    """Signs CSRs for token holders with ``authority()`` after ``tokens()`` verified
    their token (see the module docstring); ``on_signed`` hears of every certificate
    signed. Safe to call from worker threads (the CA and token authority are)."""

    def __init__(
        self,
        authority: Callable[[], CertificateAuthority],
        tokens: Callable[[], TokenAuthority],
        *,
        on_signed: Callable[[], None] = _ignore_issued,
    ) -> None:
        self.authority = authority
        self.tokens = tokens
        self.on_signed = on_signed

    def sign(
        self, token: str | None, namespace: str, service: str, csr_pem: bytes
    ) -> IssuedCertificate:
        """A certificate for the key of ``csr_pem`` as ``service`` in ``namespace``.
        Raises CredentialRefused (see the module docstring)."""
        self.check(token, namespace, service)
        try:
            issued = self.authority().sign_csr(csr_pem, namespace, service)
        except IssueRefused as e:
            if e.reason == "expired":
                raise CredentialRefused("UNAVAILABLE", "ca_expired", str(e)) from None
            raise CredentialRefused("INVALID_ARGUMENT", "bad_csr", str(e)) from None
        self.on_signed()
        return issued

    def check(self, token: str | None, namespace: str, service: str) -> None:
        """Judge ``token`` for ``service`` in ``namespace`` as ``sign`` does, signing
        nothing (the check of ``xdsd certificate --renew-before``). Raises
        CredentialRefused."""
        if token is None:
            raise CredentialRefused(
                "UNAUTHENTICATED",
                "token_absent",
                "no token: send 'authorization: Bearer TOKEN' (xdsd token makes one)",
            )
        try:
            claims = self.tokens().verify(token)
        except InvalidToken as e:
            raise CredentialRefused("UNAUTHENTICATED", f"token_{e.reason}", str(e)) from None
        if (claims.namespace, claims.service) != (namespace, service):
            raise CredentialRefused(
                "PERMISSION_DENIED",
                "identity_mismatch",
                f"token {claims.token_id} is for {claims.namespace}/{claims.service}, "
                f"not {namespace[:64]}/{service[:64]}",
            )

    def bundle_pem(self) -> bytes:
        """The trust bundle of the current CA."""
        return self.authority().bundle_pem()

    def signer_pem(self) -> bytes:
        """The current CA's signing certificate and the chain above it."""
        return self.authority().signer_pem()
