"""The gRPC methods xdsd serves, and what each one speaks: one table for both servers.

How this works: a ``Method`` is a service and method name, the type it serves (None:
aggregated, every type) and its ``Codec``. A codec is one flavour of the protocol as the
stream loop (``xdsd.transports.grpc.StreamClient``) needs it: the request message type
the server decodes, the sans-I/O core a stream of it runs (``SotwStream`` or
``DeltaStream``), how a request is read into the core's terms (v2 type URLs renamed to
v3), the body writer its responses are encoded with (``xdsd.transports.wire``), and the
labels its streams are known by in client status and logs. ``METHODS`` lists every
method; the grpclib and grpcio servers register exactly these, so adding a method or a
flavour here serves it on both.

- ``SOTW``: v3 State of the World, ADS (``StreamAggregatedResources``) and the per-type
  ``Stream*`` services; streams labelled ``ads`` / ``grpc-<type>``.
- ``V2``: the v2 service names. A v2 ``DiscoveryRequest`` has the v3 wire layout, so it is
  decoded as one and its type URL renamed to v3 before the core sees it; responses go out
  with v2 type URLs and resources (``resources.v2.to_v2``). Labels ``ads-v2`` /
  ``grpc-v2-<type>``; the node class is the v3 stream's.
- ``DELTA``: incremental xDS (``DeltaAggregatedResources`` and the per-type ``Delta*``
  methods) with a ``DeltaStream`` core. A delta client's node class says ``delta`` as its
  config source; labels ``delta-ads`` / ``delta-<type>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from envoy.service.discovery.v3 import discovery_pb2

from xdsd.cache.snapshot import Snapshot
from xdsd.protocol import DeltaResponse, Event, Response
from xdsd.protocol.delta import DeltaStream
from xdsd.protocol.sotw import SotwStream
from xdsd.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    SHORT_NAMES,
    VIRTUAL_HOST,
    TypeUrl,
)
from xdsd.resources.v2 import v3_type
from xdsd.transports.wire import BodyWriter, write_delta, write_sotw, write_v2

#: A debug log line: its format, its arguments and its ``extra`` fields.
LogLine = tuple[str, tuple[object, ...], dict[str, str]]


class Core(Protocol):
    """A sans-I/O protocol core of one stream (``SotwStream``, ``DeltaStream``)."""

    @property
    def ads(self) -> bool:
        """True for an aggregated stream carrying every type."""
        ...

    def on_request(self, request: Any) -> Sequence[Event]:
        """The events a request causes; raises ProtocolError for a broken protocol."""
        ...

    def on_snapshot(self, snapshot: Snapshot) -> Sequence[Event]:
        """The events a new snapshot of the client's class causes."""
        ...


def _kind(type_url: str) -> str:
    """A type's short name for logs (``virtual_hosts`` for VHDS)."""
    if type_url == VIRTUAL_HOST:
        return "virtual_hosts"
    return SHORT_NAMES.get(TypeUrl(type_url), type_url)


class SotwCodec:
    """v3 State of the World (see the module docstring)."""

    request_type: type[Any] = discovery_pb2.DiscoveryRequest

    def __init__(self) -> None:
        self.write: BodyWriter = write_sotw

    def core(self, type_url: TypeUrl | None) -> Core:
        """A new stream's protocol core."""
        return SotwStream(type_url)

    def label(self, type_url: TypeUrl | None) -> str:
        """The transport label of a stream of ``type_url`` (None: ADS)."""
        return "ads" if type_url is None else f"grpc-{SHORT_NAMES[type_url]}"

    def classify_as(self, ads: bool) -> str:
        """The transport name the node class is made with."""
        return "ads" if ads else "grpc"

    def incoming(self, request: Any) -> Any:
        """``request`` in the core's terms."""
        return request

    def describe_request(self, request: Any) -> LogLine:
        """The debug line of a request."""
        kind = _kind(request.type_url)
        return (
            "request %s version=%r nonce=%r names=%d",
            (kind, request.version_info, request.response_nonce, len(request.resource_names)),
            {"type": kind, "version": request.version_info, "nonce": request.response_nonce},
        )

    def describe_response(self, response: Any) -> LogLine:
        """The debug line of a response."""
        kind = _kind(response.type_url)
        return (
            "sending %s version=%s nonce=%s resources=%d",
            (kind, response.version, response.nonce, len(response.resources)),
            {"type": kind, "version": response.version, "nonce": response.nonce},
        )


class V2Codec:
    """The v2 API over the SotW core (see the module docstring)."""

    request_type: type[Any] = discovery_pb2.DiscoveryRequest

    def __init__(self, sotw: SotwCodec) -> None:
        self.sotw = sotw
        self.write: BodyWriter = write_v2

    def core(self, type_url: TypeUrl | None) -> Core:
        """A new stream's protocol core (the v3 one)."""
        return self.sotw.core(type_url)

    def label(self, type_url: TypeUrl | None) -> str:
        """The transport label of a v2 stream of ``type_url`` (None: ADS)."""
        return "ads-v2" if type_url is None else f"grpc-v2-{SHORT_NAMES[type_url]}"

    def classify_as(self, ads: bool) -> str:
        """The v3 stream's transport name: the resources are the same."""
        return self.sotw.classify_as(ads)

    def incoming(self, request: Any) -> Any:
        """``request`` with its v2 type URL renamed to v3."""
        if request.type_url:
            request.type_url = v3_type(request.type_url)
        return request

    def describe_request(self, request: Any) -> LogLine:
        """The debug line of a request (after renaming)."""
        return self.sotw.describe_request(request)

    def describe_response(self, response: Any) -> LogLine:
        """The debug line of a response (v3 type names)."""
        return self.sotw.describe_response(response)


class DeltaCodec:
    """Incremental xDS (see the module docstring)."""

    request_type: type[Any] = discovery_pb2.DeltaDiscoveryRequest

    def __init__(self) -> None:
        self.write: BodyWriter = write_delta

    def core(self, type_url: TypeUrl | None) -> Core:
        """A new stream's protocol core."""
        return DeltaStream(type_url)

    def label(self, type_url: TypeUrl | None) -> str:
        """The transport label of a delta stream of ``type_url`` (None: ADS)."""
        return "delta-ads" if type_url is None else f"delta-{SHORT_NAMES[type_url]}"

    def classify_as(self, ads: bool) -> str:
        """Delta classes say ``delta`` as their config source."""
        return "delta"

    def incoming(self, request: Any) -> Any:
        """``request`` in the core's terms."""
        return request

    def describe_request(self, request: Any) -> LogLine:
        """The debug line of a request."""
        kind = _kind(request.type_url)
        return (
            "delta request %s nonce=%r subscribe=%d unsubscribe=%d initial=%d",
            (
                kind,
                request.response_nonce,
                len(request.resource_names_subscribe),
                len(request.resource_names_unsubscribe),
                len(request.initial_resource_versions),
            ),
            {"type": kind, "nonce": request.response_nonce},
        )

    def describe_response(self, response: Any) -> LogLine:
        """The debug line of a response."""
        kind = _kind(response.type_url)
        return (
            "sending delta %s version=%s nonce=%s resources=%d removed=%d",
            (
                kind,
                response.version,
                response.nonce,
                len(response.resources),
                len(response.removed),
            ),
            {"type": kind, "version": response.version, "nonce": response.nonce},
        )


class Codec(Protocol):
    """One flavour of the protocol as the stream loop needs it (see the module
    docstring)."""

    @property
    def request_type(self) -> type[Any]:
        """The request message type the server decodes."""
        ...

    @property
    def write(self) -> BodyWriter:
        """The body writer of its responses."""
        ...

    def core(self, type_url: TypeUrl | None) -> Core: ...
    def label(self, type_url: TypeUrl | None) -> str: ...
    def classify_as(self, ads: bool) -> str: ...
    def incoming(self, request: Any) -> Any: ...
    def describe_request(self, request: Any) -> LogLine: ...
    def describe_response(self, response: Any) -> LogLine: ...


SOTW = SotwCodec()
V2 = V2Codec(SOTW)
DELTA = DeltaCodec()

#: The responses a core emits that are sent (the rest are recorded only).
RESPONSES = (Response, DeltaResponse)


@dataclass(frozen=True, slots=True)
class Method:
    """One gRPC method: ``service``/``name`` serving ``type_url`` (None: every type, an
    aggregated stream) in the flavour of ``codec``."""

    service: str
    name: str
    type_url: TypeUrl | None
    codec: Codec

    @property
    def path(self) -> str:
        """The HTTP/2 path (``/service/name``)."""
        return f"/{self.service}/{self.name}"


_V3 = "envoy.service.{}.v3.{}DiscoveryService"
#: (v3 service, method noun, v2 service) per type.
_PER_TYPE: tuple[tuple[TypeUrl, str, str], ...] = (
    (CLUSTER, _V3.format("cluster", "Cluster"), "Clusters"),
    (ENDPOINT, _V3.format("endpoint", "Endpoint"), "Endpoints"),
    (LISTENER, _V3.format("listener", "Listener"), "Listeners"),
    (ROUTE, _V3.format("route", "Route"), "Routes"),
    (SECRET, _V3.format("secret", "Secret"), "Secrets"),
)
_V2_SERVICES: dict[TypeUrl, str] = {
    CLUSTER: "envoy.api.v2.ClusterDiscoveryService",
    ENDPOINT: "envoy.api.v2.EndpointDiscoveryService",
    LISTENER: "envoy.api.v2.ListenerDiscoveryService",
    ROUTE: "envoy.api.v2.RouteDiscoveryService",
    SECRET: "envoy.service.discovery.v2.SecretDiscoveryService",
}
ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
V2_ADS_SERVICE = "envoy.service.discovery.v2.AggregatedDiscoveryService"

#: Every method xdsd serves over gRPC.
METHODS: tuple[Method, ...] = (
    Method(ADS_SERVICE, "StreamAggregatedResources", None, SOTW),
    Method(ADS_SERVICE, "DeltaAggregatedResources", None, DELTA),
    Method(V2_ADS_SERVICE, "StreamAggregatedResources", None, V2),
    *(Method(service, f"Stream{noun}", t, SOTW) for t, service, noun in _PER_TYPE),
    *(Method(service, f"Delta{noun}", t, DELTA) for t, service, noun in _PER_TYPE),
    *(Method(_V2_SERVICES[t], f"Stream{noun}", t, V2) for t, _, noun in _PER_TYPE),
)
