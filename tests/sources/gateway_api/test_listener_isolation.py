"""Listener isolation (the Gateway API's "Listeners that are distinct only by
Hostname"): the routes attached to a listener are served for that listener's names only,
and a request for a name a more specific listener of the same port covers is routed by
that listener's routes alone; checked on the route configuration a gateway node gets.
Real traffic through Envoy: ``tests/e2e/rules/test_gateway_api_isolation.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.harness import envoy_accepts
from tests.pem import write_fake_pem
from xdsd.model import HTTPMatch, HTTPRoute, Mesh, Service, StringMatch, VirtualService
from xdsd.model.gateway_api import (
    CONTROLLER_NAME,
    AllowedRoutes,
    BackendRef,
    GatewayAPI,
    GatewayClass,
    KubeGateway,
    Listener,
    ObjectRef,
    Route,
    RouteMatch,
    RouteRule,
)
from xdsd.model.gateway_api import StringMatch as ApiMatch
from xdsd.model.networking import EntryPort, Gateway, Server
from xdsd.model.rules import Destination, MatchKind, RouteDestination
from xdsd.model.service import Endpoint, Port, Protocol
from xdsd.resources import ROUTE
from xdsd.sources import load_directory
from xdsd.sources.gateway_api.convert import GATEWAY_NAME_LABEL, Converted, convert
from xdsd.translate import MeshTranslation, NodeClass, Role, render_static

GROUP = "gateway.networking.k8s.io"
SERVICES = (
    Service("web", "infra", (Port(8080, Protocol.HTTP),), (Endpoint("10.0.0.1"),)),
    Service("evil", "tenant", (Port(8080, Protocol.HTTP),), (Endpoint("10.0.0.2"),)),
)
CLASS = GatewayClass("xdsd", CONTROLLER_NAME)
NODE = NodeClass("edge", "infra", role=Role.GATEWAY, labels=((GATEWAY_NAME_LABEL, "edge"),))
ALL = AllowedRoutes(namespaces_from="All")


def gateway(*listeners: Listener) -> KubeGateway:
    return KubeGateway("edge", "infra", "xdsd", listeners)


ADMIN_AND_OPEN = gateway(
    Listener("admin", 80, "HTTP", hostname="admin.example.com"),
    Listener("open", 80, "HTTP", allowed_routes=ALL),
)


def route(
    name: str, ns: str, section: str, match: RouteMatch, hostnames: tuple[str, ...] = ()
) -> Route:
    parent = ObjectRef("edge", "Gateway", GROUP, namespace="infra", section_name=section)
    backend = "web" if ns == "infra" else "evil"
    rule = RouteRule(
        matches=(match,),
        backend_refs=(BackendRef(ObjectRef(backend, "Service", port=8080), 1),),
    )
    return Route("HTTPRoute", name, ns, (parent,), hostnames, (rule,))


def exact(value: str) -> RouteMatch:
    return RouteMatch(ApiMatch("Exact", value))


def prefix(value: str) -> RouteMatch:
    return RouteMatch(ApiMatch("PathPrefix", value))


def convert_all(gw: KubeGateway, *routes: Route) -> Converted:
    out = convert(GatewayAPI((CLASS,), (gw,), routes), SERVICES)
    assert not out.problems
    return out


def mesh_of(out: Converted) -> Mesh:
    return Mesh(services=SERVICES, gateways=out.gateways, virtual_services=out.virtual_services)


def virtual_hosts(mesh: Mesh, name: str = "http.80") -> dict[str, list[str]]:
    """The route names of each virtual host of the route configuration ``name``, by
    domain."""
    config: Any = MeshTranslation(mesh).snapshot_for(NODE).get(ROUTE)[name].message
    return {d: [r.name for r in vh.routes] for vh in config.virtual_hosts for d in vh.domains}


def test_a_less_specific_listeners_route_is_not_served_for_a_specific_name() -> None:
    """The reviewer's case: ``tenant/hijack`` attached to the open listener (no
    hostname, routes from every namespace) is not served for ``admin.example.com``,
    whose listener takes only its own namespace's routes; there only ``admin``'s
    routes apply, so the tenant's prefix does not outrank the admin's exact path."""
    admin = route("admin", "infra", "admin", exact("/login/submit"))
    hijack = route("hijack", "tenant", "open", prefix("/login"))
    hosts = virtual_hosts(mesh_of(convert_all(ADMIN_AND_OPEN, admin, hijack)))
    assert hosts == {
        "admin.example.com": ["infra.admin.0"],
        "*": ["tenant.hijack.0", "tenant.hijack.0"],
    }


def test_a_route_naming_the_specific_host_through_the_open_listener_is_not_served() -> None:
    """The variant: the tenant's route names ``admin.example.com`` itself but attaches
    through the open listener: that name is the admin listener's, so the route serves
    nothing (its VirtualService is bound to the open listener alone)."""
    admin = route("admin", "infra", "admin", prefix("/"))
    hijack = route("hijack", "tenant", "", prefix("/login"), hostnames=("admin.example.com",))
    out = convert_all(ADMIN_AND_OPEN, admin, hijack)
    assert sorted((vs.listener, vs.hosts) for vs in out.virtual_services) == [
        ("admin", ("admin.example.com",)),
        ("open", ("admin.example.com",)),
    ]
    assert virtual_hosts(mesh_of(out)) == {"admin.example.com": ["infra.admin.0"]}


def test_a_specific_listener_without_routes_answers_404_for_its_name() -> None:
    """No route on the admin listener: ``admin.example.com`` gets a virtual host of its
    own with no route (Envoy's 404), not the open listener's routes."""
    hijack = route("hijack", "tenant", "open", prefix("/"))
    hosts = virtual_hosts(mesh_of(convert_all(ADMIN_AND_OPEN, hijack)))
    assert hosts == {"admin.example.com": [], "*": ["tenant.hijack.0"]}


def test_a_wildcard_listener_covers_the_names_under_it() -> None:
    """A ``*.example.com`` listener owns ``foo.example.com`` and ``*.example.com``: the
    open listener's routes naming them are not served there; a name outside the
    wildcard (``other.org``) stays the open listener's."""
    gw = gateway(
        Listener("wild", 80, "HTTP", hostname="*.example.com"),
        Listener("open", 80, "HTTP", allowed_routes=ALL),
    )
    wild = route("wild", "infra", "wild", prefix("/w"), hostnames=("bar.example.com",))
    named = route(
        "named",
        "tenant",
        "open",
        prefix("/"),
        hostnames=("foo.example.com", "*.example.com", "other.org"),
    )
    hosts = virtual_hosts(mesh_of(convert_all(gw, wild, named)))
    assert hosts == {
        "bar.example.com": ["infra.wild.0", "infra.wild.0"],
        "*.example.com": [],
        "other.org": ["tenant.named.0"],
    }


def test_listeners_on_other_ports_do_not_shadow_each_other() -> None:
    """Isolation is per port: the admin listener on 8080 leaves the open listener on
    80 serving ``admin.example.com``."""
    gw = gateway(
        Listener("admin", 8080, "HTTP", hostname="admin.example.com"),
        Listener("open", 80, "HTTP", allowed_routes=ALL),
    )
    admin = route("admin", "infra", "admin", prefix("/"))
    named = route("named", "tenant", "open", prefix("/"), hostnames=("admin.example.com",))
    mesh = mesh_of(convert_all(gw, admin, named))
    assert virtual_hosts(mesh) == {"admin.example.com": ["tenant.named.0"]}
    assert virtual_hosts(mesh, "http.8080") == {"admin.example.com": ["infra.admin.0"]}


HTTPS_FILES = """\
kind: Service
name: web
namespace: infra
ports: [{number: 8080, protocol: HTTP}]
endpoints: [{address: 10.0.0.1}]
---
kind: Service
name: evil
namespace: tenant
ports: [{number: 8080, protocol: HTTP}]
endpoints: [{address: 10.0.0.2}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: xdsd}
spec: {controllerName: xdsd.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: infra}
spec:
  gatewayClassName: xdsd
  listeners:
  - name: admin
    port: 443
    protocol: HTTPS
    hostname: admin.example.com
    tls:
      certificateRefs: [{group: xdsd.dev, kind: File, name: gw.pem}]
      options: {xdsd.dev/private-key: gw-key.pem}
  - name: open
    port: 443
    protocol: HTTPS
    allowedRoutes: {namespaces: {from: All}}
    tls:
      certificateRefs: [{group: xdsd.dev, kind: File, name: gw.pem}]
      options: {xdsd.dev/private-key: gw-key.pem}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: admin, namespace: infra}
spec:
  parentRefs: [{name: edge, sectionName: admin}]
  rules: [{backendRefs: [{name: web, port: 8080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: hijack, namespace: tenant}
spec:
  parentRefs: [{name: edge, namespace: infra}]
  hostnames: [admin.example.com]
  rules: [{backendRefs: [{name: evil, port: 8080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: anywhere, namespace: tenant}
spec:
  parentRefs: [{name: edge, namespace: infra, sectionName: open}]
  rules:
  - matches: [{path: {type: Exact, value: /}}]
    backendRefs: [{name: evil, port: 8080}]
"""


def test_https_listeners_keep_their_names_apart_in_each_route_configuration(
    tmp_path: Path,
) -> None:
    """HTTPS listeners have a route configuration each (chosen by SNI): the open
    listener's has a 404 virtual host for ``admin.example.com`` (a request whose Host
    is not its SNI name), the admin listener's only its own routes."""
    for name in ("gw.pem", "gw-key.pem"):
        write_fake_pem(tmp_path / name)
    (tmp_path / "gateway.yaml").write_text(HTTPS_FILES)
    loaded = load_directory(str(tmp_path))
    assert not loaded.warnings
    assert virtual_hosts(loaded.mesh, "https.443.admin.edge.infra") == {
        "admin.example.com": ["infra.admin.0"]
    }
    assert virtual_hosts(loaded.mesh, "https.443.open.edge.infra") == {
        "admin.example.com": [],
        "*": ["tenant.anywhere.0"],
    }


def test_envoy_accepts_the_isolated_route_configuration(tmp_path: Path) -> None:
    admin = route("admin", "infra", "admin", exact("/login/submit"))
    hijack = route("hijack", "tenant", "open", prefix("/login"))
    mesh = mesh_of(convert_all(ADMIN_AND_OPEN, admin, hijack))
    envoy_accepts(render_static(mesh, NODE, admin_port=0), tmp_path / "envoy.json")


def test_istio_gateways_keep_merging_servers_of_one_port() -> None:
    """Plain Istio Gateways are not isolated: a ``*`` VirtualService bound to a gateway
    with an ``admin.example.com`` server and a ``*`` server on one port is served for
    ``admin.example.com`` too, as Istio merges them."""
    servers = (
        Server(
            EntryPort(80, Protocol.HTTP, "admin", protocol_name="HTTP"),
            ("admin.example.com",),
            name="admin",
        ),
        Server(EntryPort(80, Protocol.HTTP, "open", protocol_name="HTTP"), ("*",), name="open"),
    )
    istio = Gateway("edge", "infra", ((GATEWAY_NAME_LABEL, "edge"),), servers)
    web = Destination(SERVICES[0].fqdn, port=8080)
    vs = VirtualService(
        "any",
        "infra",
        ("*",),
        ("infra/edge",),
        (
            HTTPRoute(
                name="any",
                match=(HTTPMatch(uri=StringMatch(MatchKind.PREFIX, "/")),),
                route=(RouteDestination(web),),
            ),
        ),
    )
    mesh = Mesh(services=SERVICES, gateways=(istio,), virtual_services=(vs,))
    assert virtual_hosts(mesh) == {"admin.example.com": ["any"], "*": ["any"]}
