"""The grpclib and grpcio gRPC servers serve the same methods (SotW, delta and v2, from
one method table), send the same bytes and end bad streams alike."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from tests.harness import Xdsd, wait_until
from tests.paths import EXAMPLE_CONFIG
from xdsd.errors import ConfigError
from xdsd.settings import Settings

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
CDS_METHOD = "/envoy.service.cluster.v3.ClusterDiscoveryService/StreamClusters"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
DELTA_ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
DELTA_CDS = "/envoy.service.cluster.v3.ClusterDiscoveryService/DeltaClusters"
V2_ADS = "/envoy.service.discovery.v2.AggregatedDiscoveryService/StreamAggregatedResources"
V2_CDS_METHOD = "/envoy.api.v2.ClusterDiscoveryService/StreamClusters"
V2_CDS = "type.googleapis.com/envoy.api.v2.Cluster"
IMPLS = ("grpclib", "grpcio")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Xdsd]]:
    started: dict[str, Xdsd] = {}
    try:
        for impl in IMPLS:
            started[impl] = Xdsd(
                EXAMPLE_CONFIG, tmp_path_factory.mktemp(impl), extra=["--grpc-impl", impl]
            )
        yield started
    finally:
        for server in started.values():
            server.stop()


def _request(**fields: object) -> bytes:
    node = base_pb2.Node(id="probe", cluster="productpage")
    return discovery_pb2.DiscoveryRequest(node=node, type_url=CDS, **fields).SerializeToString()


def _first(server: Xdsd, method: str) -> discovery_pb2.DiscoveryResponse:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        responses = channel.stream_stream(method)(iter([_request()]), timeout=5)
        first = discovery_pb2.DiscoveryResponse.FromString(next(responses))
        responses.cancel()
        return first


@pytest.mark.parametrize("method", [ADS, CDS_METHOD], ids=["ads", "per-type"])
def test_both_servers_send_the_same_response(servers: dict[str, Xdsd], method: str) -> None:
    grpclib, grpcio = (_first(servers[impl], method) for impl in IMPLS)
    assert grpclib.resources and grpclib.nonce and grpcio.nonce
    assert grpclib.SerializeToString() == grpcio.SerializeToString()
    assert "gRPC xDS listening on" in servers["grpcio"].log()
    assert "(grpcio)" in servers["grpcio"].log()


def _first_delta(server: Xdsd, method: str) -> discovery_pb2.DeltaDiscoveryResponse:
    node = base_pb2.Node(id="probe", cluster="productpage")
    request = discovery_pb2.DeltaDiscoveryRequest(node=node, type_url=CDS)
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        responses = channel.stream_stream(method)(iter([request.SerializeToString()]), timeout=5)
        first = discovery_pb2.DeltaDiscoveryResponse.FromString(next(responses))
        responses.cancel()
        return first


@pytest.mark.parametrize("method", [DELTA_ADS, DELTA_CDS], ids=["ads", "per-type"])
def test_both_servers_serve_delta_alike(servers: dict[str, Xdsd], method: str) -> None:
    grpclib, grpcio = (_first_delta(servers[impl], method) for impl in IMPLS)
    assert grpclib.resources and grpclib.nonce and grpclib.type_url == CDS
    assert grpclib.SerializeToString() == grpcio.SerializeToString()
    label = "delta-ads" if method == DELTA_ADS else "delta-clusters"
    opened = f"stream opened ({label}, class"
    wait_until(lambda: opened in servers["grpcio"].log(), what=opened)


@pytest.mark.parametrize("method", [V2_ADS, V2_CDS_METHOD], ids=["ads", "per-type"])
def test_both_servers_serve_v2_alike(servers: dict[str, Xdsd], method: str) -> None:
    node = base_pb2.Node(id="probe", cluster="productpage")
    request = discovery_pb2.DiscoveryRequest(node=node, type_url=V2_CDS).SerializeToString()
    answers = []
    for impl in IMPLS:
        with grpc.insecure_channel(f"127.0.0.1:{servers[impl].grpc_port}") as channel:
            responses = channel.stream_stream(method)(iter([request]), timeout=5)
            answers.append(discovery_pb2.DiscoveryResponse.FromString(next(responses)))
            responses.cancel()
    grpclib, grpcio = answers
    assert grpclib.resources and grpclib.type_url == V2_CDS
    assert {r.type_url for r in grpclib.resources} == {V2_CDS}
    assert grpclib.SerializeToString() == grpcio.SerializeToString()
    label = "ads-v2" if method == V2_ADS else "grpc-v2-clusters"
    opened = f"stream opened ({label}, class"
    wait_until(lambda: opened in servers["grpcio"].log(), what=opened)


@pytest.mark.parametrize("impl", IMPLS)
def test_undecodable_request_is_invalid_argument(servers: dict[str, Xdsd], impl: str) -> None:
    with (
        grpc.insecure_channel(f"127.0.0.1:{servers[impl].grpc_port}") as channel,
        pytest.raises(grpc.RpcError) as info,
    ):
        list(channel.stream_stream(ADS)(iter([b"\xff\xff\xff\xff not protobuf"]), timeout=5))
    error = info.value
    assert isinstance(error, grpc.Call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "undecodable" in (error.details() or "")


@pytest.mark.parametrize("impl", IMPLS)
def test_nack_is_logged_and_the_stream_goes_on(servers: dict[str, Xdsd], impl: str) -> None:
    server = servers[impl]
    first = _first(server, ADS)
    nack = _request(
        version_info="", response_nonce=first.nonce, error_detail={"message": "bad cluster"}
    )
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        responses = channel.stream_stream(ADS)(iter([_request(), nack]), timeout=5)
        next(responses)
        wait_until(lambda: "bad cluster" in server.log(), what="the NACK to be logged")
        responses.cancel()
    assert "NACK of clusters" in server.log()
    assert server.alive()


def test_grpc_impl_setting() -> None:
    assert Settings().grpc_impl == "grpclib"
    assert Settings().merged({"grpc-impl": "grpcio"}, source="t").grpc_impl == "grpcio"
    with pytest.raises(ConfigError, match="grpclib, grpcio"):
        Settings().merged({"grpc_impl": "grpc"}, source="t")
