"""Meshes and message helpers shared by the translation tests (built from the model
dataclasses directly, not from files)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from xdsd.model import (
    Destination,
    DestinationRule,
    Endpoint,
    HeaderMatch,
    HTTPMatch,
    HTTPRoute,
    LoadBalancer,
    Locality,
    Mesh,
    Origin,
    Port,
    Protocol,
    Resolution,
    Retries,
    RouteDestination,
    Service,
    StringMatch,
    Subset,
    TrafficPolicy,
    VirtualService,
)
from xdsd.model.rules import MatchKind, SimpleLB
from xdsd.resources import Resource

FQDN = "{}.default.svc.cluster.local"


def service(
    name: str,
    *ports: Port,
    endpoints: tuple[Endpoint, ...] = (),
    namespace: str = "default",
    hosts: tuple[str, ...] = (),
    resolution: Resolution = Resolution.STATIC,
) -> Service:
    """A service whose origin is ``services/NAME.toml``."""
    return Service(
        name,
        namespace=namespace,
        ports=ports,
        endpoints=endpoints,
        hosts=hosts,
        resolution=resolution,
        origin=Origin(f"services/{name}.toml", 1),
    )


def http(number: int, target: int = 0, protocol: Protocol = Protocol.HTTP) -> Port:
    return Port(number, protocol, "http", target)


def tcp(number: int, target: int = 0) -> Port:
    return Port(number, Protocol.TCP, "tcp", target)


def bookinfo() -> Mesh:
    """productpage → reviews (v1/v2/v3 subsets, a VirtualService) → ratings; plus a TCP
    database and a DNS service."""
    reviews_eps = (
        Endpoint("127.0.1.1", (("version", "v1"),), Locality("eu", "zone-a")),
        Endpoint("127.0.1.2", (("version", "v2"),), Locality("eu", "zone-b"), weight=3),
        Endpoint("127.0.1.3", (("version", "v3"),), Locality("eu", "zone-b"), weight=2),
    )
    services = (
        service("productpage", http(9080, 19080), endpoints=(Endpoint("127.0.0.2"),)),
        service("reviews", http(9080, 19081), endpoints=reviews_eps, hosts=("reviews.shop",)),
        service(
            "ratings",
            Port(9081, Protocol.GRPC, "grpc", 19082),
            endpoints=(Endpoint("127.0.2.1"), Endpoint("127.0.2.2")),
        ),
        service("mysql", tcp(3306, 13306), endpoints=(Endpoint("127.0.3.1"),)),
        service(
            "external",
            http(8443),
            endpoints=(Endpoint("localhost"), Endpoint("example.invalid")),
            resolution=Resolution.DNS,
        ),
    )
    rule = DestinationRule(
        "reviews",
        "reviews",
        traffic_policy=TrafficPolicy(LoadBalancer(SimpleLB.ROUND_ROBIN)),
        subsets=(
            Subset("v1", (("version", "v1"),)),
            Subset("v2", (("version", "v2"),), TrafficPolicy(LoadBalancer(SimpleLB.RANDOM))),
            Subset("v3", (("version", "v3"),)),
        ),
        origin=Origin("rules/reviews-dr.yaml", 1),
    )
    vs = VirtualService(
        "reviews",
        hosts=("reviews",),
        http=(
            HTTPRoute(
                "jason",
                match=(
                    HTTPMatch(
                        headers=(HeaderMatch("end-user", StringMatch(MatchKind.EXACT, "jason")),)
                    ),
                    HTTPMatch(uri=StringMatch(MatchKind.PREFIX, "/beta")),
                ),
                route=(RouteDestination(Destination("reviews", "v2")),),
                timeout=timedelta(seconds=3),
            ),
            HTTPRoute(
                "split",
                route=(
                    RouteDestination(Destination("reviews", "v1"), 80),
                    RouteDestination(Destination("reviews", "v3"), 20),
                    RouteDestination(Destination("reviews", "v2"), 0),
                ),
                retries=Retries(4, timedelta(milliseconds=500), "gateway-error,503"),
            ),
        ),
        origin=Origin("rules/reviews-vs.yaml", 1),
    )
    return Mesh(services=services, virtual_services=(vs,), destination_rules=(rule,))


def by_name(resources: dict[str, Resource] | Any, name: str) -> Any:
    """The message of the resource ``name`` in a snapshot bucket."""
    return resources[name].message


def hcm_of(listener: Any) -> Any:
    """The HTTP connection manager of a listener's first filter chain (or API listener)."""
    hcm = hcm_pb2.HttpConnectionManager()
    if listener.HasField("api_listener"):
        assert listener.api_listener.api_listener.Unpack(hcm)
    else:
        assert listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    return hcm


def tcp_proxy_of(listener: Any) -> Any:
    """The TCP proxy of a listener's first filter chain."""
    proxy = tcp_proxy_pb2.TcpProxy()
    assert listener.filter_chains[0].filters[0].typed_config.Unpack(proxy)
    return proxy
