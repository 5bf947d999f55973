"""v2-API clients over gRPC: the v2 ADS and per-type service names, served by the same
stream loop and SotW core as v3, with type URLs and resources named the v2 way.

How this works: a v2 ``DiscoveryRequest`` has the v3 wire layout, so it is decoded as one;
``V2StreamClient`` renames its v2 type URL to the v3 one before the core sees it, and
sends each response with the v2 type URL and each resource as ``resources.v2.to_v2``
gives it. Everything else (subscriptions, ACK/NACK, ordering, client status) is the v3
stream's; the client's status shows the transport as ``ads-v2`` / ``grpc-v2-*``.
"""

from __future__ import annotations

from typing import Any

from envoy.service.discovery.v3 import discovery_pb2

from xdsd.protocol import Response, record_events
from xdsd.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, SHORT_NAMES, TypeUrl
from xdsd.resources.v2 import V2_TYPES, to_v2, v3_type
from xdsd.transports.grpc import (
    EncodedResponse,
    ResponseEncoder,
    StreamClient,
    _log_rejection,
    _nonce_field,
)

#: v2 methods: (service, method) → type (None: aggregated).
V2_METHODS: dict[tuple[str, str], TypeUrl | None] = {
    ("envoy.service.discovery.v2.AggregatedDiscoveryService", "StreamAggregatedResources"): None,
    ("envoy.api.v2.ClusterDiscoveryService", "StreamClusters"): CLUSTER,
    ("envoy.api.v2.EndpointDiscoveryService", "StreamEndpoints"): ENDPOINT,
    ("envoy.api.v2.ListenerDiscoveryService", "StreamListeners"): LISTENER,
    ("envoy.api.v2.RouteDiscoveryService", "StreamRoutes"): ROUTE,
    ("envoy.service.discovery.v2.SecretDiscoveryService", "StreamSecrets"): SECRET,
}


def v2_label(type_url: TypeUrl | None) -> str:
    """The transport label of a v2 stream of ``type_url`` (None: ADS)."""
    return "ads-v2" if type_url is None else f"grpc-v2-{SHORT_NAMES[type_url]}"


def encode_v2(encoder: ResponseEncoder, response: Response) -> bytes:
    """The serialized v2 ``DiscoveryResponse`` of ``response`` (a v3 response of the
    core), the body cached by content in ``encoder``, the nonce appended."""
    key = (
        "v2",
        response.type_url,
        response.version,
        tuple([r.name for r in response.resources]),
        tuple([r.digest for r in response.resources]),
    )
    body = encoder.cached(key)
    if body is None:
        body = discovery_pb2.DiscoveryResponse(
            version_info=response.version,
            resources=[to_v2(r).to_any() for r in response.resources],
            type_url=V2_TYPES.get(response.type_url, response.type_url),
        ).SerializeToString()
        encoder.store(key, body)
    return body + _nonce_field(response.nonce) if response.nonce else body


class V2StreamClient(StreamClient):
    """One v2 stream: v2 type URLs in, v2 names out (see the module doc)."""

    async def _handle(self, item: object) -> bool:
        if isinstance(item, discovery_pb2.DiscoveryRequest) and item.type_url:
            item.type_url = v3_type(item.type_url)
        return await super()._handle(item)

    async def _send(self, events: list[Any]) -> None:
        for news in record_events(self.source.cache, self.client_id, events):
            _log_rejection(self.fields, news)
        for event in events:
            if isinstance(event, Response):
                await self.stream.send_message(EncodedResponse(encode_v2(self.encoder, event)))
