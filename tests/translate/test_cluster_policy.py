"""DestinationRule traffic policies → Envoy clusters and route hash policies (table-driven:
each case a policy and the cluster fields it must give, as proto3 JSON)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import json_format

from tests.translate.meshes import http, service, tcp
from xdsd.errors import TranslationError
from xdsd.model import (
    ClientTLS,
    ConnectionPool,
    ConsistentHash,
    DestinationRule,
    Endpoint,
    HashKind,
    HttpPool,
    LoadBalancer,
    LocalityFailover,
    LocalityLbSetting,
    LocalityWeights,
    Mesh,
    Origin,
    OutlierDetection,
    Port,
    PortTrafficPolicy,
    Protocol,
    Subset,
    TcpKeepalive,
    TcpPool,
    TLSMode,
    TrafficPolicy,
)
from xdsd.translate.clusters import (
    ClusterFlavor,
    OutboundCluster,
    build_outbound_cluster,
    outbound_clusters,
)
from xdsd.translate.hash_policy import add_hash_policies, consistent_hash_for
from xdsd.translate.routes import MatcherStyle, RouteBuilder

#: How SDS secrets are fetched by ADS classes.
ADS_SOURCE = {"ads": {}, "resource_api_version": "V3"}

SVC = service("reviews", http(9080), endpoints=(Endpoint("10.0.0.1"),))
H2 = service("grpc", http(50051, protocol=Protocol.GRPC), endpoints=(Endpoint("10.0.0.2"),))
DB = service("db", tcp(5432), endpoints=(Endpoint("10.0.0.3"),))
OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
UNLIMITED = 2**32 - 1
S = timedelta(seconds=1)


def cluster_json(
    policy: TrafficPolicy | None, svc: Any = SVC, flavor: ClusterFlavor = ClusterFlavor.ENVOY_ADS
) -> dict[str, Any]:
    spec = OutboundCluster(svc, svc.ports[0], None, policy)
    message = build_outbound_cluster(spec, flavor)
    out: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    options = message.typed_extension_protocol_options.get(OPTIONS_KEY)
    if options is not None:
        unpacked = http_protocol_options_pb2.HttpProtocolOptions()
        options.Unpack(unpacked)
        out["http_options"] = json_format.MessageToDict(unpacked, preserving_proto_field_name=True)
    if message.HasField("transport_socket"):
        context = tls_pb2.UpstreamTlsContext()
        message.transport_socket.typed_config.Unpack(context)
        out["tls"] = json_format.MessageToDict(context, preserving_proto_field_name=True)
    return out


def pool(tcp_pool: TcpPool | None = None, http_pool: HttpPool | None = None) -> TrafficPolicy:
    return TrafficPolicy(connection_pool=ConnectionPool(tcp_pool, http_pool))


def limits(**given: int) -> dict[str, Any]:
    base: dict[str, Any] = {
        "max_connections": UNLIMITED,
        "max_pending_requests": UNLIMITED,
        "max_requests": UNLIMITED,
        "max_retries": UNLIMITED,
    }
    base.update(given)
    return {"thresholds": [{**base, "track_remaining": True}]}


CASES: dict[str, tuple[TrafficPolicy | None, Any, dict[str, Any]]] = {
    "no policy: Istio's circuit-breaker defaults, 10 s connect timeout": (
        None,
        SVC,
        {"circuit_breakers": limits(), "connect_timeout": "10s"},
    ),
    "tcp limits and timeouts": (
        pool(TcpPool(7, 2 * S, None, timedelta(hours=1), 30 * S)),
        SVC,
        {
            "circuit_breakers": limits(max_connections=7),
            "connect_timeout": "2s",
            "http_options": {
                "explicit_http_config": {"http_protocol_options": {}},
                "common_http_protocol_options": {
                    "idle_timeout": "30s",
                    "max_connection_duration": "3600s",
                },
            },
        },
    ),
    "tcp keepalive": (
        pool(TcpPool(keepalive=TcpKeepalive(3, 60 * S, 5 * S))),
        SVC,
        {
            "upstream_connection_options": {
                "tcp_keepalive": {
                    "keepalive_probes": 3,
                    "keepalive_time": 60,
                    "keepalive_interval": 5,
                }
            }
        },
    ),
    "http limits": (
        pool(None, HttpPool(1, 2, 3, 4, 5 * S)),
        SVC,
        {
            "circuit_breakers": limits(max_pending_requests=1, max_requests=2, max_retries=4),
            "http_options": {
                "explicit_http_config": {"http_protocol_options": {}},
                "common_http_protocol_options": {
                    "idle_timeout": "5s",
                    "max_requests_per_connection": 3,
                },
            },
        },
    ),
    "http idle timeout wins over tcp's": (
        pool(TcpPool(idle_timeout=30 * S), HttpPool(idle_timeout=5 * S)),
        SVC,
        {
            "http_options": {
                "explicit_http_config": {"http_protocol_options": {}},
                "common_http_protocol_options": {"idle_timeout": "5s"},
            }
        },
    ),
    "h2 upgrade with stream limit": (
        pool(None, HttpPool(h2_upgrade_policy="UPGRADE", max_concurrent_streams=9)),
        SVC,
        {
            "http_options": {
                "explicit_http_config": {"http2_protocol_options": {"max_concurrent_streams": 9}}
            }
        },
    ),
    "use client protocol": (
        pool(None, HttpPool(h2_upgrade_policy="UPGRADE", use_client_protocol=True)),
        SVC,
        {
            "http_options": {
                "use_downstream_protocol_config": {
                    "http_protocol_options": {},
                    "http2_protocol_options": {},
                }
            }
        },
    ),
    "grpc port stays HTTP/2 without a policy": (
        None,
        H2,
        {"http_options": {"explicit_http_config": {"http2_protocol_options": {}}}},
    ),
    "tcp port: limits only, no HTTP options": (
        pool(TcpPool(3, idle_timeout=S), HttpPool(2)),
        DB,
        {
            "circuit_breakers": limits(max_connections=3, max_pending_requests=2),
            "http_options": None,
        },
    ),
    "outlier detection: only what is set, panic threshold off": (
        TrafficPolicy(
            outlier_detection=OutlierDetection(
                consecutive_5xx_errors=3,
                interval=S,
                base_ejection_time=30 * S,
                max_ejection_percent=100,
            )
        ),
        SVC,
        {
            "outlier_detection": {
                "consecutive_5xx": 3,
                "enforcing_consecutive_5xx": 100,
                "enforcing_success_rate": 0,
                "interval": "1s",
                "base_ejection_time": "30s",
                "max_ejection_percent": 100,
            },
            "common_lb_config": {"healthy_panic_threshold": {}},
        },
    ),
    "outlier detection: 0 disables a check; gateway and local-origin errors": (
        TrafficPolicy(outlier_detection=OutlierDetection(0, 4, 2, True, min_health_percent=25)),
        SVC,
        {
            "outlier_detection": {
                "consecutive_5xx": 0,
                "enforcing_consecutive_5xx": 0,
                "consecutive_gateway_failure": 4,
                "enforcing_consecutive_gateway_failure": 100,
                "split_external_local_origin_errors": True,
                "consecutive_local_origin_failure": 2,
                "enforcing_consecutive_local_origin_failure": 100,
                "enforcing_local_origin_success_rate": 0,
                "enforcing_success_rate": 0,
            },
            "common_lb_config": {"healthy_panic_threshold": {"value": 25.0}},
        },
    ),
    "ring hash with Envoy's default ring": (
        TrafficPolicy(LoadBalancer(consistent_hash=ConsistentHash(HashKind.HEADER, "x"))),
        SVC,
        {"lb_policy": "RING_HASH", "ring_hash_lb_config": {"minimum_ring_size": "1024"}},
    ),
    "ring hash size": (
        TrafficPolicy(
            LoadBalancer(consistent_hash=ConsistentHash(HashKind.SOURCE_IP, minimum_ring_size=64))
        ),
        SVC,
        {"lb_policy": "RING_HASH", "ring_hash_lb_config": {"minimum_ring_size": "64"}},
    ),
    "maglev": (
        TrafficPolicy(
            LoadBalancer(
                consistent_hash=ConsistentHash(HashKind.HEADER, "x", maglev=True, table_size=65537)
            )
        ),
        SVC,
        {"lb_policy": "MAGLEV", "maglev_lb_config": {"table_size": "65537"}},
    ),
    "distribute: locality weighting": (
        TrafficPolicy(
            LoadBalancer(
                locality=LocalityLbSetting(distribute=(LocalityWeights("r1", (("r1", 100),)),))
            )
        ),
        SVC,
        {"common_lb_config": {"locality_weighted_lb_config": {}}},
    ),
    "failover without outlier detection: nothing (it could never act)": (
        TrafficPolicy(
            LoadBalancer(locality=LocalityLbSetting(failover=(LocalityFailover("r1", "r2"),)))
        ),
        SVC,
        {"common_lb_config": None},
    ),
    "failover with outlier detection: locality weighting": (
        TrafficPolicy(
            LoadBalancer(locality=LocalityLbSetting(failover=(LocalityFailover("r1", "r2"),))),
            outlier_detection=OutlierDetection(),
        ),
        SVC,
        {"common_lb_config": {"healthy_panic_threshold": {}, "locality_weighted_lb_config": {}}},
    ),
    "locality disabled": (
        TrafficPolicy(
            LoadBalancer(
                locality=LocalityLbSetting(
                    distribute=(LocalityWeights("r1", (("r1", 100),)),), enabled=False
                )
            )
        ),
        SVC,
        {"common_lb_config": None},
    ),
    "tls simple: CA, SANs by type, SNI": (
        TrafficPolicy(
            tls=ClientTLS(
                TLSMode.SIMPLE,
                ca_certificates="/c/ca.pem",
                sni="a.test",
                subject_alt_names=("a.test", "spiffe://t/a", "10.0.0.1"),
            )
        ),
        SVC,
        {
            "tls": {
                "sni": "a.test",
                "common_tls_context": {
                    "combined_validation_context": {
                        "default_validation_context": {
                            "match_typed_subject_alt_names": [
                                {"san_type": "DNS", "matcher": {"exact": "a.test"}},
                                {"san_type": "URI", "matcher": {"exact": "spiffe://t/a"}},
                                {"san_type": "IP_ADDRESS", "matcher": {"exact": "10.0.0.1"}},
                            ]
                        },
                        "validation_context_sds_secret_config": {
                            "name": "file-root:/c/ca.pem",
                            "sds_config": ADS_SOURCE,
                        },
                    }
                },
            },
            "http_options": None,
        },
    ),
    "tls mutual without SNI: auto SNI and SAN validation, h2 ALPN on gRPC": (
        TrafficPolicy(tls=ClientTLS(TLSMode.MUTUAL, "/c/cert.pem", "/c/key.pem", "/c/ca.pem")),
        H2,
        {
            "tls": {
                "common_tls_context": {
                    "tls_certificate_sds_secret_configs": [
                        {"name": "file-cert:/c/cert.pem~/c/key.pem", "sds_config": ADS_SOURCE}
                    ],
                    "combined_validation_context": {
                        "default_validation_context": {},
                        "validation_context_sds_secret_config": {
                            "name": "file-root:/c/ca.pem",
                            "sds_config": ADS_SOURCE,
                        },
                    },
                    "alpn_protocols": ["h2"],
                }
            },
            "http_options": {
                "explicit_http_config": {"http2_protocol_options": {}},
                "upstream_http_protocol_options": {"auto_sni": True, "auto_san_validation": True},
            },
        },
    ),
    "tls insecureSkipVerify: no validation": (
        TrafficPolicy(tls=ClientTLS(TLSMode.SIMPLE, sni="a", insecure_skip_verify=True)),
        SVC,
        {"tls": {"sni": "a", "common_tls_context": {"validation_context": {}}}},
    ),
    "tls disable: plaintext": (
        TrafficPolicy(tls=ClientTLS(TLSMode.DISABLE)),
        SVC,
        {"tls": None},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_policy_becomes_cluster_fields(case: str) -> None:
    policy, svc, expected = CASES[case]
    got = cluster_json(policy, svc)
    for key, value in expected.items():
        assert got.get(key) == value, (key, got.get(key))


def test_grpc_flavor_refuses_tls_naming_the_rule() -> None:
    rule = DestinationRule("r", "reviews", origin=Origin("rules/r.yaml", 3))
    tls = TrafficPolicy(tls=ClientTLS(TLSMode.SIMPLE, insecure_skip_verify=True))
    spec = OutboundCluster(SVC, SVC.ports[0], None, tls, rule)
    with pytest.raises(TranslationError) as err:
        build_outbound_cluster(spec, ClusterFlavor.GRPC)
    (problem,) = err.value.problems
    assert (problem.path, problem.line, problem.field) == ("rules/r.yaml", 3, "trafficPolicy.tls")


def test_grpc_flavor_gets_ring_hash_for_maglev() -> None:
    policy = TrafficPolicy(
        LoadBalancer(consistent_hash=ConsistentHash(HashKind.HEADER, "x", maglev=True))
    )
    got = cluster_json(policy, flavor=ClusterFlavor.GRPC)
    assert got["lb_policy"] == "RING_HASH" and "load_balancing_policy" not in got


TWO_PORTS = service(
    "web", http(80), Port(81, Protocol.HTTP, "alt"), endpoints=(Endpoint("1.1.1.1"),)
)


def test_port_level_and_subset_policies_merge_per_cluster() -> None:
    """Istio's merge: a port-level entry replaces all four fields of its level (nothing
    inherited); a subset's top-level fields replace the rule's one by one."""
    five = OutlierDetection(consecutive_5xx_errors=5)
    one = OutlierDetection(consecutive_5xx_errors=1)
    seven = OutlierDetection(consecutive_5xx_errors=7)
    rule = DestinationRule(
        "web",
        "web",
        traffic_policy=TrafficPolicy(
            connection_pool=ConnectionPool(TcpPool(10)),
            outlier_detection=five,
            port_level_settings=(
                PortTrafficPolicy(81, connection_pool=ConnectionPool(TcpPool(2))),
            ),
        ),
        subsets=(
            Subset("v1", (), TrafficPolicy(outlier_detection=one)),
            Subset(
                "v2",
                (),
                TrafficPolicy(
                    outlier_detection=seven,
                    port_level_settings=(
                        PortTrafficPolicy(81, connection_pool=ConnectionPool(TcpPool(3))),
                    ),
                ),
            ),
        ),
    )
    got = {
        (c.port.number, c.name.split("|")[2]): cluster_json(c.policy, TWO_PORTS)
        for c in outbound_clusters(TWO_PORTS, rule)
    }
    conns = {k: v["circuit_breakers"]["thresholds"][0]["max_connections"] for k, v in got.items()}
    errors = {
        k: v["outlier_detection"]["consecutive_5xx"]
        for k, v in got.items()
        if "outlier_detection" in v
    }
    assert conns == {
        (80, ""): 10,
        (80, "v1"): 10,
        (80, "v2"): 10,
        (81, ""): 2,
        (81, "v1"): 2,
        (81, "v2"): 3,
    }
    # Port 81's entry sets no outlierDetection: none there (the top level's 5 is not
    # inherited); subset v1's own field still applies over it; v2's port-level entry
    # replaces its subset's fields too.
    assert errors == {(80, ""): 5, (80, "v1"): 1, (80, "v2"): 7, (81, "v1"): 1}


HEADER = ConsistentHash(HashKind.HEADER, "x-user")
COOKIE = ConsistentHash(HashKind.COOKIE, "c", timedelta(seconds=10), "/")
SOURCE = ConsistentHash(HashKind.SOURCE_IP)
QUERY = ConsistentHash(HashKind.QUERY_PARAMETER, "u")


def hashing(h: ConsistentHash) -> TrafficPolicy:
    return TrafficPolicy(LoadBalancer(consistent_hash=h))


def test_consistent_hash_lookup_follows_istio() -> None:
    """Subset port-level, then subset, then rule port-level, then rule."""
    rule = DestinationRule(
        "web",
        "web",
        traffic_policy=TrafficPolicy(
            LoadBalancer(consistent_hash=HEADER),
            port_level_settings=(PortTrafficPolicy(81, LoadBalancer(consistent_hash=QUERY)),),
        ),
        subsets=(
            Subset(
                "a",
                (),
                TrafficPolicy(
                    LoadBalancer(consistent_hash=COOKIE),
                    port_level_settings=(
                        PortTrafficPolicy(81, LoadBalancer(consistent_hash=SOURCE)),
                    ),
                ),
            ),
            Subset("b"),
        ),
    )
    table = {
        ("", 80): HEADER,
        ("", 81): QUERY,
        ("a", 80): COOKIE,
        ("a", 81): SOURCE,
        ("b", 80): HEADER,
        ("b", 81): QUERY,
    }
    for (subset, port), expected in table.items():
        assert consistent_hash_for(rule, subset, port) == expected, (subset, port)
    assert consistent_hash_for(None, "", 80) is None


@pytest.mark.parametrize(
    ("h", "expected"),
    [
        (HEADER, {"header": {"header_name": "x-user"}}),
        (COOKIE, {"cookie": {"name": "c", "ttl": "10s", "path": "/"}}),
        (SOURCE, {"connection_properties": {"source_ip": True}}),
        (QUERY, {"query_parameter": {"name": "u"}}),
    ],
)
def test_route_hash_policy(h: ConsistentHash, expected: dict[str, Any]) -> None:
    svc = service("web", http(80), endpoints=(Endpoint("1.1.1.1"),))
    mesh = Mesh((svc,), (), (DestinationRule("web", "web", traffic_policy=hashing(h)),))
    (route,) = RouteBuilder(mesh, MatcherStyle.STRING_MATCH).routes(svc, 80)
    got = json_format.MessageToDict(route.route, preserving_proto_field_name=True)
    assert got["hash_policy"] == [expected]


def test_weighted_destinations_get_each_distinct_hash_once() -> None:
    from envoy.config.route.v3 import route_components_pb2

    web = service("web", http(80), endpoints=(Endpoint("1.1.1.1"),))
    api = service("api", http(80), endpoints=(Endpoint("1.1.1.2"),))
    plain = service("plain", http(80), endpoints=(Endpoint("1.1.1.3"),))
    rule = DestinationRule("web", "web", traffic_policy=hashing(HEADER), subsets=(Subset("a"),))
    mesh = Mesh(
        (web, api, plain), (), (rule, DestinationRule("api", "api", traffic_policy=hashing(SOURCE)))
    )
    action = route_components_pb2.RouteAction()
    for name in (
        "outbound|80||web.default.svc.cluster.local",
        "outbound|80|a|web.default.svc.cluster.local",
        "outbound|80||api.default.svc.cluster.local",
        "outbound|80||plain.default.svc.cluster.local",
    ):
        action.weighted_clusters.clusters.add(name=name)
    add_hash_policies(action, mesh)
    kinds = [p.WhichOneof("policy_specifier") for p in action.hash_policy]
    assert kinds == ["header", "connection_properties"]


def test_default_routes_take_a_port_level_hash_and_none_without_one() -> None:
    """The default route's hash policy comes from wherever a rule writes it (here only
    a port's settings); a mesh whose rules hash nothing gives default routes none."""
    web = service("web", http(81), endpoints=(Endpoint("1.1.1.1"),))
    other = service("other", http(81), endpoints=(Endpoint("1.1.1.2"),))
    port_only = TrafficPolicy(
        port_level_settings=(PortTrafficPolicy(81, LoadBalancer(consistent_hash=QUERY)),)
    )
    hashed = Mesh((web, other), (), (DestinationRule("web", "web", traffic_policy=port_only),))
    builder = RouteBuilder(hashed, MatcherStyle.STRING_MATCH)
    (route,) = builder.routes(web, 81)
    assert [p.WhichOneof("policy_specifier") for p in route.route.hash_policy] == [
        "query_parameter"
    ]
    (plain,) = builder.routes(other, 81)
    assert not plain.route.hash_policy
    unhashed = Mesh((web,), (), (DestinationRule("web", "web", traffic_policy=TrafficPolicy()),))
    (route,) = RouteBuilder(unhashed, MatcherStyle.STRING_MATCH).routes(web, 81)
    assert not route.route.hash_policy and route.route.cluster.endswith(
        "web.default.svc.cluster.local"
    )
