"""Malformed requests end only their own stream (gRPC status) or get a 4xx (REST); the
daemon keeps serving everyone else."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from tests.harness import Xdsd
from tests.paths import EXAMPLE_CONFIG

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


@pytest.fixture(scope="module")
def xdsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Xdsd]:
    server = Xdsd(EXAMPLE_CONFIG, tmp_path_factory.mktemp("xdsd"))
    try:
        yield server
    finally:
        server.stop()


def _node() -> base_pb2.Node:
    return base_pb2.Node(id="probe", cluster="productpage")


def _stream(xdsd: Xdsd, messages: list[bytes]) -> list[bytes]:
    """Send raw messages on an ADS stream; return the raw responses until it ends."""
    with grpc.insecure_channel(f"127.0.0.1:{xdsd.grpc_port}") as channel:
        call = channel.stream_stream(ADS)  # bytes in, bytes out
        responses = call(iter(messages), timeout=5)
        return list(responses)


def _good_request() -> bytes:
    return discovery_pb2.DiscoveryRequest(node=_node(), type_url=CDS).SerializeToString()


def _assert_still_serving(xdsd: Xdsd) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{xdsd.grpc_port}") as channel:
        call = channel.stream_stream(ADS)
        responses = call(iter([_good_request()]), timeout=5)
        first = discovery_pb2.DiscoveryResponse.FromString(next(responses))
        assert first.type_url == CDS and len(first.resources) > 0
        responses.cancel()


@pytest.mark.parametrize(
    ("messages", "code", "fragment"),
    [
        (
            [discovery_pb2.DiscoveryRequest(type_url=CDS).SerializeToString()],
            grpc.StatusCode.INVALID_ARGUMENT,
            "node",
        ),
        (
            [discovery_pb2.DiscoveryRequest(node=_node()).SerializeToString()],
            grpc.StatusCode.INVALID_ARGUMENT,
            "type_url",
        ),
        (
            [
                discovery_pb2.DiscoveryRequest(
                    node=_node(), type_url="type.googleapis.com/x.Y"
                ).SerializeToString()
            ],
            grpc.StatusCode.INVALID_ARGUMENT,
            "x.Y",
        ),
        (
            [
                discovery_pb2.DiscoveryRequest(
                    node=base_pb2.Node(id="n"), type_url=CDS
                ).SerializeToString()
            ],
            grpc.StatusCode.INVALID_ARGUMENT,
            "cluster",
        ),
        ([b"\xff\xff\xff\xff garbage, not protobuf"], None, ""),
    ],
    ids=["no-node", "no-type-url", "unknown-type", "no-cluster", "garbage"],
)
def test_bad_stream_ends_with_a_status_and_others_are_served(
    xdsd: Xdsd, messages: list[bytes], code: grpc.StatusCode | None, fragment: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _stream(xdsd, messages)
    error = info.value
    assert isinstance(error, grpc.Call)
    if code is not None:
        assert error.code() == code, error.details()
        assert fragment in (error.details() or "")
    else:
        assert error.code() != grpc.StatusCode.OK
    assert xdsd.alive()
    _assert_still_serving(xdsd)


def _post(xdsd: Xdsd, path: str, body: bytes) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{xdsd.rest_port}{path}", data=body)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_rest_answers_bad_requests_with_4xx(xdsd: Xdsd) -> None:
    good = json.dumps({"node": {"id": "p", "cluster": "productpage"}}).encode()
    assert _post(xdsd, "/v3/discovery:bogus", good)[0] == 404
    assert _post(xdsd, "/v3/discovery:clusters", b"{not json")[0] == 400
    assert _post(xdsd, "/v3/discovery:clusters", b"[1, 2]")[0] == 400
    assert _post(xdsd, "/v3/discovery:clusters", b'{"version_info": "x"}')[0] == 400
    status, body = _post(xdsd, "/v3/discovery:clusters", good)
    assert status == 200
    response = json.loads(body)
    assert response["resources"] and all("@type" in r for r in response["resources"])
    again = json.dumps(
        {"node": {"id": "p", "cluster": "productpage"}, "version_info": response["version_info"]}
    ).encode()
    assert _post(xdsd, "/v3/discovery:clusters", again)[0] == 304
