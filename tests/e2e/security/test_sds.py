"""SDS from certificate files, proven with a real gateway Envoy: it fetches its server
certificate from xdsd as a secret, serves TLS with it, and serves a new certificate once
the files are replaced on disk (outside the config directory), with neither Envoy nor
xdsd restarted; a file that goes bad is refused on the line that names it while the
last good certificate keeps being served."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.certs import CertAuthority, CertFiles
from tests.e2e.traffic_mesh import GatewayNode, TrafficMesh
from tests.harness import free_port, wait_until


def gateway_rules(port: int, pki: Path) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: https, protocol: HTTPS}}
    hosts: [web.example.com]
    tls:
      mode: SIMPLE
      serverCertificate: {pki}/gateway.pem
      privateKey: {pki}/gateway-key.pem
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web}}
spec:
  hosts: [web.example.com]
  gateways: [edge]
  http:
  - route: [{{destination: {{host: web}}}}]
"""


def serial_of(files: CertFiles) -> int:
    from cryptography import x509

    return int(x509.load_pem_x509_certificate(files.cert.read_bytes()).serial_number)


def replace_files(ca: CertAuthority, pki: Path) -> CertFiles:
    """Issue a new gateway certificate in a staging directory and move the certificate
    and the key over the served ones, each by an atomic rename."""
    new = ca.issue("gateway", ["web.example.com"], directory=pki.parent / "staging")
    os.replace(new.key, pki / "gateway-key.pem")
    os.replace(new.cert, pki / "gateway.pem")
    return CertFiles(pki / "gateway.pem", pki / "gateway-key.pem", ca.ca_path)


class World:
    def __init__(self, tmp: Path) -> None:
        self.mesh = m = TrafficMesh(tmp)
        ip = m.gateway_ip("ingress")
        self.port = free_port(ip)
        # Outside the config directory, as /etc/ssl would be.
        self.pki = tmp / "pki"
        self.ca = CertAuthority(self.pki)
        self.files = self.ca.issue("gateway", ["web.example.com"])
        self.web = m.upstream("web")
        m.service("web", [self.web])
        self.rules = m.rule("gateways", gateway_rules(self.port, self.pki))
        self.gateway: GatewayNode = m.start_gateway("ingress", {"istio": "ingressgateway"})

    def served_serial(self) -> int:
        session = self.gateway.handshake(self.port, "web.example.com", self.ca.ca_path)
        return int(session.peer["serialNumber"], 16)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("sds"))
    try:
        yield w
    finally:
        w.mesh.stop()


def dynamic_secrets(gateway: GatewayNode) -> dict[str, Any]:
    dump = gateway.envoy.admin_json("/config_dump?resource=dynamic_active_secrets")
    return {c["name"]: c for c in dump.get("configs", [])}


def test_gateway_serves_its_certificate_from_sds_and_follows_replaced_files(
    world: World,
) -> None:
    gw = world.gateway
    first = serial_of(world.files)
    gw.wait_for(lambda: world.served_serial() == first, "the gateway's certificate over SDS")
    reply = gw.request(world.port, "web.example.com", tls=True, cafile=world.ca.ca_path)
    assert reply.status == 200 and world.web.seen[-1].headers  # routed to the backend
    name = f"file-cert:{world.pki}/gateway.pem~{world.pki}/gateway-key.pem"
    secrets = dynamic_secrets(gw)
    assert list(secrets) == [name]
    listeners = gw.envoy.admin_text("/config_dump?resource=dynamic_listeners")
    assert "filename" not in listeners and name in listeners
    envoy_pid, xdsd_pid = gw.envoy.proc.pid, world.mesh.xdsd.proc.pid  # type: ignore[union-attr]
    version = secrets[name]["version_info"]

    second = serial_of(replace_files(world.ca, world.pki))
    assert second != first
    gw.wait_for(lambda: world.served_serial() == second, "the replaced certificate")
    assert dynamic_secrets(gw)[name]["version_info"] != version
    assert (
        gw.request(world.port, "web.example.com", tls=True, cafile=world.ca.ca_path).status == 200
    )
    assert gw.envoy.proc.pid == envoy_pid and gw.envoy.alive()
    assert world.mesh.xdsd.proc.pid == xdsd_pid  # type: ignore[union-attr]


def test_a_bad_certificate_file_is_refused_on_the_naming_line(world: World) -> None:
    serving = world.served_serial()
    key = world.pki / "gateway-key.pem"
    good = key.read_bytes()
    tmp = world.pki / ".gateway-key.pem.new"
    tmp.write_text("not a key\n")
    os.replace(tmp, key)
    try:

        def refused() -> bool:
            return any(
                e["field"] == "servers[0].tls.privateKey" and "no PEM private key" in e["message"]
                for e in world.mesh.errors()
            )

        wait_until(refused, timeout=30, what="the bad key refused")
        [error] = [e for e in world.mesh.errors() if e["severity"] == "error"]
        assert error["path"].endswith("gateways.yaml")
        text = world.rules.read_text().splitlines()
        assert "privateKey" in text[error["line"] - 1]
        assert world.served_serial() == serving  # the last good secret is still served
        key.unlink()
        wait_until(
            lambda: any("cannot read" in e["message"] for e in world.mesh.errors()),
            timeout=30,
            what="the missing key refused",
        )
    finally:
        tmp.write_bytes(good)
        os.replace(tmp, key)
    wait_until(lambda: not world.mesh.errors(), timeout=30, what="the key accepted again")
    assert world.served_serial() == serving
    shutil.rmtree(world.pki.parent / "staging", ignore_errors=True)
