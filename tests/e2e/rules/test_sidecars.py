"""Behaviour of Istio's Sidecar kind, proven by real requests through two real Envoy
client sidecars configured by xdsd: client ``a`` is limited by a Sidecar (egress hosts,
an explicit egress listener, REGISTRY_ONLY), client ``b`` is not limited but has an
ingress listener with a default endpoint. One mesh for the module."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.traffic_mesh import Sidecar, TrafficMesh
from tests.harness import free_port, wait_until

SIDECARS = """\
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: client-a}}
spec:
  workloadSelector: {{labels: {{app: a}}}}
  outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}
  egress:
  - port: {{number: {port}, protocol: HTTP, name: http}}
    bind: {bind}
    hosts: [./bound]
  - hosts: [./seen, "default/seen-too.default.svc.cluster.local"]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: client-b}}
spec:
  workloadSelector: {{labels: {{app: b}}}}
  ingress:
  - port: {{number: {b_port}, protocol: HTTP, name: http}}
    defaultEndpoint: 127.0.0.1:{local_port}
"""


class World:
    def __init__(self, tmp: Path) -> None:
        self.mesh = TrafficMesh(tmp)
        m = self.mesh
        self.seen = m.upstream("seen")
        self.seen_too = m.upstream("seen-too")
        self.hidden = m.upstream("hidden")
        self.bound = m.upstream("bound")
        for up in (self.seen, self.seen_too, self.hidden, self.bound):
            m.service(up.name, [up])
        # a short drain: listeners the Sidecar removes go (with the routes and clusters
        # they hold) in a second rather than Envoy's default ten minutes
        self.a: Sidecar = m.start("client-a", labels={"app": "a"}, drain_time_s=1)
        self.b: Sidecar = m.start("client-b", labels={"app": "b"})
        self.local = m.upstream("local-b", host="127.0.0.1", port=free_port())
        self.bind = m.ip()
        a = self.a
        a.wait_for(lambda: a.request("hidden").status == 200, "hidden to be served to a")
        self.clusters_before = a.envoy.admin_text("/clusters")
        m.rule(
            "sidecars",
            SIDECARS.format(
                port=m.port, bind=self.bind, b_port=self.b.inbound_port, local_port=self.local.port
            ),
        )
        a.wait_for(
            lambda: "client-b.default" not in a.envoy.admin_text("/clusters"),
            "the Sidecar to reach client a, its old listeners drained",
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("sidecars"))
    try:
        yield w
    finally:
        w.mesh.stop()


def test_egress_hosts_limit_what_a_node_receives(world: World) -> None:
    """Sidecar.workloadSelector and egress[].hosts (./host, ns/FQDN): client a's snapshot
    loses every other service (Envoy's /clusters and /config_dump), a request to a
    hidden service fails there while client b, which no Sidecar limits, still reaches
    it."""
    a, b = world.a, world.b
    assert "hidden.default" in world.clusters_before
    clusters = a.envoy.admin_text("/clusters")
    assert f"outbound|{world.mesh.port}||seen.default.svc.cluster.local" in clusters
    assert "seen-too.default" in clusters and "bound.default" in clusters
    assert "hidden.default" not in clusters and "client-b.default" not in clusters
    dump = a.envoy.admin_text("/config_dump")
    assert "hidden.default.svc.cluster.local" not in dump
    assert json.loads(dump)  # a whole, valid dump
    assert a.request("seen").backend == "seen"
    assert a.request("seen-too").backend == "seen-too"
    assert a.request("hidden").status == 502  # REGISTRY_ONLY's catch-all
    assert a.request(f"hidden:{world.mesh.port}", port=15001).status == 502
    assert world.hidden.hits == 1  # only the request made before the Sidecar
    reply = b.request("hidden")
    assert reply.status == 200 and reply.backend == "hidden"
    assert "hidden.default" in b.envoy.admin_text("/clusters")


def test_registry_only_blocks_an_unknown_host(world: World) -> None:
    """Sidecar.outboundTrafficPolicy.mode REGISTRY_ONLY: a host no service answers to gets
    Istio's 502 on the per-port listener and on the HTTP proxy; without a policy it is a
    404 (no route), and neither reaches any upstream."""
    a, b = world.a, world.b
    hits = sum(u.hits for u in (world.seen, world.seen_too, world.hidden, world.bound))
    assert a.request("nowhere.example").status == 502
    assert a.request("nowhere.example:80", port=15001).status == 502
    assert a.request(f"seen:{world.mesh.port}", port=15001).backend == "seen"
    assert b.request("nowhere.example").status == 404
    assert hits + 1 == sum(u.hits for u in (world.seen, world.seen_too, world.hidden, world.bound))


def test_egress_port_and_bind_give_an_explicit_listener(world: World) -> None:
    """Sidecar.egress[].port and bind: client a reaches ``bound`` on bind:PORT, its own
    listener, and no longer on the default listener of that port."""
    a = world.a
    assert (world.bind, world.mesh.port) in a.envoy.listener_addresses()
    reply = a.request("bound", address=world.bind)
    assert reply.status == 200 and reply.backend == "bound"
    assert a.request("seen", address=world.bind).status == 502  # not on this listener
    assert a.request("bound").status == 502  # the default listener no longer has it
    assert a.request(f"bound:{world.mesh.port}", port=15001).backend == "bound"  # proxy has


def test_ingress_default_endpoint_forwards_inbound_traffic(world: World) -> None:
    """Sidecar.ingress[].port and defaultEndpoint: client b's inbound listener for its
    service port forwards to 127.0.0.1:PORT instead of the service's targetPort (where
    nothing listens)."""
    b = world.b

    def local_answers() -> bool:
        try:
            return b.request("client-b", address=b.ip, port=b.inbound_port).backend == "local-b"
        except OSError:
            return False

    wait_until(local_answers, timeout=30, what="b's inbound listener to use the default endpoint")
    seen = world.local.seen[-1]
    assert seen.headers["host"] == "client-b"
    # b's egress is untouched by an ingress-only Sidecar
    assert b.request("seen").backend == "seen"
