"""Attachment, hostname intersection, references and grants, on model objects."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xdsd.model import Service
from xdsd.model.gateway_api import (
    AllowedRoutes,
    KubeGateway,
    Listener,
    ObjectRef,
    ReferenceGrant,
    Route,
)
from xdsd.model.service import Port, Protocol
from xdsd.sources.gateway_api import conditions as cond
from xdsd.sources.gateway_api.attach import (
    attach,
    hostnames_overlap,
    intersect,
    kind_conflicts,
    wildcard_matches,
)
from xdsd.sources.gateway_api.refs import resolve_backend

GROUP = "gateway.networking.k8s.io"


@pytest.mark.parametrize(
    ("listener", "route", "expected"),
    [
        ("", (), ("*",)),
        ("", ("a.example.com",), ("a.example.com",)),
        ("a.example.com", (), ("a.example.com",)),
        ("a.example.com", ("a.example.com", "b.example.com"), ("a.example.com",)),
        (
            "*.example.com",
            ("a.example.com", "x.y.example.com", "example.com"),
            ("a.example.com", "x.y.example.com"),
        ),
        ("a.example.com", ("*.example.com",), ("a.example.com",)),
        ("*.example.com", ("*.a.example.com",), ("*.a.example.com",)),
        ("*.a.example.com", ("*.example.com",), ("*.a.example.com",)),
        ("*.example.com", ("*.example.com",), ("*.example.com",)),
        ("a.example.com", ("b.example.com", "*.other.com"), ()),
        ("*.example.com", ("example.com",), ()),
    ],
)
def test_hostname_intersection(
    listener: str, route: tuple[str, ...], expected: tuple[str, ...]
) -> None:
    assert intersect(listener, route) == expected


def test_wildcard_needs_a_label() -> None:
    assert not wildcard_matches("*.example.com", "example.com")
    assert not wildcard_matches("*.example.com", "badexample.com")
    assert wildcard_matches("*", "anything")


def _gateway(*listeners: Listener, namespace: str = "infra") -> KubeGateway:
    return KubeGateway("gw", namespace, "xdsd", listeners)


HTTP = Listener("http", 80, "HTTP")
HTTPS_A = Listener("https", 443, "HTTPS", hostname="a.example.com")


def _route(*parents: ObjectRef, namespace: str = "infra", hostnames: tuple[str, ...] = ()) -> Route:
    return Route("HTTPRoute", "r", namespace, parents, hostnames)


def test_attaches_to_every_listener_without_section_name() -> None:
    gw = _gateway(HTTP, HTTPS_A)
    found, conditions = attach(_route(ObjectRef("gw", "Gateway", GROUP)), {("infra", "gw"): gw})
    assert [(a.listener.name, a.hostnames) for a in found] == [
        ("http", ("*",)),
        ("https", ("a.example.com",)),
    ]
    assert [(c.type, c.status, c.reason, c.scope) for c in conditions] == [
        ("Accepted", True, "Accepted", "parentRefs[0]")
    ]


def test_section_name_and_port_pick_listeners() -> None:
    gw = _gateway(HTTP, HTTPS_A)
    gws = {("infra", "gw"): gw}
    found, _ = attach(_route(ObjectRef("gw", "Gateway", GROUP, section_name="https")), gws)
    assert [a.listener.name for a in found] == ["https"]
    found, _ = attach(_route(ObjectRef("gw", "Gateway", GROUP, port=80)), gws)
    assert [a.listener.name for a in found] == ["http"]
    found, conditions = attach(_route(ObjectRef("gw", "Gateway", GROUP, section_name="nope")), gws)
    assert not found
    assert conditions[0].reason == cond.NO_MATCHING_PARENT and not conditions[0].status


def test_unknown_gateway_is_no_matching_parent() -> None:
    found, conditions = attach(_route(ObjectRef("other", "Gateway", GROUP)), {})
    assert not found and conditions[0].reason == cond.NO_MATCHING_PARENT


def test_service_parents_are_left_to_gamma() -> None:
    found, conditions = attach(_route(ObjectRef("svc", "Service")), {})
    assert not found and not conditions


def test_namespaces_same_all_selector() -> None:
    same = _gateway(HTTP)
    route = _route(ObjectRef("gw", "Gateway", GROUP, namespace="infra"), namespace="apps")
    found, conditions = attach(route, {("infra", "gw"): same})
    assert not found and conditions[0].reason == cond.NOT_ALLOWED_BY_LISTENERS
    every = _gateway(Listener("http", 80, "HTTP", allowed_routes=AllowedRoutes("All")))
    found, _ = attach(route, {("infra", "gw"): every})
    assert len(found) == 1
    selected = _gateway(
        Listener("http", 80, "HTTP", allowed_routes=AllowedRoutes("Selector", (("team", "a"),)))
    )
    found, _ = attach(route, {("infra", "gw"): selected}, {"apps": {"team": "a"}})
    assert len(found) == 1
    found, _ = attach(route, {("infra", "gw"): selected}, {"apps": {"team": "b"}})
    assert not found
    found, _ = attach(route, {("infra", "gw"): selected})
    assert not found


def test_kinds() -> None:
    tcp_only = _gateway(Listener("tcp", 9000, "TCP"))
    found, conditions = attach(
        _route(ObjectRef("gw", "Gateway", GROUP)), {("infra", "gw"): tcp_only}
    )
    assert not found and conditions[0].reason == cond.NOT_ALLOWED_BY_LISTENERS
    grpc_only = _gateway(
        Listener("h", 80, "HTTP", allowed_routes=AllowedRoutes(kinds=((GROUP, "GRPCRoute"),)))
    )
    found, _ = attach(_route(ObjectRef("gw", "Gateway", GROUP)), {("infra", "gw"): grpc_only})
    assert not found


def test_no_matching_listener_hostname() -> None:
    gw = _gateway(HTTPS_A)
    route = _route(ObjectRef("gw", "Gateway", GROUP), hostnames=("b.example.com",))
    found, conditions = attach(route, {("infra", "gw"): gw})
    assert not found
    assert conditions[0].reason == cond.NO_MATCHING_LISTENER_HOSTNAME


SERVICES = [
    Service("web", "apps", (Port(8080, Protocol.HTTP),)),
    Service("db", "data", (Port(5432, Protocol.TCP),)),
]


def test_backend_resolution_and_grants() -> None:
    ok = resolve_backend(ObjectRef("web", "Service", port=8080), "HTTPRoute", "apps", SERVICES, [])
    assert ok.service is SERVICES[0]
    missing = resolve_backend(ObjectRef("nope", "Service"), "HTTPRoute", "apps", SERVICES, [])
    assert missing.service is None and missing.reason == cond.BACKEND_NOT_FOUND
    port = resolve_backend(ObjectRef("web", "Service", port=9), "HTTPRoute", "apps", SERVICES, [])
    assert port.reason == cond.BACKEND_NOT_FOUND
    kind = resolve_backend(ObjectRef("web", "Pod"), "HTTPRoute", "apps", SERVICES, [])
    assert kind.reason == cond.INVALID_KIND
    across = ObjectRef("web", "Service", namespace="apps", port=8080)
    refused = resolve_backend(across, "HTTPRoute", "infra", SERVICES, [])
    assert refused.service is None and refused.reason == cond.REF_NOT_PERMITTED
    grant = ReferenceGrant("g", "apps", ((GROUP, "HTTPRoute", "infra"),), (("", "Service", ""),))
    assert resolve_backend(across, "HTTPRoute", "infra", SERVICES, [grant]).service is SERVICES[0]
    named = ReferenceGrant(
        "g", "apps", ((GROUP, "HTTPRoute", "infra"),), (("", "Service", "other"),)
    )
    assert resolve_backend(across, "HTTPRoute", "infra", SERVICES, [named]).service is None
    wrong_ns = ReferenceGrant(
        "g", "infra", ((GROUP, "HTTPRoute", "infra"),), (("", "Service", ""),)
    )
    assert resolve_backend(across, "HTTPRoute", "infra", SERVICES, [wrong_ns]).service is None
    grpc_only = ReferenceGrant(
        "g", "apps", ((GROUP, "GRPCRoute", "infra"),), (("", "Service", ""),)
    )
    assert resolve_backend(across, "HTTPRoute", "infra", SERVICES, [grpc_only]).service is None


@given(
    st.sampled_from(["", "a.example.com", "*.example.com", "*.a.example.com", "x.org"]),
    st.lists(
        st.sampled_from(
            [
                "a.example.com",
                "b.a.example.com",
                "*.example.com",
                "*.a.example.com",
                "example.com",
                "x.org",
                "*.org",
            ]
        ),
        max_size=4,
    ),
)
def test_intersection_is_within_both(listener: str, route: list[str]) -> None:
    """Every name the intersection gives is covered by the listener's hostname and by
    one of the route's (or they do not restrict)."""
    for host in intersect(listener, route):
        assert not listener or host == listener or wildcard_matches(listener, host)
        assert not route or any(h == host or wildcard_matches(h, host) for h in route)


_HOSTS = st.sampled_from(
    [
        "*",
        "*.example.com",
        "*.a.example.com",
        "a.example.com",
        "b.example.com",
        "x.a.example.com",
        "other.org",
    ]
)


@given(
    st.lists(
        st.tuples(st.sampled_from(["HTTPRoute", "GRPCRoute"]), st.lists(_HOSTS, max_size=3)),
        max_size=8,
    )
)
def test_kind_conflicts_match_the_pairwise_rule(specs: list[tuple[str, list[str]]]) -> None:
    """The indexed look-up gives what comparing every pair gives: in namespace/name
    order, a route loses to the first route of the other kind still holding a
    hostname in common."""
    gw = _gateway(HTTP)
    routes = [
        Route(
            kind,
            f"r{i}",
            "infra",
            (ObjectRef("gw", "Gateway", GROUP),),
            tuple(dict.fromkeys(hosts)),
        )
        for i, (kind, hosts) in enumerate(specs)
    ]
    found = kind_conflicts(routes, {("infra", "gw"): gw})
    expected: dict[str, str] = {}
    holding: list[tuple[Route, tuple[str, ...]]] = []
    for route in sorted(routes, key=lambda r: (r.namespace, r.name, r.kind)):
        hosts = intersect("", route.hostnames)
        winner = next(
            (o for o, h in holding if o.kind != route.kind and hostnames_overlap(h, hosts)), None
        )
        if winner is None:
            holding.append((route, hosts))
        else:
            expected[route.name] = winner.name
    assert {k.name: m.split(" ")[1].split("/")[1] for (k, _), m in found.items()} == expected


def test_a_hostname_backend_is_a_full_host_never_a_short_name() -> None:
    """An Istio ``Hostname`` names a literal host: a Service's short name must not
    reach a Service of another namespace (no ReferenceGrant is asked for a Hostname);
    its full name, a declared host and a ServiceEntry host do."""
    secret = Service("payments", "finance", (Port(8080, Protocol.HTTP),))
    declared = Service("pay", "finance", (Port(8080, Protocol.HTTP),), hosts=("pay.example.com",))
    entry = Service("api.example.com", "finance", (Port(443, Protocol.TLS),), entry="ext")
    services = [secret, declared, entry]

    def host(name: str, port: int = 8080) -> Service | None:
        ref = ObjectRef(name, "Hostname", "networking.istio.io", port=port)
        return resolve_backend(ref, "HTTPRoute", "tenant", services, []).service

    assert host("payments") is None
    assert host("payments.finance") is None
    short = resolve_backend(
        ObjectRef("payments", "Hostname", "networking.istio.io"),
        "HTTPRoute",
        "tenant",
        services,
        [],
    )
    assert short.reason == cond.BACKEND_NOT_FOUND
    assert host("payments.finance.svc.cluster.local") is secret
    assert host("Payments.Finance.svc.cluster.local") is secret
    assert host("pay.example.com") is declared
    assert host("api.example.com", 443) is entry
