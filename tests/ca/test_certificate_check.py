"""``xdsd certificate --renew-before``'s check of a certificate directory against what
the daemon trusts and signs with now (``outdated``), and the check's answer read
strictly (``_current``): every step of a CA rotation is told apart."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import struct_pb2

from xdsd.ca.authority import CertificateAuthority
from xdsd.certificate import CertificateError, Current, _current, outdated, write_directory
from xdsd.model.mesh_config import CAAuthority, MeshCA


def ca(tmp_path: Path, names: tuple[str, ...], signing: str) -> CertificateAuthority:
    config = MeshCA(
        str(tmp_path / "state"),
        authorities=tuple(CAAuthority(n) for n in names),
        signing=signing,
    )
    return CertificateAuthority(config, "mesh.test")


def write(directory: Path, authority: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    issued = authority.sign_csr(csr, "shop", "client")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_directory(directory, key_pem, issued.chain_pem, authority.bundle_pem())


def now(authority: CertificateAuthority) -> Current:
    return Current(authority.bundle_pem(), authority.signer_pem())


def test_each_rotation_step_is_seen(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    old = ca(tmp_path, ("old",), "old")
    write(out, old)
    assert outdated(out, now(old)) is None
    both = ca(tmp_path, ("old", "new"), "old")
    assert outdated(out, now(both)) == "the daemon's trust bundle changed"
    write(out, both)
    assert outdated(out, now(both)) is None
    switched = ca(tmp_path, ("old", "new"), "new")
    assert outdated(out, now(switched)) == "another authority signs now"
    write(out, switched)
    assert outdated(out, now(switched)) is None
    only = ca(tmp_path, ("new",), "new")
    assert outdated(out, now(only)) == "the daemon's trust bundle changed"
    assert outdated(tmp_path / "absent", now(only)) == "the files cannot be read"


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"ca_bundle": "x"},
        {"ca_bundle": 3, "signer": "x"},
        {"ca_bundle": "not pem", "signer": "not pem"},
    ],
)
def test_a_check_answer_that_is_not_one_is_refused(fields: dict[str, object]) -> None:
    response = struct_pb2.Struct()
    response.update(fields)
    with pytest.raises(CertificateError):
        _current(response)
