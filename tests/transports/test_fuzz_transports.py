"""Fuzzing a real ``xdsd serve`` over its wire: random and odd requests, gRPC and REST.

A small bounded run against one daemon: random bytes and well-formed but odd
``DiscoveryRequest``s (unknown types, garbage nonces and versions, NACKs, odd node
metadata) on ADS, delta ADS and a per-type stream over a real grpcio channel, and random or
odd JSON bodies POSTed to the REST paths. Properties: each bad stream ends with a gRPC
status (never a crash of the daemon), each REST poll gets a status below 500, and the
daemon keeps serving a good client afterwards.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import discovery_pb2
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzzing import deadline, fuzz_settings
from tests.harness import Xdsd
from tests.paths import EXAMPLE_CONFIG
from tests.transports.test_hostile_clients import _assert_still_serving, _node

SERVICE = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"
PATHS = (
    f"{SERVICE}StreamAggregatedResources",
    f"{SERVICE}DeltaAggregatedResources",
    "/envoy.service.cluster.v3.ClusterDiscoveryService/StreamClusters",
)
TYPES = (
    "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
    "type.googleapis.com/envoy.config.core.v3.Unknown",
    "",
    "\u202e\x00",
)
REST_PATHS = ("clusters", "listeners", "endpoints", "routes", "secrets", "nothing")


@pytest.fixture(scope="module")
def xdsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Xdsd]:
    server = Xdsd(EXAMPLE_CONFIG, tmp_path_factory.mktemp("xdsd"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def channel(xdsd: Xdsd) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{xdsd.grpc_port}") as chan:
        yield chan


@st.composite
def odd_requests(draw: st.DrawFn) -> bytes:
    """A well-formed request with odd content (SotW or delta layout), or random bytes."""
    if draw(st.integers(0, 3)) == 0:
        return draw(st.binary(max_size=64))
    names = st.lists(
        st.sampled_from(
            ["*", "", "a", "outbound|9080||details.default.svc.cluster.local", "\x00", "x" * 300]
        ),
        max_size=3,
    )
    node = _node()
    metadata = draw(
        st.dictionaries(
            st.sampled_from(["namespace", "labels", "role", "client", "instance_ip", "x"]),
            st.one_of(
                st.text(max_size=8),
                st.floats(),
                st.booleans(),
                st.dictionaries(st.text(max_size=3), st.floats(), max_size=2),
            ),
            max_size=2,
        )
    )
    for key, value in metadata.items():
        node.metadata.fields[key].CopyFrom(_value(value))
    if draw(st.booleans()):
        request = discovery_pb2.DiscoveryRequest(
            type_url=draw(st.sampled_from(TYPES)),
            resource_names=draw(names),
            version_info=draw(st.text(max_size=8)),
            response_nonce=draw(st.text(max_size=8)),
        )
    else:
        request = discovery_pb2.DeltaDiscoveryRequest(  # type: ignore[assignment]
            type_url=draw(st.sampled_from(TYPES)),
            resource_names_subscribe=draw(names),
            resource_names_unsubscribe=draw(names),
            response_nonce=draw(st.text(max_size=8)),
        )
    if draw(st.booleans()):
        request.node.CopyFrom(node)
    if draw(st.booleans()):
        request.error_detail.code = draw(st.integers(-(2**31), 2**31 - 1))
        request.error_detail.message = draw(st.text(max_size=16))
    return request.SerializeToString()


def _value(value: Any) -> Any:
    from google.protobuf import struct_pb2

    out = struct_pb2.Value()
    if isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, float):
        out.number_value = value
    elif isinstance(value, dict):
        for k, v in value.items():
            out.struct_value.fields[k].CopyFrom(_value(v))
    else:
        out.string_value = value
    return out


@fuzz_settings(0.3)
@given(st.sampled_from(PATHS), st.lists(odd_requests(), min_size=1, max_size=3))
def test_odd_grpc_streams_end_with_a_status_and_the_daemon_serves_on(
    xdsd: Xdsd, channel: grpc.Channel, path: str, messages: list[bytes]
) -> None:
    with deadline("transport.grpc"):
        call = channel.stream_stream(path)(iter(messages), timeout=10)
        try:
            for _ in call:  # responses until the daemon ends the stream or we stop sending
                pass
        except grpc.RpcError as e:
            assert e.code() not in (
                grpc.StatusCode.UNKNOWN,
                grpc.StatusCode.INTERNAL,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            ), (e.code(), e.details())
        assert xdsd.alive()
        _assert_still_serving(xdsd)


def _post(xdsd: Xdsd, path: str, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{xdsd.rest_port}/v3/discovery:{path}",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.floats()
    | st.integers()
    | st.text(max_size=8)
    | st.just([])
    | st.just({}),
    lambda inner: (
        st.lists(inner, min_size=1, max_size=3)
        | st.dictionaries(st.text(max_size=6), inner, min_size=1, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def poll_bodies(draw: st.DrawFn) -> bytes:
    """Random bytes, random JSON, or a poll with odd fields."""
    which = draw(st.integers(0, 2))
    if which == 0:
        return draw(st.binary(max_size=64))
    if which == 1:
        return json.dumps(draw(JSON)).encode()
    poll: dict[str, Any] = {
        "node": {
            "id": "fuzz",
            "cluster": draw(st.sampled_from(["productpage", "", "nope"])),
            "metadata": draw(
                st.dictionaries(
                    st.sampled_from(["namespace", "labels", "role", "x"]), JSON, max_size=2
                )
            ),
        },
        "version_info": draw(JSON),
        "resource_names": draw(JSON),
        "type_url": draw(st.sampled_from(TYPES)),
    }
    if draw(st.booleans()):
        del poll[draw(st.sampled_from(sorted(poll)))]
    return json.dumps(poll).encode()


@fuzz_settings(0.5)
@given(st.sampled_from(REST_PATHS), poll_bodies())
@example("clusters", b'{"node": {"cluster": "productpage", "metadata": {"namespace": NaN}}}')
@example(
    "clusters",
    json.dumps(
        {"node": {"cluster": "productpage", "metadata": {"labels": {"version": math.inf}}}}
    ).encode(),
)
def test_odd_rest_polls_get_a_4xx_and_the_daemon_serves_on(
    xdsd: Xdsd, path: str, body: bytes
) -> None:
    with deadline("transport.rest"):
        status, answer = _post(xdsd, path, body)
        assert status < 500, (status, body, answer)
        good = json.dumps({"node": {"id": "probe", "cluster": "productpage"}}).encode()
        assert _post(xdsd, "clusters", good)[0] == 200


def test_a_deeply_nested_rest_body_is_a_400(xdsd: Xdsd) -> None:
    assert _post(xdsd, "clusters", b"[" * 100_000)[0] == 400


def test_a_node_with_unusable_metadata_is_a_400(xdsd: Xdsd) -> None:
    body = b'{"node": {"cluster": "productpage", "metadata": {"role": 7}}}'
    assert _post(xdsd, "clusters", body)[0] == 400
