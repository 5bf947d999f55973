"""Identities in the operator's views: ``/debug/clients``' JSON of a client holding one,
and when a certificate counts as expiring soon."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from xdsd.admin import client_json
from xdsd.admin.identities import expiring_soon, soonest_expiry
from xdsd.ca.authority import CertificateAuthority
from xdsd.ca.sds import workload_secret
from xdsd.cache.cache import ClientIdentity, SnapshotCache
from xdsd.model.mesh_config import MeshCA
from xdsd.resources import to_json
from xdsd.resources.redaction import REDACTED, redact

DAY = 86400.0


def identity(not_before: float, life: float = DAY) -> ClientIdentity:
    return ClientIdentity(
        "spiffe://mesh.test/ns/shop/sa/web",
        "7f3a",
        datetime.fromtimestamp(not_before, UTC),
        datetime.fromtimestamp(not_before + life, UTC),
        "token",
        token_id="tok-1",
        issued=3,
    )


def test_client_json_carries_the_identity_and_nothing_secret() -> None:
    cache: SnapshotCache[str] = SnapshotCache(clock=lambda: 1.0)
    cache.open_client("c1", node_id="web-1", key="k", transport="ads")
    assert client_json(cache.clients()[0], now=10.0)["identity"] is None
    cache.record_identity("c1", identity(0.0))
    (client,) = cache.clients()
    got = client_json(client, now=DAY / 2)["identity"]
    assert got == {
        "spiffe_id": "spiffe://mesh.test/ns/shop/sa/web",
        "serial": "7f3a",
        "not_before": 0.0,
        "issued_at": None,
        "not_after": DAY,
        "expires_in": DAY / 2,
        "expiring_soon": False,
        "credential": "token",
        "token_id": "tok-1",
        "issued": 3,
    }
    assert "PRIVATE KEY" not in json.dumps(client_json(client))


def test_expiring_soon_is_a_late_renewal() -> None:
    issued = identity(0.0)
    assert not expiring_soon(issued, DAY / 2)  # the renewal point
    assert not expiring_soon(issued, DAY * 0.74)
    assert expiring_soon(issued, DAY * 0.76)  # past half of what was left at renewal
    assert expiring_soon(issued, DAY + 1)  # expired
    assert not expiring_soon(issued, DAY * 0.85, renew_fraction=0.8)
    assert expiring_soon(issued, DAY * 0.91, renew_fraction=0.8)
    # A short-lived certificate whose not_before is backdated 5 minutes for clock skew:
    # its life counts from when it was made, not from not_before.
    short = replace(identity(-300.0, life=320.0), issued_at=datetime.fromtimestamp(0.0, UTC))
    assert not expiring_soon(short, 10.0) and expiring_soon(short, 16.0)


def test_soonest_expiry_of_connected_clients_only() -> None:
    cache: SnapshotCache[str] = SnapshotCache(clock=lambda: 1.0)
    assert soonest_expiry(cache.clients()) is None
    for name, start in (("a", 100.0), ("b", 50.0), ("c", 10.0)):
        cache.open_client(name, node_id=name, key="k", transport="ads")
        cache.record_identity(name, identity(start))
    cache.close_client("c")
    assert soonest_expiry(cache.clients()) == 50.0 + DAY


def test_a_workload_secret_in_a_dump_keeps_its_chain_and_loses_its_key(tmp_path: Path) -> None:
    """The ``default`` secret xdsd's CA makes (a real key pair), shown as the config dump
    shows resources: the private key is redacted in every form (PEM text, base64)."""
    ca = CertificateAuthority(MeshCA(state_dir=str(tmp_path / "state")), "mesh.test")
    issued = ca.issue("default", "web")
    assert b"PRIVATE KEY" in issued.key_pem  # there was a key to leak
    resource = workload_secret(issued)
    assert resource.parsed is not None
    shown = redact({"@type": resource.type_url, **to_json(resource.parsed)})
    text = json.dumps(shown)
    assert "PRIVATE KEY" not in text
    assert base64.b64encode(issued.key_pem).decode()[:40] not in text
    tls = shown["tls_certificate"]
    assert tls["private_key"] == {"inline_bytes": REDACTED}
    assert base64.b64decode(tls["certificate_chain"]["inline_bytes"]) == issued.chain_pem
