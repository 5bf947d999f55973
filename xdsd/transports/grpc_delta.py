"""Delta (incremental) xDS over gRPC: ``DeltaAggregatedResources`` and the per-type
``Delta*`` methods, served by the same stream loop as SotW with a ``DeltaStream`` core.

How this works: ``DeltaStreamClient`` is a ``StreamClient`` (inbox, reader task, snapshot
wake-ups, client status) whose core is a ``DeltaStream`` and whose requests and responses
are the delta messages. A delta client's node class says ``delta`` as its config source;
its resources are those of ADS classes (clusters find endpoints with ``ads: {}``, which on
a delta ADS stream Envoy fetches incrementally). Responses are encoded like SotW ones:
the body (resources, removed names, type, system version) once per distinct content, each
client's nonce appended.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2

from xdsd.protocol import DeltaResponse, record_events
from xdsd.protocol.delta import DeltaStream
from xdsd.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, SHORT_NAMES, TypeUrl
from xdsd.transports.grpc import (
    _WAKE,
    EncodedResponse,
    ResponseEncoder,
    StreamClient,
    _log_rejection,
    _nonce_field,
)

log = logging.getLogger(__name__)

#: Delta methods: (service, method) → type (None: aggregated).
DELTA_METHODS: dict[tuple[str, str], TypeUrl | None] = {
    ("envoy.service.discovery.v3.AggregatedDiscoveryService", "DeltaAggregatedResources"): None,
    ("envoy.service.cluster.v3.ClusterDiscoveryService", "DeltaClusters"): CLUSTER,
    ("envoy.service.endpoint.v3.EndpointDiscoveryService", "DeltaEndpoints"): ENDPOINT,
    ("envoy.service.listener.v3.ListenerDiscoveryService", "DeltaListeners"): LISTENER,
    ("envoy.service.route.v3.RouteDiscoveryService", "DeltaRoutes"): ROUTE,
    ("envoy.service.secret.v3.SecretDiscoveryService", "DeltaSecrets"): SECRET,
}


def encode_delta(encoder: ResponseEncoder, response: DeltaResponse) -> bytes:
    """The serialized ``DeltaDiscoveryResponse`` of ``response``: the body cached in
    ``encoder`` by content, the nonce (field 5, as in SotW) appended; byte for byte what
    ``response.to_proto().SerializeToString()`` gives."""
    key = (
        "delta",
        response.type_url,
        response.version,
        tuple([r.name for r in response.resources]),
        tuple([r.digest for r in response.resources]),
        response.removed,
    )
    body = encoder.cached(key)
    if body is None:
        message = response.to_proto()
        message.ClearField("nonce")
        body = message.SerializeToString()
        encoder.store(key, body)
    return body + _nonce_field(response.nonce) if response.nonce else body


class DeltaStreamClient(StreamClient):
    """One delta stream's state and loop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.delta = DeltaStream(self.type_url)

    async def _handle(self, item: object) -> bool:
        if item is not _WAKE and not isinstance(item, discovery_pb2.DeltaDiscoveryRequest):
            return await super()._handle(item)  # the end, or what ended the stream
        if item is _WAKE:
            snapshot, self.pending = self.pending, None
            if snapshot is not None:
                await self._send(list(self.delta.on_snapshot(snapshot)))
            return True
        assert isinstance(item, discovery_pb2.DeltaDiscoveryRequest)
        request = item
        if self.key is None:
            self._open(request)
        if log.isEnabledFor(logging.DEBUG):
            kind = SHORT_NAMES.get(TypeUrl(request.type_url), request.type_url)
            log.debug(
                "delta request %s nonce=%r subscribe=%d unsubscribe=%d initial=%d",
                kind, request.response_nonce, len(request.resource_names_subscribe),
                len(request.resource_names_unsubscribe), len(request.initial_resource_versions),
                extra={**self.fields, "type": kind, "nonce": request.response_nonce},
            )  # fmt: skip
        await self._send(list(self.delta.on_request(request)))
        return True

    def _classify_as(self) -> str:
        return "delta"

    def _feed_first_snapshot(self, snapshot: Any) -> None:
        self.delta.on_snapshot(snapshot)

    async def _send(self, events: list[Any]) -> None:
        for news in record_events(self.source.cache, self.client_id, events):
            _log_rejection(self.fields, news)
        for event in events:
            if isinstance(event, DeltaResponse):
                if log.isEnabledFor(logging.DEBUG):
                    kind = SHORT_NAMES.get(event.type_url, event.type_url)
                    log.debug(
                        "sending delta %s version=%s nonce=%s resources=%d removed=%d",
                        kind, event.version, event.nonce, len(event.resources),
                        len(event.removed),
                        extra={**self.fields, "type": kind, "version": event.version,
                               "nonce": event.nonce},
                    )  # fmt: skip
                data = encode_delta(self.encoder, event)
                await self.stream.send_message(EncodedResponse(data))


def delta_key(type_url: TypeUrl | None) -> Hashable:
    """The transport label of a delta stream of ``type_url`` (None: ADS)."""
    return "delta-ads" if type_url is None else f"delta-{SHORT_NAMES[type_url]}"
