"""Conditions and warnings about a Gateway API object point at the line of the field
they are about (a listener, a parentRef, a backendRef), recorded by the parsers in
``KubeGateway.lines`` and ``Route.lines`` — not at the document's first line."""

from __future__ import annotations

from pathlib import Path

from xdsd.model.service import line_of
from xdsd.sources import load_directory
from xdsd.sources.gateway_api.status import place

FILE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: xdsd}
spec: {controllerName: xdsd.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web}
spec:
  gatewayClassName: xdsd
  listeners:
  - name: http
    protocol: HTTP
    port: 80
  - name: dns
    protocol: TLS
    port: 53
    tls: {mode: Terminate, certificateRefs: [{name: c}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop}
spec:
  parentRefs:
  - name: web
  - name: nowhere
  hostnames:
  - a.example.com
  - b.example.com
  rules:
  - backendRefs:
    - name: shop
      port: 80
    - name: gone
      port: 80
---
kind: Service
name: shop
ports: [{number: 80, protocol: HTTP}]
endpoints: [{address: 10.0.0.1}]
"""


def _line(text: str) -> int:
    """The line (from 1) of the first line of FILE holding ``text``."""
    return next(i for i, line in enumerate(FILE.splitlines(), 1) if text in line)


def test_conditions_and_warnings_are_at_their_fields_lines(tmp_path: Path) -> None:
    (tmp_path / "api.yaml").write_text(FILE)
    result = load_directory(str(tmp_path))
    api = result.mesh.gateway_api
    (route,) = api.routes
    assert line_of(route.lines, "hostnames[1]") == _line("b.example.com")
    placed = {
        (p.condition.scope, p.condition.type, p.condition.status): p.line
        for p in place(result.mesh.gateway_conditions, api)
    }
    # a parentRef naming no Gateway: at that parentRef
    assert placed["parentRefs[1]", "Accepted", False] == _line("name: nowhere")
    assert placed["parentRefs[0]", "Accepted", True] == _line("- name: web")
    # a backendRef naming no Service: at that parent's ResolvedRefs... and the route
    # records the backendRef's own line for it
    assert line_of(route.lines, "rules[0].backendRefs[1]") == _line("name: gone")
    assert placed["parentRefs[0]", "ResolvedRefs", False] == _line("- name: web")
    # a listener xdsd does not serve: its Programmed condition and the warning
    assert placed["listeners[dns]", "Programmed", False] == _line("name: dns")
    (warning,) = [w for w in result.warnings if "dns" in w.message]
    assert warning.line == _line("name: dns"), str(warning)
