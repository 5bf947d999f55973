"""Fuzzing what a proxy hands xdsd's CA: any bytes as a token are InvalidToken (never
another exception, never accepted), and any bytes as a CSR are IssueRefused or, for a
well-formed one, a certificate carrying only the identity xdsd gave."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzzing import deadline, fuzz_settings
from xdsd.ca.authority import CertificateAuthority, IssueRefused
from xdsd.ca.tokens import REASONS, InvalidToken, TokenAuthority, token_id_of
from xdsd.model.mesh_config import MeshCA


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("ca") / "state"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@st.composite
def token_like(draw: st.DrawFn) -> str | bytes:
    """Bytes, text, or three dot-separated parts of base64url of JSON-ish values."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=600))
    if kind == 1:
        return draw(st.text(max_size=300))
    values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=12),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=8,
    )
    header = draw(st.sampled_from([{"alg": "EdDSA", "typ": "JWT"}, {"alg": "none"}, {}]) | values)
    claims = draw(
        st.fixed_dictionaries(
            {"iss": st.just("xdsd"), "ns": st.text(max_size=8), "svc": st.text(max_size=8)},
            optional={"jti": st.text(max_size=8), "exp": st.integers() | values},
        )
        | values
    )
    signature = draw(st.binary(min_size=0, max_size=80))
    return ".".join(
        (_b64(json.dumps(header).encode()), _b64(json.dumps(claims).encode()), _b64(signature))
    )


@fuzz_settings(scale=3)
@given(token=token_like())
@example(token=b"")
@example(token="a" * 5000)
@example(token="..")
@example(token="e30.e30." + "A" * 86)
def test_fuzz_token(state: Path, token: str | bytes) -> None:
    tokens = TokenAuthority(MeshCA(state_dir=str(state)))
    with deadline("test_fuzz_token"):
        with pytest.raises(InvalidToken) as caught:
            tokens.verify(token)
        assert caught.value.reason in REASONS
        assert isinstance(token_id_of(token), str)


@st.composite
def csr_like(draw: st.DrawFn) -> bytes:
    """Garbage, PEM armour around garbage, or a real CSR with a byte changed."""
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return draw(st.binary(max_size=2000))
    if kind == 1:
        body = base64.encodebytes(draw(st.binary(max_size=600)))
        return (
            b"-----BEGIN CERTIFICATE REQUEST-----\n"
            + body
            + (b"-----END CERTIFICATE REQUEST-----\n")
        )
    csr = _CSR
    at = draw(st.integers(0, len(csr) - 1))
    return csr[:at] + bytes([csr[at] ^ draw(st.integers(1, 255))]) + csr[at + 1 :]


_CSR = (
    x509.CertificateSigningRequestBuilder()
    .subject_name(x509.Name([]))
    .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    .public_bytes(serialization.Encoding.PEM)
)


def _pem_csr(der: bytes) -> bytes:
    return (
        b"-----BEGIN CERTIFICATE REQUEST-----\n"
        + base64.encodebytes(der)
        + b"-----END CERTIFICATE REQUEST-----\n"
    )


def _with_version(version: int) -> bytes:
    """``_CSR`` claiming another version (cryptography raises its own InvalidVersion)."""
    der = bytearray(x509.load_pem_x509_csr(_CSR).public_bytes(serialization.Encoding.DER))
    at = der.index(b"\x02\x01\x00")
    der[at + 2] = version
    return _pem_csr(bytes(der))


@fuzz_settings(scale=3)
@given(csr=csr_like())
@example(csr=b"")
@example(csr=_CSR)
@example(csr=_with_version(5))
def test_fuzz_csr(state: Path, csr: bytes) -> None:
    ca = CertificateAuthority(MeshCA(state_dir=str(state)), "mesh.test")
    with deadline("test_fuzz_csr"):
        try:
            issued = ca.sign_csr(csr, "ns", "svc")
        except IssueRefused as e:
            assert e.reason == "csr"
            return
        leaf = x509.load_pem_x509_certificate(issued.chain_pem)
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert list(sans) == [x509.UniformResourceIdentifier("spiffe://mesh.test/ns/ns/sa/svc")]
