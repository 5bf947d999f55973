"""Clusters: names, discovery types per flavor, config sources, load balancers."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.extensions.load_balancing_policies.wrr_locality.v3 import wrr_locality_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from tests.translate.meshes import http, service
from xdsd.errors import TranslationError
from xdsd.model import (
    DestinationRule,
    Endpoint,
    LoadBalancer,
    Origin,
    Port,
    Protocol,
    Resolution,
    Subset,
    TrafficPolicy,
)
from xdsd.model.rules import SimpleLB
from xdsd.translate.clusters import (
    ClusterFlavor,
    OutboundCluster,
    build_inbound_cluster,
    build_outbound_cluster,
    cluster_flavor,
    inbound_cluster_name,
    outbound_cluster_name,
    outbound_clusters,
)
from xdsd.translate.node import ClientKind, ConfigSourceKind, NodeClass

Cluster = cluster_pb2.Cluster
H2_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

STATIC_SVC = service("reviews", http(9080), endpoints=(Endpoint("10.0.0.1"), Endpoint("10.0.0.2")))
DNS_ENDPOINTS = (Endpoint("b.example.com"), Endpoint("a.example.com"))


def dns_service(resolution: Resolution, endpoints: tuple[Endpoint, ...] = DNS_ENDPOINTS) -> Any:
    return service("web", http(80), endpoints=endpoints, resolution=resolution)


def test_names() -> None:
    assert outbound_cluster_name(9080, "", "reviews.default.svc.cluster.local") == (
        "outbound|9080||reviews.default.svc.cluster.local"
    )
    assert outbound_cluster_name(9080, "v1", "r.ns.svc.cluster.local") == (
        "outbound|9080|v1|r.ns.svc.cluster.local"
    )
    assert inbound_cluster_name(9080) == "inbound|9080||"


@pytest.mark.parametrize(
    ("node", "flavor"),
    [
        (NodeClass("a"), ClusterFlavor.ENVOY_ADS),
        (NodeClass("a", config_source=ConfigSourceKind.DELTA), ClusterFlavor.ENVOY_ADS),
        (NodeClass("a", config_source=ConfigSourceKind.STATIC), ClusterFlavor.ENVOY_ADS),
        (NodeClass("a", config_source=ConfigSourceKind.REST), ClusterFlavor.ENVOY_REST),
        (NodeClass("a", client=ClientKind.MOSN), ClusterFlavor.ENVOY_ADS),
        (NodeClass("a", client=ClientKind.GRPC), ClusterFlavor.GRPC),
    ],
)
def test_flavor_of_class(node: NodeClass, flavor: ClusterFlavor) -> None:
    assert cluster_flavor(node) is flavor


def test_subsets_get_their_own_clusters_in_rule_order() -> None:
    rule = DestinationRule("r", "reviews", subsets=(Subset("v2"), Subset("v1")))
    names = [c.name for c in outbound_clusters(STATIC_SVC, rule)]
    assert names == [
        "outbound|9080||reviews.default.svc.cluster.local",
        "outbound|9080|v2|reviews.default.svc.cluster.local",
        "outbound|9080|v1|reviews.default.svc.cluster.local",
    ]


@pytest.mark.parametrize("flavor", [ClusterFlavor.ENVOY_ADS, ClusterFlavor.GRPC])
def test_static_service_is_eds_over_ads(flavor: ClusterFlavor) -> None:
    cluster = build_outbound_cluster(OutboundCluster(STATIC_SVC, STATIC_SVC.ports[0]), flavor)
    assert cluster.type == Cluster.EDS
    eds = cluster.eds_cluster_config
    assert eds.service_name == cluster.name == "outbound|9080||reviews.default.svc.cluster.local"
    assert eds.eds_config.HasField("ads")
    assert eds.eds_config.resource_api_version == config_source_pb2.V3
    assert not cluster.HasField("load_assignment")
    assert cluster.connect_timeout.ToTimedelta() == timedelta(seconds=10)


def test_static_service_for_rest_polls_xds_cluster() -> None:
    cluster = build_outbound_cluster(
        OutboundCluster(STATIC_SVC, STATIC_SVC.ports[0]), ClusterFlavor.ENVOY_REST
    )
    source = cluster.eds_cluster_config.eds_config
    assert not source.HasField("ads")
    api = source.api_config_source
    assert api.api_type == config_source_pb2.ApiConfigSource.REST
    assert list(api.cluster_names) == ["xds_cluster"]
    assert api.refresh_delay.ToTimedelta() == timedelta(seconds=1)
    assert api.transport_api_version == config_source_pb2.V3
    assert source.resource_api_version == config_source_pb2.V3


@pytest.mark.parametrize(
    ("resolution", "flavor", "kind", "addresses"),
    [
        (
            Resolution.DNS,
            ClusterFlavor.ENVOY_ADS,
            Cluster.STRICT_DNS,
            ["a.example.com", "b.example.com"],
        ),
        (
            Resolution.DNS,
            ClusterFlavor.ENVOY_REST,
            Cluster.STRICT_DNS,
            ["a.example.com", "b.example.com"],
        ),
        (
            Resolution.DNS_ROUND_ROBIN,
            ClusterFlavor.ENVOY_ADS,
            Cluster.LOGICAL_DNS,
            ["a.example.com"],
        ),
        (Resolution.DNS, ClusterFlavor.GRPC, Cluster.LOGICAL_DNS, ["a.example.com"]),
    ],
)
def test_dns_services_carry_endpoints_inline(
    resolution: Resolution, flavor: ClusterFlavor, kind: int, addresses: list[str]
) -> None:
    svc = dns_service(resolution)
    cluster = build_outbound_cluster(OutboundCluster(svc, svc.ports[0]), flavor)
    assert cluster.type == kind
    assert not cluster.HasField("eds_cluster_config")
    cla = cluster.load_assignment
    assert cla.cluster_name == cluster.name
    got = [
        lb.endpoint.address.socket_address.address for g in cla.endpoints for lb in g.lb_endpoints
    ]
    assert got == addresses
    assert all(
        lb.endpoint.address.socket_address.port_value == 80
        for g in cla.endpoints
        for lb in g.lb_endpoints
    )


def test_logical_dns_without_endpoints() -> None:
    svc = dns_service(Resolution.DNS_ROUND_ROBIN, endpoints=())
    envoy = build_outbound_cluster(OutboundCluster(svc, svc.ports[0]), ClusterFlavor.ENVOY_ADS)
    assert envoy.type == Cluster.STRICT_DNS  # LOGICAL_DNS needs exactly one host
    grpc = build_outbound_cluster(OutboundCluster(svc, svc.ports[0]), ClusterFlavor.GRPC)
    assert grpc.type == Cluster.EDS  # gRPC has no STRICT_DNS: an empty assignment instead


@pytest.mark.parametrize(
    ("protocol", "http2"),
    [(Protocol.HTTP, False), (Protocol.HTTP2, True), (Protocol.GRPC, True), (Protocol.TCP, False)],
)
def test_http2_upstreams(protocol: Protocol, http2: bool) -> None:
    svc = service("s", Port(7000, protocol, "p", 7001), endpoints=(Endpoint("10.0.0.1"),))
    for cluster in (
        build_outbound_cluster(OutboundCluster(svc, svc.ports[0]), ClusterFlavor.ENVOY_ADS),
        build_inbound_cluster(svc.ports[0]),
    ):
        assert (H2_KEY in cluster.typed_extension_protocol_options) is http2
        if http2:
            options = http_protocol_options_pb2.HttpProtocolOptions()
            assert cluster.typed_extension_protocol_options[H2_KEY].Unpack(options)
            assert options.explicit_http_config.HasField("http2_protocol_options")


@pytest.mark.parametrize(
    ("simple", "expected"),
    [
        (None, Cluster.LEAST_REQUEST),
        (SimpleLB.UNSPECIFIED, Cluster.LEAST_REQUEST),
        (SimpleLB.LEAST_REQUEST, Cluster.LEAST_REQUEST),
        (SimpleLB.LEAST_CONN, Cluster.LEAST_REQUEST),
        (SimpleLB.ROUND_ROBIN, Cluster.ROUND_ROBIN),
        (SimpleLB.RANDOM, Cluster.RANDOM),
    ],
)
def test_envoy_load_balancer(simple: SimpleLB | None, expected: int) -> None:
    policy = TrafficPolicy(LoadBalancer(simple)) if simple is not None else None
    spec = OutboundCluster(STATIC_SVC, STATIC_SVC.ports[0], None, policy)
    assert build_outbound_cluster(spec, ClusterFlavor.ENVOY_ADS).lb_policy == expected


@pytest.mark.parametrize(
    ("simple", "preferred"),
    [
        (
            SimpleLB.LEAST_REQUEST,
            "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest",
        ),
        (
            SimpleLB.LEAST_CONN,
            "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest",
        ),
        (SimpleLB.RANDOM, "envoy.extensions.load_balancing_policies.random.v3.Random"),
    ],
)
def test_grpc_load_balancer_falls_back_to_round_robin(simple: SimpleLB, preferred: str) -> None:
    spec = OutboundCluster(
        STATIC_SVC, STATIC_SVC.ports[0], None, TrafficPolicy(LoadBalancer(simple))
    )
    cluster = build_outbound_cluster(spec, ClusterFlavor.GRPC)
    (outer,) = cluster.load_balancing_policy.policies
    wrapper = wrr_locality_pb2.WrrLocality()
    assert outer.typed_extension_config.typed_config.Unpack(wrapper)
    inner = [p.typed_extension_config.name for p in wrapper.endpoint_picking_policy.policies]
    assert inner == [
        preferred,
        "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin",
    ]


@pytest.mark.parametrize("simple", [None, SimpleLB.UNSPECIFIED, SimpleLB.ROUND_ROBIN])
def test_grpc_default_is_round_robin(simple: SimpleLB | None) -> None:
    policy = TrafficPolicy(LoadBalancer(simple)) if simple is not None else None
    spec = OutboundCluster(STATIC_SVC, STATIC_SVC.ports[0], None, policy)
    cluster = build_outbound_cluster(spec, ClusterFlavor.GRPC)
    assert cluster.lb_policy == Cluster.ROUND_ROBIN
    assert not cluster.HasField("load_balancing_policy")


def test_subset_policy_overrides_rule_policy() -> None:
    rule = DestinationRule(
        "r",
        "reviews",
        traffic_policy=TrafficPolicy(LoadBalancer(SimpleLB.RANDOM)),
        subsets=(Subset("v1"), Subset("v2", (), TrafficPolicy(LoadBalancer(SimpleLB.ROUND_ROBIN)))),
    )
    got = {
        c.name.split("|")[2]: build_outbound_cluster(c, ClusterFlavor.ENVOY_ADS).lb_policy
        for c in outbound_clusters(STATIC_SVC, rule)
    }
    assert got == {"": Cluster.RANDOM, "v1": Cluster.RANDOM, "v2": Cluster.ROUND_ROBIN}


def test_passthrough_is_an_error_naming_the_rule() -> None:
    rule = DestinationRule(
        "r",
        "reviews",
        subsets=(Subset("v1"), Subset("v2", (), TrafficPolicy(LoadBalancer(SimpleLB.PASSTHROUGH)))),
        origin=Origin("rules/r.yaml", 7),
    )
    spec = outbound_clusters(STATIC_SVC, rule)[2]
    with pytest.raises(TranslationError) as err:
        build_outbound_cluster(spec, ClusterFlavor.ENVOY_ADS)
    (problem,) = err.value.problems
    assert (problem.path, problem.line) == ("rules/r.yaml", 7)
    assert problem.field == "subsets[1].trafficPolicy.loadBalancer.simple"
    assert "ROUND_ROBIN" in problem.message


def test_inbound_cluster_leads_to_localhost_target_port() -> None:
    cluster = build_inbound_cluster(http(9080, 19080))
    assert cluster.name == "inbound|9080||"
    assert cluster.type == Cluster.STATIC
    (group,) = cluster.load_assignment.endpoints
    (lb,) = group.lb_endpoints
    sock = lb.endpoint.address.socket_address
    assert (sock.address, sock.port_value) == ("127.0.0.1", 19080)
    no_target = build_inbound_cluster(http(9080))
    assert (
        no_target.load_assignment.endpoints[0]
        .lb_endpoints[0]
        .endpoint.address.socket_address.port_value
        == 9080
    )


def reference_eds_cluster(spec: OutboundCluster, flavor: ClusterFlavor) -> Any:
    """An EDS cluster built field by field, named first (what ``build_outbound_cluster``
    writes from a template)."""
    from xdsd.translate import clusters
    from xdsd.translate.config_sources import config_source

    cluster = Cluster(name=spec.name, type=Cluster.EDS)
    rest = flavor is ClusterFlavor.ENVOY_REST
    source = config_source(ConfigSourceKind.REST if rest else ConfigSourceKind.ADS)
    cluster.eds_cluster_config.eds_config.CopyFrom(source)
    cluster.eds_cluster_config.service_name = spec.name
    clusters._configure(cluster, spec, flavor)
    return cluster


@pytest.mark.parametrize("flavor", list(ClusterFlavor))
@pytest.mark.parametrize("protocol", [Protocol.HTTP, Protocol.GRPC, Protocol.TCP])
@pytest.mark.parametrize(
    "simple",
    [None, SimpleLB.ROUND_ROBIN, SimpleLB.RANDOM, SimpleLB.LEAST_CONN, SimpleLB.UNSPECIFIED],
)
def test_eds_cluster_from_template_equals_field_by_field(
    flavor: ClusterFlavor, protocol: Protocol, simple: SimpleLB | None
) -> None:
    port = Port(9080, protocol, "p")
    svc = service("reviews-é", port, endpoints=(Endpoint("10.0.0.1"),))
    policy = TrafficPolicy(LoadBalancer(simple)) if simple is not None else None
    for subset in (None, Subset("v" * 150, (("version", "v1"),), policy)):
        spec = OutboundCluster(svc, port, subset, policy)
        got = build_outbound_cluster(spec, flavor)
        want = reference_eds_cluster(spec, flavor)
        assert got == want
        assert got.SerializeToString(deterministic=True) == want.SerializeToString(
            deterministic=True
        )
