"""SotwStream, driven synchronously with real Envoy messages (docs/protocol.md, rules 1-13)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ep_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import duration_pb2

from xdsd.cache.cache import SnapshotCache
from xdsd.cache.snapshot import Snapshot
from xdsd.protocol import Ack, Event, Nack, ProtocolError, Response, record_events
from xdsd.protocol.sotw import SotwStream, Subscription
from xdsd.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    SHORT_NAMES,
    Resource,
    TypeUrl,
    Version,
    pack,
)

NODE = base_pb2.Node(id="sidecar~10.0.0.1~reviews-1", cluster="reviews")
ADS = config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource())


# -- real resources ----------------------------------------------------------------------


def cluster(name: str, *, timeout: int = 1) -> Resource:
    return Resource.of(
        name,
        cluster_pb2.Cluster(
            name=name,
            type=cluster_pb2.Cluster.EDS,
            eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ADS),
            connect_timeout=duration_pb2.Duration(seconds=timeout),
        ),
    )


def endpoints(name: str, *addresses: str) -> Resource:
    lb = [
        ep_pb2.LbEndpoint(
            endpoint=ep_pb2.Endpoint(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(address=a, port_value=8080)
                )
            )
        )
        for a in addresses
    ]
    return Resource.of(
        name,
        endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name, endpoints=[ep_pb2.LocalityLbEndpoints(lb_endpoints=lb)]
        ),
    )


def listener(name: str, route: str, port: int = 15001) -> Resource:
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=name, rds=hcm_pb2.Rds(route_config_name=route, config_source=ADS)
    )
    return Resource.of(
        name,
        listener_pb2.Listener(
            name=name,
            address=address_pb2.Address(
                socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=port)
            ),
            filter_chains=[
                listener_components_pb2.FilterChain(
                    filters=[
                        listener_components_pb2.Filter(
                            name="envoy.filters.network.http_connection_manager",
                            typed_config=pack(hcm),
                        )
                    ]
                )
            ],
        ),
    )


def routes(name: str, *clusters: str) -> Resource:
    return Resource.of(
        name,
        route_pb2.RouteConfiguration(
            name=name,
            virtual_hosts=[
                route_components_pb2.VirtualHost(
                    name=c,
                    domains=[c],
                    routes=[
                        route_components_pb2.Route(
                            match=route_components_pb2.RouteMatch(prefix="/"),
                            route=route_components_pb2.RouteAction(cluster=c),
                        )
                    ],
                )
                for c in clusters
            ],
        ),
    )


def secret(name: str, value: str = "s3cret") -> Resource:
    return Resource.of(
        name,
        secret_pb2.Secret(
            name=name,
            generic_secret=secret_pb2.GenericSecret(
                secret=base_pb2.DataSource(inline_string=value)
            ),
        ),
    )


def mesh(
    hosts: dict[str, str] | None = None,
    routed: Sequence[str] | None = None,
    *,
    timeouts: dict[str, int] | None = None,
    extra: Iterable[Resource] = (),
) -> Snapshot:
    """Clusters with their endpoints (name → address), listener "http" using route "r",
    which routes to ``routed`` (default: every cluster)."""
    hosts = {"a": "10.0.0.1"} if hosts is None else hosts
    routed = list(hosts) if routed is None else routed
    resources = [listener("http", "r"), routes("r", *routed), *extra]
    for name, address in hosts.items():
        resources += [
            cluster(name, timeout=(timeouts or {}).get(name, 1)),
            endpoints(name, address),
        ]
    return Snapshot.build(resources)


# -- a tiny client -----------------------------------------------------------------------


class Client:
    """Plays the client side of one stream: remembers per type the names it asked for,
    the last nonce it saw and the last version it accepted, like Envoy does."""

    def __init__(self, stream: SotwStream) -> None:
        self.stream = stream
        self.first = True
        self.names: dict[TypeUrl, list[str]] = {}
        self.nonce: dict[TypeUrl, str] = {}
        self.version: dict[TypeUrl, str] = {}

    def request(
        self,
        type_url: TypeUrl,
        names: Sequence[str] | None = None,
        *,
        error: str | None = None,
        nonce: str | None = None,
        version: str | None = None,
    ) -> list[Event]:
        if names is not None:
            self.names[type_url] = list(names)
        req = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            resource_names=self.names.get(type_url, []),
            version_info=self.version.get(type_url, "") if version is None else version,
            response_nonce=self.nonce.get(type_url, "") if nonce is None else nonce,
        )
        if self.first:
            req.node.CopyFrom(NODE)
            self.first = False
        if error is not None:
            req.error_detail.code = 3
            req.error_detail.message = error
        return self.stream.on_request(req)

    def ack(self, response: Response, names: Sequence[str] | None = None) -> list[Event]:
        self.nonce[response.type_url] = response.nonce
        self.version[response.type_url] = response.version
        return self.request(response.type_url, names)

    def nack(self, response: Response, error: str = "rejected") -> list[Event]:
        self.nonce[response.type_url] = response.nonce
        return self.request(response.type_url, error=error)


def sent(events: Iterable[Event]) -> list[Response]:
    return [e for e in events if isinstance(e, Response)]


def only(events: Iterable[Event]) -> Response:
    out = sent(events)
    assert len(out) == 1, out
    return out[0]


def summary(events: Iterable[Event]) -> list[tuple[str, tuple[str, ...]]]:
    """Responses as (short type, names), for ordering assertions."""
    return [(SHORT_NAMES[r.type_url], r.names) for r in sent(events)]


def connected(snapshot: Snapshot | None = None) -> Client:
    """A client on a new ADS stream."""
    return Client(SotwStream(snapshot=snapshot))


def steady(snapshot: Snapshot) -> Client:
    """A client on an ADS stream that received and ACKed CDS, EDS (every cluster), LDS
    and RDS."""
    client = connected(snapshot)
    client.ack(only(client.request(CLUSTER)))
    client.ack(only(client.request(ENDPOINT, sorted(snapshot.get(ENDPOINT)))))
    client.ack(only(client.request(LISTENER)))
    client.ack(only(client.request(ROUTE, ["r"])))
    return client


# -- rule 1: node, type URLs -------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_url", "stream_type", "with_node"),
    [
        ("", None, True),  # ADS needs a type URL
        (LISTENER, None, False),  # the first request needs a node
        ("type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig", None, True),
        (LISTENER, CLUSTER, True),  # a per-type stream serves its own type only
    ],
    ids=["ads-without-type", "first-without-node", "unknown-type", "wrong-service"],
)
def test_protocol_errors_raise_invalid_argument(
    type_url: str, stream_type: TypeUrl | None, with_node: bool
) -> None:
    stream = SotwStream(stream_type, snapshot=mesh())
    req = discovery_pb2.DiscoveryRequest(type_url=type_url)
    if with_node:
        req.node.CopyFrom(NODE)
    with pytest.raises(ProtocolError) as caught:
        stream.on_request(req)
    assert caught.value.code == "INVALID_ARGUMENT"


def test_node_is_taken_from_the_first_request_and_trimmed() -> None:
    client = connected(mesh())
    stream = client.stream
    big = discovery_pb2.DiscoveryRequest(type_url=CLUSTER)
    big.node.CopyFrom(NODE)
    big.node.extensions.add(name="envoy.filters.http.router", category="envoy.filters.http")
    big.node.user_agent_name = "envoy"
    client.ack(only(stream.on_request(big)))
    client.first = False
    assert sent(client.request(LISTENER))  # no node needed any more
    assert stream.node is not None
    assert (stream.node.id, stream.node.cluster) == (NODE.id, NODE.cluster)
    assert stream.node.user_agent_name == "envoy"
    assert len(stream.node.extensions) == 0


def test_per_type_stream_empty_type_url_means_its_own_type() -> None:
    stream = SotwStream(ENDPOINT, snapshot=mesh())
    req = discovery_pb2.DiscoveryRequest(node=NODE, resource_names=["a"])
    response = only(stream.on_request(req))
    assert response.type_url == ENDPOINT
    assert response.names == ("a",)
    assert not stream.ads


# -- rules 2-3: nonces -------------------------------------------------------------------


def test_nonces_count_per_stream_and_are_remembered_per_type() -> None:
    client = connected(mesh())
    cds = only(client.request(CLUSTER))
    eds = only(client.request(ENDPOINT, ["a"]))
    assert (cds.nonce, eds.nonce) == ("1", "2")
    # The CDS ACK carries nonce 1 although 2 was sent since: not stale for CDS.
    assert client.ack(cds) == [Ack(CLUSTER, cds.version, "1")]


def test_stale_nonce_is_ignored() -> None:
    client = steady(mesh({"a": "10.0.0.1", "b": "10.0.0.2"}))
    stream = client.stream
    first_nonce = client.nonce[ENDPOINT]
    eds = only(stream.on_snapshot(mesh({"a": "10.0.0.9", "b": "10.0.0.2"})))
    # A request answering the older response crosses the new one: no reply, no effect.
    assert client.request(ENDPOINT, ["a"], nonce=first_nonce) == []
    assert stream.subscription(ENDPOINT) == Subscription(False, frozenset({"a", "b"}))
    assert client.ack(eds, ["a", "b"]) == [Ack(ENDPOINT, eds.version, eds.nonce)]


# -- rule 4: ACK and NACK ----------------------------------------------------------------


def test_ack_then_nothing_is_resent() -> None:
    snap = mesh()
    client = connected(snap)
    stream = client.stream
    cds = only(client.request(CLUSTER))
    assert client.ack(cds) == [Ack(CLUSTER, cds.version, cds.nonce)]
    assert stream.on_snapshot(mesh()) == []  # same content, rebuilt
    assert client.request(CLUSTER) == []  # re-request with the current nonce: held


def test_nack_is_an_event_and_the_rejected_version_is_not_resent() -> None:
    client = steady(mesh())
    stream = client.stream
    good = client.version[LISTENER]
    bad = only(stream.on_snapshot(mesh(extra=[listener("admin", "r", port=9901)])))
    assert bad.type_url == LISTENER
    events = client.nack(bad, "port 9901 in use")
    assert events == [Nack(LISTENER, good, bad.nonce, bad.version, 3, "port 9901 in use")]
    # An unrelated change (endpoints) does not bring the rejected listeners back.
    later = stream.on_snapshot(mesh({"a": "10.0.0.2"}, extra=[listener("admin", "r", port=9901)]))
    assert summary(later) == [("endpoints", ("a",))]
    # The next listener change is sent, at its own version.
    fixed = only(stream.on_snapshot(mesh({"a": "10.0.0.2"}, extra=[listener("admin", "r", 9902)])))
    assert fixed.type_url == LISTENER and fixed.version not in (bad.version, good)
    assert client.ack(fixed) == [Ack(LISTENER, fixed.version, fixed.nonce)]


def test_request_after_nack_with_same_nonce_is_not_an_ack() -> None:
    client = steady(mesh({"a": "10.0.0.1", "b": "10.0.0.2"}))
    stream = client.stream
    bad = only(stream.on_snapshot(mesh({"a": "10.0.0.7", "b": "10.0.0.2"})))
    assert [type(e) for e in client.nack(bad)] == [Nack]
    client.request(ENDPOINT, ["a"])  # unsubscribes b, same nonce
    events = client.request(ENDPOINT, ["a", "b"])  # and back: b is newly named
    assert [type(e) for e in events] == [Response]
    assert only(events).names == ("b",)


def test_events_recorded_in_client_status() -> None:
    cache: SnapshotCache[str] = SnapshotCache(clock=lambda: 42.0)
    cache.open_client("s1", node_id=NODE.id, key="reviews", transport="ads")
    client = connected(mesh())
    cds = only(client.request(CLUSTER))
    assert record_events(cache, "s1", [cds]) == []
    nack = client.nack(cds, "bad cluster")
    assert record_events(cache, "s1", nack) == nack  # news: log it
    assert record_events(cache, "s1", nack) == []  # the same rejection again: not news
    status = cache.client("s1")
    assert status is not None
    cds_status = status.type_status(CLUSTER)
    assert (cds_status.sent_version, cds_status.sent_nonce) == (cds.version, cds.nonce)
    assert cds_status.nack is not None and cds_status.nack.message == "bad cluster"
    assert cds_status.acked_version is None


# -- rule 5: subscriptions ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("requests", "expected"),
    [
        ([[]], Subscription(True, frozenset())),
        ([["*"]], Subscription(True, frozenset())),
        ([["*", "x"]], Subscription(True, frozenset({"x"}))),
        ([["x"]], Subscription(False, frozenset({"x"}))),
        ([[], ["x"], []], Subscription(False, frozenset())),  # named once: no legacy wildcard
        ([["x"], ["*"]], Subscription(True, frozenset())),
    ],
)
@pytest.mark.parametrize("type_url", [LISTENER, CLUSTER])
def test_wildcard_subscriptions(
    type_url: TypeUrl, requests: list[list[str]], expected: Subscription
) -> None:
    client = connected()
    stream = client.stream
    for names in requests:
        client.request(type_url, names)
    assert stream.subscription(type_url) == expected


def test_named_types_have_no_wildcard() -> None:
    client = connected(mesh())
    stream = client.stream
    response = only(client.request(ENDPOINT, []))
    assert response.resources == ()
    assert stream.subscription(ENDPOINT) == Subscription(False, frozenset())


def test_new_eds_name_is_sent_at_an_unchanged_version() -> None:
    client = connected(mesh({"a": "10.0.0.1", "b": "10.0.0.2"}))
    first = only(client.request(ENDPOINT, ["a"]))
    second = only(client.ack(first, ["a", "b"]))
    assert second.version == first.version
    assert second.names == ("b",)


def test_resubscribed_name_is_sent_again() -> None:
    client = connected(mesh({"a": "10.0.0.1", "b": "10.0.0.2"}))
    client.ack(only(client.request(ENDPOINT, ["a", "b"])))
    assert client.request(ENDPOINT, ["a"]) == []
    assert only(client.request(ENDPOINT, ["a", "b"])).names == ("b",)


def test_explicitly_named_listeners_are_served_like_grpc_expects() -> None:
    client = connected(mesh(extra=[listener("svc:80", "r", port=80)]))
    response = only(client.request(LISTENER, ["svc:80", "missing:81"]))
    assert response.names == ("svc:80",)


@pytest.mark.parametrize(
    ("before", "after"),
    [(["*"], ["*", "http"]), (["http"], ["*"])],
    ids=["name-added-to-wildcard", "wildcard-added-to-name"],
)
def test_newly_requested_listeners_are_resent_though_unchanged(
    before: list[str], after: list[str]
) -> None:
    client = connected(mesh())
    first = only(client.request(LISTENER, before))
    again = only(client.ack(first, after))
    assert again.names == ("http",)
    assert again.version == first.version
    assert client.ack(again) == [Ack(LISTENER, again.version, again.nonce)]


# -- rule 6: what a response carries ------------------------------------------------------


def test_cds_carries_every_cluster_and_eds_only_what_changed() -> None:
    hosts = {"a": "10.0.0.1", "b": "10.0.0.2"}
    client = steady(mesh(hosts))
    stream = client.stream
    events = stream.on_snapshot(mesh({"a": "10.0.0.1", "b": "10.0.0.3"}, timeouts={"a": 5}))
    assert summary(events) == [("clusters", ("a", "b")), ("endpoints", ("a", "b"))]
    # b's endpoints changed; a's did not, but its cluster changed and must re-warm.
    client.ack(sent(events)[0])
    client.ack(sent(events)[1])
    events = stream.on_snapshot(mesh({"a": "10.0.0.1", "b": "10.0.0.4"}, timeouts={"a": 5}))
    assert summary(events) == [("endpoints", ("b",))]


def test_resources_appearing_later_are_sent() -> None:
    client = connected(mesh())
    stream = client.stream
    eds = only(client.request(ENDPOINT, ["a", "later"]))
    assert eds.names == ("a",)
    client.ack(eds)
    lds = only(client.request(LISTENER))
    client.ack(lds)
    events = stream.on_snapshot(
        mesh(extra=[endpoints("later", "10.0.0.5"), listener("new", "r", port=81)])
    )
    assert summary(events) == [("endpoints", ("later",)), ("listeners", ("http", "new"))]


def test_secrets_are_answered_as_requested() -> None:
    client = steady(mesh(extra=[secret("cert"), secret("other")]))
    assert only(client.request(SECRET, ["cert"])).names == ("cert",)


# -- rule 7: when to send nothing ---------------------------------------------------------


def test_first_response_is_sent_even_when_empty() -> None:
    snap = Snapshot.build([])
    client = connected(snap)
    stream = client.stream
    lds = only(client.request(LISTENER))
    assert lds.resources == () and lds.version == snap.version(LISTENER)
    eds = only(client.request(ENDPOINT, ["nowhere"]))
    assert eds.resources == ()
    client.ack(lds)
    client.ack(eds)
    assert stream.on_snapshot(Snapshot.build([])) == []


def test_nothing_is_sent_when_nothing_subscribed_changed() -> None:
    client = steady(mesh({"a": "10.0.0.1"}))
    stream = client.stream
    client.request(ENDPOINT, ["a"])
    # Another cluster's endpoints appear: CDS changes, but EDS only holds a.
    events = stream.on_snapshot(mesh({"a": "10.0.0.1", "b": "10.0.0.2"}, routed=["a"]))
    assert summary(events) == [("clusters", ("a", "b"))]


def test_removing_the_last_wildcard_resource_is_sent() -> None:
    client = connected(mesh())
    stream = client.stream
    client.ack(only(client.request(LISTENER)))
    empty = only(stream.on_snapshot(Snapshot.build([cluster("a"), endpoints("a", "10.0.0.1")])))
    assert (empty.type_url, empty.resources) == (LISTENER, ())


def test_named_resource_removal_sends_nothing() -> None:
    client = connected(mesh({"a": "10.0.0.1", "b": "10.0.0.2"}))
    stream = client.stream
    client.ack(only(client.request(ENDPOINT, ["a", "b"])))
    assert stream.on_snapshot(mesh({"a": "10.0.0.1"})) == []


def test_one_response_per_request_and_the_latest_state_wins() -> None:
    client = connected(mesh())
    stream = client.stream
    cds = only(client.request(CLUSTER))
    assert stream.on_snapshot(mesh({"a": "10.0.0.1", "b": "10.0.0.2"})) == []  # un-ACKed
    assert stream.on_snapshot(mesh({"a": "10.0.0.1", "c": "10.0.0.3"})) == []
    events = client.ack(cds)
    assert summary(events) == [("clusters", ("a", "c"))]


def test_requests_before_the_first_snapshot_are_answered_when_it_arrives() -> None:
    client = connected()
    stream = client.stream
    assert client.request(CLUSTER) == []
    assert client.request(ENDPOINT, ["a"]) == []
    events = stream.on_snapshot(mesh())
    assert summary(events) == [("clusters", ("a",)), ("endpoints", ("a",))]


# -- rule 8: ordering ---------------------------------------------------------------------


def test_change_goes_out_as_cds_eds_lds_rds() -> None:
    client = steady(mesh({"a": "10.0.0.1"}))
    stream = client.stream
    new = mesh({"a": "10.0.0.1", "b": "10.0.0.2"})  # new cluster b, the route now uses it too
    first = stream.on_snapshot(new)
    assert summary(first) == [("clusters", ("a", "b"))]  # LDS/RDS wait for the CDS answer
    eds = only(client.request(ENDPOINT, ["a", "b"]))  # Envoy asks for b while warming it
    assert eds.names == ("b",)
    rest = client.ack(sent(first)[0])  # warming done: CDS ACKed
    assert summary(rest) == [("routes", ("r",))]


def test_cluster_removal_comes_after_the_route_change() -> None:
    client = steady(mesh({"a": "10.0.0.1"}))
    stream = client.stream
    new = mesh({"b": "10.0.0.2"})  # a is gone; the route moves to b
    events = stream.on_snapshot(new)
    cds = only(events)
    assert cds.names == ("a", "b")  # a is kept: the route the client holds still uses it
    assert cds.version != new.version(CLUSTER)
    assert only(client.request(ENDPOINT, ["a", "b"])).names == ("b",)
    events = client.ack(cds)
    assert summary(events) == [("routes", ("r",)), ("clusters", ("b",))]
    assert sent(events)[1].version == new.version(CLUSTER)


def test_cluster_is_removed_once_the_route_using_it_is_unsubscribed() -> None:
    both = [listener("http", "r"), routes("r", "a"), routes("old", "gone")]
    hosts = [
        cluster("a"),
        endpoints("a", "10.0.0.1"),
        cluster("gone"),
        endpoints("gone", "10.0.0.2"),
    ]
    client = steady(Snapshot.build([*both, *hosts]))
    stream = client.stream
    client.ack(only(client.request(ROUTE, ["r", "old"])))
    # "gone" disappears, but route configuration "old", still held, names it: CDS keeps
    # it, so nothing changed for this client.
    assert stream.on_snapshot(Snapshot.build([*both[:2], *hosts[:2]])) == []
    # The client drops "old" (no RDS response is due): now "gone" can go.
    assert summary(client.request(ROUTE, ["r"])) == [("clusters", ("a",))]


def test_per_type_cds_stream_removes_at_once() -> None:
    stream = SotwStream(CLUSTER, snapshot=mesh({"a": "10.0.0.1"}))
    client = Client(stream)
    client.ack(only(client.request(CLUSTER)))
    assert only(stream.on_snapshot(mesh({"b": "10.0.0.2"}))).names == ("b",)


def test_changed_cluster_gets_its_endpoints_again() -> None:
    client = steady(mesh({"a": "10.0.0.1"}))
    stream = client.stream
    events = stream.on_snapshot(mesh({"a": "10.0.0.1"}, timeouts={"a": 9}))
    assert summary(events) == [("clusters", ("a",)), ("endpoints", ("a",))]


# -- rule 11: reconnecting ----------------------------------------------------------------


def test_reconnect_with_current_wildcard_version_is_sent_nothing() -> None:
    snap = mesh()
    client = connected(snap)
    stream = client.stream
    current = snap.version(CLUSTER)
    assert client.request(CLUSTER, version=current) == [Ack(CLUSTER, current, "")]
    # Named types are answered again even at the current version.
    eds = only(client.request(ENDPOINT, ["a"], version=snap.version(ENDPOINT)))
    assert eds.names == ("a",)
    # The CDS request is still outstanding: the next change is sent on it.
    changed = mesh({"a": "10.0.0.1", "b": "10.0.0.2"}, routed=["a"])
    assert summary(stream.on_snapshot(changed))[0] == ("clusters", ("a", "b"))


def test_reconnect_with_an_old_version_is_answered() -> None:
    client = connected(mesh())
    events = client.request(CLUSTER, version="old")
    assert events[0] == Ack(CLUSTER, Version("old"), "")
    assert only(events).names == ("a",)


# -- rule 12: encoded once ----------------------------------------------------------------


def test_response_proto_is_built_from_cached_bytes() -> None:
    snap = mesh()
    client = connected(snap)
    response = only(client.request(CLUSTER))
    proto = response.to_proto()
    assert proto.version_info == response.version and proto.nonce == response.nonce
    assert proto.type_url == CLUSTER
    assert [a.value for a in proto.resources] == [snap.get(CLUSTER)["a"].payload]
    assert response.resources[0] is snap.get(CLUSTER)["a"]
