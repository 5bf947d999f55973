"""A gateway's own listeners enforce the AuthorizationPolicies that select the gateway
node (by namespace and labels), as a sidecar's inbound side does: RBAC before the router
on HTTP servers, before the TCP proxy on TCP servers; a gateway the policy does not
select stays open. Envoy accepts what is built."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from tests.harness import envoy_accepts
from xdsd.errors import TranslationError
from xdsd.resources import LISTENER
from xdsd.sources import load_directory
from xdsd.translate import MeshTranslation, NodeClass, Role, render_static

FILES = """\
kind: Service
name: web
ports: [{number: 8080, protocol: HTTP}]
endpoints: [{address: 10.0.0.1}]
---
kind: Service
name: db
ports: [{number: 5432, protocol: TCP}]
endpoints: [{address: 10.0.0.3}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: infra}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 5432, name: db, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: infra}
spec:
  hosts: ["*"]
  gateways: [edge]
  http:
  - route: [{destination: {host: web.default.svc.cluster.local}}]
  tcp:
  - match: [{port: 5432}]
    route: [{destination: {host: db.default.svc.cluster.local}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: infra}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules:
  - to:
    - operation: {paths: [/admin]}
  - from:
    - source: {ipBlocks: [10.9.0.0/16]}
"""


def _gateway(labels: tuple[tuple[str, str], ...], namespace: str = "infra") -> NodeClass:
    return NodeClass("gw", namespace, Role.GATEWAY, labels=labels)


def _filters(listener: Any) -> list[list[str]]:
    """Each chain's filter names, and an HTTP connection manager's HTTP filters."""
    out: list[list[str]] = []
    for chain in listener.filter_chains:
        names: list[str] = []
        for f in chain.filters:
            names.append(f.name)
            if f.typed_config.type_url.endswith("HttpConnectionManager"):
                hcm = hcm_pb2.HttpConnectionManager()
                f.typed_config.Unpack(hcm)
                names.extend(h.name for h in hcm.http_filters)
        out.append(names)
    return out


def test_gateway_listeners_enforce_the_policies_selecting_the_node(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(FILES)
    mesh = load_directory(str(tmp_path)).mesh
    translation = MeshTranslation(mesh)
    selected = translation.snapshot_for(_gateway((("istio", "ingressgateway"),)))
    listeners: dict[str, listener_pb2.Listener] = {
        name: r.message for name, r in selected.get(LISTENER).items()
    }
    http = _filters(listeners["0.0.0.0_80"])
    tcp = _filters(listeners["0.0.0.0_5432"])
    assert http[0][0] == "envoy.filters.network.http_connection_manager"
    assert "envoy.filters.http.rbac" in http[0], http
    assert http[0][-1] == "envoy.filters.http.router"
    assert tcp[0][0] == "envoy.filters.network.rbac", tcp
    assert tcp[0][-1] == "envoy.filters.network.tcp_proxy"
    # A gateway of another namespace (the Gateway selects it, the policy does not) gets
    # no RBAC.
    other = translation.snapshot_for(_gateway((("istio", "ingressgateway"),), "public"))
    names = [n for r in other.get(LISTENER).values() for c in _filters(r.message) for n in c]
    assert names and not any("rbac" in n for n in names)
    # Envoy takes the selected gateway's configuration.
    node = _gateway((("istio", "ingressgateway"),))
    envoy_accepts(render_static(mesh, node, admin_port=19000), tmp_path / "gw.json")


UDP_GATEWAY = """\
kind: Service
name: dgram
ports: [{number: 5353, protocol: UDP}]
endpoints: [{address: 10.0.0.5}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: xdsd}
spec: {controllerName: xdsd.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  gatewayClassName: xdsd
  listeners:
  - {name: udp, port: 5353, protocol: UDP}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: UDPRoute
metadata: {name: dgram, namespace: default}
spec:
  parentRefs: [{name: edge, sectionName: udp}]
  rules:
  - backendRefs: [{name: dgram, port: 5353}]
"""
EDGE = NodeClass(
    "edge", "default", Role.GATEWAY, labels=(("gateway.networking.k8s.io/gateway-name", "edge"),)
)


def _authz(name: str, spec: str) -> str:
    return (
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: {name}, namespace: default}}\nspec:\n"
        "  selector: {matchLabels: {gateway.networking.k8s.io/gateway-name: edge}}\n" + spec
    )


@pytest.mark.parametrize(
    "spec",
    ["  action: DENY\n  rules: [{}]\n", "  rules:\n  - from: [{source: {namespaces: [a]}}]\n"],
)
def test_a_policy_on_a_gateway_with_a_udp_listener_is_refused(tmp_path: Path, spec: str) -> None:
    # Envoy's UDP proxy has no RBAC: the policy could not be enforced on the datagrams.
    (tmp_path / "mesh.yaml").write_text(UDP_GATEWAY)
    mesh = load_directory(str(tmp_path)).mesh
    listeners = MeshTranslation(mesh).snapshot_for(EDGE).get(LISTENER)
    assert "0.0.0.0_5353_udp" in listeners  # without a policy: served
    (tmp_path / "mesh.yaml").write_text(UDP_GATEWAY + _authz("deny-all", spec))
    mesh = load_directory(str(tmp_path)).mesh
    with pytest.raises(TranslationError) as caught:
        MeshTranslation(mesh).snapshot_for(EDGE)
    (problem,) = caught.value.problems
    line = UDP_GATEWAY.count("\n") + 2  # the policy's apiVersion line
    assert (problem.path, problem.line) == (str(tmp_path / "mesh.yaml"), line)
    assert "AuthorizationPolicy default/deny-all" in problem.message
    assert "UDP listener 0.0.0.0:5353" in problem.message
    # a dry-run policy enforces nothing: the gateway is served
    dry = _authz("dry", "  rules: [{}]\n").replace(
        "namespace: default}", "namespace: default, annotations: {istio.io/dry-run: 'true'}}"
    )
    (tmp_path / "mesh.yaml").write_text(UDP_GATEWAY + dry)
    mesh = load_directory(str(tmp_path)).mesh
    assert "0.0.0.0_5353_udp" in MeshTranslation(mesh).snapshot_for(EDGE).get(LISTENER)
