"""The daemon's listeners behind one interface: start, then close within a deadline.

How this works: the transports each expose their own way to bind and to stop — grpclib's
``GrpcServer`` (``listen``, ``close``/``wait_closed``, its streams in an ``OpenStreams``),
grpcio's ``AioServer`` (``start``, ``stop(grace)``), and aiohttp applications served
through ``serve_http`` (an ``AppRunner`` to clean up and a connections ``Listener`` to
close). The adapters here give each the same two calls, ``DaemonListener.start`` and
``DaemonListener.close``, so the daemon (``xdsd.app``) starts them in order and closes
them in order against one ``Deadline``.

Closing a gRPC listener is the staged part of a shutdown: every open stream is asked to
end with UNAVAILABLE and ``SHUTDOWN_MESSAGE`` (a stream opened meanwhile ends the same
way at once), the streams get until the deadline, and whatever is still open then is cut
with its connection. An HTTP listener stops accepting, then its open connections get until
the deadline (at least ``MIN_CLEANUP`` seconds) to finish their requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from xdsd.plurals import counted
from xdsd.settings import Address
from xdsd.transports.connections import Listener
from xdsd.transports.grpc import OpenStreams
from xdsd.transports.grpc_server import GrpcServer

if TYPE_CHECKING:
    from xdsd.transports.grpc_aio import AioServer

log = logging.getLogger(__name__)

#: The message every open stream ends with (status UNAVAILABLE) when xdsd shuts down.
SHUTDOWN_MESSAGE = "xdsd is shutting down; reconnect (to another replica, if there is one)"
#: Seconds a server's own cleanup (connections closing, accept loops ending) is given even
#: when the deadline has passed: closing sockets must not be skipped.
MIN_CLEANUP = 1.0


@dataclass(frozen=True, slots=True)
class Deadline:
    """When a shutdown's grace ends (``at``, on the event loop's clock) and how long that
    grace was (``grace`` seconds, for the log)."""

    at: float
    grace: float

    @classmethod
    def after(cls, grace: float) -> Deadline:
        """The deadline ``grace`` seconds from now (needs a running loop)."""
        return cls(asyncio.get_running_loop().time() + grace, grace)

    def left(self, floor: float = 0.0) -> float:
        """Seconds until the deadline, never less than ``floor``."""
        return max(floor, self.at - asyncio.get_running_loop().time())


class DaemonListener(Protocol):
    """One server of the daemon (gRPC xDS, REST xDS, admin).

    ``name`` and ``note`` are how the log speaks of it ("gRPC xDS listening on ADDRESS
    NOTE"). ``start`` binds and serves, and returns the address bound (port 0 binds a free
    one); it raises OSError when the address cannot be bound, and leaves nothing open
    then. ``close`` stops accepting and ends what is open by the deadline (see the module
    docstring); it never raises for a client that does not go away, and may be called
    once, after ``start``."""

    name: str
    note: str
    address: Address

    async def start(self) -> str: ...

    async def close(self, deadline: Deadline) -> None: ...


async def end_streams(streams: OpenStreams, deadline: Deadline) -> None:
    """End every stream of ``streams`` (and refuse new ones) with UNAVAILABLE and
    ``SHUTDOWN_MESSAGE``; wait for them until ``deadline``; log how it went."""
    count = len(streams)
    left = await streams.close_all(SHUTDOWN_MESSAGE, deadline.left())
    if count:
        log.info("ended %s with UNAVAILABLE", counted(count - left, "stream"))
    if left:
        log.warning(
            "%s still open after %.1f s (clients not reading): cut",
            counted(left, "stream"),
            deadline.grace,
        )


class GrpclibListener:
    """The grpclib gRPC server (``GrpcServer``, its streams in ``streams``) on
    ``address``, with ``backlog`` and TLS when ``tls`` is given; with ``sockets``, on
    those listening sockets (a worker's, bound by the supervisor) instead of binding."""

    name = "gRPC xDS"

    def __init__(
        self,
        server: GrpcServer,
        streams: OpenStreams,
        address: Address,
        *,
        backlog: int,
        tls: ssl.SSLContext | None,
        note: str,
        sockets: Sequence[socket.socket] | None = None,
    ) -> None:
        self.server = server
        self.sockets = sockets
        self.streams = streams
        self.address = address
        self.backlog = backlog
        self.tls = tls
        self.note = note

    async def start(self) -> str:
        listener = await self.server.listen(
            self.address.host,
            self.address.port,
            backlog=self.backlog,
            ssl_context=self.tls,
            sockets=self.sockets,
        )
        return str(Address(self.address.host, listener.port))

    async def close(self, deadline: Deadline) -> None:
        await end_streams(self.streams, deadline)
        self.server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.server.wait_closed(), deadline.left(MIN_CLEANUP))


class GrpcioListener:
    """The grpcio gRPC server (``AioServer``, TLS as it was made with) on ``address``."""

    name = "gRPC xDS"

    def __init__(self, server: AioServer, address: Address, *, note: str) -> None:
        self.server = server
        self.address = address
        self.note = f" (grpcio){note}"

    async def start(self) -> str:
        await self.server.start(self.address)
        return str(Address(self.address.host, self.server.port))

    async def close(self, deadline: Deadline) -> None:
        await end_streams(self.server.services.streams, deadline)
        await self.server.stop(deadline.left())


#: How an HTTP listener binds: ``serve_http`` (or ``start_rest``) for its application,
#: returning the runner to clean up and the connections listener to close.
ServeHttp = Callable[[], Awaitable[tuple[web.AppRunner, Listener]]]


class HttpListener:
    """An aiohttp application (REST xDS, admin) served by ``serve`` on ``address``."""

    def __init__(self, name: str, serve: ServeHttp, address: Address, *, note: str) -> None:
        self.name = name
        self.serve = serve
        self.address = address
        self.note = note
        self._runner: web.AppRunner | None = None
        self._listener: Listener | None = None

    async def start(self) -> str:
        self._runner, self._listener = await self.serve()
        if self._listener.unix_path:
            return self._listener.unix_path
        return str(Address(self.address.host, self._listener.port))

    async def close(self, deadline: Deadline) -> None:
        if self._listener is not None:
            self._listener.close()
        if self._runner is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._runner.cleanup(), deadline.left(MIN_CLEANUP))
