"""MeshTranslation: what each class receives, shared resources, collisions (raw
resources: test_raw.py)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2

from tests.translate.meshes import FQDN, bookinfo, hcm_of, http, service, tcp, tcp_proxy_of
from xdsd.errors import TranslationError
from xdsd.model import (
    DestinationRule,
    Endpoint,
    HTTPRoute,
    LoadBalancer,
    Mesh,
    Origin,
    RouteDestination,
    Subset,
    TrafficPolicy,
    VirtualService,
)
from xdsd.model.rules import Destination, SimpleLB
from xdsd.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from xdsd.translate import ClientKind, ConfigSourceKind, MeshTranslation, NodeClass, Role

PRODUCTPAGE = NodeClass("productpage", instance_ip="127.0.0.2", outbound_ip="127.0.0.10")
REVIEWS_V1 = NodeClass(
    "reviews", labels=(("version", "v1"),), instance_ip="127.0.1.1", outbound_ip="127.0.0.11"
)
GRPC = NodeClass("productpage", client=ClientKind.GRPC)


def names(snapshot: Any, type_url: str) -> list[str]:
    return list(snapshot.get(type_url))


def test_sidecar_receives_every_service_and_its_inbound() -> None:
    snap = MeshTranslation(bookinfo()).snapshot_for(PRODUCTPAGE)
    reviews = FQDN.format("reviews")
    assert names(snap, CLUSTER) == [
        "inbound|9080||",
        "outbound|3306||" + FQDN.format("mysql"),
        "outbound|8443||" + FQDN.format("external"),
        f"outbound|9080|v1|{reviews}",
        f"outbound|9080|v2|{reviews}",
        f"outbound|9080|v3|{reviews}",
        "outbound|9080||" + FQDN.format("productpage"),
        f"outbound|9080||{reviews}",
        "outbound|9081||" + FQDN.format("ratings"),
    ]
    # EDS for STATIC services only; the DNS service carries its endpoints inline
    assert names(snap, ENDPOINT) == [
        "outbound|3306||" + FQDN.format("mysql"),
        f"outbound|9080|v1|{reviews}",
        f"outbound|9080|v2|{reviews}",
        f"outbound|9080|v3|{reviews}",
        "outbound|9080||" + FQDN.format("productpage"),
        f"outbound|9080||{reviews}",
        "outbound|9081||" + FQDN.format("ratings"),
    ]
    assert names(snap, LISTENER) == [
        "inbound|127.0.0.2|9080",
        "outbound_http_proxy",
        "outbound|127.0.0.10|3306",
        "outbound|127.0.0.10|8443",
        "outbound|127.0.0.10|9080",
        "outbound|127.0.0.10|9081",
    ]
    assert names(snap, ROUTE) == ["8443", "9080", "9081", "http_proxy"]
    mysql = snap.get(LISTENER)["outbound|127.0.0.10|3306"].message
    assert tcp_proxy_of(mysql).cluster == "outbound|3306||" + FQDN.format("mysql")
    snap.check_consistency()


def test_http_proxy_routes_cover_every_http_service_port() -> None:
    snap = MeshTranslation(bookinfo()).snapshot_for(PRODUCTPAGE)
    config = snap.get(ROUTE)["http_proxy"].message
    vhosts = {v.name: list(v.domains) for v in config.virtual_hosts}
    assert sorted(vhosts) == sorted(
        f"{FQDN.format(n)}:{p}"
        for n, p in [
            ("external", 8443),
            ("productpage", 9080),
            ("reviews", 9080),
            ("ratings", 9081),
        ]
    )
    assert "reviews:9080" in vhosts[f"{FQDN.format('reviews')}:9080"]
    assert "reviews.shop:9080" in vhosts[f"{FQDN.format('reviews')}:9080"]
    assert all(":" in d for domains in vhosts.values() for d in domains)  # no port-80 service
    reviews = next(v for v in config.virtual_hosts if v.name.startswith("reviews."))
    assert [r.name for r in reviews.routes] == ["jason", "jason", "split"]


def test_no_inbound_when_the_mesh_does_not_define_the_service() -> None:
    snap = MeshTranslation(bookinfo()).snapshot_for(NodeClass("curl", outbound_ip="127.0.0.12"))
    assert not [n for n in names(snap, CLUSTER) if n.startswith("inbound")]
    assert not [n for n in names(snap, LISTENER) if n.startswith("inbound")]


def test_resources_are_shared_between_classes() -> None:
    translation = MeshTranslation(bookinfo())
    a = translation.snapshot_for(PRODUCTPAGE)
    b = translation.snapshot_for(REVIEWS_V1)
    for type_url in (CLUSTER, ENDPOINT, ROUTE):
        common = set(a.get(type_url)) & set(b.get(type_url)) - {"inbound|9080||"}
        assert common
        for name in common:
            assert a.get(type_url)[name] is b.get(type_url)[name], name
    # listeners are shared when their addresses are
    same_ips = dataclasses.replace(REVIEWS_V1, outbound_ip=PRODUCTPAGE.outbound_ip)
    c = translation.snapshot_for(same_ips)
    assert (
        c.get(LISTENER)["outbound|127.0.0.10|9080"] is a.get(LISTENER)["outbound|127.0.0.10|9080"]
    )
    assert c.get(LISTENER)["inbound|127.0.1.1|9080"] is b.get(LISTENER)["inbound|127.0.1.1|9080"]
    # ADS and delta classes get the same resources; the snapshot itself is memoized
    delta = translation.snapshot_for(
        dataclasses.replace(PRODUCTPAGE, config_source=ConfigSourceKind.DELTA)
    )
    for type_url in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
        assert all(delta.get(type_url)[n] is r for n, r in a.get(type_url).items())
    assert translation.snapshot_for(PRODUCTPAGE) is a


def test_rest_classes_differ_only_where_the_config_source_is_written() -> None:
    translation = MeshTranslation(bookinfo())
    ads = translation.snapshot_for(PRODUCTPAGE)
    rest = translation.snapshot_for(
        dataclasses.replace(PRODUCTPAGE, config_source=ConfigSourceKind.REST)
    )
    eds = f"outbound|9080||{FQDN.format('reviews')}"
    dns = f"outbound|8443||{FQDN.format('external')}"
    assert rest.get(CLUSTER)[eds] is not ads.get(CLUSTER)[eds]
    assert rest.get(CLUSTER)[eds].message.eds_cluster_config.eds_config.HasField(
        "api_config_source"
    )
    assert rest.get(CLUSTER)[dns] is ads.get(CLUSTER)[dns]
    assert rest.get(ENDPOINT)[eds] is ads.get(ENDPOINT)[eds]
    assert rest.get(ROUTE)["9080"] is ads.get(ROUTE)["9080"]
    listener = rest.get(LISTENER)["outbound|127.0.0.10|9080"].message
    assert hcm_of(listener).rds.config_source.HasField("api_config_source")


def test_next_mesh_reuses_what_did_not_change() -> None:
    first = MeshTranslation(bookinfo())
    old = first.snapshot_for(PRODUCTPAGE)
    mesh = bookinfo()
    ratings = mesh.service_by_name("default", "ratings")
    assert ratings is not None
    changed = dataclasses.replace(ratings, endpoints=(*ratings.endpoints, Endpoint("127.0.2.3")))
    mesh2 = Mesh(
        services=tuple(changed if s.key == ratings.key else s for s in mesh.services),
        virtual_services=mesh.virtual_services,
        destination_rules=mesh.destination_rules,
    )
    second = MeshTranslation(mesh2, previous=first)
    new = second.snapshot_for(PRODUCTPAGE)
    ratings_cla = "outbound|9081||" + FQDN.format("ratings")
    assert new.get(ENDPOINT)[ratings_cla] is not old.get(ENDPOINT)[ratings_cla]
    assert (
        new.get(CLUSTER)[ratings_cla] is old.get(CLUSTER)[ratings_cla]
    )  # EDS: endpoints not inside
    for name, resource in old.get(ENDPOINT).items():
        if name != ratings_cla:
            assert new.get(ENDPOINT)[name] is resource
    assert (
        new.get(LISTENER)["inbound|127.0.0.2|9080"] is old.get(LISTENER)["inbound|127.0.0.2|9080"]
    )
    assert new.version(CLUSTER) == old.version(CLUSTER)
    assert new.version(ENDPOINT) != old.version(ENDPOINT)


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        (NodeClass("reviews", labels=(("version", "v2"),)), "127.0.1.2"),
        (NodeClass("reviews", labels=(("version", "v9"),)), "0.0.0.0"),
        (NodeClass("reviews"), "0.0.0.0"),  # three endpoints match
        (NodeClass("productpage"), "127.0.0.2"),  # the only endpoint
        (NodeClass("external"), "0.0.0.0"),  # not an IP literal
        (NodeClass("curl"), "0.0.0.0"),  # no such service
        (NodeClass("reviews", instance_ip="10.1.1.1"), "10.1.1.1"),
    ],
)
def test_default_instance_ip(node: NodeClass, expected: str) -> None:
    assert MeshTranslation(bookinfo()).instance_ip(node) == expected


def collision_mesh(*extra: Any) -> Mesh:
    return Mesh(
        services=(
            service("app", http(9080, 19080), tcp(5000, 15000), endpoints=(Endpoint("127.0.0.2"),)),
            service("db", tcp(5432), endpoints=(Endpoint("127.0.0.3"),)),
            *extra,
        )
    )


COLLISIONS = [
    (
        "two TCP services on one port",
        collision_mesh(service("pg2", tcp(5432), endpoints=(Endpoint("127.0.0.4"),))),
        PRODUCTPAGE,
        ("services/pg2.toml", "ports[0]", "another port number"),
    ),
    (
        "HTTP and TCP on one port",
        collision_mesh(service("web", http(5432), endpoints=(Endpoint("127.0.0.4"),))),
        PRODUCTPAGE,
        ("services/db.toml", "ports[0]", "HTTP service web.default.svc.cluster.local"),
    ),
    (
        "inbound and outbound on one address",
        collision_mesh(),
        NodeClass("app", instance_ip="127.0.0.5", outbound_ip="127.0.0.5"),
        ("services/app.toml", "ports[0]", "different addresses"),
    ),
    (
        "wildcard inbound next to outbound",
        collision_mesh(),
        NodeClass("app", instance_ip="0.0.0.0", outbound_ip="127.0.0.1"),
        ("services/app.toml", "ports[0]", "set instance_ip to a concrete address"),
    ),
    (
        "wildcard outbound next to inbound",
        collision_mesh(),
        NodeClass("app", instance_ip="127.0.0.2", outbound_ip="0.0.0.0"),
        ("services/app.toml", "ports[0]", "set outbound_ip to a concrete address"),
    ),
    (
        "targetPort equal to the port with a wildcard instance_ip",
        collision_mesh(service("same", http(7000), endpoints=(Endpoint("127.0.0.6"),))),
        NodeClass("same", instance_ip="0.0.0.0", outbound_ip="127.0.0.1"),
        ("services/same.toml", "ports[0]", "give the port a targetPort"),
    ),
    (
        "application target port used by an outbound listener",
        collision_mesh(service("other", http(19080), endpoints=(Endpoint("127.0.0.7"),))),
        NodeClass("app", instance_ip="127.0.0.2", outbound_ip="127.0.0.1"),
        ("services/app.toml", "ports[0]", "outbound_ip to an address other than 127.0.0.1"),
    ),
    (
        "a service on the HTTP proxy port",
        collision_mesh(service("proxyish", http(15001), endpoints=(Endpoint("127.0.0.8"),))),
        PRODUCTPAGE,
        ("services/proxyish.toml", "ports[0]", "outbound HTTP proxy"),
    ),
]


@pytest.mark.parametrize(
    ("mesh", "node", "expected"), [c[1:] for c in COLLISIONS], ids=[c[0] for c in COLLISIONS]
)
def test_collisions_name_the_file_and_the_fix(
    mesh: Mesh, node: NodeClass, expected: tuple[str, str, str]
) -> None:
    with pytest.raises(TranslationError) as err:
        MeshTranslation(mesh).snapshot_for(node)
    path, field, fix = expected
    assert any(
        p.path == path and p.field == field and fix in p.message for p in err.value.problems
    ), err.value


def test_distinct_addresses_do_not_collide() -> None:
    snap = MeshTranslation(collision_mesh()).snapshot_for(NodeClass("app", instance_ip="127.0.0.2"))
    assert "inbound|127.0.0.2|9080" in snap.get(LISTENER)


@pytest.mark.parametrize(
    "node",
    [
        NodeClass("app", instance_ip="0.0.0.0", outbound_ip="0.0.0.0", client=ClientKind.GRPC),
        NodeClass("app", instance_ip="0.0.0.0", outbound_ip="0.0.0.0", role=Role.GATEWAY),
    ],
)
def test_only_socket_listeners_can_collide(node: NodeClass) -> None:
    mesh = collision_mesh(service("pg2", tcp(5432), endpoints=(Endpoint("127.0.0.4"),)))
    MeshTranslation(mesh).snapshot_for(node)


def test_gateway_gets_clusters_and_endpoints_only() -> None:
    snap = MeshTranslation(bookinfo()).snapshot_for(NodeClass("ingress", role=Role.GATEWAY))
    assert names(snap, LISTENER) == [] and names(snap, ROUTE) == []
    assert len(snap.get(CLUSTER)) == 8 and len(snap.get(ENDPOINT)) == 7


def test_grpc_gets_api_listeners_per_name() -> None:
    translation = MeshTranslation(bookinfo())
    snap = translation.snapshot_for(GRPC)
    listeners = snap.get(LISTENER)
    for name in [
        "reviews:9080",
        "reviews.default:9080",
        "reviews.default.svc:9080",
        FQDN.format("reviews") + ":9080",
        "reviews.shop:9080",
        "reviews",  # a single port: the bare name too
        "ratings:9081",
        "external:8443",
    ]:
        listener = listeners[name].message
        assert listener.HasField("api_listener") and not listener.HasField("address")
    assert "mysql:3306" not in listeners  # not an HTTP port
    assert hcm_of(listeners["reviews:9080"].message).rds.route_config_name == "9080"
    assert names(snap, ROUTE) == ["8443", "9080", "9081"]
    assert snap.get(ROUTE)["9080"] is translation.snapshot_for(PRODUCTPAGE).get(ROUTE)["9080"]
    assert not [n for n in names(snap, CLUSTER) if n.startswith("inbound")]
    clusters = {n: r.message for n, r in snap.get(CLUSTER).items()}
    reviews = FQDN.format("reviews")
    assert clusters[f"outbound|9080||{reviews}"].lb_policy == cluster_pb2.Cluster.ROUND_ROBIN
    assert clusters[f"outbound|9080|v2|{reviews}"].HasField("load_balancing_policy")  # RANDOM
    assert (
        clusters["outbound|8443||" + FQDN.format("external")].type
        == cluster_pb2.Cluster.LOGICAL_DNS
    )
    snap.check_consistency()


def test_grpc_names_are_not_claimed_twice() -> None:
    mesh = Mesh(
        services=(
            service("echo", http(50051), endpoints=(Endpoint("10.0.0.1"),)),
            service("echo", http(50051), namespace="prod", endpoints=(Endpoint("10.0.0.2"),)),
            service("echo", http(50052), namespace="test", endpoints=(Endpoint("10.0.0.3"),)),
        )
    )
    snap = MeshTranslation(mesh).snapshot_for(GRPC)
    listeners = list(snap.get(LISTENER))
    assert len(listeners) == len(set(listeners))
    config = snap.get(ROUTE)["50051"].message
    owner = {d: v.name for v in config.virtual_hosts for d in v.domains}
    assert owner["echo:50051"] == "echo.default.svc.cluster.local:50051"
    assert owner["echo.prod:50051"] == "echo.prod.svc.cluster.local:50051"
    assert "echo" in listeners  # bare name: first service by key
    assert "echo:50052" in listeners  # the test namespace's port


def test_mosn_gets_its_own_route_configurations() -> None:
    translation = MeshTranslation(bookinfo())
    envoy = translation.snapshot_for(PRODUCTPAGE)
    mosn = translation.snapshot_for(dataclasses.replace(PRODUCTPAGE, client=ClientKind.MOSN))
    assert mosn.get(ROUTE)["9080"] is not envoy.get(ROUTE)["9080"]
    config = mosn.get(ROUTE)["9080"].message
    header = (
        next(v for v in config.virtual_hosts if v.name.startswith("reviews"))
        .routes[0]
        .match.headers[0]
    )
    assert header.WhichOneof("header_match_specifier") == "exact_match"
    assert mosn.get(CLUSTER)["inbound|9080||"] is envoy.get(CLUSTER)["inbound|9080||"]


def test_rule_problems_surface_from_snapshot_for() -> None:
    mesh = bookinfo()
    bad_vs = VirtualService(
        "ratings",
        hosts=("ratings",),
        http=(HTTPRoute("r", route=(RouteDestination(Destination("ratings", "nope")),)),),
        origin=Origin("rules/ratings.yaml", 2),
    )
    bad_dr = DestinationRule(
        "mysql",
        "mysql",
        traffic_policy=TrafficPolicy(LoadBalancer(SimpleLB.PASSTHROUGH)),
        subsets=(Subset("a"),),
        origin=Origin("rules/mysql.yaml", 4),
    )
    broken = Mesh(
        services=mesh.services,
        virtual_services=(*mesh.virtual_services, bad_vs),
        destination_rules=(*mesh.destination_rules, bad_dr),
    )
    with pytest.raises(TranslationError) as err:
        MeshTranslation(broken).snapshot_for(PRODUCTPAGE)
    assert {p.path for p in err.value.problems} == {"rules/ratings.yaml", "rules/mysql.yaml"}
