"""``TokenSigner`` and the signing method's request parsing: every token that does not
verify is UNAUTHENTICATED with its reason, another identity PERMISSION_DENIED, a bad CSR
or request INVALID_ARGUMENT; nothing quotes the token."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import struct_pb2

from xdsd.ca.authority import CertificateAuthority
from xdsd.ca.signing import TokenSigner
from xdsd.ca.tokens import TokenAuthority
from xdsd.errors import CredentialRefused
from xdsd.model.mesh_config import MeshCA
from xdsd.transports.signing import parse_request, request_token


def csr() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def parts(tmp_path: Path) -> tuple[MeshCA, CertificateAuthority, TokenAuthority]:
    config = MeshCA(state_dir=str(tmp_path / "state"))
    return config, CertificateAuthority(config, "mesh.test"), TokenAuthority(config)


def refusal(
    signer: TokenSigner, token: str | None, ns: str, svc: str, pem: bytes
) -> CredentialRefused:
    with pytest.raises(CredentialRefused) as info:
        signer.sign(token, ns, svc, pem)
    if token:
        assert token not in str(info.value)
    return info.value


def test_signs_for_the_tokens_identity_only(
    parts: tuple[MeshCA, CertificateAuthority, TokenAuthority],
) -> None:
    config, authority, tokens = parts
    signed: list[int] = []
    signer = TokenSigner(lambda: authority, lambda: tokens, on_signed=lambda: signed.append(1))
    token = tokens.mint("shop", "a", 600).token
    issued = signer.sign(token, "shop", "a", csr())
    assert issued.spiffe_id == "spiffe://mesh.test/ns/shop/sa/a" and signed == [1]
    assert signer.bundle_pem() == authority.bundle_pem()

    e = refusal(signer, token, "shop", "b", csr())
    assert (e.code, e.reason) == ("PERMISSION_DENIED", "identity_mismatch")
    e = refusal(signer, token, "other", "a", csr())
    assert e.code == "PERMISSION_DENIED"
    e = refusal(signer, None, "shop", "a", csr())
    assert (e.code, e.reason) == ("UNAUTHENTICATED", "token_absent")
    e = refusal(signer, "not-a-token", "shop", "a", csr())
    assert (e.code, e.reason) == ("UNAUTHENTICATED", "token_malformed")
    e = refusal(signer, token, "shop", "a", b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n")
    assert (e.code, e.reason) == ("INVALID_ARGUMENT", "bad_csr")
    assert signed == [1]

    # revoked: the next request sees the authority the reload made
    revoked = TokenAuthority(
        dataclasses.replace(config, revoked_tokens=(tokens.verify(token).token_id,))
    )
    signer.tokens = lambda: revoked
    e = refusal(signer, token, "shop", "a", csr())
    assert (e.code, e.reason) == ("UNAUTHENTICATED", "token_revoked")


def test_a_check_judges_the_token_and_signs_nothing(
    parts: tuple[MeshCA, CertificateAuthority, TokenAuthority], tmp_path: Path
) -> None:
    _, authority, tokens = parts
    signed: list[int] = []
    signer = TokenSigner(lambda: authority, lambda: tokens, on_signed=lambda: signed.append(1))
    signer.check(tokens.mint("shop", "a", 600).token, "shop", "a")
    assert signed == []
    assert signer.signer_pem() == authority.signer_pem()
    leaf = x509.load_pem_x509_certificates(
        signer.sign(tokens.mint("shop", "a", 600).token, "shop", "a", csr()).chain_pem
    )[0]
    leaf.verify_directly_issued_by(x509.load_pem_x509_certificates(signer.signer_pem())[0])
    other = TokenAuthority(MeshCA(state_dir=str(tmp_path / "other")))
    for token, ns, svc, reason in (
        (None, "shop", "a", "token_absent"),
        (other.mint("shop", "a", 600).token, "shop", "a", "token_forged"),
        (tokens.mint("shop", "a", 600).token, "shop", "b", "identity_mismatch"),
    ):
        with pytest.raises(CredentialRefused) as info:
            signer.check(token, ns, svc)
        assert info.value.reason == reason


def test_forged_token(
    parts: tuple[MeshCA, CertificateAuthority, TokenAuthority], tmp_path: Path
) -> None:
    _, authority, tokens = parts
    other = TokenAuthority(MeshCA(state_dir=str(tmp_path / "other")))
    signer = TokenSigner(lambda: authority, lambda: tokens)
    e = refusal(signer, other.mint("shop", "a", 600).token, "shop", "a", csr())
    assert (e.code, e.reason) == ("UNAUTHENTICATED", "token_forged")


@pytest.mark.parametrize(
    "values",
    [
        ["Basic abc"],
        ["Bearer"],
        ["Bearer  "],
        ["Bearer a", "Bearer b"],
        [b"Bearer \xff"],
        ["Bearer " + "a" * 9000],
    ],
)
def test_malformed_authorization(values: list[str | bytes]) -> None:
    with pytest.raises(CredentialRefused) as info:
        request_token(values)
    assert (info.value.code, info.value.reason) == ("UNAUTHENTICATED", "token_malformed")


def test_bearer_token() -> None:
    assert request_token([]) is None
    assert request_token(["bearer abc"]) == "abc"
    assert request_token([b"Bearer abc "]) == "abc"


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"namespace": "a"},
        {"service": "b", "csr": "x"},
        {"namespace": "a", "service": "b", "csr": ""},
        {"namespace": "a", "service": "b", "csr": 3},
        {"namespace": "a", "service": 3, "csr": "x"},
        {"namespace": "a", "service": "b", "csr": "x", "extra": "y"},
        {"namespace": ["a"], "service": "b", "csr": "x"},
    ],
)
def test_requests_that_are_not_signing_requests(fields: dict[str, object]) -> None:
    message = struct_pb2.Struct()
    message.update(fields)
    with pytest.raises(CredentialRefused) as info:
        parse_request(message)
    assert info.value.code == "INVALID_ARGUMENT"
    with pytest.raises(CredentialRefused):
        parse_request(None)


def test_a_signing_request() -> None:
    message = struct_pb2.Struct()
    message.update({"namespace": "a", "service": "b", "csr": "PEM"})
    assert parse_request(message) == ("a", "b", b"PEM")


def test_a_request_without_csr_is_a_check() -> None:
    message = struct_pb2.Struct()
    message.update({"namespace": "a", "service": "b"})
    assert parse_request(message) == ("a", "b", None)
