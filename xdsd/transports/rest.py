"""REST-JSON transport (aiohttp): ``POST /v3/discovery:<type>`` polling.

Each poll is answered from the poller's node-class snapshot by
``xdsd.protocol.rest_session`` (which holds LDS/RDS back until the client holds the clusters
they need, and keeps removed clusters while its routes still use them): 200 with proto3
JSON (rendered once per content and reused), 304 when the poller already holds the version
or must wait, 400 for a body that is not a JSON ``DiscoveryRequest``, 404 for an unknown
type path, 413 for a body over ``max_request_bytes``, 403 for a node the client
certificate may not speak for, 503 while no configuration has loaded. Under xdsd's CA
(``[mesh.ca]``) a proxy's client certificate is also its credential: it gets its own
``default`` secret on its SDS polls, and a poll without one is 403
(``xdsd.transports.rest_identity``). Clients that stop
polling are forgotten after a while and shown disconnected.

Envoy sends its whole node (~77 KB of JSON from Envoy 1.40) on every poll, and an unchanged
poller sends the very same bytes each time. Parsing them dominated a poll's cost (see
docs/performance.md, "REST polling"), so what a body says (its node's class, names,
version) is kept per (type, length, ``hash(body)``) for the most recent bodies: an
unchanged poll costs one pass of the string hash over the body and a few dict lookups.
Only the few node fields that classify it are ever read, and no node is kept. Bytes hash
with SipHash under a per-process random key, so a client cannot forge a body colliding
with another's. ``GET /debug/rest/timings`` on the admin listener shows what polls cost
inside the server.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import ssl
import time
from array import array
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any, NamedTuple

from aiohttp import web
from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format

from xdsd.errors import TranslationError
from xdsd.protocol import Ack, NotApplied, ProtocolError, record_events
from xdsd.protocol.fetch import JsonRenderer, NotModified
from xdsd.protocol.rest_session import PollAnswer, RestSessions
from xdsd.resources import SHORT_NAMES, TypeUrl
from xdsd.resources.v2 import v3_type
from xdsd.settings import Address
from xdsd.transports import SnapshotSource
from xdsd.transports.connections import ConnectionGate, Listener, serve_http
from xdsd.transports.identity import IdentityProvider
from xdsd.transports.limits import (
    NodeAuthorizer,
    NodeIdentity,
    RefusalObserver,
    Refused,
    ignore_refusal,
    node_identity,
    too_large,
)
from xdsd.transports.rest_identity import PolledIdentities, rest_credential

log = logging.getLogger(__name__)

PATHS: dict[str, TypeUrl] = {short: type_url for type_url, short in SHORT_NAMES.items()}
_NODE_FIELDS = ("id", "cluster", "metadata", "locality", "user_agent_name", "userAgentName")
#: ``{`` then, optionally, a ``version_info`` of plain characters (no escapes) written first.
_VERSION_PREFIX = re.compile(rb'\{(?:"version_info":"([0-9A-Za-z+._-]*)",)?')


class _ParsedPoll(NamedTuple):
    """What one poll body says, once parsed and its node classified: the node class
    ``key``, the ``client_id``, what the node claims (``identity``: its id, service,
    namespace and role), and the ``names`` and ``version_info`` asked."""

    key: Hashable
    client_id: str
    identity: NodeIdentity
    names: frozenset[str]
    version_info: str


class PollTimings:
    """How long the server spent on each poll, from the request body read to the response
    ready (not the network, not aiohttp's own parsing and writing), by HTTP status: wall
    time, and the CPU time of the thread over the same span (wall minus CPU is time the
    process was not running: preempted on a busy machine).

    Keeps the last ``capacity`` samples of each status in rings of integers
    (nanoseconds): recording is a few array stores, summaries sort a copy on demand.
    """

    def __init__(self, capacity: int = 65536) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._rings: dict[int, tuple[array[int], array[int]]] = {}
        self._counts: dict[int, int] = {}

    def record(self, status: int, nanoseconds: int, cpu_nanoseconds: int = 0) -> None:
        """Record one poll answered with ``status`` that took ``nanoseconds`` of wall
        time and ``cpu_nanoseconds`` of CPU."""
        rings = self._rings.get(status)
        if rings is None:
            rings = self._rings[status] = (
                array("Q", bytes(8 * self._capacity)),
                array("Q", bytes(8 * self._capacity)),
            )
            self._counts[status] = 0
        count = self._counts[status]
        slot = count % self._capacity
        rings[0][slot] = nanoseconds
        rings[1][slot] = cpu_nanoseconds
        self._counts[status] = count + 1

    def summary(self) -> dict[str, dict[str, float]]:
        """Per status: ``count`` (all polls) and, over the kept samples, wall time p50,
        p90, p99, p99.9 and max in microseconds (``p99_us``...), and the same of CPU time
        (``cpu_p99_us``...)."""
        out: dict[str, dict[str, float]] = {}
        for status, rings in sorted(self._rings.items()):
            count = self._counts[status]
            kept = min(count, self._capacity)
            if not kept:
                continue
            figures: dict[str, float] = {"count": count, "samples": kept}
            for prefix, ring in (("", rings[0]), ("cpu_", rings[1])):
                ordered = sorted(ring[:kept])
                for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)):
                    figures[f"{prefix}{name}_us"] = ordered[min(kept - 1, int(q * kept))] / 1000
                figures[f"{prefix}max_us"] = ordered[-1] / 1000
            out[str(status)] = figures
        return out

    def reset(self) -> None:
        """Forget every sample."""
        self._rings.clear()
        self._counts.clear()


class RestDiscovery:
    """The aiohttp handlers of REST xDS, sharing one renderer and one set of sessions.

    ``GET /debug/rest/timings`` (``timing_routes``, served by the admin listener, not the
    clients' port) answers ``PollTimings.summary()`` as JSON (``?reset=1`` starts over):
    what a poll costs inside the server, for benchmarks and operators.
    """

    def __init__(
        self,
        source: SnapshotSource,
        sessions: RestSessions | None = None,
        *,
        max_parsed: int = 16384,
        max_body: int = 4 << 20,
        authorizer: NodeAuthorizer | None = None,
        on_refused: RefusalObserver = ignore_refusal,
        identities: IdentityProvider | None = None,
    ) -> None:
        self.source = source
        self.max_body = max_body
        self.authorizer = authorizer
        self.identities = identities
        self.on_refused = on_refused
        self.renderer = JsonRenderer()
        self.sessions = sessions if sessions is not None else RestSessions()
        #: The pollers' own identities under ``[mesh.ca]`` (None: the CA is off).
        self.leases: PolledIdentities | None = None
        if identities is not None and identities.enabled:
            self.leases = PolledIdentities(
                identities,
                idle_timeout=self.sessions.idle_timeout,
                max_leases=self.sessions.max_clients,
            )
        self.timings = PollTimings()
        self._known: dict[str, Any] = {}  # client id → node class key, while remembered
        # (type, length, hash of the body) → what it says, least recently used first
        self._parsed: OrderedDict[tuple[TypeUrl, bool, int, int], _ParsedPoll] = OrderedDict()
        self._max_parsed = max_parsed
        self.parses = 0  # how many bodies were parsed, not recognised (tests, metrics)

    def app(self) -> web.Application:
        """An aiohttp application serving ``/v3/discovery:*`` and ``/v2/discovery:*``
        (the timings are the admin listener's: see ``timing_routes``)."""
        application = web.Application(client_max_size=self.max_body)
        application.router.add_post("/v3/discovery:{type}", self.handle)
        application.router.add_post("/v2/discovery:{type}", self.handle_v2)
        application.on_cleanup.append(self._log_timings)
        application.on_cleanup.append(self._close_leases)
        return application

    def timing_routes(self) -> list[web.RouteDef]:
        """``GET /debug/rest/timings`` (see ``show_timings``), for the admin listener:
        an operator's view and reset, not the clients' port."""
        return [web.get("/debug/rest/timings", self.show_timings)]

    async def show_timings(self, request: web.Request) -> web.Response:
        """``PollTimings.summary()`` as JSON; ``?reset=1`` clears the samples after."""
        body = self.timings.summary()
        if request.query.get("reset") in ("1", "true"):
            self.timings.reset()
        return web.json_response(body)

    async def _close_leases(self, app: web.Application) -> None:
        if self.leases is not None:
            self.leases.close()

    async def _log_timings(self, app: web.Application) -> None:
        for status, figures in self.timings.summary().items():
            log.info(
                "rest polls answered %s: %d, p50 %.0f us, p99 %.0f us (CPU %.0f us), max %.0f us",
                status,
                figures["count"],
                figures["p50_us"],
                figures["p99_us"],
                figures["cpu_p99_us"],
                figures["max_us"],
            )

    async def handle(self, request: web.Request, *, v2: bool = False) -> web.StreamResponse:
        """Answer one poll (and record how long that took, see ``PollTimings``); ``v2``
        for ``/v2/discovery:*`` (v2 type URLs, resources named the v2 way)."""
        type_url = PATHS.get(request.match_info["type"])
        if type_url is None:
            return _error(404, f"unknown discovery type {request.match_info['type']!r}")
        if request.content_length is not None and request.content_length > self.max_body:
            return self._refused(request, too_large(request.content_length, self.max_body))
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:  # chunked: its size is known as it is read
            return self._refused(request, too_large(None, self.max_body))
        started, cpu = time.perf_counter_ns(), time.thread_time_ns()
        peer_cert = None
        wants_cert = self.authorizer is not None or self.leases is not None
        if wants_cert and request.transport is not None:
            peer_cert = request.transport.get_extra_info("peercert")
        try:
            response = self.answer(type_url, raw, v2=v2, peer_cert=peer_cert)
        except Refused as e:
            return self._refused(request, e)
        self.timings.record(
            response.status, time.perf_counter_ns() - started, time.thread_time_ns() - cpu
        )
        return response

    def _refused(self, request: web.Request, e: Refused) -> web.Response:
        """Log and count a refusal; its HTTP answer."""
        log.warning(
            "refused: %s", e.message, extra={"peer": request.remote or "", "reason": e.reason}
        )
        self.on_refused("rest", e.reason)
        return _error(e.http_status, e.message)

    async def handle_v2(self, request: web.Request) -> web.StreamResponse:
        """Answer one poll of a v2 client (``/v2/discovery:*``)."""
        return await self.handle(request, v2=True)

    def answer(
        self,
        type_url: TypeUrl,
        raw: bytes,
        *,
        v2: bool = False,
        peer_cert: dict[str, Any] | None = None,
    ) -> web.Response:
        """The response to one poll of ``type_url`` whose body is ``raw`` (a v2 client's
        when ``v2``: it names v2 types, and is answered with v2 names). With an
        authorizer, raises Refused when ``peer_cert`` may not speak for the body's node.
        Under ``[mesh.ca]`` a proxy's poll needs that certificate (else Refused,
        ``REST_CERTIFICATE_REQUIRED``), and its SDS polls are answered from its view, with
        its own ``default`` secret (``rest_identity.PolledIdentities``)."""
        parsed = self._parse(type_url, raw, v2=v2)
        if isinstance(parsed, web.Response):
            return parsed
        key, client_id, identity, names, version_info = parsed
        node_id = identity.node_id
        if self.authorizer is not None:
            self.authorizer.check(peer_cert, identity)
        leases = self.leases
        if leases is not None and identity.role == "proxyless":
            leases = None  # no key over xDS: proxyless gRPC reads certificate files
        credential = rest_credential(self.authorizer, peer_cert) if leases is not None else None
        try:
            snapshot = self.source.snapshot(key)
        except ProtocolError as e:
            return _error(400, e.message)
        except TranslationError as e:
            log.error(
                "cannot configure this node: %s", e, extra={"node": node_id, "client": client_id}
            )
            return _error(500, str(e))
        if snapshot is None:
            return _error(503, "no configuration loaded yet")
        cache = self.source.cache
        if self._known.get(client_id) != key or cache.client(client_id) is None:
            cache.open_client(client_id, node_id=node_id, key=key, transport="rest")
            self._known[client_id] = key
        private = False
        if leases is not None and credential is not None and leases.wants(type_url, names):
            snapshot, lease = leases.view(client_id, identity, credential, snapshot)
            if lease is not None:
                private = True  # the client's own secret: for it alone, never cached
                status = cache.client(client_id)
                if status is not None and status.identity is not lease.identity:
                    cache.record_identity(client_id, lease.identity)
        poll = self.sessions.on_poll(client_id, snapshot, type_url, names, version_info)
        self._record(poll, client_id, node_id, type_url, version_info)
        result = poll.answer
        if isinstance(result, NotModified):
            if result.waiting_for and log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "%s held at %r until it holds clusters %s",
                    SHORT_NAMES[type_url],
                    version_info,
                    ", ".join(result.waiting_for),
                    extra={
                        "node": node_id,
                        "client": client_id,
                        "type": SHORT_NAMES[type_url],
                        "version": version_info,
                    },
                )
            return web.Response(status=304)
        record_events(cache, client_id, [result])
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "sending %s version %s (%d resources)",
                SHORT_NAMES[type_url],
                result.version,
                len(result.resources),
                extra={
                    "node": node_id,
                    "client": client_id,
                    "type": SHORT_NAMES[type_url],
                    "version": result.version,
                },
            )
        return web.Response(
            body=self.renderer.render(result, v2=v2, keep=not private),
            content_type="application/json",
            headers={"X-Xdsd-Version": result.version},
        )

    def _record(
        self, poll: PollAnswer, client_id: str, node_id: str, type_url: TypeUrl, version_info: str
    ) -> None:
        """Record what ``poll`` says of the client (pollers it forgot, an ACK once every
        poller of a named type holds its last response, a version not applied) in the
        cache, logging what changed."""
        cache = self.source.cache
        for gone in poll.forgotten:
            self._known.pop(gone, None)
            if self.leases is not None:
                self.leases.drop(gone)
            cache.close_client(gone)
            log.info("stopped polling, forgotten", extra={"client": gone})
        report = poll.report
        if isinstance(report, Ack) and self.sessions.settled(client_id, type_url):
            # Envoy polls a named type (EDS, RDS) once per resource name set: the client
            # is in sync once every poller holds what it was last served, and it then
            # holds the type's last response, whichever poller that went to.
            status = cache.client(client_id)
            sent = status.type_status(type_url).sent_version if status is not None else None
            if sent is not None:
                report = Ack(type_url, sent, "")
        news = record_events(cache, client_id, [report]) if report is not None else []
        if news and isinstance(report, NotApplied):
            log.warning(
                "%s version %s not applied (still at %s)",
                SHORT_NAMES[type_url],
                report.served_version,
                version_info,
                extra={
                    "node": node_id,
                    "client": client_id,
                    "type": SHORT_NAMES[type_url],
                    "version": report.served_version,
                },
            )

    def _parse(
        self, type_url: TypeUrl, raw: bytes, *, v2: bool = False
    ) -> _ParsedPoll | web.Response:
        """What a poll body says, or the error response (400, also for a node whose own
        metadata cannot be used), from the cache of recent bodies when ``raw`` was seen before.

        The cache is keyed by the whole body (an unchanged poll) and, when the body has
        Envoy's form (``{"version_info":"V",...`` with ``version_info`` written first, or
        no such key while it holds nothing) and a plain version, by what follows the
        version too, so a poller's first poll at a new version is recognised as well; the
        version is then read from the prefix. A body whose remainder names a version of
        its own (a duplicate key) is keyed whole only.
        """
        whole = (type_url, False, len(raw), hash(raw))
        found = self._parsed.get(whole)
        if found is not None:  # the poller's previous poll, unchanged
            self._parsed.move_to_end(whole)
            return found
        prefix = _VERSION_PREFIX.match(raw)
        start = prefix.end() if prefix is not None else 0
        rest = memoryview(raw)[start:]
        digest = (type_url, True, len(rest), hash(rest)) if start else whole
        found = self._parsed.get(digest)
        if found is not None:  # the poller's first poll at another version
            assert prefix is not None
            version = prefix.group(1)
            return self._remember(
                whole, found._replace(version_info=version.decode() if version else "")
            )
        self.parses += 1
        try:
            text = b"{" + rest if start else raw
            depth = json_depth(text) if text.count(b"[") + text.count(b"{") > MAX_JSON_DEPTH else 0
            if depth > MAX_JSON_DEPTH:
                raise ValueError(
                    f"nested {depth} levels deep; a DiscoveryRequest needs at most {MAX_JSON_DEPTH}"
                )
            body = json.loads(text)
            if not isinstance(body, dict):
                raise ValueError("a DiscoveryRequest is a JSON object")
            node_json = body.get("node")
            if not isinstance(node_json, dict):
                raise ValueError("node is required")
            node = json_format.ParseDict(
                {k: v for k, v in node_json.items() if k in _NODE_FIELDS},
                base_pb2.Node(),
                ignore_unknown_fields=True,
            )
            raw_names = body.get("resource_names", body.get("resourceNames")) or []
            names = frozenset(str(n) for n in raw_names)
            versioned = "version_info" in body
            if prefix is not None and prefix.group(1) is not None and not versioned:
                version_info = prefix.group(1).decode()  # the version is the prefix's alone
            else:
                version_info = str(body.get("version_info", body.get("versionInfo", "")))
            asked = body.get("type_url", body.get("typeUrl", ""))
            if asked and v3_type(asked) != type_url:
                raise ValueError(f"type_url {asked!r} does not match the path")
        except (ValueError, TypeError, RecursionError, json_format.ParseError) as e:
            return _error(400, f"bad DiscoveryRequest: {e}")
        try:
            key = self.source.classify(node, "rest")
        except ProtocolError as e:
            return _error(400, e.message)
        except TranslationError as e:  # the node's own metadata: the client's error
            log.warning("unusable node: %s", e, extra={"node": node.id})
            return _error(400, str(e))
        parsed = _ParsedPoll(
            key, f"rest-{node.id or node.cluster}", node_identity(node), names, version_info
        )
        if start and not (versioned or "versionInfo" in body):
            # the version is the prefix's alone: the remainder says the rest at any version
            self._remember(digest, parsed)
        return self._remember(whole, parsed)

    def _remember(self, digest: tuple[TypeUrl, bool, int, int], parsed: _ParsedPoll) -> _ParsedPoll:
        self._parsed[digest] = parsed
        self._parsed.move_to_end(digest)
        if len(self._parsed) > self._max_parsed:
            self._parsed.popitem(last=False)
        return parsed


#: The deepest nesting of a poll body's JSON parsed (Envoy's node metadata nests a few
#: levels; the parsers recurse per level).
MAX_JSON_DEPTH = 64
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(text: bytes) -> int:
    """The deepest nesting of arrays and objects in ``text`` (JSON; brackets inside
    strings do not count), found without parsing, so a body nested a million levels deep
    costs no recursion. How: escapes are dropped (an escaped quote ends no string), the
    text between quotes (the strings) is cut out, and the brackets left are counted — a
    few bytes operations, a fraction of parsing an Envoy's 60 KB node."""
    unescaped = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(unescaped.split(b'"')[::2])
    depth = deepest = 0
    for byte in outside.translate(None, _NOT_BRACKETS):
        if byte in b"[{":
            depth += 1
            if depth > deepest:
                deepest = depth
        else:
            depth -= 1
    return deepest


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"code": status, "message": message}, status=status)


async def start_rest(
    discovery: RestDiscovery,
    address: Address,
    gate: ConnectionGate,
    *,
    idle_timeout: float = 60.0,
    ssl_context: ssl.SSLContext | None = None,
    sockets: Sequence[socket.socket] | None = None,
) -> tuple[web.AppRunner, Listener]:
    """Bind the REST xDS server for ``discovery`` through ``gate`` (TLS with
    ``ssl_context``; a keep-alive connection idle for ``idle_timeout`` seconds is
    closed), or serve it on the listening ``sockets`` given (a worker's); returns the
    runner to ``cleanup()`` and the listener to close on shutdown."""
    return await serve_http(
        discovery.app(),
        "rest",
        gate,
        address.host,
        address.port,
        idle_timeout=idle_timeout,
        ssl_context=ssl_context,
        sockets=sockets,
    )
