"""The admin HTTP server: health, readiness and debug views of clients and config.

Read-only views over the snapshot cache and the current configuration's state, as JSON:
``/healthz``, ``/readyz`` (200 once a configuration has loaded and the xDS listeners are
bound), ``/debug/clients`` (per client: node, class, transport, when it connected and, per type,
the version sent and acknowledged with their wall-clock times (seconds since the epoch)
and the last NACK), ``/debug/errors`` (the current config errors).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from xdsd.cache.cache import ClientStatus, SnapshotCache
from xdsd.errors import Problem
from xdsd.resources import SHORT_NAMES
from xdsd.settings import Address


class AdminViews:
    """The admin handlers. ``errors`` returns the current config errors; ``loaded`` says
    whether a configuration is being served."""

    def __init__(
        self,
        cache: SnapshotCache[Any],
        *,
        errors: Callable[[], Sequence[Problem]],
        loaded: Callable[[], bool],
    ) -> None:
        self.cache = cache
        self.errors = errors
        self.loaded = loaded
        self.listening = False

    def app(self) -> web.Application:
        """The aiohttp application."""
        application = web.Application()
        application.router.add_get("/healthz", self.healthz)
        application.router.add_get("/readyz", self.readyz)
        application.router.add_get("/debug/clients", self.clients)
        application.router.add_get("/debug/errors", self.config_errors)
        return application

    async def healthz(self, _request: web.Request) -> web.Response:
        """The process is up."""
        return web.json_response({"status": "ok"})

    async def readyz(self, _request: web.Request) -> web.Response:
        """503 until a configuration loaded and the xDS listeners are bound."""
        ready = self.listening and self.loaded()
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def clients(self, _request: web.Request) -> web.Response:
        """Every client's sync state."""
        return web.json_response([client_json(c) for c in self.cache.clients()])

    async def config_errors(self, _request: web.Request) -> web.Response:
        """The errors of the last refused reload (empty when the last one loaded)."""
        return web.json_response(
            [
                {"path": p.path, "line": p.line, "field": p.field, "message": p.message,
                 "text": str(p)}
                for p in self.errors()
            ]
        )  # fmt: skip


def client_json(client: ClientStatus) -> dict[str, Any]:
    """A client's status as JSON."""
    types = {}
    for type_url, status in client.types.items():
        nack = status.nack
        types[SHORT_NAMES.get(type_url, type_url)] = {
            "sent_version": status.sent_version,
            "sent_nonce": status.sent_nonce,
            "sent_at": status.sent_at,
            "acked_version": status.acked_version,
            "acked_at": status.acked_at,
            "not_applied": status.not_applied,
            "nack": None
            if nack is None
            else {"version": nack.version, "code": nack.code, "message": nack.message,
                  "at": nack.at},
        }  # fmt: skip
    return {
        "client_id": client.client_id,
        "node_id": client.node_id,
        "class": str(client.key),
        "transport": client.transport,
        "connected": client.connected,
        "connected_at": client.connected_at,
        "types": types,
    }


async def start_admin(views: AdminViews, address: Address) -> web.AppRunner:
    """Bind the admin server; returns the runner to ``cleanup()`` on shutdown."""
    runner = web.AppRunner(views.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, address.host, address.port, reuse_address=True).start()
    return runner
