"""ServiceEntry services and active health checks in translation: cluster names and
types per resolution, endpoints (ports maps, targetPort, Unix sockets), names and domains,
the dynamic forward proxy of resolution NONE, health checks on clusters, and Envoy's
acceptance of all of it."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2

from tests.harness import envoy_binary
from tests.translate.meshes import by_name, hcm_of, http, service
from xdsd.model import (
    DestinationRule,
    Endpoint,
    HealthCheck,
    Mesh,
    Origin,
    OutlierDetection,
    Port,
    Protocol,
    Service,
    TrafficPolicy,
)
from xdsd.model.networking import (
    EntryPort,
    EntryResolution,
    ServiceEntry,
    WorkloadEndpoint,
    WorkloadEntry,
)
from xdsd.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from xdsd.sources.service_entry import entry_services
from xdsd.translate import MeshTranslation, NodeClass, render_static
from xdsd.translate.forward_proxy import DNS_CACHE_NAME, FORWARD_PROXY_FILTER
from xdsd.translate.node import ClientKind

Cluster = cluster_pb2.Cluster
NODE = NodeClass("client", instance_ip="127.0.0.2", outbound_ip="127.0.0.10")
GRPC = NodeClass("client", client=ClientKind.GRPC)
HTTP80 = EntryPort(80, Protocol.HTTP, "http", 0, "HTTP")


def entry(
    hosts: tuple[str, ...],
    resolution: EntryResolution,
    *ports: EntryPort,
    endpoints: tuple[WorkloadEndpoint, ...] = (),
    selector: tuple[tuple[str, str], ...] = (),
) -> ServiceEntry:
    return ServiceEntry(
        "e",
        hosts=hosts,
        ports=ports or (HTTP80,),
        resolution=resolution,
        endpoints=endpoints,
        workload_selector=selector,
        origin=Origin("rules/e.yaml", 1),
    )


def entry_mesh(*entries: ServiceEntry, workloads: tuple[WorkloadEntry, ...] = ()) -> Mesh:
    services = [s for e in entries for s in entry_services(e, workloads)[0]]
    return Mesh(services=tuple(services), service_entries=entries, workload_entries=workloads)


def snapshot(mesh: Mesh, node: NodeClass = NODE) -> Any:
    return MeshTranslation(mesh).snapshot_for(node)


# (entry, cluster name, Envoy discovery type or "dfp", endpoints as (address, port))
CLUSTER_CASES: dict[str, tuple[ServiceEntry, str, str, list[tuple[str, int]]]] = {
    "static with a ports map": (
        entry(
            ("api.example.com",),
            EntryResolution.STATIC,
            endpoints=(
                WorkloadEndpoint("10.0.0.1", ports=(("http", 8080),)),
                WorkloadEndpoint("10.0.0.2"),
            ),
        ),
        "outbound|80||api.example.com",
        "EDS",
        [("10.0.0.1", 8080), ("10.0.0.2", 80)],
    ),
    "static with a targetPort": (
        entry(
            ("api.example.com",),
            EntryResolution.STATIC,
            EntryPort(80, Protocol.HTTP, "http", 9090, "HTTP"),
            endpoints=(
                WorkloadEndpoint("10.0.0.1"),
                WorkloadEndpoint("10.0.0.2", ports=(("http", 7070),)),
            ),
        ),
        "outbound|80||api.example.com",
        "EDS",
        [("10.0.0.1", 9090), ("10.0.0.2", 7070)],
    ),
    "dns without endpoints: the host": (
        entry(
            ("db.example.com",),
            EntryResolution.DNS,
            EntryPort(5432, Protocol.TCP, "pg", 6432, "TCP"),
        ),
        "outbound|5432||db.example.com",
        "STRICT_DNS",
        [("db.example.com", 6432)],
    ),
    "dns with endpoints": (
        entry(
            ("db.example.com",),
            EntryResolution.DNS,
            endpoints=(WorkloadEndpoint("b.example.net"), WorkloadEndpoint("a.example.net")),
        ),
        "outbound|80||db.example.com",
        "STRICT_DNS",
        [("a.example.net", 80), ("b.example.net", 80)],
    ),
    "dns round robin": (
        entry(("db.example.com",), EntryResolution.DNS_ROUND_ROBIN),
        "outbound|80||db.example.com",
        "LOGICAL_DNS",
        [("db.example.com", 80)],
    ),
    "none: dynamic forward proxy": (
        entry(("*.bar.com",), EntryResolution.NONE),
        "outbound|80||*.bar.com",
        "dfp",
        [],
    ),
    "workload selector": (
        entry(("vm.example.com",), EntryResolution.STATIC, selector=(("app", "vm"),)),
        "outbound|80||vm.example.com",
        "EDS",
        [("10.0.1.1", 8081)],
    ),
}
WORKLOADS = (
    WorkloadEntry("a", endpoint=WorkloadEndpoint("10.0.1.1", (("app", "vm"),), (("http", 8081),))),
    WorkloadEntry("b", endpoint=WorkloadEndpoint("10.0.1.2", (("app", "other"),))),
    WorkloadEntry("c", "ns2", WorkloadEndpoint("10.0.1.3", (("app", "vm"),))),
)


def _endpoints(cla: Any) -> list[tuple[str, int]]:
    return [
        (lb.endpoint.address.socket_address.address, lb.endpoint.address.socket_address.port_value)
        for group in cla.endpoints
        for lb in group.lb_endpoints
    ]


@pytest.mark.parametrize("case", sorted(CLUSTER_CASES))
def test_entry_clusters(case: str) -> None:
    se, name, kind, endpoints = CLUSTER_CASES[case]
    snap = snapshot(entry_mesh(se, workloads=WORKLOADS))
    cluster = by_name(snap.get(CLUSTER), name)
    if kind == "dfp":
        assert cluster.cluster_type.name == "envoy.clusters.dynamic_forward_proxy"
        assert cluster.lb_policy == Cluster.CLUSTER_PROVIDED
        assert name not in snap.get(ENDPOINT)
        return
    assert Cluster.DiscoveryType.Name(cluster.type) == kind
    if kind == "EDS":
        assert _endpoints(by_name(snap.get(ENDPOINT), name)) == endpoints
    else:
        assert cluster.dns_lookup_family == Cluster.V4_PREFERRED
        assert _endpoints(cluster.load_assignment) == endpoints


def test_grpc_gets_an_empty_assignment_for_resolution_none() -> None:
    snap = snapshot(entry_mesh(entry(("*.bar.com",), EntryResolution.NONE)), GRPC)
    name = "outbound|80||*.bar.com"
    assert by_name(snap.get(CLUSTER), name).type == Cluster.EDS
    assert _endpoints(by_name(snap.get(ENDPOINT), name)) == []


def test_unix_socket_endpoints_are_pipes() -> None:
    se = entry(
        ("uds.local",),
        EntryResolution.STATIC,
        endpoints=(WorkloadEndpoint("unix:///var/run/example/socket"),),
    )
    cla = by_name(snapshot(entry_mesh(se)).get(ENDPOINT), "outbound|80||uds.local")
    [group] = cla.endpoints
    [lb] = group.lb_endpoints
    assert lb.endpoint.address.pipe.path == "/var/run/example/socket"
    assert not lb.endpoint.address.HasField("socket_address")


def test_entry_hosts_are_their_only_names() -> None:
    """Per-port and HTTP proxy domains are the host (and host:port) only; a NONE host is
    served by the HTTP proxy alone, whose listener then runs the forward proxy filter."""
    static = entry(
        ("api.example.com",), EntryResolution.STATIC, endpoints=(WorkloadEndpoint("10.0.0.1"),)
    )
    none = ServiceEntry("n", hosts=("*.bar.com",), ports=(HTTP80,), resolution=EntryResolution.NONE)
    snap = snapshot(entry_mesh(static, none))
    port_routes = by_name(snap.get(ROUTE), "80")
    assert [(v.name, list(v.domains)) for v in port_routes.virtual_hosts] == [
        ("api.example.com:80", ["api.example.com", "api.example.com:80"])
    ]
    proxy = by_name(snap.get(ROUTE), "http_proxy")
    assert [list(v.domains) for v in proxy.virtual_hosts] == [
        ["api.example.com:80", "api.example.com"],
        ["*.bar.com:80", "*.bar.com"],
    ]
    assert proxy.virtual_hosts[1].routes[0].route.cluster == "outbound|80||*.bar.com"
    filters = hcm_of(by_name(snap.get(LISTENER), "outbound_http_proxy")).http_filters
    assert [f.name for f in filters][-2:] == [FORWARD_PROXY_FILTER, "envoy.filters.http.router"]
    assert DNS_CACHE_NAME.encode() in filters[-2].typed_config.value
    # Without a NONE service, no forward proxy filter.
    plain = hcm_of(by_name(snapshot(entry_mesh(static)).get(LISTENER), "outbound_http_proxy"))
    assert FORWARD_PROXY_FILTER not in [f.name for f in plain.http_filters]


def test_tls_entries_share_a_port_by_sni() -> None:
    """Port protocol TLS (and HTTPS) on a ServiceEntry: passthrough, one filter chain per
    host matched by SNI."""
    tls = EntryPort(443, Protocol.TLS, "https", 0, "HTTPS")
    se = entry(("a.example.com", "b.example.com"), EntryResolution.DNS, tls)
    listener = by_name(snapshot(entry_mesh(se)).get(LISTENER), "outbound|127.0.0.10|443")
    assert [list(c.filter_chain_match.server_names) for c in listener.filter_chains] == [
        ["a.example.com"],
        ["b.example.com"],
    ]


CHECK = HealthCheck(
    "/healthz",
    "",
    ((200, 300), (404, 405)),
    timedelta(seconds=2),
    timedelta(milliseconds=500),
    3,
    2,
)


def checked(name: str, check: HealthCheck | None, port: Port | None = None) -> Service:
    """Service ``name`` on port 9080 (or ``port``) with one endpoint and ``check``."""
    svc = service(name, port or http(9080), endpoints=(Endpoint("10.0.0.1"),))
    return dataclasses.replace(svc, health_check=check)


@pytest.mark.parametrize(
    ("check", "port", "expected"),
    [
        (
            CHECK,
            None,
            {
                "path": "/healthz",
                "host": "web.default.svc.cluster.local",
                "statuses": [(200, 300), (404, 405)],
                "codec": 0,
            },
        ),
        (CHECK, Port(9080, Protocol.GRPC, "grpc"), {"codec": 1}),
        (HealthCheck("/h", "web.internal"), None, {"host": "web.internal", "statuses": []}),
        (HealthCheck(), None, {"tcp": True}),
    ],
)
def test_health_check_becomes_cluster_health_checks(
    check: HealthCheck, port: Port | None, expected: dict[str, Any]
) -> None:
    cluster = by_name(
        snapshot(Mesh((checked("web", check, port),))).get(CLUSTER),
        "outbound|9080||web.default.svc.cluster.local",
    )
    [hc] = cluster.health_checks
    assert hc.interval.ToTimedelta() == check.interval == hc.no_traffic_interval.ToTimedelta()
    assert hc.timeout.ToTimedelta() == check.timeout
    assert (hc.unhealthy_threshold.value, hc.healthy_threshold.value) == (
        check.unhealthy_threshold,
        check.healthy_threshold,
    )
    assert cluster.common_lb_config.HasField("healthy_panic_threshold")
    assert cluster.common_lb_config.healthy_panic_threshold.value == 0
    if expected.get("tcp"):
        assert hc.WhichOneof("health_checker") == "tcp_health_check"
        return
    got = hc.http_health_check
    assert hc.WhichOneof("health_checker") == "http_health_check"
    for key, value in expected.items():
        actual = {
            "path": got.path,
            "host": got.host,
            "statuses": [(r.start, r.end) for r in got.expected_statuses],
            "codec": got.codec_client_type,
        }[key]
        assert actual == value, key


def test_health_checks_per_service_and_flavor() -> None:
    """Two services with one check get each their own Host (EDS cluster templates are
    keyed by the check as sent); a DestinationRule's minHealthPercent wins over the
    check's panic threshold; proxyless gRPC gets no health checks."""
    a, b = checked("a", HealthCheck("/h")), checked("b", HealthCheck("/h"))
    rule = DestinationRule(
        "b",
        "b",
        traffic_policy=TrafficPolicy(outlier_detection=OutlierDetection(min_health_percent=40)),
    )
    mesh = Mesh((a, b), destination_rules=(rule,))
    clusters = snapshot(mesh).get(CLUSTER)
    ca = by_name(clusters, "outbound|9080||a.default.svc.cluster.local")
    cb = by_name(clusters, "outbound|9080||b.default.svc.cluster.local")
    assert ca.health_checks[0].http_health_check.host == "a.default.svc.cluster.local"
    assert cb.health_checks[0].http_health_check.host == "b.default.svc.cluster.local"
    assert cb.common_lb_config.healthy_panic_threshold.value == 40
    grpc = by_name(snapshot(mesh, GRPC).get(CLUSTER), "outbound|9080||a.default.svc.cluster.local")
    assert not grpc.health_checks


def test_a_health_check_edit_rebuilds_the_cluster() -> None:
    first = MeshTranslation(Mesh((checked("a", HealthCheck("/h")),)))
    before = first.snapshot_for(NODE).get(CLUSTER)
    changed = Mesh((checked("a", HealthCheck("/h", interval=timedelta(seconds=3))),))
    after = MeshTranslation(changed, previous=first).snapshot_for(NODE).get(CLUSTER)
    name = "outbound|9080||a.default.svc.cluster.local"
    assert after[name] is not before[name]
    assert after[name].message.health_checks[0].interval.seconds == 3
    same = MeshTranslation(changed, previous=first).snapshot_for(NODE).get(CLUSTER)
    assert same[name].message == after[name].message


def test_envoy_accepts_entries_and_health_checks(tmp_path: Path) -> None:
    """A real Envoy validates every kind of entry cluster at once, with health checks."""
    entries = [
        entry(
            ("api.example.com",),
            EntryResolution.STATIC,
            endpoints=(WorkloadEndpoint("10.0.0.1", ports=(("http", 8080),)),),
        ),
        ServiceEntry(
            "dns",
            hosts=("db.example.com",),
            resolution=EntryResolution.DNS,
            ports=(EntryPort(81, Protocol.HTTP, "http", 0, "HTTP"),),
        ),
        ServiceEntry(
            "rr",
            hosts=("rr.example.com",),
            resolution=EntryResolution.DNS_ROUND_ROBIN,
            ports=(EntryPort(82, Protocol.HTTP2, "h2", 0, "HTTP2"),),
        ),
        ServiceEntry(
            "none",
            hosts=("*.bar.com",),
            resolution=EntryResolution.NONE,
            ports=(EntryPort(83, Protocol.HTTP, "http", 0, "HTTP"),),
        ),
        ServiceEntry(
            "uds",
            hosts=("uds.local",),
            resolution=EntryResolution.STATIC,
            ports=(EntryPort(84, Protocol.HTTP, "http", 0, "HTTP"),),
            endpoints=(WorkloadEndpoint("unix:///tmp/x.sock"),),
        ),
        ServiceEntry(
            "tls",
            hosts=("a.tls.com", "b.tls.com"),
            resolution=EntryResolution.DNS,
            ports=(EntryPort(443, Protocol.TLS, "https", 0, "HTTPS"),),
        ),
    ]
    services = [s for e in entries for s in entry_services(e, ())[0]]
    services += [checked("web", CHECK), checked("tcp", HealthCheck(), Port(9090, Protocol.TCP))]
    mesh = Mesh(tuple(services), service_entries=tuple(entries))
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(render_static(mesh, NODE, admin_port=0)))
    proc = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
