"""DeltaStream, driven synchronously with real Envoy messages: one test per delta rule of
docs/protocol.md (14-19), ordering on ADS, and protocol errors."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from envoy.service.discovery.v3 import discovery_pb2

from tests.protocol.test_sotw import NODE, cluster, endpoints, listener, mesh, routes
from xdsd.cache.snapshot import Snapshot
from xdsd.protocol import Ack, DeltaResponse, Nack, ProtocolError, resource_version
from xdsd.protocol.delta import MAX_SUBSCRIBED_NAMES, DeltaEvent, DeltaStream
from xdsd.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, TypeUrl


class Client:
    """The client side of one delta stream (what Envoy sends)."""

    def __init__(self, stream: DeltaStream) -> None:
        self.stream = stream
        self.first = True

    def request(
        self,
        type_url: TypeUrl,
        subscribe: Sequence[str] = (),
        unsubscribe: Sequence[str] = (),
        *,
        nonce: str = "",
        error: str | None = None,
        initial: dict[str, str] | None = None,
    ) -> list[DeltaEvent]:
        req = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=list(subscribe),
            resource_names_unsubscribe=list(unsubscribe),
            response_nonce=nonce,
            initial_resource_versions=initial or {},
        )
        if self.first:
            req.node.CopyFrom(NODE)
            self.first = False
        if error is not None:
            req.error_detail.code = 3
            req.error_detail.message = error
        return self.stream.on_request(req)

    def ack(self, response: DeltaResponse) -> list[DeltaEvent]:
        return self.request(response.type_url, nonce=response.nonce)


def responses(events: Sequence[DeltaEvent]) -> list[DeltaResponse]:
    return [e for e in events if isinstance(e, DeltaResponse)]


def only(events: Sequence[DeltaEvent], type_url: TypeUrl | None = None) -> DeltaResponse:
    found = [r for r in responses(events) if type_url is None or r.type_url == type_url]
    assert len(found) == 1, events
    return found[0]


def ads(snapshot: Snapshot) -> tuple[DeltaStream, Client]:
    stream = DeltaStream(snapshot=snapshot)
    return stream, Client(stream)


def test_first_wildcard_request_is_answered_even_when_empty() -> None:
    """Rule 19; and a named subscription to nothing that exists gets its names back in
    removed_resources (rule 17) rather than silence."""
    _stream, client = ads(Snapshot.build([]))
    response = only(client.request(LISTENER))
    assert (response.resources, response.removed) == ((), ())
    response = only(client.request(ROUTE, ["r"]))
    assert response.removed == ("r",)
    client.ack(response)
    assert client.request(ROUTE, ["r"]) == []  # announced once, not again


def test_subscriptions_apply_on_every_request_without_a_stale_nonce_drop() -> None:
    """Rule 14: a request with an old (or no) nonce still subscribes and unsubscribes."""
    stream, client = ads(mesh({"a": "10.0.0.1", "b": "10.0.0.2"}))
    first = only(client.request(ENDPOINT, ["a"]))
    assert first.names == ("a",)
    client.ack(first)
    second = only(client.request(ENDPOINT, ["b"], nonce="999"))  # a stale nonce
    assert second.names == ("b",)
    events = client.request(ENDPOINT, unsubscribe=["a"], nonce="998")
    assert events == []  # a response for b is outstanding: the removal waits for it
    events = client.ack(second)
    assert [type(e) for e in events] == [Ack, DeltaResponse]
    assert only(events).removed == ("a",)  # rule 17: unsubscribed names are removed
    assert stream.held(ENDPOINT) == {"b": resource_version(endpoints("b", "10.0.0.2"))}


def test_initial_resource_versions_after_a_reconnect() -> None:
    """Rule 15: what the client already has at the current version is not sent again; a
    stale version is; a name that no longer exists is removed."""
    snap = mesh({"a": "10.0.0.1", "b": "10.0.0.2"})
    versions = {n: resource_version(r) for n, r in snap.get(CLUSTER).items()}
    _stream, client = ads(snap)
    initial = {"a": versions["a"], "b": "stale", "gone": "x"}
    response = only(client.request(CLUSTER, initial=initial))
    assert response.names == ("b",)
    assert response.removed == ("gone",)
    # the same client with everything current: nothing at all is sent
    _, again = ads(snap)
    assert responses(again.request(CLUSTER, initial=versions)) == []


def test_versions_are_content_hashes() -> None:
    """Rule 16: two independently built snapshots give a resource the same version, and a
    change to its content gives it another."""
    one, two = mesh({"a": "10.0.0.1"}), mesh({"a": "10.0.0.1"})
    assert resource_version(one.get(CLUSTER)["a"]) == resource_version(two.get(CLUSTER)["a"])
    changed = mesh({"a": "10.0.0.1"}, timeouts={"a": 5})
    assert resource_version(changed.get(CLUSTER)["a"]) != resource_version(one.get(CLUSTER)["a"])
    proto = only(ads(one)[1].request(CLUSTER)).to_proto()
    assert proto.resources[0].version == resource_version(one.get(CLUSTER)["a"])
    assert proto.system_version_info == one.version(CLUSTER)


def test_deleted_resources_are_removed() -> None:
    """Rule 17: a resource gone from the snapshot is announced in removed_resources."""
    stream, client = ads(mesh({"a": "10.0.0.1", "b": "10.0.0.2"}))
    client.ack(only(client.request(ENDPOINT, ["a", "b"])))
    events = stream.on_snapshot(mesh({"a": "10.0.0.1"}))
    response = only(events, ENDPOINT)
    assert (response.names, response.removed) == ((), ("b",))


def test_a_nack_is_recorded_and_the_rejected_content_not_resent() -> None:
    """Rule 18: after a NACK nothing is resent until the content changes."""
    stream, client = ads(mesh({"a": "10.0.0.1"}))
    response = only(client.request(CLUSTER))
    events = client.request(CLUSTER, nonce=response.nonce, error="bad cluster")
    nack = [e for e in events if isinstance(e, Nack)]
    assert len(nack) == 1 and nack[0].message == "bad cluster [rejected resources: a]"
    assert stream.rejected(CLUSTER) == {"a": resource_version(response.resources[0])}
    assert nack[0].rejected_version == response.version
    assert responses(events) == []
    assert stream.on_snapshot(mesh({"a": "10.0.0.1"})) == []  # same content: held
    changed = stream.on_snapshot(mesh({"a": "10.0.0.1"}, timeouts={"a": 3}))
    assert only(changed, CLUSTER).names == ("a",)
    client.ack(only(changed, CLUSTER))
    assert stream.rejected(CLUSTER) == {}  # the next version of a was accepted


def test_one_response_per_type_is_outstanding() -> None:
    stream, client = ads(mesh({"a": "10.0.0.1"}))
    first = only(client.request(CLUSTER))
    assert stream.on_snapshot(mesh({"a": "10.0.0.1"}, timeouts={"a": 2})) == []
    assert only(client.ack(first)).names == ("a",)  # the change goes once answered


def test_ads_orders_clusters_before_listeners_and_routes() -> None:
    """Make-before-break: a CDS response adding clusters holds LDS and RDS until it is
    answered, and makes their assignments due again (Envoy warms until it gets one)."""
    snap = mesh({"a": "10.0.0.1"})
    stream, client = ads(snap)
    cds = only(client.request(CLUSTER))
    eds = only(client.request(ENDPOINT, ["a"]))
    assert responses(client.request(LISTENER)) == []  # held: clusters warming
    events = client.ack(cds)
    assert only(events, LISTENER).names == ("http",)
    client.ack(eds)
    lds = only(events, LISTENER)
    rds = only(client.request(ROUTE, ["r"]))
    client.ack(lds)
    client.ack(rds)
    # a new cluster b, and the route now to b: CDS, then EDS again, and only then RDS
    new = mesh({"a": "10.0.0.1", "b": "10.0.0.2"}, routed=["b"])
    events = stream.on_snapshot(new)
    assert [r.type_url for r in responses(events)] == [CLUSTER]
    client.request(ENDPOINT, ["a", "b"])
    events = client.ack(only(events, CLUSTER))
    assert ROUTE in [r.type_url for r in responses(events)]


def test_a_cluster_is_removed_only_once_no_route_uses_it() -> None:
    snap = mesh({"a": "10.0.0.1", "b": "10.0.0.2"}, routed=["a"])
    stream, client = ads(snap)
    client.ack(only(client.request(CLUSTER)))
    client.ack(only(client.request(ROUTE, ["r"])))
    # b moves to the route and a goes: the route still names a until RDS is sent
    gone = Snapshot.build(
        [listener("http", "r"), routes("r", "b"), cluster("b"), endpoints("b", "10.0.0.2")]
    )
    events = stream.on_snapshot(gone)
    kinds = [(r.type_url, r.removed) for r in responses(events)]
    assert kinds == [(ROUTE, ()), (CLUSTER, ("a",))], kinds


@pytest.mark.parametrize(
    ("stream_type", "first", "message"),
    [
        (None, discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER), "must carry node"),
        (None, discovery_pb2.DeltaDiscoveryRequest(node=NODE), "must carry type_url"),
        (
            CLUSTER,
            discovery_pb2.DeltaDiscoveryRequest(node=NODE, type_url=LISTENER),
            "requested on",
        ),
        (
            None,
            discovery_pb2.DeltaDiscoveryRequest(node=NODE, type_url="type.googleapis.com/x.Y"),
            "unknown type_url",
        ),
    ],
)
def test_protocol_errors(
    stream_type: TypeUrl | None, first: discovery_pb2.DeltaDiscoveryRequest, message: str
) -> None:
    with pytest.raises(ProtocolError, match=message) as err:
        DeltaStream(stream_type, mesh()).on_request(first)
    assert err.value.code == "INVALID_ARGUMENT"


def test_per_type_stream_takes_an_empty_type_url_as_its_own() -> None:
    stream = DeltaStream(CLUSTER, mesh())
    request = discovery_pb2.DeltaDiscoveryRequest(node=NODE)
    assert only(stream.on_request(request)).type_url == CLUSTER


def test_node_is_kept_trimmed() -> None:
    """As on SotW streams: the node's identifying fields are kept, not the tens of KB of
    extensions Envoy lists (an idle stream must not hold them)."""
    stream = DeltaStream(snapshot=mesh())
    big = discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER)
    big.node.CopyFrom(NODE)
    big.node.extensions.add(name="envoy.filters.http.router", category="envoy.filters.http")
    stream.on_request(big)
    assert stream.node is not None and stream.node.id == NODE.id
    assert len(stream.node.extensions) == 0


@pytest.mark.parametrize("type_url", [CLUSTER, ENDPOINT, LISTENER, ROUTE])
def test_subscribed_names_are_bounded_per_type(type_url: TypeUrl) -> None:
    """A client subscribing to ever more names of one type is refused past the bound
    (RESOURCE_EXHAUSTED), and so is a reconnect saying it holds more than that; another
    type's names do not count."""
    _, client = ads(mesh())
    half = MAX_SUBSCRIBED_NAMES // 2
    client.request(type_url, [f"a{i}" for i in range(half)])
    client.request(type_url, [f"a{i}" for i in range(half)])  # the same names again
    client.request(type_url, [f"b{i}" for i in range(half)])
    other = CLUSTER if type_url != CLUSTER else ENDPOINT
    client.request(other, [f"c{i}" for i in range(half)])
    with pytest.raises(ProtocolError) as refused:
        client.request(type_url, ["one more"])
    assert refused.value.code == "RESOURCE_EXHAUSTED"
    held = {f"a{i}": "v" for i in range(MAX_SUBSCRIBED_NAMES + 1)}
    with pytest.raises(ProtocolError) as refused:
        ads(mesh())[1].request(type_url, ["a0"], initial=held)
    assert refused.value.code == "RESOURCE_EXHAUSTED"
