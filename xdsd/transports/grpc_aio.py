"""The gRPC server on grpcio's asyncio server: the same methods as the grpclib server.

Every method of ``xdsd.transports.methods.METHODS`` (ADS and the per-type services, SotW,
delta and v2) is registered as a generic stream-stream handler. Each stream is served by
``xdsd.transports.grpc.DiscoveryStreams`` (the same stream loop, protocol cores, inbox,
watcher subscription, client status and log lines as on grpclib) over an adapter that
reads requests from the grpcio context and writes responses to it. Responses are the
``ResponseEncoder``'s pre-encoded bytes; the response serializer passes them through.

A request that does not decode is handed to the loop as its ``DecodeError`` (the
deserializer does not raise), so it ends the stream with INVALID_ARGUMENT like grpclib's
transport, not with grpcio's generic INTERNAL.

Limits: grpcio itself refuses a message over ``max_request_bytes`` (RESOURCE_EXHAUSTED,
not counted in metrics); streams per address, the first-request timeout and the bound on
queued requests are counted as in the grpclib transport. Connections are grpcio's own
(its C core accepts them): ``max_connections`` becomes its
``grpc.max_allowed_incoming_connections`` (the gRPC listener's alone, not shared with
REST and admin), ``handshake_timeout`` its ``grpc.server_handshake_timeout_ms`` and
``idle_connection_timeout`` its ``grpc.max_connection_idle_ms``; grpcio has no limit per
client address, and its refusals are not counted in xdsd's metrics. Rapid resets are
bounded by grpcio's own HTTP/2 defences.

TLS: given a ``PemSource``, the server listens with grpcio's dynamic SSL credentials,
which ask for the certificate before every new connection's handshake (on a grpcio
thread): the source's ``current`` PEM files are handed over whenever their
``generation`` changed, so a reloaded certificate serves new connections at once. Node
authorization is the grpclib transport's: the client certificate's URI and DNS SANs
(grpcio's ``peer_uri`` / ``peer_dns`` auth properties) are checked by the
``NodeAuthorizer`` when the first request names the node, and a refusal ends the stream
with PERMISSION_DENIED, logged and counted the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import grpc  # type: ignore[import-untyped]
import grpc.aio  # type: ignore[import-untyped]
from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError

from xdsd.errors import CredentialRefused
from xdsd.settings import Address
from xdsd.transports import SnapshotSource
from xdsd.transports.connections import ConnectionLimits
from xdsd.transports.grpc import DiscoveryStreams
from xdsd.transports.identity import AUTHORIZATION, IdentityProvider
from xdsd.transports.limits import (
    NodeAuthorizer,
    RefusalObserver,
    StreamLimits,
    ignore_refusal,
)
from xdsd.transports.methods import METHODS, Method
from xdsd.transports.signing import CERTIFICATE_SERVICE, SIGN_NAME, SigningEndpoint
from xdsd.transports.wire import EncodedResponse


def _peer_host(peer: str) -> str:
    """The host of a grpcio peer string (``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``)."""
    address = peer.partition(":")[2]
    return address.rpartition(":")[0].strip("[]") or address


class PemFiles(Protocol):
    """A server certificate as PEM bytes: ``chain`` (leaf first), ``key``, ``client_ca``
    (b"": no client certificates asked for) and a ``generation`` that changes whenever
    the rest does."""

    @property
    def generation(self) -> int: ...
    @property
    def chain(self) -> bytes: ...
    @property
    def key(self) -> bytes: ...
    @property
    def client_ca(self) -> bytes: ...


#: Where the server's current certificate comes from (``xdsd.tls.ServerCertificates``).
PemSource = Callable[[], PemFiles]


def server_credentials(source: PemSource) -> grpc.ServerCredentials:
    """grpcio server credentials presenting ``source()``'s certificate, asking for it
    again before every handshake and switching when its generation changed; client
    certificates are required when the first one names a client CA."""
    first = source()
    served = [first.generation]

    def configuration(pem: PemFiles) -> Any:
        return grpc.ssl_server_certificate_configuration(
            [(pem.key, pem.chain)], root_certificates=pem.client_ca or None
        )

    def fetch() -> Any:  # on a grpcio thread; None keeps the current configuration
        pem = source()
        if pem.generation == served[0]:
            return None
        served[0] = pem.generation
        return configuration(pem)

    return grpc.dynamic_ssl_server_credentials(
        configuration(first), fetch, require_client_authentication=bool(first.client_ca)
    )


def peer_certificate(context: Any) -> dict[str, Any] | None:
    """The verified client certificate's URI and DNS SANs from a grpcio context's auth
    properties, in ``getpeercert()``'s shape (None without a certificate)."""
    properties = context.auth_context() or {}
    sans = [("URI", value.decode()) for value in properties.get("peer_uri", ())]
    sans += [("DNS", value.decode()) for value in properties.get("peer_dns", ())]
    if not sans and not properties.get("x509_pem_cert"):
        return None
    return {"subjectAltName": tuple(sans)}


def authorization(context: Any) -> list[str | bytes]:
    """The ``authorization`` metadata values of a grpcio context (usually none or one)."""
    return [value for key, value in (context.invocation_metadata() or ()) if key == AUTHORIZATION]


def _decoder(request_type: type[Any]) -> Callable[[bytes], Any]:
    """``request_type.FromString``, returning the error instead of raising it."""

    def decode(data: bytes) -> Any:
        try:
            return request_type.FromString(data)
        except DecodeError as e:
            return e

    return decode


def _encoded(response: EncodedResponse) -> bytes:
    return response.data


class _ContextStream:
    """A grpcio servicer context as the ``MessageStream`` the loop reads and writes."""

    __slots__ = ("context",)

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.context = context

    async def recv_message(self) -> Any:
        message = await self.context.read()
        if message is grpc.aio.EOF:
            return None
        if isinstance(message, DecodeError):
            raise message
        return message

    async def send_message(self, message: EncodedResponse) -> None:
        await self.context.write(message)


class AioDiscoveryServices:
    """Every method of ``METHODS`` as grpcio generic handlers, served from ``source``
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
        self.limits = self.discovery.limits

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        """One generic handler per service."""
        services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
        for method in METHODS:
            services.setdefault(method.service, {})[method.name] = self._handler(method)
        return [
            grpc.method_handlers_generic_handler(service, methods)
            for service, methods in services.items()
        ]

    def _handler(self, method: Method) -> grpc.RpcMethodHandler:
        async def behaviour(_requests: Any, context: Any) -> None:
            await self._serve(method, context)

        return grpc.stream_stream_rpc_method_handler(
            behaviour,
            request_deserializer=_decoder(method.codec.request_type),
            response_serializer=_encoded,
        )

    async def _serve(self, method: Method, context: Any) -> None:
        ending = await self.discovery.serve(
            method,
            _ContextStream(context),
            _peer_host(context.peer() or ""),
            lambda: peer_certificate(context),
            lambda: authorization(context),
        )
        if ending is not None:
            code, details = ending
            await context.abort(
                grpc.StatusCode.__members__.get(code, grpc.StatusCode.INVALID_ARGUMENT), details
            )


def signing_handler(endpoint: SigningEndpoint) -> grpc.GenericRpcHandler:
    """``xdsd.transports.signing``'s method as a grpcio generic handler (a request that
    does not decode reaches ``endpoint`` as None: INVALID_ARGUMENT)."""

    async def sign(request: Any, context: Any) -> Any:
        authorization = [
            value for key, value in (context.invocation_metadata() or ()) if key == AUTHORIZATION
        ]
        if isinstance(request, DecodeError):
            request = None
        try:
            return await endpoint.sign(request, authorization, _peer_host(context.peer() or ""))
        except CredentialRefused as e:
            await context.abort(
                grpc.StatusCode.__members__.get(e.code, grpc.StatusCode.INVALID_ARGUMENT), str(e)
            )

    handler = grpc.unary_unary_rpc_method_handler(
        sign,
        request_deserializer=_decoder(struct_pb2.Struct),
        response_serializer=struct_pb2.Struct.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(CERTIFICATE_SERVICE, {SIGN_NAME: handler})


class AioServer:
    """A grpcio asyncio server serving ``AioDiscoveryServices`` (over TLS with ``tls``,
    see the module docstring) and, with ``signing``, the certificate signing method."""

    def __init__(
        self,
        source: SnapshotSource,
        *,
        limits: StreamLimits | None = None,
        authorizer: NodeAuthorizer | None = None,
        on_refused: RefusalObserver = ignore_refusal,
        identities: IdentityProvider | None = None,
        tls: PemSource | None = None,
        connections: ConnectionLimits | None = None,
        max_connections: int = 0,
        signing: SigningEndpoint | None = None,
    ) -> None:
        self.services = AioDiscoveryServices(
            source,
            limits=limits,
            authorizer=authorizer,
            on_refused=on_refused,
            identities=identities,
        )
        self.tls = tls
        self.signing = signing
        self.connections = connections or ConnectionLimits()
        self.max_connections = max_connections or self.connections.max_connections
        self.server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self, address: Address) -> None:
        """Bind and start serving (port 0 binds a free port, see ``port``); raises
        OSError when the address cannot be bound."""
        options: list[tuple[str, int]] = [
            ("grpc.max_receive_message_length", self.services.limits.max_request_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ]
        limits = self.connections
        if self.max_connections:
            options.append(("grpc.max_allowed_incoming_connections", self.max_connections))
        if limits.handshake_timeout:
            options.append(
                ("grpc.server_handshake_timeout_ms", int(limits.handshake_timeout * 1000))
            )
        if limits.idle_connection_timeout:
            options.append(
                ("grpc.max_connection_idle_ms", int(limits.idle_connection_timeout * 1000))
            )
        server = grpc.aio.server(options=options)
        server.add_generic_rpc_handlers(self.services.handlers())
        if self.signing is not None:
            server.add_generic_rpc_handlers([signing_handler(self.signing)])
        if self.tls is not None:
            self.port = server.add_secure_port(str(address), server_credentials(self.tls))
        else:
            self.port = server.add_insecure_port(str(address))
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        await server.start()
        self.server = server

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting streams; end the open ones after ``grace`` seconds."""
        if self.server is not None:
            await self.server.stop(grace)
