"""The admin server of ``xdsd serve --workers N``: every worker's admin merged into one.

How this works: each worker daemon serves its own admin views on a unix socket
(``Daemon(admin_socket=...)``); ``MergedAdmin`` serves the public admin address
(``settings.admin``, with the admin TLS and client certificates of a normal daemon)
and answers each request by asking every worker the same path over its socket at once
(aiohttp's ``UnixConnector``) and merging the answers (``xdsd.workers.merge``, where each
path's rule is). Each worker's answer is bounded: ``timeout`` seconds for the whole
exchange and ``max_body`` bytes read at most. A worker that is slow, gone, or answers
garbage or too much is *unusable* for that request: the merged view leaves it out,
names it in the ``X-Xdsd-Workers-Unusable`` header (``/readyz``: 503 naming it; the
status page: an error line; ``/metrics``: ``xdsd_worker_up`` 0) and the rest is served.
No answer of a worker raises out of a handler.

Node access (who may see a node's ``/debug/config_dump`` under admin mutual TLS) is
judged by the worker holding the node, from the admin client's certificate names that
the merged admin forwards (``admin.PEER_CERTIFICATE_HEADER``); the worker counts the
refusal as a normal daemon does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from xdsd.admin import PEER_CERTIFICATE_HEADER, peer_header
from xdsd.admin.proxies import Workload
from xdsd.admin.status_page import render_status_page
from xdsd.listeners import Deadline, HttpListener
from xdsd.settings import Address, Settings
from xdsd.tls import ServerCertificates
from xdsd.transports.connections import ADMIN_RESERVE, ConnectionGate, serve_http
from xdsd.transports.rest import json_depth
from xdsd.workers.merge import (
    Answer,
    Merged,
    PageInputs,
    merge_clients,
    merge_daemon,
    merge_expected,
    merge_health,
    merge_identical,
    merge_metrics,
    merge_problems,
    merge_ready,
    merge_registrations,
    merge_timings,
    status_view,
)

log = logging.getLogger(__name__)

#: Seconds a worker has to answer one request, connection included.
WORKER_TIMEOUT = 5.0
#: The most bytes of one worker's answer read (a longer one is unusable).
MAX_WORKER_BODY = 64 << 20
#: The deepest nesting of a worker's JSON answer used (ours nest a few levels, a proxy's
#: metadata at most protobuf's 100): a deeper one would fail the merged view's encoding.
MAX_WORKER_DEPTH = 160
#: The header naming the workers whose answer was left out of a merged view, with why.
UNUSABLE_HEADER = "X-Xdsd-Workers-Unusable"
#: The admin routes merged (every route a worker's admin serves; the status page at /).
ROUTES = (
    "/",
    "/healthz",
    "/readyz",
    "/metrics",
    "/debug/clients",
    "/debug/config_dump",
    "/debug/errors",
    "/debug/expected",
    "/debug/registrations",
    "/debug/addresses",
    "/debug/daemon",
    "/debug/rest/timings",
)


class TooLarge(Exception):
    """A worker's answer is longer than ``max_body``."""


class _Families(Collector):
    """Already merged families, exposed as they are."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self.families = families

    def collect(self) -> Sequence[Metric]:
        return self.families


class MergedAdmin:
    """The merged admin server on ``settings.admin`` (a ``DaemonListener``): asks the
    workers whose admin sockets ``sockets()`` lists now (worker N is the Nth; a worker
    being restarted keeps its place) and answers as one daemon would (see the module
    docstring). Connections are counted by ``gate`` with the admin reserve; TLS and the
    client certificates as ``settings`` say for the admin listener."""

    name = "admin"

    def __init__(
        self,
        settings: Settings,
        sockets: Callable[[], Sequence[str]],
        gate: ConnectionGate,
        *,
        timeout: float = WORKER_TIMEOUT,
        max_body: int = MAX_WORKER_BODY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.sockets = sockets
        self.gate = gate
        self.timeout = timeout
        self.max_body = max_body
        self.clock = clock
        self.address = settings.admin or Address("127.0.0.1", 0)
        tls = settings.tls and settings.admin_tls
        self.certificates = ServerCertificates(settings) if tls else None
        self.note = (" (mTLS)" if settings.tls_client_ca else " (TLS)") if tls else ""
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._http = HttpListener("admin", self._serve, self.address, note=self.note)

    def app(self) -> web.Application:
        """The aiohttp application: every route of ``ROUTES``."""
        application = web.Application()
        handlers = {
            "/": self.status_page,
            "/healthz": self.healthz,
            "/readyz": self.readyz,
            "/metrics": self.metrics,
            "/debug/clients": self.clients,
            "/debug/config_dump": self.config_dump,
            "/debug/errors": self._merged(merge_problems),
            "/debug/expected": self._merged(merge_expected),
            "/debug/registrations": self._merged(merge_registrations),
            "/debug/addresses": self._merged(merge_identical),
            "/debug/daemon": self.daemon,
            "/debug/rest/timings": self._merged(merge_timings),
        }
        for path in ROUTES:
            application.router.add_get(path, handlers[path])
        return application

    async def _serve(self) -> Any:
        context = self.certificates.context("http/1.1") if self.certificates else None
        return await serve_http(
            self.app(),
            "admin",
            self.gate,
            self.address.host,
            self.address.port,
            idle_timeout=self.settings.rest_idle_timeout,
            ssl_context=context,
            reserve=ADMIN_RESERVE,
        )

    async def start(self) -> str:
        """Bind ``settings.admin`` and serve; the address bound. Raises OSError."""
        return await self._http.start()

    async def close(self, deadline: Deadline) -> None:
        """Stop accepting, let open requests end by ``deadline``, close the sessions to
        the workers."""
        await self._http.close(deadline)
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            await session.close()

    def reload_certificates(self) -> None:
        """Read the admin certificate files again when they changed (SIGHUP)."""
        if self.certificates is not None:
            self.certificates.reload(force=True)

    # -- asking the workers ----------------------------------------------------------

    def _session(self, path: str) -> aiohttp.ClientSession:
        session = self._sessions.get(path)
        if session is None or session.closed:
            session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=path, limit=8),
                timeout=aiohttp.ClientTimeout(total=None),
            )
            self._sessions[path] = session
        return session

    async def _forget_sessions(self, current: Sequence[str]) -> None:
        """Close the sessions of sockets no longer listed."""
        for path in [p for p in self._sessions if p not in current]:
            await self._sessions.pop(path).close()

    async def ask(
        self,
        path: str,
        query: Mapping[str, str] | None = None,
        *,
        text: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> list[Answer]:
        """Every worker's answer to ``GET path?query`` (JSON, or the text with ``text``),
        in worker order; never raises for a worker."""
        sockets = list(self.sockets())
        await self._forget_sessions(sockets)
        return list(
            await asyncio.gather(
                *(
                    self._ask_one(str(n), s, path, query, text=text, headers=headers)
                    for n, s in enumerate(sockets)
                )
            )
        )

    async def _ask_one(
        self,
        worker: str,
        socket_path: str,
        path: str,
        query: Mapping[str, str] | None,
        *,
        text: bool,
        headers: Mapping[str, str] | None,
    ) -> Answer:
        try:
            async with asyncio.timeout(self.timeout):
                session = self._session(socket_path)
                async with session.get(
                    f"http://worker{path}", params=query, headers=headers
                ) as response:
                    raw = await self._read(response)
                    status = response.status
                    kept = {
                        k: v for k, v in response.headers.items() if k.lower().startswith("x-xdsd")
                    }
        except TimeoutError:
            return Answer(worker, error=f"no answer within {self.timeout:g} s")
        except TooLarge:
            return Answer(worker, error=f"answer longer than {self.max_body} bytes")
        except (aiohttp.ClientError, OSError) as e:
            return Answer(worker, error=f"unreachable ({type(e).__name__}: {e})"[:300])
        except Exception as e:
            log.exception("internal error asking worker %s for %s", worker, path)
            return Answer(worker, error=f"internal error: {type(e).__name__}")
        try:
            body: Any = raw.decode() if text else json.loads(raw)
        except (UnicodeDecodeError, ValueError, RecursionError):
            return Answer(
                worker, status, error="answered garbage: not " + ("text" if text else "JSON")
            )
        if not text and json_depth(raw) > MAX_WORKER_DEPTH:
            deep = f"answered JSON nested over {MAX_WORKER_DEPTH} deep"
            return Answer(worker, status, error=deep)
        return Answer(worker, status, body, headers=kept)

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        if response.content_length is not None and response.content_length > self.max_body:
            raise TooLarge
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > self.max_body:
                raise TooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    # -- the handlers ----------------------------------------------------------------

    def _json(
        self, merged: Merged, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        extra = dict(headers or {})
        if merged.unusable:
            extra[UNUSABLE_HEADER] = _header_text(merged.unusable)
        return web.json_response(merged.body, status=status, headers=extra)

    def _merged(self, merge: Callable[[Sequence[Answer]], Merged]) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            answers = await self.ask(request.path, dict(request.query))
            return self._json(merge(answers))

        handler.__doc__ = merge.__doc__
        return handler

    async def healthz(self, _request: web.Request) -> web.Response:
        """200 while the supervisor answers; each worker's health shown."""
        return self._json(merge_health(await self.ask("/healthz")))

    async def readyz(self, _request: web.Request) -> web.Response:
        """200 when every worker is ready; else 503 naming those that are not."""
        ready, merged = merge_ready(await self.ask("/readyz"))
        return self._json(merged, 200 if ready else 503)

    async def clients(self, request: web.Request) -> web.Response:
        """Every worker's clients, each with its ``worker``."""
        merged = merge_clients(await self.ask("/debug/clients", dict(request.query)))
        stale = f"{self.settings.stale_after:g}"
        return self._json(merged, headers={"X-Xdsd-Stale-After": stale})

    async def daemon(self, _request: web.Request) -> web.Response:
        """The workers' ``/debug/daemon`` merged (``merge.merge_daemon``)."""
        summary, unusable = merge_daemon(await self.ask("/debug/daemon"))
        body = {
            "version": summary.version,
            "started_at": summary.started_at,
            "config_dir": summary.config_dir,
            "loaded": summary.loaded,
            "stale_after": summary.stale_after,
            "renew_fraction": summary.renew_fraction,
            "classes": {
                label: {
                    "snapshot": {t: [s.version(t), len(s.get(t))] for t in s.versions},
                    "policies": summary.policies.get(label, {}),
                    "workload": _workload_json(summary.workloads.get(label)),
                }
                for label, s in summary.snapshots.items()
            },
        }
        return self._json(Merged(body, unusable))

    async def config_dump(self, request: web.Request) -> web.Response:
        """What a node is served, from the worker holding its most recent connected
        client (400 without ``?node=``; 404 when no worker knows it; 403 when the worker
        holding it refuses the admin client's certificate)."""
        node = request.query.get("node")
        if not node:
            return web.json_response(
                {"error": "name the node: /debug/config_dump?node=ID"}, status=400
            )
        transport = request.transport
        cert = transport.get_extra_info("peercert") if transport is not None else None
        answers = await self.ask(
            "/debug/config_dump",
            {"node": node},
            headers={PEER_CERTIFICATE_HEADER: peer_header(cert)},
        )
        unusable = {a.worker: a.error for a in answers if a.error}
        best: tuple[tuple[bool, float], Answer] | None = None
        refused: Answer | None = None
        for a in answers:
            if a.error or not isinstance(a.body, dict):
                continue
            if a.status == 403:
                refused = refused or a
            if a.status != 200:
                continue
            rank = _holding(a.body)
            if rank is None:
                unusable[a.worker] = "answered garbage: no clients"
                continue
            if best is None or rank > best[0]:
                best = (rank, a)
        if refused is not None and (best is None or not best[0][0]):
            return self._json(Merged(refused.body, unusable), 403)
        if best is None:
            return self._json(
                Merged(
                    {
                        "error": f"no proxy with node id {node!r} is connected or "
                        "recently disconnected"
                    },
                    unusable,
                ),
                404,
            )
        return self._json(Merged({**best[1].body, "worker": best[1].worker}, unusable))

    async def metrics(self, _request: web.Request) -> web.Response:
        """One Prometheus exposition of every worker's metrics (``merge.METRIC_RULES``)."""
        families, unusable = merge_metrics(await self.ask("/metrics", text=True))
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(families))
        headers = {UNUSABLE_HEADER: _header_text(unusable)} if unusable else {}
        return web.Response(
            body=generate_latest(registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST, **headers},
        )

    async def status_page(self, request: web.Request) -> web.Response:
        """The status page of the merged views, as one daemon's."""
        daemon, clients, problems, expected, registrations = await asyncio.gather(
            self.ask("/debug/daemon"),
            self.ask("/debug/clients"),
            self.ask("/debug/errors"),
            self.ask("/debug/expected"),
            self.ask("/debug/registrations"),
        )
        summary, unusable = merge_daemon(daemon)
        merged = [merge_clients(clients), merge_problems(problems)]
        merged += [merge_expected(expected), merge_registrations(registrations)]
        for m in merged:
            for worker, why in m.unusable.items():
                unusable.setdefault(worker, why)
        inputs = PageInputs(
            summary,
            merged[0].body,
            merged[1].body,
            merged[2].body,
            merged[3].body,
            unusable,
        )
        view = status_view(
            inputs,
            now=self.clock(),
            service_filter=request.query.get("service", ""),
            state_filter=request.query.get("state", ""),
        )
        return web.Response(
            text=render_status_page(view),
            content_type="text/html",
            headers={"Cache-Control": "no-store"},
        )


def _holding(body: Mapping[str, Any]) -> tuple[bool, float] | None:
    """How recently a worker's config dump's node was connected there: (connected, the
    latest connected_at of its clients); None when the answer has no clients list."""
    clients = body.get("clients")
    if not isinstance(clients, list) or not clients:
        return None
    best = (False, float("-inf"))
    for c in clients:
        if not isinstance(c, dict):
            return None
        at = c.get("connected_at")
        at = float(at) if isinstance(at, int | float) and not isinstance(at, bool) else 0.0
        best = max(best, (c.get("connected") is True, at))
    return best


def _workload_json(workload: Workload | None) -> dict[str, str] | None:
    if workload is None:
        return None
    return {
        "namespace": workload.namespace,
        "service": workload.service,
        "role": workload.role,
        "address": workload.address,
    }


def _header_text(unusable: Mapping[str, str]) -> str:
    """The unusable workers as one header line (printable ASCII, bounded)."""
    text = "; ".join(f"worker {w}: {why}" for w, why in sorted(unusable.items()))
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:2000]
