"""Identities issued to streams (``xdsd.identities``): admission by token or certificate,
renewal on a fake clock, revocation and re-issue on new settings, and the per-client view
a stream sends (``StreamClient.view``)."""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from xdsd.ca.authority import CertificateAuthority, _new_root
from xdsd.ca.tokens import (
    EXPIRY_SKEW_SECONDS,
    InvalidToken,
    TokenAuthority,
    TokenClaims,
    token_expired,
)
from xdsd.cache.snapshot import Snapshot
from xdsd.identities import REISSUE_SPREAD, Identities, MeshAuthority
from xdsd.model.mesh_config import WORKLOAD_SECRET, CAAuthority, MeshCA, MeshConfig
from xdsd.resources import SECRET, Resource
from xdsd.settings import Settings
from xdsd.transports.identity import Credential, bearer_token
from xdsd.transports.limits import NodeIdentity, Refused

TD = "mesh.test"
WEB = NodeIdentity("web-1", "web", "shop")


class Clock:
    """A wall clock that moves only when told."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _tokens(clock: Clock) -> dict[str, TokenClaims]:
    later = datetime.fromtimestamp(clock.now, UTC) + timedelta(hours=1)
    return {
        "tok-web": TokenClaims("shop", "web", "id-web", later),
        "tok-db": TokenClaims("shop", "db", "id-db", later),
        "tok-short": TokenClaims("shop", "web", "id-short", later - timedelta(minutes=59)),
    }


def _verifier(clock: Clock) -> object:
    tokens = _tokens(clock)

    def verify(token: str) -> TokenClaims:
        if token == "forged":
            raise InvalidToken("forged", "bad signature")
        found = tokens.get(token)
        if found is None:
            raise InvalidToken("malformed", "not a token")
        return found

    return verify


def _ca(tmp_path: Path, name: str = "one", ttl: float = 600.0) -> CertificateAuthority:
    config = MeshCA(
        str(tmp_path / "state"),
        authorities=(CAAuthority("one"), CAAuthority("two")),
        signing=name,
        workload_ttl_seconds=ttl,
    )
    return CertificateAuthority(config, TD)


def _identities(tmp_path: Path, clock: Clock, **kwargs: object) -> Identities:
    ca = _ca(tmp_path)
    return Identities(
        issue=ca.issue,
        verify=_verifier(clock),  # type: ignore[arg-type]
        trust_domain=TD,
        clock=clock,
        **kwargs,  # type: ignore[arg-type]
    )


def _leaf(resource: Resource) -> x509.Certificate:
    secret = secret_pb2.Secret()
    secret.ParseFromString(resource.payload)
    assert secret.name == WORKLOAD_SECRET
    assert b"PRIVATE KEY" in secret.tls_certificate.private_key.inline_bytes
    return x509.load_pem_x509_certificate(secret.tls_certificate.certificate_chain.inline_bytes)


def _refusal(call: object) -> Refused:
    with pytest.raises(Refused) as caught:
        call()  # type: ignore[operator]
    return caught.value


def test_a_token_for_the_node_gets_its_own_certificate(tmp_path: Path) -> None:
    clock = Clock()
    ids = _identities(tmp_path, clock)
    lease = ids.admit(WEB, Credential("token", token="tok-web"))
    assert lease is not None
    (secret,) = lease.resources()
    leaf = _leaf(secret)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"spiffe://{TD}/ns/shop/sa/web"
    ]
    identity = lease.identity
    assert (identity.credential, identity.token_id, identity.issued) == ("token", "id-web", 1)
    assert int(identity.serial, 16) == leaf.serial_number
    # a second proxy of the same service gets another key and certificate
    other = ids.admit(NodeIdentity("web-2", "web", "shop"), Credential("token", token="tok-web"))
    assert other is not None and other.resources()[0].digest != secret.digest


@pytest.mark.parametrize(
    ("node", "token", "code", "reason"),
    [
        (WEB, "tok-db", "PERMISSION_DENIED", "permission_denied"),
        (
            NodeIdentity("web-1", "web", "other"),
            "tok-web",
            "PERMISSION_DENIED",
            "permission_denied",
        ),
        (
            NodeIdentity("gw", "web", "shop", "gateway"),
            "tok-web",
            "PERMISSION_DENIED",
            "permission_denied",
        ),
        (WEB, "forged", "UNAUTHENTICATED", "token_forged"),
        (WEB, "garbage", "UNAUTHENTICATED", "token_malformed"),
    ],
)
def test_tokens_that_do_not_hold_are_refused(
    tmp_path: Path, node: NodeIdentity, token: str, code: str, reason: str
) -> None:
    ids = _identities(tmp_path, Clock())
    refused = _refusal(lambda: ids.admit(node, Credential("token", token=token)))
    assert (refused.code, refused.reason) == (code, reason)
    assert token not in refused.message  # never the token itself
    assert not ids.leases


def test_expired_revoked_and_absent_are_unauthenticated(tmp_path: Path) -> None:
    clock = Clock()
    ids = _identities(tmp_path, clock, revoked=frozenset({"id-web"}))
    refused = _refusal(lambda: ids.admit(WEB, Credential("token", token="tok-web")))
    assert (refused.code, refused.reason) == ("UNAUTHENTICATED", "token_revoked")
    assert "id-web" in refused.message
    clock.now += 3600
    refused = _refusal(lambda: ids.admit(WEB, Credential("token", token="tok-short")))
    assert refused.reason == "token_expired"
    refused = _refusal(lambda: ids.admit(WEB, None))
    assert (refused.code, refused.reason) == ("UNAUTHENTICATED", "token_absent")


@pytest.mark.parametrize("past", [0.0, EXPIRY_SKEW_SECONDS - 1, EXPIRY_SKEW_SECONDS + 1, 600.0])
def test_admission_and_verify_share_the_expiry_rule(tmp_path: Path, past: float) -> None:
    """A token ``past`` seconds after its ``exp`` is taken by both ``verify`` and admission
    while within the skew allowance, and refused (``token_expired``) by both after it."""
    clock = Clock()
    tokens = TokenAuthority(MeshCA(state_dir=str(tmp_path / "state")))
    minted = tokens.mint("shop", "web", 60)
    ca = _ca(tmp_path)
    ids = Identities(
        issue=ca.issue,
        verify=lambda t: tokens.verify(t, now=clock.now),
        trust_domain=TD,
        clock=clock,
    )
    clock.now = minted.claims.expires.timestamp() + past
    taken = not token_expired(minted.claims.expires.timestamp(), clock.now)
    assert taken == (past <= EXPIRY_SKEW_SECONDS)
    if taken:
        tokens.verify(minted.token, now=clock.now)
        assert ids.admit(WEB, Credential("token", token=minted.token)) is not None
    else:
        with pytest.raises(InvalidToken):
            tokens.verify(minted.token, now=clock.now)
        refused = _refusal(lambda: ids.admit(WEB, Credential("token", token=minted.token)))
        assert refused.reason == "token_expired"


def test_proxyless_clients_need_no_credential_and_get_no_key(tmp_path: Path) -> None:
    ids = _identities(tmp_path, Clock())
    grpc_client = NodeIdentity("g", "web", "shop", "proxyless")
    assert ids.admit(grpc_client, None) is None
    assert ids.admit(grpc_client, Credential("token", token="tok-web")) is None
    refused = _refusal(lambda: ids.admit(grpc_client, Credential("token", token="tok-db")))
    assert refused.code == "PERMISSION_DENIED"
    assert not ids.leases


def test_a_certificate_credential_gets_the_nodes_identity(tmp_path: Path) -> None:
    ids = _identities(tmp_path, Clock())
    lease = ids.admit(WEB, Credential("certificate", sans=(f"spiffe://{TD}/ns/shop/sa/web",)))
    assert lease is not None
    assert (lease.identity.credential, lease.identity.token_id) == ("certificate", "")


def test_renewal_at_the_fraction_wakes_the_stream_with_a_new_key(tmp_path: Path) -> None:
    clock = Clock()
    ids = _identities(tmp_path, clock, renew_fraction=0.5)
    lease = ids.admit(WEB, Credential("token", token="tok-web"))
    assert lease is not None
    heard: list[Refused | None] = []
    lease.listen(heard.append)
    first = lease.resources()[0]
    assert ids.renew_due() == 0 and heard == []
    due = ids.next_due()
    assert due is not None and clock.now + 290 < due < clock.now + 310  # half of 600 s
    clock.now = due
    assert ids.renew_due() == 1
    assert heard == [None]
    assert lease.resources()[0].digest != first.digest
    assert _leaf(lease.resources()[0]).serial_number != _leaf(first).serial_number
    assert lease.identity.issued == 2
    assert ids.renewed_total == 1


def test_no_renewal_once_the_token_expired(tmp_path: Path) -> None:
    clock = Clock()
    ids = _identities(tmp_path, clock)
    lease = ids.admit(WEB, Credential("token", token="tok-short"))  # expires in 60 s
    assert lease is not None
    heard: list[Refused | None] = []
    lease.listen(heard.append)
    clock.now = ids.next_due() or 0.0
    ids.renew_due()
    assert len(heard) == 1 and heard[0] is not None
    assert (heard[0].code, heard[0].reason) == ("UNAUTHENTICATED", "token_expired")
    assert not ids.leases


def test_revocation_ends_the_stream_at_once(tmp_path: Path) -> None:
    clock = Clock()
    ca = _ca(tmp_path)
    ids = _identities(tmp_path, clock)
    web = ids.admit(WEB, Credential("token", token="tok-web"))
    db = ids.admit(NodeIdentity("db-1", "db", "shop"), Credential("token", token="tok-db"))
    assert web is not None and db is not None
    heard: dict[str, list[Refused | None]] = {"web": [], "db": []}
    web.listen(heard["web"].append)
    db.listen(heard["db"].append)
    ids.update(
        issue=ca.issue,
        verify=ids.verify,
        renew_fraction=0.5,
        revoked=frozenset({"id-web"}),
        reissue=False,
    )
    assert [r.reason if r else None for r in heard["web"]] == ["token_revoked"]
    assert heard["db"] == []
    assert ids.leases == {db}


def test_a_new_signing_authority_reissues_everyone_over_a_spread(tmp_path: Path) -> None:
    clock = Clock()
    ids = _identities(tmp_path, clock)
    leases = [
        ids.admit(NodeIdentity(f"web-{i}", "web", "shop"), Credential("token", token="tok-web"))
        for i in range(4)
    ]
    two = _ca(tmp_path, "two")
    ids.update(
        issue=two.issue,
        verify=ids.verify,
        renew_fraction=0.5,
        revoked=frozenset(),
        reissue=True,
    )
    assert ids.renew_due() == 1  # the first now, the others spread over the window
    clock.now += REISSUE_SPREAD
    assert ids.renew_due() == 3
    issuer = x509.load_pem_x509_certificates(two.bundle_pem())[1].subject
    for lease in leases:
        assert lease is not None
        assert _leaf(lease.resources()[0]).issuer == issuer
        assert lease.identity.issued == 2


def test_the_view_lays_the_clients_secret_over_its_class() -> None:
    root = secret_pb2.Secret(name="ROOTCA")
    root.validation_context.trusted_ca.inline_bytes = b"CA"
    base = Snapshot.build([Resource.of("ROOTCA", root)])
    own = secret_pb2.Secret(name=WORKLOAD_SECRET)
    own.tls_certificate.certificate_chain.inline_bytes = b"chain"
    mine = Snapshot.extend(base, [Resource.of(WORKLOAD_SECRET, own)])
    assert set(mine.get(SECRET)) == {"ROOTCA", WORKLOAD_SECRET}
    assert set(base.get(SECRET)) == {"ROOTCA"}  # the class's snapshot is untouched
    assert mine.version(SECRET) != base.version(SECRET)


@pytest.mark.parametrize(
    ("values", "expected"),
    [((), None), (("Bearer abc",), "abc"), ((b"bearer  abc ",), "abc")],
)
def test_bearer_tokens_are_read(values: tuple[str | bytes, ...], expected: str | None) -> None:
    assert bearer_token(values) == expected


@pytest.mark.parametrize(
    "values",
    [("Basic abc",), ("Bearer",), ("Bearer a", "Bearer b"), (b"Bearer \xff",), ("B" * 9000,)],
)
def test_malformed_authorization_is_refused(values: tuple[str | bytes, ...]) -> None:
    refused = _refusal(lambda: bearer_token(values))
    assert (refused.code, refused.reason) == ("UNAUTHENTICATED", "token_malformed")


# -- replacing the token key or the signing authority (SIGHUP) --------------------------


def _write_token_key(path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _mesh(tmp_path: Path, extra: str = "") -> MeshConfig:
    settings = tmp_path / "settings.toml"
    settings.write_text(
        f'[mesh.mtls]\nmode = "STRICT"\ntrust_domain = "{TD}"\n\n'
        f'[mesh.ca]\nstate_dir = "{tmp_path / "state"}"\nworkload_ttl = "60s"\n{extra}'
    )
    return Settings.from_file(str(settings)).mesh


def test_a_new_token_key_ends_streams_of_old_tokens_at_once(tmp_path: Path) -> None:
    """Replacing a leaked token key cuts off the streams already open with a token of
    that key (as it refuses new ones), and they are never renewed again; a stream whose
    token the new key signed stays and is renewed."""
    clock = Clock()
    old, new = tmp_path / "old.key", tmp_path / "new.key"
    _write_token_key(old)
    _write_token_key(new)
    authority = MeshAuthority(_mesh(tmp_path, f'token_key = "{old}"\n'), clock=clock)
    stale = authority.tokens.mint("shop", "web", 10 * 365 * 86400).token
    lease = authority.identities.admit(WEB, Credential("token", token=stale))
    assert lease is not None
    heard: list[Refused | None] = []
    lease.listen(heard.append)
    assert authority.reconfigure(_mesh(tmp_path, f'token_key = "{new}"\n')) is not None
    assert [(r.code, r.reason) if r else None for r in heard] == [
        ("UNAUTHENTICATED", "token_forged")
    ]
    assert lease.ending is not None and lease not in authority.identities.leases
    assert stale not in heard[0].message  # type: ignore[union-attr]
    refused = _refusal(lambda: authority.identities.admit(WEB, Credential("token", token=stale)))
    assert refused.reason == "token_forged"
    # a stream with a token of the new key is admitted, and renewed across the same SIGHUP
    fresh = authority.tokens.mint("shop", "web", 3600).token
    kept = authority.identities.admit(WEB, Credential("token", token=fresh))
    assert kept is not None
    assert authority.reconfigure(_mesh(tmp_path, f'token_key = "{new}"\n')) is not None
    assert kept.ending is None
    first = kept.certificate.serial
    renewed = authority.identities.renewed_total
    for _ in range(3):
        clock.now += 120
        authority.identities.renew_due()
    assert kept.ending is None and kept.certificate.serial != first
    assert authority.identities.renewed_total == renewed + 3


def test_renewal_verifies_the_token_again(tmp_path: Path) -> None:
    """A lease whose token the current ``verify`` refuses is ended at its renewal, not
    renewed, even when ``update`` was not told the key changed."""
    clock = Clock()
    ids = _identities(tmp_path, clock)
    lease = ids.admit(WEB, Credential("token", token="tok-web"))
    assert lease is not None
    heard: list[Refused | None] = []
    lease.listen(heard.append)

    def refuse_all(token: str) -> TokenClaims:
        raise InvalidToken("forged", "another key")

    ids.verify = refuse_all
    clock.now = ids.next_due() or 0.0
    ids.renew_due()
    assert [r.reason if r else None for r in heard] == ["token_forged"]
    assert lease.identity.issued == 1 and not ids.leases


def _operator_ca(tmp_path: Path) -> None:
    cert, key = _new_root("corp", TD, datetime.now(UTC))
    (tmp_path / "ca.crt").write_bytes(cert)
    (tmp_path / "ca.key").write_bytes(key)
    (tmp_path / "ca.key").chmod(0o600)


def _trusted(chain: bytes, bundle: bytes) -> bool:
    leaf = x509.load_pem_x509_certificates(chain)[0]
    for root in x509.load_pem_x509_certificates(bundle):
        try:
            leaf.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


@pytest.mark.parametrize("how", ["files-replaced-in-place", "generated-made-again"])
def test_a_signer_replaced_under_the_same_name_reissues_everyone(tmp_path: Path, how: str) -> None:
    """The settings do not change, the signing certificate does (an operator's CA renewed
    at the same paths; a generated one whose state directory was deleted): every lease is
    re-issued from it within the spread, so each proxy's certificate is trusted by the
    new bundle. A SIGHUP that changes nothing re-issues nothing."""
    clock = Clock()
    extra = ""
    if how == "files-replaced-in-place":
        _operator_ca(tmp_path)
        extra = (
            f'\n[[mesh.ca.authorities]]\nname = "corp"\n'
            f'cert = "{tmp_path / "ca.crt"}"\nkey = "{tmp_path / "ca.key"}"\n'
        )
    authority = MeshAuthority(_mesh(tmp_path, extra), clock=clock)
    token = authority.tokens.mint("shop", "web", 3600).token
    lease = authority.identities.admit(WEB, Credential("token", token=token))
    assert lease is not None
    due = lease.due
    assert authority.reconfigure(_mesh(tmp_path, extra)) is not None
    assert lease.due == due  # the same signer: nothing to re-issue
    if how == "files-replaced-in-place":
        _operator_ca(tmp_path)
    else:
        shutil.rmtree(tmp_path / "state" / "default")
    mesh = authority.reconfigure(_mesh(tmp_path, extra))
    assert mesh is not None and mesh.mtls.bundle is not None
    assert not _trusted(lease.certificate.chain_pem, mesh.mtls.bundle)
    assert lease.due <= clock.now + REISSUE_SPREAD
    clock.now += REISSUE_SPREAD
    authority.identities.renew_due()
    assert _trusted(lease.certificate.chain_pem, mesh.mtls.bundle)
    assert lease.identity.issued == 2
