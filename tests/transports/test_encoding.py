"""``ResponseEncoder`` writes exactly what ``Response.to_proto()`` serializes to, sharing the
body between clients, and stays within its bounds."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2

from xdsd.protocol import Response
from xdsd.resources import CLUSTER, Resource, Version
from xdsd.transports.wire import EncodedResponse, ResponseEncoder


def _clusters(n: int, tag: str = "") -> tuple[Resource, ...]:
    return tuple(
        Resource.of(f"c{i}{tag}", cluster_pb2.Cluster(name=f"c{i}{tag}")) for i in range(n)
    )


@pytest.mark.parametrize("nonce", ["", "1", "42", "n" * 127, "n" * 128, "é" * 300])
@pytest.mark.parametrize("count", [0, 1, 3])
def test_bytes_equal_to_proto(nonce: str, count: int) -> None:
    response = Response(CLUSTER, Version("v1"), nonce, _clusters(count))
    encoded = ResponseEncoder().encode(response)
    assert encoded == response.to_proto().SerializeToString()
    assert discovery_pb2.DiscoveryResponse.FromString(encoded) == response.to_proto()


def test_body_shared_between_nonces_and_keyed_by_content() -> None:
    encoder = ResponseEncoder()
    resources = _clusters(2)
    a = encoder.encode(Response(CLUSTER, Version("v1"), "1", resources))
    b = encoder.encode(Response(CLUSTER, Version("v1"), "2", resources))
    assert (encoder.hits, encoder.misses) == (1, 1)
    assert a[:-3] == b[:-3] and a != b
    # same version, different content (a named subscription): a different body
    other = Response(CLUSTER, Version("v1"), "3", resources[:1])
    assert encoder.encode(other) == other.to_proto().SerializeToString()
    assert encoder.misses == 2


def test_bounded() -> None:
    encoder = ResponseEncoder(max_entries=2, max_bytes=10_000)
    for i in range(5):
        response = Response(CLUSTER, Version(f"v{i}"), "1", _clusters(3, str(i)))
        assert encoder.encode(response) == response.to_proto().SerializeToString()
    assert len(encoder._bodies) == 2
    big = Response(CLUSTER, Version("big"), "1", _clusters(2000))
    assert encoder.encode(big) == big.to_proto().SerializeToString()  # too big: not kept
    assert encoder._bytes <= 10_000


def test_encoded_response_passes_through_the_codec() -> None:
    from grpclib.encoding.proto import ProtoCodec

    assert ProtoCodec().encode(EncodedResponse(b"\x0a\x01x"), EncodedResponse) == b"\x0a\x01x"
