"""Mesh-wide proxy defaults: access logs, the Prometheus stats listener, tracing and the
default outbound policy, laid over every class's resources and shared between classes."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.trace.v3 import opentelemetry_pb2, zipkin_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2

from tests.harness import envoy_binary
from tests.translate.meshes import bookinfo, by_name, hcm_of, http, service
from xdsd.errors import TranslationError
from xdsd.model import Endpoint, Mesh
from xdsd.model.mesh_config import (
    DEFAULT_TEXT_FORMAT,
    AccessLog,
    LogEncoding,
    MeshConfig,
    PrometheusStats,
    Tracing,
    TracingProvider,
)
from xdsd.model.networking import EgressListener, OutboundPolicy, Sidecar
from xdsd.resources import CLUSTER, LISTENER, ROUTE
from xdsd.sources import load_directory
from xdsd.translate import ClientKind, MeshTranslation, NodeClass, Role, render_static

NODE = NodeClass("productpage", instance_ip="127.0.0.2", outbound_ip="127.0.0.10")
OTHER = NodeClass("reviews", instance_ip="127.0.0.3", outbound_ip="127.0.0.11")
GRPC = NodeClass("productpage", client=ClientKind.GRPC)
LOGS = MeshConfig(access_log=AccessLog(enabled=True, path="/var/log/envoy.log"))
ZIPKIN = Tracing(TracingProvider.ZIPKIN, "127.0.0.9", 9411, sampling=25.0)
OTEL = Tracing(TracingProvider.OPENTELEMETRY, "otel.example", 4317)
STATS = MeshConfig(prometheus=PrometheusStats(enabled=True))


def filters(listener: Any) -> list[tuple[str, Any]]:
    """(kind, message) of every HCM and TCP proxy of a socket listener."""
    out: list[tuple[str, Any]] = []
    for chain in listener.filter_chains:
        for f in chain.filters:
            kind = f.typed_config.type_url.rsplit(".", 1)[-1]
            if kind == "HttpConnectionManager":
                out.append(("hcm", hcm_of_typed(f.typed_config)))
            elif kind == "TcpProxy":
                out.append(("tcp", tcp_of_typed(f.typed_config)))
    return out


def hcm_of_typed(typed: Any) -> Any:
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2 as hcm_pb2,
    )

    hcm = hcm_pb2.HttpConnectionManager()
    assert typed.Unpack(hcm)
    return hcm


def tcp_of_typed(typed: Any) -> Any:
    from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

    proxy = tcp_proxy_pb2.TcpProxy()
    assert typed.Unpack(proxy)
    return proxy


def file_logger(log: Any) -> Any:
    assert log.name == "envoy.access_loggers.file"
    out = file_pb2.FileAccessLog()
    assert log.typed_config.Unpack(out)
    return out


def test_the_defaults_change_nothing() -> None:
    plain = MeshTranslation(bookinfo()).snapshot_for(NODE)
    same = MeshTranslation(bookinfo(), mesh_config=MeshConfig()).snapshot_for(NODE)
    assert plain.versions == same.versions


def test_access_log_on_every_connection_manager_and_tcp_proxy() -> None:
    snap = MeshTranslation(bookinfo(), mesh_config=LOGS).snapshot_for(NODE)
    seen = set()
    for name, listener in snap.get(LISTENER).items():
        found = filters(listener.message)
        assert found, name
        for kind, message in found:
            seen.add(kind)
            (log,) = message.access_log
            logger = file_logger(log)
            assert logger.path == "/var/log/envoy.log"
            assert logger.log_format.text_format_source.inline_string == DEFAULT_TEXT_FORMAT
    assert seen == {"hcm", "tcp"}  # mysql is TCP: its outbound listener is a TCP proxy
    plain = MeshTranslation(bookinfo()).snapshot_for(NODE)
    assert not hcm_of(by_name(plain.get(LISTENER), "outbound_http_proxy")).access_log


def test_json_access_log_with_its_fields() -> None:
    config = MeshConfig(
        access_log=AccessLog(
            enabled=True, encoding=LogEncoding.JSON, fields=(("code", "%RESPONSE_CODE%"),)
        )
    )
    snap = MeshTranslation(bookinfo(), mesh_config=config).snapshot_for(NODE)
    (log,) = hcm_of(by_name(snap.get(LISTENER), "outbound_http_proxy")).access_log
    logger = file_logger(log)
    assert logger.path == "/dev/stdout"
    fields = logger.log_format.json_format.fields
    assert {k: v.string_value for k, v in fields.items()} == {"code": "%RESPONSE_CODE%"}
    default = MeshConfig(access_log=AccessLog(enabled=True, encoding=LogEncoding.JSON))
    snap = MeshTranslation(bookinfo(), mesh_config=default).snapshot_for(NODE)
    (log,) = hcm_of(by_name(snap.get(LISTENER), "outbound_http_proxy")).access_log
    fields = file_logger(log).log_format.json_format.fields
    assert fields["response_code"].string_value == "%RESPONSE_CODE%"
    assert fields["upstream_cluster"].string_value == "%UPSTREAM_CLUSTER%"


def test_decorated_listeners_are_shared_between_classes_and_reloads() -> None:
    first = MeshTranslation(bookinfo(), mesh_config=LOGS)
    a = first.snapshot_for(NODE).get(LISTENER)["outbound|127.0.0.10|9080"]
    b = first.snapshot_for(replace(NODE, labels=(("x", "y"),))).get(LISTENER)[
        "outbound|127.0.0.10|9080"
    ]
    assert a is b
    again = MeshTranslation(bookinfo(), previous=first, mesh_config=LOGS)
    assert again.snapshot_for(NODE).get(LISTENER)["outbound|127.0.0.10|9080"] is a
    other = MeshTranslation(bookinfo(), previous=first, mesh_config=MeshConfig())
    assert other.snapshot_for(NODE).get(LISTENER)["outbound|127.0.0.10|9080"] is not a


def test_proxyless_grpc_gets_none_of_it() -> None:
    everything = MeshConfig(
        access_log=AccessLog(enabled=True),
        prometheus=PrometheusStats(enabled=True),
        tracing=ZIPKIN,
    )
    plain = MeshTranslation(bookinfo()).snapshot_for(GRPC)
    snap = MeshTranslation(bookinfo(), mesh_config=everything).snapshot_for(GRPC)
    assert plain.versions == snap.versions


def test_stats_listener_forwards_one_path_to_the_admin_cluster() -> None:
    snap = MeshTranslation(bookinfo(), mesh_config=STATS).snapshot_for(NODE)
    resource = snap.get(LISTENER)["prometheus|127.0.0.2|15090"]
    listener = resource.message
    sock = listener.address.socket_address
    assert (sock.address, sock.port_value) == ("127.0.0.2", 15090)
    assert listener.enable_reuse_port.value is False
    routes = hcm_of(listener).route_config
    assert routes.validate_clusters.value is False
    (vhost,) = routes.virtual_hosts
    (route,) = vhost.routes
    assert route.match.path == "/stats/prometheus"
    assert route.route.cluster == "prometheus_stats"
    assert resource.references == ()  # the cluster is the bootstrap's
    assert "prometheus_stats" not in snap.get(CLUSTER)


def test_stats_listener_on_a_gateway_and_its_address() -> None:
    gateway = NodeClass("ingress", role=Role.GATEWAY, labels=(("istio", "ingress"),))
    snap = MeshTranslation(bookinfo(), mesh_config=STATS).snapshot_for(gateway)
    assert "prometheus|0.0.0.0|15090" in snap.get(LISTENER)
    config = MeshConfig(prometheus=PrometheusStats(enabled=True, port=9102, path="/m"))
    snap = MeshTranslation(bookinfo(), mesh_config=config).snapshot_for(NODE)
    listener = snap.get(LISTENER)["prometheus|127.0.0.2|9102"].message
    assert hcm_of(listener).route_config.virtual_hosts[0].routes[0].match.path == "/m"


def test_stats_port_taken_by_a_listener_is_an_error() -> None:
    mesh = bookinfo()
    taken = service("productpage", http(15090), endpoints=(Endpoint("127.0.0.2"),))
    mesh = Mesh(services=(taken, *mesh.services[1:]))
    with pytest.raises(TranslationError) as info:
        MeshTranslation(mesh, mesh_config=STATS).snapshot_for(NODE)
    text = str(info.value.problems[0])
    assert "mesh.prometheus.port" in text and "inbound|127.0.0.2|15090" in text


def test_zipkin_tracing_on_every_connection_manager() -> None:
    snap = MeshTranslation(bookinfo(), mesh_config=MeshConfig(tracing=ZIPKIN)).snapshot_for(NODE)
    for listener in snap.get(LISTENER).values():
        for kind, message in filters(listener.message):
            if kind != "hcm":
                assert not message.access_log
                continue
            tracing = message.tracing
            assert tracing.random_sampling.value == 25.0
            assert tracing.provider.name == "envoy.tracers.zipkin"
            zipkin = zipkin_pb2.ZipkinConfig()
            assert tracing.provider.typed_config.Unpack(zipkin)
            assert zipkin.collector_cluster == "tracing_collector"
            assert zipkin.collector_endpoint == "/api/v2/spans"
            assert zipkin.collector_endpoint_version == zipkin_pb2.ZipkinConfig.HTTP_JSON
    cluster = by_name(snap.get(CLUSTER), "tracing_collector")
    assert cluster.type == cluster_pb2.Cluster.STATIC
    sock = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (sock.address, sock.port_value) == ("127.0.0.9", 9411)
    snap.check_consistency()


def test_opentelemetry_tracing_uses_a_grpc_cluster() -> None:
    snap = MeshTranslation(bookinfo(), mesh_config=MeshConfig(tracing=OTEL)).snapshot_for(NODE)
    tracing = hcm_of(by_name(snap.get(LISTENER), "outbound_http_proxy")).tracing
    otel = opentelemetry_pb2.OpenTelemetryConfig()
    assert tracing.provider.typed_config.Unpack(otel)
    assert otel.grpc_service.envoy_grpc.cluster_name == "tracing_collector"
    cluster = by_name(snap.get(CLUSTER), "tracing_collector")
    assert cluster.type == cluster_pb2.Cluster.STRICT_DNS
    assert "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" in (
        cluster.typed_extension_protocol_options
    )


REGISTRY_ONLY = MeshConfig(outbound_traffic_policy=OutboundPolicy.REGISTRY_ONLY)


def test_registry_only_default_blocks_unknown_hosts_of_sidecars_only() -> None:
    snap = MeshTranslation(bookinfo(), mesh_config=REGISTRY_ONLY).snapshot_for(NODE)
    for name in ("http_proxy", "9080"):
        last = by_name(snap.get(ROUTE), name).virtual_hosts[-1]
        assert last.name == "block_all" and last.routes[0].direct_response.status == 502
    gateway = NodeClass("ingress", role=Role.GATEWAY, labels=(("istio", "ingress"),))
    assert (
        MeshTranslation(bookinfo(), mesh_config=REGISTRY_ONLY).snapshot_for(gateway).versions
        == MeshTranslation(bookinfo()).snapshot_for(gateway).versions
    )


def test_a_sidecars_own_policy_wins_over_the_default() -> None:
    base = bookinfo()

    def with_policy(policy: OutboundPolicy | None) -> Mesh:
        sidecar = Sidecar("s", "default", (), (EgressListener(("*/*",)),), (), policy)
        return Mesh(
            services=base.services,
            virtual_services=base.virtual_services,
            destination_rules=base.destination_rules,
            sidecars=(sidecar,),
        )

    def last_vhost(mesh: Mesh, config: MeshConfig) -> str:
        snap = MeshTranslation(mesh, mesh_config=config).snapshot_for(NODE)
        return str(by_name(snap.get(ROUTE), "http_proxy").virtual_hosts[-1].name)

    assert last_vhost(with_policy(None), REGISTRY_ONLY) == "block_all"
    assert last_vhost(with_policy(OutboundPolicy.ALLOW_ANY), REGISTRY_ONLY) != "block_all"
    assert last_vhost(with_policy(OutboundPolicy.REGISTRY_ONLY), MeshConfig()) == "block_all"


GATEWAY_FILES = """\
kind: Service
name: web
ports: [{number: 8080, protocol: HTTP}]
endpoints: [{address: 10.0.0.1}]
---
kind: Service
name: db
ports: [{number: 5432, protocol: TCP}]
endpoints: [{address: 10.0.0.3}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  selector: {istio: ingress}
  servers:
  - {port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}
  - {port: {number: 5432, name: db, protocol: TCP}, hosts: ["*"]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: ["*"]
  gateways: [edge]
  http: [{route: [{destination: {host: web}}]}]
  tcp: [{match: [{port: 5432}], route: [{destination: {host: db}}]}]
"""


def test_everything_on_a_gateway_and_envoy_accepts_it(tmp_path: Path) -> None:
    """A gateway's listeners log and trace too; the static render of a sidecar and of a
    gateway with every default on passes ``envoy --mode validate``."""
    (tmp_path / "mesh.yaml").write_text(GATEWAY_FILES)
    mesh = load_directory(str(tmp_path)).mesh
    everything = MeshConfig(
        access_log=AccessLog(enabled=True, encoding=LogEncoding.JSON),
        prometheus=PrometheusStats(enabled=True),
        tracing=ZIPKIN,
        outbound_traffic_policy=OutboundPolicy.REGISTRY_ONLY,
    )
    gateway = NodeClass(
        "ingress", role=Role.GATEWAY, labels=(("istio", "ingress"),), instance_ip="127.0.0.4"
    )
    snap = MeshTranslation(mesh, mesh_config=everything).snapshot_for(gateway)
    kinds = set()
    for name, listener in snap.get(LISTENER).items():
        if name.startswith("prometheus|"):
            continue
        for kind, message in filters(listener.message):
            kinds.add(kind)
            assert len(message.access_log) == 1
            if kind == "hcm":
                assert message.tracing.provider.name == "envoy.tracers.zipkin"
    assert kinds == {"hcm", "tcp"}
    for node in (gateway, replace(NODE, service="web", instance_ip="127.0.0.5")):
        config = render_static(mesh, node, admin_port=15000, mesh_config=everything)
        path = tmp_path / f"{node.service}.json"
        path.write_text(json.dumps(config))
        proc = subprocess.run(
            [envoy_binary(), "--mode", "validate", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
