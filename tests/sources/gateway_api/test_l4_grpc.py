"""TLS Passthrough / TCP / UDP listeners, TLSRoute, TCPRoute, UDPRoute and GRPCRoute:
what ``convert`` makes of them, what the gateway translation makes of that, and that
Envoy accepts it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.filters.udp.udp_proxy.v3 import route_pb2 as udp_route_pb2
from envoy.extensions.filters.udp.udp_proxy.v3 import udp_proxy_pb2
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzzing import deadline, fuzz_settings
from tests.harness import envoy_accepts
from xdsd.errors import ConfigError, Severity
from xdsd.model import Endpoint, Mesh, Port, Protocol, Resolution, Service
from xdsd.model.gateway_api import (
    CONTROLLER_NAME,
    BackendRef,
    Condition,
    GatewayAPI,
    GatewayClass,
    HeaderModifier,
    KubeGateway,
    Listener,
    ListenerTLS,
    ObjectRef,
    ReferenceGrant,
    Route,
    RouteFilter,
    RouteMatch,
    RouteRule,
    StringMatch,
)
from xdsd.model.rules import MatchKind
from xdsd.resources import CLUSTER, LISTENER, ROUTE
from xdsd.sources.gateway_api.convert import GATEWAY_NAME_LABEL, Converted, convert
from xdsd.sources.gateway_api.grpc import method_match
from xdsd.translate import MeshTranslation, NodeClass, Role, render_static

GROUP = "gateway.networking.k8s.io"
NODE = NodeClass("edge", role=Role.GATEWAY, labels=((GATEWAY_NAME_LABEL, "edge"),))
CLASS = GatewayClass("xdsd", CONTROLLER_NAME)


def _service(name: str, protocol: Protocol, address: str, namespace: str = "default") -> Service:
    return Service(name, namespace, (Port(9000, protocol),), (Endpoint(address),))


SERVICES = (
    _service("alpha", Protocol.TLS, "10.0.0.1"),
    _service("beta", Protocol.TLS, "10.0.0.2"),
    _service("db1", Protocol.TCP, "10.0.0.3"),
    _service("db2", Protocol.TCP, "10.0.0.4"),
    _service("grpc1", Protocol.GRPC, "10.0.0.5"),
    _service("grpc2", Protocol.HTTP2, "10.0.0.6"),
    _service("plain", Protocol.HTTP, "10.0.0.7"),
    _service("far", Protocol.TCP, "10.0.0.8", namespace="other"),
)

PASSTHROUGH = Listener("tls", 8443, "TLS", tls=ListenerTLS("Passthrough"))
TCP = Listener("tcp", 5432, "TCP")
HTTP = Listener("http", 8080, "HTTP")


def _gateway(*listeners: Listener) -> KubeGateway:
    return KubeGateway("edge", "default", "xdsd", listeners)


def _backend(name: str, weight: int = 1, port: int = 9000, namespace: str = "") -> BackendRef:
    return BackendRef(ObjectRef(name, "Service", namespace=namespace, port=port), weight)


def _route(kind: str, name: str, *rules: RouteRule, hostnames: tuple[str, ...] = ()) -> Route:
    parent = ObjectRef("edge", "Gateway", GROUP)
    return Route(kind, name, "default", (parent,), hostnames, rules)


def _convert(*objects: Any, grants: tuple[ReferenceGrant, ...] = ()) -> Converted:
    gateways = tuple(o for o in objects if isinstance(o, KubeGateway))
    routes = tuple(o for o in objects if isinstance(o, Route))
    api = GatewayAPI((CLASS,), gateways, routes, grants)
    return convert(api, SERVICES)


def _mesh(out: Converted) -> Mesh:
    return Mesh(services=SERVICES, gateways=out.gateways, virtual_services=out.virtual_services)


def _resources(out: Converted) -> tuple[dict[str, Any], dict[str, Any]]:
    snapshot = MeshTranslation(_mesh(out)).snapshot_for(NODE)
    listeners = {n: r.message for n, r in snapshot.get(LISTENER).items()}
    routes = {n: r.message for n, r in snapshot.get(ROUTE).items()}
    return listeners, routes


def _tcp_proxy(chain: Any) -> Any:
    proxy = tcp_proxy_pb2.TcpProxy()
    chain.filters[0].typed_config.Unpack(proxy)
    return proxy


def _conditions(out: Converted, kind: str, name: str) -> set[tuple[str, bool, str, str]]:
    return {
        (c.type, c.status, c.reason, c.scope)
        for c in out.conditions
        if c.target.kind == kind and c.target.name == name
    }


def test_tls_passthrough_routes_by_sni(tmp_path: Path) -> None:
    out = _convert(
        _gateway(PASSTHROUGH),
        _route(
            "TLSRoute", "a", RouteRule(backend_refs=(_backend("alpha"),)), hostnames=("a.test",)
        ),
        _route("TLSRoute", "b", RouteRule(backend_refs=(_backend("beta"),)), hostnames=("b.test",)),
    )
    assert not out.problems
    (gw,) = out.gateways
    assert gw.selector == ((GATEWAY_NAME_LABEL, "edge"),)
    assert gw.servers[0].tls is not None and gw.servers[0].hosts == ("*",)
    listeners, _ = _resources(out)
    chains = {
        tuple(c.filter_chain_match.server_names): _tcp_proxy(c).cluster
        for c in listeners["0.0.0.0_8443"].filter_chains
    }
    assert chains == {
        ("a.test",): "outbound|9000||alpha.default.svc.cluster.local",
        ("b.test",): "outbound|9000||beta.default.svc.cluster.local",
    }
    assert ("Accepted", True, "Accepted", "parentRefs[0]") in _conditions(out, "TLSRoute", "a")
    assert ("ResolvedRefs", True, "ResolvedRefs", "") in _conditions(out, "TLSRoute", "a")
    envoy_accepts(render_static(_mesh(out), NODE, admin_port=0), tmp_path / "envoy.json")


def test_tls_route_hostname_must_meet_the_listener() -> None:
    listener = Listener("tls", 8443, "TLS", "*.test", ListenerTLS("Passthrough"))
    out = _convert(
        _gateway(listener),
        _route("TLSRoute", "a", RouteRule(backend_refs=(_backend("alpha"),)), hostnames=("a.org",)),
    )
    assert not out.virtual_services
    assert ("Accepted", False, "NoMatchingListenerHostname", "parentRefs[0]") in _conditions(
        out, "TLSRoute", "a"
    )


def test_tcp_route_weighted_and_one_route_per_listener(tmp_path: Path) -> None:
    out = _convert(
        _gateway(TCP),
        _route("TCPRoute", "a", RouteRule(backend_refs=(_backend("db1", 80), _backend("db2", 20)))),
        _route("TCPRoute", "b", RouteRule(backend_refs=(_backend("db2"),))),
    )
    listeners, _ = _resources(out)
    (chain,) = listeners["0.0.0.0_5432"].filter_chains
    weighted = {c.name: c.weight for c in _tcp_proxy(chain).weighted_clusters.clusters}
    assert weighted == {
        "outbound|9000||db1.default.svc.cluster.local": 80,
        "outbound|9000||db2.default.svc.cluster.local": 20,
    }
    # as the API's conformance asks: both attached (Accepted), only the first routes;
    # the second is warned about, naming the first
    assert ("Accepted", True, "Accepted", "parentRefs[0]") in _conditions(out, "TCPRoute", "b")
    (warning,) = out.problems
    assert warning.severity is Severity.WARNING and warning.field == "spec.parentRefs[0]"
    assert "TCPRoute default/b" in warning.message and "TCPRoute default/a" in warning.message
    envoy_accepts(render_static(_mesh(out), NODE, admin_port=0), tmp_path / "envoy.json")


def test_two_tls_routes_for_one_sni(tmp_path: Path) -> None:
    """The first by namespace/name holds the SNI on the listener; the other keeps its
    other hostnames, is attached, and is warned about at the hostname's line."""
    out = _convert(
        _gateway(PASSTHROUGH),
        _route(
            "TLSRoute", "a", RouteRule(backend_refs=(_backend("alpha"),)), hostnames=("x.test",)
        ),
        _route(
            "TLSRoute",
            "b",
            RouteRule(backend_refs=(_backend("beta"),)),
            hostnames=("y.test", "x.test"),
        ),
    )
    listeners, _ = _resources(out)
    chains = {
        tuple(c.filter_chain_match.server_names): _tcp_proxy(c).cluster
        for c in listeners["0.0.0.0_8443"].filter_chains
    }
    assert chains == {
        ("x.test",): "outbound|9000||alpha.default.svc.cluster.local",
        ("y.test",): "outbound|9000||beta.default.svc.cluster.local",
    }
    assert ("Accepted", True, "Accepted", "parentRefs[0]") in _conditions(out, "TLSRoute", "b")
    (warning,) = out.problems
    assert warning.severity is Severity.WARNING and warning.field == "spec.hostnames[1]"
    assert "SNI 'x.test'" in warning.message and "TLSRoute default/a" in warning.message
    envoy_accepts(render_static(_mesh(out), NODE, admin_port=0), tmp_path / "envoy.json")


def test_http_and_grpc_routes_are_not_merged_on_a_hostname() -> None:
    """An HTTPRoute and a GRPCRoute with a hostname in common on one listener: the
    first by namespace/name is accepted, the other is ``Accepted`` False
    ``Conflicted`` and routes nothing; different hostnames do not conflict."""
    grpc = _route(
        "GRPCRoute",
        "a-grpc",
        _grpc_rule("pkg.Svc", "", _backend("grpc1")),
        hostnames=("*.example.com",),
    )
    http = _route(
        "HTTPRoute",
        "b-http",
        RouteRule(backend_refs=(_backend("plain"),)),
        hostnames=("web.example.com",),
    )
    other = _route(
        "HTTPRoute",
        "c-http",
        RouteRule(backend_refs=(_backend("plain"),)),
        hostnames=("web.example.org",),
    )
    out = _convert(_gateway(HTTP), grpc, http, other)
    assert ("Accepted", True, "Accepted", "parentRefs[0]") in _conditions(
        out, "GRPCRoute", "a-grpc"
    )
    refused = {c for c in out.conditions if c.target.name == "b-http" and c.type == "Accepted"}
    (condition,) = refused
    assert (condition.status, condition.reason) == (False, "Conflicted")
    assert "GRPCRoute default/a-grpc" in condition.message
    assert ("Accepted", True, "Accepted", "parentRefs[0]") in _conditions(
        out, "HTTPRoute", "c-http"
    )
    hosts = sorted(h for vs in out.virtual_services for h in vs.hosts)
    assert hosts == ["*.example.com", "web.example.org"]
    # the other way round: the HTTPRoute first by name wins
    first = _route(
        "HTTPRoute",
        "a-api",
        RouteRule(backend_refs=(_backend("plain"),)),
        hostnames=("web.example.com",),
    )
    out = _convert(_gateway(HTTP), first, grpc)
    assert ("Accepted", False, "Conflicted", "parentRefs[0]") in _conditions(
        out, "GRPCRoute", "a-grpc"
    )
    assert [vs.hosts for vs in out.virtual_services] == [("web.example.com",)]


def test_tcp_route_missing_and_cross_namespace_backends() -> None:
    rule = RouteRule(
        backend_refs=(_backend("nothing"), _backend("far", namespace="other"), _backend("db1"))
    )
    out = _convert(_gateway(TCP), _route("TCPRoute", "a", rule))
    (vs,) = out.virtual_services
    assert [d.destination.host for d in vs.tcp[0].route] == ["db1.default.svc.cluster.local"]
    found = _conditions(out, "TCPRoute", "a")
    assert ("ResolvedRefs", False, "BackendNotFound", "rules[0].backendRefs[0]") in found
    assert ("ResolvedRefs", False, "RefNotPermitted", "rules[0].backendRefs[1]") in found
    grant = ReferenceGrant(
        "let", "other", ((GROUP, "TCPRoute", "default"),), (("", "Service", "far"),)
    )
    out = _convert(_gateway(TCP), _route("TCPRoute", "a", rule), grants=(grant,))
    (vs,) = out.virtual_services
    assert "far.other.svc.cluster.local" in [d.destination.host for d in vs.tcp[0].route]


def test_tcp_route_without_backends_leaves_the_listener_out() -> None:
    out = _convert(_gateway(TCP), _route("TCPRoute", "a", RouteRule(backend_refs=(_backend("x"),))))
    listeners, _ = _resources(out)
    assert "0.0.0.0_5432" not in listeners


def test_tls_terminate_is_refused_by_name() -> None:
    term = Listener("term", 9443, "TLS", tls=ListenerTLS("Terminate"))
    out = _convert(_gateway(term))
    gateway = _conditions(out, "KubeGateway", "edge")
    assert ("Accepted", False, "UnsupportedValue", "listeners[term]") in gateway
    assert all(p.severity is Severity.WARNING for p in out.problems)
    texts = [str(p) for p in out.problems]
    assert any("listener 'term' is not served" in t for t in texts), texts
    assert not out.gateways and not out.virtual_services


UDP = Listener("dns", 5353, "UDP")
DATAGRAMS = (
    _service("dgram", Protocol.UDP, "10.0.0.9"),
    _service("dgram2", Protocol.UDP, "10.0.0.10"),
)


def _udp(out: Converted) -> dict[str, Any]:
    mesh = Mesh(
        services=(*SERVICES, *DATAGRAMS),
        gateways=out.gateways,
        virtual_services=out.virtual_services,
    )
    snapshot = MeshTranslation(mesh).snapshot_for(NODE)
    return {n: r.message for n, r in snapshot.get(LISTENER).items()}


def _convert_udp(*objects: Any) -> Converted:
    gateways = tuple(o for o in objects if isinstance(o, KubeGateway))
    routes = tuple(o for o in objects if isinstance(o, Route))
    return convert(GatewayAPI((CLASS,), gateways, routes), (*SERVICES, *DATAGRAMS))


def test_udp_route_becomes_a_udp_listener(tmp_path: Path) -> None:
    """A UDP listener and its UDPRoute's one backend: a UDP listener of its own (beside
    a TCP listener of the same number) proxying datagrams to the backend's cluster; a
    second UDPRoute on the listener is attached, warned about, and routes nothing."""
    tcp = Listener("tcp", 5353, "TCP")
    out = _convert_udp(
        _gateway(UDP, tcp),
        _route("UDPRoute", "a", RouteRule(backend_refs=(_backend("dgram"),))),
        _route("UDPRoute", "b", RouteRule(backend_refs=(_backend("dgram2"),))),
        _route("TCPRoute", "t", RouteRule(backend_refs=(_backend("db1"),))),
    )
    (gw,) = out.gateways
    udp_server = next(s for s in gw.servers if s.name == "dns")
    assert udp_server.datagrams_to == (("dgram.default.svc.cluster.local", 9000, 1),)
    assert ("Accepted", True, "Accepted", "parentRefs[0]") in _conditions(out, "UDPRoute", "b")
    (warning,) = [p for p in out.problems if "UDPRoute default/b" in p.message]
    assert "UDPRoute default/a" in warning.message
    listeners = _udp(out)
    assert set(listeners) == {"0.0.0.0_5353", "0.0.0.0_5353_udp"}
    udp = listeners["0.0.0.0_5353_udp"]
    assert udp.address.socket_address.protocol == udp.address.socket_address.UDP
    (flt,) = udp.listener_filters
    proxy = udp_proxy_pb2.UdpProxyConfig()
    flt.typed_config.Unpack(proxy)
    route = udp_route_pb2.Route()
    proxy.matcher.on_no_match.action.typed_config.Unpack(route)
    assert route.cluster == "outbound|9000||dgram.default.svc.cluster.local"
    mesh = Mesh(
        services=(*SERVICES, *DATAGRAMS),
        gateways=out.gateways,
        virtual_services=out.virtual_services,
    )
    envoy_accepts(render_static(mesh, NODE, admin_port=0), tmp_path / "envoy.json")


def test_weighted_udp_backends_are_one_cluster_of_localities(tmp_path: Path) -> None:
    """Envoy's UDP proxy has no weighted clusters: several backends are one STATIC
    cluster ``udp|BIND_PORT``, each backend a locality weighted by its weight, under
    locality-weighted balancing; Envoy accepts it."""
    weighted = RouteRule(backend_refs=(_backend("dgram", 80), _backend("dgram2", 20)))
    out = _convert_udp(_gateway(UDP), _route("UDPRoute", "w", weighted))
    (gw,) = out.gateways
    assert gw.servers[0].datagrams_to == (
        ("dgram.default.svc.cluster.local", 9000, 80),
        ("dgram2.default.svc.cluster.local", 9000, 20),
    )
    mesh = Mesh(services=(*SERVICES, *DATAGRAMS), gateways=out.gateways, virtual_services=())
    snapshot = MeshTranslation(mesh).snapshot_for(NODE)
    cluster = snapshot.get(CLUSTER)["udp|0.0.0.0_5353"].message
    assert cluster.common_lb_config.HasField("locality_weighted_lb_config")
    shares = {
        (
            e.locality.sub_zone,
            e.lb_endpoints[0].endpoint.address.socket_address.address,
        ): e.load_balancing_weight.value
        for e in cluster.load_assignment.endpoints
    }
    assert shares == {("udp-backend-0", "10.0.0.9"): 80000, ("udp-backend-1", "10.0.0.10"): 20000}
    proxy = udp_proxy_pb2.UdpProxyConfig()
    snapshot.get(LISTENER)["0.0.0.0_5353_udp"].message.listener_filters[0].typed_config.Unpack(
        proxy
    )
    route = udp_route_pb2.Route()
    proxy.matcher.on_no_match.action.typed_config.Unpack(route)
    assert route.cluster == "udp|0.0.0.0_5353"
    envoy_accepts(render_static(mesh, NODE, admin_port=0), tmp_path / "envoy.json")


def test_udp_route_refusals() -> None:
    """A backend port that is not UDP, an HTTP route to a UDP port, a DNS-resolved
    Service among weighted backends: each refused by name, and nothing forwarded."""
    out = _convert_udp(
        _gateway(UDP), _route("UDPRoute", "t", RouteRule(backend_refs=(_backend("db1"),)))
    )
    refused = [c for c in out.conditions if c.target.name == "t" and c.type == "ResolvedRefs"]
    assert [(c.status, c.reason) for c in refused] == [(False, "BackendNotFound")]
    assert "no UDP port 9000" in refused[0].message
    assert "0.0.0.0_5353_udp" not in _udp(out)
    out = _convert_udp(
        _gateway(TCP),
        _route("TCPRoute", "x", RouteRule(backend_refs=(_backend("db1"), _backend("dgram")))),
    )
    (refused_tcp,) = [
        c for c in out.conditions if c.target.name == "x" and c.type == "ResolvedRefs"
    ]
    assert (refused_tcp.status, refused_tcp.reason) == (False, "BackendNotFound")
    named = Service(
        "named",
        "default",
        (Port(9000, Protocol.UDP),),
        (Endpoint("dns.example.com"),),
        resolution=Resolution.DNS,
    )
    weighted = RouteRule(backend_refs=(_backend("dgram", 50), _backend("named", 50)))
    api = GatewayAPI((CLASS,), (_gateway(UDP),), (_route("UDPRoute", "d", weighted),))
    out = convert(api, (*SERVICES, *DATAGRAMS, named))
    assert ("Accepted", False, "UnsupportedValue", "rules[0]") in _conditions(out, "UDPRoute", "d")
    assert out.gateways[0].servers[0].datagrams_to == ()


def test_sidecars_take_no_udp_port(tmp_path: Path) -> None:
    """A Service's UDP port is a cluster, never a sidecar listener."""
    mesh = Mesh(services=(_service("plain", Protocol.HTTP, "10.0.0.7"), *DATAGRAMS[:1]))
    node = NodeClass("caller")
    snapshot = MeshTranslation(mesh).snapshot_for(node)
    clusters = set(snapshot.get(CLUSTER))
    assert "outbound|9000||dgram.default.svc.cluster.local" in clusters
    for listener in (r.message for r in snapshot.get(LISTENER).values()):
        assert listener.address.socket_address.protocol != listener.address.socket_address.UDP
        for chain in listener.filter_chains:
            assert "dgram" not in str(chain), listener.name
    envoy_accepts(render_static(mesh, node, admin_port=0), tmp_path / "envoy.json")


@pytest.mark.parametrize(
    ("kind", "service", "method", "expected"),
    [
        ("Exact", "pkg.Svc", "Get", (MatchKind.EXACT, "/pkg.Svc/Get")),
        ("Exact", "pkg.Svc", "", (MatchKind.PREFIX, "/pkg.Svc/")),
        ("Exact", "", "Get", (MatchKind.REGEX, "/[^/]+/Get")),
        ("Exact", "", "", (MatchKind.PREFIX, "/")),
        ("RegularExpression", "pkg\\..*", "", (MatchKind.REGEX, "/pkg\\..*/[^/]+")),
        ("RegularExpression", "", "G.t", (MatchKind.REGEX, "/[^/]+/G.t")),
    ],
)
def test_grpc_method_match(kind: str, service: str, method: str, expected: Any) -> None:
    got = method_match(RouteMatch(grpc_type=kind, grpc_service=service, grpc_method=method))
    assert (got.kind, got.value) == expected


def _grpc_rule(service: str, method: str, *backends: BackendRef, **kw: Any) -> RouteRule:
    match = RouteMatch(grpc_type="Exact", grpc_service=service, grpc_method=method, **kw)
    return RouteRule(matches=(match,), backend_refs=backends)


def test_grpc_route_precedence_headers_filters(tmp_path: Path) -> None:
    header = StringMatch("Exact", "canary", "X-Track")
    mirror = RouteFilter("RequestMirror", mirror=ObjectRef("grpc2", "Service", port=9000))
    modifier = RouteFilter(
        "RequestHeaderModifier", request_header_modifier=HeaderModifier(set=(("x-a", "1"),))
    )
    rules = (
        _grpc_rule("pkg.Svc", "", _backend("grpc1")),
        RouteRule(
            matches=(RouteMatch(grpc_service="pkg.Svc", grpc_method="Get", headers=(header,)),),
            filters=(modifier, mirror),
            backend_refs=(_backend("grpc2"),),
        ),
        _grpc_rule("pkg.Svc", "Get", _backend("grpc1", 3), _backend("grpc2", 1)),
    )
    out = _convert(_gateway(HTTP), _route("GRPCRoute", "g", *rules, hostnames=("g.test",)))
    assert not out.problems
    (vs,) = out.virtual_services
    assert vs.hosts == ("g.test",) and vs.gateways == ("default/edge",)
    first, second, third = vs.http
    # most specific first: the method with a header, then the method, then the service
    assert first.match[0].headers[0].name == "x-track"
    assert first.headers is not None and first.headers.request is not None
    assert [m.destination.host for m in first.mirrors] == ["grpc2.default.svc.cluster.local"]
    assert second.match[0].uri is not None and second.match[0].uri.value == "/pkg.Svc/Get"
    assert [d.weight for d in second.route] == [3, 1]
    assert third.match[0].uri is not None and third.match[0].uri.kind is MatchKind.PREFIX
    assert ("ResolvedRefs", True, "ResolvedRefs", "") in _conditions(out, "GRPCRoute", "g")


def test_grpc_backend_must_speak_http2_and_refusals() -> None:
    rules = (
        _grpc_rule("a.A", "M", _backend("plain")),
        RouteRule(filters=(RouteFilter("ExtensionRef"),), backend_refs=(_backend("grpc1"),)),
    )
    rules += (_grpc_rule("b.B", "", _backend("grpc1", 3), _backend("missing", 1)),)
    out = _convert(_gateway(HTTP), _route("GRPCRoute", "g", *rules))
    (vs,) = out.virtual_services
    by_path = {r.match[0].uri.value: r for r in vs.http if r.match[0].uri is not None}
    for path in ("/a.A/M", "/"):
        status = by_path[path].direct_response
        assert status is not None and status.status == 500, path
    shares = [(d.destination.host, d.weight) for d in by_path["/b.B/"].route]
    assert shares == [("grpc1.default.svc.cluster.local", 3), ("<unresolved-backend>", 1)]
    found = _conditions(out, "GRPCRoute", "g")
    assert ("ResolvedRefs", False, "UnsupportedProtocol", "rules[0].backendRefs[0]") in found
    assert ("Accepted", False, "UnsupportedValue", "rules[1].filters[0]") in found
    assert ("ResolvedRefs", False, "BackendNotFound", "rules[2].backendRefs[1]") in found


def test_grpc_route_not_allowed_on_a_tcp_listener() -> None:
    out = _convert(
        _gateway(TCP), _route("GRPCRoute", "g", _grpc_rule("a.A", "", _backend("grpc1")))
    )
    assert not out.virtual_services
    found: set[Any] = _conditions(out, "GRPCRoute", "g")
    assert ("Accepted", False, "NotAllowedByListeners", "parentRefs[0]") in found


def test_other_controllers_gateways_are_left_alone() -> None:
    api = GatewayAPI(
        (GatewayClass("other", "example.com/ctl"),),
        (KubeGateway("edge", "default", "other", (TCP,)),),
        (_route("TCPRoute", "a", RouteRule(backend_refs=(_backend("db1"),))),),
    )
    out = convert(api, SERVICES)
    assert not out.gateways and not out.virtual_services
    assert all(
        isinstance(c, Condition)
        and (c.target.kind == "TCPRoute" or (c.target.kind, c.reason) == ("KubeGateway", "Pending"))
        for c in out.conditions
    )


def _policy(name: str, *targets: ObjectRef, ca: ObjectRef | None = None, **kw: Any) -> Any:
    from xdsd.model.gateway_api import BackendTLSPolicy

    refs = (ca,) if ca is not None else ()
    return BackendTLSPolicy(name, "default", targets, refs, hostname="db.test", **kw)


CA_FILE = ObjectRef("certs/ca.pem", "File", "xdsd.dev")


def test_backend_tls_policy_originates_tls_on_the_gateway(tmp_path: Path) -> None:
    from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

    from tests.e2e.certs import CertAuthority
    from xdsd.model.service import CertificateFile
    from xdsd.resources import CLUSTER
    from xdsd.sources.gateway_api.convert import convert as convert_all

    ca = CertAuthority(tmp_path / "certs")
    policy = _policy("p", ObjectRef("db1", "Service"), ca=CA_FILE)
    api = GatewayAPI(
        (CLASS,),
        (_gateway(TCP),),
        (_route("TCPRoute", "a", RouteRule(backend_refs=(_backend("db1"),))),),
        backend_tls=(policy,),
    )
    out = convert_all(api, SERVICES, str(tmp_path))
    (rule,) = out.destination_rules
    assert rule.host == "db1.default.svc.cluster.local"
    tls = rule.traffic_policy.tls if rule.traffic_policy else None
    assert tls is not None and tls.sni == "db.test" and tls.subject_alt_names == ("db.test",)
    assert tls.ca_certificates == str(tmp_path / "certs" / "ca.pem")
    assert ("Accepted", True, "Accepted", "") in _conditions(out, "BackendTLSPolicy", "p")
    mesh = Mesh(
        services=SERVICES,
        gateways=out.gateways,
        virtual_services=out.virtual_services,
        destination_rules=out.destination_rules,
        certificates=(CertificateFile(tls.ca_certificates, ca.ca_path.read_bytes()),),
    )
    snapshot = MeshTranslation(mesh).snapshot_for(NODE)
    cluster = snapshot.get(CLUSTER)["outbound|9000||db1.default.svc.cluster.local"].message
    context = tls_pb2.UpstreamTlsContext()
    cluster.transport_socket.typed_config.Unpack(context)
    assert context.sni == "db.test"
    envoy_accepts(render_static(mesh, NODE, admin_port=0), tmp_path / "envoy.json")


def test_backend_tls_policy_refusals() -> None:
    from xdsd.sources.gateway_api.backend_tls import convert_backend_tls

    policies = (
        _policy("a-ok", ObjectRef("db1", "Service"), ca=CA_FILE),
        _policy("b-clash", ObjectRef("db1", "Service"), ca=CA_FILE),
        _policy("c-system", ObjectRef("db2", "Service"), well_known_ca_certificates="System"),
        _policy("d-configmap", ObjectRef("db2", "Service"), ca=ObjectRef("ca", "ConfigMap")),
        _policy("e-none", ObjectRef("nothing", "Service"), ca=CA_FILE),
    )
    out = convert_backend_tls(policies, SERVICES, "/cfg")
    assert [r.host for r in out.destination_rules] == ["db1.default.svc.cluster.local"]
    found = {(c.target.name, c.type, c.status, c.reason) for c in out.conditions}
    assert ("b-clash", "Accepted", False, "Conflicted") in found
    assert ("c-system", "Accepted", False, "NoValidCACertificate") in found
    assert ("d-configmap", "ResolvedRefs", False, "InvalidKind") in found
    assert ("d-configmap", "Accepted", False, "NoValidCACertificate") in found
    assert ("e-none", "ResolvedRefs", False, "BackendNotFound") in found


POLICY_FILES = """\
kind: Service
name: db1
ports: [{number: 9000, protocol: TCP}]
endpoints: [{address: 10.0.0.3}]
---
apiVersion: gateway.networking.k8s.io/v1alpha3
kind: BackendTLSPolicy
metadata: {name: db1, namespace: default}
spec:
  targetRefs: [{group: "", kind: Service, name: db1}]
  validation:
    caCertificateRefs: [{group: xdsd.dev, kind: File, name: certs/ca.pem}]
    hostname: db.test
"""


def test_backend_tls_policy_from_files_and_a_clashing_destination_rule(tmp_path: Path) -> None:
    from tests.pem import write_fake_pem
    from xdsd.sources import load_directory

    (tmp_path / "certs").mkdir()
    write_fake_pem(tmp_path / "certs" / "ca.pem")
    (tmp_path / "a.yaml").write_text(POLICY_FILES)
    result = load_directory(str(tmp_path))
    (rule,) = result.mesh.destination_rules
    assert rule.traffic_policy is not None and rule.traffic_policy.tls is not None
    assert rule.traffic_policy.tls.ca_certificates == str(tmp_path / "certs" / "ca.pem")
    (tmp_path / "b.yaml").write_text(
        "kind: DestinationRule\nname: mine\nhost: db1\ntrafficPolicy: {tls: {mode: DISABLE}}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_directory(str(tmp_path))
    texts = [str(p) for p in info.value.problems]
    assert any("a.yaml" in t and "b.yaml" in t for t in texts), texts


def test_backend_tls_policy_with_a_secrets_ca(tmp_path: Path) -> None:
    """A CA held by a TLS Secret's ``ca.crt``: the rule names its pseudo-path, and the
    load's certificate files hold the Secret's bytes for it."""
    import base64

    from tests.pem import FAKE_CERTIFICATE, FAKE_KEY
    from xdsd.sources import load_directory

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    secret = (
        "apiVersion: v1\nkind: Secret\nmetadata: {name: db-ca, namespace: default}\n"
        "type: kubernetes.io/tls\n"
        f"data: {{tls.crt: {b64(FAKE_CERTIFICATE)}, tls.key: {b64(FAKE_KEY)}, "
        f"ca.crt: {b64(FAKE_CERTIFICATE)}}}\n"
    )
    text = POLICY_FILES.replace(
        "{group: xdsd.dev, kind: File, name: certs/ca.pem}",
        '{group: "", kind: Secret, name: db-ca}',
    )
    (tmp_path / "a.yaml").write_text(text + "---\n" + secret)
    mesh = load_directory(str(tmp_path)).mesh
    (rule,) = mesh.destination_rules
    tls = rule.traffic_policy.tls if rule.traffic_policy else None
    assert tls is not None and tls.ca_certificates == "<secret>/default/db-ca/ca.crt"
    files = {c.path: c.data for c in mesh.certificates}
    assert files[tls.ca_certificates] == FAKE_CERTIFICATE.encode()


# -- fuzzing: any mix of listeners, L4/gRPC routes and policies converts and translates --

_NAMES = st.sampled_from(["a", "b", "alpha", "db1", "grpc1", "plain", "far", "nothing"])
_HOSTS = st.sampled_from(["", "*", "a.test", "*.test", "b.test", "*.a.test", "x.org"])


@st.composite
def _listeners(draw: st.DrawFn) -> Listener:
    protocol = draw(st.sampled_from(["TLS", "TCP", "UDP", "HTTP"]))
    mode = draw(st.sampled_from(["Passthrough", "Terminate"]))
    tls = ListenerTLS(mode) if protocol == "TLS" else None
    port = draw(st.sampled_from([8443, 5432, 8080, 53]))
    return Listener(draw(st.sampled_from(["l1", "l2", "l3"])), port, protocol, draw(_HOSTS), tls)


@st.composite
def _routes(draw: st.DrawFn) -> Route:
    kind = draw(st.sampled_from(["TLSRoute", "TCPRoute", "UDPRoute", "GRPCRoute"]))
    section = draw(st.sampled_from(["", "l1", "l2", "l3"]))
    parent = ObjectRef("edge", "Gateway", GROUP, section_name=section)
    rules = []
    for _ in range(draw(st.integers(0, 3))):
        backends = tuple(
            _backend(
                draw(_NAMES),
                draw(st.integers(0, 5)),
                draw(st.sampled_from([0, 9000, 1])),
                draw(st.sampled_from(["", "other"])),
            )
            for _ in range(draw(st.integers(0, 3)))
        )
        matches = tuple(
            RouteMatch(
                grpc_type=draw(st.sampled_from(["Exact", "RegularExpression"])),
                grpc_service=draw(st.sampled_from(["", "pkg.Svc", "a\\..*"])),
                grpc_method=draw(st.sampled_from(["", "Get", "G.t"])),
            )
            for _ in range(draw(st.integers(0, 2)))
        )
        rules.append(RouteRule(matches=matches, backend_refs=backends))
    hostnames = tuple(h for h in draw(st.lists(_HOSTS, max_size=3)) if h)
    name = draw(st.sampled_from(["r1", "r2", "r3"]))
    return Route(kind, name, "default", (parent,), hostnames, tuple(rules))


@fuzz_settings(scale=0.5)
@given(
    st.lists(_listeners(), min_size=1, max_size=4, unique_by=lambda x: x.name),
    st.lists(_routes(), max_size=5, unique_by=lambda r: (r.kind, r.name)),
    st.lists(
        st.builds(
            lambda t, ca: _policy("p" + t, ObjectRef(t, "Service"), ca=ca),
            _NAMES,
            st.sampled_from([CA_FILE, ObjectRef("x", "ConfigMap"), None]),
        ),
        max_size=3,
        unique_by=lambda p: p.name,
    ),
)
def test_fuzz_l4_and_grpc_conversion(
    listeners: list[Listener], routes: list[Route], policies: list[Any]
) -> None:
    from tests.pem import FAKE_CERTIFICATE
    from xdsd.errors import TranslationError
    from xdsd.model.service import CertificateFile

    with deadline("test_fuzz_l4_and_grpc_conversion"):
        ports = {}
        kept = [ports.setdefault(x.port, x) for x in listeners if x.port not in ports]
        api = GatewayAPI((CLASS,), (_gateway(*kept),), tuple(routes), backend_tls=tuple(policies))
        out = convert(api, SERVICES, root="/cfg")
        assert len({vs.key for vs in out.virtual_services}) == len(out.virtual_services)
        assert all(c.reason for c in out.conditions)
        mesh = Mesh(
            services=SERVICES,
            gateways=out.gateways,
            virtual_services=out.virtual_services,
            destination_rules=out.destination_rules,
            # what the loader reads for the CA file the policies name
            certificates=(CertificateFile("/cfg/certs/ca.pem", FAKE_CERTIFICATE.encode()),),
        )
        try:
            MeshTranslation(mesh).snapshot_for(NODE)
        except TranslationError as err:
            assert all(p.path for p in err.problems)


def test_a_backend_filter_other_than_headers_answers_500_and_is_reported() -> None:
    """A RequestMirror on a GRPCRoute backendRef is never dropped silently: the rule
    answers 500 and the route says why, at the filter; a header modifier there is
    that destination's."""
    mirror = RouteFilter("RequestMirror", mirror=ObjectRef("grpc2", "Service", port=9000))
    modifier = RouteFilter(
        "RequestHeaderModifier", request_header_modifier=HeaderModifier(set=(("x-a", "1"),))
    )
    mirrored = BackendRef(ObjectRef("grpc1", "Service", port=9000), 1, (modifier, mirror))
    headed = BackendRef(ObjectRef("grpc1", "Service", port=9000), 1, (modifier,))
    rules = (
        RouteRule(matches=(RouteMatch(grpc_service="a.A"),), backend_refs=(mirrored,)),
        RouteRule(matches=(RouteMatch(grpc_service="b.B"),), backend_refs=(headed,)),
    )
    out = _convert(_gateway(HTTP), _route("GRPCRoute", "g", *rules))
    (vs,) = out.virtual_services
    by_path = {r.match[0].uri.value: r for r in vs.http if r.match[0].uri is not None}
    refused = by_path["/a.A/"]
    assert refused.direct_response is not None and refused.direct_response.status == 500
    assert not refused.mirrors and not refused.route
    served = by_path["/b.B/"]
    assert served.direct_response is None and served.route[0].headers is not None
    found = _conditions(out, "GRPCRoute", "g")
    assert ("Accepted", False, "UnsupportedValue", "rules[0].backendRefs[0].filters[1]") in found
    assert not [c for c in found if c[3].startswith("rules[1]")]
    _resources(out)  # translates
