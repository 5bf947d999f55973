"""A real Envoy on incremental xDS (``xdsd bootstrap --transport delta``: DELTA_GRPC ADS):
it routes and follows edits without a failed request, served by either gRPC server
(grpclib and grpcio), an edit sends only what changed, and after an xdsd restart it is
sent nothing it already has."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.mesh import EchoMesh, Prober, route_to, vs
from tests.harness import Xdsd, wait_until, write_atomically

SENT = re.compile(r"sending delta (\w+) version=\S+ nonce=\S+ resources=(\d+) removed=(\d+)")


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[EchoMesh]:
    m = EchoMesh(tmp_path)
    try:
        yield m
    finally:
        m.stop()


def sent(log: str) -> list[tuple[str, int, int]]:
    """(type, resources, removed) of every delta response in an xdsd log, in order."""
    return [(t, int(n), int(r)) for t, n, r in SENT.findall(log)]


@pytest.mark.parametrize("impl", ["grpclib", "grpcio"])
def test_delta_envoy_follows_edits_without_failing_a_request(mesh: EchoMesh, impl: str) -> None:
    xdsd = mesh.start_xdsd(extra=["--grpc-impl", impl])
    envoy = mesh.start_envoy("delta")
    mesh.wait_for("v1", "port")
    mesh.wait_for("v1", "proxy")
    with Prober(mesh) as prober:
        write_atomically(mesh.rules, vs(route_to({"v2": 100})))
        mesh.wait_for("v2", "port")
        # a new subset and a route to it in one edit: its cluster must be warm first
        mesh.set_subsets("v1", "v2", "v3")
        write_atomically(mesh.rules, vs(route_to({"v3": 100})))
        mesh.wait_for("v3", "port")
        mesh.wait_for("v3", "proxy")
        # and back, removing the subset the route used (make-before-break on removal)
        write_atomically(mesh.rules, vs(route_to({"v1": 100})))
        mesh.wait_for("v1", "port")
        mesh.set_subsets("v1", "v2")
        wait_until(
            lambda: "|v3|" not in envoy.admin_text("/clusters"), what="the v3 cluster removed"
        )
    assert prober.failures == [], prober.failures[:5]
    assert sum(prober.outcomes.values()) > 20
    assert envoy.stats().get("cluster_manager.cds.update_rejected", 0) == 0
    assert [c["transport"] for c in xdsd.admin("/debug/clients")] == ["delta-ads"]
    assert ("(grpcio)" in xdsd.log()) == (impl == "grpcio")


def test_an_edit_sends_only_what_changed(mesh: EchoMesh) -> None:
    """A route edit sends route configurations only (the port's and the HTTP proxy's),
    nothing of the clusters, endpoints or listeners the client already has."""
    xdsd = mesh.start_xdsd()
    envoy = mesh.start_envoy("delta")
    mesh.wait_for("v1")
    wait_until(
        lambda: envoy.stats().get("http.outbound_http_proxy.rds.http_proxy.update_success", 0) >= 1,
        what="routes",
    )
    before = len(sent(xdsd.log()))
    write_atomically(mesh.rules, vs(route_to({"v2": 100})))
    mesh.wait_for("v2")
    wait_until(lambda: len(sent(xdsd.log())) > before, what="the delta response")
    after = sent(xdsd.log())[before:]
    assert {t for t, _, _ in after} == {"routes"}, after
    assert sum(n for _, n, _ in after) == 2, after  # "PORT" and "http_proxy"
    # an endpoint-only edit: EDS with the changed assignments only
    before = len(sent(xdsd.log()))
    mesh.set_subsets("v1", "v2", "v3")  # a new subset: its cluster and its endpoints
    wait_until(lambda: any(t == "clusters" for t, _, _ in sent(xdsd.log())[before:]), what="CDS")
    wait_until(lambda: any(t == "endpoints" for t, _, _ in sent(xdsd.log())[before:]), what="EDS")
    cds = [n for t, n, _ in sent(xdsd.log())[before:] if t == "clusters"]
    assert cds == [1], cds  # only the new v3 cluster


def test_restart_sends_nothing_envoy_already_has(mesh: EchoMesh) -> None:
    """After an xdsd restart the Envoy reconnects and says what it holds
    (initial_resource_versions): the new xdsd sends no resource and changes nothing."""
    xdsd = mesh.start_xdsd()
    envoy = mesh.start_envoy("delta")
    mesh.wait_for("v1")
    wait_until(lambda: envoy.stats().get("listener_manager.lds.update_success", 0) >= 1, what="LDS")
    keys = ("cluster_manager.cluster_modified", "listener_manager.listener_modified")
    before = {k: envoy.stats().get(k, 0) for k in keys}
    xdsd.stop()
    wait_until(lambda: envoy.stats().get("control_plane.connected_state") == 0, what="disconnect")
    again = Xdsd(mesh.config, mesh.root, ports=(xdsd.grpc_port, xdsd.rest_port, xdsd.admin_port))
    mesh.xdsd = again
    wait_until(lambda: envoy.stats().get("control_plane.connected_state") == 1, what="reconnect")
    wait_until(lambda: "delta request endpoints" in again.log(), what="the resumed subscriptions")
    mesh.wait_for("v1")
    assert [n for _, n, _ in sent(again.log())] == [0] * len(sent(again.log()))
    assert {k: envoy.stats().get(k, 0) for k in keys} == before
    # and it is still served: an edit after the restart arrives
    write_atomically(mesh.rules, vs(route_to({"v2": 100})))
    mesh.wait_for("v2")
