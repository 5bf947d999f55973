"""Authorization binds the whole claim (issue 14 #6): with the docs' kind of grants, a
service's client certificate posing as the ingress gateway (``role: gateway`` and the
gateway's labels) is refused on every gRPC server and on REST, and receives neither the
gateway's listener nor its TLS server key; a gateway certificate claiming labels it is
not granted is refused the same way; the correctly granted gateway, a real Envoy over
mTLS, still receives its key by SDS and serves TLS with it. Each test with a daemon runs
once per gRPC server implementation (grpclib, grpcio)."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format

from tests.e2e.certs import CertAuthority, CertFiles
from tests.e2e.traffic_mesh import GatewayNode, TrafficMesh
from tests.harness import free_port
from tests.xds_clients import first_response_over_tls

LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
SDS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
SERVER_NAME = "xdsd.mesh.test"
INGRESS = {"istio": "ingressgateway"}


class World:
    """xdsd over mTLS with a productpage grant and an ingress gateway grant, a Gateway
    whose TLS server key is a file, and the certificates of both clients."""

    def __init__(self, root: Path, impl: str) -> None:
        self.ca = CertAuthority(root / "pki")
        self.server = self.ca.issue("xdsd", dns_names=[SERVER_NAME])
        self.productpage = self.ca.issue("productpage", uris=["spiffe://mesh.test/productpage"])
        self.gateway_cert = self.ca.issue("gateway-client", dns_names=["gateway.mesh.test"])
        self.site = self.ca.issue("site", dns_names=["web.example.com"], directory=root / "site")
        self.site_key = self.site.key.read_text()
        self.secret_name = f"file-cert:{self.site.cert}~{self.site.key}"
        self.mesh = m = TrafficMesh(root)
        (root / "settings.toml").write_text(
            f'tls_cert = "{self.server.cert}"\ntls_key = "{self.server.key}"\n'
            f'tls_client_ca = "{self.ca.ca_path}"\n\n'
            "[authorized_nodes]\n"
            '"spiffe://mesh.test/productpage" = { services = ["default/productpage"] }\n'
            '"gateway.mesh.test" = { services = ["default/ingress"], roles = ["gateway"], '
            'gateway_labels = { istio = "ingressgateway" } }\n'
        )
        m.xdsd_args = ["--settings", str(root / "settings.toml"), "--grpc-impl", impl]
        self.web = m.upstream("web")
        m.service("web", [self.web])
        m.service("productpage", [m.upstream("productpage-1")])
        self.port = free_port(m.gateway_ip("ingress"))
        m.rule(
            "gateways",
            f"""\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {self.port}, name: https, protocol: HTTPS}}
    hosts: [web.example.com]
    tls: {{mode: SIMPLE, serverCertificate: {self.site.cert}, privateKey: {self.site.key}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web}}
spec:
  hosts: [web.example.com]
  gateways: [edge]
  http:
  - route: [{{destination: {{host: web}}}}]
""",
        )
        self.gateway: GatewayNode = m.start_gateway(
            "ingress",
            INGRESS,
            bootstrap_args=(
                "--xds-tls-ca",
                str(self.ca.ca_path),
                "--xds-tls-cert",
                str(self.gateway_cert.cert),
                "--xds-tls-key",
                str(self.gateway_cert.key),
                "--xds-tls-server-name",
                SERVER_NAME,
            ),
        )

    def ads(self, cert: CertFiles, node: base_pb2.Node, type_url: str) -> Any:
        """The first response of an ADS stream over mTLS as ``node``, or its RpcError."""
        assert self.mesh.xdsd is not None
        return first_response_over_tls(
            self.mesh.xdsd.grpc_port,
            discovery_pb2.DiscoveryRequest(
                node=node,
                type_url=type_url,
                resource_names=[self.secret_name] if type_url == SDS else [],
            ),
            root=self.ca.ca_path.read_bytes(),
            key=cert.key.read_bytes(),
            chain=cert.cert.read_bytes(),
            server_name=SERVER_NAME,
        )

    def rest(self, cert: CertFiles, node: base_pb2.Node, kind: str) -> tuple[int, str]:
        """A REST poll of ``kind`` (``listeners``, ``secrets``) over mTLS as ``node``:
        the status and the body."""
        assert self.mesh.xdsd is not None
        url = f"https://127.0.0.1:{self.mesh.xdsd.rest_port}/v3/discovery:{kind}"
        names = [self.secret_name] if kind == "secrets" else []
        body = json.dumps(
            {"node": json_format.MessageToDict(node), "resource_names": names}
        ).encode()
        context = ssl.create_default_context(cafile=str(self.ca.ca_path))
        context.check_hostname = False
        context.load_cert_chain(cert.cert, cert.key)
        try:
            request = urllib.request.Request(url, data=body)
            with urllib.request.urlopen(request, timeout=10, context=context) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()


@pytest.fixture(scope="module", params=["grpclib", "grpcio"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp(f"claims-{request.param}"), request.param)
    try:
        yield w
    finally:
        w.mesh.stop()


def node(
    node_id: str, service: str, role: str, labels: dict[str, str], ip: str = "127.0.0.1"
) -> base_pb2.Node:
    n = base_pb2.Node(id=node_id, cluster=service, user_agent_name="envoy")
    n.metadata.update({"role": role, "labels": labels, "instance_ip": ip})
    if ip != "127.0.0.1":
        n.metadata.update({"outbound_ip": ip.rpartition(".")[0] + ".250"})
    return n


def holds_key(body: str, pem: str) -> bool:
    """True when ``body`` (a REST answer) holds the private key ``pem``, as PEM text or
    as the base64 of its bytes (a JSON ``inline_bytes``)."""
    lines = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    return lines[len(lines) // 2] in body or base64.b64encode(pem.encode()).decode() in body


def test_the_granted_gateway_receives_its_key_and_serves_tls(world: World) -> None:
    gw = world.gateway
    gw.wait_for(
        lambda: (
            gw.request(world.port, "web.example.com", tls=True, cafile=world.ca.ca_path).status
            == 200
        ),
        "the gateway serving TLS with its key from SDS",
    )
    status, body = world.rest(
        world.gateway_cert, node("ingress-2", "ingress", "gateway", INGRESS), "secrets"
    )
    assert status == 200 and holds_key(body, world.site_key)


@pytest.mark.parametrize(
    ("who", "claim"),
    [
        ("productpage", node("pp-1", "productpage", "gateway", INGRESS)),  # the issue's attack
        ("productpage", node("pp-1", "productpage", "gateway", {})),
        ("gateway", node("ingress-2", "ingress", "gateway", {"istio": "egressgateway"})),
        ("gateway", node("ingress-2", "ingress", "gateway", {**INGRESS, "extra": "x"})),
        ("gateway", node("ingress-2", "productpage", "gateway", INGRESS)),  # another service
    ],
)
def test_a_claim_beyond_the_grant_gets_no_gateway_listener_or_key(
    world: World, who: str, claim: base_pb2.Node
) -> None:
    cert = world.productpage if who == "productpage" else world.gateway_cert
    for type_url in (LDS, SDS):
        outcome = world.ads(cert, claim, type_url)
        assert isinstance(outcome, grpc.RpcError), outcome
        assert outcome.code() == grpc.StatusCode.PERMISSION_DENIED, outcome.details()
        assert "may not speak for gateway" in (outcome.details() or "")
    for kind in ("listeners", "secrets"):
        status, body = world.rest(cert, claim, kind)
        assert status == 403, body
        assert not holds_key(body, world.site_key) and str(world.port) not in body
    assert world.gateway.envoy.alive()


def test_a_sidecar_with_the_gateways_labels_gets_no_gateway_key(world: World) -> None:
    """productpage may be a sidecar with any labels: the gateway's labels do not make it
    a gateway, so it is served, without the gateway's listener or key."""
    claim = node("pp-1", "productpage", "sidecar", INGRESS, world.mesh.ip())
    served = world.ads(world.productpage, claim, LDS)
    assert isinstance(served, discovery_pb2.DiscoveryResponse), served
    assert world.site_key.encode() not in served.SerializeToString()
    assert f"port_value: {world.port}" not in str(served)
    for kind in ("listeners", "secrets"):
        status, body = world.rest(world.productpage, claim, kind)
        assert status == 200, body
        assert not holds_key(body, world.site_key) and f'"port_value":{world.port}' not in body
