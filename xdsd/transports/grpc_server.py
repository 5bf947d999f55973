"""The gRPC server on grpclib: the discovery services, and grpclib's server on xdsd's
listener (connections bounded, streams counted, resets costed).

How this works: ``GrpcServer`` is grpclib's ``Server`` whose connections come from a
``xdsd.transports.connections.Listener`` (limits per address and in total, accept
failures shed, handshake and idle timeouts) instead of asyncio's server. Each connection's
protocol is grpclib's ``H2Protocol`` with two hooks on its events processor: every stream
registered and released tells the ``Connection`` (so a connection without streams times
out), and every stream the client resets spends a token of the connection's
``TokenBucket`` (``max_stream_resets_per_second``, bursts of ten seconds' worth). A client
out of tokens is abusing resets (HTTP/2 "rapid reset": each opened stream costs the server
a task, each reset its cancellation): the connection gets GOAWAY (ENHANCE_YOUR_CALM) and
is closed, its streams cancelled, counted as ``rapid_reset``. A stream reset before its
handler ran is released at once, so it leaves nothing behind.

The discovery services: ``DiscoveryServices`` is grpclib's service object for every
method of ``xdsd.transports.methods.METHODS``; each stream is served by
``xdsd.transports.grpc.DiscoveryStreams`` over a ``BoundedStream``, which checks a request
message's length prefix before reading its bytes. Responses are the ``ResponseEncoder``'s
pre-encoded bytes: the services declare ``EncodedResponse`` as their reply type, so
grpclib's codec writes them as they are.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable, Collection, Sequence
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError
from grpclib.const import Cardinality, Status
from grpclib.const import Handler as MethodHandler
from grpclib.exceptions import GRPCError
from grpclib.protocol import H2Protocol
from grpclib.server import Handler, Server, Stream
from h2.errors import ErrorCodes
from h2.events import StreamReset

from xdsd.errors import CredentialRefused
from xdsd.protocol import ProtocolError
from xdsd.transports import SnapshotSource
from xdsd.transports.connections import Connection, ConnectionGate, Listener, TokenBucket
from xdsd.transports.grpc import DiscoveryStreams
from xdsd.transports.identity import AUTHORIZATION, IdentityProvider
from xdsd.transports.limits import (
    NodeAuthorizer,
    RefusalObserver,
    Refused,
    StreamLimits,
    ignore_refusal,
    too_large,
)
from xdsd.transports.methods import METHODS, Method
from xdsd.transports.signing import SIGN_METHOD, SigningEndpoint
from xdsd.transports.wire import EncodedResponse

log = logging.getLogger(__name__)

#: Seconds of ``max_stream_resets_per_second`` a connection may spend at once.
RESET_BURST_SECONDS = 10.0


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


def authorization(stream: Stream[Any, Any]) -> list[str | bytes]:
    """The ``authorization`` metadata values of a grpclib stream (usually none or one)."""
    metadata = stream.metadata
    if metadata is None:
        return []
    return list(metadata.getall(AUTHORIZATION, []))


class DiscoveryServices:
    """The grpclib service object serving every method of ``METHODS`` from ``source``,
    within ``limits``; ``authorizer`` checks the node of each stream against its client
    certificate; ``identities`` issues identities; ``on_refused`` hears of every refusal (see
    ``DiscoveryStreams``)."""

    def __init__(
        self,
        source: SnapshotSource,
        *,
        limits: StreamLimits | None = None,
        authorizer: NodeAuthorizer | None = None,
        on_refused: RefusalObserver = ignore_refusal,
        identities: IdentityProvider | None = None,
    ) -> None:
        self.discovery = DiscoveryStreams(
            source,
            limits=limits,
            authorizer=authorizer,
            on_refused=on_refused,
            identities=identities,
        )
        #: The open streams (for shutdown).
        self.streams = self.discovery.streams

    def __mapping__(self) -> dict[str, MethodHandler]:
        return {
            method.path: MethodHandler(
                self._handler(method),
                Cardinality.STREAM_STREAM,
                method.codec.request_type,
                EncodedResponse,
            )
            for method in METHODS
        }

    def _handler(self, method: Method) -> Any:
        async def handler(stream: Stream[Any, Any]) -> None:
            await self._serve(method, stream)

        return handler

    async def _serve(self, method: Method, stream: Stream[Any, Any]) -> None:
        discovery = self.discovery
        bounded = BoundedStream(stream, discovery.limits.max_request_bytes)
        ending = await discovery.serve(
            method,
            bounded,
            peer_host(stream),
            lambda: peer_certificate(stream),
            lambda: authorization(stream),
        )
        if ending is not None:
            code, message = ending
            raise GRPCError(Status.__members__.get(code, Status.INVALID_ARGUMENT), message)


class CertificateService:
    """The grpclib service object of ``xdsd.transports.signing``'s signing method: a
    unary call whose request is bounded by ``max_request_bytes`` before it is read, served
    by ``endpoint``; a refusal ends it with the refusal's status."""

    def __init__(self, endpoint: SigningEndpoint, *, max_request_bytes: int) -> None:
        self.endpoint = endpoint
        self.max_request_bytes = max_request_bytes

    def __mapping__(self) -> dict[str, MethodHandler]:
        return {
            SIGN_METHOD: MethodHandler(
                self._sign, Cardinality.UNARY_UNARY, struct_pb2.Struct, struct_pb2.Struct
            )
        }

    async def _sign(self, stream: Stream[Any, Any]) -> None:
        try:
            request = await BoundedStream(stream, self.max_request_bytes).recv_message()
        except DecodeError:
            request = None
        except Refused as e:
            self.endpoint.on_refused("grpc", e.reason)
            raise GRPCError(Status.RESOURCE_EXHAUSTED, e.message) from None
        except ProtocolError as e:
            raise GRPCError(Status.INVALID_ARGUMENT, str(e)) from None
        metadata = stream.metadata
        authorization = list(metadata.getall(AUTHORIZATION, [])) if metadata is not None else []
        try:
            response = await self.endpoint.sign(request, authorization, peer_host(stream))
        except CredentialRefused as e:
            raise GRPCError(
                Status.__members__.get(e.code, Status.INVALID_ARGUMENT), str(e)
            ) from None
        await stream.send_message(response)


class CostedH2Protocol(H2Protocol):
    """grpclib's HTTP/2 server protocol for one ``connection``, its streams counted and
    its stream resets limited to ``resets`` (see the module docstring)."""

    def __init__(
        self,
        handler: Handler,
        config: Any,
        h2_config: Any,
        connection: Connection,
        resets: TokenBucket,
    ) -> None:
        super().__init__(handler, config, h2_config)
        self.tracked = connection
        self.resets = resets
        #: Set once the client reset streams beyond its rate (the connection closes).
        self.abusive = False
        self._releases: dict[int, Callable[[], None]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        processor = self.processor
        register = processor.register
        processed_reset: Callable[[Any], None] = processor.processors[StreamReset]  # type: ignore[assignment]

        def register_counted(stream: Any) -> Callable[[], None]:
            release = register(stream)
            stream_id: int = stream.id
            released = False

            def release_counted() -> None:
                nonlocal released
                if released:
                    return
                released = True
                self._releases.pop(stream_id, None)
                self.tracked.ended()
                release()

            self._releases[stream_id] = release_counted
            self.tracked.started()
            return release_counted

        def on_reset(event: StreamReset) -> None:
            processed_reset(event)
            # The stream is over: release it now (its handler, if it ever runs, finds
            # it released), so a stream reset before its handler ran leaves nothing.
            release = self._releases.get(event.stream_id)
            if release is not None:
                release()
            if event.remote_reset and not self.abusive and not self.resets.take():
                self.abusive = True
                asyncio.get_running_loop().call_soon(self._close_abusive)

        processor.register = register_counted  # type: ignore[method-assign]
        processor.processors[StreamReset] = on_reset

    def data_received(self, data: bytes) -> None:
        if not self.abusive:  # what an abusive client sends before it is closed is dropped
            super().data_received(data)

    def _close_abusive(self) -> None:
        """GOAWAY (ENHANCE_YOUR_CALM), cancel every stream, close the connection."""
        if self.connection.is_closing():
            return
        tracked = self.tracked
        tracked.listener.gate.refuse(
            tracked.listener.name,
            "rapid_reset",
            f"closing a connection from {tracked.address}: it resets streams faster than "
            f"{self.resets.rate:g} per second (max_stream_resets_per_second)",
        )
        self.connection._connection.close_connection(error_code=ErrorCodes.ENHANCE_YOUR_CALM)
        self.connection.flush()
        for release in tuple(self._releases.values()):
            release()
        self.processor.close("closed for rapid resets")


class GrpcServer(Server):
    """grpclib's ``Server`` accepting through ``gate`` (listener label ``grpc``), each
    connection allowed ``resets_per_second`` stream resets (0: no limit)."""

    def __init__(
        self, handlers: Collection[Any], *, gate: ConnectionGate, resets_per_second: float
    ) -> None:
        super().__init__(handlers)
        self.gate = gate
        self.resets_per_second = resets_per_second

    def _connection_protocol(self, connection: Connection) -> H2Protocol:
        self.__gc_step__()
        handler = Handler(self._mapping, self._codec, self._status_details_codec, self.__dispatch__)
        self._handlers.add(handler)
        rate = self.resets_per_second
        resets = TokenBucket(rate, max(1.0, rate * RESET_BURST_SECONDS))
        return CostedH2Protocol(handler, self._config, self._h2_config, connection, resets)

    async def listen(
        self,
        host: str,
        port: int,
        *,
        backlog: int = 1024,
        ssl_context: ssl.SSLContext | None = None,
        sockets: Sequence[socket.socket] | None = None,
    ) -> Listener:
        """Bind and serve (see ``Listener.start``; with ``sockets``, serve on those
        listening sockets instead of binding); grpclib's ``close`` and ``wait_closed``
        work as with its own ``start``."""
        if self._server is not None:
            raise RuntimeError("the server is already listening")
        listener = Listener("grpc", self.gate, self._connection_protocol, ssl_context=ssl_context)
        await listener.start(host, port, backlog=backlog, sockets=sockets)
        self._server = listener
        self._server_closed_fut = asyncio.get_running_loop().create_future()
        return listener
