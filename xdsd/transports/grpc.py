"""gRPC discovery streams: the one stream loop both gRPC servers run, whatever it speaks.

How this works: each gRPC stream gets a ``StreamClient`` made for its ``Method``
(``xdsd.transports.methods``): the method's codec gives the protocol core (``SotwStream``
or ``DeltaStream``), how requests are read and the body writer responses are encoded with.
A reader task puts every request it decodes into the stream's inbox; the snapshot cache's
watcher marks a new snapshot as pending and wakes the inbox once, however many snapshots
arrive meanwhile. The stream's own task takes items from the inbox, feeds them to the
core, records the events in client status and writes the responses out, each encoded by
the server's one ``ResponseEncoder`` (``xdsd.transports.wire``). A client that breaks the
protocol gets its stream ended with a gRPC status; nothing a client sends can stop the
server. On shutdown, ``OpenStreams.close_all`` ends every stream with UNAVAILABLE and a
message (and any stream opened meanwhile at once), so clients know to reconnect elsewhere.

``DiscoveryStreams`` is what a server library wraps (``xdsd.transports.grpc_server`` for
grpclib, ``xdsd.transports.grpc_aio`` for grpcio): given a method, the library's stream as
a ``MessageStream``, the client's address and certificate, it serves the stream within
the limits and returns the status to end it with. Limits (``xdsd.transports.limits``):
the streams of one client address are counted, a stream that sends no first request in
time is ended, a client that sends without reading is cut off (``max_queued_requests``);
with client certificates, the node a stream names is checked against what its certificate
may speak for. Each refusal ends that stream only, with RESOURCE_EXHAUSTED,
DEADLINE_EXCEEDED, PERMISSION_DENIED or UNAUTHENTICATED, logged and reported to
``on_refused``.

Identities (``[mesh.ca]``, ``xdsd.transports.identity``): with an ``IdentityProvider``,
a stream proves who it is when it opens (its bearer token, else its client certificate)
and gets an ``IdentityLease``; every snapshot the stream sends is then its *view*: its
class's snapshot (shared by every client of the class) with the lease's resources (the
client's own ``default`` secret) laid over it. When the lease changes (renewal, a new
signing authority) the stream is woken and sends its new view, with no reconnect; when
the lease ends it (revocation, a token that expired before renewal) the stream ends with
the lease's status.

Logging: each line about a stream carries ``client`` (the stream's id) and ``node`` (its
node id), and lines about one type ``type`` and ``version``, as ``extra`` fields (see
``xdsd.logs``); per-request DEBUG lines build them only when DEBUG is enabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Protocol

from google.protobuf.message import DecodeError
from grpclib.exceptions import GRPCError

from xdsd.cache.snapshot import Snapshot
from xdsd.errors import TranslationError
from xdsd.protocol import Event, Nack, NotApplied, ProtocolError, record_events, user_agent
from xdsd.resources import SHORT_NAMES
from xdsd.transports import SnapshotSource, StreamRegistrar
from xdsd.transports.identity import (
    Credential,
    IdentityLease,
    IdentityProvider,
    bearer_token,
)
from xdsd.transports.limits import (
    AddressCount,
    NodeAuthorizer,
    RefusalObserver,
    Refused,
    StreamLimits,
    certificate_sans,
    ignore_refusal,
    node_identity,
)
from xdsd.transports.methods import RESPONSES, Method
from xdsd.transports.wire import EncodedResponse, ResponseEncoder

log = logging.getLogger(__name__)

_END = object()
_WAKE = object()

#: A gRPC status code name and message to end a stream with.
Ending = tuple[str, str]


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
    """The two calls a stream's loop makes on its library's stream."""

    async def recv_message(self) -> Any:
        """The next decoded request; None once the client has finished sending. Raises
        what the library raises for a broken stream, ``DecodeError`` for a message that
        does not decode, ``Refused`` or ``ProtocolError`` for one the transport refuses."""
        ...

    async def send_message(self, message: EncodedResponse) -> None:
        """Write one response."""
        ...


#: What can end a stream with a status (see ``stream_ending``).
STREAM_ENDINGS = (Refused, ServerClosing, ProtocolError, TranslationError)


def stream_ending(
    client: StreamClient, error: Exception, address: str, on_refused: RefusalObserver
) -> Ending:
    """Log (and, for a refusal, count) what ended ``client``'s stream, one of
    ``STREAM_ENDINGS``; returns the gRPC status code name and message to end it with
    (each transport maps the name to its library's status)."""
    if isinstance(error, Refused):
        log.warning(
            "refused: %s",
            error.message,
            extra={**client.fields, "peer": address, "reason": error.reason},
        )
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


class DiscoveryStreams:
    """What both gRPC servers share to serve discovery streams from ``source``: the
    response encoder, stream ids, the open streams, the ``limits`` and streams counted per
    address; ``authorizer`` checks the node of each stream against its client
    certificate; ``identities`` admits streams and issues their identities (see the
    module docstring); ``registrar`` registers a node that names a WorkloadGroup as a
    workload while its stream is open; ``on_refused`` hears of every refusal."""

    def __init__(
        self,
        source: SnapshotSource,
        *,
        limits: StreamLimits | None = None,
        authorizer: NodeAuthorizer | None = None,
        on_refused: RefusalObserver = ignore_refusal,
        identities: IdentityProvider | None = None,
        registrar: StreamRegistrar | None = None,
    ) -> None:
        self.source = source
        self.registrar = registrar
        self.encoder = ResponseEncoder()
        self._ids = itertools.count(1)
        self.streams = OpenStreams()
        self.limits = limits or StreamLimits()
        self.addresses = AddressCount(self.limits.max_streams_per_address)
        self.authorizer = authorizer
        self.on_refused = on_refused
        self.identities = identities

    async def serve(
        self,
        method: Method,
        stream: MessageStream,
        address: str,
        certificate: Callable[[], dict[str, Any] | None],
        authorization: Callable[[], Sequence[str | bytes]] = tuple,
    ) -> Ending | None:
        """Serve one stream of ``method`` from the client at ``address`` whose verified
        certificate ``certificate()`` gives (asked only when nodes are authorized or
        identities issued) and whose ``authorization`` metadata values
        ``authorization()`` gives (asked only when identities are issued).
        Returns None when the stream ended by itself (the client finished or went away),
        else the status to end it with (a refusal, a protocol error, shutdown); raises
        what the library's stream raised that is its own (e.g. grpclib's GRPCError)."""
        try:
            self.addresses.acquire(address)
        except Refused as e:
            log.warning("refused: %s", e.message, extra={"peer": address, "reason": e.reason})
            self.on_refused("grpc", e.reason)
            return e.code, e.message
        try:
            return await self._serve_counted(method, stream, address, certificate, authorization)
        finally:
            self.addresses.release(address)

    async def _serve_counted(
        self,
        method: Method,
        stream: MessageStream,
        address: str,
        certificate: Callable[[], dict[str, Any] | None],
        authorization: Callable[[], Sequence[str | bytes]],
    ) -> Ending | None:
        client = StreamClient(self.source, stream, method, next(self._ids), self.encoder)
        client.first_request_timeout = self.limits.first_request_timeout
        client.max_queued = self.limits.max_queued_requests
        if self.authorizer is not None and self.authorizer.enforcing:
            cert, check = certificate(), self.authorizer.check
            client.authorize = lambda node: check(cert, node_identity(node))
        if self.identities is not None and self.identities.enabled:
            client.admit = self._admission(certificate, authorization)
        if self.registrar is not None:
            client.register = self.registrar.attach
        try:
            self.streams.add(client)
            await client.run()
        except STREAM_ENDINGS as e:
            return stream_ending(client, e, address, self.on_refused)
        finally:
            self.streams.discard(client)
            client.close()
        return None

    def _admission(
        self,
        certificate: Callable[[], dict[str, Any] | None],
        authorization: Callable[[], Sequence[str | bytes]],
    ) -> Callable[[Any], IdentityLease | None]:
        """What admits a stream's node (``StreamClient.admit``): its bearer token, else
        its client certificate when the node authorizer may judge it (and allows it:
        else PERMISSION_DENIED), else nothing, handed to the identity provider."""
        identities, authorizer = self.identities, self.authorizer
        assert identities is not None

        def admit(node: Any) -> IdentityLease | None:
            claim = node_identity(node)
            token = bearer_token(authorization())
            credential: Credential | None = None
            if token is not None:
                credential = Credential("token", token=token)
            elif authorizer is not None and authorizer.enforcing:
                cert = certificate()
                if cert is not None:
                    authorizer.check(cert, claim)
                    credential = Credential("certificate", sans=certificate_sans(cert))
            return identities.admit(claim, credential)

        return admit


class StreamClient:
    """One stream's state and loop: a stream of ``method`` reading and writing through
    ``stream``, its id made of the method's transport label and ``number``, its responses
    encoded by ``encoder`` (see the module docstring)."""

    def __init__(
        self,
        source: SnapshotSource,
        stream: MessageStream,
        method: Method,
        number: int,
        encoder: ResponseEncoder,
    ) -> None:
        codec = method.codec
        self.source = source
        self.encoder = encoder
        self.stream = stream
        self.codec = codec
        self.core = codec.core(method.type_url)
        self.transport = codec.label(method.type_url)
        self.client_id = f"{self.transport}-{number}"
        #: The ``extra`` fields of every log line about this stream (``node`` once known).
        self.fields: dict[str, str] = {"client": self.client_id}
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
        #: Called with the node when the stream opens, after ``authorize``: the stream's
        #: identity (None: none) or Refused (see ``DiscoveryStreams._admission``).
        self.admit: Callable[[Any], IdentityLease | None] | None = None
        #: The stream's identity, once admitted.
        self.lease: IdentityLease | None = None
        #: Called with the node and its class when the stream opens, after ``admit``:
        #: registers a workload (see ``StreamRegistrar``); raises Refused.
        self.register: Callable[[Any, Hashable], Callable[[], None] | None] | None = None
        #: Ends the stream's hold on its registration (None: not registered).
        self.detach: Callable[[], None] | None = None
        #: The last class snapshot (the lease's resources are laid over it).
        self.base: Snapshot | None = None

    def shut_down(self, message: str) -> None:
        """End the stream with UNAVAILABLE and ``message`` once its loop gets to it."""
        self.inbox.put_nowait(ServerClosing(message))

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        woke = self.pending is not None
        self.pending = snapshot
        if not woke:
            self.inbox.put_nowait(_WAKE)

    def _on_lease(self, ending: Refused | None) -> None:
        """The lease changed (send the new view of the last class snapshot) or must end
        the stream (``ending``)."""
        if ending is not None:
            self.inbox.put_nowait(ending)
            return
        if self.lease is not None:
            self.source.cache.record_identity(self.client_id, self.lease.identity)
        if self.base is not None:
            self._on_snapshot(self.base)

    def view(self, snapshot: Snapshot) -> Snapshot:
        """What this client is sent of its class's ``snapshot``: the snapshot itself, or
        with a lease the snapshot with the lease's resources laid over it (remembering
        the class snapshot, so a lease change can send a new view of it)."""
        self.base = snapshot
        if self.lease is None:
            return snapshot
        return Snapshot.extend(snapshot, self.lease.resources())

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
                        "DEADLINE_EXCEEDED",
                        408,
                        "first_request_timeout",
                        f"no request within {self.first_request_timeout:g} s of opening the "
                        "stream (first_request_timeout)",
                    ) from None
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
            "RESOURCE_EXHAUSTED",
            429,
            "slow_reader",
            f"{self.queued} requests read but not yet handled: the client sends without "
            "reading the responses (max_queued_requests)",
        )
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
                await self._send(self.core.on_snapshot(self.view(snapshot)))
            return True
        assert isinstance(item, self.codec.request_type)
        request = self.codec.incoming(item)
        if self.key is None:
            self._open(request)
        if log.isEnabledFor(logging.DEBUG):
            message, args, extra = self.codec.describe_request(request)
            log.debug(message, *args, extra={**self.fields, **extra})
        await self._send(self.core.on_request(request))
        return True

    def _open(self, first: Any) -> None:
        if not first.HasField("node") or not (first.node.id or first.node.cluster):
            raise ProtocolError("INVALID_ARGUMENT", "the first request must carry the node")
        node = first.node
        self.fields = {"client": self.client_id, "node": node.id}
        if self.authorize is not None:
            self.authorize(node)
        key = self.source.classify(node, self.codec.classify_as(self.core.ads))
        if self.admit is not None:
            self.lease = self.admit(node)
        if self.register is not None:
            self.detach = self.register(node, key)
        self.key = key
        cache = self.source.cache
        cache.open_client(
            self.client_id,
            node_id=node.id,
            key=self.key,
            transport=self.transport,
            agent=user_agent(node),
        )
        if self.lease is not None:
            cache.record_identity(self.client_id, self.lease.identity)
            self.lease.listen(self._on_lease)
        snapshot = self.source.snapshot(self.key)
        cache.subscribe(self.key, self._on_snapshot)
        log.info(
            "stream opened (%s, class %s)",
            self.transport,
            self.key,
            extra={**self.fields, "transport": self.transport},
        )
        if snapshot is not None:
            # no events yet: the first request is processed right after
            self.core.on_snapshot(self.view(snapshot))

    async def _send(self, events: Sequence[Event]) -> None:
        for news in record_events(self.source.cache, self.client_id, events):
            _log_rejection(self.fields, news)
        for event in events:
            if isinstance(event, RESPONSES):
                if log.isEnabledFor(logging.DEBUG):
                    message, args, extra = self.codec.describe_response(event)
                    log.debug(message, *args, extra={**self.fields, **extra})
                data = self.encoder.encode(event, self.codec.write)
                await self.stream.send_message(EncodedResponse(data))

    def close(self) -> None:
        """Stop reading and leave client status and the class's subscribers."""
        if self.reader is not None:
            self.reader.cancel()
        if self.lease is not None:
            self.lease.close()
        if self.detach is not None:
            detach, self.detach = self.detach, None
            detach()
        if self.key is not None:
            self.source.cache.unsubscribe(self.key, self._on_snapshot)
            self.source.cache.close_client(self.client_id)
            log.info("stream closed", extra=self.fields)


def _log_rejection(fields: dict[str, str], event: Nack | NotApplied) -> None:
    kind = SHORT_NAMES.get(event.type_url, event.type_url)
    if isinstance(event, Nack):
        log.warning(
            "NACK of %s version %s (keeps %s): %s",
            kind,
            event.rejected_version,
            event.version,
            event.message,
            extra={**fields, "type": kind, "version": event.rejected_version},
        )
    else:
        log.warning(
            "%s version %s not applied",
            kind,
            event.served_version,
            extra={**fields, "type": kind, "version": event.served_version},
        )
