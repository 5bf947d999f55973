"""Wildcard VirtualService hosts and retries under a consistent hash, proven by real
requests through a real Envoy sidecar configured by xdsd (one mesh for the module).

A VirtualService whose host is ``*.default.svc.cluster.local`` routes every service of
the namespace that no VirtualService names exactly (Istio's most-specific-host choice);
a rule's lone destination with a consistent hash keeps its retries on the hashed host.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.traffic_mesh import Sidecar, TrafficMesh

RULES = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: down-for-maintenance}
spec:
  hosts: ["*.default.svc.cluster.local"]
  http:
  - route:
    - destination: {host: maintenance}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api}
spec:
  hosts: [api]
  http:
  - route:
    - destination: {host: api}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: sticky}
spec:
  host: sticky
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: sticky}
spec:
  hosts: [sticky]
  http:
  - route:
    - destination: {host: sticky}
    retries: {attempts: 2, retryOn: 5xx}
"""


class World:
    def __init__(self, tmp: Path) -> None:
        self.mesh = TrafficMesh(tmp)
        m = self.mesh
        for name in ("web", "maintenance", "api"):
            m.service(name, [m.upstream(name)])
        self.sticky = {n: m.upstream(f"sticky-{n}") for n in ("a", "b")}
        m.service("sticky", self.sticky.values())
        m.rule("rules", RULES)
        self.client: Sidecar = m.start()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("rules-wildcard"))
    try:
        yield w
    finally:
        w.mesh.stop()


def test_a_wildcard_host_routes_the_services_without_their_own_rule(world: World) -> None:
    c = world.client
    c.wait_for(lambda: c.request("api").status == 200, "api to be served")
    assert world.mesh.errors() == []
    for _ in range(5):
        web = c.request("web")
        assert (web.status, web.backend) == (200, "maintenance")
        # An exact host wins over the wildcard.
        api = c.request("api")
        assert (api.status, api.backend) == (200, "api")


def test_retries_stay_on_the_hashed_host(world: World) -> None:
    c = world.client
    headers = {"x-user": "u1"}
    c.wait_for(lambda: c.request("sticky", headers=headers).status == 200, "sticky")
    hashed = world.sticky[
        "a" if c.request("sticky", headers=headers).backend.endswith("a") else "b"
    ]
    (other,) = (u for u in world.sticky.values() if u is not hashed)
    hashed.status = 503
    try:
        before, other_before = hashed.hits, other.hits
        reply = c.request("sticky", headers=headers)
        # The first try and both retries go to the hashed host: none to the other one.
        assert reply.status == 503
        assert hashed.hits - before == 3
        assert other.hits == other_before
    finally:
        hashed.reset()
