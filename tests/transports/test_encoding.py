"""``ResponseEncoder`` writes exactly what ``Response.to_proto()`` serializes to (delta
responses: what decodes to ``DeltaResponse.to_proto()``), sharing the body between
clients, keeping each flavour's bodies apart, and stays within its bounds."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2

from xdsd.protocol import DeltaResponse, Response
from xdsd.resources import CLUSTER, Resource, Version
from xdsd.resources.v2 import V2_TYPES
from xdsd.transports.wire import (
    EncodedResponse,
    ResponseEncoder,
    write_delta,
    write_sotw,
    write_v2,
)


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


@pytest.mark.parametrize("removed", [(), ("gone",), ("a", "b")])
@pytest.mark.parametrize("nonce", ["", "7"])
def test_delta_bytes_decode_to_proto(removed: tuple[str, ...], nonce: str) -> None:
    response = DeltaResponse(CLUSTER, Version("v1"), nonce, _clusters(2), removed)
    encoded = ResponseEncoder().encode(response, write_delta)
    assert discovery_pb2.DeltaDiscoveryResponse.FromString(encoded) == response.to_proto()


def test_bodies_keyed_by_writer_and_removed_names() -> None:
    """One cache for every flavour: a v2 body is never served for a v3 response of the
    same content, nor a delta body for one that removes other names."""
    encoder = ResponseEncoder()
    response = Response(CLUSTER, Version("v1"), "1", _clusters(2))
    v3 = discovery_pb2.DiscoveryResponse.FromString(encoder.encode(response, write_sotw))
    v2 = discovery_pb2.DiscoveryResponse.FromString(encoder.encode(response, write_v2))
    assert v3.type_url == CLUSTER and v2.type_url == V2_TYPES[CLUSTER]
    assert encoder.misses == 2
    for removed in [("x",), ("y",)]:
        delta = DeltaResponse(CLUSTER, Version("v1"), "2", _clusters(2), removed)
        decoded = discovery_pb2.DeltaDiscoveryResponse.FromString(
            encoder.encode(delta, write_delta)
        )
        assert list(decoded.removed_resources) == list(removed)
    assert (encoder.hits, encoder.misses) == (0, 4)


@pytest.mark.parametrize("version", ["", "v1", "0123456789abcdef"])
@pytest.mark.parametrize("size", [0, 1, 100, 127, 128, 16_383, 16_384, 70_000, 2_100_000])
def test_sotw_body_written_directly_equals_protobufs(version: str, size: int) -> None:
    """``write_sotw`` writes the message's wire form itself (no ``Any`` per resource):
    byte for byte protobuf's, across every varint width of the lengths, an empty payload
    (protobuf leaves the field out) and an empty version."""
    payload = cluster_pb2.Cluster(name="c", alt_stat_name="x" * size).SerializeToString()
    resources = (
        Resource.encoded("a", CLUSTER, payload, ()),
        Resource.encoded("b", CLUSTER, b"", ()),
        *_clusters(3),
    )
    response = Response(CLUSTER, Version(version), "", resources)
    expected = response.to_proto().SerializeToString()
    assert write_sotw(response) == expected
    empty = Response(CLUSTER, Version(version), "", ())
    assert write_sotw(empty) == empty.to_proto().SerializeToString()
