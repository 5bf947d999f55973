"""Limits and hostile clients against a running xdsd with a real Envoy connected: each
hostile act is refused cleanly (a gRPC status, an HTTP 4xx, a closed connection) while
the Envoy keeps being served (an edit made afterwards reaches it) and keeps routing."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from tests.e2e.traffic_mesh import Sidecar, TrafficMesh
from tests.harness import wait_until
from tests.xds_clients import AdsClient
from xdsd.protocol.delta import MAX_SUBSCRIBED_NAMES
from xdsd.protocol.vhosts import MAX_VIRTUAL_HOST_NAMES
from xdsd.resources import CLUSTER

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
MAX_REQUEST = 256 * 1024  # Envoy's first request (its whole node) is ~61 KB
MAX_STREAMS = 6
SETTINGS = f"""\
max_request_bytes = {MAX_REQUEST}
max_streams_per_address = {MAX_STREAMS}
first_request_timeout = 2.0
rest_idle_timeout = 2.0
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrafficMesh]:
    root = tmp_path_factory.mktemp("limits")
    with TrafficMesh(root) as m:
        (root / "settings.toml").write_text(SETTINGS)
        m.xdsd_args = ["--settings", str(root / "settings.toml")]
        m.service("echo", [m.upstream("echo-1")])
        yield m


@pytest.fixture(scope="module")
def client(mesh: TrafficMesh) -> Sidecar:
    return mesh.start()


def _grpc_target(mesh: TrafficMesh) -> str:
    assert mesh.xdsd is not None
    return f"127.0.0.1:{mesh.xdsd.grpc_port}"


def _node() -> base_pb2.Node:
    return base_pb2.Node(id="hostile", cluster="client")


def _raw_stream(mesh: TrafficMesh, messages: list[bytes]) -> grpc.RpcError:
    """Send raw messages on an ADS stream; return the error the server ended it with."""
    with grpc.insecure_channel(_grpc_target(mesh)) as channel:
        call = channel.stream_stream(ADS)
        with pytest.raises(grpc.RpcError) as info:
            list(call(iter(messages), timeout=30))
    return info.value


def _still_served_and_routing(mesh: TrafficMesh, client: Sidecar, name: str) -> None:
    """The Envoy routes to ``echo``, and a service added now reaches it (it is served)."""
    assert mesh.xdsd is not None and mesh.xdsd.alive()
    assert client.request("echo").backend == "echo-1"
    mesh.service(name, [mesh.upstream(f"{name}-up")])
    client.wait_for(lambda: client.request(name).backend == f"{name}-up", f"{name} routed")


def _refusals(mesh: TrafficMesh) -> dict[tuple[str, str], float]:
    assert mesh.xdsd is not None
    url = f"http://127.0.0.1:{mesh.xdsd.admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    found = re.findall(r'xdsd_refused_total\{listener="(\w+)",reason="(\w+)"\} ([0-9.e+]+)', text)
    return {(listener, reason): float(n) for listener, reason, n in found}


def test_oversized_request_is_refused(mesh: TrafficMesh, client: Sidecar) -> None:
    big = discovery_pb2.DiscoveryRequest(
        node=_node(), type_url=CDS, resource_names=["x" * 1000] * (MAX_REQUEST // 1000 + 10)
    ).SerializeToString()
    assert len(big) > MAX_REQUEST
    error = _raw_stream(mesh, [big])
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    if os.environ.get("XDSD_GRPC_IMPL") != "grpcio":  # grpcio refuses it itself, uncounted
        assert "max_request_bytes" in (error.details() or "")
        assert _refusals(mesh)[("grpc", "request_too_large")] >= 1
    _still_served_and_routing(mesh, client, "after-big")


@pytest.mark.parametrize(
    ("message", "code", "fragment"),
    [
        (
            b"\xff\xff\xff\xff garbage, not protobuf",
            grpc.StatusCode.INVALID_ARGUMENT,
            "undecodable",
        ),
        (
            discovery_pb2.DiscoveryRequest(
                node=_node(), type_url="type.googleapis.com/no.Such"
            ).SerializeToString(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "no.Such",
        ),
    ],
    ids=["garbage", "unknown-type-url"],
)
def test_garbage_and_unknown_types_end_their_stream(
    mesh: TrafficMesh,
    client: Sidecar,
    message: bytes,
    code: grpc.StatusCode,
    fragment: str,
    request: pytest.FixtureRequest,
) -> None:
    error = _raw_stream(mesh, [message])
    assert error.code() == code, error.details()
    assert fragment in (error.details() or "")
    _still_served_and_routing(mesh, client, f"after-{request.node.callspec.id}")


def test_thousands_of_names_are_answered_with_what_exists(
    mesh: TrafficMesh, client: Sidecar
) -> None:
    """A request naming 5,000 endpoint sets, one of them real, is answered with the one
    that exists (the request is within max_request_bytes: its size is the bound)."""
    with grpc.insecure_channel(_grpc_target(mesh)) as channel:
        call = channel.stream_stream(ADS)
        real = next(
            c["cluster"]["name"]
            for c in client.envoy.admin_json("/config_dump")["configs"][1][
                "dynamic_active_clusters"
            ]
            if "echo" in c["cluster"]["name"]
        )
        names = [f"outbound|1|nope|svc-{i}.example" for i in range(5000)] + [real]
        request = discovery_pb2.DiscoveryRequest(node=_node(), type_url=EDS, resource_names=names)
        responses = call(iter([request.SerializeToString()]), timeout=30)
        first = discovery_pb2.DiscoveryResponse.FromString(next(responses))
        responses.cancel()
    assert first.type_url == EDS
    assert [r.type_url for r in first.resources] == [EDS]
    _still_served_and_routing(mesh, client, "after-names")


def test_a_stream_flood_from_one_address_is_refused_beyond_the_limit(
    mesh: TrafficMesh, client: Sidecar
) -> None:
    assert mesh.xdsd is not None
    flood = [
        AdsClient(mesh.xdsd.grpc_port, f"flood-{i}", "outsider") for i in range(MAX_STREAMS + 4)
    ]
    try:
        wait_until(
            lambda: all(c.responses or c.ended for c in flood), what="every flood stream settled"
        )
        refused = [c for c in flood if c.ended and c.ended[0] == "RESOURCE_EXHAUSTED"]
        served = [c for c in flood if c.responses and c.ended is None]
        # the Envoy's own stream is one of the address's MAX_STREAMS
        assert len(served) <= MAX_STREAMS - 1
        assert len(refused) >= 5 and len(served) + len(refused) == len(flood)
        assert "max_streams_per_address" in refused[0].ended[1]  # type: ignore[index]
        assert _refusals(mesh)[("grpc", "too_many_streams")] >= len(refused)
        _still_served_and_routing(mesh, client, "during-flood")
    finally:
        for c in flood:
            c.stop()
    late = AdsClient(mesh.xdsd.grpc_port, "late", "outsider")
    try:
        wait_until(lambda: late.responses, what="a stream opened after the flood is served")
    finally:
        late.stop()


def test_a_stream_that_never_sends_is_ended(mesh: TrafficMesh, client: Sidecar) -> None:
    never = threading.Event()

    def silent() -> Iterator[bytes]:
        never.wait(60)
        yield from ()

    try:
        with grpc.insecure_channel(_grpc_target(mesh)) as channel:
            call = channel.stream_stream(ADS)
            with pytest.raises(grpc.RpcError) as info:
                list(call(silent(), timeout=60))
    finally:
        never.set()
    error = info.value
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error.details()
    assert "first_request_timeout" in (error.details() or "")
    assert _refusals(mesh)[("grpc", "first_request_timeout")] >= 1
    _still_served_and_routing(mesh, client, "after-silent")


def _post(mesh: TrafficMesh, body: bytes) -> tuple[int, bytes]:
    assert mesh.xdsd is not None
    url = f"http://127.0.0.1:{mesh.xdsd.rest_port}/v3/discovery:clusters"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_rest_refuses_bad_and_oversized_bodies(mesh: TrafficMesh, client: Sidecar) -> None:
    assert _post(mesh, b"\x00\x01 not json at all")[0] == 400
    assert _post(mesh, b"<xml/>")[0] == 400
    assert _post(mesh, json.dumps(["a list"]).encode())[0] == 400
    status, body = _post(mesh, b"{" + b" " * (MAX_REQUEST + 10) + b"}")
    assert status == 413 and b"max_request_bytes" in body
    good = json.dumps({"node": {"id": "p", "cluster": "client"}}).encode()
    assert _post(mesh, good)[0] == 200
    assert _refusals(mesh)[("rest", "request_too_large")] >= 1
    _still_served_and_routing(mesh, client, "after-rest")


def test_idle_rest_connections_are_closed(mesh: TrafficMesh, client: Sidecar) -> None:
    assert mesh.xdsd is not None
    with socket.create_connection(("127.0.0.1", mesh.xdsd.rest_port), timeout=60) as idle:
        assert idle.recv(1) == b""  # closed by xdsd, not by our timeout (which raises)
    # a connection in use is not cut: keep-alive requests on one connection
    conn = http.client.HTTPConnection("127.0.0.1", mesh.xdsd.rest_port, timeout=10)
    try:
        for _ in range(2):
            conn.request("POST", "/v3/discovery:clusters", body=b"{}")
            assert conn.getresponse().read() and True
    finally:
        conn.close()
    _still_served_and_routing(mesh, client, "after-idle")


def test_settings_name_the_limits(tmp_path: Path) -> None:
    from xdsd.errors import ConfigError
    from xdsd.settings import Settings

    path = tmp_path / "s.toml"
    path.write_text("max_streams_per_address = 0\n")
    with pytest.raises(ConfigError) as info:
        Settings.from_file(str(path))
    assert "max_streams_per_address" in str(info.value)
    assert Settings().max_request_bytes == 4 << 20


DELTA_ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
VHDS = "type.googleapis.com/envoy.config.route.v3.VirtualHost"


def _vhds_node() -> base_pb2.Node:
    node = _node()
    node.metadata.update({"vhds": True})
    return node


@pytest.mark.parametrize(
    ("type_url", "names", "code", "fragment"),
    [
        (VHDS, ["80/" + "h" * 2000], "INVALID_ARGUMENT", "longer than 1024 characters"),
        # names without "/" (route configuration namespaces) are never forgotten
        (VHDS, [f"c{i}" for i in range(MAX_SUBSCRIBED_NAMES + 1)], "RESOURCE_EXHAUSTED", ""),
        (CLUSTER, [f"c{i}" for i in range(MAX_SUBSCRIBED_NAMES + 1)], "RESOURCE_EXHAUSTED", ""),
    ],
    ids=["alias-too-long", "namespace-flood", "cluster-flood"],
)
def test_delta_subscription_floods_end_their_stream(
    mesh: TrafficMesh,
    client: Sidecar,
    type_url: str,
    names: list[str],
    code: str,
    fragment: str,
    request: pytest.FixtureRequest,
) -> None:
    """A delta client asking for an absurdly long virtual-host name, or for more names
    of one type than any mesh has, gets a status on its own stream; the Envoy is still
    served."""
    message = discovery_pb2.DeltaDiscoveryRequest(
        node=_vhds_node(), type_url=type_url, resource_names_subscribe=names
    ).SerializeToString()
    with grpc.insecure_channel(_grpc_target(mesh)) as channel:
        call = channel.stream_stream(DELTA_ADS)
        with pytest.raises(grpc.RpcError) as info:
            list(call(iter([message]), timeout=30))
    error = info.value
    assert error.code() == getattr(grpc.StatusCode, code), error.details()
    assert fragment in (error.details() or "")
    _still_served_and_routing(mesh, client, f"after-{request.node.callspec.id}")


def test_a_vhds_alias_flood_is_answered_and_bounded(mesh: TrafficMesh, client: Sidecar) -> None:
    """Thousands of virtual-host aliases at once (what traffic with ever new Host headers
    makes an Envoy ask for): the stream stays and answers the ones it keeps, the most
    recently asked, as unresolved; the Envoy is still served."""
    names = [f"80/host-{i}" for i in range(MAX_VIRTUAL_HOST_NAMES + 904)]
    message = discovery_pb2.DeltaDiscoveryRequest(
        node=_vhds_node(), type_url=VHDS, resource_names_subscribe=names
    ).SerializeToString()
    with grpc.insecure_channel(_grpc_target(mesh)) as channel:
        call = channel.stream_stream(DELTA_ADS)
        responses = call(iter([message]), timeout=30)
        first = discovery_pb2.DeltaDiscoveryResponse.FromString(next(responses))
        responses.cancel()
    answered = {r.name for r in first.resources if not r.HasField("resource")}
    assert answered == set(names[-MAX_VIRTUAL_HOST_NAMES:])
    _still_served_and_routing(mesh, client, "after-alias-flood")
