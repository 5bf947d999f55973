"""Connections: the accept loop of xdsd's listeners and what bounds their connections.

How this works: each listener (gRPC with grpclib, REST, admin) binds its own sockets and
runs its own accept loop (``Listener``) instead of asyncio's server. Every connection
accepted is counted by the process's one ``ConnectionGate`` against ``max_connections``
(all listeners together; the admin listener has a small reserve beyond it, so operators
can still look) and ``max_connections_per_address``; one beyond is closed at once, before
any byte is read or any TLS handshake begins. When ``accept()`` fails for want of
descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) the loop backs off (10 ms,
doubling up to 1 s) and leaves waiting connections in the kernel's backlog: load shedding,
while the connections already open keep being served. Every such event is counted
(``xdsd_refused_total``) and logged at most once per ``log_interval`` seconds per kind,
the line saying how many were held back, so no flood of them can flood the log.

Each accepted connection is wrapped in a ``Connection``, a protocol that forwards to the
server's own protocol and keeps one timer: a new connection must finish its TLS handshake
and then start its first request or stream within ``handshake_timeout`` each, and once no
request or stream is in progress, start another within ``idle_connection_timeout``, or it
is closed. The server's protocol says when one starts and ends (``Connection.started`` and
``ended``): grpclib's per stream (``xdsd.transports.grpc_server``), aiohttp's per request
(``tracking_middleware``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import socket
import ssl
import stat
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from aiohttp import web

from xdsd.settings import Settings
from xdsd.transports.limits import RefusalObserver, ignore_refusal

log = logging.getLogger(__name__)

#: ``accept()`` errors that mean the process (or system) is out of a resource.
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: The admin listener's connections allowed beyond ``max_connections``.
ADMIN_RESERVE = 16


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The connection limits of ``Settings`` (see there): ``max_connections`` (0: from the
    descriptor limit, ``descriptor_budget``), ``max_connections_per_address``,
    ``handshake_timeout`` and ``idle_connection_timeout`` (seconds; 0: none)."""

    max_connections: int = 0
    max_connections_per_address: int = 1024
    handshake_timeout: float = 10.0
    idle_connection_timeout: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        """The limits ``settings`` give (a key per field, of the same name)."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


#: The highest soft descriptor limit ``raise_descriptor_limit`` asks for.
DESCRIPTOR_CEILING = 1 << 20


def raise_descriptor_limit(ceiling: int = DESCRIPTOR_CEILING) -> tuple[int, int]:
    """Raise the process's soft ``RLIMIT_NOFILE`` to its hard limit (at most ``ceiling``),
    as a server that counts its connections against it should: the soft default of many
    shells (1,024) would cap a mesh at a few hundred proxies while the hard limit allows
    far more. Returns the (old, new) soft limits; a limit the kernel refuses to raise
    stays as it was (``OSError``/``ValueError`` are not raised)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = ceiling if hard == resource.RLIM_INFINITY else min(hard, ceiling)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (OSError, ValueError):
            return soft, soft
        return soft, wanted
    return soft, soft


def descriptor_budget(soft_limit: int | None = None) -> int:
    """How many connections fit the process's descriptor limit (``RLIMIT_NOFILE``, soft;
    ``soft_limit`` overrides it): three quarters of it less 64, at least 16, leaving the
    rest for config files, certificates, the watcher and the admin reserve."""
    if soft_limit is None:
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft_limit == resource.RLIM_INFINITY:
            soft_limit = 1 << 20
    return max(16, soft_limit * 3 // 4 - 64)


class LogThrottle:
    """Lets one log line per key through every ``interval`` seconds and counts the ones
    held back meanwhile (so a flood of events costs a line per interval)."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: dict[Hashable, float] = {}
        self._held: dict[Hashable, int] = {}

    def allow(self, key: Hashable) -> int | None:
        """None when a line about ``key`` must be held back now (it is counted); else how
        many were held back since the last line let through (write it now)."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)


class TokenBucket:
    """A rate: ``take()`` succeeds at an average of ``rate`` per second, with bursts of up
    to ``burst``. A rate of 0 lets everything through."""

    __slots__ = ("_clock", "_stamp", "_tokens", "burst", "rate")

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock()

    def take(self) -> bool:
        """Spend one token; False (spending nothing) when none is left."""
        if self.rate <= 0:
            return True
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class ConnectionGate:
    """The connections open over every listener of the process, by client address, within
    ``limits``; refusals and shed connections are counted through ``on_refused`` and
    logged at most once per ``log_interval`` seconds per (listener, reason)."""

    def __init__(
        self,
        limits: ConnectionLimits | None = None,
        *,
        on_refused: RefusalObserver = ignore_refusal,
        log_interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits or ConnectionLimits()
        self.max_connections = self.limits.max_connections or descriptor_budget()
        self.on_refused = on_refused
        self.throttle = LogThrottle(log_interval, clock)
        self.open = 0
        self._per_address: dict[str, int] = {}

    def __getitem__(self, address: str) -> int:
        return self._per_address.get(address, 0)

    def admit(self, listener: str, address: str, *, reserve: int = 0) -> bool:
        """Count one more connection from ``address`` to ``listener``; False (counted as
        a refusal, and logged within the throttle) when it would exceed
        ``max_connections`` (+ ``reserve``) or ``max_connections_per_address``."""
        count = self._per_address.get(address, 0)
        if self.open >= self.max_connections + reserve:
            self.refuse(
                listener,
                "too_many_connections",
                f"{self.open} connections open, the limit (max_connections): "
                f"closing a new one from {address}",
            )
            return False
        if count >= self.limits.max_connections_per_address:
            self.refuse(
                listener,
                "too_many_connections_from_address",
                f"{address} already has {count} connections open, the limit "
                "(max_connections_per_address): closing a new one",
            )
            return False
        self.open += 1
        self._per_address[address] = count + 1
        return True

    def release(self, address: str) -> None:
        """A connection from ``address`` closed."""
        self.open -= 1
        count = self._per_address.get(address, 0) - 1
        if count > 0:
            self._per_address[address] = count
        else:
            self._per_address.pop(address, None)

    def refuse(
        self, listener: str, reason: str, message: str, *, level: int = logging.WARNING
    ) -> None:
        """Count a refusal of ``reason`` on ``listener`` and log ``message`` unless a line
        of the same (listener, reason) was written less than ``log_interval`` ago."""
        self.on_refused(listener, reason)
        held = self.throttle.allow((listener, reason))
        if held is None:
            return
        more = f" ({held} more since the last such line)" if held else ""
        log.log(
            level,
            "%s: %s%s",
            listener,
            message,
            more,
            extra={"listener": listener, "reason": reason},
        )


async def bind(host: str, port: int, *, backlog: int = 1024) -> list[socket.socket]:
    """Listening sockets for ``host:port``: one per address the host resolves to (port 0:
    the same free port for every one), with ``SO_REUSEADDR`` (never ``SO_REUSEPORT``: a
    second process cannot bind the port too), IPv6 ones IPv6-only. Raises OSError when an
    address cannot be bound, leaving nothing open."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    seen: set[Any] = set()
    bound: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in infos:
            if address in seen:
                continue
            seen.add(address)
            sock = socket.socket(family, kind, proto)
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(bound) > 1:  # the same free port for every one
                address = (address[0], bound[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in bound:
            sock.close()
        raise
    return bound


#: Makes a connection's server protocol (grpclib's, aiohttp's) given its ``Connection``.
ProtocolFactory = Callable[["Connection"], asyncio.BaseProtocol]


class Listener(asyncio.AbstractServer):
    """One listening address: binds, accepts within the ``gate`` (``name`` is the listener
    label counted and logged), and hands each connection (over TLS with
    ``ssl_context``) to a protocol from ``factory``. ``reserve`` connections beyond
    ``max_connections`` are let in for this listener (admin). ``connections`` maps each
    open connection's server protocol to its ``Connection``.

    An ``asyncio.AbstractServer``: ``close()`` stops accepting (open connections stay,
    their server closes them), ``wait_closed()`` waits for the accept loops to end."""

    def __init__(
        self,
        name: str,
        gate: ConnectionGate,
        factory: ProtocolFactory,
        *,
        ssl_context: ssl.SSLContext | None = None,
        reserve: int = 0,
        connections: dict[asyncio.BaseProtocol, Connection] | None = None,
    ) -> None:
        self.name = name
        self.gate = gate
        self.factory = factory
        self.ssl_context = ssl_context
        self.reserve = reserve
        self.connections: dict[asyncio.BaseProtocol, Connection] = (
            connections if connections is not None else {}
        )
        self._sockets: list[socket.socket] = []
        self._loops: list[asyncio.Task[None]] = []
        self._starting: set[asyncio.Task[None]] = set()
        self._serving = False
        #: The unix socket path bound by ``start_unix`` ("" for a TCP listener), and the
        #: inode of the file it made (removed at ``close`` only while it is still ours).
        self.unix_path = ""
        self._unix_inode = 0

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets."""
        return tuple(self._sockets)

    @property
    def port(self) -> int:
        """The port bound (0 before ``start``)."""
        return int(self._sockets[0].getsockname()[1]) if self._sockets else 0

    async def start(
        self,
        host: str,
        port: int,
        *,
        backlog: int = 1024,
        sockets: Sequence[socket.socket] | None = None,
    ) -> None:
        """Bind ``host:port`` (every address the host resolves to; port 0: a free one) and
        start accepting; with ``sockets`` (listening sockets bound elsewhere: a worker's,
        inherited from the supervisor, ``xdsd.workers``), accept on those instead of
        binding. Raises OSError when it cannot bind."""
        if sockets is None:
            sockets = await bind(host, port, backlog=backlog)
        self._sockets = list(sockets)
        for sock in self._sockets:
            sock.setblocking(False)
        loop = asyncio.get_running_loop()
        self._serving = True
        self._loops = [loop.create_task(self._accept(sock)) for sock in self._sockets]

    async def start_unix(self, path: str, *, backlog: int = 1024) -> None:
        """Bind the unix socket ``path`` and start accepting. The socket file is made
        under a temporary name beside it, given mode 0600 and then renamed onto
        ``path``, so it is never reachable with looser permissions and a stale socket
        left there by a process that died is replaced in one step. Raises OSError when
        ``path`` exists and is not a socket (nothing else is ever replaced), or when it
        cannot bind (a path too long, a directory that does not exist)."""
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
        temporary = f"{path}.{os.getpid()}.new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sockets.append(sock)
        try:
            sock.bind(temporary)
            os.chmod(temporary, 0o600)
            sock.listen(backlog)
            sock.setblocking(False)
            os.rename(temporary, path)
        except OSError:
            self._close_sockets()
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        self.unix_path = path
        self._unix_inode = os.lstat(path).st_ino
        self._serving = True
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self._accept(sock))]

    def close(self) -> None:
        """Stop accepting (the open connections stay); a unix socket's file is removed
        (unless another process replaced it meanwhile)."""
        self._serving = False
        for task in self._loops:
            task.cancel()
        for task in tuple(self._starting):
            task.cancel()
        self._close_sockets()
        if self.unix_path:
            with contextlib.suppress(OSError):
                if os.lstat(self.unix_path).st_ino == self._unix_inode:
                    os.unlink(self.unix_path)

    async def wait_closed(self) -> None:
        """Wait for the accept loops to end (after ``close``)."""
        tasks = [*self._loops, *self._starting]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        """Serving starts with ``start``."""

    async def serve_forever(self) -> None:
        await asyncio.gather(*self._loops)

    def _close_sockets(self) -> None:
        for sock in self._sockets:
            sock.close()

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.0
        while True:
            try:
                conn, peer = await loop.sock_accept(sock)
            except OSError as e:
                if e.errno not in _EXHAUSTED:  # a connection that died in the backlog
                    log.debug("%s: accept failed: %s", self.name, e)
                    continue
                backoff = min(1.0, max(0.01, backoff * 2))
                self.gate.refuse(
                    self.name,
                    "out_of_descriptors",
                    f"cannot accept connections: {e.strerror} (errno {e.errno}); new "
                    "connections wait while the open ones are served",
                    level=logging.ERROR,
                )
                await asyncio.sleep(backoff)
                continue
            backoff = 0.0
            address = str(peer[0]) if isinstance(peer, tuple) else ""
            if not self.gate.admit(self.name, address, reserve=self.reserve):
                conn.close()
                continue
            conn.setblocking(False)
            task = loop.create_task(self._connect(conn, address))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    async def _connect(self, conn: socket.socket, address: str) -> None:
        """Hand ``conn`` to asyncio (TLS handshake first, within ``handshake_timeout``)."""
        connection = Connection(self, address)
        timeout = self.gate.limits.handshake_timeout
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: connection,
                conn,
                ssl=self.ssl_context,
                ssl_handshake_timeout=(timeout or None) if self.ssl_context else None,
            )
        except (OSError, ssl.SSLError, asyncio.CancelledError) as e:
            conn.close()
            connection.release()
            if isinstance(e, asyncio.CancelledError):
                raise
            self.gate.refuse(
                self.name,
                "tls_handshake_failed",
                f"TLS handshake with {address} failed: {e}",
                level=logging.INFO,
            )


class Connection(asyncio.Protocol):
    """One accepted connection: forwards every event to its server protocol (made by the
    listener's factory, given this object) and closes the connection when it stays too
    long without a request or stream in progress (see the module docstring). Counted in
    the gate until it closes."""

    def __init__(self, listener: Listener, address: str) -> None:
        self.listener = listener
        self.address = address
        #: Requests or streams in progress.
        self.active = 0
        self.transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._released = False
        self.protocol: Any = listener.factory(self)

    def release(self) -> None:
        """Stop counting this connection in the gate (once)."""
        if not self._released:
            self._released = True
            self.listener.gate.release(self.address)

    def started(self) -> None:
        """A request or stream began on this connection."""
        self.active += 1
        self._disarm()

    def ended(self) -> None:
        """A request or stream of this connection ended."""
        self.active -= 1
        if self.active <= 0 and self.transport is not None and not self.transport.is_closing():
            self._arm(self.listener.gate.limits.idle_connection_timeout, "idle_timeout")

    def close(self, reason: str, message: str, *, level: int = logging.WARNING) -> None:
        """Count a refusal of ``reason``, log ``message`` (throttled) and cut the
        connection."""
        self.listener.gate.refuse(self.listener.name, reason, message, level=level)
        if self.transport is not None:
            self.transport.abort()  # type: ignore[attr-defined]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.listener.connections[self.protocol] = self
        self._arm(self.listener.gate.limits.handshake_timeout, "handshake_timeout")
        self.protocol.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.protocol.data_received(data)

    def eof_received(self) -> bool | None:
        result: bool | None = self.protocol.eof_received()
        return result

    def pause_writing(self) -> None:
        self.protocol.pause_writing()

    def resume_writing(self) -> None:
        self.protocol.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.release()
        self.listener.connections.pop(self.protocol, None)
        self.protocol.connection_lost(exc)

    def _arm(self, seconds: float, reason: str) -> None:
        self._disarm()
        if seconds > 0:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(seconds, self._expire, seconds, reason)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, seconds: float, reason: str) -> None:
        self._timer = None
        if self.active > 0:
            return
        if reason == "handshake_timeout":
            what = "no request or stream started"
            message = f"{what} within {seconds:g} s of connecting (handshake_timeout)"
            self.close(reason, f"closing a connection from {self.address}: {message}")
        else:
            self.close(
                reason,
                f"closing a connection from {self.address}: idle for "
                f"{seconds:g} s (idle_connection_timeout)",
                level=logging.DEBUG,
            )


def tracking_middleware(connections: Mapping[asyncio.BaseProtocol, Connection]) -> Any:
    """An aiohttp middleware telling each request's ``Connection`` (looked up in
    ``connections``, the map a ``Listener`` keeps) when the request starts and ends."""

    @web.middleware
    async def track(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        connection = connections.get(request.protocol)
        if connection is None:
            return await handler(request)
        connection.started()
        try:
            return await handler(request)
        finally:
            connection.ended()

    return track


async def serve_http(
    app: web.Application,
    name: str,
    gate: ConnectionGate,
    host: str,
    port: int,
    *,
    idle_timeout: float,
    ssl_context: ssl.SSLContext | None = None,
    reserve: int = 0,
    unix_path: str | None = None,
    sockets: Sequence[socket.socket] | None = None,
) -> tuple[web.AppRunner, Listener]:
    """Serve the aiohttp ``app`` on ``host:port`` (on the unix socket ``unix_path``
    instead when given: ``Listener.start_unix``; on the listening ``sockets`` when given,
    see ``Listener.start``) through the gate (keep-alive connections closed after
    ``idle_timeout`` seconds idle); returns its runner (``cleanup()`` closes its
    connections) and its listener (close it first). Raises OSError when it cannot
    bind."""
    connections: dict[asyncio.BaseProtocol, Connection] = {}
    app.middlewares.append(tracking_middleware(connections))
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=idle_timeout)
    await runner.setup()
    server = runner.server
    assert server is not None
    listener = Listener(
        name,
        gate,
        lambda _c: server(),
        ssl_context=ssl_context,
        reserve=reserve,
        connections=connections,
    )
    try:
        if unix_path is not None:
            await listener.start_unix(unix_path)
        else:
            await listener.start(host, port, sockets=sockets)
    except OSError:
        await runner.cleanup()
        raise
    return runner, listener
