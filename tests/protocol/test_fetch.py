"""The stateless REST-JSON answer and its JSON (docs/protocol.md, rules 20-23); what needs\nper-client memory is in test_rest_session.py."""

from __future__ import annotations

import json

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ep_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from xdsd.cache.snapshot import Snapshot
from xdsd.protocol import ProtocolError, Response
from xdsd.protocol.fetch import JsonRenderer, NotModified, fetch, select
from xdsd.resources import CLUSTER, ENDPOINT, LISTENER, Resource, TypeUrl, pack


def static_cluster(name: str) -> Resource:
    return Resource.of(name, cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.STATIC))


def endpoints(name: str, address: str) -> Resource:
    endpoint = ep_pb2.Endpoint(
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=address, port_value=80)
        )
    )
    return Resource.of(
        name,
        endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                ep_pb2.LocalityLbEndpoints(lb_endpoints=[ep_pb2.LbEndpoint(endpoint=endpoint)])
            ],
        ),
    )


def tcp_listener(name: str, cluster: str) -> Resource:
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=name, cluster=cluster)
    return Resource.of(
        name,
        listener_pb2.Listener(
            name=name,
            filter_chains=[
                listener_components_pb2.FilterChain(
                    filters=[
                        listener_components_pb2.Filter(
                            name="envoy.filters.network.tcp_proxy", typed_config=pack(proxy)
                        )
                    ]
                )
            ],
        ),
    )


def snap(a: str = "10.0.0.1", b: str = "10.0.0.2", *, more: tuple[str, ...] = ()) -> Snapshot:
    return Snapshot.build(
        [
            static_cluster("a"),
            static_cluster("b"),
            *(static_cluster(n) for n in more),
            endpoints("a", a),
            endpoints("b", b),
            tcp_listener("tcp", "a"),
        ]
    )


# -- rule 21: 200 or 304 ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_url", "names", "expected"),
    [
        (CLUSTER, [], ("a", "b")),
        (CLUSTER, ["*"], ("a", "b")),
        (CLUSTER, ["b"], ("b",)),
        (LISTENER, [], ("tcp",)),
        (ENDPOINT, ["b", "missing"], ("b",)),
        (ENDPOINT, [], ()),
    ],
)
def test_poll_is_answered_then_not_modified(
    type_url: TypeUrl, names: list[str], expected: tuple[str, ...]
) -> None:
    s = snap()
    first = fetch(s, type_url, names, "")
    assert isinstance(first, Response)
    assert first.names == expected and first.nonce == ""
    assert fetch(s, type_url, names, first.version) == NotModified(type_url, first.version)
    assert isinstance(fetch(s, type_url, names, "stale"), Response)


def test_wildcard_types_use_the_type_version() -> None:
    s = snap()
    response = fetch(s, CLUSTER, [], "")
    assert isinstance(response, Response)
    assert response.version == s.version(CLUSTER)


def test_unknown_type_is_not_found() -> None:
    with pytest.raises(ProtocolError) as caught:
        fetch(snap(), TypeUrl("type.googleapis.com/envoy.Nope"), [], "")
    assert caught.value.code == "NOT_FOUND"


# -- rule 23: each name set has its own version --------------------------------------------


def test_eds_version_depends_only_on_the_requested_names() -> None:
    before, after = snap(b="10.0.0.2"), snap(b="10.0.0.9")  # only b's endpoints change
    a_before = fetch(before, ENDPOINT, ["a"], "")
    assert isinstance(a_before, Response)
    assert fetch(after, ENDPOINT, ["a"], a_before.version) == NotModified(
        ENDPOINT, a_before.version
    )
    b_before = fetch(before, ENDPOINT, ["b"], "")
    assert isinstance(b_before, Response)
    b_after = fetch(after, ENDPOINT, ["b"], b_before.version)
    assert isinstance(b_after, Response) and b_after.version != b_before.version


# -- rule 22: a rejected version is not sent again (RestSessions detects it) -------------


def test_rejected_version_is_not_sent_again_while_current() -> None:
    s = snap()
    first = fetch(s, CLUSTER, [], "")
    assert isinstance(first, Response)
    held = fetch(s, CLUSTER, [], "v0", rejected=first.version)
    assert held == NotModified(CLUSTER, first.version)
    newer = fetch(snap(more=("c",)), CLUSTER, [], "v0", rejected=first.version)
    assert isinstance(newer, Response) and newer.names == ("a", "b", "c")


# -- selections, and resources kept for make-before-break -----------------------------------


def test_wildcard_selection_shares_the_snapshot_mapping() -> None:
    s = snap()
    assert select(s, CLUSTER, ["*"]).resources is s.get(CLUSTER)
    assert tuple(select(s, CLUSTER, ["b", "a", "missing"]).resources) == ("a", "b")


def test_kept_resources_are_merged_in_name_order_under_their_own_version() -> None:
    s = snap()
    plain = select(s, CLUSTER, [])
    old = static_cluster("0-old")
    kept = plain.with_kept({"0-old": old})
    assert kept.response().names == ("0-old", "a", "b")
    assert kept.response().resources[0] is old
    assert kept.version.startswith(f"{plain.version}+") and kept.version != plain.version
    assert kept.version == plain.with_kept({"0-old": static_cluster("0-old")}).version
    changed = Resource.of("0-old", cluster_pb2.Cluster(name="0-old", type=cluster_pb2.Cluster.EDS))
    assert kept.version != plain.with_kept({"0-old": changed}).version
    assert plain.with_kept({}) is plain


# -- rule 21: JSON, rendered once ---------------------------------------------------------


def test_json_has_type_inside_every_any() -> None:
    response = fetch(snap(), LISTENER, [], "")
    assert isinstance(response, Response)
    body = json.loads(JsonRenderer().render(response))
    assert body["version_info"] == response.version
    assert body["type_url"] == LISTENER
    (resource,) = body["resources"]
    assert resource["@type"] == LISTENER
    typed = resource["filter_chains"][0]["filters"][0]["typed_config"]
    assert typed["@type"].endswith("envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy")
    assert typed["cluster"] == "a"
    assert "nonce" not in body


def test_json_of_a_version_is_rendered_once_and_bounded() -> None:
    renderer = JsonRenderer(max_entries=2)
    s = snap()
    eds_a = fetch(s, ENDPOINT, ["a"], "")
    eds_b = fetch(s, ENDPOINT, ["b"], "")
    cds = fetch(s, CLUSTER, [], "")
    assert isinstance(eds_a, Response) and isinstance(eds_b, Response)
    assert isinstance(cds, Response)
    body = renderer.render(eds_a)
    same = fetch(s, ENDPOINT, ["a", "missing"], "")  # other names, same content
    assert isinstance(same, Response)
    assert renderer.render(same) is body
    assert renderer.renders == 1
    renderer.render(eds_b)
    renderer.render(cds)  # evicts eds_a, the least recently used
    assert len(renderer) == 2
    assert renderer.render(eds_a) == body
    assert renderer.renders == 4
