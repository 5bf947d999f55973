"""Behaviour of Gateway servers, proven by real requests through a real gateway Envoy
configured by xdsd (one mesh for the module; each test its own server port or hosts).

The gateway node is started as ``xdsd bootstrap --role gateway --label
istio=ingressgateway`` would; certificates come from a throwaway CA whose files live in
the config directory (``certs/``), named by relative paths in the Gateway."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.certs import CertAuthority
from tests.e2e.traffic_mesh import GatewayNode, TrafficMesh
from tests.e2e.upstreams import Upstream
from tests.harness import free_port

SERVERS = ("http", "https", "mtls", "pass", "plain", "tcp")


def rules(ports: dict[str, int]) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {ports["http"]}, name: http, protocol: HTTP}}
    hosts: [web.example.com, "./api.example.com"]
    tls: {{httpsRedirect: true}}
  - port: {{number: {ports["https"]}, name: https, protocol: HTTPS}}
    hosts: [web.example.com, "*/api.example.com"]
    tls:
      mode: SIMPLE
      serverCertificate: certs/gateway.pem
      privateKey: certs/gateway-key.pem
      minProtocolVersion: TLSV1_2
      maxProtocolVersion: TLSV1_2
      cipherSuites: [ECDHE-ECDSA-AES256-GCM-SHA384]
  - port: {{number: {ports["mtls"]}, name: mtls, protocol: HTTPS}}
    hosts: ["*"]
    tls:
      mode: MUTUAL
      serverCertificate: certs/gateway.pem
      privateKey: certs/gateway-key.pem
      caCertificates: certs/ca.pem
      subjectAltNames: [spiffe://example.com/client]
  - port: {{number: {ports["pass"]}, name: pass, protocol: TLS}}
    hosts: [secure.example.com]
    tls: {{mode: PASSTHROUGH}}
  - port: {{number: {ports["plain"]}, name: plain, protocol: HTTP}}
    hosts: ["*"]
  - port: {{number: {ports["tcp"]}, name: tcp, protocol: TCP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: elsewhere}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: {ports["plain"]}, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web}}
spec:
  hosts: [web.example.com]
  gateways: [edge]
  http:
  - route: [{{destination: {{host: web}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api}}
spec:
  hosts: ["*.example.com"]
  gateways: [default/edge]
  http:
  - match: [{{uri: {{prefix: /v1}}}}]
    route: [{{destination: {{host: api}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: both}}
spec:
  hosts: [api]
  gateways: [mesh, edge]
  http:
  - match: [{{gateways: [mesh]}}]
    route: [{{destination: {{host: api}}}}]
  - match: [{{gateways: [edge], uri: {{prefix: /from-edge}}}}]
    route: [{{destination: {{host: web}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: secure}}
spec:
  hosts: [secure.example.com]
  gateways: [edge]
  tls:
  - match: [{{sniHosts: [secure.example.com]}}]
    route: [{{destination: {{host: secure}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: pipe}}
spec:
  hosts: ["*"]
  gateways: [edge]
  tcp:
  - route: [{{destination: {{host: pipe}}}}]
"""


class World:
    def __init__(self, tmp: Path) -> None:
        self.mesh = m = TrafficMesh(tmp)
        ip = m.gateway_ip("ingress")
        self.ports = {name: free_port(ip) for name in SERVERS}
        self.ca = CertAuthority(m.config / "certs")
        self.ca.issue("gateway", ["web.example.com", "api.example.com", "mtls.example.com"])
        self.client_cert = self.ca.issue("client", uris=["spiffe://example.com/client"])
        self.stranger_cert = self.ca.issue("stranger", uris=["spiffe://example.com/other"])
        self.web: Upstream = m.upstream("web")
        self.api: Upstream = m.upstream("api")
        m.service("web", [self.web])
        m.service("api", [self.api])
        secure_port, pipe_port = free_port(), free_port()
        secure = self.ca.server_context(self.ca.issue("secure", ["secure.example.com"]))
        m.service(
            "secure",
            [m.tcp_upstream("secure", secure_port, tls=secure)],
            port=secure_port,
            protocol="TLS",
        )
        m.service("pipe", [m.tcp_upstream("pipe", pipe_port)], port=pipe_port, protocol="TCP")
        m.rule("gateways", rules(self.ports))
        self.gateway: GatewayNode = m.start_gateway("ingress", {"istio": "ingressgateway"})
        gw = self.gateway
        gw.wait_for(
            lambda: gw.request(self.ports["plain"], "web.example.com").status == 200,
            "the gateway's listeners and routes",
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("gateways"))
    try:
        yield w
    finally:
        w.mesh.stop()


def common_name(cert: dict[str, object]) -> str:
    for rdn in cert.get("subject", ()):  # type: ignore[attr-defined]
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


def test_tls_termination_routes_by_host_to_two_services(world: World) -> None:
    """Gateway selector and servers[].hosts, port protocol HTTPS, tls.mode SIMPLE with
    serverCertificate/privateKey (relative to the config directory),
    minProtocolVersion/maxProtocolVersion and cipherSuites; VirtualService gateways
    (``name`` and ``ns/name``) and hosts (exact and ``*.example.com``): the gateway
    presents its certificate for each SNI name, and routes by Host to two services."""
    gw, port, ca = world.gateway, world.ports["https"], world.ca.ca_path
    web = gw.request(port, "web.example.com", "/page", tls=True, cafile=ca)
    assert (web.status, web.backend) == (200, "web")
    api = gw.request(port, "api.example.com", "/v1/items", tls=True, cafile=ca)
    assert (api.status, api.backend) == (200, "api")
    assert api.json()["path"] == "/v1/items"
    # a host the server admits but whose rule matches no route: 404 from Envoy
    assert gw.request(port, "api.example.com", "/v2", tls=True, cafile=ca).status == 404
    session = gw.handshake(port, "web.example.com", ca)
    assert common_name(session.peer) == "gateway"
    assert (session.version, session.cipher) == ("TLSv1.2", "ECDHE-ECDSA-AES256-GCM-SHA384")
    # a server name no server of the port has: no filter chain, the handshake fails
    with pytest.raises((ssl.SSLError, OSError)):
        gw.handshake(port, "unknown.example.org", None)


def test_https_redirect_answers_301_to_https(world: World) -> None:
    """servers[].tls.httpsRedirect on an HTTP server: every request for its hosts gets a
    301 whose Location is the https URL of the same host and path (Envoy's
    ``require_tls: ALL``); nothing reaches a backend."""
    gw, port = world.gateway, world.ports["http"]
    before = world.web.hits
    reply = gw.request(port, "web.example.com", "/a/b?c=1")
    assert reply.status == 301
    assert reply.headers["location"] == "https://web.example.com/a/b?c=1"
    other = gw.request(port, "api.example.com", "/v1")
    assert other.status == 301 and other.headers["location"].startswith("https://api.example.com")
    assert world.web.hits == before


def test_sni_passthrough_reaches_the_tls_backend(world: World) -> None:
    """tls.mode PASSTHROUGH on a TLS server, with a bound VirtualService's tls[].match
    sniHosts: the connection is proxied by SNI without terminating TLS, so the client
    sees the backend's own certificate and talks to it."""
    gw, port, ca = world.gateway, world.ports["pass"], world.ca.ca_path
    answer, cert = gw.tls(port, b"hello", "secure.example.com", ca)
    assert answer == b"secure:hello"
    assert common_name(cert) == "secure"


def test_mutual_tls_requires_a_client_certificate(world: World) -> None:
    """tls.mode MUTUAL with caCertificates and subjectAltNames: a client presenting a
    certificate from the CA with the listed SAN is served; one without a certificate,
    or with a certificate whose SAN is not listed, is refused."""
    gw, port, ca = world.gateway, world.ports["mtls"], world.ca.ca_path
    ok = gw.request(port, "web.example.com", "/", tls=True, cafile=ca, cert=world.client_cert)
    assert (ok.status, ok.backend) == (200, "web")
    with pytest.raises((ssl.SSLError, OSError)):
        gw.request(port, "web.example.com", "/", tls=True, cafile=ca)
    with pytest.raises((ssl.SSLError, OSError)):
        gw.request(port, "web.example.com", "/", tls=True, cafile=ca, cert=world.stranger_cert)


def test_match_gateways_and_hosts_on_a_plain_server(world: World) -> None:
    """HTTPMatchRequest.gateways on a gateway: of a rule bound to ``mesh`` and the
    gateway, only the blocks naming the gateway apply there; a VirtualService host
    written as a short name means its FQDN; a Gateway whose selector the node's labels
    do not match gives it nothing (its port answers for ``edge`` only)."""
    gw, port = world.gateway, world.ports["plain"]
    reply = gw.request(port, "api.default.svc.cluster.local", "/from-edge")
    assert (reply.status, reply.backend) == (200, "web")
    # the block for ``mesh`` does not apply on the gateway: no route
    assert gw.request(port, "api.default.svc.cluster.local", "/other").status == 404
    # a host no rule names: Envoy's 404
    assert gw.request(port, "nobody.example.org", "/").status == 404


def test_tcp_server_forwards_by_bound_tcp_rule(world: World) -> None:
    """A TCP server: the tcp route of a VirtualService bound to the gateway whose hosts
    meet the server's forwards the bytes to its destination."""
    gw, port = world.gateway, world.ports["tcp"]
    assert gw.tcp(port, b"ping") == b"pipe:ping"
