"""Mesh-wide proxy defaults (``MeshConfig``) as Envoy configuration.

How this works: the defaults are laid over what the rest of ``translate`` generates, the
way Istio's MeshConfig reaches every proxy:

- ``decorated_listener`` gives a listener's HTTP connection managers the access log and
  tracing, and its TCP proxies the access log (api listeners of proxyless gRPC clients
  are left alone: gRPC has neither). ``MeshTranslation`` applies it to each generated
  listener before EnvoyFilters patch them, memoized by (listener, defaults).
- ``stats_listener`` is the Prometheus listener (Istio's 15090): one route, exact path
  ``/stats/prometheus``, to the cluster ``prometheus_stats`` that every bootstrap
  ``xdsd bootstrap`` writes (``admin_cluster``: Envoy's own admin address). Only that
  path is forwarded, so the rest of the admin API (``/quitquitquit``...) stays
  unreachable from outside.
- ``tracing_cluster`` leads to the collector; every class of Envoy and MOSN gets it.

Builders are pure functions of their arguments.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.trace.v3 import opentelemetry_pb2, zipkin_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from xdsd.located import is_ip
from xdsd.model.mesh_config import (
    AccessLog,
    LogEncoding,
    MeshConfig,
    PrometheusStats,
    Tracing,
    TracingProvider,
)
from xdsd.resources import pack
from xdsd.translate.config_sources import (
    HTTP_PROTOCOL_OPTIONS_KEY,
    duration,
    http2_protocol_options,
)

#: The static cluster, in every bootstrap xdsd writes, that leads to Envoy's admin server.
PROMETHEUS_CLUSTER = "prometheus_stats"
#: The cluster that leads to the tracing collector.
TRACING_CLUSTER = "tracing_collector"
FILE_ACCESS_LOG = "envoy.access_loggers.file"
ZIPKIN_TRACER = "envoy.tracers.zipkin"
OPENTELEMETRY_TRACER = "envoy.tracers.opentelemetry"
_ROUTER_FILTER = "envoy.filters.http.router"
_HCM_FILTER = "envoy.filters.network.http_connection_manager"
_HCM = hcm_pb2.HttpConnectionManager.DESCRIPTOR.full_name
_TCP = tcp_proxy_pb2.TcpProxy.DESCRIPTOR.full_name
_CONNECT_TIMEOUT = timedelta(seconds=1)


def stats_listener_name(ip: str, port: int) -> str:
    """``prometheus|IP|PORT``."""
    return f"prometheus|{ip}|{port}"


def access_log(config: AccessLog) -> Any:
    """The file access logger ``config`` describes (an ``AccessLog`` message)."""
    logger = file_pb2.FileAccessLog(path=config.path)
    if config.encoding is LogEncoding.JSON:
        for name, value in config.json_fields:
            logger.log_format.json_format.fields[name].string_value = value
    else:
        logger.log_format.text_format_source.inline_string = config.text_format
    out = accesslog_pb2.AccessLog(name=FILE_ACCESS_LOG)
    out.typed_config.CopyFrom(pack(logger))
    return out


def hcm_tracing(config: Tracing) -> Any:
    """The ``tracing`` of an HTTP connection manager: ``config.sampling`` percent of
    requests the caller did not decide about, spans to ``TRACING_CLUSTER``."""
    tracing = hcm_pb2.HttpConnectionManager.Tracing()
    tracing.random_sampling.value = config.sampling
    provider = tracing.provider
    if config.provider is TracingProvider.ZIPKIN:
        zipkin = zipkin_pb2.ZipkinConfig(
            collector_cluster=TRACING_CLUSTER,
            collector_endpoint=config.zipkin_path,
            collector_endpoint_version=zipkin_pb2.ZipkinConfig.HTTP_JSON,
            collector_hostname=f"{config.host}:{config.port}",
        )
        zipkin.shared_span_context.value = False
        provider.name = ZIPKIN_TRACER
        provider.typed_config.CopyFrom(pack(zipkin))
    else:
        otel = opentelemetry_pb2.OpenTelemetryConfig()
        otel.grpc_service.envoy_grpc.cluster_name = TRACING_CLUSTER
        otel.grpc_service.envoy_grpc.authority = f"{config.host}:{config.port}"
        provider.name = OPENTELEMETRY_TRACER
        provider.typed_config.CopyFrom(pack(otel))
    return tracing


def tracing_cluster(config: Tracing) -> Any:
    """The cluster ``TRACING_CLUSTER``: the collector at ``config.host:config.port``
    (STATIC for an address, STRICT_DNS for a name; HTTP/2 for OpenTelemetry's gRPC)."""
    kind = cluster_pb2.Cluster.STATIC if is_ip(config.host) else cluster_pb2.Cluster.STRICT_DNS
    cluster = cluster_pb2.Cluster(name=TRACING_CLUSTER, type=kind)
    cluster.connect_timeout.CopyFrom(duration(_CONNECT_TIMEOUT))
    if kind == cluster_pb2.Cluster.STRICT_DNS:
        cluster.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
    cluster.load_assignment.cluster_name = TRACING_CLUSTER
    sock = cluster.load_assignment.endpoints.add().lb_endpoints.add().endpoint.address
    sock.socket_address.address = config.host
    sock.socket_address.port_value = config.port
    if config.provider is TracingProvider.OPENTELEMETRY:
        cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS_KEY].CopyFrom(
            http2_protocol_options()
        )
    return cluster


def admin_cluster(admin_ip: str, admin_port: int) -> Any:
    """The static cluster ``PROMETHEUS_CLUSTER`` of a bootstrap: Envoy's admin server at
    ``admin_ip:admin_port``, which the stats listener forwards its one path to."""
    cluster = cluster_pb2.Cluster(name=PROMETHEUS_CLUSTER, type=cluster_pb2.Cluster.STATIC)
    cluster.connect_timeout.CopyFrom(duration(_CONNECT_TIMEOUT))
    cluster.load_assignment.cluster_name = PROMETHEUS_CLUSTER
    sock = cluster.load_assignment.endpoints.add().lb_endpoints.add().endpoint.address
    sock.socket_address.address = admin_ip
    sock.socket_address.port_value = admin_port
    return cluster


def stats_listener(ip: str, stats: PrometheusStats) -> Any:
    """The Prometheus listener on ``ip:stats.port``: ``GET stats.path`` (any query) is
    forwarded to ``PROMETHEUS_CLUSTER``, anything else is answered 404 by Envoy. The
    route configuration is inline and does not validate its cluster, so a proxy whose
    bootstrap lacks ``prometheus_stats`` still accepts the listener (and answers 503)."""
    name = stats_listener_name(ip, stats.port)
    listener = listener_pb2.Listener(
        name=name, stat_prefix=PROMETHEUS_CLUSTER, traffic_direction=base_pb2.INBOUND
    )
    sock = listener.address.socket_address
    sock.address = ip
    sock.port_value = stats.port
    listener.enable_reuse_port.value = False
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=PROMETHEUS_CLUSTER, codec_type=hcm_pb2.HttpConnectionManager.AUTO
    )
    routes = hcm.route_config
    routes.name = PROMETHEUS_CLUSTER
    routes.validate_clusters.value = False
    vhost = routes.virtual_hosts.add(name=PROMETHEUS_CLUSTER, domains=["*"])
    route = vhost.routes.add(name=PROMETHEUS_CLUSTER)
    route.match.path = stats.path
    route.route.cluster = PROMETHEUS_CLUSTER
    hcm.http_filters.add(name=_ROUTER_FILTER).typed_config.CopyFrom(pack(router_pb2.Router()))
    listener.filter_chains.add().filters.add(name=_HCM_FILTER).typed_config.CopyFrom(pack(hcm))
    return listener


def decorated_listener(listener: Any, config: MeshConfig) -> Any:
    """A copy of ``listener`` whose HTTP connection managers log (``config.access_log``)
    and trace (``config.tracing``) and whose TCP proxies log; the access log is added
    after any the listener already has. ``listener`` itself is not changed."""
    out = listener_pb2.Listener()
    out.CopyFrom(listener)
    logs = [access_log(config.access_log)] if config.access_log.enabled else []
    tracing = hcm_tracing(config.tracing) if config.tracing is not None else None
    chains = list(out.filter_chains)
    if out.HasField("default_filter_chain"):
        chains.append(out.default_filter_chain)
    for chain in chains:
        for network_filter in chain.filters:
            typed = network_filter.typed_config
            kind = typed.type_url.rsplit("/", 1)[-1]
            if kind == _HCM:
                hcm = hcm_pb2.HttpConnectionManager()
                typed.Unpack(hcm)
                hcm.access_log.extend(logs)
                if tracing is not None and not hcm.HasField("tracing"):
                    hcm.tracing.CopyFrom(tracing)
                typed.CopyFrom(pack(hcm))
            elif kind == _TCP and logs:
                proxy = tcp_proxy_pb2.TcpProxy()
                typed.Unpack(proxy)
                proxy.access_log.extend(logs)
                typed.CopyFrom(pack(proxy))
    return out
