"""The TCP and TLS ports of resolution NONE ServiceEntries, loaded from directories: served
by the virtual-address listeners (TLS by SNI through the dynamic forward proxy, TCP by a
DNS cluster to the host), and nothing else — a class without virtual addresses, MOSN,
proxyless gRPC and gateways get byte-for-byte what they get from a directory without
those ports. A real Envoy validates the rendered sidecar."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from tests.harness import envoy_binary
from xdsd.errors import ConfigError
from xdsd.model import Mesh
from xdsd.resources import CLUSTER, LISTENER
from xdsd.sources import load_directory
from xdsd.translate import MeshTranslation, NodeClass
from xdsd.translate.forward_proxy import FORWARD_PROXY_CLUSTER_TYPE
from xdsd.translate.node import ClientKind, ConfigSourceKind, Role
from xdsd.translate.static import render_static
from xdsd.translate.virtual_addresses import AddressBlock
from xdsd.translate.virtual_listeners import SNI_FORWARD_PROXY_FILTER

BLOCK = "127.240.0.0/16"
VIPS = NodeClass("client", virtual_addresses=BLOCK, instance_ip="127.0.0.2")

SERVICE = """\
kind = "Service"
name = "web"

[[ports]]
number = 9080
protocol = "HTTP"

[[ports]]
number = 5432
protocol = "TCP"

[[endpoints]]
address = "10.0.0.1"
"""

#: A gateway routing to web, so gateways are among the classes compared.
GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: gw-web, namespace: default}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route:
    - destination: {host: web, port: {number: 9080}}
"""


def entry(name: str, hosts: str, ports: str) -> str:
    return (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
        f"metadata: {{name: {name}, namespace: default}}\nspec:\n"
        f"  hosts: {hosts}\n  ports: [{ports}]\n  resolution: NONE\n"
        "  location: MESH_EXTERNAL\n"
    )


HTTP = "{number: 80, name: http, protocol: HTTP}"
#: The entries with their TCP/TLS ports; ``without`` drops those ports (and an entry
#: left with none).
ENTRIES = {
    # a wildcard host on a TLS port, next to an HTTP port (the HTTP port stays routed)
    "tls": ('["*.tls.example.com"]', [HTTP, "{number: 443, name: tls, protocol: TLS}"]),
    # a concrete host on a TCP port, alone
    "db": ("[db.example.com]", ["{number: 6379, name: redis, protocol: TCP}"]),
    # a TCP port on the web service's port number (no per-port collision)
    "pg": ("[pg.example.com]", ["{number: 5432, name: pg, protocol: TCP}"]),
}


def write(root: Path, with_ports: bool) -> Mesh:
    root.mkdir()
    (root / "web.toml").write_text(SERVICE)
    (root / "gw.yaml").write_text(GATEWAY)
    for name, (hosts, ports) in ENTRIES.items():
        kept = ports if with_ports else [p for p in ports if "HTTP" in p]
        if kept:
            (root / f"{name}.yaml").write_text(entry(name, hosts, ", ".join(kept)))
    result = load_directory(str(root))
    assert not result.warnings, result.warnings
    return result.mesh


@pytest.fixture(scope="module")
def meshes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Mesh, Mesh]:
    root = tmp_path_factory.mktemp("none")
    return write(root / "with", True), write(root / "without", False)


def vip_of(translation: MeshTranslation, mesh: Mesh, host: str) -> str:
    (service,) = [s for s in mesh.services if s.name == host]
    return translation.virtual_addresses().addresses_of(service.key, AddressBlock.parse(BLOCK))[0]


def proxy_of(chain: Any) -> Any:
    proxy = tcp_proxy_pb2.TcpProxy()
    chain.filters[-1].typed_config.Unpack(proxy)
    return proxy


def test_the_model_keeps_the_ports_and_routes_only_http(meshes: tuple[Mesh, Mesh]) -> None:
    with_ports, _ = meshes
    by_name = {s.name: s for s in with_ports.services}
    tls = by_name["*.tls.example.com"]
    assert [p.number for p in tls.ports] == [80, 443]
    assert [p.number for p in tls.routed_ports] == [80]
    assert by_name["db.example.com"].routed_ports == ()


@pytest.mark.parametrize(
    ("case", "node"),
    [
        ("plain sidecar", NodeClass("client", instance_ip="127.0.0.2")),
        (
            "REST sidecar",
            NodeClass("client", instance_ip="127.0.0.2", config_source=ConfigSourceKind.REST),
        ),
        ("MOSN", NodeClass("client", client=ClientKind.MOSN, instance_ip="127.0.0.2")),
        ("proxyless gRPC", NodeClass("client", client=ClientKind.GRPC)),
        (
            "gateway",
            NodeClass("gw", role=Role.GATEWAY, labels=(("istio", "ingressgateway"),)),
        ),
    ],
)
def test_classes_that_cannot_serve_them_get_what_they_got(
    meshes: tuple[Mesh, Mesh], case: str, node: NodeClass
) -> None:
    with_ports, without = meshes
    got = MeshTranslation(with_ports).snapshot_for(node)
    before = MeshTranslation(without).snapshot_for(node)
    assert set(got.resources) == set(before.resources), case
    for type_url, resources in before.resources.items():
        mine = got.resources[type_url]
        assert sorted(mine) == sorted(resources), (case, type_url)
        for name, resource in resources.items():
            assert mine[name].payload == resource.payload, (case, type_url, name)


def test_a_sidecar_with_virtual_addresses_serves_them(meshes: tuple[Mesh, Mesh]) -> None:
    from xdsd.model.mesh_config import MeshConfig, MeshDNS

    with_ports, without = meshes
    config = MeshConfig(dns=MeshDNS(enabled=True))
    t = MeshTranslation(with_ports, mesh_config=config)
    snap = t.snapshot_for(VIPS)
    listeners, clusters = snap.get(LISTENER), snap.get(CLUSTER)
    # TLS, wildcard host: SNI resolved by the dynamic forward proxy
    tls = listeners[f"outbound|{vip_of(t, with_ports, '*.tls.example.com')}|443"].message
    last = tls.filter_chains[-1]
    assert [f.name for f in last.filters] == [
        SNI_FORWARD_PROXY_FILTER,
        "envoy.filters.network.tcp_proxy",
    ]
    assert proxy_of(last).cluster == "outbound|443||*.tls.example.com"
    forward = clusters["outbound|443||*.tls.example.com"].message
    assert forward.cluster_type.name == FORWARD_PROXY_CLUSTER_TYPE
    # TCP, concrete host: a DNS cluster to the host
    for host, port in (("db.example.com", 6379), ("pg.example.com", 5432)):
        db = listeners[f"outbound|{vip_of(t, with_ports, host)}|{port}"].message
        (chain,) = db.filter_chains
        name = f"outbound_dns|{port}||{host}"
        assert proxy_of(chain).cluster == name
        cluster = clusters[name].message
        assert cluster.type == cluster_pb2.Cluster.STRICT_DNS
        (endpoint,) = cluster.load_assignment.endpoints[0].lb_endpoints
        sock = endpoint.endpoint.address.socket_address
        assert (sock.address, sock.port_value) == (host, port)
    # Nothing per port: 443 and 6379 have no per-port listener, 5432 stays web's.
    assert "127.0.0.1_443" not in listeners and "127.0.0.1_6379" not in listeners
    assert "outbound|6379||db.example.com" not in clusters
    # The same sidecar from the directory without those ports: only those resources
    # are new.
    old = MeshTranslation(without, mesh_config=config).snapshot_for(VIPS)
    new_names = {n for n in listeners if n not in old.get(LISTENER)}
    assert new_names == {
        f"outbound|{vip_of(t, with_ports, h)}|{p}"
        for h, p in (("*.tls.example.com", 443), ("db.example.com", 6379), ("pg.example.com", 5432))
    }
    assert {n for n in clusters if n not in old.get(CLUSTER)} == {
        "outbound|443||*.tls.example.com",
        "outbound_dns|6379||db.example.com",
        "outbound_dns|5432||pg.example.com",
    }


def test_incremental_translation_matches_a_cold_one(meshes: tuple[Mesh, Mesh]) -> None:
    """Adding the ports (and taking them away) over a previous translation gives what a
    cold translation gives."""
    from xdsd.model.mesh_config import MeshConfig, MeshDNS

    config = MeshConfig(dns=MeshDNS(enabled=True))
    with_ports, without = meshes
    nodes = (VIPS, dataclasses.replace(VIPS, virtual_addresses=""))
    for first, second in ((without, with_ports), (with_ports, without)):
        t1 = MeshTranslation(first, mesh_config=config)
        for node in nodes:
            t1.snapshot_for(node)
        t2 = MeshTranslation(second, mesh_config=config, previous=t1)
        cold = MeshTranslation(second, mesh_config=config)
        for node in nodes:
            warm_snap, cold_snap = t2.snapshot_for(node), cold.snapshot_for(node)
            for type_url, resources in cold_snap.resources.items():
                got = warm_snap.resources[type_url]
                assert {n: r.payload for n, r in got.items()} == {
                    n: r.payload for n, r in resources.items()
                }


def test_a_route_cannot_name_them(tmp_path: Path) -> None:
    (tmp_path / "db.yaml").write_text(entry("db", "[db.example.com]", ENTRIES["db"][1][0]))
    (tmp_path / "web.toml").write_text(SERVICE)
    (tmp_path / "vs.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        "metadata: {name: web, namespace: default}\nspec:\n  hosts: [web]\n  tcp:\n"
        "  - route:\n    - destination: {host: db.example.com, port: {number: 6379}}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_directory(str(tmp_path))
    assert "only TCP/TLS ports of resolution NONE" in str(err.value)


def test_envoy_validates_the_sidecar(meshes: tuple[Mesh, Mesh], tmp_path: Path) -> None:
    from xdsd.model.mesh_config import MeshConfig, MeshDNS

    with_ports, _ = meshes
    config = MeshConfig(dns=MeshDNS(enabled=True))
    bootstrap = render_static(with_ports, VIPS, admin_port=0, mesh_config=config)
    names = [lst["name"] for lst in bootstrap["static_resources"]["listeners"]]
    assert sum(n.startswith("outbound|127.24") for n in names) >= 5
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(bootstrap))
    proc = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
