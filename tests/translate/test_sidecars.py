"""Sidecar scoping: which Sidecar applies to a node, what its egress hosts let it reach,
and how that narrows its snapshot while resources stay shared per visible set."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.translate.meshes import bookinfo, by_name, hcm_of, http, service, tcp
from xdsd.errors import TranslationError
from xdsd.model import Endpoint, Mesh, Origin, Protocol
from xdsd.model.networking import (
    EgressListener,
    EntryPort,
    IngressListener,
    OutboundPolicy,
    Sidecar,
)
from xdsd.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from xdsd.translate import MeshTranslation, NodeClass
from xdsd.translate.routes import virtual_service_index
from xdsd.translate.sidecar_scope import matches, scope_of, select_sidecar

FQDN = "{}.default.svc.cluster.local"
ORIGIN = Origin("rules/sidecar.yaml", 3)


def sidecar(
    name: str = "default",
    *hosts: str,
    namespace: str = "default",
    selector: tuple[tuple[str, str], ...] = (),
    egress: tuple[EgressListener, ...] | None = None,
    ingress: tuple[IngressListener, ...] = (),
    policy: OutboundPolicy | None = None,
) -> Sidecar:
    if egress is None:
        egress = (EgressListener(hosts),) if hosts else ()
    return Sidecar(name, namespace, selector, egress, ingress, policy, origin=ORIGIN)


def with_sidecars(mesh: Mesh, *sidecars: Sidecar) -> Mesh:
    return Mesh(
        services=mesh.services,
        virtual_services=mesh.virtual_services,
        destination_rules=mesh.destination_rules,
        sidecars=sidecars,
    )


# -- which Sidecar ------------------------------------------------------------------

SELECTING = [
    sidecar("b-selected", "./*", selector=(("app", "a"),)),
    sidecar("a-plain", "./*"),
    sidecar("z-selected", "./*", selector=(("app", "a"), ("v", "1"))),
    sidecar("root", "*/*", namespace="istio-system"),
    sidecar("root-selected", "*/*", namespace="istio-system", selector=(("app", "a"),)),
    sidecar("other", "./*", namespace="other"),
]


@pytest.mark.parametrize(
    ("namespace", "labels", "root", "chosen"),
    [
        ("default", (("app", "a"), ("v", "1")), "istio-system", "b-selected"),  # first by name
        ("default", (("app", "b"),), "istio-system", "a-plain"),  # no selector matches
        ("default", (), "istio-system", "a-plain"),
        ("other", (("app", "a"),), "istio-system", "other"),
        ("third", (("app", "a"),), "istio-system", "root"),  # root: selector-less only
        ("third", (), "elsewhere", None),
        ("istio-system", (("app", "a"),), "istio-system", "root-selected"),
    ],
)
def test_istio_order_picks_the_sidecar(
    namespace: str, labels: tuple[tuple[str, str], ...], root: str, chosen: str | None
) -> None:
    """Sidecar.workloadSelector in the node's namespace, then the namespace's Sidecar
    without selector, then the root namespace's."""
    ordered = tuple(sorted(SELECTING, key=lambda s: s.key))
    found = select_sidecar(ordered, namespace, labels, root)
    assert (found.name if found else None) == chosen


# -- what it imports ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "pattern", "expected"),
    [
        ("a.example.com", "*", True),
        ("a.example.com", "*.example.com", True),
        ("example.com", "*.example.com", False),
        ("*.b.example.com", "*.example.com", True),
        ("reviews", "reviews", True),
        ("reviews", "ratings", False),
    ],
)
def test_host_patterns(name: str, pattern: str, expected: bool) -> None:
    assert matches(name, pattern) is expected


def mesh_of_namespaces() -> Mesh:
    return Mesh(
        services=(
            service("a", http(80)),
            service("b", http(80)),
            service("c", http(80), hosts=("c.example.com",)),
            service("x", http(80), namespace="prod"),
            service("y", http(81), namespace="prod"),
        )
    )


def keys(found: frozenset[object] | None) -> set[str] | None:
    return None if found is None else {f"{k.namespace}/{k.name}" for k in found}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("hosts", "reachable"),
    [
        (("*/*",), None),  # everything: the unscoped sets
        (("./*",), {"default/a", "default/b", "default/c"}),
        (("./a", "prod/*"), {"default/a", "prod/x", "prod/y"}),
        (("./a.default.svc.cluster.local",), {"default/a"}),  # Istio's spelling
        (("*/*.example.com",), {"default/c"}),  # extra hosts are names too
        (("*/x",), {"prod/x"}),
        (("./*", "~/b"), {"default/a", "default/c"}),  # ~ excludes
        (("*/*", "~prod/*"), {"default/a", "default/b", "default/c"}),
        (("~/*",), set()),  # imports nothing
        (("other/*",), set()),
    ],
)
def test_egress_hosts_select_services(hosts: tuple[str, ...], reachable: set[str] | None) -> None:
    """Sidecar.egress[].hosts: ns/host, ./host, */host, ns/*, */*, ~ exclusions."""
    mesh = mesh_of_namespaces()
    scope, problems = scope_of(mesh, sidecar("s", *hosts), "default", {})
    assert problems == []
    assert keys(scope.reachable) == reachable
    assert keys(scope.clusters) == reachable


def test_virtual_service_destinations_get_clusters_but_no_virtual_host() -> None:
    """Istio adds the destinations of the visible services' VirtualServices to CDS."""
    mesh = bookinfo()
    from xdsd.model import Destination, HTTPRoute, RouteDestination, VirtualService

    vs = VirtualService(
        "pp",
        hosts=("productpage",),
        http=(HTTPRoute(route=(RouteDestination(Destination("ratings")),)),),
    )
    mesh = Mesh(
        services=mesh.services,
        virtual_services=(*mesh.virtual_services, vs),
        destination_rules=mesh.destination_rules,
    )
    scope, _ = scope_of(mesh, sidecar("s", "./productpage"), "default", virtual_service_index(mesh))
    assert keys(scope.reachable) == {"default/productpage"}
    assert keys(scope.clusters) == {"default/productpage", "default/ratings"}


# -- snapshots ------------------------------------------------------------------------

NODE = NodeClass("productpage", labels=(("app", "pp"),), instance_ip="127.0.0.2")


def test_scoped_node_receives_only_what_it_may_reach() -> None:
    """The snapshot of a node limited to reviews: its clusters, assignments, port route
    configuration and HTTP proxy virtual hosts lose every other service."""
    mesh = with_sidecars(bookinfo(), sidecar("s", "./reviews", selector=(("app", "pp"),)))
    t = MeshTranslation(mesh)
    snap = t.snapshot_for(NODE)
    full = MeshTranslation(bookinfo()).snapshot_for(NODE)
    outbound = {n for n in snap.get(CLUSTER) if n.startswith("outbound|")}
    assert outbound == {
        f"outbound|9080|{s}|{FQDN.format('reviews')}" for s in ("", "v1", "v2", "v3")
    }
    assert set(snap.get(ENDPOINT)) == outbound
    assert len(snap.get(CLUSTER)) < len(full.get(CLUSTER))
    proxy = by_name(snap.get(ROUTE), "http_proxy")
    assert [v.name for v in proxy.virtual_hosts] == [f"{FQDN.format('reviews')}:9080"]
    port = by_name(snap.get(ROUTE), "9080")
    assert [v.name for v in port.virtual_hosts] == [f"{FQDN.format('reviews')}:9080"]
    # no listener for the ports of services it cannot reach (ratings 9081, mysql 3306)
    assert "outbound|127.0.0.1|9081" not in snap.get(LISTENER)
    assert "outbound|127.0.0.1|3306" not in snap.get(LISTENER)
    assert "outbound|127.0.0.1|9081" in full.get(LISTENER)
    # another node (no Sidecar selects it) still sees everything
    other = t.snapshot_for(NodeClass("reviews", instance_ip="127.0.0.3"))
    assert f"outbound|9081||{FQDN.format('ratings')}" in other.get(CLUSTER)


def test_route_configurations_are_shared_per_visible_set_and_across_reloads() -> None:
    """Two classes that see the same services get the very same resources; an edit that
    does not touch them keeps them in the next translation."""
    mesh = with_sidecars(
        bookinfo(),
        sidecar("pp", "./reviews", selector=(("app", "pp"),)),
        sidecar("qq", "*/reviews", selector=(("app", "qq"),)),
    )
    t = MeshTranslation(mesh)
    a = t.snapshot_for(NODE)
    b = t.snapshot_for(NodeClass("details", labels=(("app", "qq"),), outbound_ip="127.0.0.9"))
    for name in ("http_proxy", "9080"):
        assert a.get(ROUTE)[name] is b.get(ROUTE)[name]
    assert (
        a.get(CLUSTER)[f"outbound|9080||{FQDN.format('reviews')}"]
        is b.get(CLUSTER)[f"outbound|9080||{FQDN.format('reviews')}"]
    )
    # an endpoint of a service the node cannot see changes: nothing of it changes
    services = tuple(
        replace(s, endpoints=(Endpoint("127.0.9.9"),)) if s.name == "ratings" else s
        for s in mesh.services
    )
    edited = Mesh(
        services=services,
        virtual_services=mesh.virtual_services,
        destination_rules=mesh.destination_rules,
        sidecars=mesh.sidecars,
    )
    t2 = MeshTranslation(edited, previous=t)
    a2 = t2.snapshot_for(NODE)
    assert a2.get(ROUTE)["http_proxy"] is a.get(ROUTE)["http_proxy"]
    assert a2.versions == a.versions
    cold = MeshTranslation(edited).snapshot_for(NODE)
    assert {t: {n: r.digest for n, r in b.items()} for t, b in a2.resources.items()} == {
        t: {n: r.digest for n, r in b.items()} for t, b in cold.resources.items()
    }


def test_registry_only_adds_a_502_catch_all() -> None:
    """Sidecar.outboundTrafficPolicy.mode REGISTRY_ONLY: Istio's block_all virtual host."""
    mesh = with_sidecars(bookinfo(), sidecar("s", "*/*", policy=OutboundPolicy.REGISTRY_ONLY))
    snap = MeshTranslation(mesh).snapshot_for(NODE)
    for name in ("http_proxy", "9080"):
        last = by_name(snap.get(ROUTE), name).virtual_hosts[-1]
        assert last.name == "block_all" and list(last.domains) == ["*"]
        assert last.routes[0].direct_response.status == 502
    plain = MeshTranslation(bookinfo()).snapshot_for(NODE)
    assert by_name(plain.get(ROUTE), "http_proxy").virtual_hosts[-1].name != "block_all"


def test_explicit_egress_listener_takes_its_services_off_the_default_one() -> None:
    """Sidecar.egress[].port and bind: a listener of its own on bind:PORT for its hosts,
    and the default listener of that port without them."""
    port = EntryPort(9080, Protocol.HTTP, "http", 0, "HTTP")
    mesh = with_sidecars(
        bookinfo(),
        sidecar(
            egress=(
                EgressListener(("./reviews",), port, "127.0.0.7"),
                EgressListener(("./*",)),
            )
        ),
    )
    snap = MeshTranslation(mesh).snapshot_for(NODE)
    listener = by_name(snap.get(LISTENER), "outbound|127.0.0.7|9080")
    assert listener.address.socket_address.address == "127.0.0.7"
    assert hcm_of(listener).rds.route_config_name == "127.0.0.7:9080"
    explicit = by_name(snap.get(ROUTE), "127.0.0.7:9080")
    assert [v.name for v in explicit.virtual_hosts] == [f"{FQDN.format('reviews')}:9080"]
    default = by_name(snap.get(ROUTE), "9080")
    assert [v.name for v in default.virtual_hosts] == [f"{FQDN.format('productpage')}:9080"]
    proxy = by_name(snap.get(ROUTE), "http_proxy")
    assert f"{FQDN.format('reviews')}:9080" in [v.name for v in proxy.virtual_hosts]


def test_explicit_listener_without_bind_replaces_the_default_listener() -> None:
    port = EntryPort(3306, Protocol.TCP, "tcp", 0, "TCP")
    mesh = with_sidecars(
        bookinfo(), sidecar(egress=(EgressListener(("./mysql",), port), EgressListener(("./*",))))
    )
    snap = MeshTranslation(mesh).snapshot_for(NODE)
    assert "outbound|127.0.0.1|3306" in snap.get(LISTENER)


def test_explicit_listener_protocol_must_agree() -> None:
    port = EntryPort(9080, Protocol.TCP, "tcp", 0, "TCP")
    mesh = with_sidecars(bookinfo(), sidecar(egress=(EgressListener(("./reviews",), port),)))
    with pytest.raises(TranslationError) as err:
        MeshTranslation(mesh).snapshot_for(NODE)
    assert "rules/sidecar.yaml:3: egress[0].port.protocol: TCP disagrees" in str(
        err.value.problems[0]
    )


def test_explicit_listener_on_the_proxy_port_is_a_collision() -> None:
    mesh = Mesh(
        services=(
            service("proxyish", http(15001), endpoints=(Endpoint("127.0.8.1"),)),
            service("productpage", http(9080, 19080)),
        )
    )
    port = EntryPort(15001, Protocol.HTTP, "http", 0, "HTTP")
    mesh = with_sidecars(mesh, sidecar(egress=(EgressListener(("./proxyish",), port),)))
    with pytest.raises(TranslationError) as err:
        MeshTranslation(mesh).snapshot_for(NODE)
    assert any("egress[0]" in str(p) and "HTTP proxy" in str(p) for p in err.value.problems)


def test_hiding_a_colliding_service_resolves_the_collision() -> None:
    """Two TCP services on one port collide only if the node sees both."""
    mesh = Mesh(
        services=(
            service("db1", tcp(5432), endpoints=(Endpoint("127.0.8.1"),)),
            service("db2", tcp(5432), endpoints=(Endpoint("127.0.8.2"),)),
            service("productpage", http(9080, 19080)),
        )
    )
    with pytest.raises(TranslationError):
        MeshTranslation(mesh).snapshot_for(NODE)
    snap = MeshTranslation(with_sidecars(mesh, sidecar("s", "./db1"))).snapshot_for(NODE)
    assert "outbound|127.0.0.1|5432" in snap.get(LISTENER)


def test_ingress_default_endpoint_replaces_the_target_port() -> None:
    """Sidecar.ingress[].port and defaultEndpoint: the inbound listener of that port
    forwards to 127.0.0.1:PORT; the ingress list replaces the service's ports (Istio)."""
    ingress = IngressListener(EntryPort(9080, Protocol.HTTP, "http", 0, "HTTP"), "127.0.0.1:18888")
    mesh = with_sidecars(bookinfo(), sidecar(ingress=(ingress,), selector=(("app", "pp"),)))
    snap = MeshTranslation(mesh).snapshot_for(NODE)
    cluster = by_name(snap.get(CLUSTER), "inbound|9080||")
    sock = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (sock.address, sock.port_value) == ("127.0.0.1", 18888)
    assert "inbound|127.0.0.2|9080" in snap.get(LISTENER)
    # egress is untouched by an ingress-only Sidecar
    full = MeshTranslation(bookinfo()).snapshot_for(NODE)
    assert set(snap.get(CLUSTER)) == set(full.get(CLUSTER))


def test_gateways_are_not_scoped() -> None:
    from xdsd.translate import Role

    mesh = with_sidecars(bookinfo(), sidecar("s", "./reviews"))
    gateway = NodeClass("edge", role=Role.GATEWAY)
    assert set(MeshTranslation(mesh).snapshot_for(gateway).get(CLUSTER)) == set(
        MeshTranslation(bookinfo()).snapshot_for(gateway).get(CLUSTER)
    )


def digests(snap: object) -> object:
    return {t: {n: r.digest for n, r in b.items()} for t, b in snap.resources.items()}  # type: ignore[attr-defined]


def test_chained_translations_equal_cold_ones_when_scopes_change() -> None:
    """A class whose Sidecar changes, while another class keeps the new set, is rebuilt
    from the right base (not patched with another base's changes)."""
    from xdsd.translate import ClientKind

    classes = [
        NODE,
        NodeClass("details", labels=(("app", "qq"),), outbound_ip="127.0.0.9"),
        NodeClass("ratings", labels=(("app", "pp"),), client=ClientKind.GRPC),
    ]
    steps = [
        (
            sidecar("pp", "./reviews", selector=(("app", "pp"),)),
            sidecar("qq", "./ratings", selector=(("app", "qq"),)),
        ),
        (
            sidecar("pp", "./ratings", selector=(("app", "pp"),)),
            sidecar("qq", "./ratings", selector=(("app", "qq"),)),
        ),
        (sidecar("pp", "./ratings", "./mysql", selector=(("app", "pp"),)),),
        (),
    ]
    previous = None
    for sidecars in steps:
        mesh = with_sidecars(bookinfo(), *sidecars)
        t = MeshTranslation(mesh, previous=previous)
        for node in classes:
            assert digests(t.snapshot_for(node)) == digests(
                MeshTranslation(mesh).snapshot_for(node)
            ), (sidecars, node)
        previous = t


def test_proxyless_grpc_is_scoped_too() -> None:
    from xdsd.translate import ClientKind

    mesh = with_sidecars(bookinfo(), sidecar("s", "./ratings"))
    snap = MeshTranslation(mesh).snapshot_for(NodeClass("pp", client=ClientKind.GRPC))
    names = set(snap.get(LISTENER))
    assert "ratings:9081" in names and not any(n.startswith("reviews") for n in names)


def test_root_namespace_is_a_setting() -> None:
    """A Sidecar without selector in the root namespace applies to namespaces without
    their own; ``root_namespace`` (settings) says which namespace that is."""
    mesh = with_sidecars(bookinfo(), sidecar("root", "./reviews", namespace="mesh-root"))
    node = NodeClass("productpage", instance_ip="127.0.0.2")
    assert MeshTranslation(mesh).sidecar(node) is None
    t = MeshTranslation(mesh, root_namespace="mesh-root")
    assert t.sidecar(node) is mesh.sidecars[0]
    assert f"outbound|9081||{FQDN.format('ratings')}" not in t.snapshot_for(node).get(CLUSTER)
