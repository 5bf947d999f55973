"""Proxy states and expected proxies (``xdsd.admin.proxies``): stale after the threshold,
one vocabulary with ``xdsd status``, and which endpoints count as absent."""

from __future__ import annotations

from xdsd import status as cli_status
from xdsd.admin.proxies import (
    STATE_WORDS,
    ExpectedProxy,
    Workload,
    absent,
    client_state,
    type_state,
)
from xdsd.cache.cache import SnapshotCache, TypeStatus
from xdsd.resources import CLUSTER, Version
from xdsd.settings import DEFAULT_STALE_AFTER, Settings


def test_a_version_unanswered_past_the_threshold_is_stale() -> None:
    sent = TypeStatus(sent_version=Version("v1"), sent_at=100.0)
    assert type_state(sent, 110.0, 10.0) == "pending"  # exactly at the threshold
    assert type_state(sent, 110.5, 10.0) == "stale"
    assert type_state(TypeStatus(), 1e9, 10.0) == "pending"  # nothing sent: not stale
    acked = TypeStatus(sent_version=Version("v1"), sent_at=0.0, acked_version=Version("v1"))
    assert type_state(acked, 1e9, 10.0) == "in_sync"


def test_one_vocabulary_and_one_threshold_with_xdsd_status() -> None:
    assert {s: w.upper() for s, w in STATE_WORDS.items()} == {
        s: w for s, w in cli_status.DAEMON_STATES.items()
    }
    assert Settings().stale_after == DEFAULT_STALE_AFTER


def _cache() -> SnapshotCache[str]:
    return SnapshotCache(clock=lambda: 50.0)


WORKLOADS = {
    "web-a": Workload("default", "web", "sidecar", "10.0.0.1"),
    "web-any": Workload("default", "web", "sidecar", ""),
    "web-wild": Workload("default", "web", "sidecar", "0.0.0.0"),
    "gw": Workload("default", "web", "gateway", "10.0.0.2"),
    "vm": Workload("default", "legacy", "sidecar", "10.0.0.9"),
}
WEB = [
    ExpectedProxy("default", "web", f"10.0.0.{n}", "Service default/web (w.yaml:1)")
    for n in (1, 2, 3)
]
VM = ExpectedProxy("default", "", "10.0.0.9", "WorkloadEntry default/vm (e.yaml:1)")


def _absent_addresses(cache: SnapshotCache[str]) -> list[str]:
    return [a.expected.address for a in absent([*WEB, VM], cache.clients(), WORKLOADS)]


def test_endpoints_match_by_namespace_service_and_instance_ip() -> None:
    cache = _cache()
    assert _absent_addresses(cache) == ["10.0.0.9", "10.0.0.1", "10.0.0.2", "10.0.0.3"]
    cache.open_client("a", node_id="a", key="web-a", transport="ads")
    cache.open_client("g", node_id="g", key="gw", transport="ads")  # a gateway: no endpoint
    cache.open_client("v", node_id="v", key="vm", transport="ads")  # any service at the entry
    assert _absent_addresses(cache) == ["10.0.0.2", "10.0.0.3"]


def test_a_workload_behind_several_services_is_covered_by_a_sidecar_of_any() -> None:
    """``web-v1`` (a per-version Service, as the Gateway API's backends are) shares
    10.0.0.1 with ``web``: the ``web`` sidecar there covers both; not another address."""
    version = [
        ExpectedProxy(
            "default", "web-v1", "10.0.0.1", "Service default/web-v1 (v.yaml:1)", ("web",)
        ),
        ExpectedProxy(
            "default", "web-v1", "10.0.0.3", "Service default/web-v1 (v.yaml:1)", ("web",)
        ),
    ]
    cache = _cache()
    cache.open_client("a", node_id="a", key="web-a", transport="ads")
    left = absent([*WEB, *version], cache.clients(), WORKLOADS)
    assert [(a.expected.service, a.expected.address) for a in left] == [
        ("web", "10.0.0.2"),
        ("web", "10.0.0.3"),
        ("web-v1", "10.0.0.3"),
    ]


def test_expected_proxies_name_the_services_sharing_an_address() -> None:
    from xdsd.model import Mesh, Service
    from xdsd.model.service import Endpoint
    from xdsd.state import expected_proxies

    services = [
        Service("reviews", endpoints=(Endpoint("10.0.0.1"), Endpoint("10.0.0.2"))),
        Service("reviews-v1", endpoints=(Endpoint("10.0.0.1"),)),
    ]
    found = {
        (p.service, p.address): p.also for p in expected_proxies(Mesh(services=tuple(services)))
    }
    assert found == {
        ("reviews", "10.0.0.1"): ("reviews-v1",),
        ("reviews", "10.0.0.2"): (),
        ("reviews-v1", "10.0.0.1"): ("reviews",),
    }


def test_a_proxy_without_instance_ip_counts_for_one_endpoint_of_its_service() -> None:
    cache = _cache()
    cache.open_client("a", node_id="a", key="web-a", transport="ads")
    cache.open_client("x", node_id="x", key="web-any", transport="ads")
    assert _absent_addresses(cache) == ["10.0.0.9", "10.0.0.3"]  # the lowest left is taken
    cache.open_client("y", node_id="y", key="web-wild", transport="ads")  # 0.0.0.0 likewise
    assert _absent_addresses(cache) == ["10.0.0.9"]


def test_an_absent_endpoint_names_the_proxy_last_seen_there() -> None:
    cache = _cache()
    cache.open_client("a", node_id="web-1", key="web-a", transport="ads", agent="envoy 1.40.0")
    cache.close_client("a")
    found = {a.expected.address: a.last_seen for a in absent(WEB, cache.clients(), WORKLOADS)}
    seen = found["10.0.0.1"]
    assert seen is not None and seen.node_id == "web-1" and seen.agent == "envoy 1.40.0"
    assert found["10.0.0.2"] is None


def test_a_clients_state_is_its_worst_types() -> None:
    cache = _cache()
    cache.open_client("c", node_id="c", key="web-a", transport="ads")
    cache.record_sent("c", CLUSTER, Version("v1"), "1")
    (client,) = cache.clients()
    assert client_state(client, 55.0, 10.0) == "pending"
    assert client_state(client, 61.0, 10.0) == "stale"
