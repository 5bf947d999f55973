"""SnapshotCache: snapshots per key, watchers, and client status."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2

from xdsd.cache.cache import ClientStatus, SnapshotCache
from xdsd.cache.snapshot import Snapshot
from xdsd.resources import CLUSTER, LISTENER, Resource, Version


def snap(*clusters: str) -> Snapshot:
    return Snapshot.build(
        [
            Resource.of(n, cluster_pb2.Cluster(name=n, type=cluster_pb2.Cluster.STATIC))
            for n in clusters
        ]
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def status(cache: SnapshotCache[str], client_id: str = "c1") -> ClientStatus:
    found = cache.client(client_id)
    assert found is not None
    return found


# -- snapshots and watchers ---------------------------------------------------------------


def test_keys_without_a_snapshot() -> None:
    cache: SnapshotCache[tuple[str, str]] = SnapshotCache()
    assert cache.get(("sidecar", "reviews")) is None
    assert cache.keys() == ()
    seen: list[Snapshot] = []
    assert cache.subscribe(("sidecar", "reviews"), seen.append) is None
    first = snap("a")
    assert cache.set(("sidecar", "reviews"), first)
    assert seen == [first]
    assert cache.get(("sidecar", "reviews")) is first
    assert cache.keys() == (("sidecar", "reviews"),)


def test_watchers_are_called_with_each_new_snapshot_of_their_key_only() -> None:
    cache: SnapshotCache[str] = SnapshotCache()
    first, second = snap("a"), snap("a", "b")
    cache.set("reviews", first)
    reviews: list[Snapshot] = []
    ratings: list[Snapshot] = []
    assert cache.subscribe("reviews", reviews.append) is first  # start from the current
    cache.subscribe("ratings", ratings.append)
    assert cache.set("reviews", second)
    assert reviews == [second]
    assert ratings == []


def test_same_content_is_not_republished() -> None:
    cache: SnapshotCache[str] = SnapshotCache()
    first = snap("a")
    cache.set("k", first)
    seen: list[Snapshot] = []
    cache.subscribe("k", seen.append)
    assert not cache.set("k", snap("a"))  # rebuilt, same versions
    assert seen == []
    assert cache.get("k") is first


def test_unsubscribe_stops_calls_and_is_idempotent() -> None:
    cache: SnapshotCache[str] = SnapshotCache()
    seen: list[Snapshot] = []
    cache.subscribe("k", seen.append)
    cache.subscribe("k", seen.append)  # two streams may share a callable shape
    assert cache.watcher_count("k") == 2
    cache.unsubscribe("k", seen.append)  # an equal bound method removes one
    cache.unsubscribe("k", seen.append)
    cache.unsubscribe("k", seen.append)  # not subscribed any more: ignored
    cache.unsubscribe("other", seen.append)
    cache.set("k", snap("a"))
    assert seen == []
    assert cache.watcher_count() == 0


def test_a_watcher_may_unsubscribe_while_being_notified() -> None:
    cache: SnapshotCache[str] = SnapshotCache()
    calls: list[str] = []

    def once(_: Snapshot) -> None:
        calls.append("once")
        cache.unsubscribe("k", once)

    cache.subscribe("k", once)
    cache.subscribe("k", lambda _: calls.append("always"))
    cache.set("k", snap("a"))
    cache.set("k", snap("b"))
    assert calls == ["once", "always", "always"]


def test_discard_forgets_the_snapshot_but_keeps_watchers() -> None:
    cache: SnapshotCache[str] = SnapshotCache()
    seen: list[Snapshot] = []
    cache.subscribe("k", seen.append)
    cache.set("k", snap("a"))
    cache.discard("k")
    assert cache.get("k") is None
    again = snap("a")
    assert cache.set("k", again)  # no current snapshot: published again
    assert seen[-1] is again


# -- client status ------------------------------------------------------------------------


def test_client_record_lifecycle_uses_the_clock() -> None:
    clock = Clock()
    cache: SnapshotCache[str] = SnapshotCache(clock=clock)
    cache.open_client("c1", node_id="reviews-1", key="reviews", transport="ads")
    opened = status(cache)
    assert (opened.node_id, opened.key, opened.transport) == ("reviews-1", "reviews", "ads")
    assert opened.connected and opened.connected_at == 1000.0
    clock.now = 1005.0
    cache.close_client("c1")
    closed = status(cache)
    assert not closed.connected and closed.disconnected_at == 1005.0
    assert opened.connected  # records are immutable: the old one did not change


def test_sent_ack_nack_per_type() -> None:
    clock = Clock()
    cache: SnapshotCache[str] = SnapshotCache(clock=clock)
    cache.open_client("c1", node_id="n", key="k", transport="ads")
    cache.record_sent("c1", CLUSTER, Version("v1"), "1")
    cache.record_ack("c1", CLUSTER, Version("v1"), "1")
    clock.now = 1001.0
    cache.record_sent("c1", CLUSTER, Version("v2"), "2")
    assert cache.record_nack("c1", CLUSTER, Version("v2"), "2", 3, "bad")
    assert not cache.record_nack("c1", CLUSTER, Version("v2"), "2", 3, "bad")  # not news
    assert cache.record_nack("c1", CLUSTER, Version("v2"), "2", 3, "worse")
    cds = status(cache).type_status(CLUSTER)
    assert (cds.sent_version, cds.sent_nonce, cds.sent_at) == ("v2", "2", 1001.0)
    assert (cds.acked_version, cds.acked_at) == ("v1", 1000.0)
    assert cds.nack is not None
    assert (cds.nack.version, cds.nack.message, cds.nack.at) == ("v2", "worse", 1001.0)
    assert status(cache).type_status(LISTENER).sent_version is None
    cache.record_ack("c1", CLUSTER, Version("v3"), "3")  # a newer version applied
    assert status(cache).type_status(CLUSTER).nack is None


def test_not_applied_is_flagged_once_and_cleared_by_an_ack() -> None:
    cache: SnapshotCache[str] = SnapshotCache()
    cache.open_client("rest:n", node_id="n", key="k", transport="rest")
    cache.record_sent("rest:n", CLUSTER, Version("v2"), "")
    assert cache.record_not_applied("rest:n", CLUSTER, Version("v2"))
    assert not cache.record_not_applied("rest:n", CLUSTER, Version("v2"))
    assert status(cache, "rest:n").type_status(CLUSTER).not_applied
    cache.record_ack("rest:n", CLUSTER, Version("v3"), "")
    assert not status(cache, "rest:n").type_status(CLUSTER).not_applied


def test_events_of_unknown_clients_are_ignored() -> None:
    cache: SnapshotCache[str] = SnapshotCache()
    cache.record_sent("ghost", CLUSTER, Version("v"), "1")
    assert not cache.record_nack("ghost", CLUSTER, Version("v"), "1", 3, "x")
    assert not cache.record_not_applied("ghost", CLUSTER, Version("v"))
    cache.close_client("ghost")
    assert cache.clients() == ()


def test_disconnected_records_are_bounded() -> None:
    cache: SnapshotCache[str] = SnapshotCache(max_disconnected=2)
    for i in range(4):
        cache.open_client(f"c{i}", node_id="n", key="k", transport="ads")
    cache.open_client("live", node_id="n", key="k", transport="ads")
    for i in range(4):
        cache.close_client(f"c{i}")
    assert [c.client_id for c in cache.clients()] == ["c2", "c3", "live"]
    cache.open_client("c3", node_id="n", key="k", transport="ads")  # reconnects
    assert status(cache, "c3").connected


def test_what_a_new_stream_says_it_holds_counts_as_sent_and_acknowledged() -> None:
    """issue 14 #13: after a restart the client's first request says what it holds (no
    nonce); with nothing to send, that is in sync; a response that follows replaces it."""
    cache: SnapshotCache[str] = SnapshotCache(clock=Clock())
    cache.open_client("c1", node_id="n", key="k", transport="ads")
    cache.record_ack("c1", CLUSTER, Version("v1"), "")
    cds = status(cache).type_status(CLUSTER)
    assert (cds.sent_version, cds.acked_version, cds.state) == ("v1", "v1", "in_sync")
    cache.record_sent("c1", CLUSTER, Version("v2"), "1")  # it held an older version
    assert status(cache).type_status(CLUSTER).state == "pending"
    cache.record_ack("c1", LISTENER, Version("v9"), "5")  # an answer to nothing sent
    assert status(cache).type_status(LISTENER).state == "pending"


# -- holding classes ----------------------------------------------------------------------


def test_a_snapshot_goes_with_the_last_client_that_held_it() -> None:
    cache: SnapshotCache[str] = SnapshotCache()
    watcher: list[Snapshot] = []
    cache.set("stream", snap("a"))
    cache.open_client("s1", node_id="n", key="stream", transport="ads")
    cache.subscribe("stream", watcher.append)
    cache.unsubscribe("stream", watcher.append)
    assert cache.get("stream") is not None  # the client record still holds it
    cache.close_client("s1")
    assert cache.get("stream") is None and cache.keys() == ()


def test_a_poller_that_moves_to_another_class_lets_the_old_one_go() -> None:
    cache: SnapshotCache[str] = SnapshotCache()
    for i in range(100):
        key = f"ip-{i}"
        cache.set(key, snap("a"))
        cache.open_client("rest-mover", node_id="mover", key=key, transport="rest")
    assert cache.keys() == ("ip-99",)
    cache.open_client("rest-other", node_id="other", key="ip-99", transport="rest")
    cache.close_client("rest-mover")
    assert cache.keys() == ("ip-99",)  # still held by the other poller


def test_evict_unheld_keeps_every_held_class() -> None:
    cache: SnapshotCache[str] = SnapshotCache()
    for key in ("watched", "polled", "orphan-1", "orphan-2"):
        cache.set(key, snap("a"))
    cache.subscribe("watched", lambda _s: None)
    cache.open_client("p", node_id="p", key="polled", transport="rest")
    assert cache.evict_unheld() == 2
    assert sorted(cache.keys()) == ["polled", "watched"]
    assert cache.held("watched") and cache.held("polled") and not cache.held("orphan-1")


def test_a_clients_agent_stays_through_sends_acks_and_closing() -> None:
    cache: SnapshotCache[str] = SnapshotCache(clock=lambda: 1.0)
    cache.open_client("c", node_id="n", key="k", transport="ads", agent="envoy 1.36.2")
    cache.record_sent("c", CLUSTER, Version("v1"), "1")
    cache.record_ack("c", CLUSTER, Version("v1"), "1")
    assert (found := cache.client("c")) is not None and found.agent == "envoy 1.36.2"
    cache.close_client("c")
    assert (gone := cache.client("c")) is not None and gone.agent == "envoy 1.36.2"
