"""Routes from VirtualServices, default routes, domains."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from envoy.config.route.v3 import route_components_pb2

from tests.translate.meshes import FQDN, bookinfo, http, service
from xdsd.errors import TranslationError
from xdsd.model import (
    Destination,
    DestinationRule,
    Endpoint,
    HeaderMatch,
    HTTPMatch,
    HTTPRoute,
    Mesh,
    Origin,
    Retries,
    RouteDestination,
    StringMatch,
    Subset,
    VirtualService,
)
from xdsd.model.mesh import wildcard_matches
from xdsd.model.rules import MatchKind
from xdsd.translate.routes import (
    DEFAULT_RETRY_ON,
    MatcherStyle,
    RouteBuilder,
    dedupe_domains,
    port_domains,
    proxy_domains,
    retry_policy,
    virtual_service_index,
)

REVIEWS = FQDN.format("reviews")


def routes_of(
    mesh: Mesh, name: str, port: int, style: MatcherStyle = MatcherStyle.STRING_MATCH
) -> list[Any]:
    svc = mesh.service_by_name("default", name)
    assert svc is not None
    return RouteBuilder(mesh, style).routes(svc, port)


def one_rule_mesh(
    *routes: HTTPRoute, gateways: tuple[str, ...] = (), extra: tuple[Any, ...] = ()
) -> Mesh:
    services = (
        service("reviews", http(9080), http(9090), endpoints=(Endpoint("10.0.0.1"),)),
        service("ratings", http(7070), endpoints=(Endpoint("10.0.0.2"),)),
        service("details", http(9080), endpoints=(Endpoint("10.0.0.3"),)),
        *extra,
    )
    vs = VirtualService(
        "reviews",
        hosts=("reviews",),
        gateways=gateways,
        http=routes,
        origin=Origin("rules/vs.yaml", 3),
    )
    rule = DestinationRule("reviews", "reviews", subsets=(Subset("v1"), Subset("v2")))
    return Mesh(services=services, virtual_services=(vs,), destination_rules=(rule,))


def test_default_route_without_virtual_service() -> None:
    (route,) = routes_of(bookinfo(), "productpage", 9080)
    assert route.name == "default"
    assert route.match.prefix == "/"
    assert not route.match.headers
    assert route.route.cluster == "outbound|9080||" + FQDN.format("productpage")
    assert route.route.HasField("timeout") and route.route.timeout.ToTimedelta() == timedelta(0)
    policy = route.route.retry_policy
    assert (policy.num_retries.value, policy.retry_on) == (2, DEFAULT_RETRY_ON)
    assert [p.name for p in policy.retry_host_predicate] == [
        "envoy.retry_host_predicates.previous_hosts"
    ]
    assert policy.host_selection_retry_max_attempts == 5


def test_virtual_service_routes() -> None:
    routes = routes_of(bookinfo(), "reviews", 9080)
    assert [r.name for r in routes] == ["jason", "jason", "split"]
    jason_header, jason_prefix, split = routes
    (header,) = jason_header.match.headers
    assert (header.name, header.string_match.exact) == ("end-user", "jason")
    assert jason_header.match.prefix == "/"
    assert jason_prefix.match.prefix == "/beta" and not jason_prefix.match.headers
    for route in (jason_header, jason_prefix):
        assert route.route.cluster == f"outbound|9080|v2|{REVIEWS}"
        assert route.route.timeout.ToTimedelta() == timedelta(seconds=3)
    weighted = split.route.weighted_clusters
    assert [(c.name, c.weight.value) for c in weighted.clusters] == [
        (f"outbound|9080|v1|{REVIEWS}", 80),
        (f"outbound|9080|v3|{REVIEWS}", 20),
    ]
    assert not weighted.HasField("total_weight")  # deprecated: Envoy sums the weights
    assert split.route.timeout.ToTimedelta() == timedelta(0)
    policy = split.route.retry_policy
    assert policy.num_retries.value == 4
    assert policy.per_try_timeout.ToTimedelta() == timedelta(milliseconds=500)
    assert policy.retry_on == "gateway-error,retriable-status-codes"
    assert list(policy.retriable_status_codes) == [503]


MATCHES = [
    (HTTPMatch(uri=StringMatch(MatchKind.EXACT, "/a")), {"path": "/a"}, []),
    (HTTPMatch(uri=StringMatch(MatchKind.PREFIX, "/b")), {"prefix": "/b"}, []),
    (HTTPMatch(uri=StringMatch(MatchKind.REGEX, "/c/[0-9]+")), {"safe_regex": "/c/[0-9]+"}, []),
    (
        HTTPMatch(
            headers=(
                HeaderMatch("x-a", StringMatch(MatchKind.EXACT, "1")),
                HeaderMatch("x-b", StringMatch(MatchKind.PREFIX, "pre")),
                HeaderMatch("x-c", StringMatch(MatchKind.REGEX, "v[12]")),
            ),
            method=StringMatch(MatchKind.EXACT, "GET"),
        ),
        {"prefix": "/"},
        [
            ("x-a", "exact", "1"),
            ("x-b", "prefix", "pre"),
            ("x-c", "safe_regex", "v[12]"),
            (":method", "exact", "GET"),
        ],
    ),
]


def _path(match: Any) -> dict[str, str]:
    kind = match.WhichOneof("path_specifier")
    value = match.safe_regex.regex if kind == "safe_regex" else getattr(match, kind)
    return {kind: value}


@pytest.mark.parametrize(("block", "path", "headers"), MATCHES)
def test_match_translation(
    block: HTTPMatch, path: dict[str, str], headers: list[tuple[str, str, str]]
) -> None:
    mesh = one_rule_mesh(
        HTTPRoute("r", match=(block,), route=(RouteDestination(Destination("reviews")),))
    )
    (route,) = routes_of(mesh, "reviews", 9080)
    assert _path(route.match) == path
    got = []
    for header in route.match.headers:
        assert header.WhichOneof("header_match_specifier") == "string_match"
        kind = header.string_match.WhichOneof("match_pattern")
        value = (
            header.string_match.safe_regex.regex
            if kind == "safe_regex"
            else getattr(header.string_match, kind)
        )
        got.append((header.name, kind, value))
    assert got == headers


def test_mosn_gets_deprecated_header_fields() -> None:
    block = MATCHES[3][0]
    mesh = one_rule_mesh(
        HTTPRoute("r", match=(block,), route=(RouteDestination(Destination("reviews")),))
    )
    (route,) = routes_of(mesh, "reviews", 9080, MatcherStyle.DEPRECATED)
    got = [(h.name, h.WhichOneof("header_match_specifier")) for h in route.match.headers]
    assert got == [
        ("x-a", "exact_match"),
        ("x-b", "safe_regex_match"),  # MOSN reads no prefix_match (see test_mosn.py)
        ("x-c", "safe_regex_match"),
        (":method", "exact_match"),
    ]
    assert route.match.headers[2].safe_regex_match.regex == "^(?:v[12])$"


def test_no_match_blocks_means_everything_and_block_port_filters() -> None:
    mesh = one_rule_mesh(
        HTTPRoute(
            "only-9090",
            match=(HTTPMatch(port=9090, uri=StringMatch(MatchKind.PREFIX, "/x")),),
            route=(RouteDestination(Destination("reviews", "v1")),),
        ),
        HTTPRoute(
            "mixed",
            match=(
                HTTPMatch(name="a", port=9090),
                HTTPMatch(name="b", uri=StringMatch(MatchKind.EXACT, "/y")),
            ),
            route=(RouteDestination(Destination("reviews", "v2")),),
        ),
        HTTPRoute("", route=(RouteDestination(Destination("reviews")),)),
    )
    on_9080 = routes_of(mesh, "reviews", 9080)
    assert [(r.name, _path(r.match)) for r in on_9080] == [
        ("mixed.b", {"path": "/y"}),
        ("", {"prefix": "/"}),
    ]
    on_9090 = routes_of(mesh, "reviews", 9090)
    assert [r.name for r in on_9090] == ["only-9090", "mixed.a", "mixed.b", ""]
    # the destination port defaults to the port of the virtual host
    assert on_9090[0].route.cluster == f"outbound|9090|v1|{REVIEWS}"
    assert on_9080[1].route.cluster == f"outbound|9080||{REVIEWS}"


def test_destination_port_defaults() -> None:
    mesh = one_rule_mesh(
        HTTPRoute(
            "to-ratings",
            match=(HTTPMatch(uri=StringMatch(MatchKind.PREFIX, "/r")),),
            route=(RouteDestination(Destination("ratings")),),
        ),
        HTTPRoute("explicit", route=(RouteDestination(Destination("reviews", "v2", 9090)),)),
    )
    to_ratings, explicit = routes_of(mesh, "reviews", 9080)
    assert to_ratings.route.cluster == "outbound|7070||" + FQDN.format("ratings")  # its only port
    assert explicit.route.cluster == f"outbound|9090|v2|{REVIEWS}"


def test_untranslatable_destinations_are_reported_together() -> None:
    multi = service("multi", http(1), http(2), endpoints=(Endpoint("10.0.0.9"),))
    mesh = one_rule_mesh(
        HTTPRoute("a", route=(RouteDestination(Destination("reviews", "v9")),)),
        HTTPRoute("b", route=(RouteDestination(Destination("reviews", "", 1234)),)),
        HTTPRoute("c", route=(RouteDestination(Destination("multi")),)),
        extra=(multi,),
    )
    with pytest.raises(TranslationError) as err:
        routes_of(mesh, "reviews", 9080)
    problems = err.value.problems
    assert {p.path for p in problems} == {"rules/vs.yaml"}
    assert [p.field for p in problems] == [
        "http[0].route[0].destination.subset",
        "http[1].route[0].destination.port",
        "http[2].route[0].destination.port",
    ]
    assert "9080, 9090" in problems[1].message
    assert "set destination.port" in problems[2].message


def test_unknown_hosts_are_skipped() -> None:
    mesh = one_rule_mesh(
        HTTPRoute(
            "partly",
            route=(
                RouteDestination(Destination("nowhere"), 50),
                RouteDestination(Destination("reviews"), 50),
            ),
        ),
        HTTPRoute("nothing", route=(RouteDestination(Destination("nowhere")),)),
    )
    partly, nothing = routes_of(mesh, "reviews", 9080)
    assert partly.route.cluster == f"outbound|9080||{REVIEWS}"
    assert nothing.WhichOneof("action") == "direct_response"
    assert nothing.direct_response.status == 503


def test_weights_merge_and_all_zero_split_evenly() -> None:
    mesh = one_rule_mesh(
        HTTPRoute(
            "dup",
            route=(
                RouteDestination(Destination("reviews", "v1"), 30),
                RouteDestination(Destination("reviews", "v2"), 40),
                RouteDestination(Destination("reviews.default.svc.cluster.local", "v1"), 30),
            ),
        ),
        HTTPRoute(
            "zeros",
            route=(
                RouteDestination(Destination("reviews", "v1")),
                RouteDestination(Destination("reviews", "v2")),
            ),
        ),
        HTTPRoute(
            "one-left",
            route=(
                RouteDestination(Destination("reviews", "v1"), 100),
                RouteDestination(Destination("reviews", "v2"), 0),
            ),
        ),
    )
    dup, zeros, one_left = routes_of(mesh, "reviews", 9080)
    assert [
        (c.name.split("|")[2], c.weight.value) for c in dup.route.weighted_clusters.clusters
    ] == [("v1", 60), ("v2", 40)]
    assert [
        (c.name.split("|")[2], c.weight.value) for c in zeros.route.weighted_clusters.clusters
    ] == [("v1", 1), ("v2", 1)]
    assert one_left.route.cluster == f"outbound|9080|v1|{REVIEWS}"


@pytest.mark.parametrize(
    ("gateways", "applies"),
    [((), True), (("mesh",), True), (("my-gateway", "mesh"), True), (("my-gateway",), False)],
)
def test_only_mesh_bound_virtual_services_apply(gateways: tuple[str, ...], applies: bool) -> None:
    mesh = one_rule_mesh(
        HTTPRoute("vs", route=(RouteDestination(Destination("reviews", "v1")),)), gateways=gateways
    )
    (route,) = routes_of(mesh, "reviews", 9080)
    assert route.name == ("vs" if applies else "default")


@pytest.mark.parametrize(
    ("retries", "expected"),
    [
        (None, (2, DEFAULT_RETRY_ON, [], None)),
        (Retries(0), None),
        (Retries(5), (5, DEFAULT_RETRY_ON, [], None)),
        (Retries(1, timedelta(seconds=2), "5xx"), (1, "5xx", [], timedelta(seconds=2))),
        (Retries(3, None, "502, 503,reset"), (3, "reset,retriable-status-codes", [502, 503], None)),
    ],
)
def test_retry_policy(
    retries: Retries | None, expected: tuple[int, str, list[int], timedelta | None] | None
) -> None:
    policy = retry_policy(retries)
    if expected is None:
        assert policy is None
        return
    assert isinstance(policy, route_components_pb2.RetryPolicy)
    per_try = policy.per_try_timeout.ToTimedelta() if policy.HasField("per_try_timeout") else None
    assert (
        policy.num_retries.value,
        policy.retry_on,
        list(policy.retriable_status_codes),
        per_try,
    ) == expected


def test_attempts_zero_means_no_retry_policy_on_the_route() -> None:
    mesh = one_rule_mesh(
        HTTPRoute("r", route=(RouteDestination(Destination("reviews")),), retries=Retries(0))
    )
    (route,) = routes_of(mesh, "reviews", 9080)
    assert not route.route.HasField("retry_policy")


def test_domains() -> None:
    svc = service("reviews", http(9080), hosts=("reviews.shop",))
    assert port_domains(svc, 9080) == [
        REVIEWS,
        f"{REVIEWS}:9080",
        "reviews.default.svc",
        "reviews.default.svc:9080",
        "reviews.default",
        "reviews.default:9080",
        "reviews",
        "reviews:9080",
        "reviews.shop",
        "reviews.shop:9080",
    ]
    assert proxy_domains(svc, 9080) == [
        f"{REVIEWS}:9080",
        "reviews.default.svc:9080",
        "reviews.default:9080",
        "reviews:9080",
        "reviews.shop:9080",
    ]
    web = service("web", http(80))
    assert "web" in proxy_domains(web, 80) and "web:80" in proxy_domains(web, 80)


def test_colliding_domains_stay_with_the_first_service_by_key() -> None:
    a = service("reviews", http(9080), hosts=("shared.example",))
    b = service("reviews", http(9080), namespace="prod", hosts=("shared.example",))
    mesh = Mesh(services=(b, a))
    ordered = [(s, s.ports[0], port_domains(s, 9080)) for s in mesh.services]
    first, second = dedupe_domains(ordered)
    assert first.service is a
    assert {"reviews", "reviews:9080", "shared.example", "shared.example:9080"} <= set(
        first.domains
    )
    assert second.domains == (
        "reviews.prod.svc.cluster.local",
        "reviews.prod.svc.cluster.local:9080",
        "reviews.prod.svc",
        "reviews.prod.svc:9080",
        "reviews.prod",
        "reviews.prod:9080",
    )
    config = RouteBuilder(mesh, MatcherStyle.STRING_MATCH).route_configuration(
        "9080", [first, second]
    )
    domains = [d for vhost in config.virtual_hosts for d in vhost.domains]
    assert len(domains) == len(set(domains))
    assert [v.name for v in config.virtual_hosts] == [
        f"{REVIEWS}:9080",
        "reviews.prod.svc.cluster.local:9080",
    ]


def wildcard_mesh(*extra: VirtualService) -> Mesh:
    """web, maintenance, api (own VirtualService, also named api.example.com) in default;
    billing in prod; a VirtualService sending all of ``*.default.svc.cluster.local`` to
    maintenance; plus ``extra``."""

    def to(host: str) -> HTTPRoute:
        return HTTPRoute("all", route=(RouteDestination(Destination(host), 100),))

    services = (
        service("web", http(8080)),
        service("maintenance", http(8080)),
        service("api", http(8080), hosts=("api.example.com",)),
        service("billing", http(8080), namespace="prod"),
    )
    rules = (
        VirtualService("api", hosts=("api",), http=(to("api"),)),
        VirtualService("down", hosts=("*.default.svc.cluster.local",), http=(to("maintenance"),)),
        *extra,
    )
    return Mesh(services=services, virtual_services=rules)


def routed_by(mesh: Mesh) -> dict[str, str]:
    """Service name -> the name of the VirtualService that routes it."""
    index = virtual_service_index(mesh)
    return {svc.name: index[svc.key].name for svc in mesh.services if svc.key in index}


def test_a_wildcard_host_routes_every_service_it_matches() -> None:
    mesh = wildcard_mesh()
    # Exact beats wildcard: api keeps its own; billing (prod) does not match.
    assert routed_by(mesh) == {"web": "down", "maintenance": "down", "api": "api"}
    (route,) = routes_of(mesh, "web", 8080)
    assert route.route.cluster == "outbound|8080||" + FQDN.format("maintenance")
    (own,) = routes_of(mesh, "api", 8080)
    assert own.route.cluster == "outbound|8080||" + FQDN.format("api")


def test_the_most_specific_wildcard_wins() -> None:
    everything = VirtualService("a-everything", hosts=("*",))
    entries = VirtualService("b-entries", hosts=("*.example.com",))
    prod = VirtualService("c-prod", hosts=("*.prod.svc.cluster.local",), gateways=("edge",))
    mesh = wildcard_mesh(everything, entries, prod)
    # ``*`` is less specific than ``*.default...``; a gateway-only rule is not the mesh's;
    # an exact host beats ``*.example.com`` on api's extra name.
    assert routed_by(mesh) == {
        "web": "down",
        "maintenance": "down",
        "api": "api",
        "billing": "a-everything",
    }
    assert wildcard_matches("*.Example.com", "API.example.com")
    assert not wildcard_matches("*.example.com", "example.com")


def test_of_two_rules_with_one_wildcard_the_first_by_key_applies() -> None:
    mesh = wildcard_mesh(VirtualService("a-down", hosts=("*.default.svc.cluster.local",)))
    assert routed_by(mesh)["web"] == "a-down"
