"""MOSN clients: how a MOSN node is recognised and what it receives, checked against what
MOSN's xDS conversion reads (its source, ``istio/istio1106/xds/conv``; no MOSN runs
here). ``mosn_matches`` below reproduces MOSN's header matching: ``safe_regex_match`` when
set (a regex *search*), else ``exact_match``; an absent header never matches."""

from __future__ import annotations

import re
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import struct_pb2

from tests.translate.meshes import FQDN, http, service, tcp
from xdsd.errors import TranslationError
from xdsd.model import (
    Destination,
    DestinationRule,
    Endpoint,
    HeaderMatch,
    HTTPMatch,
    HTTPRoute,
    L4Route,
    Mesh,
    Origin,
    Port,
    Protocol,
    RouteDestination,
    StringMatch,
    Subset,
    VirtualService,
)
from xdsd.model.rules import MatchKind
from xdsd.resources import CLUSTER, LISTENER, ROUTE
from xdsd.translate import ClientKind, ConfigSourceKind, MeshTranslation, NodeClass
from xdsd.translate.mosn import quote_re2
from xdsd.translate.node import node_class_from_node

MOSN = NodeClass("web", client=ClientKind.MOSN)
ENVOY = NodeClass("web")


def mosn_node(user_agent: str = "", **metadata: object) -> Any:
    """A node as MOSN sends it: id, cluster and metadata, nothing else."""
    node = base_pb2.Node(id="mosn-1", cluster="web", user_agent_name=user_agent)
    node.metadata.CopyFrom(struct_pb2.Struct())
    node.metadata.update(metadata)
    return node


@pytest.mark.parametrize(
    ("user_agent", "metadata", "expected"),
    [
        ("mosn", {}, ClientKind.MOSN),
        ("MOSN/1.5", {}, ClientKind.MOSN),
        ("", {"client": "mosn"}, ClientKind.MOSN),  # what MOSN really sends
        ("envoy", {"client": "MOSN"}, ClientKind.MOSN),  # metadata is explicit: it wins
        ("", {}, ClientKind.ENVOY),
        ("envoy", {}, ClientKind.ENVOY),
        ("", {"client": "grpc"}, ClientKind.GRPC),
    ],
)
def test_client_kind(user_agent: str, metadata: dict[str, object], expected: ClientKind) -> None:
    node = mosn_node(user_agent, **metadata)
    assert node_class_from_node(node, config_source=ConfigSourceKind.ADS).client is expected


def test_unknown_client_is_refused() -> None:
    with pytest.raises(TranslationError, match=r"metadata.client.*must be one of envoy, grpc"):
        node_class_from_node(mosn_node(client="linkerd"), config_source=ConfigSourceKind.ADS)


def exact(v: str) -> StringMatch:
    return StringMatch(MatchKind.EXACT, v)


def prefix(v: str) -> StringMatch:
    return StringMatch(MatchKind.PREFIX, v)


def regex(v: str) -> StringMatch:
    return StringMatch(MatchKind.REGEX, v)


# (condition, header value or None for absent, does Envoy's HeaderMatcher match)
CONDITIONS: list[tuple[StringMatch | None, str | None, bool]] = [
    (exact("1"), "1", True),
    (exact("1"), "10", False),
    (exact("1"), None, False),
    (prefix("pre"), "prefix", True),
    (prefix("pre"), "pre", True),
    (prefix("pre"), "xpre", False),
    (prefix("pre"), None, False),
    (prefix("a.b(c"), "a.b(cd", True),
    (prefix("a.b(c"), "axb(cd", False),
    (regex("blue|green"), "green", True),
    (regex("blue|green"), "greenish", False),  # Envoy matches the whole value
    (regex("v[12]"), "av1", False),
    (None, "", True),  # present
    (None, "anything", True),
    (None, None, False),
]


def web_mesh(*conditions: StringMatch | None) -> Mesh:
    """web (HTTP 80) with one rule whose match has a header x-h<i> per condition."""
    block = HTTPMatch(
        headers=tuple(HeaderMatch(f"x-h{i}", c) for i, c in enumerate(conditions)),
        method=exact("GET"),
    )
    vs = VirtualService(
        "web",
        hosts=("web",),
        http=(HTTPRoute("r", match=(block,), route=(RouteDestination(Destination("web"), 100),)),),
    )
    return Mesh(
        services=(service("web", http(80, 8080), endpoints=(Endpoint("127.0.0.2"),)),),
        virtual_services=(vs,),
    )


def header_matchers(node: NodeClass, mesh: Mesh) -> list[Any]:
    snap = MeshTranslation(mesh).snapshot_for(node)
    (route,) = snap.get(ROUTE)["80"].message.virtual_hosts[0].routes
    return list(route.match.headers)


def mosn_matches(header: Any, value: str | None) -> bool:
    """MOSN's reading of a route HeaderMatcher (``convertHeaders`` and
    ``commonHeaderMatcherImpl.Matches``): Go's ``MatchString`` is a search."""
    if value is None:
        return False
    if header.HasField("safe_regex_match") and header.safe_regex_match.regex:
        return re.search(header.safe_regex_match.regex, value) is not None
    return value == header.exact_match


@pytest.mark.parametrize(("condition", "value", "expected"), CONDITIONS)
def test_mosn_header_matchers_mean_what_envoys_do(
    condition: StringMatch | None, value: str | None, expected: bool
) -> None:
    """MOSN gets only ``exact_match`` / ``safe_regex_match`` (docs/protocol.md, "What real clients need"), written so that
    MOSN's reading gives Envoy's answer."""
    header, method = header_matchers(MOSN, web_mesh(condition))
    assert header.WhichOneof("header_match_specifier") in ("exact_match", "safe_regex_match")
    assert mosn_matches(header, value) is expected
    assert (method.name, method.WhichOneof("header_match_specifier")) == (":method", "exact_match")


def test_envoy_keeps_string_match_and_shares_everything_else() -> None:
    mesh = web_mesh(exact("1"), prefix("p"), regex("r"), None)
    t = MeshTranslation(mesh)
    envoy, mosn = t.snapshot_for(ENVOY), t.snapshot_for(MOSN)
    kinds = [h.WhichOneof("header_match_specifier") for h in header_matchers(ENVOY, mesh)]
    assert kinds == [
        "string_match",
        "string_match",
        "string_match",
        "present_match",
        "string_match",
    ]
    assert envoy.get(ROUTE)["80"] is not mosn.get(ROUTE)["80"]
    assert all(envoy.get(CLUSTER)[n] is r for n, r in mosn.get(CLUSTER).items())


def test_mosn_is_served_over_ads_in_v3() -> None:
    """MOSN speaks SotW gRPC ADS only: its clusters fetch endpoints and its listeners
    routes over ADS, in API v3."""
    snap = MeshTranslation(web_mesh(exact("1"))).snapshot_for(MOSN)
    cluster = snap.get(CLUSTER)[f"outbound|80||{FQDN.format('web')}"].message
    assert cluster.eds_cluster_config.eds_config.HasField("ads")
    listener = snap.get(LISTENER)["outbound|127.0.0.1|80"].message
    hcm = hcm_pb2.HttpConnectionManager()
    assert listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    assert hcm.rds.config_source.HasField("ads")
    assert (
        hcm.rds.config_source.resource_api_version
        == cluster.eds_cluster_config.eds_config.resource_api_version
    )


def test_quote_re2() -> None:
    text = r"a.b*c+d?e(f)g|h[i]j{k}l^m$n\o-p/q r"
    assert re.fullmatch(quote_re2(text), text)
    assert quote_re2("plain-text_1") == "plain-text_1"


def l4_mesh(**vs: Any) -> Mesh:
    eps = (Endpoint("10.0.0.1", (("version", "v1"),)), Endpoint("10.0.0.2", (("version", "v2"),)))
    tls = Port(8443, Protocol.TLS, "tls")
    services = [service("db", tcp(5432), endpoints=eps)]
    services += [service(n, tls, endpoints=(Endpoint("10.0.1.1"),)) for n in vs.pop("tls", ())]
    rules = (
        DestinationRule(
            "db",
            "db",
            subsets=(Subset("v1", (("version", "v1"),)), Subset("v2", (("version", "v2"),))),
        ),
    )
    virtual = (
        (VirtualService("db", hosts=("db",), origin=Origin("rules/db.yaml", 1), **vs),)
        if vs
        else ()
    )
    return Mesh(services=tuple(services), virtual_services=virtual, destination_rules=rules)


def to(subset: str, weight: int) -> RouteDestination:
    return RouteDestination(Destination("db", subset), weight)


@pytest.mark.parametrize(
    ("mesh", "fragments"),
    [
        (l4_mesh(), ()),
        (l4_mesh(tcp=(L4Route(route=(to("v2", 100),)),)), ()),
        (l4_mesh(tls=("tls-a",)), ()),  # alone on its port: one chain, no SNI
        (
            l4_mesh(tcp=(L4Route(route=(to("v1", 3), to("v2", 1))),)),
            ("rules/db.yaml:1: tcp:", "port 5432", "weighted clusters", "first filter chain"),
        ),
        (
            l4_mesh(tls=("tls-a", "tls-b")),
            ("services/tls-a.toml", "port 8443", "2 filter chains and a match on SNI"),
        ),
    ],
)
def test_mosn_is_refused_listeners_it_would_apply_in_part(
    mesh: Mesh, fragments: tuple[str, ...]
) -> None:
    """MOSN converts only a listener's first filter chain and a TCP proxy's ``cluster``;
    an Envoy class of the same mesh is served."""
    t = MeshTranslation(mesh)
    assert t.snapshot_for(ENVOY)
    if not fragments:
        listeners = t.snapshot_for(MOSN).get(LISTENER)
        for resource in listeners.values():
            assert isinstance(resource.message, listener_pb2.Listener)
            assert len(resource.message.filter_chains) == 1
        return
    with pytest.raises(TranslationError) as err:
        t.snapshot_for(MOSN)
    text = "\n".join(str(p) for p in err.value.problems)
    assert all(f in text for f in fragments), text


@pytest.mark.parametrize(
    ("block", "field"),
    [
        (
            HTTPMatch(without_headers=(HeaderMatch("x-debug", None),)),
            "http[0].match[0].withoutHeaders",
        ),
        (HTTPMatch(query_params=(HeaderMatch("v", exact("2")),)), "http[0].match[0].queryParams"),
    ],
)
def test_mosn_is_refused_conditions_it_would_drop(block: HTTPMatch, field: str) -> None:
    """MOSN ignores ``invert_match`` and query parameter matchers: a rule using
    withoutHeaders or queryParams is refused to MOSN classes (naming the rule), not served
    as a rule that matches everything; Envoy classes are served."""
    vs = VirtualService(
        "web",
        hosts=("web",),
        origin=Origin("rules/web.yaml", 4),
        http=(HTTPRoute("r", match=(block,), route=(RouteDestination(Destination("web"), 100),)),),
    )
    mesh = Mesh(
        services=(service("web", http(80, 8080), endpoints=(Endpoint("127.0.0.2"),)),),
        virtual_services=(vs,),
    )
    t = MeshTranslation(mesh)
    assert t.snapshot_for(ENVOY)
    with pytest.raises(TranslationError) as err:
        t.snapshot_for(MOSN)
    (problem,) = err.value.problems
    assert (problem.path, problem.field) == ("rules/web.yaml", field)
    assert "MOSN ignores" in problem.message
