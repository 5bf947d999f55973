"""Gateway API listeners that conflict on a port, through a real Envoy gateway: the
conflicting listeners are reported and left out, and the rest of the Gateway is served
(before, the whole gateway node got no configuration)."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.traffic_mesh import TrafficMesh
from tests.harness import free_port


def test_conflicting_listeners_leave_the_rest_served(tmp_path: Path) -> None:
    m = TrafficMesh(tmp_path)
    try:
        ip = m.gateway_ip("edge")
        shared, fine = free_port(ip), free_port(ip)
        m.service("web", [m.upstream("web")])
        m.rule(
            "gw",
            f"""\
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
  - {{name: fine, port: {fine}, protocol: HTTP}}
  - {{name: web, port: {shared}, protocol: HTTP}}
  - {{name: raw, port: {shared}, protocol: TCP}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: default}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
  - backendRefs: [{{name: web, port: {m.port}}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {{name: t, namespace: default}}
spec:
  parentRefs: [{{name: edge, sectionName: raw}}]
  rules:
  - backendRefs: [{{name: web, port: {m.port}}}]
""",
        )
        gw = m.start_gateway("edge", {}, bootstrap_args=("--gateway", "edge"))
        gw.wait_for(
            lambda: gw.request(fine, "x.example.com", "/", timeout=3).backend == "web",
            "the listener on its own port",
        )
        conflicted = {
            c["scope"]: c
            for c in m.errors()
            if c["severity"] == "condition"
            and c["object"].startswith("Gateway ")
            and c["type"] == "Conflicted"
            and c["status"] in (True, "True")
        }
        assert set(conflicted) == {"listeners[web]", "listeners[raw]"}
        assert all(c["reason"] == "ProtocolConflict" for c in conflicted.values())
        warnings = [str(p) for p in m.errors() if p["severity"] == "warning"]
        assert any("'raw' is not served" in w for w in warnings)
    finally:
        m.stop()
