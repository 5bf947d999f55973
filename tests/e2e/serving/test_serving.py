"""xdsd serving real Envoys: routing follows file edits over ADS and REST, with no failed
request during any switch; bad edits keep the last good config; NACKs are recorded and not
resent; a restart of xdsd changes nothing in Envoy."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.mesh import EchoMesh, Prober, route_to, vs
from tests.harness import Xdsd, wait_until, write_atomically


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[EchoMesh]:
    m = EchoMesh(tmp_path)
    try:
        yield m
    finally:
        m.stop()


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_routing_follows_edits_without_failing_a_request(mesh: EchoMesh, transport: str) -> None:
    mesh.start_xdsd()
    mesh.start_envoy(transport)
    mesh.wait_for("v1", "port")
    mesh.wait_for("v1", "proxy")
    with Prober(mesh) as prober:
        # 100% shift to v2 (RDS only)
        write_atomically(mesh.rules, vs(route_to({"v2": 100})))
        mesh.wait_for("v2", "port")
        mesh.wait_for("v2", "proxy")
        # a new subset and a route to it in one edit: CDS+EDS must land before RDS
        mesh.set_subsets("v1", "v2", "v3")
        write_atomically(mesh.rules, vs(route_to({"v3": 100})))
        mesh.wait_for("v3", "port")
        mesh.wait_for("v3", "proxy")
        # and back, removing the subset the route used (make-before-break on removal)
        write_atomically(mesh.rules, vs(route_to({"v1": 100})))
        mesh.wait_for("v1", "port")
        mesh.set_subsets("v1", "v2")
        assert mesh.envoy is not None
        envoy = mesh.envoy
        wait_until(
            lambda: "|v3|" not in envoy.admin_text("/clusters"), what="the v3 cluster removed"
        )
    assert prober.failures == [], prober.failures[:5]
    assert sum(prober.outcomes.values()) > 20

    # 50/50 split over 200 requests: each side within 50% ± 15% (over 4 standard deviations)
    write_atomically(mesh.rules, vs(route_to({"v1": 50, "v2": 50})))
    wait_until(lambda: {mesh.ask() for _ in range(20)} == {"v1", "v2"}, what="the split")
    counts = Counter(mesh.ask() for _ in range(200))
    assert 70 <= counts["v1"] <= 130 and counts["v1"] + counts["v2"] == 200, counts

    # header match first, default route second
    write_atomically(
        mesh.rules,
        vs(route_to({"v2": 100}, match_header=("end-user", "jason")), route_to({"v1": 100})),
    )
    mesh.wait_for("v2", "port", headers={"end-user": "jason"})
    mesh.wait_for("v1", "port", headers={"end-user": "someone-else"})
    mesh.wait_for("v2", "proxy", headers={"end-user": "jason"})


def test_bad_edit_keeps_the_last_good_config_and_a_fix_applies(mesh: EchoMesh) -> None:
    xdsd = mesh.start_xdsd()
    mesh.start_envoy("grpc")
    mesh.wait_for("v1")
    broken = vs(route_to({"v2": 100})).replace("weight: 100", "weight: -5")
    write_atomically(mesh.rules, broken)
    errors = wait_until(lambda: xdsd.admin("/debug/errors"), what="the error to be reported")
    assert errors[0]["path"].endswith("echo-vs.yaml") and errors[0]["line"] == 9, errors
    assert errors[0]["field"] == "http[0].route[0].weight"
    wait_until(lambda: "echo-vs.yaml:9: http[0].route[0].weight" in xdsd.log(), what="log line")
    assert [mesh.ask() for _ in range(20)] == ["v1"] * 20  # still the last good config
    write_atomically(mesh.rules, vs(route_to({"v2": 100})))
    mesh.wait_for("v2")
    assert xdsd.admin("/debug/errors") == []


BAD_CLUSTER = {
    "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "name": "raw-bad",
    "type": "STATIC",
    "connect_timeout": "1s",
    "load_assignment": {
        "cluster_name": "raw-bad",
        "endpoints": [
            {
                "lb_endpoints": [
                    {
                        "endpoint": {
                            "address": {
                                "socket_address": {"address": "not-an-ip-address", "port_value": 1}
                            }
                        }
                    }
                ]
            }
        ],
    },
}


def _client(xdsd: Xdsd, transport: str) -> dict:  # type: ignore[type-arg]
    found = [
        c for c in xdsd.admin("/debug/clients") if c["connected"] and c["transport"] == transport
    ]
    assert len(found) == 1, found
    return found[0]  # type: ignore[no-any-return]


def test_nack_is_recorded_not_resent_and_cleared_by_a_good_edit(mesh: EchoMesh) -> None:
    xdsd = mesh.start_xdsd()
    envoy = mesh.start_envoy("grpc")
    mesh.wait_for("v1")
    raw = mesh.config / "envoy" / "bad.json"
    raw.parent.mkdir()
    raw.write_text(json.dumps(BAD_CLUSTER))
    wait_until(lambda: envoy.stats().get("cluster_manager.cds.update_rejected") == 1, what="NACK")
    nack = wait_until(
        lambda: _client(xdsd, "ads")["types"]["clusters"]["nack"], what="NACK in client status"
    )
    assert "not-an-ip-address" in nack["message"], nack
    rejected_version = nack["version"]
    sent_before = xdsd.log().count("sending clusters")
    cds_success = envoy.stats()["cluster_manager.cds.update_success"]

    # an unrelated edit (routes only) is applied; the rejected clusters are not resent
    write_atomically(mesh.rules, vs(route_to({"v2": 100})))
    mesh.wait_for("v2")
    assert envoy.stats()["cluster_manager.cds.update_rejected"] == 1
    assert envoy.stats()["cluster_manager.cds.update_success"] == cds_success
    assert xdsd.log().count("sending clusters") == sent_before
    assert _client(xdsd, "ads")["types"]["clusters"]["sent_version"] == rejected_version

    # the next good edit (the raw cluster fixed) is sent, accepted, and clears the error
    fixed = dict(BAD_CLUSTER)
    fixed["load_assignment"] = {"cluster_name": "raw-bad"}
    raw.write_text(json.dumps(fixed))
    wait_until(
        lambda: envoy.stats()["cluster_manager.cds.update_success"] > cds_success,
        what="the fixed clusters accepted",
    )
    status = wait_until(
        lambda: (c := _client(xdsd, "ads")["types"]["clusters"])["nack"] is None and c,
        what="the NACK to clear",
    )
    assert status["acked_version"] == status["sent_version"] != rejected_version
    assert envoy.stats()["cluster_manager.cds.update_rejected"] == 1


def test_rest_rejection_shows_as_not_applied(mesh: EchoMesh) -> None:
    xdsd = mesh.start_xdsd()
    envoy = mesh.start_envoy("rest")
    mesh.wait_for("v1")
    raw = mesh.config / "envoy" / "bad.json"
    raw.parent.mkdir()
    raw.write_text(json.dumps(BAD_CLUSTER))
    wait_until(
        lambda: envoy.stats().get("cluster_manager.cds.update_rejected", 0) >= 1, what="reject"
    )
    wait_until(
        lambda: _client(xdsd, "rest")["types"]["clusters"]["not_applied"],
        what="not applied in client status",
    )
    mesh.wait_for("v1")  # still serving the last good config


def test_restart_changes_nothing_in_envoy(mesh: EchoMesh) -> None:
    xdsd = mesh.start_xdsd()
    envoy = mesh.start_envoy("grpc")
    mesh.wait_for("v1")
    keys = (
        "cluster_manager.cluster_modified",
        "listener_manager.listener_modified",
        "cluster_manager.cds.update_success",
        "listener_manager.lds.update_success",
    )
    wait_until(lambda: envoy.stats().get("listener_manager.lds.update_success", 0) >= 1, what="LDS")
    before = {k: envoy.stats()[k] for k in keys}
    xdsd.stop()
    wait_until(lambda: envoy.stats().get("control_plane.connected_state") == 0, what="disconnect")
    again = Xdsd(mesh.config, mesh.root, ports=(xdsd.grpc_port, xdsd.rest_port, xdsd.admin_port))
    mesh.xdsd = again
    wait_until(lambda: envoy.stats().get("control_plane.connected_state") == 1, what="reconnect")
    # the reconnected stream is fully served (routes re-sent and acknowledged)
    wait_until(
        lambda: _client(again, "ads")["types"].get("routes", {}).get("acked_version"),
        what="routes acknowledged after the reconnect",
    )
    mesh.wait_for("v1")
    assert {k: envoy.stats()[k] for k in keys} == before


def test_sighup_forces_a_reload(mesh: EchoMesh) -> None:
    import signal

    xdsd = mesh.start_xdsd()
    wait_until(lambda: "config loaded" in xdsd.log(), what="the first load")
    xdsd.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "SIGHUP: reloading" in xdsd.log(), what="the SIGHUP")
    wait_until(lambda: "config reloaded: no change" in xdsd.log(), what="the forced reload")
    assert xdsd.alive()
