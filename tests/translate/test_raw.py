"""Stage *raw*: the mesh's raw Envoy resources are added to every class, replace generated
ones, and what they reference is checked (``raw``, ``consistent``)."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from tests.translate.meshes import FQDN, bookinfo
from xdsd.errors import TranslationError
from xdsd.model import Mesh, Origin, RawResource
from xdsd.resources import CLUSTER, ENDPOINT, encode
from xdsd.translate import ClientKind, MeshTranslation, NodeClass

PRODUCTPAGE = NodeClass("productpage", instance_ip="127.0.0.2", outbound_ip="127.0.0.10")
REVIEWS_V1 = NodeClass(
    "reviews", labels=(("version", "v1"),), instance_ip="127.0.1.1", outbound_ip="127.0.0.11"
)
GRPC = NodeClass("productpage", client=ClientKind.GRPC)


def raw(message: Any, name: str, path: str = "envoy/raw.json") -> RawResource:
    type_url = "type.googleapis.com/" + message.DESCRIPTOR.full_name
    return RawResource(type_url, name, encode(message), Origin(path, 1))


def with_raw(*items: RawResource) -> Mesh:
    mesh = bookinfo()
    return Mesh(
        services=mesh.services,
        virtual_services=mesh.virtual_services,
        destination_rules=mesh.destination_rules,
        raw_resources=items,
    )


def static_cluster(name: str) -> Any:
    cluster = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.STATIC)
    cluster.load_assignment.cluster_name = name
    return cluster


def test_raw_resources_are_added_and_replace_generated_ones() -> None:
    mysql = "outbound|3306||" + FQDN.format("mysql")
    mesh = with_raw(
        raw(static_cluster("raw-extra"), "raw-extra"), raw(static_cluster(mysql), mysql)
    )
    translation = MeshTranslation(mesh)
    for node in (PRODUCTPAGE, GRPC):
        snap = translation.snapshot_for(node)
        assert snap.get(CLUSTER)["raw-extra"].message == static_cluster("raw-extra")
        assert snap.get(CLUSTER)[mysql].message.type == cluster_pb2.Cluster.STATIC
        assert mysql not in snap.get(ENDPOINT)  # no longer referenced
        snap.check_consistency()
    a = translation.snapshot_for(PRODUCTPAGE).get(CLUSTER)["raw-extra"]
    assert translation.snapshot_for(REVIEWS_V1).get(CLUSTER)["raw-extra"] is a


def test_raw_resource_with_a_dangling_reference_names_its_file() -> None:
    listener = listener_pb2.Listener(name="raw-listener")
    listener.address.socket_address.address = "127.0.0.1"
    listener.address.socket_address.port_value = 7777
    proxy = tcp_proxy_of_cluster("no-such-cluster")
    listener.filter_chains.add().filters.add(
        name="envoy.filters.network.tcp_proxy"
    ).typed_config.Pack(proxy)
    with pytest.raises(TranslationError) as err:
        MeshTranslation(with_raw(raw(listener, "raw-listener", "envoy/l.yaml"))).snapshot_for(
            PRODUCTPAGE
        )
    (problem,) = err.value.problems
    assert problem.path == "envoy/l.yaml" and "no-such-cluster" in problem.message


def tcp_proxy_of_cluster(cluster: str) -> Any:
    return tcp_proxy_pb2.TcpProxy(stat_prefix="raw", cluster=cluster)


def test_raw_resource_of_unknown_type_or_bad_payload() -> None:
    unknown = RawResource("type.googleapis.com/no.such.Type", "x", b"", Origin("envoy/x.json", 1))
    garbage = RawResource(CLUSTER, "y", b"\xff\xff\xff", Origin("envoy/y.json", 1))
    with pytest.raises(TranslationError) as err:
        MeshTranslation(with_raw(unknown, garbage)).snapshot_for(PRODUCTPAGE)
    assert sorted(p.path for p in err.value.problems) == ["envoy/x.json", "envoy/y.json"]
