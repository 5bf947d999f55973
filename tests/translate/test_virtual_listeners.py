"""Virtual-address listeners: a sidecar whose metadata names a block listens on
``VIP:PORT`` for each port of each service it sees (``translate/virtual_listeners.py``).
Table tests of what each kind of port becomes, the scope, the bind checks, sharing
between classes, incremental translation against cold ones, and a real Envoy validating
a rendered sidecar."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from tests.harness import envoy_binary
from tests.translate.meshes import FQDN, http, service, tcp
from xdsd.errors import TranslationError
from xdsd.model import (
    Destination,
    DestinationRule,
    Endpoint,
    L4Match,
    L4Route,
    Mesh,
    Origin,
    Port,
    Protocol,
    Resolution,
    RouteDestination,
    Service,
    Subset,
    VirtualService,
)
from xdsd.model.mesh_config import AccessLog, MeshConfig, MeshDNS
from xdsd.model.networking import EgressListener, Sidecar
from xdsd.resources import CLUSTER, LISTENER, ROUTE
from xdsd.translate import MeshTranslation, NodeClass
from xdsd.translate.forward_proxy import FORWARD_PROXY_FILTER
from xdsd.translate.listeners import TLS_INSPECTOR
from xdsd.translate.static import render_static
from xdsd.translate.virtual_addresses import AddressBlock
from xdsd.translate.virtual_listeners import SNI_FORWARD_PROXY_FILTER

BLOCK = "127.240.0.0/16"
NODE = NodeClass("client", virtual_addresses=BLOCK, instance_ip="127.0.0.2")
PLAIN = dataclasses.replace(NODE, virtual_addresses="")


def tls(number: int) -> Port:
    return Port(number, Protocol.TLS, "tls")


def to(host: str, subset: str = "", weight: int = 100) -> RouteDestination:
    return RouteDestination(Destination(host, subset), weight)


def mesh(*extra: Service, vss: tuple[VirtualService, ...] = (), **kw: Any) -> Mesh:
    """web (HTTP 9080), db (TCP 5432, subsets v1/v2), secure (TLS 8443), client (HTTP
    7000, the node's own service) and ``extra``."""
    eps = (Endpoint("10.0.0.1", (("version", "v1"),)), Endpoint("10.0.0.2", (("version", "v2"),)))
    services = (
        service("client", http(7000, 17000), endpoints=(Endpoint("127.0.0.2"),)),
        service("web", http(9080), endpoints=(Endpoint("10.0.2.1"),)),
        service("db", tcp(5432), endpoints=eps),
        service("secure", tls(8443), endpoints=(Endpoint("10.0.1.1"),)),
        *extra,
    )
    rule = DestinationRule(
        "db", "db", subsets=(Subset("v1", (("version", "v1"),)), Subset("v2", (("version", "v2"),)))
    )
    return Mesh(
        services=tuple(sorted(services, key=lambda s: s.key)),
        virtual_services=vss,
        destination_rules=(rule,),
        **kw,
    )


def vip(translation: MeshTranslation, svc: Service, block: str = BLOCK) -> str:
    return translation.virtual_addresses().addresses_of(svc.key, AddressBlock.parse(block))[0]


def snapshot(m: Mesh, node: NodeClass = NODE, config: MeshConfig | None = None) -> Any:
    translation = MeshTranslation(m, mesh_config=config or MeshConfig())
    return translation, translation.snapshot_for(node)


def listener(snap: Any, name: str) -> Any:
    return snap.get(LISTENER)[name].message


def hcm(message: Any) -> Any:
    out = hcm_pb2.HttpConnectionManager()
    message.filter_chains[0].filters[0].typed_config.Unpack(out)
    return out


def proxies(message: Any) -> list[Any]:
    """Each chain's TCP proxy (its last filter)."""
    out = []
    for chain in message.filter_chains:
        proxy = tcp_proxy_pb2.TcpProxy()
        chain.filters[-1].typed_config.Unpack(proxy)
        out.append(proxy)
    return out


def vip_listeners(snap: Any) -> dict[str, Any]:
    return {
        n: r.message for n, r in snap.get(LISTENER).items() if n.startswith("outbound|127.240.")
    }


def test_http_port_routes_by_host_with_the_per_port_routes() -> None:
    m = mesh()
    t, snap = snapshot(m)
    web = m.service_by_name("default", "web")
    assert web is not None
    address = vip(t, web)
    got = listener(snap, f"outbound|{address}|9080")
    assert got.address.socket_address.address == address
    assert got.address.socket_address.port_value == 9080
    assert got.enable_reuse_port.value is False
    assert hcm(got).rds.route_config_name == "9080"
    assert "9080" in snap.get(ROUTE)
    # Every port of every service, the node's own included (it may call itself).
    assert len(vip_listeners(snap)) == 4


def test_tcp_port_honours_the_tcp_rules_weights() -> None:
    vs = VirtualService(
        "db", hosts=("db",), tcp=(L4Route(route=(to("db", "v1", 3), to("db", "v2", 1))),)
    )
    m = mesh(vss=(vs,))
    t, snap = snapshot(m)
    db = m.service_by_name("default", "db")
    assert db is not None
    (proxy,) = proxies(listener(snap, f"outbound|{vip(t, db)}|5432"))
    weighted = [(c.name, c.weight) for c in proxy.weighted_clusters.clusters]
    db_fqdn = FQDN.format("db")
    assert weighted == [(f"outbound|5432|v1|{db_fqdn}", 3), (f"outbound|5432|v2|{db_fqdn}", 1)]


def test_tcp_rules_of_other_callers_and_ports_do_not_apply() -> None:
    vs = VirtualService(
        "db",
        hosts=("db",),
        tcp=(
            L4Route(match=(L4Match(source_labels=(("role", "canary"),)),), route=(to("db", "v2"),)),
            L4Route(match=(L4Match(port=1),), route=(to("db", "v1"),)),
        ),
    )
    m = mesh(vss=(vs,))
    t, snap = snapshot(m)
    db = m.service_by_name("default", "db")
    assert db is not None
    name = f"outbound|{vip(t, db)}|5432"
    (proxy,) = proxies(listener(snap, name))
    assert proxy.cluster == f"outbound|5432||{FQDN.format('db')}"
    canary = dataclasses.replace(NODE, labels=(("role", "canary"),))
    (proxy,) = proxies(t.snapshot_for(canary).get(LISTENER)[name].message)
    assert proxy.cluster == f"outbound|5432|v2|{FQDN.format('db')}"


def test_two_tcp_services_on_one_port() -> None:
    other = service("cache", tcp(5432), endpoints=(Endpoint("10.0.3.1"),))
    m = mesh(other)
    with pytest.raises(TranslationError, match="both TCP services on port 5432"):
        MeshTranslation(m).snapshot_for(PLAIN)
    t, snap = snapshot(m)
    assert "outbound|127.0.0.1|5432" not in snap.get(LISTENER)
    for name in ("db", "cache"):
        svc = m.service_by_name("default", name)
        assert svc is not None
        (proxy,) = proxies(listener(snap, f"outbound|{vip(t, svc)}|5432"))
        assert proxy.cluster == f"outbound|5432||{svc.fqdn}"
    # Other ports keep their per-port listeners.
    assert "outbound|127.0.0.1|9080" in snap.get(LISTENER)


def test_http_and_tcp_on_one_port_each_get_their_address() -> None:
    other = service("admin", http(5432), endpoints=(Endpoint("10.0.3.1"),))
    m = mesh(other)
    with pytest.raises(TranslationError, match="HTTP service"):
        MeshTranslation(m).snapshot_for(PLAIN)
    t, snap = snapshot(m)
    assert "outbound|127.0.0.1|5432" not in snap.get(LISTENER)
    assert hcm(listener(snap, f"outbound|{vip(t, other)}|5432")).rds.route_config_name == "5432"
    assert "5432" in snap.get(ROUTE)


def test_tls_port_default_chain_rules_and_inspector() -> None:
    vs = VirtualService(
        "secure",
        hosts=("secure",),
        tls=(L4Route(match=(L4Match(sni_hosts=("secure",)),), route=(to("db", "v1"),)),),
        origin=Origin("vs.yaml", 1),
    )
    m = mesh(vss=(vs,))
    t, snap = snapshot(m)
    secure = m.service_by_name("default", "secure")
    assert secure is not None
    got = listener(snap, f"outbound|{vip(t, secure)}|8443")
    assert [f.name for f in got.listener_filters] == [TLS_INSPECTOR]
    assert [list(c.filter_chain_match.server_names) for c in got.filter_chains] == [
        ["secure"],
        [],
    ]
    assert [p.cluster for p in proxies(got)] == [
        f"outbound|5432|v1|{FQDN.format('db')}",
        f"outbound|8443||{secure.fqdn}",
    ]


def test_tls_services_pinning_one_address_are_told_apart_by_sni() -> None:
    a = dataclasses.replace(service("tls-a", tls(443)), addresses=("127.241.0.9",))
    b = dataclasses.replace(service("tls-b", tls(443)), addresses=("127.241.0.9",))
    _, snap = snapshot(mesh(a, b))
    got = listener(snap, "outbound|127.241.0.9|443")
    names = [set(c.filter_chain_match.server_names) for c in got.filter_chains]
    assert names == [set(a.host_names), set(b.host_names)]
    assert [f.name for f in got.listener_filters] == [TLS_INSPECTOR]


def test_tcp_services_cannot_share_a_pinned_address() -> None:
    a = dataclasses.replace(service("a", tcp(6000)), addresses=("127.241.0.9",))
    b = dataclasses.replace(service("b", tcp(6000)), addresses=("127.241.0.9",))
    with pytest.raises(TranslationError, match="only HTTP services"):
        snapshot(mesh(a, b))


def entry_service(host: str, port: Port) -> Service:
    return Service(
        host,
        namespace="default",
        ports=(port,),
        resolution=Resolution.NONE,
        entry="e",
        origin=Origin("rules/e.yaml", 1),
    )


def test_resolution_none_over_virtual_addresses() -> None:
    api = entry_service("api.example.com", http(80))
    wild_tls = entry_service("*.tls.example.com", tls(443))
    raw = entry_service("db.example.com", tcp(6379))
    wild_tcp = entry_service("*.tcp.example.com", tcp(6380))
    m = mesh(api, wild_tls, raw, wild_tcp)
    t, snap = snapshot(m)
    got = hcm(listener(snap, f"outbound|{vip(t, api)}|80"))
    assert got.rds.route_config_name == "http_proxy"
    assert FORWARD_PROXY_FILTER in [f.name for f in got.http_filters]
    sni = listener(snap, f"outbound|{vip(t, wild_tls)}|443")
    assert [f.name for f in sni.filter_chains[-1].filters] == [
        SNI_FORWARD_PROXY_FILTER,
        "envoy.filters.network.tcp_proxy",
    ]
    assert proxies(sni)[-1].cluster == "outbound|443||*.tls.example.com"
    (proxy,) = proxies(listener(snap, f"outbound|{vip(t, raw)}|6379"))
    assert proxy.cluster == "outbound_dns|6379||db.example.com"
    cluster = snap.get(CLUSTER)[proxy.cluster].message
    assert cluster.type == cluster_pb2.Cluster.STRICT_DNS
    (endpoint,) = cluster.load_assignment.endpoints[0].lb_endpoints
    address = endpoint.endpoint.address.socket_address
    assert (address.address, address.port_value) == ("db.example.com", 6379)
    # A wildcard host on a TCP port carries no name: no listener.
    assert f"outbound|{vip(t, wild_tcp)}|6380" not in snap.get(LISTENER)


def test_a_sidecar_scope_decides_what_gets_listeners() -> None:
    sidecar = Sidecar("only-web", egress=(EgressListener(("./web",)),), origin=Origin("s.yaml", 1))
    m = mesh(sidecars=(sidecar,))
    t, snap = snapshot(m)
    web = m.service_by_name("default", "web")
    assert web is not None
    assert list(vip_listeners(snap)) == [f"outbound|{vip(t, web)}|9080"]


def test_a_node_block_smaller_than_the_settings_is_refused() -> None:
    small = dataclasses.replace(NODE, virtual_addresses="127.9.0.0/24")
    with pytest.raises(TranslationError) as err:
        snapshot(mesh(), small)
    text = str(err.value)
    assert "127.9.0.0/24" in text and BLOCK in text


def test_a_larger_node_block_keeps_each_slot() -> None:
    wide = dataclasses.replace(NODE, virtual_addresses="127.0.0.0/8")
    m = mesh()
    t, snap = snapshot(m, wide)
    slots = t.virtual_addresses().slots
    for svc in m.services:
        address = AddressBlock.parse("127.0.0.0/8").address(slots[svc.key])
        assert any(n.startswith(f"outbound|{address}|") for n in snap.get(LISTENER))


@pytest.mark.parametrize(
    ("node", "pinned", "field"),
    [
        # A pinned address equal to outbound_ip on a port with a per-port listener.
        (NODE, "127.0.0.1", "address"),
        # A pinned address equal to instance_ip on the node's own port.
        (NODE, "127.0.0.2", "address"),
        # A wildcard outbound_ip overlaps every address.
        (dataclasses.replace(NODE, outbound_ip="0.0.0.0"), "", "outbound_ip"),
        # A wildcard instance_ip collides on the node's own port.
        (dataclasses.replace(NODE, instance_ip="0.0.0.0"), "", "instance_ip"),
    ],
)
def test_bind_collisions_are_errors(node: NodeClass, pinned: str, field: str) -> None:
    port = 7000 if pinned != "127.0.0.1" else 9080
    extra = service("pinned", http(port), endpoints=(Endpoint("10.0.4.1"),))
    if pinned:
        extra = dataclasses.replace(extra, addresses=(pinned,))
    with pytest.raises(TranslationError) as err:
        snapshot(mesh(extra), node)
    assert field in {p.field for p in err.value.problems}
    assert "virtual-address listener" in str(err.value)


def test_access_log_and_old_bootstraps_and_disabled_dns() -> None:
    config = MeshConfig(access_log=AccessLog(enabled=True))
    m = mesh()
    t, snap = snapshot(m, config=config)
    web = m.service_by_name("default", "web")
    assert web is not None
    assert hcm(listener(snap, f"outbound|{vip(t, web)}|9080")).access_log
    db = m.service_by_name("default", "db")
    assert db is not None
    assert proxies(listener(snap, f"outbound|{vip(t, db)}|5432"))[0].access_log
    # A node without the metadata gets what it got before; so does one under enabled=false.
    off = MeshConfig(dns=MeshDNS(enabled=False))
    plain = MeshTranslation(m).snapshot_for(PLAIN)
    disabled = MeshTranslation(m, mesh_config=off).snapshot_for(NODE)
    assert set(plain.get(LISTENER)) == set(disabled.get(LISTENER))
    assert not vip_listeners(plain)
    assert set(snap.get(LISTENER)) - set(vip_listeners(snap)) == set(plain.get(LISTENER))


def test_classes_with_equal_inputs_share_the_listeners() -> None:
    m = mesh(service("other", http(7100, 17100), endpoints=(Endpoint("127.0.0.3"),)))
    t = MeshTranslation(m)
    one = t.snapshot_for(NODE).get(LISTENER)
    two = t.snapshot_for(dataclasses.replace(NODE, service="other", instance_ip="127.0.0.3"))
    shared = set(vip_listeners_of(one)) & set(vip_listeners_of(two.get(LISTENER)))
    assert len(shared) == 5
    assert all(one[n] is two.get(LISTENER)[n] for n in shared)


def vip_listeners_of(listeners: dict[str, Any]) -> list[str]:
    return [n for n in listeners if n.startswith("outbound|127.240.")]


def test_incremental_translation_matches_a_cold_one() -> None:
    def weights(v1: int) -> VirtualService:
        route = (to("db", "v1", v1), to("db", "v2", 100 - v1))
        return VirtualService("db", hosts=("db",), tcp=(L4Route(route=route),))

    first = mesh(vss=(weights(80),))
    t1 = MeshTranslation(first)
    before = t1.snapshot_for(NODE).get(LISTENER)
    second = mesh(vss=(weights(20),))
    t2 = MeshTranslation(second, previous=t1)
    after = t2.snapshot_for(NODE).get(LISTENER)
    cold = MeshTranslation(second).snapshot_for(NODE).get(LISTENER)
    assert {n: r.message for n, r in after.items()} == {n: r.message for n, r in cold.items()}
    db = second.service_by_name("default", "db")
    web = second.service_by_name("default", "web")
    assert db is not None and web is not None
    db_name, web_name = f"outbound|{vip(t2, db)}|5432", f"outbound|{vip(t2, web)}|9080"
    assert after[db_name] is not before[db_name]
    assert [c.weight for c in proxies(after[db_name].message)[0].weighted_clusters.clusters] == [
        20,
        80,
    ]
    assert after[web_name] is before[web_name]  # untouched: taken over, not rebuilt


def test_envoy_validates_a_sidecar_with_virtual_addresses(tmp_path: Path) -> None:
    """A real Envoy accepts every kind of VIP listener at once."""
    vs = VirtualService(
        "db", hosts=("db",), tcp=(L4Route(route=(to("db", "v1", 3), to("db", "v2", 1))),)
    )
    extra = (
        service("cache", tcp(5432), endpoints=(Endpoint("10.0.3.1"),)),
        entry_service("api.example.com", http(80)),
        entry_service("*.tls.example.com", tls(443)),
        entry_service("db.example.com", tcp(6379)),
        dataclasses.replace(service("tls-a", tls(8444)), addresses=("127.241.0.9",)),
        dataclasses.replace(service("tls-b", tls(8444)), addresses=("127.241.0.9",)),
    )
    config = MeshConfig(access_log=AccessLog(enabled=True))
    bootstrap = render_static(mesh(*extra, vss=(vs,)), NODE, admin_port=0, mesh_config=config)
    names = [lst["name"] for lst in bootstrap["static_resources"]["listeners"]]
    assert sum(n.startswith("outbound|127.24") for n in names) == 9
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(bootstrap))
    proc = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
