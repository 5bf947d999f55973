"""Virtual addresses, proven with real traffic: a real Envoy sidecar configured by a
running xdsd, whose node metadata names a block, listens on each service's virtual
address; an HTTP service, a TCP service, two TCP services on one port and a TLS service
are each reached by connecting to their address, and a VirtualService weight change
shows up there."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.certs import CertAuthority
from tests.e2e.traffic_mesh import Sidecar, TrafficMesh
from tests.harness import free_port
from xdsd.sources.loader import load_directory
from xdsd.translate import MeshTranslation
from xdsd.translate.virtual_addresses import AddressBlock


def tcp_rule(subset: str) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: pg-a}}
spec:
  host: pg-a
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: pg-a}}
spec:
  hosts: [pg-a]
  tcp:
  - route: [{{destination: {{host: pg-a, subset: {subset}}}}}]
"""


class World:
    def __init__(self, tmp: Path) -> None:
        self.mesh = m = TrafficMesh(tmp)
        # A /16 of its own (the settings' default block is a /16), away from the mesh's.
        taken = int(m.block.split(".")[1])
        second = random.choice([n for n in range(100, 240) if n != taken])
        self.block = f"127.{second}.0.0/16"
        m.service("web", [m.upstream("web-1")])
        self.tcp_port, self.tls_port = free_port(), free_port()
        versions = [m.tcp_upstream(f"pg-a-{v}", self.tcp_port, version=v) for v in ("v1", "v2")]
        m.service("pg-a", versions, port=self.tcp_port, protocol="TCP")
        m.service(
            "pg-b", [m.tcp_upstream("pg-b", self.tcp_port)], port=self.tcp_port, protocol="TCP"
        )
        self.ca = CertAuthority(tmp / "ca")
        context = self.ca.server_context(self.ca.issue("secure", ["secure"]))
        m.service(
            "secure",
            [m.tcp_upstream("secure", self.tls_port, tls=context)],
            port=self.tls_port,
            protocol="TLS",
        )
        m.rule("pg-a", tcp_rule("v1"))
        self.client: Sidecar = m.start(metadata={"virtual_addresses": self.block})
        loaded = load_directory(str(m.config)).mesh
        allocation = MeshTranslation(loaded).virtual_addresses()
        block = AddressBlock.parse(self.block)
        self.vips = {}
        for name in ("web", "pg-a", "pg-b", "secure"):
            service = loaded.service_by_name("default", name)
            assert service is not None
            (self.vips[name],) = allocation.addresses_of(service.key, block)

    def tcp(self, name: str, data: bytes = b"ping") -> str:
        with socket.create_connection((self.vips[name], self.tcp_port), timeout=5) as s:
            s.sendall(data)
            reply = s.recv(65536)
        backend, sep, rest = reply.partition(b":")
        assert sep and rest == data, reply
        return backend.decode()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("vips"))
    try:
        yield w
    finally:
        w.mesh.stop()


def test_envoy_listens_on_every_virtual_address(world: World) -> None:
    """The listener names Envoy reports are ``outbound|VIP|PORT`` for each service port,
    on the addresses the allocation gives; the ambiguous per-port TCP listener is gone."""
    c, v, m = world.client, world.vips, world.mesh
    wanted = {
        (v["web"], m.port),
        (v["pg-a"], world.tcp_port),
        (v["pg-b"], world.tcp_port),
        (v["secure"], world.tls_port),
    }
    c.wait_for(lambda: wanted <= set(c.envoy.listener_addresses()), "the VIP listeners")
    names = {s["name"] for s in c.envoy.admin_json("/listeners?format=json")["listener_statuses"]}
    assert {f"outbound|{ip}|{port}" for ip, port in wanted} <= names
    assert f"outbound|{c.outbound_ip}|{world.tcp_port}" not in names
    assert f"outbound|{c.outbound_ip}|{m.port}" in names  # the per-port listeners stay
    assert m.errors() == []


def test_http_service_by_its_address(world: World) -> None:
    """An HTTP request to the service's address with the Host an unchanged client sends
    (``web:PORT``) reaches its backend through the routes."""
    c, port = world.client, world.mesh.port
    host = f"web:{port}"
    c.wait_for(
        lambda: (
            c.request(host, port=port, address=world.vips["web"]).headers.get("x-backend")
            == "web-1"
        ),
        "the web VIP",
    )
    reply = c.request(host, "/x", port=port, address=world.vips["web"])
    assert (reply.status, reply.headers["x-backend"]) == (200, "web-1")


def test_two_tcp_services_on_one_port(world: World) -> None:
    """pg-a and pg-b share a port number; each is reached on its own address, bytes
    unchanged both ways (pg-a by its tcp rule, to subset v1)."""
    c = world.client
    c.wait_for(lambda: world.tcp("pg-b") == "pg-b", "pg-b on its VIP")
    c.wait_for(lambda: world.tcp("pg-a") == "pg-a-v1", "pg-a on its VIP")
    payload = bytes(range(256))
    assert {world.tcp("pg-a", payload) for _ in range(10)} == {"pg-a-v1"}
    assert {world.tcp("pg-b", payload) for _ in range(10)} == {"pg-b"}


def test_tls_service_by_its_address(world: World) -> None:
    """TLS to the service's address passes through to the backend, whose own certificate
    the client verifies (the sidecar does not terminate it)."""
    c, ca = world.client, world.ca.ca_path

    def seen() -> bytes:
        import ssl

        ctx = ssl.create_default_context(cafile=str(ca))
        address = (world.vips["secure"], world.tls_port)
        with (
            socket.create_connection(address, timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="secure") as s,
        ):
            s.sendall(b"hello")
            return s.recv(65536)

    c.wait_for(lambda: seen() == b"secure:hello", "the TLS VIP")


def test_weight_change_shows_up_over_the_address(world: World) -> None:
    """Rewriting pg-a's VirtualService to subset v2 moves the connections made to its
    address; pg-b on the same port is untouched."""
    c, m = world.client, world.mesh
    c.wait_for(lambda: world.tcp("pg-a") == "pg-a-v1", "pg-a on v1")
    m.rule("pg-a", tcp_rule("v2"))
    c.wait_for(lambda: world.tcp("pg-a") == "pg-a-v2", "pg-a moved to v2")
    assert {world.tcp("pg-a") for _ in range(10)} == {"pg-a-v2"}
    assert world.tcp("pg-b") == "pg-b"
