"""The conversion of Gateways and HTTPRoutes, on model objects, down to the Envoy routes
a gateway node gets (and that Envoy accepts them)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from envoy.config.route.v3 import route_components_pb2

from tests.harness import envoy_accepts
from xdsd.model import Mesh, Service
from xdsd.model.gateway_api import (
    CONTROLLER_NAME,
    BackendRef,
    GatewayAPI,
    GatewayClass,
    HeaderModifier,
    KubeGateway,
    Listener,
    ListenerTLS,
    ObjectRef,
    PathModifier,
    ReferenceGrant,
    Route,
    RouteFilter,
    RouteMatch,
    RouteRule,
    StringMatch,
)
from xdsd.model.service import Endpoint, Port, Protocol
from xdsd.resources import ROUTE
from xdsd.sources.gateway_api import conditions as cond
from xdsd.sources.gateway_api.convert import GATEWAY_NAME_LABEL, Converted, convert
from xdsd.sources.gateway_api.http import precedence
from xdsd.translate import MeshTranslation, NodeClass, Role, render_static

GROUP = "gateway.networking.k8s.io"
SERVICES = (
    Service("web", "apps", (Port(8080, Protocol.HTTP),), (Endpoint("10.0.0.1"),)),
    Service("api", "apps", (Port(8080, Protocol.HTTP),), (Endpoint("10.0.0.2"),)),
    Service("web", "infra", (Port(8080, Protocol.HTTP),), (Endpoint("10.0.0.3"),)),
)
CLASS = GatewayClass("xdsd", CONTROLLER_NAME)
GATEWAY = KubeGateway(
    "edge",
    "infra",
    "xdsd",
    (Listener("http", 80, "HTTP"), Listener("a", 8080, "HTTP", hostname="*.example.com")),
)
NODE = NodeClass("edge", "infra", role=Role.GATEWAY, labels=((GATEWAY_NAME_LABEL, "edge"),))


def backend(name: str, namespace: str = "", weight: int = 1, port: int = 8080) -> BackendRef:
    return BackendRef(ObjectRef(name, "Service", namespace=namespace, port=port), weight)


def route(
    name: str,
    *rules: RouteRule,
    hostnames: tuple[str, ...] = (),
    ns: str = "infra",
    section: str = "",
) -> Route:
    parent = ObjectRef("edge", "Gateway", GROUP, namespace="infra", section_name=section)
    return Route("HTTPRoute", name, ns, (parent,), hostnames, rules)


def prefix(value: str, **kw: Any) -> RouteMatch:
    return RouteMatch(StringMatch("PathPrefix", value), **kw)


def run(*routes: Route, grants: tuple[ReferenceGrant, ...] = ()) -> Converted:
    api = GatewayAPI((CLASS,), (GATEWAY,), routes, grants)
    return convert(api, SERVICES)


def envoy_routes(out: Converted, name: str = "http.80") -> list[Any]:
    assert not out.problems
    mesh = Mesh(services=SERVICES, gateways=out.gateways, virtual_services=out.virtual_services)
    snapshot = MeshTranslation(mesh).snapshot_for(NODE)
    config = snapshot.get(ROUTE)[name].message
    return [r for vh in config.virtual_hosts for r in vh.routes]


def test_gateway_becomes_an_istio_gateway_bound_by_label() -> None:
    other = KubeGateway("other", "infra", "not-ours", (Listener("http", 80, "HTTP"),))
    out = convert(GatewayAPI((CLASS,), (GATEWAY, other)), SERVICES)
    (gw,) = out.gateways
    assert gw.selector == ((GATEWAY_NAME_LABEL, "edge"),) and gw.namespace == "infra"
    assert [(s.name, s.port.number, s.hosts) for s in gw.servers] == [
        ("http", 80, ("*",)),
        ("a", 8080, ("*.example.com",)),
    ]
    ignored = [c for c in out.conditions if c.target == other.key]
    assert [(c.type, c.status, c.reason) for c in ignored] == [("Accepted", False, "Pending")]


def test_unconverted_listener_is_warned_by_name() -> None:
    terminate = ListenerTLS("Terminate", (ObjectRef("c", "Secret"),))
    gw = KubeGateway("edge", "infra", "xdsd", (Listener("raw", 9000, "TLS", tls=terminate),))
    out = convert(GatewayAPI((CLASS,), (gw,)), SERVICES)
    assert out.gateways == ()
    assert any("listener 'raw' is not served" in p.message for p in out.problems)
    assert any(c.reason == cond.UNSUPPORTED_VALUE for c in out.conditions)
    https = KubeGateway("edge", "infra", "xdsd", (Listener("s", 443, "HTTPS"),))
    out = convert(GatewayAPI((CLASS,), (https,)), SERVICES)
    assert any("listener 's' is not served" in p.message for p in out.problems)


def test_precedence_across_routes() -> None:
    a = route("a", RouteRule(matches=(prefix("/"),), backend_refs=(backend("web"),)))
    b = route(
        "b",
        RouteRule(matches=(prefix("/api"),), backend_refs=(backend("web"),)),
        RouteRule(
            matches=(RouteMatch(StringMatch("Exact", "/api/v1")),), backend_refs=(backend("web"),)
        ),
        RouteRule(
            matches=(prefix("/api", headers=(StringMatch("Exact", "v2", "X-Version"),)),),
            backend_refs=(backend("web"),),
        ),
        RouteRule(matches=(prefix("/api", method="POST"),), backend_refs=(backend("web"),)),
    )
    out = run(b, a)
    routes = envoy_routes(out)
    shape = [(r.match.WhichOneof("path_specifier"), r.name) for r in routes]
    assert shape == [
        ("path", "infra.b.1"),
        ("path", "infra.b.3"),
        ("prefix", "infra.b.3"),
        ("path", "infra.b.2"),
        ("prefix", "infra.b.2"),
        ("path", "infra.b.0"),
        ("prefix", "infra.b.0"),
        ("prefix", "infra.a.0"),
    ]
    assert routes[-1].match.prefix == "/"
    assert routes[1].match.path == "/api" and routes[2].match.prefix == "/api/"


def test_precedence_key() -> None:
    assert precedence(RouteMatch(StringMatch("Exact", "/a"))) < precedence(prefix("/longer"))
    assert precedence(prefix("/longer")) < precedence(prefix("/l"))
    assert precedence(prefix("/a", method="GET")) < precedence(
        prefix("/a", headers=(StringMatch("Exact", "v", "h"),))
    )


def test_ties_go_to_namespace_name_order() -> None:
    rule = RouteRule(matches=(prefix("/"),), backend_refs=(backend("web", "infra"),))
    out = run(route("z", rule), route("m", rule))
    assert [r.name for r in envoy_routes(out)] == ["infra.m.0", "infra.z.0"]


def test_hostname_intersection_gives_one_virtual_service_per_listener_and_host() -> None:
    rule = RouteRule(backend_refs=(backend("web"),))
    out = run(route("r", rule, hostnames=("a.example.com", "other.org")))
    hosts = sorted((vs.listener, vs.hosts) for vs in out.virtual_services)
    # listener "http" (no hostname) takes both; listener "a" only a.example.com
    assert hosts == [
        ("a", ("a.example.com",)),
        ("http", ("a.example.com",)),
        ("http", ("other.org",)),
    ]
    ports = {
        (vs.listener, vs.hosts[0]): {m.port for h in vs.http for m in h.match}
        for vs in out.virtual_services
    }
    assert ports == {
        ("a", "a.example.com"): {8080},
        ("http", "a.example.com"): {80},
        ("http", "other.org"): {80},
    }
    assert sorted(vs.name for vs in out.virtual_services) == [
        "gateway-api.edge~a~a.example.com",
        "gateway-api.edge~http~a.example.com",
        "gateway-api.edge~http~other.org",
    ]


def test_missing_and_refused_backends_answer_500_for_their_share() -> None:
    rule = RouteRule(
        backend_refs=(
            backend("web", weight=50),
            backend("nope", weight=50),
            backend("api", "apps", 0),
        )
    )
    out = run(route("r", rule, section="http"))
    (r,) = envoy_routes(out)
    assert (
        r.route.cluster_not_found_response_code
        == route_components_pb2.RouteAction.INTERNAL_SERVER_ERROR
    )
    clusters = [(c.name, c.weight.value) for c in r.route.weighted_clusters.clusters]
    assert clusters == [
        ("outbound|8080||web.infra.svc.cluster.local", 50),
        ("gateway-api|unresolved-backend", 50),
    ]
    reasons = {
        (c.type, c.status, c.reason)
        for c in out.conditions
        if c.target == ("HTTPRoute", "infra", "r")
    }
    assert ("ResolvedRefs", False, "BackendNotFound") in reasons
    (resolved,) = [
        c for c in out.conditions if c.type == "ResolvedRefs" and c.target.kind == "HTTPRoute"
    ]
    assert "no Service infra/nope" in resolved.message
    assert "no ReferenceGrant in namespace 'apps'" in resolved.message
    assert ("Accepted", True, "Accepted") in reasons


def test_grant_allows_the_cross_namespace_backend() -> None:
    rule = RouteRule(backend_refs=(backend("web", "apps"),))
    grant = ReferenceGrant("g", "apps", ((GROUP, "HTTPRoute", "infra"),), (("", "Service", ""),))
    refused = envoy_routes(run(route("r", rule, section="http")))
    assert refused[0].direct_response.status == 500
    allowed = envoy_routes(run(route("r", rule, section="http"), grants=(grant,)))
    assert allowed[0].route.cluster == "outbound|8080||web.apps.svc.cluster.local"


def test_all_zero_weights_and_no_backends_answer_500() -> None:
    zero = RouteRule(matches=(prefix("/z"),), backend_refs=(backend("web", weight=0),))
    none = RouteRule(matches=(prefix("/n"),))
    routes = envoy_routes(run(route("r", zero, none, section="http")))
    assert {r.direct_response.status for r in routes} == {500}


def test_filters() -> None:
    mods = RouteFilter(
        "RequestHeaderModifier",
        request_header_modifier=HeaderModifier(
            set=(("x-set", "1"),), add=(("x-add", "2"),), remove=("x-rm",)
        ),
    )
    resp = RouteFilter(
        "ResponseHeaderModifier", response_header_modifier=HeaderModifier(set=(("x-r", "1"),))
    )
    rewrite = RouteFilter(
        "URLRewrite",
        rewrite_hostname="h.example",
        rewrite_path=PathModifier("ReplacePrefixMatch", "/new"),
    )
    mirror = RouteFilter(
        "RequestMirror", mirror=ObjectRef("web", "Service", port=8080), mirror_percent=25.0
    )
    redirect = RouteFilter(
        "RequestRedirect",
        redirect_scheme="https",
        redirect_hostname="r.example",
        redirect_status=301,
        redirect_path=PathModifier("ReplaceFullPath", "/moved"),
    )
    timed = RouteRule(
        matches=(prefix("/old"),),
        filters=(mods, resp, rewrite, mirror),
        backend_refs=(backend("web"),),
        request_timeout=timedelta(seconds=3),
        backend_request_timeout=timedelta(seconds=1),
    )
    moved = RouteRule(matches=(prefix("/go"),), filters=(redirect,))
    routes = {
        (r.name, r.match.WhichOneof("path_specifier")): r
        for r in envoy_routes(run(route("r", timed, moved, section="http")))
    }
    old = routes[("infra.r.0", "prefix")]
    assert old.match.prefix == "/old/" and old.route.prefix_rewrite == "/new/"
    assert routes[("infra.r.0", "path")].route.prefix_rewrite == "/new"
    assert old.route.host_rewrite_literal == "h.example"
    assert old.route.timeout.seconds == 3 and old.route.retry_policy.per_try_timeout.seconds == 1
    assert old.route.request_mirror_policies[0].runtime_fraction.default_value.numerator == 250000
    assert {h.header.key for h in old.request_headers_to_add} == {"x-set", "x-add"}
    assert list(old.request_headers_to_remove) == ["x-rm"]
    assert [h.header.key for h in old.response_headers_to_add] == ["x-r"]
    go = routes[("infra.r.1", "prefix")].redirect
    assert (go.scheme_redirect, go.host_redirect, go.path_redirect) == (
        "https",
        "r.example",
        "/moved",
    )
    assert go.response_code == route_components_pb2.RedirectAction.MOVED_PERMANENTLY


def test_prefix_rewrite_of_root_and_redirect_prefix() -> None:
    rewrite = RouteFilter("URLRewrite", rewrite_path=PathModifier("ReplacePrefixMatch", "/v2"))
    redirect = RouteFilter(
        "RequestRedirect", redirect_path=PathModifier("ReplacePrefixMatch", "/to")
    )
    root = RouteRule(filters=(rewrite,), backend_refs=(backend("web"),))
    moved = RouteRule(matches=(prefix("/from"),), filters=(redirect,))
    routes = {
        (r.name, r.match.WhichOneof("path_specifier")): r
        for r in envoy_routes(run(route("r", root, moved, section="http")))
    }
    regex = routes[("infra.r.0", "prefix")].route.regex_rewrite
    assert (regex.pattern.regex, regex.substitution) == ("^/", "/v2/")
    assert routes[("infra.r.1", "prefix")].redirect.prefix_rewrite == "/to/"
    assert routes[("infra.r.1", "path")].redirect.prefix_rewrite == "/to"
    assert (
        routes[("infra.r.1", "prefix")].redirect.response_code
        == route_components_pb2.RedirectAction.FOUND
    )


def test_unsupported_filter_answers_500() -> None:
    rule = RouteRule(filters=(RouteFilter("ExtensionRef"),), backend_refs=(backend("web"),))
    (r,) = envoy_routes(run(route("r", rule, section="http")))
    assert r.direct_response.status == 500


def test_per_backend_headers() -> None:
    add = RouteFilter(
        "RequestHeaderModifier", request_header_modifier=HeaderModifier(set=(("x-b", "web"),))
    )
    rule = RouteRule(
        backend_refs=(
            BackendRef(ObjectRef("web", "Service", port=8080), 1, (add,)),
            BackendRef(ObjectRef("api", "Service", namespace="apps", port=8080), 1),
        )
    )
    grant = ReferenceGrant("g", "apps", ((GROUP, "HTTPRoute", "infra"),), (("", "Service", ""),))
    (r,) = envoy_routes(run(route("r", rule, section="http"), grants=(grant,)))
    first = r.route.weighted_clusters.clusters[0]
    assert [h.header.key for h in first.request_headers_to_add] == ["x-b"]
    assert not r.route.weighted_clusters.clusters[1].request_headers_to_add


def test_envoy_accepts_the_converted_gateway(tmp_path: Path) -> None:
    rule = RouteRule(backend_refs=(backend("web", weight=1), backend("nope", weight=1)))
    out = run(route("r", rule))
    mesh = Mesh(services=SERVICES, gateways=out.gateways, virtual_services=out.virtual_services)
    envoy_accepts(render_static(mesh, NODE, admin_port=0), tmp_path / "envoy.json")


def test_https_listener_certificates_from_secrets_and_files() -> None:
    from xdsd.model.gateway_api import ListenerTLS, TLSSecret
    from xdsd.sources.gateway_api.refs import secret_files

    secret = TLSSecret("edge-cert", "certs", b"CERT", b"KEY")
    cross = ObjectRef("edge-cert", "Secret", namespace="certs")
    listener = Listener("s", 443, "HTTPS", tls=ListenerTLS("Terminate", (cross,)))
    gw = KubeGateway("edge", "infra", "xdsd", (listener,))
    refused = convert(GatewayAPI((CLASS,), (gw,), secrets=(secret,)), SERVICES)
    assert not refused.gateways
    assert any(c.reason == cond.REF_NOT_PERMITTED for c in refused.conditions)
    grant = ReferenceGrant("g", "certs", ((GROUP, "Gateway", "infra"),), (("", "Secret", ""),))
    api = GatewayAPI((CLASS,), (gw,), (), (grant,), secrets=(secret,))
    (server,) = convert(api, SERVICES).gateways[0].servers
    assert server.tls is not None and server.port.protocol_name == "HTTPS"
    paths = (server.tls.server_certificate, server.tls.private_key)
    assert paths == ("<secret>/certs/edge-cert/tls.crt", "<secret>/certs/edge-cert/tls.key")
    assert [f.data for f in secret_files(api, paths)] == [b"CERT", b"KEY"]
    missing = GatewayAPI((CLASS,), (gw,), (), (grant,))
    assert any(
        c.reason == cond.INVALID_CERTIFICATE_REF for c in convert(missing, SERVICES).conditions
    )
    by_file = ListenerTLS(
        "Terminate",
        (ObjectRef("c.pem", "File", "xdsd.dev"),),
        (("xdsd.dev/private-key", "k.pem"),),
    )
    files = KubeGateway("edge", "infra", "xdsd", (Listener("s", 443, "HTTPS", tls=by_file),))
    (server,) = convert(GatewayAPI((CLASS,), (files,)), SERVICES, "/cfg").gateways[0].servers
    assert server.tls is not None
    assert (server.tls.server_certificate, server.tls.private_key) == ("/cfg/c.pem", "/cfg/k.pem")
    no_key = ListenerTLS("Terminate", (ObjectRef("c.pem", "File", "xdsd.dev"),))
    nokey = KubeGateway("edge", "infra", "xdsd", (Listener("s", 443, "HTTPS", tls=no_key),))
    out = convert(GatewayAPI((CLASS,), (nokey,)), SERVICES)
    assert any(c.reason == cond.INVALID_CERTIFICATE_REF for c in out.conditions)


def test_cors_filter() -> None:
    cors = RouteFilter(
        "CORS",
        cors=(
            ("allowOrigins", ("https://*.example.com", "https://a.org")),
            ("allowCredentials", True),
            ("allowMethods", ("GET",)),
            ("allowHeaders", ("x-a",)),
            ("exposeHeaders", ("x-b",)),
            ("maxAge", 60),
        ),
    )
    out = run(
        route("r", RouteRule(filters=(cors,), backend_refs=(backend("web"),)), section="http")
    )
    policy = out.virtual_services[0].http[0].cors_policy
    assert policy is not None
    assert [o.value for o in policy.allow_origins] == [r"https://.*\.example\.com", "https://a.org"]
    assert policy.allow_credentials is True and policy.max_age == timedelta(seconds=60)
    assert (policy.allow_methods, policy.allow_headers, policy.expose_headers) == (
        ("GET",),
        ("x-a",),
        ("x-b",),
    )
    envoy_routes(out)


def test_backend_filters_other_than_headers_answer_500_and_are_reported() -> None:
    """A rewrite, redirect, mirror or CORS on one backendRef cannot be applied to that
    destination alone: the rule answers 500 and the route says so at the filter."""
    filters = (
        RouteFilter("URLRewrite", rewrite_hostname="internal.example.com"),
        RouteFilter("RequestRedirect", redirect_hostname="elsewhere.example.com"),
        RouteFilter("RequestMirror", mirror=ObjectRef("api", "Service", "", "apps", 8080)),
        RouteFilter("CORS", cors=(("allowOrigins", ("https://a.org",)),)),
    )
    header = RouteFilter(
        "RequestHeaderModifier", request_header_modifier=HeaderModifier(set=(("x-a", "1"),))
    )
    for f in filters:
        bad = BackendRef(ObjectRef("web", "Service", port=8080), 1, (header, f))
        fine = BackendRef(ObjectRef("web", "Service", port=8080), 1, (header,))
        rules = (
            RouteRule(matches=(RouteMatch(StringMatch("Exact", "/bad")),), backend_refs=(bad,)),
            RouteRule(matches=(RouteMatch(StringMatch("Exact", "/ok")),), backend_refs=(fine,)),
        )
        out = run(route("r", *rules, section="http"))
        by_name = {r.match.path: r for r in envoy_routes(out)}
        assert by_name["/bad"].direct_response.status == 500, f.type
        assert by_name["/ok"].WhichOneof("action") == "route", f.type
        refusals = [
            (c.status, c.reason, c.scope)
            for c in out.conditions
            if c.target.kind == "HTTPRoute"
            and c.type == cond.ACCEPTED
            and c.scope.startswith("rules")
        ]
        assert refusals == [(False, cond.UNSUPPORTED_VALUE, "rules[0].backendRefs[0].filters[1]")]
