"""The identity a client holds in its status record (``SnapshotCache.record_identity``)."""

from __future__ import annotations

from datetime import UTC, datetime

from xdsd.cache.cache import ClientIdentity, SnapshotCache
from xdsd.resources import CLUSTER, Version


def _identity(serial: str) -> ClientIdentity:
    return ClientIdentity(
        "spiffe://cluster.local/ns/default/sa/web",
        serial,
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 1, 2, tzinfo=UTC),
        "token",
        token_id="t1",
    )


def test_identity_is_recorded_and_survives_type_updates() -> None:
    cache: SnapshotCache[str] = SnapshotCache(clock=lambda: 1.0)
    cache.open_client("c1", node_id="n", key="k", transport="ads")
    assert cache.client("c1").identity is None  # type: ignore[union-attr]
    cache.record_identity("c1", _identity("01"))
    cache.record_sent("c1", CLUSTER, Version("v1"), "1")
    status = cache.client("c1")
    assert status is not None and status.identity == _identity("01")
    cache.record_identity("c1", _identity("02"))
    assert cache.client("c1").identity.serial == "02"  # type: ignore[union-attr]


def test_identity_of_a_closed_or_unknown_client_is_ignored() -> None:
    cache: SnapshotCache[str] = SnapshotCache(clock=lambda: 1.0)
    cache.record_identity("nobody", _identity("01"))
    assert cache.client("nobody") is None
    cache.open_client("c1", node_id="n", key="k", transport="ads")
    cache.record_identity("c1", _identity("01"))
    cache.close_client("c1")
    cache.record_identity("c1", _identity("02"))
    status = cache.client("c1")
    assert status is not None and status.identity is not None
    assert status.identity.serial == "01"  # the last one it held, kept for inspection
