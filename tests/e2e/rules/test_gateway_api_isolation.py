"""Gateway API listener isolation, proven by real traffic through a real gateway Envoy:
two HTTP listeners share a port, ``admin`` (hostname ``admin.example.com``, routes of
its own namespace only) and ``open`` (no hostname, routes from every namespace). A
route of namespace ``tenant`` attached to ``open`` never takes a request for
``admin.example.com``, whether it names that host or none: only the routes attached to
the most specific listener serve a name (the API's "Listeners that are distinct only
by Hostname").

The gateway node is started as ``xdsd bootstrap --role gateway --gateway edge``."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.traffic_mesh import TrafficMesh
from tests.harness import free_port


def gateway_api(port: int, backend_port: int, admin_match: str, hijack: str) -> str:
    """The GatewayClass, the Gateway with the two listeners on ``port``, the admin
    route (``admin_match``, to ``web``) and the tenant's route (``hijack``: its
    parentRefs, hostnames and rules, to ``evil``)."""
    return f"""\
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: xdsd}}
spec: {{controllerName: xdsd.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: default}}
spec:
  gatewayClassName: xdsd
  listeners:
  - {{name: admin, port: {port}, protocol: HTTP, hostname: admin.example.com}}
  - name: open
    port: {port}
    protocol: HTTP
    allowedRoutes: {{namespaces: {{from: All}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: admin, namespace: default}}
spec:
  parentRefs: [{{name: edge, sectionName: admin}}]
  rules:
  - {admin_match}backendRefs: [{{name: web, port: {backend_port}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: hijack, namespace: tenant}}
spec:
{hijack}
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /login}}}}]
    backendRefs: [{{name: evil, port: {backend_port}}}]
"""


def test_a_route_naming_the_admin_host_through_the_open_listener_gets_none(
    tmp_path: Path,
) -> None:
    """The tenant's route names ``admin.example.com`` but attaches through ``open``
    (the admin listener refuses its namespace): ``admin.example.com/login`` goes to the
    admin route's backend, and the tenant's never sees a request."""
    m = TrafficMesh(tmp_path)
    try:
        port = free_port(m.gateway_ip("edge"))
        web, evil = m.upstream("web"), m.upstream("evil")
        m.service("web", [web])
        m.service("evil", [evil], namespace="tenant")
        hijack = (
            "  parentRefs: [{name: edge, namespace: default}]\n  hostnames: [admin.example.com]"
        )
        m.rule("gw", gateway_api(port, m.port, "", hijack))
        gw = m.start_gateway("edge", {}, bootstrap_args=("--gateway", "edge"))
        gw.wait_for(lambda: gw.request(port, "admin.example.com", "/").backend == "web", "routes")
        for path in ("/login", "/login/x"):
            reply = gw.request(port, "admin.example.com", path)
            assert (reply.status, reply.backend) == (200, "web"), path
        assert evil.hits == 0
    finally:
        m.stop()


def test_a_route_of_the_open_listener_does_not_outrank_the_admin_route(
    tmp_path: Path,
) -> None:
    """The tenant's route names no host: it serves other names on ``open``, but not
    ``admin.example.com``, where the admin route's exact ``/login/submit`` applies and
    a path it does not match is a 404 (not the tenant's ``/login`` prefix)."""
    m = TrafficMesh(tmp_path)
    try:
        port = free_port(m.gateway_ip("edge"))
        web, evil = m.upstream("web"), m.upstream("evil")
        m.service("web", [web])
        m.service("evil", [evil], namespace="tenant")
        exact = "matches: [{path: {type: Exact, value: /login/submit}}]\n    "
        hijack = "  parentRefs: [{name: edge, namespace: default, sectionName: open}]"
        m.rule("gw", gateway_api(port, m.port, exact, hijack))
        gw = m.start_gateway("edge", {}, bootstrap_args=("--gateway", "edge"))
        gw.wait_for(
            lambda: gw.request(port, "other.example.com", "/login").backend == "evil", "routes"
        )
        hits = evil.hits
        reply = gw.request(port, "admin.example.com", "/login/submit")
        assert (reply.status, reply.backend) == (200, "web")
        refused = gw.request(port, "admin.example.com", "/login")
        assert (refused.status, refused.backend) == (404, "")
        assert evil.hits == hits
    finally:
        m.stop()
