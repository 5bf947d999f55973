"""The EnvoyFilter patch engine on single resources: every applyTo and operation, matching,
contexts and Istio's proto merge (table-driven)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format

from xdsd.errors import TranslationError
from xdsd.model import Origin, Port, Protocol
from xdsd.model.networking import ApplyTo, ConfigPatch, PatchContext, PatchMatch, PatchOperation
from xdsd.model.service import ResourceKey
from xdsd.resources import encode
from xdsd.resources.patch_values import parse_patch_value
from xdsd.translate.listeners import inbound_listener, outbound_http_listener
from xdsd.translate.node import ConfigSourceKind
from xdsd.translate.patch_spec import Patch, selected_filters
from xdsd.translate.patches import (
    added,
    merge,
    patch_cluster,
    patch_listener,
    patch_route_configuration,
    route_port,
)

OUT = PatchContext.SIDECAR_OUTBOUND
IN = PatchContext.SIDECAR_INBOUND
HCM = "envoy.filters.network.http_connection_manager"
FAULT, CORS, ROUTER = (
    "envoy.filters.http.fault",
    "envoy.filters.http.cors",
    "envoy.filters.http.router",
)
LISTENER_KEYS = {
    "port_number",
    "listener_name",
    "filter_chain_name",
    "filter_name",
    "sub_filter_name",
}
ROUTE_KEYS = {"route_config_name", "vhost_name", "route_name"}
CLUSTER_KEYS = {"service", "subset", "cluster_name"}
LUA = {
    "name": "lua",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "default_source_code": {"inline_string": "function envoy_on_request(h) end"},
    },
}
REVIEWS = "reviews.default.svc.cluster.local"


def patch(
    apply_to: str,
    op: str,
    value: Any = None,
    *,
    context: PatchContext = PatchContext.ANY,
    kind: str = "",
    **match: Any,
) -> Patch:
    """A patch as the parser would give it (``kind`` inferred from the match fields)."""
    if not kind and match:
        keys = set(match) - {"port_number"}
        kind = (
            "listener"
            if keys & LISTENER_KEYS
            or apply_to in ("LISTENER", "FILTER_CHAIN", "NETWORK_FILTER", "HTTP_FILTER")
            else "route_configuration"
            if keys & ROUTE_KEYS or apply_to not in ("CLUSTER",)
            else "cluster"
        )
    config = ConfigPatch(
        ApplyTo[apply_to],
        PatchOperation[op],
        PatchMatch(context=context, kind=kind, **match),
        json.dumps(value) if value is not None else "",
        value_line=7,
    )
    parsed = parse_patch_value(apply_to, value) if value is not None else None
    return Patch(
        config, ResourceKey("EnvoyFilter", "default", "ef"), 0, parsed, Origin("ef.yaml", 1)
    )


def listener() -> Any:
    return outbound_http_listener("127.0.0.1", 9080, ConfigSourceKind.ADS)


def hcm_of(lis: Any, chain: int = 0) -> Any:
    hcm = hcm_pb2.HttpConnectionManager()
    lis.filter_chains[chain].filters[0].typed_config.Unpack(hcm)
    return hcm


def http_filters(lis: Any) -> list[str]:
    return [f.name for f in hcm_of(lis).http_filters]


def route_config() -> Any:
    config = route_pb2.RouteConfiguration(name="9080")
    a = config.virtual_hosts.add(name="a:9080", domains=["a"])
    for name in ("r1", "r2"):
        route = a.routes.add(name=name)
        route.match.prefix = f"/{name}"
        route.route.cluster = "ca"
    b = config.virtual_hosts.add(name="b:9080", domains=["b"])
    route = b.routes.add(name="default")
    route.match.prefix = "/"
    route.route.cluster = "cb"
    return config


def vhosts(config: Any) -> list[tuple[str, list[str]]]:
    return [(v.name, [r.name for r in v.routes]) for v in config.virtual_hosts]


def cluster(name: str = f"outbound|9080|v1|{REVIEWS}") -> Any:
    c = cluster_pb2.Cluster(name=name)
    c.connect_timeout.FromMilliseconds(500)
    return c


ROUTE = {"name": "new", "match": {"prefix": "/new"}, "direct_response": {"status": 418}}
VHOST = {"name": "c:9080", "domains": ["c"]}
H = {"filter_name": HCM}

# (id, patch, check on the patched listener)
LISTENER_CASES: list[tuple[str, Patch, Callable[[Any], bool]]] = [
    (
        "LISTENER MERGE",
        patch("LISTENER", "MERGE", {"per_connection_buffer_limit_bytes": 1024}, port_number=9080),
        lambda lis: lis.per_connection_buffer_limit_bytes.value == 1024,
    ),
    (
        "LISTENER REMOVE",
        patch("LISTENER", "REMOVE", listener_name="outbound|127.0.0.1|9080"),
        lambda lis: lis is None,
    ),
    (
        "FILTER_CHAIN MERGE",
        patch("FILTER_CHAIN", "MERGE", {"name": "named"}, port_number=9080),
        lambda lis: [c.name for c in lis.filter_chains] == ["named"],
    ),
    (
        "FILTER_CHAIN REMOVE",
        patch("FILTER_CHAIN", "REMOVE", port_number=9080),
        lambda lis: len(lis.filter_chains) == 0,
    ),
    (
        "FILTER_CHAIN ADD",
        patch("FILTER_CHAIN", "ADD", {"name": "x", "filters": [{"name": "y"}]}, port_number=9080),
        lambda lis: [c.name for c in lis.filter_chains] == ["", "x"],
    ),
    (
        "FILTER_CHAIN INSERT_FIRST is ADD, as in Istio",
        patch(
            "FILTER_CHAIN",
            "INSERT_FIRST",
            {"name": "x", "filters": [{"name": "y"}]},
            port_number=9080,
        ),
        lambda lis: [c.name for c in lis.filter_chains] == ["", "x"],
    ),
    (
        "NETWORK_FILTER ADD",
        patch("NETWORK_FILTER", "ADD", {"name": "n"}, port_number=9080),
        lambda lis: [f.name for f in lis.filter_chains[0].filters] == [HCM, "n"],
    ),
    (
        "NETWORK_FILTER INSERT_FIRST",
        patch("NETWORK_FILTER", "INSERT_FIRST", {"name": "n"}),
        lambda lis: [f.name for f in lis.filter_chains[0].filters] == ["n", HCM],
    ),
    (
        "NETWORK_FILTER INSERT_BEFORE",
        patch("NETWORK_FILTER", "INSERT_BEFORE", {"name": "n"}, **H),
        lambda lis: [f.name for f in lis.filter_chains[0].filters] == ["n", HCM],
    ),
    (
        "NETWORK_FILTER INSERT_AFTER",
        patch("NETWORK_FILTER", "INSERT_AFTER", {"name": "n"}, **H),
        lambda lis: [f.name for f in lis.filter_chains[0].filters] == [HCM, "n"],
    ),
    (
        "NETWORK_FILTER INSERT_AFTER no such filter",
        patch("NETWORK_FILTER", "INSERT_AFTER", {"name": "n"}, filter_name="nope"),
        lambda lis: [f.name for f in lis.filter_chains[0].filters] == [HCM],
    ),
    (
        "NETWORK_FILTER REPLACE",
        patch("NETWORK_FILTER", "REPLACE", {"name": "n"}, **H),
        lambda lis: [f.name for f in lis.filter_chains[0].filters] == ["n"],
    ),
    (
        "NETWORK_FILTER REMOVE",
        patch("NETWORK_FILTER", "REMOVE", **H),
        lambda lis: len(lis.filter_chains[0].filters) == 0,
    ),
    (
        "NETWORK_FILTER MERGE merges typed_config as its message",
        patch(
            "NETWORK_FILTER",
            "MERGE",
            {
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
                    ".v3.HttpConnectionManager",
                    "stat_prefix": "patched",
                }
            },
            **H,
        ),
        lambda lis: (
            hcm_of(lis).stat_prefix == "patched"
            and hcm_of(lis).rds.route_config_name == "9080"
            and http_filters(lis) == [FAULT, CORS, ROUTER]
        ),
    ),
    (
        "HTTP_FILTER ADD",
        patch("HTTP_FILTER", "ADD", LUA, **H),
        lambda lis: http_filters(lis) == [FAULT, CORS, ROUTER, "lua"],
    ),
    (
        "HTTP_FILTER INSERT_FIRST",
        patch("HTTP_FILTER", "INSERT_FIRST", LUA, **H),
        lambda lis: http_filters(lis) == ["lua", FAULT, CORS, ROUTER],
    ),
    (
        "HTTP_FILTER INSERT_BEFORE router",
        patch("HTTP_FILTER", "INSERT_BEFORE", LUA, sub_filter_name=ROUTER, **H),
        lambda lis: http_filters(lis) == [FAULT, CORS, "lua", ROUTER],
    ),
    (
        "HTTP_FILTER INSERT_AFTER fault",
        patch("HTTP_FILTER", "INSERT_AFTER", LUA, sub_filter_name=FAULT, **H),
        lambda lis: http_filters(lis) == [FAULT, "lua", CORS, ROUTER],
    ),
    (
        "HTTP_FILTER INSERT_BEFORE without subFilter: first",
        patch("HTTP_FILTER", "INSERT_BEFORE", LUA, **H),
        lambda lis: http_filters(lis) == ["lua", FAULT, CORS, ROUTER],
    ),
    (
        "HTTP_FILTER INSERT_AFTER without subFilter: last",
        patch("HTTP_FILTER", "INSERT_AFTER", LUA, **H),
        lambda lis: http_filters(lis) == [FAULT, CORS, ROUTER, "lua"],
    ),
    (
        "HTTP_FILTER REPLACE",
        patch("HTTP_FILTER", "REPLACE", LUA, sub_filter_name=CORS, **H),
        lambda lis: http_filters(lis) == [FAULT, "lua", ROUTER],
    ),
    (
        "HTTP_FILTER REMOVE",
        patch("HTTP_FILTER", "REMOVE", sub_filter_name=CORS, **H),
        lambda lis: http_filters(lis) == [FAULT, ROUTER],
    ),
    (
        "HTTP_FILTER MERGE merges typed_config as its message",
        patch(
            "HTTP_FILTER",
            "MERGE",
            {
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                    "max_active_faults": 5,
                }
            },
            sub_filter_name=FAULT,
            **H,
        ),
        lambda lis: _fault(lis).max_active_faults.value == 5,
    ),
    (
        "HTTP_FILTER MERGE renames",
        patch("HTTP_FILTER", "MERGE", {"name": "f2"}, sub_filter_name=FAULT, **H),
        lambda lis: http_filters(lis) == ["f2", CORS, ROUTER],
    ),
    (
        "other port: untouched",
        patch("HTTP_FILTER", "REMOVE", port_number=9081, sub_filter_name=CORS, **H),
        lambda lis: http_filters(lis) == [FAULT, CORS, ROUTER],
    ),
    (
        "other filter chain name: untouched",
        patch("HTTP_FILTER", "REMOVE", filter_chain_name="tls", sub_filter_name=CORS, **H),
        lambda lis: http_filters(lis) == [FAULT, CORS, ROUTER],
    ),
    (
        "other context: untouched",
        patch("HTTP_FILTER", "REMOVE", context=IN, sub_filter_name=CORS, **H),
        lambda lis: http_filters(lis) == [FAULT, CORS, ROUTER],
    ),
    (
        "no match at all: every listener",
        patch("HTTP_FILTER", "REMOVE", kind="listener", sub_filter_name=CORS, filter_name=HCM),
        lambda lis: http_filters(lis) == [FAULT, ROUTER],
    ),
]


def _fault(lis: Any) -> Any:
    out = fault_pb2.HTTPFault()
    hcm_of(lis).http_filters[0].typed_config.Unpack(out)
    return out


@pytest.mark.parametrize(("case", "p", "check"), LISTENER_CASES, ids=[c[0] for c in LISTENER_CASES])
def test_listener_patches(case: str, p: Patch, check: Callable[[Any], bool]) -> None:
    original = listener()
    before = encode(original)
    out, applied = patch_listener(original, OUT, [p])
    assert check(out), out
    assert encode(original) == before  # the shared input is never modified
    untouched = case.endswith("untouched") or "no such" in case
    assert applied == (() if untouched else (p,))


ROUTE_CASES: list[tuple[str, Patch, Callable[[Any], bool]]] = [
    (
        "ROUTE_CONFIGURATION MERGE",
        patch("ROUTE_CONFIGURATION", "MERGE", {"validate_clusters": True}, port_number=9080),
        lambda c: c.validate_clusters.value is True,
    ),
    (
        "ROUTE_CONFIGURATION other name: untouched",
        patch(
            "ROUTE_CONFIGURATION",
            "MERGE",
            {"validate_clusters": True},
            route_config_name="http_proxy",
        ),
        lambda c: not c.HasField("validate_clusters"),
    ),
    (
        "VIRTUAL_HOST MERGE",
        patch("VIRTUAL_HOST", "MERGE", {"domains": ["a.example"]}, vhost_name="a:9080"),
        lambda c: (
            list(c.virtual_hosts[0].domains) == ["a", "a.example"]
            and list(c.virtual_hosts[1].domains) == ["b"]
        ),
    ),
    (
        "VIRTUAL_HOST ADD",
        patch("VIRTUAL_HOST", "ADD", VHOST, port_number=9080),
        lambda c: vhosts(c) == [("a:9080", ["r1", "r2"]), ("b:9080", ["default"]), ("c:9080", [])],
    ),
    (
        "VIRTUAL_HOST REMOVE",
        patch("VIRTUAL_HOST", "REMOVE", vhost_name="b:9080"),
        lambda c: vhosts(c) == [("a:9080", ["r1", "r2"])],
    ),
    (
        "VIRTUAL_HOST REPLACE",
        patch("VIRTUAL_HOST", "REPLACE", VHOST, vhost_name="a:9080"),
        lambda c: vhosts(c) == [("c:9080", []), ("b:9080", ["default"])],
    ),
    (
        "HTTP_ROUTE MERGE",
        patch(
            "HTTP_ROUTE",
            "MERGE",
            {"route": {"timeout": "3s"}},
            vhost_name="a:9080",
            route_name="r2",
        ),
        lambda c: (
            c.virtual_hosts[0].routes[1].route.timeout.seconds == 3
            and c.virtual_hosts[0].routes[1].route.cluster == "ca"
            and not c.virtual_hosts[0].routes[0].route.HasField("timeout")
        ),
    ),
    (
        "HTTP_ROUTE ADD",
        patch("HTTP_ROUTE", "ADD", ROUTE, vhost_name="a:9080"),
        lambda c: vhosts(c)[0] == ("a:9080", ["r1", "r2", "new"]),
    ),
    (
        "HTTP_ROUTE INSERT_BEFORE",
        patch("HTTP_ROUTE", "INSERT_BEFORE", ROUTE, vhost_name="a:9080", route_name="r2"),
        lambda c: vhosts(c)[0] == ("a:9080", ["r1", "new", "r2"]),
    ),
    (
        "HTTP_ROUTE INSERT_AFTER",
        patch("HTTP_ROUTE", "INSERT_AFTER", ROUTE, vhost_name="a:9080", route_name="r1"),
        lambda c: vhosts(c)[0] == ("a:9080", ["r1", "new", "r2"]),
    ),
    (
        "HTTP_ROUTE INSERT_FIRST",
        patch("HTTP_ROUTE", "INSERT_FIRST", ROUTE, vhost_name="a:9080", route_name="r2"),
        lambda c: vhosts(c)[0] == ("a:9080", ["new", "r1", "r2"]),
    ),
    (
        "HTTP_ROUTE INSERT_FIRST no such route: untouched",
        patch("HTTP_ROUTE", "INSERT_FIRST", ROUTE, vhost_name="a:9080", route_name="nope"),
        lambda c: vhosts(c)[0] == ("a:9080", ["r1", "r2"]),
    ),
    (
        "HTTP_ROUTE INSERT_BEFORE every vhost",
        patch("HTTP_ROUTE", "INSERT_BEFORE", ROUTE, port_number=9080),
        lambda c: vhosts(c) == [("a:9080", ["new", "r1", "r2"]), ("b:9080", ["new", "default"])],
    ),
    (
        "HTTP_ROUTE REMOVE",
        patch("HTTP_ROUTE", "REMOVE", vhost_name="a:9080", route_name="r1"),
        lambda c: vhosts(c) == [("a:9080", ["r2"]), ("b:9080", ["default"])],
    ),
    (
        "HTTP_ROUTE other port: untouched",
        patch("HTTP_ROUTE", "REMOVE", port_number=80),
        lambda c: vhosts(c) == [("a:9080", ["r1", "r2"]), ("b:9080", ["default"])],
    ),
]


@pytest.mark.parametrize(("case", "p", "check"), ROUTE_CASES, ids=[c[0] for c in ROUTE_CASES])
def test_route_configuration_patches(case: str, p: Patch, check: Callable[[Any], bool]) -> None:
    original = route_config()
    before = encode(original)
    out, applied = patch_route_configuration(original, OUT, [p])
    assert check(out), vhosts(out)
    assert encode(original) == before
    assert applied == (() if case.endswith("untouched") else (p,))


CLUSTER_CASES: list[tuple[str, Patch, Callable[[Any], bool]]] = [
    (
        "CLUSTER MERGE replaces a Duration whole",
        patch("CLUSTER", "MERGE", {"connect_timeout": "3s"}, service=REVIEWS, port_number=9080),
        lambda c: c.connect_timeout.ToMilliseconds() == 3000,
    ),
    (
        "CLUSTER MERGE by subset",
        patch("CLUSTER", "MERGE", {"connect_timeout": "3s"}, subset="v1"),
        lambda c: c.connect_timeout.ToMilliseconds() == 3000,
    ),
    (
        "CLUSTER MERGE by name",
        patch(
            "CLUSTER",
            "MERGE",
            {"connect_timeout": "3s"},
            cluster_name=f"outbound|9080|v1|{REVIEWS}",
        ),
        lambda c: c.connect_timeout.ToMilliseconds() == 3000,
    ),
    ("CLUSTER REMOVE", patch("CLUSTER", "REMOVE", service=REVIEWS), lambda c: c is None),
    (
        "CLUSTER other subset: untouched",
        patch("CLUSTER", "REMOVE", subset="v2"),
        lambda c: c is not None,
    ),
    (
        "CLUSTER other port: untouched",
        patch("CLUSTER", "REMOVE", port_number=9081),
        lambda c: c is not None,
    ),
    (
        "CLUSTER other service: untouched",
        patch("CLUSTER", "REMOVE", service="ratings"),
        lambda c: c is not None,
    ),
]


@pytest.mark.parametrize(("case", "p", "check"), CLUSTER_CASES, ids=[c[0] for c in CLUSTER_CASES])
def test_cluster_patches(case: str, p: Patch, check: Callable[[Any], bool]) -> None:
    original = cluster()
    out, applied = patch_cluster(original, OUT, [p])
    assert check(out)
    assert original.connect_timeout.ToMilliseconds() == 500
    assert applied == (() if case.endswith("untouched") else (p,))


def test_inbound_cluster_matches_the_nodes_own_service() -> None:
    p = patch("CLUSTER", "MERGE", {"connect_timeout": "3s"}, service=REVIEWS, port_number=9080)
    inbound = cluster("inbound|9080||")
    assert patch_cluster(inbound, IN, [p], (REVIEWS,))[1] == (p,)
    assert patch_cluster(inbound, IN, [p], ("ratings.default.svc.cluster.local",))[1] == ()


@pytest.mark.parametrize(
    ("kind", "context", "contexts", "expected"),
    [
        ("LISTENER", PatchContext.ANY, (IN, OUT), 1),
        ("LISTENER", PatchContext.ANY, (IN,), 0),  # Istio: ADD without context: not inbound
        ("LISTENER", IN, (IN, OUT), 1),
        ("LISTENER", PatchContext.GATEWAY, (IN, OUT), 0),
        ("CLUSTER", PatchContext.ANY, (PatchContext.GATEWAY,), 1),
        ("CLUSTER", OUT, (PatchContext.GATEWAY,), 0),
    ],
)
def test_added_listeners_and_clusters(
    kind: str, context: PatchContext, contexts: tuple[PatchContext, ...], expected: int
) -> None:
    p = patch(kind, "ADD", {"name": "extra"}, context=context)
    found = added(ApplyTo[kind], contexts, [p])
    assert len(found) == expected
    if found:
        assert found[0][0].name == "extra" and found[0][1] is p


def test_inline_inbound_routes_are_patched_in_the_inbound_context() -> None:
    lis = inbound_listener("127.0.0.2", Port(9080, Protocol.HTTP, "http", 8080))
    p = patch("HTTP_ROUTE", "MERGE", {"route": {"timeout": "3s"}}, context=IN, port_number=9080)
    out, applied = patch_listener(lis, IN, [p])
    route = hcm_of(out).route_config.virtual_hosts[0].routes[0]
    assert applied == (p,) and route.route.timeout.seconds == 3
    assert patch_listener(lis, OUT, [p])[1] == ()


def test_patches_apply_in_order() -> None:
    first = patch("HTTP_FILTER", "INSERT_BEFORE", LUA, sub_filter_name=ROUTER, **H)
    second = patch("HTTP_FILTER", "REMOVE", sub_filter_name="lua", **H)
    out, applied = patch_listener(listener(), OUT, [first, second])
    assert http_filters(out) == [FAULT, CORS, ROUTER] and applied == (first, second)
    out, _ = patch_listener(listener(), OUT, [second, first])
    assert http_filters(out) == [FAULT, CORS, "lua", ROUTER]


def test_merge_of_filter_configs_of_another_type_is_an_error() -> None:
    p = patch("HTTP_FILTER", "MERGE", LUA, sub_filter_name=FAULT, **H)
    with pytest.raises(TranslationError) as err:
        patch_listener(listener(), OUT, [p])
    (problem,) = err.value.problems
    assert (problem.path, problem.line, problem.field) == (
        "ef.yaml",
        7,
        "configPatches[0].patch.value.typed_config",
    )
    assert "use REPLACE" in problem.message


def test_cluster_transport_socket_merge_by_name() -> None:
    tls = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
    c = cluster()
    json_format.ParseDict(
        {"transport_socket": {"name": "tls", "typed_config": {"@type": tls, "sni": "a"}}}, c
    )
    value = {
        "transport_socket": {"name": "tls", "typed_config": {"@type": tls, "max_session_keys": 3}},
        "connect_timeout": "2s",
    }
    out, _ = patch_cluster(c, OUT, [patch("CLUSTER", "MERGE", value)])
    merged = json_format.MessageToDict(out, preserving_proto_field_name=True)
    assert merged["transport_socket"]["typed_config"]["sni"] == "a"
    assert merged["transport_socket"]["typed_config"]["max_session_keys"] == 3
    assert merged["connect_timeout"] == "2s"


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ({"connect_timeout": "2s"}, {"connect_timeout": "2s"}),  # not 2.5s
        (
            {"metadata": {"filter_metadata": {"a": {"y": 2}}}},  # map entries replaced
            {"metadata": {"filter_metadata": {"a": {"y": 2}, "b": {}}}},
        ),
        ({"dns_lookup_family": "V4_ONLY"}, {"dns_lookup_family": "V4_ONLY"}),
        (
            {"transport_socket_matches": [{"name": "m2"}]},  # lists appended
            {"transport_socket_matches": [{"name": "m1"}, {"name": "m2"}]},
        ),
        ({"circuit_breakers": {}}, {"circuit_breakers": {}}),  # an empty message is set
    ],
)
def test_merge_is_istios_proto_merge(src: dict[str, Any], expected: dict[str, Any]) -> None:
    dst = cluster_pb2.Cluster()
    json_format.ParseDict(
        {
            "connect_timeout": "0.5s",
            "metadata": {"filter_metadata": {"a": {"x": 1}, "b": {}}},
            "transport_socket_matches": [{"name": "m1"}],
        },
        dst,
    )
    merge(dst, json_format.ParseDict(src, cluster_pb2.Cluster()))
    got = json_format.MessageToDict(dst, preserving_proto_field_name=True)
    for key, value in expected.items():
        assert got[key] == value


@pytest.mark.parametrize(
    ("name", "port"),
    [
        ("9080", 9080),
        ("inbound|9080", 9080),
        ("http_proxy", 0),
        ("https.443.https.gw.ns", 443),
        ("http.8080", 8080),
    ],
)
def test_route_port(name: str, port: int) -> None:
    assert route_port(name) == port


def test_selection_and_order() -> None:
    from xdsd.model.networking import EnvoyFilter

    def ef(name: str, ns: str, selector: dict[str, str] | None = None, prio: int = 0) -> Any:
        return EnvoyFilter(name, ns, tuple((selector or {}).items()), priority=prio)

    filters = [
        ef("b", "default"),
        ef("a", "default", {"app": "x"}),
        ef("z", "istio-system"),
        ef("late", "istio-system", prio=5),
        ef("other", "prod"),
        ef("sel", "istio-system", {"app": "y"}),
        ef("early", "default", prio=-1),
    ]
    chosen = selected_filters(filters, "default", {"app": "x"})
    assert [f.name for f in chosen] == ["early", "z", "a", "b", "late"]
    assert [f.name for f in selected_filters(filters, "prod", {"app": "y"})] == [
        "sel",
        "z",
        "other",
        "late",
    ]
