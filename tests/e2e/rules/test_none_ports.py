"""ServiceEntry ``resolution: NONE`` on TLS and TCP ports, proven with real traffic: a real
Envoy sidecar with virtual addresses, configured by a running xdsd, serves

- a wildcard entry's TLS port by SNI: a TLS client connecting to the entry's virtual
  address reaches an external-style TLS server named by the SNI, which the dynamic
  forward proxy resolves (Envoy runs in a mount namespace whose ``/etc/hosts`` names the
  server: root only, skipped with the reason otherwise);
- a concrete entry's TCP port by the host's resolved address: ``localhost``, a TCP
  client connecting to the entry's virtual address reaches the server on 127.0.0.1.

The per-port listeners of those ports stay absent."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.certs import CertAuthority
from tests.e2e.traffic_mesh import Sidecar, TrafficMesh
from tests.e2e.upstreams import TcpEcho
from tests.harness import free_port
from xdsd.sources.loader import load_directory
from xdsd.translate import MeshTranslation
from xdsd.translate.virtual_addresses import AddressBlock

#: The wildcard entry's host, and the names under it the test's /etc/hosts resolves.
WILDCARD = "*.none.test"
NAMES = ("api.none.test", "other.none.test")


def entries(tls_port: int, tcp_port: int) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ext-tls}}
spec:
  hosts: ["{WILDCARD}"]
  ports: [{{number: {tls_port}, name: tls, protocol: TLS}}]
  resolution: NONE
  location: MESH_EXTERNAL
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ext-tcp}}
spec:
  hosts: [localhost]
  ports: [{{number: {tcp_port}, name: tcp, protocol: TCP}}]
  resolution: NONE
  location: MESH_EXTERNAL
"""


def namespace_missing() -> str:
    """Why Envoy cannot get a mount namespace of its own here ("" when it can)."""
    if os.geteuid() != 0:
        return "needs root: Envoy runs in a mount namespace with its own /etc/hosts"
    if shutil.which("unshare") is None:
        return "needs `unshare` (util-linux)"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"],
        capture_output=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return f"mount namespaces refused here: {probe.stderr.decode().strip()}"
    return ""


class World:
    def __init__(self, tmp: Path) -> None:
        self.mesh = m = TrafficMesh(tmp)
        self.why_not = namespace_missing()
        self.block = "127.250.0.0/16"
        self.tls_port, self.tcp_port = free_port(), free_port()
        self.ca = CertAuthority(tmp / "ca")
        context = self.ca.server_context(self.ca.issue("ext", NAMES))
        # Outside the mesh: no service file names them, on the address the names resolve to.
        self.servers = [
            TcpEcho("ext-tls", "127.0.0.1", self.tls_port, tls=context),
            TcpEcho("ext-tcp", "127.0.0.1", self.tcp_port),
        ]
        m.rule("external", entries(self.tls_port, self.tcp_port))
        prefix: tuple[str, ...] = ()
        if not self.why_not:
            hosts = tmp / "hosts"
            hosts.write_text("127.0.0.1 localhost\n" + "".join(f"127.0.0.1 {n}\n" for n in NAMES))
            script = 'mount --bind "$0" /etc/hosts && exec "$@"'
            prefix = ("unshare", "--mount", "--propagation", "private", "sh", "-c", script)
            prefix += (str(hosts),)
        self.client: Sidecar = m.start(
            metadata={"virtual_addresses": self.block}, envoy_prefix=prefix
        )
        loaded = load_directory(str(m.config)).mesh
        allocation = MeshTranslation(loaded).virtual_addresses()
        block = AddressBlock.parse(self.block)
        self.vips = {}
        for service in loaded.services:
            if service.entry:
                (self.vips[service.name],) = allocation.addresses_of(service.key, block)

    def stop(self) -> None:
        self.mesh.stop()
        for server in self.servers:
            server.stop()

    def tls(self, name: str, data: bytes = b"hello") -> bytes:
        ctx = ssl.create_default_context(cafile=str(self.ca.ca_path))
        address = (self.vips[WILDCARD], self.tls_port)
        with (
            socket.create_connection(address, timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=name) as s,
        ):
            s.sendall(data)
            return s.recv(65536)

    def tcp(self, data: bytes = b"ping") -> bytes:
        with socket.create_connection((self.vips["localhost"], self.tcp_port), timeout=5) as s:
            s.sendall(data)
            return s.recv(65536)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("none-ports"))
    try:
        yield w
    finally:
        w.stop()


def test_envoy_listens_on_the_entries_virtual_addresses_only(world: World) -> None:
    c = world.client
    wanted = {(world.vips[WILDCARD], world.tls_port), (world.vips["localhost"], world.tcp_port)}
    c.wait_for(lambda: wanted <= set(c.envoy.listener_addresses()), "the VIP listeners")
    bound = set(c.envoy.listener_addresses())
    assert (c.outbound_ip, world.tls_port) not in bound
    assert (c.outbound_ip, world.tcp_port) not in bound
    assert world.mesh.errors() == []


def test_tls_by_sni_through_a_wildcard_entry(world: World) -> None:
    """Each name under the wildcard reaches the server its SNI resolves to, which the
    client verifies end to end (the sidecar does not terminate TLS); a name that does
    not resolve gets no connection."""
    if world.why_not:
        pytest.skip(world.why_not)
    c = world.client
    c.wait_for(lambda: world.tls(NAMES[0]) == b"ext-tls:hello", "TLS by SNI")
    assert world.tls(NAMES[1], b"again") == b"ext-tls:again"
    payload = bytes(range(256))
    assert world.tls(NAMES[0], payload) == b"ext-tls:" + payload
    with pytest.raises((ssl.SSLError, OSError)):
        world.tls("missing.none.test")
    stats = c.stats()
    name = f"cluster.outbound|{world.tls_port}||{WILDCARD}.upstream_cx_total"
    assert stats.get(name, 0) >= 3


def test_tcp_by_the_hosts_resolved_address(world: World) -> None:
    c = world.client
    c.wait_for(lambda: world.tcp() == b"ext-tcp:ping", "TCP to localhost's VIP")
    payload = bytes(range(256))
    assert world.tcp(payload) == b"ext-tcp:" + payload
    stats = c.stats()
    name = f"cluster.outbound_dns|{world.tcp_port}||localhost.upstream_cx_total"
    assert stats.get(name, 0) >= 2
