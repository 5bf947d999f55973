"""A real Envoy on incremental xDS (``xdsd bootstrap --transport delta``: DELTA_GRPC ADS):
it routes and follows edits without a failed request, served by either gRPC server
(grpclib and grpcio), an edit sends only what changed, and after an xdsd restart it is
sent nothing it already has."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.e2e.mesh import EchoMesh, Prober, route_to, vs
from tests.harness import Envoy, Xdsd, http_get, wait_until, write_atomically
from xdsd.protocol.vhosts import MAX_VIRTUAL_HOST_NAMES

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


@pytest.mark.parametrize("vhds", [True, False])
def test_an_edit_sends_only_what_changed(mesh: EchoMesh, vhds: bool) -> None:
    """A route edit sends the changed virtual hosts only (VHDS: echo's of the port's
    configuration and of the HTTP proxy's), or without VHDS the two route configurations,
    nothing of the clusters, endpoints or listeners the client already has."""
    xdsd = mesh.start_xdsd()
    envoy = mesh.start_envoy("delta", bootstrap=() if vhds else ("--no-vhds",))
    mesh.wait_for("v1")
    mesh.wait_for("v1", "proxy")
    wait_until(
        lambda: envoy.stats().get("http.outbound_http_proxy.rds.http_proxy.update_success", 0) >= 1,
        what="routes",
    )
    before = len(sent(xdsd.log()))
    write_atomically(mesh.rules, vs(route_to({"v2": 100})))
    mesh.wait_for("v2")
    wait_until(lambda: sum(n for _, n, _ in sent(xdsd.log())[before:]) >= 2, what="responses")
    after = sent(xdsd.log())[before:]
    assert {t for t, _, _ in after} == {"virtual_hosts" if vhds else "routes"}, after
    assert sum(n for _, n, _ in after) == 2, after  # echo's of "PORT" and "http_proxy"
    # an endpoint-only edit: EDS with the changed assignments only
    before = len(sent(xdsd.log()))
    mesh.set_subsets("v1", "v2", "v3")  # a new subset: its cluster and its endpoints
    wait_until(lambda: any(t == "clusters" for t, _, _ in sent(xdsd.log())[before:]), what="CDS")
    wait_until(lambda: any(t == "endpoints" for t, _, _ in sent(xdsd.log())[before:]), what="EDS")
    cds = [n for t, n, _ in sent(xdsd.log())[before:] if t == "clusters"]
    assert cds == [1], cds  # only the new v3 cluster


def test_vhds_fetches_on_demand_and_drops_what_leaves(mesh: EchoMesh) -> None:
    """VHDS with a real Envoy: no virtual host is sent before a request needs it; the
    first request to a host fetches it (on-demand filter) and is routed; an unknown host
    is answered 404 at once (not held until a timeout); a service that leaves the mesh is
    removed (404 again); the route configurations themselves carry no virtual host."""
    xdsd = mesh.start_xdsd()
    envoy = mesh.start_envoy("delta")
    wait_until(lambda: envoy.stats().get("listener_manager.lds.update_success", 0) >= 1, what="LDS")
    wait_until(
        lambda: envoy.stats().get("http.outbound_http_proxy.rds.http_proxy.update_success", 0) >= 1,
        what="routes",
    )
    assert not [n for t, n, _ in sent(xdsd.log()) if t == "virtual_hosts" and n], "pushed"
    mesh.wait_for("v1")  # fetched on demand
    mesh.wait_for("v1", "proxy")
    clients = xdsd.admin("/debug/clients")
    assert str(clients[0]["class"]).endswith(" vhds"), clients
    status, _, _ = http_get(mesh.outbound_ip, mesh.port, "/", {"Host": "nowhere.example"})
    assert status == 404
    held = [n for t, n, _ in sent(xdsd.log()) if t == "virtual_hosts"]
    assert sum(held) == 2, held  # echo's, once per route configuration
    assert "initial fetch timed out" not in envoy.log()  # every VHDS subscription started
    before = len(sent(xdsd.log()))  # (the route configurations' starts announce removals)
    (mesh.config / "services" / "echo.toml").unlink()
    mesh.rules.unlink()
    wait_until(
        lambda: any(t == "virtual_hosts" and r for t, _, r in sent(xdsd.log())[before:]),
        what="the virtual hosts removed",
    )
    # (the port's listener went with its last service; the HTTP proxy stays)
    proxy = f"http://echo:{mesh.port}/"
    wait_until(
        lambda: http_get(mesh.outbound_ip, 15001, proxy_url=proxy)[0] == 404,
        what="echo no longer routed",
    )


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


def _virtual_hosts(envoy: Envoy, config: str) -> list[str]:
    """The names of the virtual hosts Envoy holds for route configuration ``config``."""
    for section in envoy.admin_json("/config_dump")["configs"]:
        for entry in section.get("dynamic_route_configs", ()):
            if entry["route_config"].get("name") == config:
                return [v["name"] for v in entry["route_config"].get("virtual_hosts", ())]
    return []


def test_vhds_removes_a_virtual_host_asked_for_by_its_own_name(mesh: EchoMesh) -> None:
    """A request to ``FQDN:PORT`` through the HTTP proxy asks for the alias
    ``http_proxy/FQDN:PORT``, which is also the name of the virtual host it resolves to.
    When the service leaves, Envoy accepts the removal (no response naming it both sent
    and removed) and answers 404, the virtual host gone from its configuration."""
    mesh.start_xdsd()
    envoy = mesh.start_envoy("delta")
    host = f"echo.default.svc.cluster.local:{mesh.port}"
    proxy = f"http://{host}/"
    wait_until(
        lambda: http_get(mesh.outbound_ip, 15001, proxy_url=proxy)[0] == 200,
        what="echo routed by its FQDN",
    )
    assert f"http_proxy/{host}" in _virtual_hosts(envoy, "http_proxy")
    (mesh.config / "services" / "echo.toml").unlink()
    mesh.rules.unlink()
    wait_until(
        lambda: http_get(mesh.outbound_ip, 15001, proxy_url=proxy)[0] == 404,
        what="echo no longer routed",
    )
    assert f"http_proxy/{host}" not in _virtual_hosts(envoy, "http_proxy")
    assert "duplicate name" not in envoy.log()
    assert envoy.stats().get("http.outbound_http_proxy.vhds.http_proxy.update_rejected", 0) == 0


def test_vhds_traffic_with_ever_new_hosts_does_not_cut_envoy_off(mesh: EchoMesh) -> None:
    """More distinct Host headers than a stream keeps VHDS aliases for (Envoy subscribes
    one per host and never unsubscribes): xdsd forgets the oldest unknown ones instead
    of ending the stream, so Envoy stays connected, a real host still routes and an edit
    still reaches it."""
    xdsd = mesh.start_xdsd()
    envoy = mesh.start_envoy("delta")
    mesh.wait_for("v1")

    def unknown(i: int) -> int:
        return http_get(mesh.outbound_ip, mesh.port, "/", {"Host": f"h{i}.nowhere"})[0]

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(unknown, range(MAX_VIRTUAL_HOST_NAMES + 200)))
    assert set(statuses) == {404}, Counter(statuses)
    assert "ending stream" not in xdsd.log()
    assert envoy.stats().get("control_plane.connected_state") == 1
    mesh.wait_for("v1")  # echo still routes (its alias was not forgotten: it resolves)
    write_atomically(mesh.rules, vs(route_to({"v2": 100})))
    mesh.wait_for("v2")  # and an edit still arrives
    assert unknown(0) == 404  # a forgotten host, asked again, is answered again
    assert "ending stream" not in xdsd.log()
