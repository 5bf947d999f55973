"""A sidecar's DNS listener (``translate/dns.py``, ``ClassParts.dns_listener``): the names
it answers per namespace and scope, wildcards, pinned addresses, AAAA, the node's block,
upstream resolvers, TTL, sharing between classes and reloads, Envoy's acceptance; and the
node metadata that asks for it (``dns``, ``dns_upstream``), hostile values refused."""

from __future__ import annotations

import dataclasses
import math
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.udp.dns_filter.v3 import dns_filter_pb2
from envoy.extensions.network.dns_resolver.cares.v3 import cares_dns_resolver_pb2
from google.protobuf import struct_pb2
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzzing import fuzz_settings
from tests.harness import envoy_accepts
from tests.translate.meshes import http, service
from xdsd.errors import TranslationError
from xdsd.model import Mesh, Origin, Port, Protocol, Service
from xdsd.model.mesh_config import AccessLog, MeshConfig, MeshDNS, PrometheusStats
from xdsd.model.networking import EgressListener, EntryPort, EntryResolution, ServiceEntry, Sidecar
from xdsd.resources import LISTENER, Resource
from xdsd.sources.service_entry import entry_services
from xdsd.translate import MeshTranslation, NodeClass, render_static
from xdsd.translate.dns import (
    MAX_PENDING_LOOKUPS,
    DnsName,
    dns_listener_name,
    dns_table,
    resolver_address,
    service_names,
)
from xdsd.translate.node import ClientKind, ConfigSourceKind, Role, node_class_from_node
from xdsd.translate.virtual_addresses import AddressBlock, allocate

DNS = "127.0.0.1:15053"
NODE = NodeClass("productpage", instance_ip="127.0.0.2", outbound_ip="127.0.0.10", dns=DNS)
TCP = Port(5432, Protocol.TCP, "tcp")


def entry(name: str, *hosts: str, resolution: EntryResolution = EntryResolution.DNS) -> Any:
    return ServiceEntry(
        name,
        hosts=hosts,
        ports=(EntryPort(80, Protocol.HTTP, "http", 0, "HTTP"),),
        resolution=resolution,
        origin=Origin(f"rules/{name}.yaml", 1),
    )


def mesh_of(*services: Service, entries: tuple[ServiceEntry, ...] = (), **kw: Any) -> Mesh:
    found = [s for e in entries for s in entry_services(e, ())[0]]
    return Mesh(services=(*services, *found), service_entries=entries, **kw)


BOOKINFO = mesh_of(
    service("productpage", http(9080)),
    service("reviews", http(9080)),
    service("reviews", http(9080), namespace="shop", hosts=("reviews.corp",)),
    service("db", TCP, namespace="shop"),
    entries=(entry("api", "api.example.com"), entry("wild", "*.example.org")),
)


def dns_listener(snapshot: Any) -> Any:
    """The DNS listener of a snapshot (None when it has none) and its filter config."""
    found = [r for r in snapshot.get(LISTENER).values() if r.name.startswith("dns|")]
    assert len(found) <= 1
    return found[0] if found else None


def filter_config(resource: Resource) -> Any:
    listener = resource.message
    config = dns_filter_pb2.DnsFilterConfig()
    assert [f.name for f in listener.listener_filters] == ["envoy.filters.udp.dns_filter"]
    listener.listener_filters[0].typed_config.Unpack(config)
    return config


def table_of(resource: Resource) -> dict[str, list[str]]:
    domains = filter_config(resource).server_config.inline_dns_table.virtual_domains
    return {d.name: list(d.endpoint.address_list.address) for d in domains}


def translate(mesh: Mesh, node: NodeClass = NODE, **dns: Any) -> Resource:
    config = MeshConfig(dns=MeshDNS(**dns))
    found = dns_listener(MeshTranslation(mesh, mesh_config=config).snapshot_for(node))
    assert found is not None
    return found


def vip(mesh: Mesh, namespace: str, name: str, block: str = "127.240.0.0/16") -> str:
    """The address the allocation gives a service in ``block``."""
    [found] = [s for s in mesh.services if (s.namespace, s.name) == (namespace, name)]
    virtual = allocate(mesh.services, AddressBlock.parse("127.240.0.0/16"))
    return AddressBlock.parse(block).address(virtual.slots[found.key])


def test_names_of_services_and_entries() -> None:
    reviews = service("reviews", http(9080), namespace="shop", hosts=("reviews.corp",))
    assert service_names(reviews, "shop") == (
        "reviews.shop.svc.cluster.local",
        "reviews.shop.svc",
        "reviews.shop",
        "reviews",
        "reviews.corp",
    )
    # the short name means the caller's namespace only
    assert "reviews" not in service_names(reviews, "default")
    assert "reviews.corp" in service_names(reviews, "default")
    [wild] = entry_services(entry("wild", "*.example.org"), ())[0]
    assert service_names(wild, "default") == ("*.example.org",)


def test_the_listener_answers_every_name_with_its_vip() -> None:
    resource = translate(BOOKINFO)
    assert resource.name == dns_listener_name("127.0.0.1", 15053) == "dns|127.0.0.1|15053"
    sock = resource.message.address.socket_address
    assert (sock.protocol, sock.address, sock.port_value) == (sock.UDP, "127.0.0.1", 15053)
    assert resource.message.enable_reuse_port.value  # Envoy refuses UDP without it
    table = table_of(resource)
    page, reviews = vip(BOOKINFO, "default", "productpage"), vip(BOOKINFO, "default", "reviews")
    shop = vip(BOOKINFO, "shop", "reviews")
    assert table["productpage"] == table["productpage.default"] == [page]
    assert table["reviews"] == table["reviews.default.svc.cluster.local"] == [reviews]
    assert table["reviews.default.svc"] == [reviews]
    assert table["reviews.shop"] == table["reviews.corp"] == [shop]
    assert "db" not in table and table["db.shop.svc.cluster.local"] != [shop]
    assert table["api.example.com"] == [vip(BOOKINFO, "default", "api.example.com")]
    assert table["*.example.org"] == [vip(BOOKINFO, "default", "*.example.org")]
    assert len({a for v in table.values() for a in v}) == 6  # one VIP per service
    assert list(table) == sorted(table)  # deterministic order
    assert all(a.startswith("127.240.") for v in table.values() for a in v)


def test_short_names_follow_the_nodes_namespace() -> None:
    table = table_of(translate(BOOKINFO, dataclasses.replace(NODE, namespace="shop")))
    assert table["reviews"] == [vip(BOOKINFO, "shop", "reviews")]
    assert table["db"] == [vip(BOOKINFO, "shop", "db")]
    assert "productpage" not in table
    assert table["productpage.default"] == [vip(BOOKINFO, "default", "productpage")]


def test_the_sidecar_scope_decides_what_is_answered() -> None:
    sidecar = Sidecar("s", egress=(EgressListener(("./*", "shop/db.shop")),))
    mesh = dataclasses.replace(BOOKINFO, sidecars=(sidecar,))
    table = table_of(translate(mesh))
    assert {"productpage", "reviews", "db.shop"} <= set(table)
    assert "reviews.shop" not in table and "reviews.corp" not in table
    assert "api.example.com" in table  # entries live in the default namespace here
    hidden = Sidecar("s", egress=(EgressListener(("shop/*",)),))
    table = table_of(translate(dataclasses.replace(BOOKINFO, sidecars=(hidden,))))
    assert "reviews" not in table and "reviews.default" not in table
    assert "reviews.shop" in table


def test_a_resolution_none_wildcard_with_a_tcp_port_is_left_to_the_upstream() -> None:
    tcp_wild = ServiceEntry(
        "tcpwild",
        hosts=("*.db.example.net",),
        ports=(EntryPort(5432, Protocol.TCP, "tcp", 0, "TCP"),),
        resolution=EntryResolution.NONE,
        origin=Origin("rules/tcpwild.yaml", 1),
    )
    http_wild = entry("httpwild", "*.web.example.net", resolution=EntryResolution.NONE)
    table = table_of(translate(mesh_of(entries=(tcp_wild, http_wild))))
    assert "*.db.example.net" not in table  # forwarded: the app reaches the real address
    assert "*.web.example.net" in table


def test_pinned_addresses_and_ipv6() -> None:
    pinned = dataclasses.replace(
        service("pinned", http(80)), addresses=("10.9.0.1", "fd00:9::1", "10.8.0.0/24")
    )
    mesh = mesh_of(pinned, service("free", http(81)))
    table = table_of(translate(mesh, virtual_addresses_v6="fd00:240::/96"))
    assert table["pinned"] == ["10.9.0.1", "fd00:9::1"]  # a CIDR is no answer
    [v4, v6] = table["free"]
    slot = AddressBlock.parse("127.240.0.0/16").slot_of(v4)
    assert v6 == AddressBlock.parse("fd00:240::/96").address(slot or 0)
    # no IPv6 block: no AAAA for allocated addresses
    assert len(table_of(translate(mesh))["free"]) == 1


def test_the_nodes_block_moves_every_vip_to_the_same_slot() -> None:
    node = dataclasses.replace(NODE, virtual_addresses="127.241.0.0/16")
    table = table_of(translate(BOOKINFO, node))
    assert table["reviews"] == [vip(BOOKINFO, "default", "reviews", "127.241.0.0/16")]
    small = dataclasses.replace(NODE, virtual_addresses="127.241.0.0/24")
    with pytest.raises(TranslationError) as err:
        translate(BOOKINFO, small)
    assert [(p.path, p.field) for p in err.value.problems] == [
        ("<node>", "metadata.virtual_addresses")
    ]
    with pytest.raises(TranslationError) as err:
        translate(BOOKINFO, virtual_addresses_v6="fd00::/120")
    assert [(p.path, p.field) for p in err.value.problems] == [
        ("<settings>", "mesh.dns.virtual_addresses_v6")
    ]


def test_ttl_and_upstream_resolvers() -> None:
    resource = translate(BOOKINFO, ttl=timedelta(seconds=7), upstream=("10.0.0.53",))
    config = filter_config(resource)
    ttls = {d.answer_ttl.seconds for d in config.server_config.inline_dns_table.virtual_domains}
    assert ttls == {7}
    assert config.client_config.max_pending_lookups == MAX_PENDING_LOOKUPS
    assert _resolvers(config) == [("10.0.0.53", 53)]
    node = dataclasses.replace(NODE, dns_upstream=("127.0.0.53", "[::1]:5353"))
    config = filter_config(translate(BOOKINFO, node, upstream=("10.0.0.53",)))
    assert _resolvers(config) == [("127.0.0.53", 53), ("::1", 5353)]
    # nothing given: forwarding stays on, to the host's resolv.conf (Envoy's default)
    config = filter_config(translate(BOOKINFO))
    assert config.HasField("client_config")
    assert not config.client_config.HasField("typed_dns_resolver_config")


def _resolvers(config: Any) -> list[tuple[str, int]]:
    cares = cares_dns_resolver_pb2.CaresDnsResolverConfig()
    config.client_config.typed_dns_resolver_config.typed_config.Unpack(cares)
    return [(r.socket_address.address, r.socket_address.port_value) for r in cares.resolvers]


@pytest.mark.parametrize(
    ("node", "settings", "where"),
    [
        (dataclasses.replace(NODE, dns_upstream=("127.0.0.1:15053",)), (), "<node>"),
        (dataclasses.replace(NODE, dns="0.0.0.0:53", dns_upstream=("127.0.0.1",)), (), "<node>"),
        (NODE, ("10.0.0.53", "127.0.0.1:15053"), "<settings>"),
    ],
)
def test_an_upstream_that_is_the_listener_itself_is_refused(
    node: NodeClass, settings: tuple[str, ...], where: str
) -> None:
    with pytest.raises(TranslationError) as err:
        translate(BOOKINFO, node, upstream=settings)
    [problem] = err.value.problems
    assert problem.path == where and "own DNS listener" in problem.message


def test_equal_inputs_share_one_listener_across_classes_and_reloads() -> None:
    first = MeshTranslation(BOOKINFO)
    one = dns_listener(first.snapshot_for(NODE))
    other = dns_listener(first.snapshot_for(dataclasses.replace(NODE, service="reviews")))
    assert one is other
    shop = dns_listener(first.snapshot_for(dataclasses.replace(NODE, namespace="shop")))
    assert shop is not one and shop.digest != one.digest
    again = dns_listener(MeshTranslation(BOOKINFO, previous=first).snapshot_for(NODE))
    assert again is one
    grown = mesh_of(*BOOKINFO.services, service("ratings", http(9080)))
    added = dns_listener(MeshTranslation(grown, previous=first).snapshot_for(NODE))
    assert added is not one and "ratings" in table_of(added)


@pytest.mark.parametrize(
    ("node", "config"),
    [
        (dataclasses.replace(NODE, dns=""), MeshConfig()),
        (NODE, MeshConfig(dns=MeshDNS(enabled=False))),
        (dataclasses.replace(NODE, client=ClientKind.MOSN), MeshConfig()),
        (dataclasses.replace(NODE, client=ClientKind.GRPC), MeshConfig()),
        (dataclasses.replace(NODE, role=Role.GATEWAY), MeshConfig()),
    ],
)
def test_who_gets_no_dns_listener(node: NodeClass, config: MeshConfig) -> None:
    snapshot = MeshTranslation(BOOKINFO, mesh_config=config).snapshot_for(node)
    assert dns_listener(snapshot) is None


def test_proxy_defaults_leave_the_udp_listener_alone() -> None:
    """An access log decorates listeners' HCMs and TCP proxies; the DNS listener has
    neither and comes out as it went in. A stats listener on the DNS port is TCP and
    does not collide with it."""
    config = MeshConfig(
        access_log=AccessLog(enabled=True), prometheus=PrometheusStats(enabled=True, port=15053)
    )
    node = dataclasses.replace(NODE, dns="127.0.0.2:15053")
    snapshot = MeshTranslation(BOOKINFO, mesh_config=config).snapshot_for(node)
    plain = dns_listener(MeshTranslation(BOOKINFO).snapshot_for(node))
    assert dns_listener(snapshot).digest == plain.digest
    assert "prometheus|127.0.0.2|15053" in snapshot.get(LISTENER)


def test_envoy_accepts_a_sidecar_with_a_dns_listener(tmp_path: Path) -> None:
    node = dataclasses.replace(NODE, dns_upstream=("127.0.0.53", "[::1]:5353"))
    pinned = dataclasses.replace(service("pinned", http(80)), addresses=("fd00:9::1",))
    mesh = mesh_of(*BOOKINFO.services, pinned, entries=BOOKINFO.service_entries)
    config = MeshConfig(dns=MeshDNS(virtual_addresses_v6="fd00:240::/96"))
    bootstrap = render_static(mesh, node, admin_port=0, mesh_config=config)
    names = [listener["name"] for listener in bootstrap["static_resources"]["listeners"]]
    assert "dns|127.0.0.1|15053" in names
    envoy_accepts(bootstrap, tmp_path / "envoy.json")
    # and with the host's resolvers (no typed resolver config)
    envoy_accepts(render_static(BOOKINFO, NODE, admin_port=0), tmp_path / "plain.json")


def test_dns_table_is_a_pure_function_of_its_inputs() -> None:
    virtual = allocate(BOOKINFO.services, AddressBlock.parse("127.240.0.0/16"))
    block = AddressBlock.parse("127.240.0.0/16")
    one = dns_table(BOOKINFO.services, "default", virtual, block)
    assert one == dns_table(reversed(BOOKINFO.services), "default", virtual, block)
    assert all(isinstance(e, DnsName) for e in one)
    hash(one)  # a memo key


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.53", ("10.0.0.53", 53)),
        ("10.0.0.53:5353", ("10.0.0.53", 5353)),
        ("::1", ("::1", 53)),
        ("[::1]:5353", ("::1", 5353)),
    ],
)
def test_resolver_addresses(text: str, expected: tuple[str, int]) -> None:
    assert resolver_address(text) == expected


@pytest.mark.parametrize("text", ["", "resolver", "10.0.0.53:0", "[::1]", "::1:53x", "1.2.3.4:"])
def test_bad_resolver_addresses(text: str) -> None:
    with pytest.raises(ValueError):
        resolver_address(text)


# -- node metadata ----------------------------------------------------------------------


def make_node(**metadata: object) -> Any:
    node = base_pb2.Node(id="sidecar-1", cluster="productpage", user_agent_name="envoy")
    node.metadata.CopyFrom(struct_pb2.Struct())
    node.metadata.update(metadata)
    return node


def test_node_metadata_asks_for_the_dns_listener() -> None:
    got = node_class_from_node(
        make_node(dns="127.0.0.1:15053", dns_upstream=["10.0.0.53", "[fd00::53]:5353"]),
        config_source=ConfigSourceKind.ADS,
    )
    assert (got.dns, got.dns_upstream) == ("127.0.0.1:15053", ("10.0.0.53", "[fd00::53]:5353"))
    assert "dns=127.0.0.1:15053" in str(got)
    plain = node_class_from_node(make_node(), config_source=ConfigSourceKind.ADS)
    assert (plain.dns, plain.dns_upstream) == ("", ())


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"dns": "127.0.0.1"}, "metadata.dns"),  # no port
        ({"dns": "127.0.0.1:0"}, "metadata.dns"),
        ({"dns": "127.0.0.1:65536"}, "metadata.dns"),
        ({"dns": "localhost:53"}, "metadata.dns"),
        ({"dns": "::1:53"}, "metadata.dns"),  # IPv6 needs brackets
        ({"dns": "[fe80::1%eth0]:53"}, "metadata.dns"),  # a scope Envoy cannot bind
        ({"dns": "0.0.0.0:53"}, "metadata.dns"),  # an open resolver on every interface
        ({"dns": "[::]:53"}, "metadata.dns"),
        ({"dns": "224.0.0.1:53"}, "metadata.dns"),
        ({"dns": 53.0}, "metadata.dns"),
        ({"dns": None}, "metadata.dns"),
        ({"dns": "127.0.0.1:15053\n"}, "metadata.dns"),
        ({"dns": "1" * 5000}, "metadata.dns"),
        ({"dns_upstream": "10.0.0.53"}, "metadata.dns_upstream"),  # not a list
        ({"dns_upstream": ["10.0.0.53", 53.0]}, "metadata.dns_upstream"),
        ({"dns_upstream": ["resolver.corp"]}, "metadata.dns_upstream"),
        ({"dns_upstream": [""]}, "metadata.dns_upstream"),
        ({"dns_upstream": ["10.0.0.53:0"]}, "metadata.dns_upstream"),
        ({"dns_upstream": ["0.0.0.0"]}, "metadata.dns_upstream"),
        ({"dns_upstream": ["224.0.0.251:5353"]}, "metadata.dns_upstream"),
        ({"dns_upstream": ["fe80::1%eth0"]}, "metadata.dns_upstream"),
        ({"dns_upstream": ["10.0.0.53"] * 9}, "metadata.dns_upstream"),  # at most 8
        ({"dns_upstream": [None]}, "metadata.dns_upstream"),
        ({"dns_upstream": [math.nan]}, "metadata.dns_upstream"),
        ({"dns_upstream": {"a": "10.0.0.53"}}, "metadata.dns_upstream"),
    ],
)
def test_hostile_dns_metadata_refuses_the_node(metadata: dict[str, object], field: str) -> None:
    with pytest.raises(TranslationError) as err:
        node_class_from_node(make_node(**metadata), config_source=ConfigSourceKind.ADS)
    assert [(p.path, p.field) for p in err.value.problems] == [("<node>", field)]


_ADDRESS_TEXT = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"\[?[0-9a-f:.%]{0,30}\]?(:[0-9]{0,6})?", fullmatch=True),
    st.sampled_from(["127.0.0.1:53", "[::1]:15053", "10.0.0.1", "0.0.0.0:53", "[fe80::1%lo]:53"]),
)


@fuzz_settings()
@given(dns=_ADDRESS_TEXT, upstream=st.lists(_ADDRESS_TEXT, max_size=3))
def test_fuzz_dns_metadata_is_refused_or_translated(dns: str, upstream: list[str]) -> None:
    """Whatever a node sends as ``dns``/``dns_upstream``: its class is refused with the
    field named, or its DNS listener is built (or refused as a loop) and Envoy-shaped."""
    try:
        node = node_class_from_node(
            make_node(dns=dns, dns_upstream=upstream), config_source=ConfigSourceKind.ADS
        )
    except TranslationError as err:
        assert {p.field for p in err.problems} <= {"metadata.dns", "metadata.dns_upstream"}
        return
    node = dataclasses.replace(node, instance_ip="127.0.0.2", outbound_ip="127.0.0.10")
    try:
        snapshot = MeshTranslation(BOOKINFO).snapshot_for(node)
    except TranslationError as err:
        assert [p.field for p in err.problems] == ["metadata.dns_upstream"]
        return
    found = dns_listener(snapshot)
    assert (found is None) == (not dns)
    if found is not None:
        resolvers = filter_config(found).client_config
        assert resolvers.max_pending_lookups == MAX_PENDING_LOOKUPS
