"""gRPC transport (grpclib): ADS and the per-type SotW discovery services.

How this works: each gRPC stream gets a ``SotwStream`` protocol core and an inbox. A reader
task puts every request it decodes into the inbox; the snapshot cache's watcher marks a new
snapshot as pending and wakes the inbox once, however many snapshots arrive meanwhile. The
stream's own task takes items from the inbox, feeds them to the core, records the events in
client status and writes the ``Response`` events out. A client that breaks the protocol gets
its stream ended with a gRPC status; nothing a client sends can stop the server. On
shutdown, ``OpenStreams.close_all`` ends every stream with UNAVAILABLE and a message (and
any stream opened meanwhile at once), so clients know to reconnect elsewhere.

Limits (``xdsd.transports.limits``): a request message's length prefix is checked before
its bytes are read (``BoundedStream``), the streams of one client address are counted,
and a stream that sends no first request in time is ended; with client certificates, the
node a stream names is checked against what its certificate may speak for. Each refusal
ends that stream only, with RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED or PERMISSION_DENIED.

Logging: each line about a stream carries ``client`` (the stream's id) and ``node`` (its
node id), and lines about one type ``type`` and ``version``, as ``extra`` fields (see
``xdsd.logs``); per-request DEBUG lines build them only when DEBUG is enabled.

Encoding: after an edit every client of a class is sent the same resources at the same
version; only the nonce differs. ``ResponseEncoder`` serializes the version, resources and
type URL of a response once and appends each client's nonce field to those bytes, and the
services declare ``EncodedResponse`` as their reply type, so grpclib's codec writes the
bytes as they are instead of serializing a message per client.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Protocol

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import DecodeError
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from xdsd.cache.snapshot import Snapshot
from xdsd.errors import TranslationError
from xdsd.protocol import Nack, NotApplied, ProtocolError, Response, record_events
from xdsd.protocol.sotw import SotwStream
from xdsd.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, SHORT_NAMES, TypeUrl
from xdsd.transports import SnapshotSource
from xdsd.transports.limits import (
    AddressCount,
    NodeAuthorizer,
    RefusalObserver,
    Refused,
    StreamLimits,
    ignore_refusal,
    node_identity,
    too_large,
)

log = logging.getLogger(__name__)

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
#: Per-type v3 services: (service, stream method) → type.
PER_TYPE_SERVICES: dict[tuple[str, str], TypeUrl] = {
    ("envoy.service.cluster.v3.ClusterDiscoveryService", "StreamClusters"): CLUSTER,
    ("envoy.service.endpoint.v3.EndpointDiscoveryService", "StreamEndpoints"): ENDPOINT,
    ("envoy.service.listener.v3.ListenerDiscoveryService", "StreamListeners"): LISTENER,
    ("envoy.service.route.v3.RouteDiscoveryService", "StreamRoutes"): ROUTE,
    ("envoy.service.secret.v3.SecretDiscoveryService", "StreamSecrets"): SECRET,
}
_STATUS = {
    "INVALID_ARGUMENT": Status.INVALID_ARGUMENT,
    "NOT_FOUND": Status.NOT_FOUND,
    "FAILED_PRECONDITION": Status.FAILED_PRECONDITION,
    "RESOURCE_EXHAUSTED": Status.RESOURCE_EXHAUSTED,
    "PERMISSION_DENIED": Status.PERMISSION_DENIED,
    "DEADLINE_EXCEEDED": Status.DEADLINE_EXCEEDED,
    "UNAVAILABLE": Status.UNAVAILABLE,
}
_END = object()
_WAKE = object()


class ServerClosing(Exception):
    """The server is shutting down: the stream ends with UNAVAILABLE and this message."""


class OpenStreams:
    """The open streams of a server, so that shutdown can end each with a status."""

    def __init__(self) -> None:
        self._open: set[StreamClient] = set()
        self._idle: asyncio.Event | None = None
        #: The shutdown message once ``close_all`` was called (new streams end at once).
        self.closing: str | None = None

    def __len__(self) -> int:
        return len(self._open)

    def add(self, client: StreamClient) -> None:
        """Track ``client``; raises ServerClosing when the server is shutting down."""
        if self.closing is not None:
            raise ServerClosing(self.closing)
        self._open.add(client)

    def discard(self, client: StreamClient) -> None:
        """Stop tracking ``client`` (its stream ended)."""
        self._open.discard(client)
        if not self._open and self._idle is not None:
            self._idle.set()

    async def close_all(self, message: str, timeout: float) -> int:
        """Ask every open stream to end with UNAVAILABLE and ``message``, refuse new ones
        the same way, and wait up to ``timeout`` seconds for them to end. Returns how many
        are still open (streams stuck writing to a client that does not read)."""
        self.closing = message
        self._idle = asyncio.Event()
        if not self._open:
            return 0
        for client in tuple(self._open):
            client.shut_down(message)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        return len(self._open)


class MessageStream(Protocol):
    """The two calls a stream's loop makes (grpclib's ``Stream`` has them; the grpcio
    transport adapts its context to them)."""

    async def recv_message(self) -> Any:
        """The next decoded request; None once the client has finished sending."""
        ...

    async def send_message(self, message: EncodedResponse) -> None:
        """Write one response."""
        ...


class BoundedStream:
    """A grpclib server stream whose ``recv_message`` reads a message's 5-byte prefix
    first and refuses (``Refused``, RESOURCE_EXHAUSTED) a message longer than
    ``max_bytes`` before reading any of it, so a client cannot make xdsd buffer more.

    grpclib has no such limit of its own; this reads its stream the way its
    ``recv_message`` does (its ``_stream``, ``_codec`` and ``_recv_type``), without
    grpclib's ``RecvMessage`` event and channelz message counters (xdsd uses neither).
    """

    __slots__ = ("max_bytes", "stream")

    def __init__(self, stream: Stream[Any, Any], max_bytes: int) -> None:
        self.stream = stream
        self.max_bytes = max_bytes

    async def recv_message(self) -> Any:
        """The next decoded request; None once the client has finished sending."""
        raw = self.stream._stream
        prefix = await raw.recv_data(5)
        if not prefix:
            return None
        if len(prefix) < 5:
            raise ProtocolError("INVALID_ARGUMENT", "truncated gRPC message prefix")
        size = int.from_bytes(prefix[1:5], "big")
        if size > self.max_bytes:
            raise too_large(size, self.max_bytes)
        if prefix[0]:
            raise ProtocolError("INVALID_ARGUMENT", "compressed messages are not accepted")
        data = await raw.recv_data(size)
        if len(data) < size:
            raise ProtocolError("INVALID_ARGUMENT", "the stream ended inside a message")
        return self.stream._codec.decode(data, self.stream._recv_type)

    async def send_message(self, message: EncodedResponse) -> None:
        """Write one response."""
        await self.stream.send_message(message)


def peer_host(stream: Stream[Any, Any]) -> str:
    """The client's address (host only) of a grpclib stream ("" when unknown)."""
    addr = stream.peer.addr()
    return str(addr[0]) if addr else ""


def peer_certificate(stream: Stream[Any, Any]) -> dict[str, Any] | None:
    """The verified client certificate of a grpclib stream (``getpeercert()``), if any."""
    cert = stream.peer.cert()
    return dict(cert) if cert else None


class EncodedResponse:
    """A ``DiscoveryResponse`` already in wire form.

    It is the reply type the services declare: grpclib's ``ProtoCodec`` checks the type
    and calls ``SerializeToString``, which returns the bytes unchanged.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    @classmethod
    def FromString(cls, data: bytes) -> EncodedResponse:
        """Wrap wire bytes (grpclib's message protocol; a server never decodes replies)."""
        return cls(data)

    def SerializeToString(self) -> bytes:
        """The wire bytes."""
        return self.data


class ResponseEncoder:
    """Wire bytes of ``Response``s, the shared part serialized once.

    ``encode(r)`` equals ``r.to_proto().SerializeToString()`` byte for byte: fields 1
    (version_info), 2 (resources) and 4 (type_url) come from a cache keyed by type,
    version and the resources' names and digests; field 5 (nonce) is appended per call.
    The cache holds at most ``max_entries`` bodies and ``max_bytes`` bytes, least
    recently used dropped first.
    """

    def __init__(self, *, max_entries: int = 1024, max_bytes: int = 64 << 20) -> None:
        self._bodies: OrderedDict[Hashable, bytes] = OrderedDict()
        self._bytes = 0
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0

    def encode(self, response: Response) -> bytes:
        """The serialized ``DiscoveryResponse`` of ``response``."""
        resources = response.resources
        key = (
            response.type_url,
            response.version,
            tuple([r.name for r in resources]),
            tuple([r.digest for r in resources]),
        )
        body = self._bodies.get(key)
        if body is None:
            self.misses += 1
            body = discovery_pb2.DiscoveryResponse(
                version_info=response.version,
                resources=[r.to_any() for r in resources],
                type_url=response.type_url,
            ).SerializeToString()
            self._store(key, body)
        else:
            self.hits += 1
            self._bodies.move_to_end(key)
        if not response.nonce:
            return body
        return body + _nonce_field(response.nonce)

    def cached(self, key: Hashable) -> bytes | None:
        """The body stored under ``key`` (counted as a hit), or None (a miss)."""
        body = self._bodies.get(key)
        if body is None:
            self.misses += 1
        else:
            self.hits += 1
            self._bodies.move_to_end(key)
        return body

    def store(self, key: Hashable, body: bytes) -> None:
        """Keep ``body`` under ``key`` (within the cache's bounds)."""
        self._store(key, body)

    def _store(self, key: Hashable, body: bytes) -> None:
        if len(body) > self.max_bytes:
            return
        self._bodies[key] = body
        self._bytes += len(body)
        while len(self._bodies) > self.max_entries or self._bytes > self.max_bytes:
            _, dropped = self._bodies.popitem(last=False)
            self._bytes -= len(dropped)


def _nonce_field(nonce: str) -> bytes:
    """Field 5 (``nonce``, length-delimited) of a DiscoveryResponse."""
    data = nonce.encode()
    n = len(data)
    length = bytearray()
    while n > 0x7F:
        length.append(n & 0x7F | 0x80)
        n >>= 7
    length.append(n)
    return b"\x2a" + bytes(length) + data


class DiscoveryServices:
    """The grpclib service object serving ADS and the per-type SotW services, within
    ``limits``; ``authorizer`` checks the node of each stream against its client
    certificate; ``on_refused`` hears of every refusal."""

    def __init__(
        self,
        source: SnapshotSource,
        *,
        limits: StreamLimits | None = None,
        authorizer: NodeAuthorizer | None = None,
        on_refused: RefusalObserver = ignore_refusal,
    ) -> None:
        self.source = source
        self.encoder = ResponseEncoder()
        self._ids = itertools.count(1)
        self.streams = OpenStreams()
        self.limits = limits or StreamLimits()
        self.addresses = AddressCount(self.limits.max_streams_per_address)
        self.authorizer = authorizer
        self.on_refused = on_refused

    def __mapping__(self) -> dict[str, Handler]:
        req, resp = discovery_pb2.DiscoveryRequest, EncodedResponse
        mapping = {
            f"/{ADS_SERVICE}/StreamAggregatedResources": Handler(
                self._ads, Cardinality.STREAM_STREAM, req, resp
            )
        }
        for (service, method), type_url in PER_TYPE_SERVICES.items():
            mapping[f"/{service}/{method}"] = Handler(
                self._per_type(type_url), Cardinality.STREAM_STREAM, req, resp
            )
        from xdsd.transports.grpc_delta import DELTA_METHODS
        from xdsd.transports.grpc_v2 import V2_METHODS

        for (service, method), delta_type in DELTA_METHODS.items():
            mapping[f"/{service}/{method}"] = Handler(
                self._variant(delta_type, "delta"),
                Cardinality.STREAM_STREAM,
                discovery_pb2.DeltaDiscoveryRequest,
                resp,
            )
        for (service, method), v2_type in V2_METHODS.items():
            mapping[f"/{service}/{method}"] = Handler(
                self._variant(v2_type, "v2"), Cardinality.STREAM_STREAM, req, resp
            )
        return mapping

    def _variant(self, type_url: TypeUrl | None, variant: str) -> Any:
        async def handler(stream: Stream[Any, Any]) -> None:
            await self._serve(stream, type_url, variant=variant)

        return handler

    async def _ads(self, stream: Stream[Any, Any]) -> None:
        await self._serve(stream, None)

    def _per_type(self, type_url: TypeUrl) -> Any:
        async def handler(stream: Stream[Any, Any]) -> None:
            await self._serve(stream, type_url)

        return handler

    async def _serve(
        self, stream: Stream[Any, Any], type_url: TypeUrl | None, *, variant: str = "sotw"
    ) -> None:
        """Serve one stream: ``variant`` is ``sotw`` (v3), ``delta`` or ``v2``."""
        address = peer_host(stream)
        try:
            self.addresses.acquire(address)
        except Refused as e:
            raise self._refuse(e, {"peer": address}) from None
        try:
            await self._serve_counted(stream, type_url, variant, address)
        finally:
            self.addresses.release(address)

    def _refuse(self, e: Refused, fields: dict[str, str]) -> GRPCError:
        """Log and count a refusal; the error that ends the stream with its status."""
        log.warning("refused: %s", e.message, extra={**fields, "reason": e.reason})
        self.on_refused("grpc", e.reason)
        return GRPCError(_STATUS.get(e.code, Status.INVALID_ARGUMENT), e.message)

    async def _serve_counted(
        self, stream: Stream[Any, Any], type_url: TypeUrl | None, variant: str, address: str
    ) -> None:
        bounded = BoundedStream(stream, self.limits.max_request_bytes)
        client = make_client(variant, self.source, bounded, type_url, next(self._ids), self.encoder)
        client.first_request_timeout = self.limits.first_request_timeout
        client.max_queued = self.limits.max_queued_requests
        if self.authorizer is not None and self.authorizer.enforcing:
            cert, check = peer_certificate(stream), self.authorizer.check
            client.authorize = lambda node: check(cert, node_identity(node))
        try:
            self.streams.add(client)
            await client.run()
        except STREAM_ENDINGS as e:
            code, message = stream_ending(client, e, address, self.on_refused)
            raise GRPCError(_STATUS.get(code, Status.INVALID_ARGUMENT), message) from None
        finally:
            self.streams.discard(client)
            client.close()


#: What can end a stream with a status (see ``stream_ending``).
STREAM_ENDINGS = (Refused, ServerClosing, ProtocolError, TranslationError)


def stream_ending(
    client: StreamClient, error: Exception, address: str, on_refused: RefusalObserver
) -> tuple[str, str]:
    """Log (and, for a refusal, count) what ended ``client``'s stream, one of
    ``STREAM_ENDINGS``; returns the gRPC status code name and message to end it with
    (each transport maps the name to its library's status)."""
    if isinstance(error, Refused):
        log.warning("refused: %s", error.message,
                    extra={**client.fields, "peer": address, "reason": error.reason})  # fmt: skip
        on_refused("grpc", error.reason)
        return error.code, error.message
    if isinstance(error, ServerClosing):
        log.info("ending stream: %s", error, extra=client.fields)
        return "UNAVAILABLE", str(error)
    if isinstance(error, ProtocolError):
        log.warning("ending stream: %s", error, extra=client.fields)
        return error.code, error.message
    log.error("cannot configure this node: %s", error, extra=client.fields)
    return "FAILED_PRECONDITION", str(error)


def make_client(
    variant: str,
    source: SnapshotSource,
    stream: MessageStream,
    type_url: TypeUrl | None,
    number: int,
    encoder: ResponseEncoder,
) -> StreamClient:
    """The stream client of ``variant`` (``sotw``, ``delta`` or ``v2``) for a stream of
    ``type_url`` (None: ADS), its id made of its transport label and ``number``."""
    if variant == "delta":
        from xdsd.transports.grpc_delta import DeltaStreamClient, delta_key

        return DeltaStreamClient(
            source, stream, type_url, f"{delta_key(type_url)}-{number}", encoder
        )
    if variant == "v2":
        from xdsd.transports.grpc_v2 import V2StreamClient, v2_label

        return V2StreamClient(source, stream, type_url, f"{v2_label(type_url)}-{number}", encoder)
    transport = "ads" if type_url is None else f"grpc-{SHORT_NAMES[type_url]}"
    return StreamClient(source, stream, type_url, f"{transport}-{number}", encoder)


class StreamClient:
    """One stream's state and loop (shared by the grpclib and grpcio transports)."""

    def __init__(
        self,
        source: SnapshotSource,
        stream: MessageStream,
        type_url: TypeUrl | None,
        client_id: str,
        encoder: ResponseEncoder,
    ) -> None:
        self.source = source
        self.encoder = encoder
        self.stream = stream
        self.type_url = type_url
        self.core = SotwStream(type_url)
        self.client_id = client_id
        self.transport = client_id.rsplit("-", 1)[0]
        #: The ``extra`` fields of every log line about this stream (``node`` once known).
        self.fields: dict[str, str] = {"client": client_id}
        self.key: Hashable | None = None
        self.inbox: asyncio.Queue[object] = asyncio.Queue()
        self.pending: Snapshot | None = None
        self.reader: asyncio.Task[None] | None = None
        #: Seconds the stream may wait for its first request (0: forever).
        self.first_request_timeout = 0.0
        #: Requests read but not yet handled that the stream may hold (0: no bound);
        #: one more ends the stream (see ``_cut_off``).
        self.max_queued = 0
        #: Requests in the inbox now.
        self.queued = 0
        #: Why the stream was cut off while its loop was busy (it ends with this).
        self.overflow: Refused | None = None
        self._task: asyncio.Task[Any] | None = None
        #: Called with the node's id and service when the stream opens; raises Refused
        #: when this client may not speak for that node.
        self.authorize: Callable[[Any], None] | None = None

    def shut_down(self, message: str) -> None:
        """End the stream with UNAVAILABLE and ``message`` once its loop gets to it."""
        self.inbox.put_nowait(ServerClosing(message))

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        woke = self.pending is not None
        self.pending = snapshot
        if not woke:
            self.inbox.put_nowait(_WAKE)

    async def _read(self) -> None:
        """Put every request read into the inbox, then ``_END`` (or the exception that
        ended the stream). Holds no request while waiting for the next: a client that
        sends its whole node (61 KB from Envoy) on every request must not keep one alive
        per idle stream."""
        try:
            while True:
                request = await self.stream.recv_message()
                if request is None:
                    break
                if self.max_queued and self.queued >= self.max_queued:
                    self._cut_off()
                    return
                self.queued += 1
                self.inbox.put_nowait(request)
                del request
        except Exception as e:  # a broken stream or an undecodable message
            self.inbox.put_nowait(e)
            return
        self.inbox.put_nowait(_END)

    async def run(self) -> None:
        """Serve the stream until it ends; raises what ends it for a protocol error."""
        self._task = asyncio.current_task()
        self.reader = asyncio.create_task(self._read())
        try:
            if self.first_request_timeout > 0:
                try:
                    first = await asyncio.wait_for(self._next(), self.first_request_timeout)
                except TimeoutError:
                    raise Refused(
                        "DEADLINE_EXCEEDED", 408, "first_request_timeout",
                        f"no request within {self.first_request_timeout:g} s of opening the "
                        "stream (first_request_timeout)",
                    ) from None  # fmt: skip
                if not await self._handle(first):
                    return
                del first
            while await self._handle(await self._next()):
                pass
        except asyncio.CancelledError:
            if self.overflow is None or self._task is None:
                raise
            self._task.uncancel()
            raise self.overflow from None

    async def _next(self) -> object:
        """The next inbox item (a request taken leaves room for another)."""
        item = await self.inbox.get()
        if item is not _WAKE and item is not _END and not isinstance(item, Exception):
            self.queued -= 1
        return item

    def _cut_off(self) -> None:
        """The client sent ``max_queued`` requests more than the stream handled: it does
        not read the responses (the stream waits for HTTP/2 window to write one). Holding
        more would buffer without bound, so the stream ends at once with
        RESOURCE_EXHAUSTED, even while its loop is stuck writing (it is cancelled)."""
        self.overflow = Refused(
            "RESOURCE_EXHAUSTED", 429, "slow_reader",
            f"{self.queued} requests read but not yet handled: the client sends without "
            "reading the responses (max_queued_requests)",
        )  # fmt: skip
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _handle(self, item: object) -> bool:
        """Act on one inbox item; False when the stream is over. (A method of its own so
        that nothing of the item stays referenced while the stream waits.)"""
        if item is _END:
            return False
        if isinstance(item, Exception):
            if isinstance(item, GRPCError | ProtocolError | ServerClosing | Refused):
                raise item
            if isinstance(item, DecodeError):
                raise ProtocolError("INVALID_ARGUMENT", f"undecodable DiscoveryRequest: {item}")
            log.info("stream broken: %r", item, extra=self.fields)
            return False
        if item is _WAKE:
            snapshot, self.pending = self.pending, None
            if snapshot is not None:
                await self._send(self.core.on_snapshot(snapshot))
            return True
        assert isinstance(item, discovery_pb2.DiscoveryRequest)
        request = item
        if self.key is None:
            self._open(request)
        if log.isEnabledFor(logging.DEBUG):
            kind = SHORT_NAMES.get(TypeUrl(request.type_url), request.type_url)
            log.debug(
                "request %s version=%r nonce=%r names=%d",
                kind, request.version_info, request.response_nonce, len(request.resource_names),
                extra={**self.fields, "type": kind, "version": request.version_info,
                       "nonce": request.response_nonce},
            )  # fmt: skip
        await self._send(self.core.on_request(request))
        return True

    def _open(self, first: Any) -> None:
        if not first.HasField("node") or not (first.node.id or first.node.cluster):
            raise ProtocolError("INVALID_ARGUMENT", "the first request must carry the node")
        node = first.node
        if self.authorize is not None:
            self.authorize(node)
        self.key = self.source.classify(node, self._classify_as())
        self.fields = {"client": self.client_id, "node": node.id}
        cache = self.source.cache
        cache.open_client(self.client_id, node_id=node.id, key=self.key, transport=self.transport)
        snapshot = self.source.snapshot(self.key)
        cache.subscribe(self.key, self._on_snapshot)
        log.info(
            "stream opened (%s, class %s)", self.transport, self.key,
            extra={**self.fields, "transport": self.transport},
        )  # fmt: skip
        if snapshot is not None:
            self._feed_first_snapshot(snapshot)

    def _classify_as(self) -> str:
        """The transport name the node class is made with (``ads``, ``grpc``...)."""
        return "ads" if self.core.ads else "grpc"

    def _feed_first_snapshot(self, snapshot: Snapshot) -> None:
        """Give the core the class's snapshot as the stream opens (no events yet: the
        first request is processed right after)."""
        self.core.on_snapshot(snapshot)

    async def _send(self, events: list[Any]) -> None:
        for news in record_events(self.source.cache, self.client_id, events):
            _log_rejection(self.fields, news)
        for event in events:
            if isinstance(event, Response):
                if log.isEnabledFor(logging.DEBUG):
                    kind = SHORT_NAMES.get(event.type_url, event.type_url)
                    log.debug(
                        "sending %s version=%s nonce=%s resources=%d",
                        kind, event.version, event.nonce, len(event.resources),
                        extra={**self.fields, "type": kind, "version": event.version,
                               "nonce": event.nonce},
                    )  # fmt: skip
                await self.stream.send_message(EncodedResponse(self.encoder.encode(event)))

    def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        if self.key is not None:
            self.source.cache.unsubscribe(self.key, self._on_snapshot)
            self.source.cache.close_client(self.client_id)
            log.info("stream closed", extra=self.fields)


def _log_rejection(fields: dict[str, str], event: Nack | NotApplied) -> None:
    kind = SHORT_NAMES.get(event.type_url, event.type_url)
    if isinstance(event, Nack):
        log.warning(
            "NACK of %s version %s (keeps %s): %s",
            kind, event.rejected_version, event.version, event.message,
            extra={**fields, "type": kind, "version": event.rejected_version},
        )  # fmt: skip
    else:
        log.warning(
            "%s version %s not applied", kind, event.served_version,
            extra={**fields, "type": kind, "version": event.served_version},
        )  # fmt: skip
