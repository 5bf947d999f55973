"""Listeners: addresses, reuse_port, HTTP connection managers, TCP proxies."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from tests.translate.meshes import hcm_of, tcp_proxy_of
from xdsd.model import Port, Protocol
from xdsd.translate.l4 import FilterChainPlan, L4ListenerPlan
from xdsd.translate.listeners import (
    api_listener,
    http_proxy_listener,
    inbound_listener,
    outbound_http_listener,
    outbound_l4_listener,
)
from xdsd.translate.node import ConfigSourceKind


def assert_socket(listener: Any, ip: str, port: int, direction: int) -> None:
    sock = listener.address.socket_address
    assert (sock.address, sock.port_value) == (ip, port)
    assert listener.HasField("enable_reuse_port") and listener.enable_reuse_port.value is False
    assert listener.stat_prefix
    assert listener.traffic_direction == direction


def assert_router_last(hcm: Any) -> None:
    assert hcm.codec_type == hcm_pb2.HttpConnectionManager.AUTO
    assert hcm.stat_prefix
    last = hcm.http_filters[-1]
    assert last.name == "envoy.filters.http.router"
    assert last.typed_config.Unpack(router_pb2.Router())


@pytest.mark.parametrize("protocol", [Protocol.HTTP, Protocol.HTTP2, Protocol.GRPC])
def test_inbound_http(protocol: Protocol) -> None:
    listener = inbound_listener("127.0.0.2", Port(9080, protocol, "p", 19080))
    assert listener.name == "inbound|127.0.0.2|9080"
    assert_socket(listener, "127.0.0.2", 9080, base_pb2.INBOUND)
    hcm = hcm_of(listener)
    assert_router_last(hcm)
    assert not hcm.HasField("rds")
    (vhost,) = hcm.route_config.virtual_hosts
    assert list(vhost.domains) == ["*"]
    (route,) = vhost.routes
    assert route.match.prefix == "/"
    assert route.route.cluster == "inbound|9080||"
    assert route.route.HasField("timeout") and route.route.timeout.seconds == 0
    assert not route.route.HasField("retry_policy")


@pytest.mark.parametrize("protocol", [Protocol.TCP, Protocol.TLS])
def test_inbound_tcp(protocol: Protocol) -> None:
    listener = inbound_listener("10.0.0.7", Port(3306, protocol, "db", 13306))
    assert_socket(listener, "10.0.0.7", 3306, base_pb2.INBOUND)
    proxy = tcp_proxy_of(listener)
    assert proxy.cluster == "inbound|3306||"
    assert proxy.stat_prefix


@pytest.mark.parametrize(
    ("source", "ads"),
    [(ConfigSourceKind.ADS, True), (ConfigSourceKind.REST, False)],
)
def test_outbound_http_uses_rds_named_after_the_port(source: ConfigSourceKind, ads: bool) -> None:
    listener = outbound_http_listener("127.0.0.1", 9080, source)
    assert listener.name == "outbound|127.0.0.1|9080"
    assert_socket(listener, "127.0.0.1", 9080, base_pb2.OUTBOUND)
    hcm = hcm_of(listener)
    assert_router_last(hcm)
    assert hcm.rds.route_config_name == "9080"
    config = hcm.rds.config_source
    assert config.resource_api_version == config_source_pb2.V3
    assert config.HasField("ads") is ads
    if not ads:
        assert config.api_config_source.api_type == config_source_pb2.ApiConfigSource.REST
        assert list(config.api_config_source.cluster_names) == ["xds_cluster"]


def test_outbound_tcp() -> None:
    plan = L4ListenerPlan(
        3306, (FilterChainPlan((("outbound|3306||db.default.svc.cluster.local", 1),)),)
    )
    listener = outbound_l4_listener("127.0.0.1", plan)
    assert_socket(listener, "127.0.0.1", 3306, base_pb2.OUTBOUND)
    assert tcp_proxy_of(listener).cluster == "outbound|3306||db.default.svc.cluster.local"


def test_http_proxy() -> None:
    listener = http_proxy_listener("127.0.0.9", ConfigSourceKind.ADS)
    assert listener.name == "outbound_http_proxy"
    assert_socket(listener, "127.0.0.9", 15001, base_pb2.OUTBOUND)
    hcm = hcm_of(listener)
    assert_router_last(hcm)
    assert hcm.rds.route_config_name == "http_proxy"
    assert hcm.http_protocol_options.allow_absolute_url.value is True


def test_grpc_api_listener() -> None:
    listener = api_listener("reviews:9080", "9080")
    assert listener.name == "reviews:9080"
    assert not listener.HasField("address")
    assert not listener.filter_chains
    hcm = hcm_of(listener)
    assert_router_last(hcm)
    assert hcm.rds.route_config_name == "9080"
    assert hcm.rds.config_source.HasField("ads")
