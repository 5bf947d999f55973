"""The REST transport's poll handling without sockets: ``RestDiscovery.answer`` takes a
body and gives the response. A body seen before is answered from the parse cache with
exactly what a fresh parse gives; the timings record every poll."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.paths import EXAMPLE_CONFIG
from xdsd.app import MeshState
from xdsd.resources import TypeUrl
from xdsd.transports.rest import PollTimings, RestDiscovery

CDS = TypeUrl("type.googleapis.com/envoy.config.cluster.v3.Cluster")
LDS = TypeUrl("type.googleapis.com/envoy.config.listener.v3.Listener")
BIG_NODE_EXTRAS = {"extensions": [{"name": f"envoy.ext.{i}", "category": "c"} for i in range(500)]}


def _rest() -> RestDiscovery:
    state = MeshState(EXAMPLE_CONFIG)
    state.reload()
    return RestDiscovery(state)


def _body(type_url: str = CDS, version: str = "", node_id: str = "p-1", **extra: Any) -> bytes:
    node = {"id": node_id, "cluster": "productpage", **BIG_NODE_EXTRAS}
    return json.dumps(
        {"version_info": version, "node": node, "type_url": type_url, **extra}
    ).encode()


def _fresh(raw: bytes) -> bytes:
    """The same bytes in a new object (each request's body is one)."""
    return bytes(bytearray(raw))


def test_an_unchanged_poll_is_304_and_served_from_the_parse_cache() -> None:
    rest = _rest()
    first = rest.answer(CDS, _body())
    assert first.status == 200
    version = first.headers["X-Xdsd-Version"]
    again = _body(version=version)
    assert rest.answer(CDS, again).status == 304
    parses = rest.parses
    assert rest.answer(CDS, _fresh(again)).status == 304
    assert rest.parses == parses  # the body was recognised


def test_cached_answers_follow_the_version_and_the_type_path() -> None:
    rest = _rest()
    version = rest.answer(CDS, _body()).headers["X-Xdsd-Version"]
    assert rest.answer(CDS, _body(version=version)).status == 304
    # the same client at an old version gets the current one again
    assert rest.answer(CDS, _fresh(_body(version="old"))).status == 200
    # a body without type_url is read for the path it was posted to
    untyped = json.dumps({"node": {"id": "p-1", "cluster": "productpage"}}).encode()
    assert rest.answer(CDS, untyped).status == 200
    listeners = rest.answer(LDS, _fresh(untyped))
    assert listeners.status == 200
    assert isinstance(listeners.body, bytes)
    assert json.loads(listeners.body)["type_url"] == LDS


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"not json", 400),
        (b"[]", 400),
        (json.dumps({"type_url": CDS}).encode(), 400),
        (_body(type_url=LDS), 400),
        (json.dumps({"node": {"id": "x"}, "type_url": CDS}).encode(), 400),
    ],
)
def test_bad_bodies_are_refused_every_time_and_not_cached(raw: bytes, status: int) -> None:
    rest = _rest()
    assert rest.answer(CDS, raw).status == status
    assert rest.answer(CDS, _fresh(raw)).status == status
    assert len(rest._parsed) == 0 and rest.parses == 2


def test_the_parse_cache_is_bounded() -> None:
    state = MeshState(EXAMPLE_CONFIG)
    state.reload()
    rest = RestDiscovery(state, max_parsed=3)
    for i in range(10):
        assert rest.answer(CDS, _body(node_id=f"p-{i}")).status == 200
    assert len(rest._parsed) == 3


def test_poll_timings_summarise_by_status_and_reset() -> None:
    timings = PollTimings(capacity=100)
    for i in range(1, 201):
        timings.record(304, i * 1000, i * 500)
    timings.record(200, 5_000)
    summary = timings.summary()
    assert summary["304"]["count"] == 200 and summary["304"]["samples"] == 100
    assert summary["304"]["max_us"] == 200.0  # the ring kept the last 100
    assert 101.0 <= summary["304"]["p50_us"] <= summary["304"]["p99_us"] <= 200.0
    assert summary["304"]["cpu_max_us"] == 100.0
    assert summary["200"]["p50_us"] == 5.0 and summary["200"]["cpu_p50_us"] == 0.0
    timings.reset()
    assert timings.summary() == {}


def test_polls_over_http_are_timed_and_the_timings_are_served() -> None:
    """The timings are served by the admin listener (``timing_routes``), never by the
    clients' port, where a client could reset them."""

    async def scenario() -> dict[str, Any]:
        rest = _rest()
        async with TestClient(TestServer(rest.app())) as client:
            assert (await client.get("/debug/rest/timings?reset=1")).status == 404
        admin = web.Application()
        admin.router.add_routes(rest.timing_routes())
        async with (
            TestClient(TestServer(admin)) as timings,
            TestClient(TestServer(rest.app())) as client,
        ):
            first = await client.post("/v3/discovery:clusters", data=_body())
            assert first.status == 200
            version = first.headers["X-Xdsd-Version"]
            for _ in range(3):
                again = await client.post("/v3/discovery:clusters", data=_body(version=version))
                assert again.status == 304
            missing = await client.post("/v3/discovery:nothing", data=_body())
            assert missing.status == 404
            shown = await timings.get("/debug/rest/timings?reset=1")
            summary: dict[str, Any] = await shown.json()
            assert (await (await timings.get("/debug/rest/timings")).json()) == {}
            return summary

    summary = asyncio.run(scenario())
    assert summary["200"]["count"] == 1 and summary["304"]["count"] == 3
    assert "404" not in summary  # refused before reading the body: not a poll


def _envoy_body(version: str, node_id: str = "p-1", type_url: str = CDS) -> bytes:
    """As Envoy writes it: compact, ``version_info`` first and absent while empty."""
    body: dict[str, Any] = {"version_info": version} if version else {}
    body |= {"node": {"id": node_id, "cluster": "productpage", **BIG_NODE_EXTRAS}}
    body["type_url"] = type_url
    return json.dumps(body, separators=(",", ":")).encode()


def test_an_envoy_poll_at_a_new_version_is_recognised_without_parsing() -> None:
    rest = _rest()
    first = rest.answer(CDS, _envoy_body(""))
    assert first.status == 200 and rest.parses == 1
    version = first.headers["X-Xdsd-Version"]
    assert rest.answer(CDS, _envoy_body(version)).status == 304
    assert rest.answer(CDS, _envoy_body("0123abcd")).status == 200
    assert rest.answer(CDS, _envoy_body("")).status == 200
    assert rest.parses == 1  # one poller: parsed once, whatever its version
    assert rest.answer(CDS, _envoy_body(version, node_id="p-2")).status == 304
    assert rest.parses == 2


@pytest.mark.parametrize(
    "raw",
    [
        # a second version_info after the node: JSON keeps the last one
        b'{"version_info":"VERSION","node":{"id":"p","cluster":"productpage"},'
        b'"version_info":"old"}',
        b'{"version_info":"old","node":{"id":"p","cluster":"productpage"},'
        b'"version_info":"VERSION"}',
        # camelCase alone, or beside the snake_case one (which wins)
        b'{"node":{"id":"p","cluster":"productpage"},"versionInfo":"VERSION"}',
        b'{"version_info":"VERSION","node":{"id":"p","cluster":"productpage"},"versionInfo":"old"}',
        b'{"version_info":"old","node":{"id":"p","cluster":"productpage"},"versionInfo":"VERSION"}',
        # escapes and spaces: not the fast form
        b'{"version_info":"VERS\\u0049ON","node":{"id":"p","cluster":"productpage"}}',
        b'{ "version_info": "VERSION", "node": {"id": "p", "cluster": "productpage"}}',
        b'{"node":{"id":"p","cluster":"productpage"},"version_info":"VERSION"}',
    ],
)
def test_what_a_cached_body_says_is_what_a_fresh_parse_says(raw: bytes) -> None:
    version = _rest().answer(CDS, _body()).headers["X-Xdsd-Version"]
    body = raw.replace(b"VERSION", version.encode())
    warm = _rest()
    for seen in (b"VERSION", b"old", b"", b"VERSION"):
        # the warm server has seen the same remainder at other versions first
        other = raw.replace(b"VERSION", seen).replace(b"VERS\\u0049ON", seen)
        warm._parse(CDS, other)
    expected = _rest()._parse(CDS, body)
    got = warm._parse(CDS, _fresh(body))
    assert got == expected
    assert not isinstance(got, web.Response)


def test_v2_polls_are_answered_with_v2_names() -> None:
    """``POST /v2/discovery:*``: a v2 client names v2 types and gets them back, with the
    resources and the ``Any``s inside them (the HTTP connection manager, its filters)
    named the v2 way."""
    v2_cds = "type.googleapis.com/envoy.api.v2.Cluster"
    v2_lds = "type.googleapis.com/envoy.api.v2.Listener"
    rest = _rest()

    async def scenario() -> tuple[int, dict[str, Any], int, dict[str, Any], int]:
        async with TestClient(TestServer(rest.app())) as client:
            cds = await client.post("/v2/discovery:clusters", data=_body(v2_cds))
            lds = await client.post("/v2/discovery:listeners", data=_body(v2_lds))
            wrong = await client.post("/v2/discovery:listeners", data=_body(v2_cds))
            return cds.status, await cds.json(), lds.status, await lds.json(), wrong.status

    cds_status, cds, lds_status, lds, wrong = asyncio.run(scenario())
    assert (cds_status, lds_status, wrong) == (200, 200, 400)
    assert cds["type_url"] == v2_cds and cds["resources"]
    assert {r["@type"] for r in cds["resources"]} == {v2_cds}
    assert lds["type_url"] == v2_lds
    text = json.dumps(lds)
    assert "envoy.config.filter.network.http_connection_manager.v2.HttpConnectionManager" in text
    assert "envoy.config.filter.http.router.v2.Router" in text
    assert ".v3." not in text  # no v3 name is left for a v2 client to trip on


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        (b"{}", 1),
        (b'{"a":[1,{"b":[]}]}', 4),
        (b'{"s":"[[[[{{{{"}', 1),
        (b'{"s":"\\"[["}', 1),
        (b"[" * 1_000_000, 1_000_000),
    ],
)
def test_json_depth_ignores_brackets_in_strings(text: bytes, depth: int) -> None:
    from xdsd.transports.rest import json_depth

    assert json_depth(text) == depth


def test_a_deeply_nested_body_is_a_bad_request_not_a_crash() -> None:
    rest = _rest()
    response = rest.answer(CDS, b'{"node":' * 100_000 + b"1" + b"}" * 100_000)
    assert response.status == 400
    assert response.text is not None and "nested" in response.text
