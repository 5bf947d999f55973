"""Gateway API Gateways and HTTPRoutes, proven by real traffic through a real gateway
Envoy configured by xdsd from Gateway API files: precedence between overlapping routes,
hostname intersection, a cross-namespace backend refused (500) then allowed by a
ReferenceGrant, a listener's namespace selector over Namespace documents, HTTPS termination with certificate files, weighted backends, and the
redirect, rewrite, mirror and header filters.

The gateway node is started as ``xdsd bootstrap --role gateway --gateway edge`` (the
label ``gateway.networking.k8s.io/gateway-name: edge``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.certs import CertAuthority
from tests.e2e.traffic_mesh import GatewayNode, TrafficMesh
from tests.e2e.upstreams import Upstream
from tests.harness import free_port

LISTENERS = ("http", "https", "scoped", "shared")
SERVICES = ("web", "api", "v1", "v2", "shadow")


def gateway_api(ports: dict[str, int], port: int) -> str:
    def backend(name: str, extra: str = "") -> str:
        return f"{{name: {name}, port: {port}{extra}}}"

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
  - {{name: http, port: {ports["http"]}, protocol: HTTP}}
  - name: https
    port: {ports["https"]}
    protocol: HTTPS
    hostname: "*.example.com"
    tls:
      mode: Terminate
      certificateRefs: [{{group: xdsd.dev, kind: File, name: certs/edge.pem}}]
      options: {{xdsd.dev/private-key: certs/edge-key.pem}}
  - {{name: scoped, port: {ports["scoped"]}, protocol: HTTP, hostname: a.example.com}}
  - name: shared
    port: {ports["shared"]}
    protocol: HTTP
    allowedRoutes:
      namespaces:
        from: Selector
        selector:
          matchLabels: {{shared-gateway: "true"}}
          matchExpressions: [{{key: env, operator: NotIn, values: [dev]}}]
---
apiVersion: v1
kind: Namespace
metadata: {{name: apps, labels: {{shared-gateway: "true", env: prod}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: selected, namespace: apps}}
spec:
  parentRefs: [{{name: edge, namespace: default, sectionName: shared}}]
  hostnames: [selected.example.com]
  rules:
  - backendRefs: [{{name: other, port: {port}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: unselected, namespace: lab}}
spec:
  parentRefs: [{{name: edge, namespace: default, sectionName: shared}}]
  hostnames: [unselected.example.com]
  rules:
  - backendRefs: [{{name: stray, port: {port}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: broad, namespace: default}}
spec:
  parentRefs: [{{name: edge, sectionName: http}}]
  hostnames: [prec.example.com]
  rules:
  - backendRefs: [{backend("web")}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: narrow, namespace: default}}
spec:
  parentRefs: [{{name: edge, sectionName: http}}]
  hostnames: [prec.example.com]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /api}}}}]
    backendRefs: [{backend("api")}]
  - matches: [{{path: {{type: Exact, value: /api/exact}}}}]
    backendRefs: [{backend("v1")}]
  - matches:
    - path: {{type: PathPrefix, value: /api}}
      headers: [{{name: X-Version, value: "2"}}]
    backendRefs: [{backend("v2")}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: hosts, namespace: default}}
spec:
  parentRefs: [{{name: edge, sectionName: scoped}}]
  hostnames: [a.example.com, b.example.com]
  rules:
  - backendRefs: [{backend("web")}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: cross, namespace: default}}
spec:
  parentRefs: [{{name: edge, sectionName: http}}]
  hostnames: [cross.example.com]
  rules:
  - backendRefs: [{{name: other, namespace: apps, port: {port}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: secure, namespace: default}}
spec:
  parentRefs: [{{name: edge, sectionName: https}}]
  hostnames: [secure.example.com]
  rules:
  - backendRefs: [{backend("web")}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: split, namespace: default}}
spec:
  parentRefs: [{{name: edge, sectionName: http}}]
  hostnames: [split.example.com]
  rules:
  - backendRefs: [{backend("v1", ", weight: 70")}, {backend("v2", ", weight: 30")}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: filters, namespace: default}}
spec:
  parentRefs: [{{name: edge, sectionName: http}}]
  hostnames: [filters.example.com]
  rules:
  - name: moved
    matches: [{{path: {{type: PathPrefix, value: /old}}}}]
    filters:
    - type: RequestRedirect
      requestRedirect:
        scheme: https
        hostname: new.example.com
        statusCode: 301
        path: {{type: ReplacePrefixMatch, replacePrefixMatch: /new}}
  - name: rewritten
    matches: [{{path: {{type: PathPrefix, value: /rewrite}}}}]
    filters:
    - type: URLRewrite
      urlRewrite:
        hostname: rewritten.example.com
        path: {{type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
    backendRefs: [{backend("web")}]
  - name: mirrored
    matches: [{{path: {{type: PathPrefix, value: /mirror}}}}]
    filters:
    - type: RequestMirror
      requestMirror: {{backendRef: {backend("shadow")}}}
    backendRefs: [{backend("web")}]
  - name: headers
    matches: [{{path: {{type: PathPrefix, value: /headers}}}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{{name: x-added, value: "yes"}}]
        remove: [x-drop]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        add: [{{name: x-resp, value: "1"}}]
    backendRefs: [{backend("web")}]
"""


GRANT = """\
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: routes-to-apps, namespace: apps}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: default}]
  to: [{group: "", kind: Service}]
"""


class World:
    def __init__(self, tmp: Path) -> None:
        self.mesh = m = TrafficMesh(tmp)
        ip = m.gateway_ip("edge")
        self.ports = {name: free_port(ip) for name in LISTENERS}
        self.ca = CertAuthority(m.config / "certs")
        self.ca.issue("edge", ["secure.example.com"])
        self.up: dict[str, Upstream] = {}
        for name in SERVICES:
            self.up[name] = m.upstream(name)
            m.service(name, [self.up[name]])
        self.up["other"] = m.upstream("other")
        m.service("other", [self.up["other"]], namespace="apps")
        self.up["stray"] = m.upstream("stray")
        m.service("stray", [self.up["stray"]], namespace="lab")
        m.rule("gateway-api", gateway_api(self.ports, m.port))
        self.gateway: GatewayNode = m.start_gateway(
            "edge", {}, bootstrap_args=("--gateway", "edge")
        )
        gw = self.gateway
        gw.wait_for(
            lambda: gw.request(self.ports["http"], "prec.example.com").backend == "web",
            "the Gateway API routes",
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("gateway-api-http"))
    try:
        yield w
    finally:
        w.mesh.stop()


def test_precedence_between_overlapping_routes(world: World) -> None:
    """Two routes for one hostname: the exact path wins over prefixes, a header match
    over the same prefix without, the longest prefix over ``/``; a prefix matches whole
    path elements."""
    gw, port = world.gateway, world.ports["http"]

    def backend(path: str, **headers: str) -> str:
        return gw.request(port, "prec.example.com", path, headers=headers).backend

    assert backend("/") == "web"
    assert backend("/api") == "api"
    assert backend("/api/items") == "api"
    assert backend("/api/exact") == "v1"
    assert backend("/api/items", **{"x-version": "2"}) == "v2"
    assert backend("/api/exact", **{"x-version": "2"}) == "v1"
    assert backend("/apix") == "web"


def test_hostname_intersection(world: World) -> None:
    """A route for a.example.com and b.example.com on a listener for a.example.com is
    served for a.example.com only."""
    gw, port = world.gateway, world.ports["scoped"]
    assert gw.request(port, "a.example.com", "/x").backend == "web"
    assert gw.request(port, "b.example.com", "/x").status == 404


def test_cross_namespace_backend_refused_then_granted(world: World) -> None:
    """A backend in another namespace without a ReferenceGrant answers 500 (the
    route's ResolvedRefs is RefNotPermitted); the grant written, it is served."""
    gw, port = world.gateway, world.ports["http"]
    refused = gw.request(port, "cross.example.com", "/")
    assert (refused.status, refused.backend) == (500, "")
    assert world.up["other"].hits == 0
    grant = world.mesh.rule("grant", GRANT)
    try:
        gw.wait_for(
            lambda: gw.request(port, "cross.example.com", "/").backend == "other",
            "the granted backend",
        )
    finally:
        grant.unlink()
    gw.wait_for(
        lambda: gw.request(port, "cross.example.com", "/").status == 500, "the grant removed"
    )


def test_namespace_selector_of_a_listener(world: World) -> None:
    """A listener taking the routes of namespaces labelled ``shared-gateway: "true"``
    (a Namespace document): the route of ``apps`` is served; the route of ``lab``, a
    namespace no document labels, is ``NotAllowedByListeners`` and gets no traffic."""
    gw, port = world.gateway, world.ports["shared"]
    assert gw.request(port, "selected.example.com", "/").backend == "other"
    refused = gw.request(port, "unselected.example.com", "/")
    assert (refused.status, refused.backend) == (404, "")
    assert world.up["stray"].hits == 0
    conditions = {
        (c["object"], c["scope"], c["type"]): (c["status"], c["reason"])
        for c in world.mesh.errors()
        if c["severity"] == "condition"
    }
    assert conditions[("HTTPRoute apps/selected", "parentRefs[0]", "Accepted")] == (
        "True",
        "Accepted",
    )
    assert conditions[("HTTPRoute lab/unselected", "parentRefs[0]", "Accepted")] == (
        "False",
        "NotAllowedByListeners",
    )


def test_https_termination_with_certificate_files(world: World) -> None:
    """An HTTPS listener terminating TLS with a certificate named by file path: the
    client verifies it against the CA, and the route behind it answers."""
    gw, port = world.gateway, world.ports["https"]
    reply = gw.request(port, "secure.example.com", "/s", tls=True, cafile=world.ca.ca_path)
    assert (reply.status, reply.backend) == (200, "web")
    session = gw.handshake(port, "secure.example.com", world.ca.ca_path)
    assert session.version.startswith("TLS")


def test_weighted_backends(world: World) -> None:
    """Weights 70/30: the share of each backend is within 10 points of its weight."""
    gw, port = world.gateway, world.ports["http"]
    counts = Counter(gw.request(port, "split.example.com", "/").backend for _ in range(300))
    assert set(counts) == {"v1", "v2"}
    assert abs(counts["v1"] / 300 * 100 - 70) <= 10, counts


def test_filters(world: World) -> None:
    """RequestRedirect (scheme, hostname, status, prefix), URLRewrite (hostname,
    prefix), RequestMirror, Request/ResponseHeaderModifier."""
    gw, port = world.gateway, world.ports["http"]
    host = "filters.example.com"
    moved = gw.request(port, host, "/old/page?q=1")
    assert moved.status == 301
    assert moved.headers["location"] == "https://new.example.com/new/page?q=1"

    seen = gw.request(port, host, "/rewrite/x?y=1").json()
    assert seen["path"] == "/v2/x?y=1"
    assert seen["headers"]["host"] == "rewritten.example.com"

    shadow = world.up["shadow"]
    before = shadow.hits
    assert gw.request(port, host, "/mirror/a").backend == "web"
    gw.wait_for(lambda: shadow.hits > before, "the mirrored request")
    assert shadow.seen[-1].path == "/mirror/a"

    reply = gw.request(port, host, "/headers", headers={"x-drop": "1", "x-added": "no"})
    assert reply.headers.get("x-resp") == "1"
    headers = reply.json()["headers"]
    assert headers["x-added"] == "yes" and "x-drop" not in headers
