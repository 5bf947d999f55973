"""Capture: the original-destination listener of ``xdsd capture``'s rules, the virtual
listeners that take a connection to a service's endpoint address, and what a real Envoy
makes of them."""

from __future__ import annotations

import dataclasses
import json
import math
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
from tests.translate.test_node import make_node
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
    RouteDestination,
    Subset,
    VirtualService,
)
from xdsd.model.mesh_config import MeshConfig
from xdsd.model.networking import EgressListener, OutboundPolicy, Sidecar
from xdsd.resources import CLUSTER, LISTENER, Resource
from xdsd.translate import MeshTranslation, NodeClass
from xdsd.translate.capture import (
    BLACKHOLE_CLUSTER,
    CAPTURE_LISTENER,
    PASSTHROUGH_CLUSTER,
    destinations,
)
from xdsd.translate.node import ClientKind, ConfigSourceKind, Role, node_class_from_node
from xdsd.translate.static import render_static

CAPTURE = 15006
NODE = NodeClass(service="app", capture=CAPTURE)
DB, WEB, OTHER = FQDN.format("db"), FQDN.format("web"), FQDN.format("other")


def base_services() -> list[Any]:
    """db (TCP 5432 at two endpoints, the second serving 6432), web (HTTP 9080, target
    8080 on its endpoint, a pinned address), other (TCP 7000)."""
    return [
        service(
            "db",
            tcp(5432),
            endpoints=(
                Endpoint("10.0.0.1", (("version", "v1"),)),
                Endpoint("10.0.0.2", (("version", "v2"),), ports=(("tcp", 6432),)),
            ),
        ),
        dataclasses.replace(
            service(
                "web",
                http(9080),
                endpoints=(Endpoint("10.0.2.1", ports=(("http", 8080),)),),
            ),
            addresses=("192.168.7.7",),
        ),
        service("other", tcp(7000), endpoints=(Endpoint("10.0.3.1"),)),
    ]


def mesh(*extra: Any, **fields: Any) -> Mesh:
    return Mesh(services=(*base_services(), *extra), **fields)


def listeners(snapshot_mesh: Mesh, node: NodeClass = NODE, **kw: Any) -> dict[str, Resource]:
    return MeshTranslation(snapshot_mesh, **kw).snapshot_for(node).get(LISTENER)


def chains(listener: Any) -> list[tuple[tuple[str, ...], tuple[str, ...], str]]:
    """Each filter chain as (destinations, server names, where it goes: a cluster, the
    weighted clusters, or ``rds:NAME``), then the default chain's."""
    out = []
    for chain in [*listener.filter_chains, listener.default_filter_chain]:
        match = chain.filter_chain_match
        cidrs = tuple(f"{r.address_prefix}/{r.prefix_len.value}" for r in match.prefix_ranges)
        typed = chain.filters[0].typed_config
        if typed.Is(hcm_pb2.HttpConnectionManager.DESCRIPTOR):
            hcm = hcm_pb2.HttpConnectionManager()
            typed.Unpack(hcm)
            target = f"rds:{hcm.rds.route_config_name}"
        else:
            proxy = tcp_proxy_pb2.TcpProxy()
            typed.Unpack(proxy)
            target = proxy.cluster or ",".join(
                f"{c.name}={c.weight}" for c in proxy.weighted_clusters.clusters
            )
        out.append((cidrs, tuple(match.server_names), target))
    return out


def test_old_bootstraps_get_nothing_new() -> None:
    """No ``capture`` in the metadata: not one capture listener or cluster."""
    snapshot = MeshTranslation(mesh()).snapshot_for(NodeClass(service="app"))
    assert not any("capture" in name for name in snapshot.get(LISTENER))
    assert PASSTHROUGH_CLUSTER not in snapshot.get(CLUSTER)
    assert BLACKHOLE_CLUSTER not in snapshot.get(CLUSTER)


def test_capture_listener_hands_off_by_original_destination() -> None:
    snapshot = MeshTranslation(mesh()).snapshot_for(NODE)
    found = snapshot.get(LISTENER)
    listener = found[CAPTURE_LISTENER].message
    assert listener.address.socket_address.address == "127.0.0.1"
    assert listener.address.socket_address.port_value == CAPTURE
    assert listener.use_original_dst.value is True
    assert not listener.HasField("bind_to_port")  # it is bound
    # a connection dialled to the listener itself goes nowhere; the rest passes through
    assert listener.filter_chains[0].filter_chain_match.destination_port.value == CAPTURE
    assert chains(listener) == [
        (("127.0.0.1/32",), (), BLACKHOLE_CLUSTER),
        ((), (), PASSTHROUGH_CLUSTER),
    ]
    passthrough = snapshot.get(CLUSTER)[PASSTHROUGH_CLUSTER].message
    assert passthrough.type == cluster_pb2.Cluster.ORIGINAL_DST
    assert passthrough.lb_policy == cluster_pb2.Cluster.CLUSTER_PROVIDED
    assert BLACKHOLE_CLUSTER in snapshot.get(CLUSTER)


def test_virtual_listeners_by_destination_port() -> None:
    """One unbound listener per port a service is dialled on: endpoints on the port they
    serve (db's second endpoint on 6432, web's on 8080), pinned addresses
    on the service port."""
    found = listeners(mesh())
    virtual = {n: r.message for n, r in found.items() if n.startswith("capture|")}
    assert sorted(virtual) == [
        "capture|5432",
        "capture|6432",
        "capture|7000",
        "capture|8080",
        "capture|9080",
    ]
    for listener in virtual.values():
        assert listener.bind_to_port.value is False
        assert listener.address.socket_address.address == "0.0.0.0"
    db = f"outbound|5432||{DB}"
    assert chains(virtual["capture|5432"]) == [
        (("10.0.0.1/32",), (), db),
        ((), (), PASSTHROUGH_CLUSTER),
    ]
    assert chains(virtual["capture|6432"])[0] == (("10.0.0.2/32",), (), db)
    assert chains(virtual["capture|8080"]) == [
        (("10.0.2.1/32",), (), "rds:9080"),
        ((), (), PASSTHROUGH_CLUSTER),
    ]
    assert chains(virtual["capture|9080"])[0] == (("192.168.7.7/32",), (), "rds:9080")


def test_tcp_rules_apply_to_a_connection_to_an_endpoint() -> None:
    """db's VirtualService sends its traffic to other: so does a connection to db's
    endpoint address; a rule's destinationSubnets keep their own chain."""
    rule = VirtualService(
        "db",
        hosts=("db",),
        tcp=(
            L4Route(
                (L4Match(destination_subnets=("172.16.0.0/16",)),),
                (RouteDestination(Destination("db", "v1"), 100),),
            ),
            L4Route(
                (),
                (
                    RouteDestination(Destination("other", port=7000), 80),
                    RouteDestination(Destination("db", "v2"), 20),
                ),
            ),
        ),
        origin=Origin("vs.yaml", 1),
    )
    subsets = DestinationRule(
        "db", "db", subsets=(Subset("v1", (("version", "v1"),)), Subset("v2", (("version", "v2"),)))
    )
    found = listeners(mesh(virtual_services=(rule,), destination_rules=(subsets,)))
    weighted = f"outbound|7000||{OTHER}=80,outbound|5432|v2|{DB}=20"
    assert chains(found["capture|5432"].message) == [
        (("172.16.0.0/16",), (), f"outbound|5432|v1|{DB}"),
        (("10.0.0.1/32",), (), weighted),
        ((), (), PASSTHROUGH_CLUSTER),
    ]


def test_registry_only_sends_unknown_destinations_to_the_black_hole() -> None:
    config = MeshConfig(outbound_traffic_policy=OutboundPolicy.REGISTRY_ONLY)
    snapshot = MeshTranslation(mesh(), mesh_config=config).snapshot_for(NODE)
    found = snapshot.get(LISTENER)
    for name in (CAPTURE_LISTENER, "capture|5432", "capture|8080"):
        assert chains(found[name].message)[-1] == ((), (), BLACKHOLE_CLUSTER)
    assert PASSTHROUGH_CLUSTER not in snapshot.get(CLUSTER)


def test_sidecar_scope_decides_what_is_captured() -> None:
    """A Sidecar letting the node reach db only: other and web go to the default chain."""
    sidecar = Sidecar("only-db", egress=(EgressListener(("./db",)),))
    found = listeners(mesh(sidecars=(sidecar,)))
    virtual = sorted(n for n in found if n.startswith("capture|"))
    assert virtual == ["capture|5432", "capture|6432"]


def test_two_services_at_one_address_first_keeps_it() -> None:
    """Two TCP services on different ports can share an endpoint; two services dialled
    at the same address and port cannot both have it (Envoy refuses equal matches)."""
    twin = service("twin", tcp(6432), endpoints=(Endpoint("10.0.0.2"),))
    found = listeners(mesh(twin))
    assert chains(found["capture|6432"].message)[:-1] == [
        (("10.0.0.2/32",), (), f"outbound|5432||{DB}")
    ]


def test_tls_services_keep_their_server_names() -> None:
    a = service("tls-a", Port(8443, Protocol.TLS, "tls"), endpoints=(Endpoint("10.0.1.1"),))
    b = service("tls-b", Port(8443, Protocol.TLS, "tls"), endpoints=(Endpoint("10.0.1.1"),))
    found = listeners(mesh(a, b))
    listener = found["capture|8443"].message
    # one address, two services on a TLS port: the first keeps it (no SNI rule here)
    assert chains(listener)[:-1] == [
        (("10.0.1.1/32",), (), f"outbound|8443||{FQDN.format('tls-a')}")
    ]


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        (dataclasses.replace(NODE, client=ClientKind.MOSN), False),
        (dataclasses.replace(NODE, client=ClientKind.GRPC), False),
        (dataclasses.replace(NODE, role=Role.GATEWAY), False),
        (dataclasses.replace(NODE, capture=0), False),
        (NODE, True),
    ],
)
def test_only_envoy_sidecars_capture(node: NodeClass, expected: bool) -> None:
    found = MeshTranslation(mesh()).snapshot_for(node).get(LISTENER)
    assert (CAPTURE_LISTENER in found) is expected


def test_wildcard_outbound_address_needs_no_virtual_listeners() -> None:
    node = dataclasses.replace(NODE, outbound_ip="0.0.0.0")
    found = listeners(mesh(), node)
    assert CAPTURE_LISTENER in found
    assert chains(found[CAPTURE_LISTENER].message)[0] == ((), (), BLACKHOLE_CLUSTER)
    assert not [n for n in found if n.startswith("capture|")]


@pytest.mark.parametrize(
    ("port", "words"),
    [
        (15001, "HTTP proxy listener"),
        (7000, "outbound listener of service port 7000"),
        (9080, "outbound listener of service port 9080"),
    ],
)
def test_a_capture_port_another_listener_binds_refuses_that_node(port: int, words: str) -> None:
    translation = MeshTranslation(mesh())
    with pytest.raises(TranslationError) as err:
        translation.snapshot_for(dataclasses.replace(NODE, capture=port))
    [problem] = err.value.problems
    assert (problem.path, problem.field) == ("<node>", "capture")
    assert words in problem.message
    assert CAPTURE_LISTENER in translation.snapshot_for(NODE).get(LISTENER)  # others served


def test_capture_port_on_the_inbound_listener_address() -> None:
    """A Sidecar leaving the node's own service out of its egress: no outbound listener
    on 15006, but the inbound one binds it on the same address."""
    own = service("app", http(15006), endpoints=(Endpoint("127.0.0.1"),))
    sidecar = Sidecar("only-db", egress=(EgressListener(("./db",)),))
    with pytest.raises(TranslationError, match=r"the inbound listener 127\.0\.0\.1:15006"):
        MeshTranslation(mesh(own, sidecars=(sidecar,))).snapshot_for(NODE)
    # on an address of its own the inbound listener does not collide
    elsewhere = dataclasses.replace(NODE, instance_ip="10.9.9.9")
    assert CAPTURE_LISTENER in listeners(mesh(own, sidecars=(sidecar,)), elsewhere)


@pytest.mark.parametrize(
    "value",
    [
        -1,
        65536,
        1.5,
        math.nan,
        math.inf,
        True,
        [15006],
        None,
        "",
        "-1",
        "65536",
        " 15006",
        "15006.0",
        "0x10",
        "\u0661\u0662",
        "1" * 10_000,
    ],
)
def test_hostile_capture_metadata_refuses_the_node(value: object) -> None:
    with pytest.raises(TranslationError) as err:
        node_class_from_node(make_node(capture=value), config_source=ConfigSourceKind.ADS)
    assert [p.field for p in err.value.problems] == ["metadata.capture"]


@pytest.mark.parametrize(("value", "port"), [(15006, 15006), ("15006", 15006), (0, 0)])
def test_capture_metadata_as_a_number_or_its_digits(value: object, port: int) -> None:
    """Envoy hands a YAML bootstrap's metadata scalars over as strings."""
    node = node_class_from_node(make_node(capture=value), config_source=ConfigSourceKind.ADS)
    assert node.capture == port


def test_shared_between_classes_and_translations() -> None:
    """Two classes with the same inputs get the very same listener objects, and so does
    the next translation of an unchanged mesh."""
    first = MeshTranslation(mesh())
    a = first.snapshot_for(NODE).get(LISTENER)
    b = first.snapshot_for(dataclasses.replace(NODE, service="other-app")).get(LISTENER)
    c = MeshTranslation(mesh(), previous=first).snapshot_for(NODE).get(LISTENER)
    for name in (CAPTURE_LISTENER, "capture|5432", "capture|8080"):
        assert a[name] is b[name] is c[name]


def test_destinations_of_a_service() -> None:
    db, web, _ = base_services()
    assert destinations(db, db.ports[0]) == {5432: ("10.0.0.1/32",), 6432: ("10.0.0.2/32",)}
    assert destinations(web, web.ports[0]) == {8080: ("10.0.2.1/32",), 9080: ("192.168.7.7/32",)}
    hostname = service("ext", tcp(1), endpoints=(Endpoint("db.example.com"), Endpoint("::1")))
    assert destinations(hostname, hostname.ports[0]) == {1: ("::1/128",)}


def test_envoy_accepts_capture(tmp_path: Path) -> None:
    """A real Envoy validates the capture listener and the virtual listeners of HTTP,
    TCP (weighted, with subnets) and TLS services, under both outbound policies."""
    tls = service("tls-a", Port(8443, Protocol.TLS, "tls"), endpoints=(Endpoint("10.0.1.1"),))
    rule = VirtualService(
        "tls",
        hosts=("tls-a",),
        tls=(
            L4Route(
                (L4Match(sni_hosts=("tls-a.example.com",)),),
                (RouteDestination(Destination("other", port=7000), 100),),
            ),
        ),
        origin=Origin("vs.yaml", 1),
    )
    for policy in OutboundPolicy:
        config = MeshConfig(outbound_traffic_policy=policy)
        boot = render_static(
            mesh(tls, virtual_services=(rule,)), NODE, admin_port=0, mesh_config=config
        )
        names = [listener["name"] for listener in boot["static_resources"]["listeners"]]
        assert "capture|8443" in names and CAPTURE_LISTENER in names
        path = tmp_path / f"envoy-{policy.value}.json"
        path.write_text(json.dumps(boot))
        proc = subprocess.run(
            [envoy_binary(), "--mode", "validate", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_http_services_of_a_port_share_one_chain() -> None:
    """Every HTTP service of a port routes by the same route configuration: one chain
    matching all their destinations (LDS stays small with many services)."""
    api = service("api", http(9080), endpoints=(Endpoint("10.0.4.1"), Endpoint("10.0.4.2")))
    found = listeners(mesh(api))
    assert chains(found["capture|9080"].message) == [
        (("10.0.4.1/32", "10.0.4.2/32", "192.168.7.7/32"), (), "rds:9080"),
        ((), (), PASSTHROUGH_CLUSTER),
    ]


def test_with_virtual_addresses_services_sharing_a_port_are_told_apart(tmp_path: Path) -> None:
    """A sidecar with virtual addresses may see two TCP services on one port (no per-port
    listener there): captured connections are told apart by the address dialled; a real
    Envoy accepts the VIP and capture listeners together."""
    twin = service("twin", tcp(7000), endpoints=(Endpoint("10.0.5.1"),))
    web2 = service("web2", http(7000), endpoints=(Endpoint("10.0.5.2"),))
    node = dataclasses.replace(NODE, virtual_addresses="127.240.0.0/16")
    snapshot = MeshTranslation(mesh(twin, web2)).snapshot_for(node)
    found = snapshot.get(LISTENER)
    assert "outbound|127.0.0.1|7000" not in found  # ambiguous: no per-port listener
    assert any(n.startswith("outbound|127.240.") for n in found)  # VIP listeners
    assert chains(found["capture|7000"].message) == [
        (("10.0.5.2/32",), (), "rds:7000"),
        (("10.0.3.1/32",), (), f"outbound|7000||{OTHER}"),
        (("10.0.5.1/32",), (), f"outbound|7000||{FQDN.format('twin')}"),
        ((), (), PASSTHROUGH_CLUSTER),
    ]
    boot = render_static(mesh(twin, web2), node, admin_port=0)
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(boot))
    proc = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
