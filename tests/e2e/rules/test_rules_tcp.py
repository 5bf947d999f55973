"""Behaviour of VirtualService tcp and tls rules, proven by real connections through real
Envoy sidecars configured by xdsd (one mesh for the module; each test its own service on
its own port)."""

from __future__ import annotations

import ssl
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.certs import CertAuthority
from tests.e2e.traffic_mesh import Sidecar, TrafficMesh
from tests.e2e.upstreams import TcpEcho
from tests.harness import free_port


def subsets(name: str, *versions: str) -> str:
    items = ", ".join(f"{{name: {v}, labels: {{version: {v}}}}}" for v in versions)
    return (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        f"metadata: {{name: {name}}}\nspec:\n  host: {name}\n  subsets: [{items}]\n"
    )


def rules(ports: dict[str, int], block: str) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: pipe}}
spec:
  hosts: [pipe]
  tcp:
  - match: [{{port: 1}}]
    route: [{{destination: {{host: pipe, subset: v1}}}}]
  - match: [{{port: {ports["pipe"]}}}]
    route: [{{destination: {{host: pipe, subset: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: split}}
spec:
  hosts: [split]
  tcp:
  - route:
    - {{destination: {{host: split, subset: v1}}, weight: 3}}
    - {{destination: {{host: split, subset: v2}}, weight: 1}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: callers}}
spec:
  hosts: [callers]
  tcp:
  - match: [{{sourceLabels: {{role: canary}}}}]
    route: [{{destination: {{host: callers, subset: v2}}}}]
  - match: [{{destinationSubnets: [10.0.0.0/8]}}, {{destinationSubnets: ["{block}.0/24"]}}]
    route: [{{destination: {{host: callers, subset: v3}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: tls}}
spec:
  hosts: [tls-a, "*.example.com"]
  tls:
  - match: [{{sniHosts: [tls-a]}}]
    route: [{{destination: {{host: tls-a}}}}]
  - match: [{{sniHosts: ["*.example.com"]}}]
    route: [{{destination: {{host: tls-b}}}}]
---
{subsets("pipe", "v1", "v2")}---
{subsets("split", "v1", "v2")}---
{subsets("callers", "v1", "v2", "v3")}"""


class Mesh:
    def __init__(self, tmp: Path) -> None:
        self.mesh = m = TrafficMesh(tmp)
        self.ports = {name: free_port() for name in ("pipe", "split", "callers", "tls")}
        self.echoes: dict[str, list[TcpEcho]] = {}
        for name, versions in (("pipe", "12"), ("split", "12"), ("callers", "123")):
            port = self.ports[name]
            self.echoes[name] = [
                m.tcp_upstream(f"{name}-v{v}", port, version=f"v{v}") for v in versions
            ]
            m.service(name, self.echoes[name], port=port, protocol="TCP")
        self.ca = CertAuthority(tmp / "ca")
        port = self.ports["tls"]
        for name, names in (("tls-a", ["tls-a"]), ("tls-b", ["tls-b", "*.example.com"])):
            context = self.ca.server_context(self.ca.issue(name, names))
            m.service(name, [m.tcp_upstream(name, port, tls=context)], port=port, protocol="TLS")
        m.rule("rules", rules(self.ports, m.block))
        self.client: Sidecar = m.start()
        self.canary: Sidecar = m.start("canary", labels={"role": "canary"})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    w = Mesh(tmp_path_factory.mktemp("rules-tcp"))
    try:
        yield w
    finally:
        w.mesh.stop()


def backend(client: Sidecar, port: int, data: bytes = b"ping") -> str:
    reply = client.tcp(port, data)
    name, sep, rest = reply.partition(b":")
    assert sep and rest == data, reply
    return name.decode()


def test_tcp_route_forwards_bytes(world: Mesh) -> None:
    """VirtualService tcp[].route[].destination (subset) and tcp[].match[].port: bytes
    reach the chosen subset and its answer comes back; a match on another port is not
    taken."""
    c, port = world.client, world.ports["pipe"]
    c.wait_for(lambda: backend(c, port) == "pipe-v2", "the tcp route to be served")
    payload = bytes(range(256))  # every byte value, unchanged both ways
    assert c.tcp(port, payload) == b"pipe-v2:" + payload
    assert all(backend(c, port) == "pipe-v2" for _ in range(20))


def test_weighted_tcp_route_splits_connections(world: Mesh) -> None:
    """tcp[].route[].weight is relative: 3 and 1 send 75 % and 25 % of connections."""
    c, port = world.client, world.ports["split"]
    c.wait_for(lambda: backend(c, port) in ("split-v1", "split-v2"), "the split to be served")
    counts = Counter(backend(c, port) for _ in range(240))
    # 180 expected on v1: binomial sd 6.7; ±34 is over 5 sd
    assert 146 <= counts["split-v1"] <= 214, counts
    assert counts["split-v1"] + counts["split-v2"] == 240


def test_tcp_match_by_source_labels_and_destination_subnets(world: Mesh) -> None:
    """tcp[].match[].sourceLabels is decided by which sidecar asks (the canary's labels
    match, the client's do not); tcp[].match[].destinationSubnets matches the address the
    application dialled (the sidecar's outbound address, inside the mesh's block; the
    10.0.0.0/8 block never matches)."""
    port = world.ports["callers"]
    canary, client = world.canary, world.client
    canary.wait_for(lambda: backend(canary, port) == "callers-v2", "canary routes")
    client.wait_for(lambda: backend(client, port) == "callers-v3", "client routes")
    assert {backend(canary, port) for _ in range(10)} == {"callers-v2"}
    assert {backend(client, port) for _ in range(10)} == {"callers-v3"}


def common_name(cert: dict[str, object]) -> str:
    for rdn in cert.get("subject", ()):  # type: ignore[attr-defined]
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


def test_tls_route_picks_its_backend_by_sni(world: Mesh) -> None:
    """VirtualService tls[].match[].sniHosts: two TLS services share one port and the
    sidecar tells connections apart by SNI without terminating TLS (the client verifies
    the backend's own certificate): ``tls-a`` by its rule, ``*.example.com`` (a wildcard
    within the rule's hosts) to tls-b, ``tls-b`` by its service names (it has no rule of
    its own); a name nothing claims gets no backend."""
    c, port, ca = world.client, world.ports["tls"], world.ca.ca_path

    def seen(sni: str) -> tuple[str, str]:
        reply, cert = c.tls(port, b"hello", sni, ca)
        return reply.decode(), common_name(cert)

    c.wait_for(lambda: seen("tls-a") == ("tls-a:hello", "tls-a"), "the tls routes")
    assert seen("tls-b") == ("tls-b:hello", "tls-b")
    assert seen("shop.example.com") == ("tls-b:hello", "tls-b")
    # Without verification, only the missing filter chain can stop the handshake.
    assert c.tls(port, b"x", "tls-b", None)[0] == b"tls-b:x"
    with pytest.raises((ssl.SSLError, ConnectionError)):
        c.tls(port, b"x", "nobody.test", None)
