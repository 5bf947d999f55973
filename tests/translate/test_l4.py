"""TCP and TLS routes: listener plans per caller, the Envoy listener they become, and how
the mesh translation shares them between node classes."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from tests.translate.meshes import FQDN, http, service, tcp
from xdsd.errors import TranslationError
from xdsd.model import (
    Destination,
    DestinationRule,
    Endpoint,
    L4Match,
    L4Route,
    Mesh,
    Origin,
    Port,
    Protocol,
    RouteDestination,
    Subset,
    VirtualService,
)
from xdsd.resources import CLUSTER, LISTENER, Resource
from xdsd.translate import MeshTranslation, NodeClass
from xdsd.translate.l4 import (
    ANY_CALLER,
    FilterChainPlan,
    L4Caller,
    L4ListenerPlan,
    plan_l4_listener,
)
from xdsd.translate.listeners import TLS_INSPECTOR, outbound_l4_listener
from xdsd.translate.placement import PortGroup, check_port_groups
from xdsd.translate.routes import virtual_service_index

DB = FQDN.format("db")
A, B = FQDN.format("tls-a"), FQDN.format("tls-b")
OWN_DB = f"outbound|5432||{DB}"
V1, V2 = f"outbound|5432|v1|{DB}", f"outbound|5432|v2|{DB}"


def tls_port(number: int) -> Port:
    return Port(number, Protocol.TLS, "tls")


def to(host: str, subset: str = "", weight: int = 100, port: int = 0) -> RouteDestination:
    return RouteDestination(Destination(host, subset, port), weight)


def mesh(*, tcp_rules: tuple[L4Route, ...] = (), tls_rules: tuple[L4Route, ...] = ()) -> Mesh:
    """db (TCP 5432, subsets v1/v2), tls-a and tls-b (TLS 8443), web (HTTP 9080, 5432 is
    not its port), and the rules given (tcp rules for db, tls rules for tls-a)."""
    eps = (Endpoint("10.0.0.1", (("version", "v1"),)), Endpoint("10.0.0.2", (("version", "v2"),)))
    services = (
        service("db", tcp(5432), endpoints=eps),
        service("tls-a", tls_port(8443), endpoints=(Endpoint("10.0.1.1"),)),
        service("tls-b", tls_port(8443), endpoints=(Endpoint("10.0.1.2"),)),
        service("web", http(9080), http(9090), endpoints=(Endpoint("10.0.2.1"),)),
    )
    rules = (
        DestinationRule(
            "db",
            "db",
            subsets=(Subset("v1", (("version", "v1"),)), Subset("v2", (("version", "v2"),))),
        ),
    )
    vss = []
    if tcp_rules:
        vss.append(VirtualService("db", hosts=("db",), tcp=tcp_rules, origin=Origin("vs.yaml", 3)))
    if tls_rules:
        vss.append(
            VirtualService(
                "tls", hosts=("tls-a", "*.example.com"), tls=tls_rules, origin=Origin("vs.yaml", 9)
            )
        )
    return Mesh(services=services, virtual_services=tuple(vss), destination_rules=rules)


def plan(m: Mesh, port: int, caller: L4Caller = ANY_CALLER) -> tuple[FilterChainPlan, ...]:
    members = tuple((s, p) for s in m.services for p in s.ports if p.number == port)
    return plan_l4_listener(m, virtual_service_index(m), PortGroup(port, members), caller).chains


def chain(
    *clusters: tuple[str, int], names: tuple[str, ...] = (), cidrs: tuple[str, ...] = ()
) -> FilterChainPlan:
    return FilterChainPlan(tuple(clusters), names, cidrs)


FRONTEND = L4Caller("default", (("app", "frontend"), ("version", "v1")))
OTHER_NS = L4Caller("other", (("app", "frontend"),))

# name → (tcp rules of db, caller, expected chains of port 5432)
TCP_CASES: dict[str, tuple[tuple[L4Route, ...], L4Caller, tuple[FilterChainPlan, ...]]] = {
    "no rule: the service itself": ((), ANY_CALLER, (chain((OWN_DB, 1)),)),
    "relative weights": (
        (L4Route(route=(to("db", "v1", 3), to("db", "v2", 1))),),
        ANY_CALLER,
        (chain((V1, 3), (V2, 1)),),
    ),
    "zero weight left out": (
        (L4Route(route=(to("db", "v1", 5), to("db", "v2", 0))),),
        ANY_CALLER,
        (chain((V1, 5)),),
    ),
    "rule without match is the catch-all, later rules unreachable": (
        (L4Route(route=(to("db", "v2"),)), L4Route(route=(to("db", "v1"),))),
        ANY_CALLER,
        (chain((V2, 100)),),
    ),
    "match on another port: the service itself": (
        (L4Route((L4Match(port=9999),), (to("db", "v2"),)),),
        ANY_CALLER,
        (chain((OWN_DB, 1)),),
    ),
    "match on this port": (
        (L4Route((L4Match(port=5432),), (to("db", "v2"),)),),
        ANY_CALLER,
        (chain((V2, 100)),),
    ),
    "destination subnets gathered, then the default": (
        (
            L4Route(
                (
                    L4Match(destination_subnets=("10.0.0.0/8",)),
                    L4Match(destination_subnets=("127.0.0.5/32", "10.0.0.0/8")),
                ),
                (to("db", "v2"),),
            ),
        ),
        ANY_CALLER,
        (chain((V2, 100), cidrs=("10.0.0.0/8", "127.0.0.5/32")), chain((OWN_DB, 1))),
    ),
    "subnets then a catch-all rule": (
        (
            L4Route((L4Match(destination_subnets=("127.0.0.0/8",)),), (to("db", "v2"),)),
            L4Route(route=(to("db", "v1"),)),
        ),
        ANY_CALLER,
        (chain((V2, 100), cidrs=("127.0.0.0/8",)), chain((V1, 100))),
    ),
    "source labels of the caller": (
        (L4Route((L4Match(source_labels=(("app", "frontend"),)),), (to("db", "v2"),)),),
        FRONTEND,
        (chain((V2, 100)),),
    ),
    "source labels of someone else": (
        (L4Route((L4Match(source_labels=(("app", "backend"),)),), (to("db", "v2"),)),),
        FRONTEND,
        (chain((OWN_DB, 1)),),
    ),
    "source namespace of the caller": (
        (L4Route((L4Match(source_namespace="other"),), (to("db", "v2"),)),),
        OTHER_NS,
        (chain((V2, 100)),),
    ),
    "source namespace of someone else": (
        (L4Route((L4Match(source_namespace="other"),), (to("db", "v2"),)),),
        FRONTEND,
        (chain((OWN_DB, 1)),),
    ),
    "match bound to a gateway only": (
        (L4Route((L4Match(gateways=("ingress",)),), (to("db", "v2"),)),),
        ANY_CALLER,
        (chain((OWN_DB, 1)),),
    ),
    "match bound to the mesh": (
        (L4Route((L4Match(gateways=("ingress", "mesh")),), (to("db", "v2"),)),),
        ANY_CALLER,
        (chain((V2, 100)),),
    ),
    "destination on another service and port": (
        (L4Route(route=(to("web", port=9090),)),),
        ANY_CALLER,
        (chain((f"outbound|9090||{FQDN.format('web')}", 100)),),
    ),
}


@pytest.mark.parametrize("name", TCP_CASES)
def test_tcp_rules_become_filter_chains(name: str) -> None:
    rules, caller, expected = TCP_CASES[name]
    assert plan(mesh(tcp_rules=rules), 5432, caller) == expected


def sni(*names: str) -> L4Match:
    return L4Match(sni_hosts=names)


A_NAMES = (A, "tls-a.default.svc", "tls-a.default", "tls-a")
B_NAMES = (B, "tls-b.default.svc", "tls-b.default", "tls-b")
OWN_A, OWN_B = f"outbound|8443||{A}", f"outbound|8443||{B}"

# name → (tls rules of tls-a, caller, expected chains of port 8443)
TLS_CASES: dict[str, tuple[tuple[L4Route, ...], L4Caller, tuple[FilterChainPlan, ...]]] = {
    "no rule: each service by its names": (
        (),
        ANY_CALLER,
        (chain((OWN_A, 1), names=A_NAMES), chain((OWN_B, 1), names=B_NAMES)),
    ),
    "sni routes, the other service keeps its names": (
        (
            L4Route(
                (sni("tls-a", "x.example.com"),), (to("tls-b", weight=1), to("tls-a", weight=1))
            ),
        ),
        ANY_CALLER,
        (
            chain((OWN_B, 1), (OWN_A, 1), names=("tls-a", "x.example.com")),
            chain((OWN_B, 1), names=B_NAMES),
        ),
    ),
    "a repeated match is unreachable": (
        (
            L4Route((sni("*.example.com"),), (to("tls-b"),)),
            L4Route((sni("*.example.com"), sni("tls-a")), (to("tls-a"),)),
        ),
        ANY_CALLER,
        (
            chain((OWN_B, 100), names=("*.example.com",)),
            chain((OWN_A, 100), names=("tls-a",)),
            chain((OWN_B, 1), names=B_NAMES),
        ),
    ),
    "sni * matches any name": (
        (L4Route((sni("*"),), (to("tls-b"),)),),
        ANY_CALLER,
        (chain((OWN_B, 100)), chain((OWN_B, 1), names=B_NAMES)),
    ),
    "sni and destination subnets": (
        (
            L4Route(
                (L4Match(sni_hosts=("tls-a",), destination_subnets=("127.0.0.0/8",)),),
                (to("tls-b"),),
            ),
        ),
        ANY_CALLER,
        (
            chain((OWN_B, 100), names=("tls-a",), cidrs=("127.0.0.0/8",)),
            chain((OWN_B, 1), names=B_NAMES),
        ),
    ),
    "match for other callers: the service's own chain": (
        (L4Route((L4Match(sni_hosts=("tls-a",), source_labels=(("app", "x"),)),), (to("tls-b"),)),),
        FRONTEND,
        (chain((OWN_A, 1), names=A_NAMES), chain((OWN_B, 1), names=B_NAMES)),
    ),
    "a name claimed twice across services stays with the first": (
        (L4Route((sni("tls-a", "tls-b"),), (to("tls-a"),)),),
        ANY_CALLER,
        (chain((OWN_A, 100), names=("tls-a", "tls-b")), chain((OWN_B, 1), names=B_NAMES[:-1])),
    ),
}


@pytest.mark.parametrize("name", TLS_CASES)
def test_tls_rules_become_sni_filter_chains(name: str) -> None:
    rules, caller, expected = TLS_CASES[name]
    assert plan(mesh(tls_rules=rules), 8443, caller) == expected


def test_a_tls_service_alone_on_its_port_takes_any_name() -> None:
    m = Mesh(services=(service("tls-a", tls_port(8443), endpoints=(Endpoint("10.0.1.1"),)),))
    assert plan(m, 8443) == (chain((OWN_A, 1)),)


# name → (rules, port, expected fragments of the one problem)
BAD: dict[str, tuple[dict[str, tuple[L4Route, ...]], int, tuple[str, ...]]] = {
    "unknown service": (
        {"tcp_rules": (L4Route(route=(to("nope"),)),)},
        5432,
        ("vs.yaml", "tcp[0].route[0].destination.host", "no service named 'nope'"),
    ),
    "unknown port": (
        {"tcp_rules": (L4Route(route=(to("db", port=1),)),)},
        5432,
        ("tcp[0].route[0].destination.port.number", "has no port 1", "5432"),
    ),
    "ambiguous port": (
        {"tcp_rules": (L4Route(route=(to("web"),)),)},
        5432,
        ("tcp[0].route[0].destination.port.number", "several ports", "9080, 9090"),
    ),
    "unknown subset": (
        {"tcp_rules": (L4Route(route=(to("db", "v9"),)),)},
        5432,
        ("tcp[0].route[0].destination.subset", "'v9'", "not defined"),
    ),
    "unknown subset past the catch-all": (
        {"tcp_rules": (L4Route(route=(to("db"),)), L4Route(route=(to("db", "v9"),)))},
        5432,
        ("tcp[1].route[0].destination.subset", "'v9'"),
    ),
    "tls destination": (
        {"tls_rules": (L4Route((sni("tls-a"),), (to("tls-a", "x"),)),)},
        8443,
        ("vs.yaml:9", "tls[0].route[0].destination.subset", "'x'"),
    ),
}


@pytest.mark.parametrize("name", BAD)
def test_untranslatable_destinations_name_the_rule(name: str) -> None:
    rules, port, fragments = BAD[name]
    with pytest.raises(TranslationError) as err:
        plan(mesh(**rules), port)
    assert len(err.value.problems) == 1
    text = str(err.value.problems[0])
    assert all(f in text for f in fragments), text


def proxies(listener: Any) -> list[Any]:
    out = []
    for fc in listener.filter_chains:
        proxy = tcp_proxy_pb2.TcpProxy()
        assert fc.filters[0].typed_config.Unpack(proxy)
        out.append(proxy)
    return out


def test_listener_of_a_plan() -> None:
    p = L4ListenerPlan(
        8443,
        (
            chain(("c1", 3), ("c2", 1), names=("a.example.com", "*.b.example.com")),
            chain(("c3", 1), cidrs=("10.0.0.0/8", "2001:db8::/32")),
            chain(("c4", 1)),
        ),
    )
    listener = outbound_l4_listener("127.0.0.9", p)
    assert listener.name == "outbound|127.0.0.9|8443"
    assert [f.name for f in listener.listener_filters] == [TLS_INSPECTOR]
    first, second, third = listener.filter_chains
    assert list(first.filter_chain_match.server_names) == ["a.example.com", "*.b.example.com"]
    assert [
        (r.address_prefix, r.prefix_len.value) for r in second.filter_chain_match.prefix_ranges
    ] == [("10.0.0.0", 8), ("2001:db8::", 32)]
    assert not third.HasField("filter_chain_match")
    weighted, single, last = proxies(listener)
    assert [(c.name, c.weight) for c in weighted.weighted_clusters.clusters] == [
        ("c1", 3),
        ("c2", 1),
    ]
    assert not weighted.cluster
    assert (single.cluster, last.cluster) == ("c3", "c4")
    # every cluster a chain uses is a reference of the listener (delivered before it)
    refs = Resource.of(listener.name, listener).references
    assert {n for t, n in refs if t == CLUSTER} == {"c1", "c2", "c3", "c4"}


def test_plain_tcp_listener_is_unchanged() -> None:
    """Without rules, the listener is the one a TCP service always had (no inspector)."""
    p = L4ListenerPlan(5432, (chain((OWN_DB, 1)),))
    listener = outbound_l4_listener("127.0.0.9", p)
    assert not listener.listener_filters
    [only] = listener.filter_chains
    assert not only.HasField("filter_chain_match")
    [proxy] = proxies(listener)
    assert proxy == tcp_proxy_pb2.TcpProxy(stat_prefix="outbound_5432", cluster=OWN_DB)


def by_name(snapshot: Any, name: str) -> Any:
    return snapshot.get(LISTENER)[name]


def test_listeners_shared_unless_a_match_looks_at_the_caller() -> None:
    plain = mesh(tcp_rules=(L4Route(route=(to("db", "v1", 3), to("db", "v2", 1))),))
    t = MeshTranslation(plain)
    x = t.snapshot_for(NodeClass("x", labels=(("app", "x"),)))
    y = t.snapshot_for(NodeClass("y", namespace="other"))
    name = "outbound|127.0.0.1|5432"
    assert by_name(x, name) is by_name(y, name)

    picky = mesh(tcp_rules=(L4Route((L4Match(source_labels=(("app", "x"),)),), (to("db", "v2"),)),))
    t = MeshTranslation(picky, previous=t)
    x = t.snapshot_for(NodeClass("x", labels=(("app", "x"),)))
    y = t.snapshot_for(NodeClass("y", labels=(("app", "y"),)))
    z = t.snapshot_for(NodeClass("z", labels=(("app", "y"),), namespace="other"))
    assert proxies(by_name(x, name).message)[0].cluster == V2
    assert proxies(by_name(y, name).message)[0].cluster == OWN_DB
    assert by_name(y, name) is by_name(z, name)  # same plan, same resource


def test_a_bad_tcp_rule_refuses_the_snapshot() -> None:
    m = mesh(tcp_rules=(L4Route(route=(to("db", "v9"),)),))
    with pytest.raises(TranslationError, match="v9"):
        MeshTranslation(m).snapshot_for(NodeClass("x"))


def test_port_sharing_rules() -> None:
    def problems(*ports: tuple[str, Port]) -> list[str]:
        members = tuple((service(n, p), p) for n, p in ports)
        return [str(p) for p in check_port_groups([PortGroup(8443, members)])]

    assert problems(("a", tls_port(8443)), ("b", tls_port(8443)), ("c", tls_port(8443))) == []
    (mixed,) = problems(("a", tls_port(8443)), ("b", tcp(8443)))
    assert "services/b.toml" in mixed and "TLS service a.default" in mixed
    (two,) = problems(("a", tcp(8443)), ("b", tcp(8443)))
    assert "both TCP services" in two


def test_tcp_idle_timeout_comes_from_the_destinations_connection_pool() -> None:
    """DestinationRule trafficPolicy.connectionPool.tcp.idleTimeout (per subset, merged as
    Istio does) becomes the TCP proxy's idle_timeout; a chain takes its shortest."""
    from datetime import timedelta

    from xdsd.model import ConnectionPool, TcpPool, TrafficPolicy

    def pool(seconds: int) -> TrafficPolicy:
        return TrafficPolicy(
            connection_pool=ConnectionPool(TcpPool(idle_timeout=timedelta(seconds=seconds)))
        )

    base = mesh(tcp_rules=(L4Route(route=(to("db", "v1", 3), to("db", "v2", 1))),))
    rule = DestinationRule(
        "db",
        "db",
        traffic_policy=pool(600),
        subsets=(Subset("v1", (("version", "v1"),), pool(30)), Subset("v2", (("version", "v2"),))),
    )
    m = Mesh(base.services, base.virtual_services, (rule,))
    (weighted,) = plan(m, 5432)
    assert weighted.idle_timeout == timedelta(seconds=30)  # v1's 30 s beats v2's 600 s
    (proxy,) = proxies(outbound_l4_listener("127.0.0.9", L4ListenerPlan(5432, (weighted,))))
    assert proxy.idle_timeout.seconds == 30
    (own,) = plan(Mesh(base.services, (), (rule,)), 5432)
    assert own.idle_timeout == timedelta(seconds=600)
    (plain,) = plan(mesh(), 5432)
    assert plain.idle_timeout is None
    (untouched,) = proxies(outbound_l4_listener("127.0.0.9", L4ListenerPlan(5432, (plain,))))
    assert not untouched.HasField("idle_timeout")
