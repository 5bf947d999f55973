"""VHDS classes: what a delta Envoy sidecar with ``vhds`` receives, against what every
other client receives (unchanged)."""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import struct_pb2

from tests.translate.meshes import bookinfo
from xdsd.resources import LISTENER, ROUTE, VIRTUAL_HOST
from xdsd.translate import ConfigSourceKind, MeshTranslation, NodeClass
from xdsd.translate.node import node_class_from_node
from xdsd.translate.vhds import ON_DEMAND_FILTER

SOTW = NodeClass("productpage", config_source=ConfigSourceKind.ADS)
DELTA = NodeClass("productpage", config_source=ConfigSourceKind.DELTA)
VHDS = NodeClass("productpage", config_source=ConfigSourceKind.DELTA, vhds=True)


def _node(vhds: object) -> base_pb2.Node:
    metadata = struct_pb2.Struct()
    metadata.update({"vhds": vhds})
    return base_pb2.Node(id="x", cluster="productpage", metadata=metadata)


def test_metadata_is_honoured_on_delta_streams_only() -> None:
    for value in (True, "true"):
        assert node_class_from_node(_node(value), config_source=ConfigSourceKind.DELTA).vhds
        for kind in (ConfigSourceKind.ADS, ConfigSourceKind.REST):
            assert not node_class_from_node(_node(value), config_source=kind).vhds
    assert not node_class_from_node(_node("false"), config_source=ConfigSourceKind.DELTA).vhds


def test_other_clients_get_exactly_what_they_got() -> None:
    translation = MeshTranslation(bookinfo())
    sotw = translation.snapshot_for(SOTW)
    delta = translation.snapshot_for(DELTA)
    assert sotw.resources == delta.resources
    assert not sotw.get(VIRTUAL_HOST)
    # vhds metadata on a SotW stream changes nothing
    assert node_class_from_node(_node(True), config_source=ConfigSourceKind.ADS) == SOTW


def test_vhds_class_gets_the_same_virtual_hosts_on_their_own() -> None:
    translation = MeshTranslation(bookinfo())
    whole = translation.snapshot_for(SOTW)
    split = translation.snapshot_for(VHDS)
    vhosts = split.get(VIRTUAL_HOST)
    assert vhosts
    for name, resource in whole.get(ROUTE).items():
        bare = split.get(ROUTE)[name].message
        assert isinstance(bare, route_pb2.RouteConfiguration)
        assert not bare.virtual_hosts
        assert bare.vhds.config_source.HasField("ads")
        # put back together: exactly today's route configuration
        again = route_pb2.RouteConfiguration()
        again.CopyFrom(bare)
        again.ClearField("vhds")
        for vhost in resource.message.virtual_hosts:  # type: ignore[attr-defined]
            got = vhosts[f"{name}/{vhost.name}"].message
            assert got.name == f"{name}/{vhost.name}"  # type: ignore[attr-defined]
            part = again.virtual_hosts.add()
            part.CopyFrom(got)
            part.name = vhost.name
        assert again == resource.message
    assert len(vhosts) == sum(
        len(r.message.virtual_hosts)  # type: ignore[attr-defined]
        for r in whole.get(ROUTE).values()
    )
    # every outbound HTTP listener runs the on-demand filter first; nothing else differs
    outbound_http = 0
    for name, listener in split.get(LISTENER).items():
        old = whole.get(LISTENER)[name].message
        hcm = _rds_hcm(listener.message)
        if hcm is None:
            assert listener.message == old, name
            continue
        outbound_http += 1
        assert hcm.http_filters[0].name == ON_DEMAND_FILTER
        del hcm.http_filters[0]
        assert hcm == _rds_hcm(old)
    assert outbound_http >= 2  # a port's and the HTTP proxy


def _rds_hcm(listener: Any) -> Any:
    """The HTTP connection manager of a listener that fetches its routes by RDS."""
    for chain in listener.filter_chains:
        for f in chain.filters:
            hcm = hcm_pb2.HttpConnectionManager()
            if f.typed_config.Unpack(hcm) and hcm.HasField("rds"):
                return hcm
    return None
