"""REST pollers' identities under xdsd's CA (``xdsd.transports.rest_identity``), on fake
clocks: a lease per client and credential, issued on the first SDS poll that needs it,
renewed by the poll after its renewal time (never by the renewal task), dropped once the
client stops polling; and ``RestDiscovery`` answering a real class snapshot with the
client's own ``default`` secret for a certificate that may speak for the node, 403
without one, the versions of other types untouched."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from tests.paths import EXAMPLE_CONFIG
from xdsd.app import MeshState
from xdsd.ca.authority import CertificateAuthority
from xdsd.ca.tokens import InvalidToken, TokenClaims
from xdsd.cache.snapshot import Snapshot
from xdsd.identities import Identities, MeshAuthority
from xdsd.model.mesh_config import WORKLOAD_SECRET, MeshCA
from xdsd.resources import SECRET, Resource, TypeUrl
from xdsd.settings import Settings
from xdsd.transports.identity import Credential
from xdsd.transports.limits import NodeAuthorizer, NodeIdentity, Refused
from xdsd.transports.rest import RestDiscovery
from xdsd.transports.rest_identity import (
    REST_CERTIFICATE_REQUIRED,
    PolledIdentities,
    rest_credential,
)

TD = "mesh.test"
WEB = NodeIdentity("rest-web-1", "web", "shop")
WEB_CERT = Credential("certificate", sans=(f"spiffe://{TD}/ns/shop/sa/web",))
CDS = TypeUrl("type.googleapis.com/envoy.config.cluster.v3.Cluster")


class Clock:
    """A clock that moves only when told (wall or monotonic seconds)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _never_a_token(token: str) -> TokenClaims:
    raise InvalidToken("malformed", "no tokens over REST")


def _identities(tmp_path: Path, wall: Clock) -> Identities:
    ca = CertificateAuthority(MeshCA(str(tmp_path / "state"), workload_ttl_seconds=600.0), TD)
    return Identities(issue=ca.issue, verify=_never_a_token, trust_domain=TD, clock=wall)


def _setup(tmp_path: Path, **kwargs: Any) -> tuple[Identities, PolledIdentities, Clock, Clock]:
    wall, mono = Clock(time.time()), Clock(1000.0)
    ids = _identities(tmp_path, wall)
    return ids, PolledIdentities(ids, clock=mono, **kwargs), wall, mono


def _secret(snapshot: Snapshot) -> secret_pb2.Secret:
    secret = secret_pb2.Secret()
    snapshot.get(SECRET)[WORKLOAD_SECRET].to_any().Unpack(secret)
    return secret


def _serial(snapshot: Snapshot) -> int:
    chain = _secret(snapshot).tls_certificate.certificate_chain.inline_bytes
    return x509.load_pem_x509_certificate(chain).serial_number


BASE = Snapshot.build([])


def test_the_first_sds_poll_issues_and_later_polls_reuse_the_view(tmp_path: Path) -> None:
    ids, polled, _, _ = _setup(tmp_path)
    assert polled.wants(SECRET, frozenset({WORKLOAD_SECRET}))
    assert not polled.wants(SECRET, frozenset())  # SDS has no wildcard
    assert not polled.wants(SECRET, frozenset({"ROOTCA"}))
    assert not polled.wants(CDS, frozenset())
    view, lease = polled.view("rest-web-1", WEB, WEB_CERT, BASE)
    assert lease is not None and ids.issued_total == 1
    assert lease.identity.spiffe_id == f"spiffe://{TD}/ns/shop/sa/web"
    assert WORKLOAD_SECRET in view.get(SECRET) and WORKLOAD_SECRET not in BASE.get(SECRET)
    again, same = polled.view("rest-web-1", WEB, WEB_CERT, BASE)
    assert again is view and same is lease and ids.issued_total == 1


def test_a_lease_is_renewed_by_the_poll_after_its_renewal_time(tmp_path: Path) -> None:
    ids, polled, wall, mono = _setup(tmp_path)
    view, lease = polled.view("rest-web-1", WEB, WEB_CERT, BASE)
    assert lease is not None
    due = ids.due_time(lease.certificate)  # type: ignore[attr-defined]
    assert ids.next_due() is None  # the renewal task leaves polled leases alone
    wall.now = due - 1
    assert polled.view("rest-web-1", WEB, WEB_CERT, BASE)[0] is view  # not yet due: kept
    wall.now = due + 1
    assert ids.renew_due() == 0 and lease.identity.issued == 1  # no poll, no renewal
    mono.now += 1
    renewed, _ = polled.view("rest-web-1", WEB, WEB_CERT, BASE)
    assert renewed is not view and ids.renewed_total == 1
    assert _serial(renewed) != _serial(view)
    assert renewed.version_for(SECRET, [WORKLOAD_SECRET]) != view.version_for(
        SECRET, [WORKLOAD_SECRET]
    )
    assert lease.identity.issued == 2


def test_a_new_signing_authority_reissues_on_the_next_poll(tmp_path: Path) -> None:
    ids, polled, _, _ = _setup(tmp_path)
    view, _ = polled.view("rest-web-1", WEB, WEB_CERT, BASE)
    ids.update(
        issue=ids.issue,
        verify=ids.verify,
        renew_fraction=ids.renew_fraction,
        revoked=frozenset(),
        reissue=True,
    )
    again, _ = polled.view("rest-web-1", WEB, WEB_CERT, BASE)
    assert _serial(again) != _serial(view) and ids.renewed_total == 1


def test_a_silent_client_loses_its_lease(tmp_path: Path) -> None:
    ids, polled, _, mono = _setup(tmp_path, idle_timeout=30.0)
    polled.view("rest-web-1", WEB, WEB_CERT, BASE)
    mono.now += 29
    assert polled.expire() == [] and len(ids.leases) == 1
    mono.now += 1
    assert polled.expire() == ["rest-web-1"]
    assert not ids.leases and len(polled) == 0
    polled.view("rest-web-1", WEB, WEB_CERT, BASE)  # back: a fresh lease
    assert ids.issued_total == 2


def test_another_claim_or_credential_gets_another_lease(tmp_path: Path) -> None:
    ids, polled, _, _ = _setup(tmp_path)
    _, first = polled.view("rest-web-1", WEB, WEB_CERT, BASE)
    granted = Credential("certificate", sans=("spiffe://corp/ops",))
    _, second = polled.view("rest-web-1", WEB, granted, BASE)
    assert second is not first and ids.leases == {second}
    db = WEB._replace(service="db")
    _, third = polled.view("rest-web-1", db, granted, BASE)
    assert third is not None and third.identity.spiffe_id.endswith("/sa/db")
    assert ids.leases == {third} and len(polled) == 1


def test_leases_are_bounded(tmp_path: Path) -> None:
    ids, polled, _, mono = _setup(tmp_path, max_leases=2)
    for i in range(3):
        mono.now += 1
        polled.view(f"rest-web-{i}", WEB._replace(node_id=f"web-{i}"), WEB_CERT, BASE)
    assert polled.lease("rest-web-0") is None and len(polled) == 2 and len(ids.leases) == 2
    polled.close()
    assert not ids.leases and len(polled) == 0


def test_proxyless_clients_get_no_lease(tmp_path: Path) -> None:
    ids, polled, _, _ = _setup(tmp_path)
    view, lease = polled.view("rest-g", WEB._replace(role="proxyless"), WEB_CERT, BASE)
    assert view is BASE and lease is None and not ids.leases


def test_a_rest_credential_needs_a_judged_certificate() -> None:
    cert = {"subjectAltName": (("URI", f"spiffe://{TD}/ns/shop/sa/web"),)}
    enforcing = NodeAuthorizer((), trust_domain=TD)
    assert rest_credential(enforcing, cert) == WEB_CERT
    for authorizer, peer in ((None, cert), (NodeAuthorizer(()), cert), (enforcing, None)):
        with pytest.raises(Refused) as info:
            rest_credential(authorizer, peer)
        assert info.value is REST_CERTIFICATE_REQUIRED
    assert REST_CERTIFICATE_REQUIRED.http_status == 403
    assert "client certificate" in REST_CERTIFICATE_REQUIRED.message


# -- RestDiscovery with [mesh.ca] ---------------------------------------------------------


def _discovery(
    tmp_path: Path, authorizer: NodeAuthorizer | None = None
) -> tuple[RestDiscovery, MeshAuthority]:
    settings = tmp_path / "settings.toml"
    settings.write_text(
        f'[mesh.mtls]\nmode = "STRICT"\ntrust_domain = "{TD}"\n\n'
        f'[mesh.ca]\nstate_dir = "{tmp_path / "state"}"\n'
    )
    authority = MeshAuthority(Settings.from_file(str(settings)).mesh)
    state = MeshState(str(EXAMPLE_CONFIG), mesh_config=authority.mesh)
    state.reload()
    rest = RestDiscovery(
        state,
        authorizer=authorizer if authorizer is not None else NodeAuthorizer((), trust_domain=TD),
        identities=authority.identities,
    )
    return rest, authority


def _poll(
    rest: RestDiscovery,
    type_url: TypeUrl,
    names: list[str],
    cert: dict[str, Any] | None,
    *,
    service: str = "productpage",
    version: str = "",
) -> tuple[int, dict[str, Any]]:
    body = {
        "version_info": version,
        "node": {"id": "pp-1", "cluster": service, "metadata": {"instance_ip": "10.0.0.9"}},
        "resource_names": names,
        "type_url": type_url,
    }
    try:
        response = rest.answer(type_url, json.dumps(body).encode(), peer_cert=cert)
    except Refused as e:
        return e.http_status, {"message": e.message, "reason": e.reason}
    text = response.body if isinstance(response.body, bytes) else b"{}"
    return response.status, json.loads(text or b"{}")


def _cert(service: str) -> dict[str, Any]:
    return {"subjectAltName": (("URI", f"spiffe://{TD}/ns/default/sa/{service}"),)}


def test_a_rest_poller_with_its_mesh_certificate_gets_its_own_secret(tmp_path: Path) -> None:
    rest, authority = _discovery(tmp_path)
    status, cds = _poll(rest, CDS, [], _cert("productpage"))
    assert status == 200
    status, sds = _poll(rest, SECRET, [WORKLOAD_SECRET], _cert("productpage"))
    assert status == 200, sds
    (secret,) = sds["resources"]
    chain = secret["tls_certificate"]["certificate_chain"]["inline_bytes"]
    assert secret["name"] == WORKLOAD_SECRET and chain
    assert authority.identities.issued_total == 1
    # the client's status shows the identity; the key is never rendered into the cache
    status_record = rest.source.cache.client("rest-pp-1")
    assert status_record is not None and status_record.identity is not None
    assert status_record.identity.spiffe_id == f"spiffe://{TD}/ns/default/sa/productpage"
    assert len(rest.renderer) == 1  # only the CDS response was kept
    # polled again at the version it holds: 304, no new certificate; CDS unmoved
    assert (
        _poll(rest, SECRET, [WORKLOAD_SECRET], _cert("productpage"), version=sds["version_info"])[0]
        == 304
    )
    assert _poll(rest, CDS, [], _cert("productpage"), version=cds["version_info"])[0] == 304
    assert authority.identities.issued_total == 1


def test_a_rest_poller_without_a_usable_certificate_is_403(tmp_path: Path) -> None:
    # no tls_client_ca: nothing judges certificates, so no poll of a proxy is served
    rest, authority = _discovery(tmp_path, NodeAuthorizer(()))
    for type_url, names in ((SECRET, [WORKLOAD_SECRET]), (CDS, [])):
        status, body = _poll(rest, type_url, names, None)
        assert status == 403 and body["reason"] == "identity_over_rest"
        assert "client certificate" in body["message"]
    # client certificates judged: none, or one for another service (A claiming B)
    rest, authority = _discovery(tmp_path)
    for cert in (None, _cert("reviews")):
        status, body = _poll(rest, SECRET, [WORKLOAD_SECRET], cert)
        assert status == 403 and body["reason"] == "permission_denied"
    assert not authority.identities.leases


def test_resources_of_the_view_are_the_leases(tmp_path: Path) -> None:
    """The view lays exactly the lease's resources over the class snapshot."""
    _, polled, _, _ = _setup(tmp_path)
    view, lease = polled.view("rest-web-1", WEB, WEB_CERT, BASE)
    assert lease is not None
    (own,) = lease.resources()
    assert isinstance(own, Resource) and view.get(SECRET)[WORKLOAD_SECRET] is own
