"""Certificates for proxyless clients: a unary gRPC method on the xDS port that signs a
certificate request, authenticated by an xdsd token.

A proxyless gRPC application reads its mesh certificate from files (gRPC's
``file_watcher`` provider), so it cannot receive one over SDS. ``xdsd certificate`` makes
a key pair on the application's host, sends a certificate request (CSR) to
``SIGN_METHOD`` with the token in ``authorization: Bearer TOKEN`` metadata, and writes
what comes back. The private key never leaves that host.

The wire format: ``google.protobuf.Struct`` both ways, so neither side needs generated
code (grpclib's and grpcio's own protobuf codecs carry it). The request holds the string
fields ``namespace``, ``service`` and ``csr`` (PEM); the response ``certificate_chain``
(PEM, leaf first), ``ca_bundle`` (PEM, every authority the mesh trusts), ``spiffe_id``,
``serial`` (hex) and ``not_after`` (RFC 3339, UTC). A request that is not such a Struct
is INVALID_ARGUMENT; the request message is bounded by ``max_request_bytes`` before it is
read, the CSR by the CA (``xdsd.ca.authority.MAX_CSR_BYTES``).

A request without ``csr`` is a *check*: nothing is signed, the token is judged as for a
signing, and the response holds ``ca_bundle`` and ``signer`` (PEM: the signing
authority's certificate and the chain above it that issued certificates carry). ``xdsd
certificate --renew-before`` asks this at each run, so that a certificate with long to
live is still renewed when the CA rotates: when its ``ca.pem`` is not the bundle, or its
certificate was not issued by the signer. It is the same method, parser, bound and
refusals as a signing (one path to keep hostile-proof on both gRPC servers), and it
costs a token verification, not a key pair or a signature.

The transports do not know the CA: the daemon gives the service a ``CertificateSigner``
(``xdsd.ca.signing.TokenSigner``, only when ``[mesh.ca]`` is on). The signer verifies the
token (absent, malformed, forged, expired or revoked: UNAUTHENTICATED), checks that the
namespace and service asked for are the token's (else PERMISSION_DENIED) and signs; it
refuses with ``xdsd.errors.CredentialRefused``. Without a signer the method answers
FAILED_PRECONDITION saying ``[mesh.ca]`` is off. Every signing and refusal is logged with
the client's address and the identity asked for (never the token, the CSR or any key);
refusals are reported to ``on_refused`` (listener ``grpc``, the refusal's reason).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from google.protobuf import struct_pb2

from xdsd.errors import CredentialRefused
from xdsd.transports.identity import bearer_token
from xdsd.transports.limits import RefusalObserver, Refused, ignore_refusal

log = logging.getLogger(__name__)

#: The service and its one method.
CERTIFICATE_SERVICE = "xdsd.ca.v1.CertificateService"
SIGN_NAME = "Sign"
SIGN_METHOD = f"/{CERTIFICATE_SERVICE}/{SIGN_NAME}"
#: The request's fields (all strings).
REQUEST_FIELDS = ("namespace", "service", "csr")
#: What a refusal of a request that is not a signing request is counted as.
BAD_REQUEST = "bad_signing_request"


class SignedCertificate(Protocol):
    """What a signer returns (``xdsd.ca.authority.IssuedCertificate`` is one)."""

    @property
    def spiffe_id(self) -> str: ...
    @property
    def serial(self) -> str: ...
    @property
    def not_after(self) -> datetime: ...
    @property
    def chain_pem(self) -> bytes: ...


class CertificateSigner(Protocol):
    """Signs certificate requests for token holders (``xdsd.ca.signing.TokenSigner``)."""

    def sign(
        self, token: str | None, namespace: str, service: str, csr_pem: bytes
    ) -> SignedCertificate:
        """A certificate for the key of ``csr_pem`` as ``service`` in ``namespace``, for
        the holder of ``token`` (None: none was sent). Raises CredentialRefused. Safe
        to call from a worker thread."""
        ...

    def check(self, token: str | None, namespace: str, service: str) -> None:
        """Judge ``token`` as ``sign`` does for ``service`` in ``namespace``, signing
        nothing. Raises CredentialRefused."""
        ...

    def bundle_pem(self) -> bytes:
        """The PEM certificates of every authority the mesh trusts now."""
        ...

    def signer_pem(self) -> bytes:
        """The PEM certificate of the signing authority now, then the chain above it
        that issued certificates carry."""
        ...


def request_token(values: Sequence[str | bytes]) -> str | None:
    """The token of a signing request's ``authorization`` metadata ``values`` (None when
    there is none), read as the xDS streams read it (``identity.bearer_token``). Raises
    CredentialRefused with that refusal's status and reason (UNAUTHENTICATED,
    ``token_malformed``) for more than one value, a scheme other than Bearer, or an
    empty, oversized or non-ASCII value."""
    try:
        return bearer_token(values)
    except Refused as e:
        raise CredentialRefused(e.code, e.reason, e.message) from None


def parse_request(request: Any) -> tuple[str, str, bytes | None]:
    """The namespace, service and CSR (PEM bytes; None for a check, which has no
    ``csr`` field) of a signing request. Raises CredentialRefused (INVALID_ARGUMENT) for
    a message that is not a Struct with the string fields, for an empty one, or for one
    that has others."""
    if not isinstance(request, struct_pb2.Struct):
        raise CredentialRefused("INVALID_ARGUMENT", BAD_REQUEST, "not a signing request")
    fields = request.fields
    unknown = sorted(set(fields) - set(REQUEST_FIELDS))
    if unknown:
        raise CredentialRefused(
            "INVALID_ARGUMENT", BAD_REQUEST, f"unknown field {unknown[0][:64]!r}"
        )
    values: list[str] = []
    for name in REQUEST_FIELDS:
        value = fields.get(name)
        if name == "csr" and value is None:
            values.append("")
            continue
        if value is None or value.WhichOneof("kind") != "string_value" or not value.string_value:
            raise CredentialRefused(
                "INVALID_ARGUMENT", BAD_REQUEST, f"{name}: a non-empty string is required"
            )
        values.append(value.string_value)
    namespace, service, csr = values
    if not csr:
        return namespace, service, None
    return namespace, service, csr.encode("utf-8", "surrogateescape")


def response_message(signed: SignedCertificate, bundle_pem: bytes) -> struct_pb2.Struct:
    """The response to a signing request (see the module docstring)."""
    response = struct_pb2.Struct()
    response.update(
        {
            "certificate_chain": signed.chain_pem.decode("ascii"),
            "ca_bundle": bundle_pem.decode("ascii"),
            "spiffe_id": signed.spiffe_id,
            "serial": signed.serial,
            "not_after": signed.not_after.isoformat(),
        }
    )
    return response


def check_message(bundle_pem: bytes, signer_pem: bytes) -> struct_pb2.Struct:
    """The response to a check (see the module docstring)."""
    response = struct_pb2.Struct()
    response.update({"ca_bundle": bundle_pem.decode("ascii"), "signer": signer_pem.decode("ascii")})
    return response


class SigningEndpoint:
    """The signing method's behaviour, shared by the grpclib and grpcio servers: the
    request checked, the signer called in a worker thread, the outcome logged and
    refusals reported (see the module docstring)."""

    def __init__(
        self, signer: CertificateSigner | None, *, on_refused: RefusalObserver = ignore_refusal
    ) -> None:
        self.signer = signer
        self.on_refused = on_refused

    async def sign(
        self, request: Any, authorization: Sequence[str | bytes], peer: str
    ) -> struct_pb2.Struct:
        """The response to ``request`` from ``peer`` whose ``authorization`` metadata
        values are given. Raises CredentialRefused (after logging and reporting it)."""
        asked = "?"
        try:
            if self.signer is None:
                raise CredentialRefused(
                    "FAILED_PRECONDITION",
                    "ca_off",
                    "xdsd does not issue certificates: its settings have no [mesh.ca]",
                )
            token = request_token(authorization)
            namespace, service, csr = parse_request(request)
            asked = f"{namespace[:64]}/{service[:64]}"
            if csr is None:
                await asyncio.to_thread(self.signer.check, token, namespace, service)
                log.debug("certificate check for %s from %s", asked, peer or "?")
                return check_message(self.signer.bundle_pem(), self.signer.signer_pem())
            signed = await asyncio.to_thread(self.signer.sign, token, namespace, service, csr)
            bundle = self.signer.bundle_pem()
        except CredentialRefused as e:
            log.warning(
                "certificate for %s refused to %s: %s (%s)",
                asked,
                peer or "?",
                e,
                e.reason,
                extra={"peer": peer, "reason": e.reason},
            )
            self.on_refused("grpc", e.reason)
            raise
        log.info(
            "certificate signed for %s (%s, serial %s, valid until %s) to %s",
            asked,
            signed.spiffe_id,
            signed.serial,
            signed.not_after.isoformat(),
            peer or "?",
            extra={"peer": peer, "spiffe_id": signed.spiffe_id},
        )
        return response_message(signed, bundle)
