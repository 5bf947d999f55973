"""REST-JSON transport (aiohttp): ``POST /v3/discovery:<type>`` polling.

Each poll is answered from the poller's node-class snapshot by
``xdsd.protocol.rest_session`` (which holds LDS/RDS back until the client holds the clusters
they need, and keeps removed clusters while its routes still use them): 200 with proto3
JSON (rendered once per content and reused), 304 when the poller already holds the version
or must wait, 400 for a body that is not a JSON ``DiscoveryRequest``, 404 for an unknown
type path, 503 while no configuration has loaded. Envoy sends its whole node on every poll;
only the few fields that classify it are read. Clients that stop polling are forgotten
after a while and shown disconnected.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web
from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format

from xdsd.errors import TranslationError
from xdsd.protocol import NotApplied, ProtocolError, record_events
from xdsd.protocol.fetch import JsonRenderer, NotModified
from xdsd.protocol.rest_session import RestSessions
from xdsd.resources import SHORT_NAMES, TypeUrl
from xdsd.settings import Address
from xdsd.transports import SnapshotSource

log = logging.getLogger(__name__)

PATHS: dict[str, TypeUrl] = {short: type_url for type_url, short in SHORT_NAMES.items()}
_NODE_FIELDS = ("id", "cluster", "metadata", "locality", "user_agent_name", "userAgentName")
_MAX_BODY = 4 * 1024 * 1024


class RestDiscovery:
    """The aiohttp handlers of REST xDS, sharing one renderer and one set of sessions."""

    def __init__(self, source: SnapshotSource, sessions: RestSessions | None = None) -> None:
        self.source = source
        self.renderer = JsonRenderer()
        self.sessions = sessions if sessions is not None else RestSessions()
        self._known: dict[str, Any] = {}  # client id → node class key, while remembered

    def app(self) -> web.Application:
        """An aiohttp application serving ``/v3/discovery:*``."""
        application = web.Application(client_max_size=_MAX_BODY)
        application.router.add_post("/v3/discovery:{type}", self.handle)
        return application

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one poll."""
        type_url = PATHS.get(request.match_info["type"])
        if type_url is None:
            return _error(404, f"unknown discovery type {request.match_info['type']!r}")
        try:
            body = json.loads(await request.read())
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
            names = [str(n) for n in raw_names]
            version_info = str(body.get("version_info", body.get("versionInfo", "")))
            asked = body.get("type_url", body.get("typeUrl", ""))
            if asked and asked != type_url:
                raise ValueError(f"type_url {asked!r} does not match the path")
        except (ValueError, TypeError, json_format.ParseError) as e:
            return _error(400, f"bad DiscoveryRequest: {e}")
        try:
            key = self.source.classify(node, "rest")
            snapshot = self.source.snapshot(key)
        except ProtocolError as e:
            return _error(400, e.message)
        except TranslationError as e:
            log.error("rest node=%s: cannot configure this node: %s", node.id, e)
            return _error(500, str(e))
        if snapshot is None:
            return _error(503, "no configuration loaded yet")
        client_id = f"rest-{node.id or node.cluster}"
        cache = self.source.cache
        if self._known.get(client_id) != key or cache.client(client_id) is None:
            cache.open_client(client_id, node_id=node.id, key=key, transport="rest")
            self._known[client_id] = key
        poll = self.sessions.on_poll(client_id, snapshot, type_url, names, version_info)
        for gone in poll.forgotten:
            self._known.pop(gone, None)
            cache.close_client(gone)
            log.info("rest client %s: stopped polling, forgotten", gone)
        report = poll.report
        news = record_events(cache, client_id, [report]) if report is not None else []
        if news and isinstance(report, NotApplied):
            log.warning(
                "rest node=%s: %s version %s not applied (still at %s)",
                node.id, SHORT_NAMES[type_url], report.served_version, version_info,
            )  # fmt: skip
        result = poll.answer
        if isinstance(result, NotModified):
            if result.waiting_for:
                log.debug(
                    "rest node=%s: %s held at %r until it holds clusters %s",
                    node.id, SHORT_NAMES[type_url], version_info, ", ".join(result.waiting_for),
                )  # fmt: skip
            return web.Response(status=304)
        record_events(cache, client_id, [result])
        log.debug(
            "rest node=%s: %s version %s (%d resources)",
            node.id, SHORT_NAMES[type_url], result.version, len(result.resources),
        )  # fmt: skip
        return web.Response(
            body=self.renderer.render(result),
            content_type="application/json",
            headers={"X-Xdsd-Version": result.version},
        )


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"code": status, "message": message}, status=status)


async def start_rest(
    source: SnapshotSource, address: Address, *, long_poll: float = 0.0
) -> web.AppRunner:
    """Bind the REST xDS server; returns the runner to ``cleanup()`` on shutdown."""
    del long_poll  # answering at once is within any request_timeout; holding comes later
    runner = web.AppRunner(RestDiscovery(source).app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, address.host, address.port, reuse_address=True)
    await site.start()
    return runner
