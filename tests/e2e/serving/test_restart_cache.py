"""A restart served from the restart cache (``--state-dir``): a real Envoy connected to
xdsd, xdsd killed and started again on the same ports with the same state directory.
The new xdsd announces itself ready while serving the cached build (before its full
load), Envoy reconnects holding exactly the versions it is served, so nothing is sent to
it, and traffic keeps flowing. A file edited while xdsd was down makes it ignore the cache
(one log line naming the file) and serve the edit."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.mesh import EchoMesh, route_to, vs
from tests.harness import Xdsd, wait_until, write_atomically

NODE = "client-grpc"
TYPES = {"clusters", "endpoints", "listeners", "routes"}


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[EchoMesh]:
    m = EchoMesh(tmp_path)
    try:
        yield m
    finally:
        m.stop()


def _types(xdsd: Xdsd) -> dict[str, Any]:
    """Each type's status of the connected client (empty: none connected)."""
    out: dict[str, Any] = {}
    for client in xdsd.admin(f"/debug/clients?node={NODE}"):
        if client["connected"]:
            out.update(client["types"])
    return out


def _synced(xdsd: Xdsd) -> dict[str, Any] | None:
    types = _types(xdsd)
    if set(types) >= TYPES and all(t["state"] == "in_sync" for t in types.values()):
        return types
    return None


def _restart(mesh: EchoMesh, first: Xdsd, state_dir: Path, *, kill: bool) -> Xdsd:
    if kill:
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)
    first.stop()
    ports = (first.grpc_port, first.rest_port, first.admin_port)
    mesh.xdsd = Xdsd(mesh.config, mesh.root, ports=ports, extra=["--state-dir", str(state_dir)])
    return mesh.xdsd


def test_restart_serves_the_cached_build_and_sends_nothing(mesh: EchoMesh) -> None:
    state_dir = mesh.root / "state"
    first = mesh.start_xdsd(extra=["--state-dir", str(state_dir)])
    mesh.start_envoy("grpc")
    mesh.wait_for("v1")
    before = wait_until(lambda: _synced(first), what="every type in sync before the restart")
    wait_until(
        lambda: "restart cache written: 1 class" in first.log(),
        what="the restart cache to hold the client's class",
    )
    second = _restart(mesh, first, state_dir, kill=True)
    wait_until(lambda: "full load done" in second.log(), what="the full load after the restart")
    log = second.log()
    # ready while serving the cached build, before the full load (the /readyz condition)
    ready = log.index("ready: serving the cached build")
    assert ready < log.index("full load done"), log
    assert "restart cache not used" not in log
    after = wait_until(lambda: _synced(second), timeout=60, what="every type in sync after")
    sent = {name: after[name]["sent_nonce"] for name in TYPES}
    for name in TYPES:
        # the versions Envoy held are the ones served: no new version was pushed
        assert after[name]["acked_version"] == before[name]["acked_version"], name
        assert after[name]["sent_version"] == before[name]["acked_version"], name
    # the wildcard types (CDS, LDS) were not even re-sent: Envoy's version was current
    assert sent["clusters"] == sent["listeners"] == "", sent
    assert second.admin("/readyz")["ready"] is True
    mesh.wait_for("v1")  # still routed
    # an edit after the restart is served as usual
    write_atomically(mesh.rules, vs(route_to({"v2": 100})))
    mesh.wait_for("v2")


def test_an_edit_made_while_down_is_served(mesh: EchoMesh) -> None:
    state_dir = mesh.root / "state"
    first = mesh.start_xdsd(extra=["--state-dir", str(state_dir)])
    mesh.start_envoy("grpc")
    mesh.wait_for("v1")
    wait_until(
        lambda: "restart cache written: 1 class" in first.log(),
        what="the restart cache to hold the client's class",
    )
    first.stop()  # SIGTERM
    write_atomically(mesh.rules, vs(route_to({"v2": 100})))
    second = _restart(mesh, first, state_dir, kill=False)
    wait_until(lambda: "cold start" in second.log(), what="the cache to be refused")
    refused = [line for line in second.log().splitlines() if "restart cache not used" in line]
    assert len(refused) == 1 and "echo-vs.yaml changed" in refused[0], refused
    mesh.wait_for("v2")
    assert second.admin("/readyz")["ready"] is True


def test_a_tampered_cache_is_not_used(mesh: EchoMesh) -> None:
    state_dir = mesh.root / "state"
    first = mesh.start_xdsd(extra=["--state-dir", str(state_dir)])
    mesh.start_envoy("grpc")
    mesh.wait_for("v1")
    wait_until(
        lambda: "restart cache written: 1 class" in first.log(),
        what="the restart cache to hold the client's class",
    )
    first.stop()
    cache = state_dir / "restart-cache"
    data = bytearray(cache.read_bytes())
    data[len(data) // 2] ^= 0x40
    cache.write_bytes(bytes(data))
    second = _restart(mesh, first, state_dir, kill=False)
    wait_until(lambda: "cold start" in second.log(), what="the cache to be refused")
    assert "integrity check fails" in second.log()
    mesh.wait_for("v1")
