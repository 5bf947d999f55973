"""A real proxyless gRPC client (grpcio, ``xds:///`` target) accepts what a GRPC class
receives: it resolves, routes and calls a backend, and NACKs nothing.

The xDS server here is a minimal ADS responder over one snapshot (enough for a client that
subscribes by name); the client runs in a subprocess so that its process-wide xDS client
and bootstrap do not leak into other tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import pytest

from tests.translate.meshes import service
from xdsd.cache.snapshot import Snapshot
from xdsd.model import (
    Destination,
    DestinationRule,
    Endpoint,
    HeaderMatch,
    HTTPMatch,
    HTTPRoute,
    LoadBalancer,
    Locality,
    Mesh,
    Port,
    Protocol,
    Resolution,
    Retries,
    RouteDestination,
    StringMatch,
    Subset,
    TrafficPolicy,
    VirtualService,
)
from xdsd.model.rules import MatchKind, SimpleLB
from xdsd.translate import ClientKind, MeshTranslation, NodeClass
from xdsd.translate.static import grpc_bootstrap

grpc = pytest.importorskip("grpc")
ads_pb2_grpc = pytest.importorskip("envoy.service.discovery.v3.ads_pb2_grpc")
discovery_pb2 = pytest.importorskip("envoy.service.discovery.v3.discovery_pb2")

CLIENT = """
import sys, grpc
for target in sys.argv[1:]:
    channel = grpc.insecure_channel(target)
    call = channel.unary_unary("/test.Echo/Call")
    print(call(target.encode(), timeout=20, metadata=[("x-user", "alice")]).decode())
"""


class _Ads(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """Answers each new subscription with the named resources of one snapshot."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.nacks: list[str] = []
        self.lock = threading.Lock()

    def StreamAggregatedResources(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
        nonce = 0
        answered: dict[str, tuple[str, ...]] = {}
        for request in requests:
            if request.error_detail.message:
                with self.lock:
                    self.nacks.append(f"{request.type_url}: {request.error_detail.message}")
                continue
            names = tuple(sorted(request.resource_names))
            if answered.get(request.type_url) == names:
                continue
            answered[request.type_url] = names
            nonce += 1
            bucket = self.snapshot.get(request.type_url)
            yield discovery_pb2.DiscoveryResponse(
                version_info=self.snapshot.version(request.type_url),
                type_url=request.type_url,
                nonce=str(nonce),
                resources=[r.to_any() for n, r in bucket.items() if not names or n in names],
            )


def _serve(*handlers: Any) -> tuple[Any, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    for handler in handlers:
        handler(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.mark.parametrize("lb", [SimpleLB.UNSPECIFIED, SimpleLB.LEAST_REQUEST, SimpleLB.RANDOM])
def test_grpc_client_resolves_and_calls(lb: SimpleLB) -> None:
    def echo(request: bytes, context: Any) -> bytes:
        return b"pong " + request

    generic = grpc.method_handlers_generic_handler(
        "test.Echo", {"Call": grpc.unary_unary_rpc_method_handler(echo)}
    )
    backend, backend_port = _serve(lambda s: s.add_generic_rpc_handlers((generic,)))
    try:
        grpc_port = Port(backend_port, Protocol.GRPC, "grpc")
        dns_port = Port(backend_port + 1, Protocol.GRPC, "grpc")
        mesh = Mesh(
            services=(
                service(
                    "echo",
                    grpc_port,
                    endpoints=(Endpoint("127.0.0.1", (("v", "1"),), Locality("eu", "a")),),
                ),
                service(
                    "echo-dns",
                    dns_port,
                    endpoints=(Endpoint("localhost", ports=(("grpc", backend_port),)),),
                    resolution=Resolution.DNS,
                ),
            ),
            virtual_services=(
                VirtualService(
                    "echo",
                    hosts=("echo",),
                    http=(
                        HTTPRoute(
                            "users",
                            match=(
                                HTTPMatch(
                                    headers=(
                                        HeaderMatch("x-user", StringMatch(MatchKind.REGEX, "a.*")),
                                    )
                                ),
                                HTTPMatch(uri=StringMatch(MatchKind.PREFIX, "/test.Echo/")),
                            ),
                            route=(
                                RouteDestination(Destination("echo", "v1"), 50),
                                RouteDestination(Destination("echo"), 50),
                            ),
                            retries=Retries(2, None, "unavailable"),
                        ),
                    ),
                ),
            ),
            destination_rules=(
                DestinationRule(
                    "echo",
                    "echo",
                    traffic_policy=TrafficPolicy(LoadBalancer(lb)),
                    subsets=(Subset("v1", (("v", "1"),)),),
                ),
            ),
        )
        node = NodeClass("client", client=ClientKind.GRPC)
        ads = _Ads(MeshTranslation(mesh).snapshot_for(node))
        xds, xds_port = _serve(
            lambda s: ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, s)
        )
        try:
            config = grpc_bootstrap("client-1", node, xds_host="127.0.0.1", xds_port=xds_port)
            env = dict(os.environ, GRPC_XDS_BOOTSTRAP_CONFIG=json.dumps(config))
            env.pop("GRPC_XDS_BOOTSTRAP", None)
            targets = [
                f"xds:///echo:{backend_port}",
                "xds:///echo",
                f"xds:///echo-dns:{backend_port + 1}",
            ]
            result = subprocess.run(
                [sys.executable, "-c", CLIENT, *targets],
                env=env,
                capture_output=True,
                text=True,
                timeout=90,
            )
            assert result.returncode == 0, result.stderr[-3000:]
            assert result.stdout.split("\n")[:3] == [f"pong {t}" for t in targets]
            assert ads.nacks == []
        finally:
            xds.stop(None)
    finally:
        backend.stop(None)
