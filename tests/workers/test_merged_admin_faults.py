"""``MergedAdmin`` in front of faulty workers: one real worker admin (``AdminViews``) and
workers that are slow, answer too much (with and without a length), answer garbage, or
are gone. Every merged view is still served, each faulty worker named as unusable
(``/readyz`` 503 naming them, ``xdsd_worker_up`` 0), and the admin keeps answering.
Also: every route of a worker's admin is merged, and the forwarded certificate header
reads back only when well formed."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from xdsd import status
from xdsd.admin import AdminViews, forwarded_peer, peer_header
from xdsd.admin.metrics import Metrics
from xdsd.cache.cache import SnapshotCache
from xdsd.listeners import Deadline
from xdsd.settings import Address, Settings
from xdsd.transports.connections import ConnectionGate, serve_http
from xdsd.transports.rest import RestDiscovery
from xdsd.workers.admin import ROUTES, UNUSABLE_HEADER, WORKER_TIMEOUT, MergedAdmin

MAX_BODY = 256 << 10


class Config:
    errors: tuple[Any, ...] = ()
    warnings: tuple[Any, ...] = ()
    failed_reloads = 0
    class_errors: tuple[Any, ...] = ()
    loaded: object | None = object()


def _worker_views() -> AdminViews:
    metrics = Metrics(version="test")
    cache: SnapshotCache[Any] = SnapshotCache(observer=metrics)
    config = Config()
    metrics.track(cache, config)
    views = AdminViews(cache, config=config, metrics=metrics, version="test")
    views.listening = True
    return views


async def _slow(_request: web.Request) -> web.Response:
    await asyncio.sleep(3)  # beyond the merged admin's timeout (0.5 s)
    return web.json_response({})


async def _huge(_request: web.Request) -> web.Response:
    return web.Response(body=b"[" + b"0," * MAX_BODY + b"0]", content_type="application/json")


async def _huge_chunked(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for _ in range(64):
        await response.write(b" " * 8192)
    await response.write_eof()
    return response


async def _garbage(_request: web.Request) -> web.Response:
    return web.Response(body=b"\xff\x00{not json", content_type="application/json")


def _fake(handler: Any) -> web.Application:
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handler)
    return app


async def _serve(app: web.Application, path: str, gate: ConnectionGate) -> Any:
    return await serve_http(app, "admin", gate, "", 0, idle_timeout=5, unix_path=path)


@contextlib.asynccontextmanager
async def _merged(tmp_path: Path) -> AsyncIterator[str]:
    """A MergedAdmin over a real worker admin (0) and faulty ones (1-5); its URL."""
    gate = ConnectionGate()
    sockets = [str(tmp_path / f"w{n}.sock") for n in range(6)]
    served = [
        await _serve(_worker_views().app(), sockets[0], gate),
        await _serve(_fake(_slow), sockets[1], gate),
        await _serve(_fake(_huge), sockets[2], gate),
        await _serve(_fake(_huge_chunked), sockets[3], gate),
        await _serve(_fake(_garbage), sockets[4], gate),
    ]  # sockets[5]: a worker that is gone
    settings = Settings(admin=Address("127.0.0.1", 0))
    admin = MergedAdmin(settings, lambda: sockets, gate, timeout=0.5, max_body=MAX_BODY)
    bound = await admin.start()
    try:
        yield f"http://{bound}"
    finally:
        await admin.close(Deadline.after(1.0))
        for runner, listener in served:
            listener.close()
            await runner.cleanup()


def test_faulty_workers_are_named_and_the_rest_is_served(tmp_path: Path) -> None:
    asyncio.run(_faulty_workers(tmp_path))


async def _faulty_workers(tmp_path: Path) -> None:
    faulty = {"1", "2", "3", "4", "5"}
    async with _merged(tmp_path) as base, aiohttp.ClientSession() as session:
        async with session.get(f"{base}/readyz") as r:
            body = await r.json()
            assert r.status == 503 and set(body["not_ready"]) == faulty
            assert body["workers"]["0"] is True
            assert "no answer within 0.5 s" in body["reason"]
            assert f"longer than {MAX_BODY} bytes" in body["reason"]
            assert "garbage" in body["reason"] and "unreachable" in body["reason"]
        async with session.get(f"{base}/debug/clients") as r:
            assert r.status == 200 and await r.json() == []
            assert all(f"worker {w}" in r.headers[UNUSABLE_HEADER] for w in faulty)
        async with session.get(f"{base}/metrics") as r:
            assert r.status == 200
            up = {
                s.labels["worker"]: s.value
                for f in text_string_to_metric_families(await r.text())
                for s in f.samples
                if s.name == "xdsd_worker_up"
            }
            assert up == {"0": 1.0, **dict.fromkeys(faulty, 0.0)}
        for path in ROUTES:
            async with session.get(f"{base}{path}") as r:
                assert r.status in (200, 400, 503), (path, r.status)
        async with session.get(f"{base}/debug/config_dump?node=nobody") as r:
            assert r.status == 404
        async with session.get(f"{base}/healthz") as r:
            assert r.status == 200 and (await r.json())["workers"]["0"] == "ok"


def _nested(depth: int) -> web.Application:
    async def answer(_request: web.Request) -> web.Response:
        body = b"[" * depth + b"]" * depth
        return web.Response(body=body, content_type="application/json")

    return _fake(answer)


def test_deeply_nested_answers_are_named_not_a_failed_view(tmp_path: Path) -> None:
    """A worker's JSON nested past the decoder's recursion limit, or past what the
    merged view could encode again, is an unusable answer like garbage: every view is
    still served, that worker named."""

    async def main() -> None:
        gate = ConnectionGate()
        sockets = [str(tmp_path / f"w{n}.sock") for n in range(3)]
        served = [
            await _serve(_worker_views().app(), sockets[0], gate),
            await _serve(_nested(100_000), sockets[1], gate),  # the decoder gives up
            await _serve(_nested(900), sockets[2], gate),  # decodes; too deep to merge
        ]
        settings = Settings(admin=Address("127.0.0.1", 0))
        admin = MergedAdmin(settings, lambda: sockets, gate, timeout=2.0)
        base = f"http://{await admin.start()}"
        try:
            async with aiohttp.ClientSession() as session:
                for path in ROUTES:
                    async with session.get(f"{base}{path}") as r:
                        assert r.status in (200, 400, 503), (path, r.status)
                async with session.get(f"{base}/debug/clients") as r:
                    assert r.status == 200
                    named = r.headers[UNUSABLE_HEADER]
                    assert "worker 1: answered garbage" in named, named
                    assert "worker 2: answered JSON nested over" in named, named
                async with session.get(f"{base}/healthz") as r:
                    assert r.status == 200
        finally:
            await admin.close(Deadline.after(1.0))
            for runner, listener in served:
                listener.close()
                await runner.cleanup()

    asyncio.run(main())


def test_status_names_the_workers_missing_from_its_view(tmp_path: Path) -> None:
    """``xdsd status`` through a merged admin with one worker hung past its deadline and
    one gone: it still reads the rest (it waits longer than the merged admin does),
    prints which workers are missing and why, and exits 1, not 0 as if whole."""

    async def main() -> None:
        gate = ConnectionGate()
        sockets = [str(tmp_path / f"w{n}.sock") for n in range(3)]
        served = [
            await _serve(_worker_views().app(), sockets[0], gate),
            await _serve(_fake(_slow), sockets[1], gate),
        ]  # sockets[2]: gone
        settings = Settings(admin=Address("127.0.0.1", 0))
        admin = MergedAdmin(settings, lambda: sockets, gate, timeout=0.5)
        bound = await admin.start()
        try:
            read = await asyncio.to_thread(status.fetch, str(bound))
        finally:
            await admin.close(Deadline.after(1.0))
            for runner, listener in served:
                listener.close()
                await runner.cleanup()
        assert "worker 1: no answer within 0.5 s" in read.unusable_workers
        assert "worker 2: unreachable" in read.unusable_workers
        result = status.summarize(
            read.clients, read.problems, now=read.now, unusable_workers=read.unusable_workers
        )
        assert result.exit_code == status.EXIT_FAILING
        table = status.render_table(result)
        assert "not shown, their workers did not answer usably: worker 1: no answer" in table
        assert status.to_json(result)["unusable_workers"] == read.unusable_workers
        assert status.summarize([], [], now=read.now).exit_code == status.EXIT_OK

    assert status.FETCH_TIMEOUT > WORKER_TIMEOUT
    asyncio.run(main())


def test_every_route_of_a_workers_admin_is_merged() -> None:
    views = _worker_views()
    app = views.app()
    app.router.add_routes(RestDiscovery(views.cache).timing_routes())  # type: ignore[arg-type]
    served = {r.resource.canonical for r in app.router.routes() if r.method == "GET"}
    assert served == set(ROUTES)


@pytest.mark.parametrize(
    ("header", "names"),
    [
        (peer_header({"subjectAltName": (("URI", "spiffe://a/b"), ("DNS", "x"))}), 2),
        (peer_header(None), None),
        (None, None),
        ("", None),
        ("{", None),
        ('{"subjectAltName": "URI"}', None),
        ('{"subjectAltName": [["URI", 5]]}', None),
        ('{"subjectAltName": [["URI", "a", "b"]]}', None),
        (json.dumps({"subjectAltName": [["DNS", "x" * 5000]]}), None),
    ],
)
def test_a_forwarded_certificate_reads_back_only_when_well_formed(
    header: str | None, names: int | None
) -> None:
    found = forwarded_peer(header)
    if names is None:
        assert found is None
    else:
        assert found is not None and len(found["subjectAltName"]) == names
