"""What the Gateway API conversion refuses, through a real Envoy gateway: listeners
that conflict on a port are reported and left out while the rest of the Gateway is
served (before, the whole gateway node got no configuration); a backendRef filter that
cannot be applied answers 500 and is reported (before, a GRPCRoute's mirror was dropped
silently); an Istio ``Hostname`` backend is a full host name, never a short name
reaching another namespace's Service."""

from __future__ import annotations

from concurrent import futures
from pathlib import Path

import grpc
import pytest

from tests.e2e.rules.test_gateway_api_l4 import GrpcEndpoint
from tests.e2e.traffic_mesh import TrafficMesh
from tests.harness import free_port

GATEWAY_CLASS = """\
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: xdsd}
spec: {controllerName: xdsd.dev/gateway-controller}
---
"""


def test_conflicting_listeners_leave_the_rest_served(tmp_path: Path) -> None:
    m = TrafficMesh(tmp_path)
    try:
        ip = m.gateway_ip("edge")
        shared, fine = free_port(ip), free_port(ip)
        m.service("web", [m.upstream("web")])
        m.rule(
            "gw",
            GATEWAY_CLASS
            + f"""\
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


def _grpc_backend(name: str, host: str, port: int, hits: dict[str, int]) -> grpc.Server:
    """A gRPC server answering ``/test.Echo/Who`` with its name, counting calls."""

    def answer(request: bytes, context: object) -> bytes:
        hits[name] = hits.get(name, 0) + 1
        return name.encode()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.unary_unary_rpc_method_handler(answer)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("test.Echo", {"Who": handler}),)
    )
    server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server


def test_a_grpc_backend_mirror_answers_500_and_is_reported(tmp_path: Path) -> None:
    m = TrafficMesh(tmp_path)
    hits: dict[str, int] = {}
    servers = []
    try:
        listen = free_port(m.gateway_ip("edge"))
        ports = {}
        for name in ("main", "shadow"):
            host, ports[name] = m.ip(), free_port()
            servers.append(_grpc_backend(name, host, ports[name], hits))
            endpoint = GrpcEndpoint(host)
            m.service(name, [endpoint], port=ports[name], protocol="GRPC")  # type: ignore[list-item]
        m.rule(
            "gw",
            GATEWAY_CLASS
            + f"""\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: default}}
spec:
  gatewayClassName: xdsd
  listeners: [{{name: grpc, port: {listen}, protocol: HTTP}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: g, namespace: default}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: [grpc.example.com]
  rules:
  - matches: [{{method: {{service: test.Echo, method: Who}}, headers: [{{name: x-mirror, value: "1"}}]}}]
    backendRefs:
    - name: main
      port: {ports["main"]}
      filters:
      - type: RequestMirror
        requestMirror: {{backendRef: {{name: shadow, port: {ports["shadow"]}}}}}
  - backendRefs: [{{name: main, port: {ports["main"]}}}]
""",
        )
        gw = m.start_gateway("edge", {}, bootstrap_args=("--gateway", "edge"))
        options = (("grpc.default_authority", "grpc.example.com"),)
        with grpc.insecure_channel(f"{gw.ip}:{listen}", options=options) as channel:
            who = channel.unary_unary("/test.Echo/Who")
            gw.wait_for(lambda: who(b"", timeout=2) == b"main", "the plain rule")
            served = hits["main"]
            for _ in range(3):
                with pytest.raises(grpc.RpcError) as failed:
                    who(b"", timeout=5, metadata=(("x-mirror", "1"),))
                assert failed.value.code() in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
        assert hits["main"] == served and "shadow" not in hits
        refused = [
            c
            for c in m.errors()
            if c["object"].startswith("GRPCRoute ")
            and c["type"] == "Accepted"
            and c["status"] in (False, "False")
        ]
        assert [(c["scope"], c["reason"]) for c in refused] == [
            ("rules[0].backendRefs[0].filters[0]", "UnsupportedValue")
        ]
    finally:
        for server in servers:
            server.stop(0)
        m.stop()


def test_a_hostname_backend_is_never_a_short_name(tmp_path: Path) -> None:
    m = TrafficMesh(tmp_path)
    try:
        port = free_port(m.gateway_ip("edge"))
        m.service("payments", [m.upstream("payments")], namespace="finance")
        m.rule(
            "gw",
            GATEWAY_CLASS
            + f"""\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: tenant}}
spec:
  gatewayClassName: xdsd
  listeners: [{{name: http, port: {port}, protocol: HTTP}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: tenant}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /short}}}}]
    backendRefs: [{{group: networking.istio.io, kind: Hostname, name: payments, port: {m.port}}}]
  - matches: [{{path: {{type: PathPrefix, value: /fqdn}}}}]
    backendRefs:
    - {{group: networking.istio.io, kind: Hostname, name: payments.finance.svc.cluster.local, port: {m.port}}}
""",
        )
        gw = m.start_gateway("edge", {}, bootstrap_args=("--gateway", "edge"))
        gw.wait_for(lambda: gw.request(port, "x", "/fqdn").backend == "payments", "the full host")
        short = gw.request(port, "x", "/short")
        assert (short.status, short.backend) == (500, "")  # not finance's Service
        reasons = [
            c["reason"]
            for c in m.errors()
            if c["object"].startswith("HTTPRoute ") and c["type"] == "ResolvedRefs"
        ]
        assert reasons == ["BackendNotFound"]
    finally:
        m.stop()
