"""HTTP rule translation beyond destinations: every match field (both matcher styles),
callers (sourceLabels, match gateways), redirect, rewrite, direct response, fault,
mirrors, CORS, header operations, retry options, and the filters that carry them."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.type.v3 import percent_pb2

from tests.harness import envoy_binary
from tests.translate.meshes import FQDN, hcm_of, http, service
from xdsd.model import (
    ConsistentHash,
    CorsPolicy,
    Destination,
    DestinationRule,
    DirectResponse,
    Endpoint,
    Fault,
    FaultAbort,
    FaultDelay,
    HashKind,
    HeaderMatch,
    HeaderOperations,
    Headers,
    HTTPMatch,
    HTTPRoute,
    LoadBalancer,
    Mesh,
    Mirror,
    Origin,
    Redirect,
    RegexRewrite,
    Retries,
    Rewrite,
    RouteDestination,
    StringMatch,
    Subset,
    TrafficPolicy,
    VirtualService,
)
from xdsd.model.rules import MatchKind
from xdsd.resources import ROUTE, Resource
from xdsd.translate import ClientKind, MeshTranslation, NodeClass
from xdsd.translate.listeners import api_listener, inbound_listener, outbound_http_listener
from xdsd.translate.node import ConfigSourceKind
from xdsd.translate.route_actions import redirect_action
from xdsd.translate.route_matches import (
    NO_CALLER,
    Caller,
    MatcherStyle,
    applies_to_sidecar,
    caller_of,
    relevance_of,
)
from xdsd.translate.routes import RouteBuilder, retry_policy
from xdsd.translate.static import render_static

SHOP = FQDN.format("shop")
EXACT, PREFIX, REGEX = MatchKind.EXACT, MatchKind.PREFIX, MatchKind.REGEX


def sm(kind: MatchKind, value: str) -> StringMatch:
    return StringMatch(kind, value)


def to(subset: str = "", weight: int = 100, headers: Headers | None = None) -> RouteDestination:
    return RouteDestination(Destination("shop", subset), weight, headers)


def mesh_of(*routes: HTTPRoute) -> Mesh:
    services = (
        service("shop", http(8080), endpoints=(Endpoint("10.0.0.1", (("version", "v1"),)),)),
        service("shadow", http(8080), endpoints=(Endpoint("10.0.0.2"),)),
        service("client", http(9000, 19000), endpoints=(Endpoint("10.0.0.3"),)),
    )
    vs = VirtualService("shop", hosts=("shop",), http=routes, origin=Origin("rules/shop.yaml", 1))
    rule = DestinationRule("shop", "shop", subsets=(Subset("v1"), Subset("v2")))
    return Mesh(services=services, virtual_services=(vs,), destination_rules=(rule,))


def routes_of(
    *routes: HTTPRoute,
    style: MatcherStyle = MatcherStyle.STRING_MATCH,
    caller: Caller = NO_CALLER,
) -> list[Any]:
    mesh = mesh_of(*routes)
    svc = mesh.service_by_name("default", "shop")
    assert svc is not None
    return RouteBuilder(mesh, style).routes(svc, 8080, caller)


def one_route(**kw: Any) -> Any:
    (route,) = routes_of(HTTPRoute("r", route=(to(),), **kw))
    return route


def header_form(header: Any) -> tuple[str, str, str, bool]:
    """(name, which field, value, inverted) of a HeaderMatcher."""
    kind = header.WhichOneof("header_match_specifier")
    if kind == "string_match":
        inner = header.string_match.WhichOneof("match_pattern")
        value = (
            header.string_match.safe_regex.regex
            if inner == "safe_regex"
            else getattr(header.string_match, inner)
        )
        return header.name, f"string_match.{inner}", value, header.invert_match
    if kind == "safe_regex_match":
        return header.name, kind, header.safe_regex_match.regex, header.invert_match
    return header.name, kind, str(getattr(header, kind)), header.invert_match


# A block with every header-like condition, and how each style writes it.
EVERY_HEADER = HTTPMatch(
    headers=(HeaderMatch("x-a", sm(EXACT, "1")), HeaderMatch("x-p", None)),
    without_headers=(HeaderMatch("x-b", sm(PREFIX, "pre")), HeaderMatch("x-gone", None)),
    method=sm(EXACT, "POST"),
    authority=sm(REGEX, "shop(:[0-9]+)?"),
    scheme=sm(EXACT, "http"),
)
STRING_FORMS = [
    ("x-a", "string_match.exact", "1", False),
    ("x-p", "present_match", "True", False),
    ("x-b", "string_match.prefix", "pre", True),
    ("x-gone", "present_match", "True", True),
    (":method", "string_match.exact", "POST", False),
    (":authority", "string_match.safe_regex", "shop(:[0-9]+)?", False),
    (":scheme", "string_match.exact", "http", False),
]
# MOSN reads only exact_match and safe_regex_match, and its regexes search: prefixes and
# regexes are anchored, "present" is ``.*`` (see xdsd/translate/mosn.py)
DEPRECATED_FORMS = [
    ("x-a", "exact_match", "1", False),
    ("x-p", "safe_regex_match", ".*", False),
    (":method", "exact_match", "POST", False),
    (":authority", "safe_regex_match", "^(?:shop(:[0-9]+)?)$", False),
    (":scheme", "exact_match", "http", False),
]


@pytest.mark.parametrize(
    ("style", "expected"),
    [(MatcherStyle.STRING_MATCH, STRING_FORMS), (MatcherStyle.DEPRECATED, DEPRECATED_FORMS)],
)
def test_every_header_like_condition_in_both_styles(
    style: MatcherStyle, expected: list[tuple[str, str, str, bool]]
) -> None:
    """MOSN (DEPRECATED) gets exact_match / safe_regex_match for headers, method,
    authority and scheme (withoutHeaders are refused to MOSN: test_mosn.py); Envoy gets
    string_match."""
    block = EVERY_HEADER
    if style is MatcherStyle.DEPRECATED:
        block = dataclasses.replace(block, without_headers=())
    (route,) = routes_of(HTTPRoute("r", match=(block,), route=(to(),)), style=style)
    assert [header_form(h) for h in route.match.headers] == expected
    # withoutHeaders with a value: a missing header is "empty", so it does not match.
    treat = {h.name: h.treat_missing_header_as_empty for h in route.match.headers}
    assert treat == {n: n == "x-b" for n in treat}


def test_query_parameters_and_ignore_uri_case() -> None:
    block = HTTPMatch(
        uri=sm(PREFIX, "/Shop"),
        ignore_uri_case=True,
        query_params=(
            HeaderMatch("mode", sm(EXACT, "fast")),
            HeaderMatch("Id", sm(REGEX, "[0-9]+")),
            HeaderMatch("p", sm(PREFIX, "ab")),
            HeaderMatch("debug", None),
        ),
    )
    for style in (MatcherStyle.STRING_MATCH,):  # MOSN: refused (test_mosn.py)
        (route,) = routes_of(HTTPRoute("r", match=(block,), route=(to(),)), style=style)
        assert route.match.prefix == "/Shop"
        assert route.match.HasField("case_sensitive") and not route.match.case_sensitive.value
        got = [
            (q.name, q.WhichOneof("query_parameter_match_specifier"))
            for q in route.match.query_parameters
        ]
        assert got == [
            ("mode", "string_match"),
            ("Id", "string_match"),
            ("p", "string_match"),
            ("debug", "present_match"),
        ]
        assert route.match.query_parameters[1].string_match.safe_regex.regex == "[0-9]+"
        assert route.match.query_parameters[2].string_match.prefix == "ab"
    (plain,) = routes_of(HTTPRoute("r", match=(HTTPMatch(uri=sm(EXACT, "/a")),), route=(to(),)))
    assert not plain.match.HasField("case_sensitive")  # Envoy's default: case-sensitive


@pytest.mark.parametrize(
    ("block", "caller", "applies"),
    [
        (HTTPMatch(), NO_CALLER, True),
        (HTTPMatch(source_labels=(("app", "web"),)), NO_CALLER, False),
        (HTTPMatch(source_labels=(("app", "web"),)), Caller((("app", "web"),)), True),
        (
            HTTPMatch(source_labels=(("app", "web"), ("track", "canary"))),
            Caller((("app", "web"),)),
            False,
        ),
        (HTTPMatch(gateways=("mesh",)), NO_CALLER, True),
        (HTTPMatch(gateways=("edge", "mesh")), NO_CALLER, True),
        (HTTPMatch(gateways=("edge",)), NO_CALLER, False),
        # gateways decide alone, as in Istio: sourceLabels are not looked at then
        (HTTPMatch(gateways=("mesh",), source_labels=(("a", "b"),)), NO_CALLER, True),
        (HTTPMatch(source_namespace="prod"), Caller((), "prod"), True),
        (HTTPMatch(source_namespace="prod"), Caller((), "default"), False),
    ],
)
def test_which_blocks_apply_to_a_sidecar(block: HTTPMatch, caller: Caller, applies: bool) -> None:
    assert applies_to_sidecar(block, caller) is applies


def test_caller_keeps_only_what_rules_name() -> None:
    rule = VirtualService(
        "x",
        hosts=("x",),
        http=(HTTPRoute(match=(HTTPMatch(source_labels=(("track", "canary"),)),)),),
    )
    relevance = relevance_of((rule,))
    labels = (("app", "web"), ("track", "canary"), ("version", "v9"))
    assert caller_of(labels, "ns", relevance) == Caller((("track", "canary"),), None)
    assert caller_of((("app", "web"),), "ns", relevance) == Caller((), None)
    assert caller_of(labels, "ns", relevance_of(())) is NO_CALLER


def test_source_labels_route_configurations_are_per_relevant_labels() -> None:
    mesh = mesh_of(
        HTTPRoute(
            "canary", match=(HTTPMatch(source_labels=(("track", "canary"),)),), route=(to("v2"),)
        ),
        HTTPRoute("edge-only", match=(HTTPMatch(gateways=("edge",)),), route=(to("v2"),)),
        HTTPRoute("rest", route=(to("v1"),)),
    )
    translation = MeshTranslation(mesh)

    def config(labels: tuple[tuple[str, str], ...], ip: str) -> Resource:
        node = NodeClass("client", labels=labels, instance_ip="10.0.0.3", outbound_ip=ip)
        resource: Resource = translation.snapshot_for(node).get(ROUTE)["8080"]
        return resource

    plain = config((("version", "v1"),), "127.0.0.10")
    other = config((("version", "v2"),), "127.0.0.10")
    elsewhere = config((), "127.0.0.11")
    canary = config((("track", "canary"), ("version", "v1")), "127.0.0.10")
    canary2 = config((("track", "canary"),), "127.0.0.12")
    assert plain is other is elsewhere  # labels no rule names: one object
    assert canary is canary2
    assert canary is not plain

    def names(resource: Resource) -> list[str]:
        vhost = next(v for v in resource.message.virtual_hosts if v.name.startswith("shop."))
        return [r.name for r in vhost.routes]

    assert names(plain) == ["rest"]
    assert names(canary) == ["canary", "rest"]


def test_redirect_and_direct_response_routes() -> None:
    redirect, direct, binary = routes_of(
        HTTPRoute(
            "redirect",
            match=(HTTPMatch(uri=sm(EXACT, "/a")),),
            redirect=Redirect(uri="/b", code=307),
        ),
        HTTPRoute(
            "direct",
            match=(HTTPMatch(uri=sm(EXACT, "/c")),),
            direct_response=DirectResponse(418, b"teapot"),
        ),
        HTTPRoute("binary", direct_response=DirectResponse(200, b"\xff\x00")),
    )
    assert redirect.WhichOneof("action") == "redirect"
    assert redirect.redirect.path_redirect == "/b"
    assert redirect.redirect.response_code == route_components_pb2.RedirectAction.TEMPORARY_REDIRECT
    assert direct.direct_response.status == 418
    assert direct.direct_response.body.inline_string == "teapot"
    assert binary.direct_response.body.inline_bytes == b"\xff\x00"


@pytest.mark.parametrize(
    ("redirect", "fields"),
    [
        (Redirect(uri="/x"), {"path_redirect": "/x", "response_code": 0}),
        (
            Redirect(authority="a.example", code=302),
            {"host_redirect": "a.example", "response_code": 1},
        ),
        (Redirect(port=8443, scheme="https"), {"port_redirect": 8443, "scheme_redirect": "https"}),
        (Redirect(port=80), {"port_redirect": 0}),  # http's default port is left out
        (Redirect(port=443, scheme="https"), {"port_redirect": 0}),
        (Redirect(derive_port="FROM_REQUEST_PORT"), {"port_redirect": 8080}),
        (Redirect(derive_port="FROM_PROTOCOL_DEFAULT"), {"port_redirect": 0}),
        (Redirect(uri="/y", code=308), {"response_code": 4}),
        (Redirect(uri="/y", code=303), {"response_code": 2}),
    ],
)
def test_redirect_fields(redirect: Redirect, fields: dict[str, Any]) -> None:
    action = redirect_action(redirect, 8080)
    assert {k: getattr(action, k) for k in fields} == fields


def test_rewrite_and_authority_precedence() -> None:
    prefix = one_route(rewrite=Rewrite(uri="/v2/", authority="inner.example"))
    assert prefix.route.prefix_rewrite == "/v2/"
    assert prefix.route.host_rewrite_literal == "inner.example"
    regex = one_route(rewrite=Rewrite(uri_regex=RegexRewrite("^/a/(.*)$", "/\\1")))
    assert regex.route.regex_rewrite.pattern.regex == "^/a/(.*)$"
    assert regex.route.regex_rewrite.substitution == "/\\1"
    # Host set by the rule's headers, overridden by rewrite.authority
    by_headers = one_route(headers=Headers(HeaderOperations(set=(("Host", "h.example"),))))
    assert by_headers.route.host_rewrite_literal == "h.example"
    assert not by_headers.request_headers_to_add  # Host is not a header operation
    both = one_route(
        headers=Headers(HeaderOperations(set=((":authority", "h.example"),))),
        rewrite=Rewrite(authority="r.example"),
    )
    assert both.route.host_rewrite_literal == "r.example"


def test_header_operations_on_route_and_destinations() -> None:
    ops = Headers(
        request=HeaderOperations(
            set=(("x-s", "1"), (":path", "/no")), add=(("x-a", "2"),), remove=("x-r", "host")
        ),
        response=HeaderOperations(set=(("x-rs", "3"),), remove=("server",)),
    )
    dest_a = Headers(request=HeaderOperations(set=(("x-dest", "a"), ("host", "a.example"))))
    dest_b = Headers(response=HeaderOperations(add=(("x-from", "b"),)))
    single, split = routes_of(
        HTTPRoute(
            "single",
            match=(HTTPMatch(uri=sm(PREFIX, "/s")),),
            headers=ops,
            route=(to("v1", headers=dest_a),),
        ),
        HTTPRoute("split", route=(to("v1", 50, dest_a), to("v2", 50, dest_b))),
    )
    overwrite = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    append = base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD

    def adds(items: Any) -> list[tuple[str, str, int]]:
        return [(o.header.key, o.header.value, o.append_action) for o in items]

    assert adds(single.request_headers_to_add) == [
        ("x-s", "1", overwrite),
        ("x-a", "2", append),
        ("x-dest", "a", overwrite),
    ]
    assert list(single.request_headers_to_remove) == ["x-r"]
    assert adds(single.response_headers_to_add) == [("x-rs", "3", overwrite)]
    assert list(single.response_headers_to_remove) == ["server"]
    assert single.route.host_rewrite_literal == "a.example"  # the lone destination's
    first, second = split.route.weighted_clusters.clusters
    assert adds(first.request_headers_to_add) == [("x-dest", "a", overwrite)]
    assert first.host_rewrite_literal == "a.example"
    assert adds(second.response_headers_to_add) == [("x-from", "b", append)]
    assert not split.request_headers_to_add


def test_fault_configuration() -> None:
    route = one_route(
        fault=Fault(
            FaultDelay(timedelta(milliseconds=1500), 12.5), FaultAbort(0, "UNAVAILABLE", 0.1)
        )
    )
    fault = fault_pb2.HTTPFault()
    assert route.typed_per_filter_config["envoy.filters.http.fault"].Unpack(fault)
    assert fault.delay.fixed_delay.ToTimedelta() == timedelta(milliseconds=1500)
    million = percent_pb2.FractionalPercent.MILLION
    assert (fault.delay.percentage.numerator, fault.delay.percentage.denominator) == (
        125_000,
        million,
    )
    assert fault.abort.grpc_status == 14
    assert fault.abort.percentage.numerator == 1_000
    http_abort = one_route(fault=Fault(abort=FaultAbort(503, "", 100.0)))
    assert http_abort.typed_per_filter_config["envoy.filters.http.fault"].Unpack(fault)
    assert fault.abort.http_status == 503 and not fault.HasField("delay")
    assert fault.abort.percentage.numerator == 1_000_000


def test_cors_policy_is_an_optional_per_route_config() -> None:
    route = one_route(
        cors_policy=CorsPolicy(
            allow_origins=(sm(EXACT, "https://a.example"), sm(REGEX, "https://.*[.]b[.]example")),
            allow_methods=("GET", "POST"),
            allow_headers=("x-h",),
            expose_headers=("x-e", "x-f"),
            max_age=timedelta(hours=1),
            allow_credentials=False,
            unmatched_preflights="IGNORE",
        )
    )
    wrapper = route_components_pb2.FilterConfig()
    assert route.typed_per_filter_config["envoy.filters.http.cors"].Unpack(wrapper)
    assert wrapper.is_optional  # proxyless gRPC has no CORS filter: it skips this
    policy = cors_pb2.CorsPolicy()
    assert wrapper.config.Unpack(policy)
    assert [o.WhichOneof("match_pattern") for o in policy.allow_origin_string_match] == [
        "exact",
        "safe_regex",
    ]
    assert (policy.allow_methods, policy.allow_headers, policy.expose_headers) == (
        "GET,POST",
        "x-h",
        "x-e,x-f",
    )
    assert policy.max_age == "3600"
    assert policy.HasField("allow_credentials") and not policy.allow_credentials.value
    assert not policy.forward_not_matching_preflights.value
    assert policy.filter_enabled.default_value.numerator == 100
    defaults = cors_pb2.CorsPolicy()
    plain = one_route(cors_policy=CorsPolicy())
    wrapper.Clear()
    assert plain.typed_per_filter_config["envoy.filters.http.cors"].Unpack(wrapper)
    assert wrapper.config.Unpack(defaults)
    assert not defaults.HasField("allow_credentials")
    assert defaults.forward_not_matching_preflights.value  # Istio's default: FORWARD


def test_mirrors_become_mirror_policies_and_references() -> None:
    mesh = mesh_of(
        HTTPRoute(
            "m",
            route=(to(),),
            mirrors=(
                Mirror(Destination("shadow"), 25.0),
                Mirror(Destination("shop", "v2"), 0.0),  # 0 %: left out, as in Istio
            ),
        )
    )
    translation = MeshTranslation(mesh)
    node = NodeClass("client", instance_ip="10.0.0.3")
    resource = translation.snapshot_for(node).get(ROUTE)["8080"]
    vhost = next(v for v in resource.message.virtual_hosts if v.name.startswith("shop."))
    (policy,) = vhost.routes[0].route.request_mirror_policies
    shadow = "outbound|8080||" + FQDN.format("shadow")
    assert policy.cluster == shadow
    assert policy.runtime_fraction.default_value.numerator == 250_000
    assert policy.HasField("trace_sampled") and not policy.trace_sampled.value
    cluster_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    assert (cluster_url, shadow) in resource.references


def test_a_rule_is_translated_once_for_all_its_blocks() -> None:
    first, second = routes_of(
        HTTPRoute(
            "r",
            match=(HTTPMatch(name="a", uri=sm(PREFIX, "/a")), HTTPMatch(name="b")),
            route=(to("v1"),),
            fault=Fault(abort=FaultAbort(500, "", 10.0)),
        )
    )
    assert (first.name, second.name) == ("r.a", "r.b")
    assert first.route == second.route
    assert first.typed_per_filter_config == second.typed_per_filter_config
    assert first.match != second.match


@pytest.mark.parametrize(
    ("retries", "previous_hosts", "priority", "backoff"),
    [
        (Retries(2), True, False, None),
        (Retries(2, retry_ignore_previous_hosts=False), False, False, None),
        (Retries(2, retry_remote_localities=True), True, True, None),
        (Retries(2, backoff=timedelta(milliseconds=50)), True, False, timedelta(milliseconds=50)),
    ],
)
def test_retry_options(
    retries: Retries, previous_hosts: bool, priority: bool, backoff: timedelta | None
) -> None:
    policy = retry_policy(retries)
    assert policy is not None
    assert bool(policy.retry_host_predicate) is previous_hosts
    assert policy.HasField("retry_priority") is priority
    if priority:
        assert policy.retry_priority.name == "envoy.retry_priorities.previous_priorities"
    got = (
        policy.retry_back_off.base_interval.ToTimedelta()
        if policy.HasField("retry_back_off")
        else None
    )
    assert got == backoff


def hashed_routes(*routes: HTTPRoute) -> list[Any]:
    """The routes of ``routes`` for ``shop`` whose DestinationRule hashes on x-user."""
    plain = mesh_of(*routes)
    hashing = LoadBalancer(consistent_hash=ConsistentHash(HashKind.HEADER, "x-user"))
    (rule,) = plain.destination_rules
    rule = dataclasses.replace(rule, traffic_policy=TrafficPolicy(hashing))
    mesh = Mesh(plain.services, plain.virtual_services, (rule,))
    svc = mesh.service_by_name("default", "shop")
    assert svc is not None
    return RouteBuilder(mesh, MatcherStyle.STRING_MATCH).routes(svc, 8080)


@pytest.mark.parametrize(
    ("retries", "destinations", "previous_hosts"),
    [
        # One destination with a consistent hash: retries stay on the hashed host...
        (None, (to(),), False),
        (Retries(2, retry_on="5xx"), (to(),), False),
        (Retries(2, retry_ignore_previous_hosts=False), (to(),), False),
        # ...unless the rule asks for other hosts.
        (Retries(2, retry_ignore_previous_hosts=True), (to(),), True),
        # Several destinations: Istio's default keeps the predicate.
        (Retries(2), (to("v1", 50), to("v2", 50)), True),
        (None, (to("v1", 50), to("v2", 50)), True),
    ],
)
def test_retries_under_a_consistent_hash(
    retries: Retries | None, destinations: tuple[RouteDestination, ...], previous_hosts: bool
) -> None:
    (route,) = hashed_routes(HTTPRoute("r", route=destinations, retries=retries))
    assert route.route.hash_policy[0].header.header_name == "x-user"
    names = [p.name for p in route.route.retry_policy.retry_host_predicate]
    assert names == (["envoy.retry_host_predicates.previous_hosts"] if previous_hosts else [])
    assert route.route.retry_policy.num_retries.value == (retries.attempts if retries else 2)


def test_retries_without_a_consistent_hash_avoid_previous_hosts() -> None:
    (route,) = routes_of(HTTPRoute("r", route=(to(),), retries=Retries(2, retry_on="5xx")))
    assert not route.route.hash_policy
    names = [p.name for p in route.route.retry_policy.retry_host_predicate]
    assert names == ["envoy.retry_host_predicates.previous_hosts"]


def test_rule_filters_come_before_the_router() -> None:
    def filters(listener: Any) -> list[str]:
        return [f.name for f in hcm_of(listener).http_filters]

    outbound = outbound_http_listener("127.0.0.1", 8080, ConfigSourceKind.ADS)
    assert filters(outbound) == [
        "envoy.filters.http.fault",
        "envoy.filters.http.cors",
        "envoy.filters.http.router",
    ]
    assert filters(api_listener("shop:8080", "8080")) == [
        "envoy.filters.http.fault",
        "envoy.filters.http.router",
    ]
    inbound = inbound_listener("127.0.0.2", http(8080, 18080))
    assert filters(inbound) == ["envoy.filters.http.router"]


def test_mosn_class_gets_deprecated_matchers_through_the_translation() -> None:
    block = dataclasses.replace(EVERY_HEADER, without_headers=())  # refused to MOSN
    mesh = mesh_of(HTTPRoute("r", match=(block,), route=(to(),)))
    node = NodeClass("client", instance_ip="10.0.0.3", client=ClientKind.MOSN)
    resource = MeshTranslation(mesh).snapshot_for(node).get(ROUTE)["8080"]
    vhost = next(v for v in resource.message.virtual_hosts if v.name.startswith("shop."))
    assert [header_form(h) for h in vhost.routes[0].match.headers] == DEPRECATED_FORMS


def test_unchanged_rules_keep_their_route_configuration_across_meshes() -> None:
    rules = (
        HTTPRoute(
            "canary",
            match=(HTTPMatch(source_labels=(("track", "canary"),)),),
            route=(to("v2"),),
            mirrors=(Mirror(Destination("shadow")),),
        ),
        HTTPRoute("rest", route=(to("v1"),)),
    )
    mesh = mesh_of(*rules)
    node = NodeClass("client", labels=(("track", "canary"),), instance_ip="10.0.0.3")
    first = MeshTranslation(mesh)
    before = first.snapshot_for(node).get(ROUTE)["8080"]
    same = dataclasses.replace(mesh)
    after = MeshTranslation(same, previous=first).snapshot_for(node).get(ROUTE)["8080"]
    assert after is before
    assert SHOP in {v.name.split(":")[0] for v in after.message.virtual_hosts}


def test_envoy_accepts_every_rule_field(tmp_path: Path) -> None:
    """A real Envoy validates a configuration using every HTTP rule field at once
    (including what the behaviour tests do not send traffic through: gRPC-status aborts,
    retry priorities and back-off)."""
    everything = HTTPRoute(
        "all",
        match=(
            dataclasses.replace(
                EVERY_HEADER,
                uri=sm(REGEX, "/[a-z]+"),
                ignore_uri_case=True,
                query_params=(HeaderMatch("q", sm(PREFIX, "x")), HeaderMatch("p", None)),
            ),
        ),
        route=(to("v1", 30, Headers(HeaderOperations(set=(("host", "a.example"),)))), to("v2", 70)),
        timeout=timedelta(seconds=3),
        retries=Retries(
            3, timedelta(seconds=1), "5xx,503", False, True, timedelta(milliseconds=20)
        ),
        rewrite=Rewrite(uri_regex=RegexRewrite("^/(.*)$", "/v2/\\1"), authority="in.example"),
        fault=Fault(FaultDelay(timedelta(seconds=1), 0.5), FaultAbort(0, "UNAVAILABLE", 1.0)),
        mirrors=(Mirror(Destination("shadow"), 10.0),),
        cors_policy=CorsPolicy(
            (sm(EXACT, "https://a.example"),),
            ("GET",),
            ("x-h",),
            ("x-e",),
            timedelta(minutes=5),
            True,
            "IGNORE",
        ),
        headers=Headers(
            HeaderOperations((("x-s", "1"),), (("x-a", "2"),), ("x-r",)),
            HeaderOperations((("x-rs", "1"),), (), ("x-rr",)),
        ),
    )
    mesh = mesh_of(
        everything,
        HTTPRoute(
            "moved",
            match=(HTTPMatch(uri=sm(EXACT, "/m")),),
            redirect=Redirect("/n", "b.example", 8443, "", "https", 308),
        ),
        HTTPRoute(
            "big",
            match=(HTTPMatch(uri=sm(EXACT, "/big")),),
            direct_response=DirectResponse(200, b"x" * 100_000),
        ),
    )
    node = NodeClass("client", instance_ip="127.0.0.2", outbound_ip="127.0.0.10")
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(render_static(mesh, node, admin_port=0)))
    proc = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
