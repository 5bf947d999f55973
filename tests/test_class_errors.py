"""A load that succeeds while one node class cannot be configured from it (here: an
AuthorizationPolicy on a gateway with a UDP listener, which Envoy cannot enforce) is an
error an operator sees: ``MeshState.class_errors`` names the class and the policy's file
and line, ``/debug/errors`` lists it as an error, ``xdsd status`` counts it; the class
keeps its last good configuration, a new class of it gets none; mending the files clears
it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.translate.test_gateway_security import EDGE, UDP_GATEWAY, _authz
from xdsd import status
from xdsd.admin import AdminViews
from xdsd.admin.metrics import Metrics
from xdsd.errors import TranslationError
from xdsd.resources import LISTENER
from xdsd.state import MeshState
from xdsd.translate import NodeClass

POLICY = _authz("deny-all", "  action: DENY\n  rules: [{}]\n")


def _errors(state: MeshState) -> list[dict[str, object]]:
    views = AdminViews(state.cache, config=state, metrics=Metrics(version="t"), version="t")

    async def get() -> list[dict[str, object]]:
        async with TestClient(TestServer(views.app())) as client:
            response = await client.get("/debug/errors")
            found: list[dict[str, object]] = await response.json()
            page = await (await client.get("/")).text()
            assert ("node classes cannot be configured" in page) == bool(state.class_errors)
            return found

    return asyncio.run(get())


def test_a_class_that_cannot_be_built_is_an_error_shown(tmp_path: Path) -> None:
    files = tmp_path / "mesh.yaml"
    files.write_text(UDP_GATEWAY)
    state = MeshState(str(tmp_path))
    assert state.reload()
    before = state.snapshot(EDGE)
    state.cache.subscribe(EDGE, lambda _snapshot: None)  # a client holds it
    assert before is not None and "0.0.0.0_5353_udp" in before.get(LISTENER)
    assert state.class_errors == () and _errors(state) == []

    files.write_text(UDP_GATEWAY + POLICY)
    state.reload()
    assert state.errors == ()  # the load itself is fine
    (problem,) = state.class_errors
    assert problem.message.startswith("node class gateway default/edge [")
    assert "AuthorizationPolicy default/deny-all" in problem.message
    assert (problem.path, problem.line) == (str(files), UDP_GATEWAY.count("\n") + 2)
    assert state.cache.get(EDGE) is before  # its last good configuration
    listed = _errors(state)
    assert [e["severity"] for e in listed] == ["error"] and "UDP listener" in str(listed[0])
    summary = status.summarize([], listed, now=0.0)
    assert len(summary.errors) == 1

    # a new class that cannot be built: refused, and shown
    other = NodeClass("edge", "default", EDGE.role, labels=(*EDGE.labels, ("v", "2")))
    with pytest.raises(TranslationError):
        state.snapshot(other)
    assert len(state.class_errors) == 2

    files.write_text(UDP_GATEWAY)
    assert state.reload()
    assert state.class_errors == () and _errors(state) == []
