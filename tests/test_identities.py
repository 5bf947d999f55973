"""Identities issued to streams (``xdsd.identities``): admission by token or certificate,
renewal on a fake clock, revocation and re-issue on new settings, and the per-client view
a stream sends (``StreamClient.view``)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from xdsd.ca.authority import CertificateAuthority
from xdsd.ca.tokens import (
    EXPIRY_SKEW_SECONDS,
    InvalidToken,
    TokenAuthority,
    TokenClaims,
    token_expired,
)
from xdsd.cache.snapshot import Snapshot
from xdsd.identities import REISSUE_SPREAD, Identities
from xdsd.model.mesh_config import WORKLOAD_SECRET, CAAuthority, MeshCA
from xdsd.resources import SECRET, Resource
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
