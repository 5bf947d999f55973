"""xdsd's CA (``xdsd.ca.authority``): generated and operator authorities, what it refuses
to load, and the certificates it issues, verified by OpenSSL and by ``cryptography``'s
own path validation against the bundle."""

from __future__ import annotations

import os
import stat
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from xdsd.ca.authority import (
    MAX_CSR_BYTES,
    CAError,
    CertificateAuthority,
    IssuedCertificate,
    IssueRefused,
)
from xdsd.model.mesh_config import CAAuthority, MeshCA

TD = "mesh.test"
NOW = datetime.now(UTC)


@dataclass
class Pem:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def make_ca(
    name: str,
    issuer: Pem | None = None,
    *,
    ca: bool = True,
    start: datetime = NOW - timedelta(days=1),
    end: datetime = NOW + timedelta(days=30),
) -> Pem:
    """A CA certificate called ``name`` signed by ``issuer`` (self-signed without)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), True
        )
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    return Pem(cert, key)


def write(directory: Path, name: str, *chain: Pem, key_mode: int = 0o600) -> CAAuthority:
    """Files for ``chain[0]`` (its certificate then the rest of ``chain``)."""
    cert = directory / f"{name}.crt"
    key = directory / f"{name}.key"
    cert.write_bytes(b"".join(p.cert.public_bytes(serialization.Encoding.PEM) for p in chain))
    key.write_bytes(
        chain[0].key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key.chmod(key_mode)
    return CAAuthority(name, str(cert), str(key))


def config(state: Path, *authorities: CAAuthority, **kw: object) -> MeshCA:
    return MeshCA(state_dir=str(state), authorities=tuple(authorities), **kw)  # type: ignore[arg-type]


def verify(ca: CertificateAuthority, issued: IssuedCertificate, tmp: Path) -> None:
    """The chain verifies against the bundle for a client and a server (OpenSSL, and
    ``cryptography``'s own path building)."""
    chain = x509.load_pem_x509_certificates(issued.chain_pem)
    store = Store(x509.load_pem_x509_certificates(ca.bundle_pem()))
    verifier = PolicyBuilder().store(store).build_client_verifier()
    verified = verifier.verify(chain[0], chain[1:])
    assert [san.value for san in verified.subjects or ()] == [issued.spiffe_id]
    bundle, leaf, untrusted = tmp / "bundle.pem", tmp / "leaf.pem", tmp / "untrusted.pem"
    bundle.write_bytes(ca.bundle_pem())
    leaf.write_bytes(chain[0].public_bytes(serialization.Encoding.PEM))
    untrusted.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain[1:]))
    for purpose in ("sslclient", "sslserver"):
        args = ["openssl", "verify", "-purpose", purpose, "-CAfile", str(bundle)]
        if len(chain) > 1:
            args += ["-untrusted", str(untrusted)]
        done = subprocess.run([*args, str(leaf)], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr


# -- a generated authority ----------------------------------------------------------------


def test_generated_ca_is_kept_private_and_reused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = CertificateAuthority(config(state), TD)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    key = state / "default" / "ca.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "default").stat().st_mode) == 0o700
    assert [p.name for p in state.iterdir()] == ["default"], "no temporary file left behind"
    again = CertificateAuthority(config(state), TD)
    assert again.bundle_pem() == first.bundle_pem()
    root = x509.load_pem_x509_certificate(first.bundle_pem())
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    verify(again, first.issue("default", "web"), tmp_path)


def test_issued_certificate_is_an_svid(tmp_path: Path) -> None:
    ca = CertificateAuthority(config(tmp_path / "s", workload_ttl_seconds=3600.0), TD)
    issued = ca.issue("shop", "cart")
    assert issued.spiffe_id == "spiffe://mesh.test/ns/shop/sa/cart"
    leaf = x509.load_pem_x509_certificate(issued.chain_pem)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [type(n) for n in sans] == [x509.UniformResourceIdentifier]
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [issued.spiffe_id]
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and not usage.key_cert_sign
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert f"{leaf.serial_number:x}" == issued.serial
    assert issued.issued_at is not None
    assert leaf.not_valid_before_utc < issued.issued_at, "backdated for clock skew"
    assert leaf.not_valid_after_utc == issued.not_after == issued.issued_at + timedelta(hours=1)
    assert issued.renew_at(0.5) == issued.issued_at + timedelta(minutes=30)
    key = serialization.load_pem_private_key(issued.key_pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert key.public_key() == leaf.public_key()
    assert "PRIVATE" not in repr(issued)
    assert ca.issue("shop", "cart").serial != issued.serial
    verify(ca, issued, tmp_path)


def test_rsa_workload_keys(tmp_path: Path) -> None:
    ca = CertificateAuthority(config(tmp_path / "s", key_type="rsa-2048"), TD)
    issued = ca.issue("ns", "svc")
    key = serialization.load_pem_private_key(issued.key_pem, None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    verify(ca, issued, tmp_path)


@pytest.mark.parametrize("name", ["", "a/b", "..", "x y", "ns\n", "é", "a" * 300])
def test_names_that_cannot_be_a_spiffe_id_are_refused(tmp_path: Path, name: str) -> None:
    ca = CertificateAuthority(config(tmp_path / "s"), TD)
    with pytest.raises(IssueRefused) as caught:
        ca.issue(name, "svc")
    assert caught.value.reason == "identity"
    with pytest.raises(IssueRefused):
        ca.issue("ns", name)


def test_state_dir_open_to_others_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    with pytest.raises(CAError, match=r"state.*mode 0755"):
        CertificateAuthority(config(state), TD)


def test_state_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 12345, 12345)
    with pytest.raises(CAError, match="belongs to uid 12345"):
        CertificateAuthority(config(state), TD)


def test_a_generated_key_made_readable_is_refused(tmp_path: Path) -> None:
    CertificateAuthority(config(tmp_path / "s"), TD)
    (tmp_path / "s" / "default" / "ca.key").chmod(0o644)
    with pytest.raises(CAError, match=r"ca\.key.*mode 0644"):
        CertificateAuthority(config(tmp_path / "s"), TD)


# -- the operator's authorities -----------------------------------------------------------


def test_operator_root(tmp_path: Path) -> None:
    root = make_ca("root")
    ca = CertificateAuthority(config(tmp_path / "s", write(tmp_path, "op", root)), TD)
    assert ca.bundle_pem() == root.cert.public_bytes(serialization.Encoding.PEM)
    assert not (tmp_path / "s").exists(), "nothing generated, so no state directory"
    issued = ca.issue("ns", "svc")
    assert len(x509.load_pem_x509_certificates(issued.chain_pem)) == 1
    verify(ca, issued, tmp_path)


def test_operator_intermediate_chain(tmp_path: Path) -> None:
    root = make_ca("root")
    middle = make_ca("middle", root)
    issuing = make_ca("issuing", middle)
    files = write(tmp_path, "op", issuing, middle, root)
    ca = CertificateAuthority(config(tmp_path / "s", files), TD)
    assert x509.load_pem_x509_certificates(ca.bundle_pem()) == [root.cert]
    issued = ca.issue("ns", "svc")
    chain = x509.load_pem_x509_certificates(issued.chain_pem)
    assert chain[1:] == [issuing.cert, middle.cert]
    verify(ca, issued, tmp_path)


def test_workload_never_outlives_its_signer(tmp_path: Path) -> None:
    root = make_ca("root", end=NOW + timedelta(hours=2))
    ca = CertificateAuthority(
        config(tmp_path / "s", write(tmp_path, "op", root), workload_ttl_seconds=86400.0), TD
    )
    issued = ca.issue("ns", "svc")
    assert issued.not_after == root.cert.not_valid_after_utc == ca.signing_expires


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    files = write(tmp_path, "op", make_ca("root"), key_mode=mode)
    with pytest.raises(CAError) as caught:
        CertificateAuthority(config(tmp_path / "s", files), TD)
    assert files.key in str(caught.value) and f"mode {mode:04o}" in str(caught.value)


def test_not_a_ca_is_refused(tmp_path: Path) -> None:
    files = write(tmp_path, "op", make_ca("leaf", ca=False))
    with pytest.raises(CAError, match="is not a CA"):
        CertificateAuthority(config(tmp_path / "s", files), TD)


def test_key_of_another_certificate_is_refused(tmp_path: Path) -> None:
    files = write(tmp_path, "op", make_ca("root"))
    other = write(tmp_path, "other", make_ca("other"))
    mixed = CAAuthority("op", files.cert, other.key)
    with pytest.raises(CAError, match="does not match the certificate"):
        CertificateAuthority(config(tmp_path / "s", mixed), TD)


def test_expired_and_future_cas_are_refused(tmp_path: Path) -> None:
    old = write(tmp_path, "old", make_ca("old", end=NOW - timedelta(hours=1)))
    with pytest.raises(CAError, match="expired at"):
        CertificateAuthority(config(tmp_path / "s", old), TD)
    future = write(tmp_path, "future", make_ca("new", start=NOW + timedelta(days=1)))
    with pytest.raises(CAError, match="not valid before"):
        CertificateAuthority(config(tmp_path / "s", future), TD)


def test_expired_root_in_the_chain_is_refused(tmp_path: Path) -> None:
    root = make_ca("root", end=NOW - timedelta(minutes=1))
    files = write(tmp_path, "op", make_ca("issuing", root), root)
    with pytest.raises(CAError, match="certificate 2 of the chain expired"):
        CertificateAuthority(config(tmp_path / "s", files), TD)


def test_chain_out_of_order_is_refused(tmp_path: Path) -> None:
    root = make_ca("root")
    files = write(tmp_path, "op", make_ca("issuing", root), make_ca("stranger"))
    with pytest.raises(CAError, match="not issued by the next certificate"):
        CertificateAuthority(config(tmp_path / "s", files), TD)


@pytest.mark.parametrize(
    ("cert", "key", "message"),
    [
        (b"garbage", None, "no PEM certificate"),
        (None, b"garbage", "no PEM private key"),
        (b"x" * (2 << 20), None, "larger than"),
    ],
)
def test_unreadable_files_are_refused(
    tmp_path: Path, cert: bytes | None, key: bytes | None, message: str
) -> None:
    files = write(tmp_path, "op", make_ca("root"))
    if cert is not None:
        Path(files.cert).write_bytes(cert)
    if key is not None:
        Path(files.key).write_bytes(key)
    with pytest.raises(CAError, match=message):
        CertificateAuthority(config(tmp_path / "s", files), TD)


def test_missing_and_half_given_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CAError, match="cannot read the CA certificate"):
        missing = CAAuthority("op", str(tmp_path / "no.crt"), str(tmp_path / "no.key"))
        CertificateAuthority(config(tmp_path / "s", missing), TD)
    with pytest.raises(CAError, match="both cert and key"):
        CertificateAuthority(config(tmp_path / "s", CAAuthority("op", cert="/x")), TD)


def test_encrypted_key_is_refused(tmp_path: Path) -> None:
    root = make_ca("root")
    files = write(tmp_path, "op", root)
    Path(files.key).write_bytes(
        root.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(CAError, match="encrypted"):
        CertificateAuthority(config(tmp_path / "s", files), TD)


# -- rotation -----------------------------------------------------------------------------


def test_rotation_steps_keep_both_trusted(tmp_path: Path) -> None:
    old = write(tmp_path, "old", make_ca("old"))
    state = tmp_path / "s"
    before = CertificateAuthority(config(state, old), TD)
    old_leaf = before.issue("ns", "a")
    added = CertificateAuthority(config(state, old, CAAuthority("new")), TD)
    assert added.signing_name == "old"
    assert len(x509.load_pem_x509_certificates(added.bundle_pem())) == 2
    switched = CertificateAuthority(config(state, old, CAAuthority("new"), signing="new"), TD)
    assert switched.bundle_pem() == added.bundle_pem()
    new_leaf = switched.issue("ns", "b")
    verify(switched, old_leaf, tmp_path)
    verify(switched, new_leaf, tmp_path)
    after = CertificateAuthority(config(state, CAAuthority("new")), TD)
    assert len(x509.load_pem_x509_certificates(after.bundle_pem())) == 1
    verify(after, new_leaf, tmp_path)
    store = Store(x509.load_pem_x509_certificates(after.bundle_pem()))
    with pytest.raises(VerificationError):
        PolicyBuilder().store(store).build_client_verifier().verify(
            x509.load_pem_x509_certificate(old_leaf.chain_pem), []
        )


def test_signing_names_an_unknown_authority(tmp_path: Path) -> None:
    # MeshCA.signing_authority falls back to the first: the settings refuse unknown names
    ca = CertificateAuthority(config(tmp_path / "s", CAAuthority("a"), signing="zz"), TD)
    assert ca.signing_name == "a"


# -- CSRs ---------------------------------------------------------------------------------


def _csr(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, uri: str) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin")]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def test_csr_gets_only_the_identity_it_is_given(tmp_path: Path) -> None:
    ca = CertificateAuthority(config(tmp_path / "s"), TD)
    key = ec.generate_private_key(ec.SECP256R1())
    issued = ca.sign_csr(_csr(key, "spiffe://mesh.test/ns/kube-system/sa/admin"), "ns", "web")
    assert issued.key_pem == b""
    leaf = x509.load_pem_x509_certificate(issued.chain_pem)
    assert leaf.public_key() == key.public_key()
    assert leaf.subject == x509.Name([])
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(sans) == [x509.UniformResourceIdentifier("spiffe://mesh.test/ns/ns/sa/web")]
    verify(ca, issued, tmp_path)


def test_csr_refusals(tmp_path: Path) -> None:
    ca = CertificateAuthority(config(tmp_path / "s"), TD)
    good = _csr(ec.generate_private_key(ec.SECP256R1()), "spiffe://x/y")
    tampered = bytearray(good)
    tampered[len(good) // 2] ^= 1
    small = _csr(rsa.generate_private_key(public_exponent=65537, key_size=1024), "x:y")
    cases = {
        b"": "not a PEM",
        b"garbage": "not a PEM",
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n": (
            "not a PEM"
        ),
        b"A" * (MAX_CSR_BYTES + 1): "larger than",
        small: "RSA 2048-8192",
    }
    for csr, message in cases.items():
        with pytest.raises(IssueRefused, match=message) as caught:
            ca.sign_csr(csr, "ns", "svc")
        assert caught.value.reason == "csr"
    with pytest.raises(IssueRefused):
        ca.sign_csr(bytes(tampered), "ns", "svc")


def test_bad_key_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CAError, match="key_type"):
        CertificateAuthority(config(tmp_path / "s", key_type="dsa"), TD)
