"""Metrics: counted where client events are recorded, states read at scrape time, one
registry per daemon."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from envoy.config.cluster.v3 import cluster_pb2
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from xdsd.admin.metrics import Metrics
from xdsd.cache.cache import ClientIdentity, CredentialKind, SnapshotCache
from xdsd.cache.snapshot import Snapshot
from xdsd.errors import Problem, Severity
from xdsd.resources import CLUSTER, LISTENER, Resource, Version


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Config:
    errors: tuple[Problem, ...] = ()
    warnings: tuple[Problem, ...] = ()
    failed_reloads: int = 0
    loaded: object | None = field(default_factory=object)
    class_errors: tuple[Problem, ...] = ()


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, by (name, sorted labels)."""
    text = generate_latest(metrics.registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def setup() -> tuple[Metrics, SnapshotCache[str], Config, Clock]:
    clock = Clock()
    metrics = Metrics(version="9.9.9", clock=clock)
    cache: SnapshotCache[str] = SnapshotCache(clock=clock, observer=metrics)
    config = Config()
    metrics.track(cache, config)
    return metrics, cache, config, clock


def test_responses_acks_nacks_and_push_to_ack_latency() -> None:
    metrics, cache, _, clock = setup()
    cache.open_client("c1", node_id="n1", key="k", transport="ads")
    cache.open_client("c2", node_id="n2", key="k", transport="rest")
    cache.record_sent("c1", CLUSTER, Version("v1"), "1")
    clock.now += 0.04
    cache.record_ack("c1", CLUSTER, Version("v1"), "1")
    cache.record_sent("c1", CLUSTER, Version("v2"), "2")
    cache.record_nack("c1", CLUSTER, Version("v2"), "2", 3, "bad")
    cache.record_ack("c1", LISTENER, Version("old"), "")  # a resume: answers nothing sent
    cache.record_sent("c2", CLUSTER, Version("v1"), "")
    assert cache.record_not_applied("c2", CLUSTER, Version("v1"))
    assert not cache.record_not_applied("c2", CLUSTER, Version("v1"))  # the same, counted once
    got = samples(metrics)
    ads = (("transport", "ads"), ("type", "clusters"))
    rest = (("transport", "rest"), ("type", "clusters"))
    assert got["xdsd_responses_total", ads] == 2
    assert got["xdsd_responses_total", rest] == 1
    assert got["xdsd_acks_total", ads] == 1
    assert got["xdsd_acks_total", (("transport", "ads"), ("type", "listeners"))] == 1
    assert got["xdsd_nacks_total", ads] == 1
    assert got["xdsd_nacks_total", rest] == 1
    # one latency observed (the resume has none), 40 ms: in the 0.05 bucket, not 0.025
    assert got["xdsd_push_ack_seconds_count", (("type", "clusters"),)] == 1
    assert got["xdsd_push_ack_seconds_bucket", (("le", "0.05"), ("type", "clusters"))] == 1
    assert got["xdsd_push_ack_seconds_bucket", (("le", "0.025"), ("type", "clusters"))] == 0
    assert abs(got["xdsd_push_ack_seconds_sum", (("type", "clusters"),)] - 0.04) < 1e-9
    assert ("xdsd_push_ack_seconds_count", (("type", "listeners"),)) not in got


def test_states_are_read_at_scrape_time() -> None:
    metrics, cache, config, _ = setup()
    cluster = cluster_pb2.Cluster(name="a", type=cluster_pb2.Cluster.STATIC)
    snapshot = Snapshot.build([Resource.of("a", cluster)])
    cache.set("class-1", snapshot)
    for i, transport in enumerate(["ads", "ads", "rest"]):
        cache.open_client(f"c{i}", node_id=f"n{i}", key="class-1", transport=transport)
        cache.record_sent(f"c{i}", CLUSTER, Version("v1"), "1")
    cache.record_ack("c0", CLUSTER, Version("v1"), "1")
    cache.record_nack("c1", CLUSTER, Version("v1"), "1", 3, "no")
    cache.open_client("gone", node_id="g", key="class-1", transport="ads")
    cache.close_client("gone")
    config.errors = (Problem("rules/a.yaml", 3, "http", "bad"),)
    config.warnings = (Problem("rules/b.yaml", 1, "", "hm", Severity.WARNING),) * 2
    config.failed_reloads = 4
    got = samples(metrics)
    assert got["xdsd_connected_clients", (("transport", "ads"),)] == 2  # not the closed one
    assert got["xdsd_connected_clients", (("transport", "rest"),)] == 1
    assert got["xdsd_connected_clients_by_type", (("transport", "ads"), ("type", "clusters"))] == 2
    sync = {
        s: got["xdsd_client_sync", (("state", s), ("type", "clusters"))]
        for s in ("in_sync", "pending", "nacked", "not_applied")
    }
    assert sync == {"in_sync": 1, "pending": 1, "nacked": 1, "not_applied": 0}
    assert got["xdsd_config_errors", ()] == 1
    assert got["xdsd_config_warnings", ()] == 2
    assert got["xdsd_config_reloads_refused_total", ()] == 4
    assert got["xdsd_config_loaded", ()] == 1
    assert got["xdsd_node_classes", ()] == 1
    version = snapshot.version(CLUSTER)
    key = (("class", "class-1"), ("type", "clusters"), ("version", version))
    assert got["xdsd_snapshot_version_info", key] == 1
    assert got["xdsd_snapshot_resources", (("class", "class-1"), ("type", "clusters"))] == 1
    assert got["xdsd_build_info", (("version", "9.9.9"),)] == 1
    assert got["xdsd_start_time_seconds", ()] == 1000.0

    # a change shows at the next scrape, with nothing else called
    cache.close_client("c2")
    config.errors = ()
    got = samples(metrics)
    assert ("xdsd_connected_clients", (("transport", "rest"),)) not in got
    assert got["xdsd_config_errors", ()] == 0


def test_reload_durations_by_outcome() -> None:
    metrics, *_ = setup()
    metrics.observe_reload(0.003, "applied")
    metrics.observe_reload(0.2, "refused")
    got = samples(metrics)
    assert got["xdsd_reload_duration_seconds_count", (("outcome", "applied"),)] == 1
    assert got["xdsd_reload_duration_seconds_count", (("outcome", "refused"),)] == 1
    assert (
        got["xdsd_reload_duration_seconds_bucket", (("le", "0.005"), ("outcome", "applied"))] == 1
    )


def test_two_daemons_in_one_process_share_nothing() -> None:
    first, cache1, _, _ = setup()
    second, cache2, _, _ = setup()
    cache1.open_client("c", node_id="n", key="k", transport="ads")
    cache1.record_sent("c", CLUSTER, Version("v"), "1")
    labels = (("transport", "ads"), ("type", "clusters"))
    assert samples(first)["xdsd_responses_total", labels] == 1
    assert ("xdsd_responses_total", labels) not in samples(second)
    assert ("xdsd_connected_clients", (("transport", "ads"),)) not in samples(second)
    assert cache2.clients() == ()


def test_certificates_issued_and_renewed_are_read_at_scrape_time() -> None:
    metrics, *_ = setup()
    counts = [0, 0]
    metrics.track_issuance(lambda: (counts[0], counts[1]))
    assert samples(metrics)["xdsd_certificates_issued_total", ()] == 0
    counts[:] = [2, 5]  # two proxies, five renewals between them
    got = samples(metrics)
    assert got["xdsd_certificates_issued_total", ()] == 7
    assert got["xdsd_certificate_renewals_total", ()] == 5


def test_identities_and_the_soonest_expiry_are_read_at_scrape_time() -> None:
    metrics, cache, _, _ = setup()
    got = samples(metrics)
    assert ("xdsd_certificate_soonest_expiry_timestamp_seconds", ()) not in got

    def identity(not_after: float, credential: CredentialKind) -> ClientIdentity:
        return ClientIdentity(
            "spiffe://mesh.test/ns/default/sa/web",
            "01",
            datetime.fromtimestamp(not_after - 100, UTC),
            datetime.fromtimestamp(not_after, UTC),
            credential,
        )

    holders: list[tuple[str, float, CredentialKind]] = [
        ("a", 5000.0, "token"),
        ("b", 4000.0, "certificate"),
    ]
    for name, not_after, credential in holders:
        cache.open_client(name, node_id=name, key="k", transport="ads")
        cache.record_identity(name, identity(not_after, credential))
    cache.open_client("gone", node_id="g", key="k", transport="ads")
    cache.record_identity("gone", identity(3000.0, "token"))
    cache.close_client("gone")  # a disconnected client's certificate is nobody's concern
    got = samples(metrics)
    assert got["xdsd_certificate_soonest_expiry_timestamp_seconds", ()] == 4000.0
    assert got["xdsd_workload_identities", (("credential", "token"),)] == 1
    assert got["xdsd_workload_identities", (("credential", "certificate"),)] == 1
    cache.record_identity("b", identity(6000.0, "certificate"))  # renewed
    assert samples(metrics)["xdsd_certificate_soonest_expiry_timestamp_seconds", ()] == 5000.0
