"""VHDS classes: what a delta Envoy sidecar with ``vhds`` receives, against what every
other client receives (unchanged)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import struct_pb2

from tests.harness import envoy_binary
from tests.translate.meshes import bookinfo, http, service, tcp
from xdsd.model import Endpoint, Mesh, Origin, Resolution, Service
from xdsd.model.mesh_config import MeshConfig
from xdsd.model.networking import OutboundPolicy
from xdsd.resources import LISTENER, ROUTE, VIRTUAL_HOST, to_json
from xdsd.translate import ConfigSourceKind, MeshTranslation, NodeClass
from xdsd.translate.node import node_class_from_node
from xdsd.translate.static import plain_json, render_static
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


# -- classes with virtual-address and capture listeners ---------------------------------

BLOCK = "127.240.0.0/16"
#: A sidecar with virtual addresses (as ``xdsd bootstrap`` gives by default) and capture.
VIP_SOTW = NodeClass(
    "client",
    virtual_addresses=BLOCK,
    instance_ip="127.0.0.2",
    capture=15006,
    config_source=ConfigSourceKind.ADS,
)
VIP_VHDS = dataclasses.replace(VIP_SOTW, config_source=ConfigSourceKind.DELTA, vhds=True)


def vip_mesh(**fields: Any) -> Mesh:
    """client (HTTP 7000, the node's own), web (HTTP 9080), db (TCP 5432), a resolution
    NONE ServiceEntry on HTTP 80 (its VIP listener uses the HTTP proxy's routes)."""
    services = (
        service("client", http(7000, 17000), endpoints=(Endpoint("127.0.0.2"),)),
        service("web", http(9080), endpoints=(Endpoint("10.0.2.1"),)),
        service("db", tcp(5432), endpoints=(Endpoint("10.0.0.1"),)),
        Service(
            "api.example.com",
            "default",
            (http(80),),
            resolution=Resolution.NONE,
            entry="api",
            origin=Origin("api.yaml", 1),
        ),
    )
    return Mesh(services=tuple(sorted(services, key=lambda s: s.key)), **fields)


def test_virtual_address_and_capture_classes_get_vhds() -> None:
    """A VHDS class with virtual-address and capture listeners: every HTTP listener
    fetching routes by RDS (per-port, HTTP proxy, ``outbound|VIP|PORT`` — the NONE
    service's on the HTTP proxy's routes — and ``capture|PORT``) runs the on-demand
    filter first and is otherwise unchanged; every route configuration is served by VHDS
    and puts back together into the SotW class's."""
    translation = MeshTranslation(vip_mesh())
    whole = translation.snapshot_for(VIP_SOTW)
    split = translation.snapshot_for(VIP_VHDS)
    assert set(split.get(LISTENER)) == set(whole.get(LISTENER))
    on_demand: set[str] = set()
    for name, listener in split.get(LISTENER).items():
        old = whole.get(LISTENER)[name].message
        hcms, old_hcms = _rds_hcms(listener.message), _rds_hcms(old)
        assert len(hcms) == len(old_hcms), name
        if not hcms:
            assert listener.message == old, name
            continue
        for hcm, old_hcm in zip(hcms, old_hcms, strict=True):
            assert hcm.http_filters[0].name == ON_DEMAND_FILTER, name
            del hcm.http_filters[0]
            assert hcm == old_hcm, name
        on_demand.add(name)
    vips = {n for n in on_demand if n.startswith("outbound|127.240.")}
    assert len(vips) == 3, on_demand  # client's, web's and the NONE entry's
    assert {"capture|7000", "capture|9080"} <= on_demand
    assert _forward_vip(split) in vips
    vhosts = split.get(VIRTUAL_HOST)
    assert set(split.get(ROUTE)) == set(whole.get(ROUTE))
    for name, resource in whole.get(ROUTE).items():
        assert _reassembled(split, name) == resource.message, name
    assert "9080/web.default.svc.cluster.local:9080" in vhosts
    assert "http_proxy/api.example.com:80" in vhosts


def test_catch_all_route_configurations_stay_whole_on_vip_listeners() -> None:
    """REGISTRY_ONLY: every route configuration ends in a catch-all host, so none is
    split and no virtual host is served, the on-demand filter notwithstanding."""
    config = MeshConfig(outbound_traffic_policy=OutboundPolicy.REGISTRY_ONLY)
    translation = MeshTranslation(vip_mesh(), mesh_config=config)
    whole = translation.snapshot_for(VIP_SOTW)
    split = translation.snapshot_for(VIP_VHDS)
    assert not split.get(VIRTUAL_HOST)
    assert split.get(ROUTE) == whole.get(ROUTE)
    assert _rds_hcms(split.get(LISTENER)[_forward_vip(split)].message)[0].http_filters[0].name == (
        ON_DEMAND_FILTER
    )


def test_envoy_validates_the_vip_and_capture_listeners(tmp_path: Path) -> None:
    """A real Envoy accepts the VHDS class's listeners (on-demand filter first, routes by
    RDS over a delta ADS stream) next to the class's clusters."""
    boot = render_static(vip_mesh(), VIP_SOTW, admin_port=0)
    resources = boot["static_resources"]
    split = MeshTranslation(vip_mesh()).snapshot_for(VIP_VHDS)
    resources["listeners"] = [
        plain_json(to_json(r.message))
        for r in split.get(LISTENER).values()
        if not r.message.HasField("api_listener")
    ]
    assert sum(1 for r in resources["listeners"] if ON_DEMAND_FILTER in json.dumps(r)) >= 7
    resources["clusters"].append(
        {
            "name": "xds",
            "type": "STATIC",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            },
            "load_assignment": {
                "cluster_name": "xds",
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {"address": "127.0.0.1", "port_value": 1}
                                    }
                                }
                            }
                        ]
                    }
                ],
            },
        }
    )
    boot["dynamic_resources"] = {
        "ads_config": {
            "api_type": "DELTA_GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
        }
    }
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(boot))
    proc = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _forward_vip(snapshot: Any) -> str:
    """The name of the VIP listener that routes by the HTTP proxy's configuration."""
    (name,) = (
        n
        for n, r in snapshot.get(LISTENER).items()
        if n.startswith("outbound|127.240.")
        and any(h.rds.route_config_name == "http_proxy" for h in _rds_hcms(r.message))
    )
    return name


def _reassembled(snapshot: Any, name: str) -> route_pb2.RouteConfiguration:
    """Route configuration ``name`` of a VHDS snapshot with its virtual hosts put back."""
    bare = snapshot.get(ROUTE)[name].message
    assert isinstance(bare, route_pb2.RouteConfiguration)
    assert not bare.virtual_hosts and bare.vhds.config_source.HasField("ads")
    again = route_pb2.RouteConfiguration()
    again.CopyFrom(bare)
    again.ClearField("vhds")
    prefix = f"{name}/"
    for vname, resource in snapshot.get(VIRTUAL_HOST).items():
        if vname.startswith(prefix) and "/" not in vname[len(prefix) :]:
            part = again.virtual_hosts.add()
            part.CopyFrom(resource.message)
            part.name = vname[len(prefix) :]
    return again


def _rds_hcms(listener: Any) -> list[Any]:
    """The HTTP connection managers of ``listener``'s chains that fetch routes by RDS."""
    out = []
    for chain in listener.filter_chains:
        for f in chain.filters:
            hcm = hcm_pb2.HttpConnectionManager()
            if f.typed_config.Unpack(hcm) and hcm.HasField("rds"):
                out.append(hcm)
    return out
