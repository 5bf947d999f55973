"""ServiceEntry, WorkloadEntry and active health checks, proven by real requests through
a real Envoy sidecar configured by xdsd (one mesh for the module; each test its own
host)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.traffic_mesh import Sidecar, TrafficMesh
from tests.harness import free_port, http_get
from xdsd.translate.listeners import HTTP_PROXY_PORT

ISTIO = "apiVersion: networking.istio.io/v1"


class World:
    def __init__(self, tmp: Path) -> None:
        self.mesh = m = TrafficMesh(tmp)
        # STATIC: an external API on its own port, named by the endpoint's ports map.
        self.static = m.upstream_on("static", m.ip())
        # DNS: `localhost` itself on a port of its own (targetPort), and a name whose
        # endpoint is `localhost`, on the same port.
        self.dns = m.upstream_on("dns")
        self.db = m.upstream_on("db")
        self.dns_port = free_port(m.ip(0))
        # NONE: anything under *.localhost, through the HTTP proxy.
        self.none = m.upstream_on("none")
        # Rules on an entry's host.
        self.pay = {v: m.upstream(f"pay-{v}", version=v) for v in ("v1", "v2")}
        # workloadSelector: two workloads, one selected.
        self.vm = {n: m.upstream(f"vm-{n}") for n in ("a", "b")}
        # Active health checks: HTTP and TCP.
        self.checked = {n: m.upstream(f"checked-{n}") for n in ("good", "bad")}
        self.tcpchecked = {n: m.upstream(f"tcpchecked-{n}") for n in ("live", "dead")}
        m.service(
            "checked",
            self.checked.values(),
            extra='healthCheck = { path = "/healthz", interval = "0.2s", timeout = "1s", '
            "unhealthyThreshold = 1, healthyThreshold = 1 }",
        )
        m.service(
            "tcpchecked",
            self.tcpchecked.values(),
            extra='healthCheck = { interval = "0.2s", unhealthyThreshold = 1 }',
        )
        m.rule("entries", self.entries())
        m.rule("workloads", self.workloads(selected=("a",)))
        self.client: Sidecar = m.start()

    def entries(self) -> str:
        m = self.mesh
        return f"""\
{ISTIO}
kind: ServiceEntry
metadata: {{name: external-api}}
spec:
  hosts: [api.external.test]
  ports: [{{number: {m.port}, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: {self.static.host}, ports: {{http: {self.static.port}}}}}]
---
{ISTIO}
kind: ServiceEntry
metadata: {{name: loopback}}
spec:
  hosts: [localhost]
  ports: [{{number: {self.dns_port}, name: http, protocol: HTTP, targetPort: {self.dns.port}}}]
  resolution: DNS
---
{ISTIO}
kind: ServiceEntry
metadata: {{name: database}}
spec:
  hosts: [db.external.test]
  location: MESH_EXTERNAL
  ports: [{{number: {self.dns_port}, name: http, protocol: HTTP}}]
  resolution: DNS
  endpoints: [{{address: localhost, ports: {{http: {self.db.port}}}}}]
---
{ISTIO}
kind: ServiceEntry
metadata: {{name: anything-local}}
spec:
  hosts: ["*.localhost"]
  ports: [{{number: {self.none.port}, name: http, protocol: HTTP}}]
  resolution: NONE
---
{ISTIO}
kind: ServiceEntry
metadata: {{name: payments}}
spec:
  hosts: [pay.external.test]
  ports: [{{number: {m.port}, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: {self.pay["v1"].host}, labels: {{version: v1}}}}
  - {{address: {self.pay["v2"].host}, labels: {{version: v2}}}}
---
{ISTIO}
kind: DestinationRule
metadata: {{name: payments}}
spec:
  host: pay.external.test
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
{ISTIO}
kind: VirtualService
metadata: {{name: payments}}
spec:
  hosts: [pay.external.test]
  http:
  - match: [{{headers: {{x-pay: {{exact: new}}}}}}]
    route: [{{destination: {{host: pay.external.test, subset: v2}}}}]
  - route: [{{destination: {{host: pay.external.test, subset: v1}}}}]
---
{ISTIO}
kind: ServiceEntry
metadata: {{name: vms}}
spec:
  hosts: [vm.external.test]
  location: MESH_INTERNAL
  ports: [{{number: {m.port}, name: http, protocol: HTTP}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: billing}}}}
"""

    def workloads(self, selected: tuple[str, ...]) -> str:
        docs = []
        for name, up in self.vm.items():
            app = "billing" if name in selected else "other"
            docs.append(
                f"{ISTIO}\nkind: WorkloadEntry\nmetadata: {{name: vm-{name}}}\n"
                f"spec: {{address: {up.host}, labels: {{app: {app}}}}}\n"
            )
        return "---\n".join(docs)

    def via_proxy(self, url: str) -> tuple[int, str]:
        """GET ``url`` through the sidecar's HTTP proxy listener (absolute form, as an
        ``HTTP_PROXY`` client sends it): the status and the backend that answered."""
        status, headers, _ = http_get(
            self.client.outbound_ip, HTTP_PROXY_PORT, proxy_url=url, timeout=10
        )
        return status, headers.get("x-backend", "")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("service-entries"))
    try:
        yield w
    finally:
        w.mesh.stop()


def backend(client: Sidecar, host: str, path: str = "/", port: int = 0, **headers: str) -> str:
    reply = client.request(host, path, headers=headers, port=port)
    assert reply.status == 200, (reply.status, reply.body[:200])
    return reply.backend


def test_static_entry_by_host_and_through_the_http_proxy(world: World) -> None:
    """ServiceEntry hosts, ports (number, name, protocol HTTP), resolution STATIC,
    endpoints[].address and endpoints[].ports: the per-port listener routes by Host, the
    HTTP proxy by the absolute URL, both to the endpoint's own port (EDS)."""
    c, port = world.client, world.mesh.port
    c.wait_for(lambda: backend(c, "api.external.test") == "static", "the entry to be served")
    assert backend(c, f"api.external.test:{port}", "/v1/x") == "static"
    assert world.static.seen[-1].path == "/v1/x"
    assert world.via_proxy(f"http://api.external.test:{port}/v1/y") == (200, "static")
    assert world.static.seen[-1].path == "/v1/y"
    # Named by its host only: no short names, no namespace completion.
    assert c.request("api").status == 404
    assert c.request("api.external.test.default.svc.cluster.local").status == 404


def test_dns_entries_resolve_names_to_loopback(world: World) -> None:
    """resolution DNS without endpoints (the host itself, `localhost`, resolved on
    ports[].targetPort) and with endpoints (a name whose endpoint is `localhost`, on the
    port its ports map gives): STRICT_DNS clusters, reached on the per-port listener by
    Host and through the HTTP proxy."""
    c, port = world.client, world.dns_port
    c.wait_for(lambda: backend(c, "localhost", port=port) == "dns", "the DNS entry to be served")
    assert backend(c, f"localhost:{port}", "/a", port=port) == "dns"
    assert backend(c, "db.external.test", port=port) == "db"
    assert world.via_proxy(f"http://localhost:{port}/b") == (200, "dns")
    assert world.via_proxy(f"http://db.external.test:{port}/c") == (200, "db")
    assert world.dns.seen[-1].path == "/b" and world.db.seen[-1].path == "/c"


def test_resolution_none_goes_where_the_request_says(world: World) -> None:
    """resolution NONE with a wildcard host (`*.localhost`): the HTTP proxy listener's
    dynamic forward proxy resolves the request's host and connects to it on the port of
    the URL; the per-port listener does not serve it."""
    c, port = world.client, world.none.port
    url = f"http://api.localhost:{port}/anything"
    c.wait_for(lambda: world.via_proxy(url) == (200, "none"), "the NONE entry to be served")
    assert world.none.seen[-1].path == "/anything"
    assert world.none.seen[-1].headers["host"] == f"api.localhost:{port}"
    assert world.via_proxy(f"http://other.localhost:{port}/") == (200, "none")
    assert c.request(f"api.localhost:{port}", port=port).status == 404


def test_virtual_service_and_subsets_on_an_entry_host(world: World) -> None:
    """A VirtualService (hosts, http match, route subset) and a DestinationRule (host,
    subsets by endpoints[].labels) naming a ServiceEntry host."""
    c, port = world.client, world.mesh.port
    c.wait_for(lambda: backend(c, "pay.external.test") == "pay-v1", "rules to be served")
    assert {backend(c, "pay.external.test") for _ in range(20)} == {"pay-v1"}
    assert {backend(c, "pay.external.test", **{"x-pay": "new"}) for _ in range(20)} == {"pay-v2"}
    assert world.via_proxy(f"http://pay.external.test:{port}/") == (200, "pay-v1")


def test_workload_selector_picks_workload_entries(world: World) -> None:
    """ServiceEntry workloadSelector.labels: the endpoints are the WorkloadEntries
    (address, labels) of its namespace whose labels match; relabelling a WorkloadEntry
    changes them."""
    c = world.client
    c.wait_for(lambda: backend(c, "vm.external.test") == "vm-a", "the selected workload")
    assert {backend(c, "vm.external.test") for _ in range(20)} == {"vm-a"}
    world.mesh.rule("workloads", world.workloads(selected=("a", "b")))
    c.wait_for(lambda: backend(c, "vm.external.test") == "vm-b", "the relabelled workload")
    counts = Counter(backend(c, "vm.external.test") for _ in range(60))
    assert set(counts) == {"vm-a", "vm-b"}, counts


def health_flags(client: Sidecar, cluster: str) -> dict[str, str]:
    """The health flags of each host of ``cluster`` in Envoy's /clusters (host → flags)."""
    out = {}
    for line in client.envoy.admin_text("/clusters").splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == cluster and parts[2] == "health_flags":
            out[parts[1]] = parts[3]
    return out


def test_http_health_check_takes_a_failing_endpoint_out(world: World) -> None:
    """Service healthCheck (path, interval, timeout, unhealthyThreshold,
    healthyThreshold) → cluster health_checks: an endpoint whose health path fails is
    marked failed_active_hc and gets no requests; once it passes again it is back."""
    c = world.client
    good, bad = world.checked["good"], world.checked["bad"]
    cluster = f"outbound|{world.mesh.port}||checked.default.svc.cluster.local"
    bad_host = f"{bad.host}:{bad.port}"
    c.wait_for(lambda: health_flags(c, cluster).get(bad_host) == "healthy", "checks to pass")
    assert any(s.path == "/healthz" for s in bad.seen)
    assert bad.seen[-1].headers["host"] == "checked.default.svc.cluster.local"
    bad.status = 503
    c.wait_for(lambda: "failed_active_hc" in health_flags(c, cluster)[bad_host], "ejection")
    assert health_flags(c, cluster)[f"{good.host}:{good.port}"] == "healthy"
    assert {backend(c, "checked", "/work") for _ in range(30)} == {"checked-good"}
    bad.status = 200
    c.wait_for(lambda: health_flags(c, cluster)[bad_host] == "healthy", "the endpoint back")
    c.wait_for(lambda: backend(c, "checked", "/work") == "checked-bad", "traffic back")


def test_tcp_health_check_takes_a_dead_endpoint_out(world: World) -> None:
    """Service healthCheck without path: a TCP connect check; a stopped endpoint is
    failed_active_hc and every request reaches the live one."""
    c = world.client
    dead = world.tcpchecked["dead"]
    cluster = f"outbound|{world.mesh.port}||tcpchecked.default.svc.cluster.local"
    dead_host = f"{dead.host}:{dead.port}"
    c.wait_for(lambda: health_flags(c, cluster).get(dead_host) == "healthy", "checks to pass")
    assert not any(s.path == "/healthz" for s in dead.seen)  # a connect, no request
    dead.stop()
    c.wait_for(lambda: "failed_active_hc" in health_flags(c, cluster)[dead_host], "ejection")
    assert {backend(c, "tcpchecked") for _ in range(30)} == {"tcpchecked-live"}


def test_no_configuration_errors(world: World) -> None:
    """Everything above loaded and translated without errors or warnings."""
    errors = world.mesh.errors()
    assert errors == [], json.dumps(errors)[:2000]
