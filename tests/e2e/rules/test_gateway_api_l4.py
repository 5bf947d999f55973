"""Gateway API listeners and routes beyond HTTP, proven by real traffic through a real
gateway Envoy configured by xdsd from Gateway API files: TLS passthrough by SNI
(TLSRoute), weighted TCP (TCPRoute), gRPC routed by method and header (GRPCRoute)
with a real grpcio client, and UDP datagrams forwarded to a UDP echo (UDPRoute).

The gateway node is the Gateway's proxy by the label
``gateway.networking.k8s.io/gateway-name: edge``."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.e2e.certs import CertAuthority
from tests.e2e.traffic_mesh import GatewayNode, TrafficMesh
from tests.harness import free_port

LABEL = "gateway.networking.k8s.io/gateway-name"
LISTENERS = ("tls", "tcp", "grpc", "vault", "wrong")


def gateway_api(ports: dict[str, int]) -> str:
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
  - name: tls
    port: {ports["tls"]}
    protocol: TLS
    tls: {{mode: Passthrough}}
  - name: tcp
    port: {ports["tcp"]}
    protocol: TCP
  - name: grpc
    port: {ports["grpc"]}
    protocol: HTTP
  - name: vault
    port: {ports["vault"]}
    protocol: TCP
  - name: wrong
    port: {ports["wrong"]}
    protocol: TCP
  - name: udp
    port: {ports["udp"]}
    protocol: UDP
  - name: udpw
    port: {ports["udpw"]}
    protocol: UDP
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: UDPRoute
metadata: {{name: split, namespace: default}}
spec:
  parentRefs: [{{name: edge, sectionName: udpw}}]
  rules:
  - backendRefs:
    - {{name: dgram, port: {ports["dgram"]}, weight: 80}}
    - {{name: dgram2, port: {ports["dgram2"]}, weight: 20}}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: UDPRoute
metadata: {{name: dgram, namespace: default}}
spec:
  parentRefs: [{{name: edge, sectionName: udp}}]
  rules:
  - backendRefs: [{{name: dgram, port: {ports["dgram"]}}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {{name: alpha, namespace: default}}
spec:
  parentRefs: [{{name: edge, sectionName: tls}}]
  hostnames: [alpha.example.com]
  rules:
  - backendRefs: [{{name: alpha, port: {ports["alpha"]}}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {{name: beta, namespace: default}}
spec:
  parentRefs: [{{name: edge, sectionName: tls}}]
  hostnames: [beta.example.com]
  rules:
  - backendRefs: [{{name: beta, port: {ports["beta"]}}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {{name: zeta, namespace: default}}
spec:
  parentRefs: [{{name: edge, sectionName: tls}}]
  hostnames: [alpha.example.com]
  rules:
  - backendRefs: [{{name: beta, port: {ports["beta"]}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: default}}
spec:
  parentRefs: [{{name: edge, sectionName: grpc}}]
  hostnames: [grpc.example.com]
  rules:
  - matches: [{{path: {{type: Exact, value: /test.Echo/Who}}}}]
    backendRefs: [{{name: grpc2, port: {ports["grpc2"]}}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {{name: pipe, namespace: default}}
spec:
  parentRefs: [{{name: edge, sectionName: tcp}}]
  rules:
  - backendRefs:
    - {{name: pipe1, port: {ports["pipe1"]}, weight: 80}}
    - {{name: pipe2, port: {ports["pipe2"]}, weight: 20}}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {{name: vault, namespace: default}}
spec:
  parentRefs: [{{name: edge, sectionName: vault}}]
  rules:
  - backendRefs: [{{name: vault, port: {ports["vault-backend"]}}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {{name: wrong, namespace: default}}
spec:
  parentRefs: [{{name: edge, sectionName: wrong}}]
  rules:
  - backendRefs: [{{name: impostor, port: {ports["impostor"]}}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha3
kind: BackendTLSPolicy
metadata: {{name: vault, namespace: default}}
spec:
  targetRefs: [{{group: "", kind: Service, name: vault}}]
  validation:
    caCertificateRefs: [{{group: xdsd.dev, kind: File, name: certs/ca.pem}}]
    hostname: vault.example.com
---
apiVersion: gateway.networking.k8s.io/v1alpha3
kind: BackendTLSPolicy
metadata: {{name: impostor, namespace: default}}
spec:
  targetRefs: [{{group: "", kind: Service, name: impostor}}]
  validation:
    caCertificateRefs: [{{group: xdsd.dev, kind: File, name: certs/ca.pem}}]
    hostname: vault.example.com
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: echo, namespace: default}}
spec:
  parentRefs: [{{name: edge, sectionName: grpc}}]
  hostnames: [grpc.example.com]
  rules:
  - matches:
    - method: {{service: test.Echo, method: Who}}
      headers: [{{name: x-track, value: canary}}]
    backendRefs: [{{name: grpc2, port: {ports["grpc2"]}}}]
  - matches:
    - method: {{service: test.Echo, method: Who}}
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {{set: [{{name: x-via, value: gateway}}]}}
    backendRefs: [{{name: grpc1, port: {ports["grpc1"]}}}]
  - matches:
    - method: {{type: RegularExpression, service: "test\\\\..*", method: "Oth.*"}}
    backendRefs: [{{name: grpc2, port: {ports["grpc2"]}}}]
"""


def grpc_backend(name: str, host: str, port: int) -> Any:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    answer = grpc.unary_unary_rpc_method_handler(lambda req, ctx: name.encode())
    handler = grpc.method_handlers_generic_handler("test.Echo", {"Who": answer, "Other": answer})
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server


class UdpEcho:
    """A UDP server on ``host:port`` answering each datagram with ``NAME:`` and the
    datagram, and counting them; ``stop`` ends its thread."""

    def __init__(self, name: str, host: str, port: int) -> None:
        self.name, self.host, self.hits = name, host, 0
        self.labels: dict[str, str] = {}
        self.locality = ""
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self.hits += 1
            self.sock.sendto(self.name.encode() + b":" + data, peer)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def free_udp_port(host: str) -> int:
    """A UDP port free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def udp_exchange(host: str, port: int, data: bytes, timeout: float = 1.0) -> bytes:
    """Send one datagram to ``host:port`` from a new socket (a new session for the
    gateway) and return the answer (OSError when none comes in ``timeout``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(data, (host, port))
        answer, _ = s.recvfrom(65535)
        return answer


@dataclass
class GrpcEndpoint:
    """Where a gRPC backend listens, as ``TrafficMesh.service`` writes an endpoint."""

    host: str
    labels: dict[str, str] = field(default_factory=dict)
    locality: str = ""


class World:
    def __init__(self, tmp: Path) -> None:
        self.mesh = m = TrafficMesh(tmp)
        ip = m.gateway_ip("edge")
        ports = {name: free_port(ip) for name in LISTENERS}
        self.ca = CertAuthority(m.config / "certs")
        self.servers: list[Any] = []
        for name in ("alpha", "beta"):
            ports[name] = free_port()
            context = self.ca.server_context(self.ca.issue(name, [f"{name}.example.com"]))
            echo = m.tcp_upstream(name, ports[name], tls=context)
            m.service(name, [echo], port=ports[name], protocol="TLS")
        # vault speaks TLS as vault.example.com; impostor as another name of the same CA
        for name, backend, cert_name in (
            ("vault", "vault-backend", "vault.example.com"),
            ("impostor", "impostor", "impostor.example.com"),
        ):
            ports[backend] = free_port()
            context = self.ca.server_context(self.ca.issue(name, [cert_name]))
            echo = m.tcp_upstream(name, ports[backend], tls=context)
            m.service(name, [echo], port=ports[backend], protocol="TCP")
        for name in ("pipe1", "pipe2"):
            ports[name] = free_port()
            m.service(name, [m.tcp_upstream(name, ports[name])], port=ports[name], protocol="TCP")
        for name in ("grpc1", "grpc2"):
            host, ports[name] = m.ip(), free_port()
            self.servers.append(grpc_backend(name, host, ports[name]))
            m.service(name, [GrpcEndpoint(host)], port=ports[name], protocol="GRPC")  # type: ignore[list-item]
        ports["udp"], ports["udpw"] = free_udp_port(ip), free_udp_port(ip)
        self.echoes: dict[str, UdpEcho] = {}
        for name in ("dgram", "dgram2"):
            host = m.ip()
            ports[name] = free_udp_port(host)
            self.echoes[name] = UdpEcho(name, host, ports[name])
            m.service(name, [self.echoes[name]], port=ports[name], protocol="UDP")  # type: ignore[list-item]
        self.udp = self.echoes["dgram"]
        self.ports = ports
        m.rule("gateway-api", gateway_api(ports))
        self.gateway: GatewayNode = m.start_gateway("edge", {LABEL: "edge"})
        gw = self.gateway
        gw.wait_for(lambda: gw.tcp(ports["tcp"], b"ping").startswith(b"pipe"), "the TCP route")

    def stop(self) -> None:
        for server in self.servers:
            server.stop(0)
        for echo in self.echoes.values():
            echo.stop()
        self.mesh.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("gateway-api-l4"))
    try:
        yield w
    finally:
        w.stop()


def common_name(cert: dict[str, Any]) -> str:
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


def test_tls_passthrough_by_sni_to_two_backends(world: World) -> None:
    """A TLS listener in Passthrough mode and two TLSRoutes by hostname: the client's
    handshake reaches the backend its SNI names (its own certificate, TLS end to end),
    and a name no route has gets no connection."""
    gw, port, ca = world.gateway, world.ports["tls"], world.ca.ca_path
    for name in ("alpha", "beta"):
        answer, cert = gw.tls(port, b"hello", f"{name}.example.com", ca)
        assert answer == f"{name}:hello".encode()
        assert common_name(cert) == name
    with pytest.raises(OSError):
        gw.tls(port, b"hello", "gamma.example.com", None)


def test_tcp_route_weighted_backends(world: World) -> None:
    """A TCP listener and a TCPRoute with weights 80/20: of 200 connections, each
    backend's share is within 10 points of its weight."""
    gw, port = world.gateway, world.ports["tcp"]
    seen = Counter(gw.tcp(port, b"x").split(b":")[0].decode() for _ in range(200))
    assert set(seen) == {"pipe1", "pipe2"}
    assert abs(seen["pipe1"] / 200 - 0.8) <= 0.10, seen


def test_grpc_route_by_method_and_header(world: World) -> None:
    """A GRPCRoute on an HTTP listener, called by a real grpcio client: the method picks
    grpc1, the same method with header ``x-track: canary`` picks grpc2, a regex method
    match picks grpc2; the response header filter applies; an unrouted method is
    UNIMPLEMENTED (404 from the gateway)."""
    gw = world.gateway
    target = f"{gw.ip}:{world.ports['grpc']}"
    options = (("grpc.default_authority", "grpc.example.com"),)
    with grpc.insecure_channel(target, options=options) as channel:
        who = channel.unary_unary("/test.Echo/Who")
        other = channel.unary_unary("/test.Echo/Other")

        def ready() -> bool:
            return bool(who(b"", timeout=2) == b"grpc1")

        gw.wait_for(ready, "the gRPC route")
        answer, call = who.with_call(b"", timeout=5)
        assert answer == b"grpc1"
        assert ("x-via", "gateway") in tuple(call.initial_metadata())
        assert who(b"", timeout=5, metadata=(("x-track", "canary"),)) == b"grpc2"
        assert other(b"", timeout=5) == b"grpc2"
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary("/test.Nothing/Who")(b"", timeout=5)
        assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED


def test_backend_tls_policy_originates_tls_checked_against_the_hostname(world: World) -> None:
    """A BackendTLSPolicy (CA file, hostname) on a TCPRoute's backend: the client speaks
    plain TCP to the gateway, the gateway speaks TLS to the backend (which answers only
    inside TLS) with SNI and the certificate checked against ``hostname``; a backend
    whose certificate names another host gets no bytes through."""
    gw = world.gateway
    gw.wait_for(lambda: gw.tcp(world.ports["vault"], b"ping") == b"vault:ping", "TLS origination")
    assert gw.tcp(world.ports["vault"], b"again") == b"vault:again"
    assert (gw.ip, world.ports["wrong"]) in gw.envoy.listener_addresses()
    with contextlib.suppress(OSError):
        assert gw.tcp(world.ports["wrong"], b"ping") == b""
    cluster = f"cluster.outbound|{world.ports['impostor']}||impostor.default.svc.cluster.local"
    gw.wait_for(
        lambda: gw.envoy.stats().get(f"{cluster}.ssl.fail_verify_san", 0) > 0,
        "the impostor's certificate refused for its name",
    )


def test_a_second_tls_route_for_one_sni_routes_nothing(world: World) -> None:
    """TLSRoutes ``alpha`` and ``zeta`` both name alpha.example.com on one listener:
    the first by namespace/name (``alpha``) gets every connection, ``zeta`` stays
    attached (``Accepted`` True) and is warned about at its hostname, naming
    ``alpha``."""
    gw, port, ca = world.gateway, world.ports["tls"], world.ca.ca_path
    for _ in range(10):
        answer, cert = gw.tls(port, b"hi", "alpha.example.com", ca)
        assert (answer, common_name(cert)) == (b"alpha:hi", "alpha")
    errors = world.mesh.errors()
    (warning,) = [
        e for e in errors if e["severity"] == "warning" and "TLSRoute default/zeta" in e["message"]
    ]
    assert (
        warning["field"] == "spec.hostnames[0]" and "TLSRoute default/alpha" in warning["message"]
    )
    accepted = {
        (c["object"], c["status"])
        for c in errors
        if c["severity"] == "condition" and c["type"] == "Accepted"
    }
    assert ("TLSRoute default/zeta", "True") in accepted


def test_an_http_route_on_the_grpc_routes_hostname_is_refused(world: World) -> None:
    """HTTPRoute ``web`` names the GRPCRoute ``echo``'s hostname on the same listener:
    they are not merged; ``echo`` (first by namespace/name) is served, ``web`` is
    ``Accepted`` False ``Conflicted`` and its exact path to grpc2 is never taken."""
    gw = world.gateway
    target = f"{gw.ip}:{world.ports['grpc']}"
    options = (("grpc.default_authority", "grpc.example.com"),)
    with grpc.insecure_channel(target, options=options) as channel:
        who = channel.unary_unary("/test.Echo/Who")
        gw.wait_for(lambda: bool(who(b"", timeout=2) == b"grpc1"), "the gRPC route")
        assert {who(b"", timeout=5) for _ in range(10)} == {b"grpc1"}
    (refused,) = [
        c
        for c in world.mesh.errors()
        if c["severity"] == "condition" and c["object"] == "HTTPRoute default/web"
    ]
    assert (refused["type"], refused["status"], refused["reason"]) == (
        "Accepted",
        "False",
        "Conflicted",
    )
    assert "GRPCRoute default/echo" in refused["message"]


def test_udp_route_forwards_datagrams(world: World) -> None:
    """A UDP listener and a UDPRoute: datagrams sent to the gateway reach the UDP echo
    behind it and its answers come back to each sender (one session per client
    socket); the backend saw every one."""
    gw, port = world.gateway, world.ports["udp"]
    gw.wait_for(
        lambda: udp_exchange(gw.ip, port, b"ping") == b"dgram:ping", "the UDP route", timeout=60
    )
    before = world.udp.hits
    for i in range(20):
        assert udp_exchange(gw.ip, port, f"n{i}".encode(), timeout=5) == f"dgram:n{i}".encode()
    assert world.udp.hits - before == 20
    listeners = gw.envoy.listener_addresses()
    assert (gw.ip, port) in listeners


def test_weighted_udp_backends(world: World) -> None:
    """A UDPRoute with weights 80/20: of 200 sessions (a new client socket each), each
    backend's share is within 10 points of its weight."""
    gw, port = world.gateway, world.ports["udpw"]
    gw.wait_for(lambda: udp_exchange(gw.ip, port, b"x").startswith(b"dgram"), "the UDP split")
    seen = Counter(udp_exchange(gw.ip, port, b"x", timeout=5).split(b":")[0] for _ in range(200))
    assert set(seen) == {b"dgram", b"dgram2"}, seen
    assert abs(seen[b"dgram"] / 200 - 0.8) <= 0.10, seen


def test_an_authorization_policy_on_the_udp_gateway_is_refused(world: World) -> None:
    """Envoy's UDP proxy has no RBAC: a DENY-all AuthorizationPolicy selecting the gateway
    node cannot be enforced on its datagrams, so the node's new configuration is refused
    with an error naming the policy's file and line, and nothing of it is half applied
    (no RBAC filter reaches the gateway's TCP listeners)."""
    gw, mesh = world.gateway, world.mesh
    assert mesh.xdsd is not None
    gw.wait_for(lambda: udp_exchange(gw.ip, world.ports["udp"], b"ping") == b"dgram:ping", "UDP")
    path = mesh.rule(
        "deny-gateway",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: deny-gateway, namespace: default}\n"
        f"spec:\n  selector: {{matchLabels: {{{LABEL}: edge}}}}\n  action: DENY\n  rules: [{{}}]\n",
    )
    try:
        wanted = f"{path}:1: AuthorizationPolicy default/deny-gateway selects a gateway node"
        gw.wait_for(lambda: wanted in mesh.xdsd.log(), "the refusal in xdsd's log")  # type: ignore[union-attr]
        assert f"UDP listener {gw.ip}:{world.ports['udp']}" in mesh.xdsd.log()
        dump = json.dumps(gw.envoy.admin_json("/config_dump?resource=dynamic_listeners"))
        assert "envoy.filters.network.rbac" not in dump and "envoy.filters.http.rbac" not in dump
    finally:
        path.unlink()
