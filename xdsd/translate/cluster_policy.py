"""A DestinationRule's traffic policy applied to an outbound Envoy ``Cluster``.

How this works: ``apply_traffic_policy`` takes the effective policy of one cluster (the
rule's and the subset's policies merged at the cluster's port, ``policy_for``) and writes
what Istio's cluster builder writes for it:

- connectionPool → ``circuit_breakers`` (every outbound cluster gets Istio's defaults, all
  limits at 2^32-1, so that Envoy's own low defaults — 3 parallel retries — never bite),
  ``connect_timeout``, ``upstream_connection_options.tcp_keepalive``, and for HTTP ports
  the upstream ``HttpProtocolOptions`` (idle timeout, requests per connection, connection
  duration, HTTP/2 upgrade and stream limit, the client's protocol);
- outlierDetection → ``outlier_detection`` (success-rate ejection off; a consecutive-error
  limit of 0 disables that check) and ``healthy_panic_threshold`` = minHealthPercent
  (0 unless given: Envoy's panic mode would send traffic to ejected hosts);
- loadBalancer.consistentHash → ``RING_HASH`` (minimum ring size 1024 unless given) or
  ``MAGLEV``; the hash key itself is a route's ``hash_policy`` (``hash_policy.py``);
- localityLbSetting → ``locality_weighted_lb_config`` when weights are distributed, or when
  failover is configured and outlier detection lets it act; the per-caller priorities and
  weights are in the ClusterLoadAssignment (``locality.py``);
- tls → an ``envoy.transport_sockets.tls`` transport socket with an ``UpstreamTlsContext``
  naming the certificate files' SDS secrets (``secrets``; the files are read by the
  sources, their bytes served as ``Secret`` resources).

Proxyless gRPC reads certificates only through certificate providers, so a TLS policy for
a gRPC flavor cluster is a TranslationError naming the rule, never a plaintext cluster.
"""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.v3 import http_pb2, range_pb2

from xdsd.errors import Problem, TranslationError
from xdsd.model import (
    ClientTLS,
    ConnectionPool,
    DestinationRule,
    HealthCheck,
    LoadBalancer,
    OutlierDetection,
    Port,
    TLSMode,
    TrafficPolicy,
)
from xdsd.model.mesh_config import MESH_TCP_ALPN
from xdsd.resources import pack
from xdsd.translate.config_sources import HTTP_PROTOCOL_OPTIONS_KEY, duration
from xdsd.translate.node import ConfigSourceKind
from xdsd.translate.secrets import add_certificate, add_mesh_identity, add_validation

#: Istio's default connect timeout.
CONNECT_TIMEOUT = timedelta(seconds=10)
#: Istio's circuit-breaker defaults: every limit at its maximum.
UNLIMITED = 2**32 - 1
#: Envoy's (and Istio's) default minimum ring size for a ring hash.
DEFAULT_RING_SIZE = 1024
TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"


def set_tls_socket(socket: Any, context: Any) -> None:
    """Make ``socket`` (a cluster's or filter chain's ``transport_socket``) Envoy's TLS
    transport socket with ``context`` (an Upstream or DownstreamTlsContext)."""
    socket.name = TLS_TRANSPORT_SOCKET
    socket.typed_config.CopyFrom(pack(context))


def apply_traffic_policy(
    cluster: Any,
    port: Port,
    policy: TrafficPolicy | None,
    *,
    grpc: bool = False,
    rule: DestinationRule | None = None,
    source: ConfigSourceKind = ConfigSourceKind.ADS,
) -> None:
    """Write ``policy`` (already merged for this cluster's port and subset) into
    ``cluster``, whose type, load assignment and simple ``lb_policy`` are already set.

    TLS certificates are fetched by SDS (``secrets``), the way ``source`` says.
    Raises TranslationError (naming ``rule``'s file) for a TLS policy on a proxyless gRPC
    (``grpc``) cluster.
    """
    pool = policy.connection_pool if policy is not None else None
    cluster.connect_timeout.CopyFrom(duration(_connect_timeout(pool)))
    _set_circuit_breakers(cluster, pool)
    _set_keepalive(cluster, pool)
    if port.protocol.is_http:
        options = _http_options(port, pool)
        if options is not None:
            cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS_KEY].CopyFrom(
                pack(options)
            )
    if policy is None:
        return
    outlier = policy.outlier_detection
    if outlier is not None:
        _set_outlier_detection(cluster, outlier)
    lb = policy.load_balancer
    if lb is not None:
        _set_hash_lb(cluster, lb, grpc=grpc)
        if needs_locality_weighting(policy):
            cluster.common_lb_config.locality_weighted_lb_config.SetInParent()
    tls = policy.tls
    if tls is not None and tls.mode is not TLSMode.DISABLE:
        if grpc and tls.mode is TLSMode.ISTIO_MUTUAL:
            _set_grpc_mesh_tls(cluster, tls)
        elif grpc:
            raise TranslationError([_grpc_tls_problem(rule)])
        else:
            _set_tls(cluster, port, pool, tls, source)


def uses_sds(policy: TrafficPolicy | None) -> bool:
    """True when a cluster with ``policy`` (merged for its port) names SDS secrets."""
    tls = policy.tls if policy is not None else None
    return tls is not None and tls.mode is not TLSMode.DISABLE


def apply_health_check(cluster: Any, port: Port, check: HealthCheck) -> None:
    """Write an xdsd Service's active ``check`` (its ``host`` already filled in) as the
    cluster's one ``health_checks`` entry: HTTP GET (over HTTP/2 on HTTP2 and GRPC
    ports) or TCP connect, with its interval, timeout and thresholds; the no-traffic
    interval is the same interval, so a cluster nobody called yet is checked as often.
    Also sets ``healthy_panic_threshold`` to 0, as Istio does for outlier detection:
    Envoy's default (50 %) would send traffic to failing endpoints once half of them
    fail. A DestinationRule's ``minHealthPercent``, applied after, overrides it."""
    hc = cluster.health_checks.add()
    hc.timeout.CopyFrom(duration(check.timeout))
    hc.interval.CopyFrom(duration(check.interval))
    hc.no_traffic_interval.CopyFrom(duration(check.interval))
    hc.unhealthy_threshold.value = check.unhealthy_threshold
    hc.healthy_threshold.value = check.healthy_threshold
    if check.is_http:
        http = hc.http_health_check
        http.path = check.path
        http.host = check.host
        for start, end in check.expected_statuses:
            http.expected_statuses.append(range_pb2.Int64Range(start=start, end=end))
        if port.protocol.is_http2:
            http.codec_client_type = http_pb2.HTTP2
    else:
        hc.tcp_health_check.SetInParent()
    cluster.common_lb_config.healthy_panic_threshold.value = 0.0


def needs_locality_weighting(policy: TrafficPolicy | None) -> bool:
    """True when Envoy must weigh localities by the assignment's weights (Istio's rule:
    weights are distributed, or failover/failoverPriority is set and outlier detection
    lets failover act)."""
    if policy is None or policy.load_balancer is None:
        return False
    setting = policy.load_balancer.locality
    if setting is None or setting.enabled is False:
        return False
    if setting.distribute:
        return True
    failover = bool(setting.failover or setting.failover_priority)
    return failover and policy.outlier_detection is not None


# -- connection pool ------------------------------------------------------------------


def _connect_timeout(pool: ConnectionPool | None) -> timedelta:
    if pool is not None and pool.tcp is not None and pool.tcp.connect_timeout is not None:
        return pool.tcp.connect_timeout
    return CONNECT_TIMEOUT


def _set_circuit_breakers(cluster: Any, pool: ConnectionPool | None) -> None:
    limits = {
        "max_connections": UNLIMITED,
        "max_pending_requests": UNLIMITED,
        "max_requests": UNLIMITED,
        "max_retries": UNLIMITED,
    }
    if pool is not None and pool.tcp is not None and pool.tcp.max_connections:
        limits["max_connections"] = pool.tcp.max_connections
    if pool is not None and pool.http is not None:
        http = pool.http
        if http.http1_max_pending_requests:
            limits["max_pending_requests"] = http.http1_max_pending_requests
        if http.http2_max_requests:
            limits["max_requests"] = http.http2_max_requests
        if http.max_retries:
            limits["max_retries"] = http.max_retries
    threshold = cluster.circuit_breakers.thresholds.add()
    for name, value in limits.items():
        getattr(threshold, name).value = value
    threshold.track_remaining = True


def _set_keepalive(cluster: Any, pool: ConnectionPool | None) -> None:
    keepalive = pool.tcp.keepalive if pool is not None and pool.tcp is not None else None
    if keepalive is None:
        return
    target = cluster.upstream_connection_options.tcp_keepalive
    target.SetInParent()
    if keepalive.probes:
        target.keepalive_probes.value = keepalive.probes
    if keepalive.time is not None:
        target.keepalive_time.value = max(1, int(keepalive.time.total_seconds()))
    if keepalive.interval is not None:
        target.keepalive_interval.value = max(1, int(keepalive.interval.total_seconds()))


def _http_options(port: Port, pool: ConnectionPool | None) -> Any | None:
    """The upstream ``HttpProtocolOptions`` of an HTTP port's cluster (None when Envoy's
    defaults — HTTP/1.1, no limits — are what the policy asks for)."""
    http = pool.http if pool is not None else None
    tcp = pool.tcp if pool is not None else None
    options = http_protocol_options_pb2.HttpProtocolOptions()
    use_client = http is not None and http.use_client_protocol
    http2 = _speaks_http2(port, pool)
    if use_client:
        config = options.use_downstream_protocol_config
        config.http_protocol_options.SetInParent()
        config.http2_protocol_options.SetInParent()
        h2 = config.http2_protocol_options
    elif http2:
        h2 = options.explicit_http_config.http2_protocol_options
        h2.SetInParent()
    else:
        options.explicit_http_config.http_protocol_options.SetInParent()
        h2 = None
    common = options.common_http_protocol_options
    idle = http.idle_timeout if http is not None else None
    if idle is None and tcp is not None:
        idle = tcp.idle_timeout
    if idle is not None:
        common.idle_timeout.CopyFrom(duration(idle))
    if http is not None and http.max_requests_per_connection:
        common.max_requests_per_connection.value = http.max_requests_per_connection
    if tcp is not None and tcp.max_connection_duration is not None:
        common.max_connection_duration.CopyFrom(duration(tcp.max_connection_duration))
    if h2 is not None and http is not None and http.max_concurrent_streams:
        h2.max_concurrent_streams.value = http.max_concurrent_streams
    if not options.HasField("common_http_protocol_options"):
        options.ClearField("common_http_protocol_options")
    if not http2 and not use_client and not options.HasField("common_http_protocol_options"):
        return None
    return options


# -- outlier detection and load balancing -----------------------------------------------


def _set_outlier_detection(cluster: Any, outlier: OutlierDetection) -> None:
    """Istio's translation: only what the rule sets is written (Envoy's defaults are
    Istio's: 5 consecutive 5xx, 10 s interval, 30 s base ejection, 10 % at most)."""
    out = cluster.outlier_detection
    out.SetInParent()
    out.enforcing_success_rate.value = 0
    if outlier.consecutive_5xx_errors is not None:
        out.consecutive_5xx.value = outlier.consecutive_5xx_errors
        out.enforcing_consecutive_5xx.value = 100 if outlier.consecutive_5xx_errors else 0
    if outlier.consecutive_gateway_errors is not None:
        out.consecutive_gateway_failure.value = outlier.consecutive_gateway_errors
        enforcing = 100 if outlier.consecutive_gateway_errors else 0
        out.enforcing_consecutive_gateway_failure.value = enforcing
    if outlier.interval is not None:
        out.interval.CopyFrom(duration(outlier.interval))
    if outlier.base_ejection_time is not None:
        out.base_ejection_time.CopyFrom(duration(outlier.base_ejection_time))
    if outlier.max_ejection_percent:
        out.max_ejection_percent.value = outlier.max_ejection_percent
    if outlier.split_external_local_origin_errors:
        out.split_external_local_origin_errors = True
        if outlier.consecutive_local_origin_failures:
            out.consecutive_local_origin_failure.value = outlier.consecutive_local_origin_failures
            out.enforcing_consecutive_local_origin_failure.value = 100
        out.enforcing_local_origin_success_rate.value = 0
    panic = cluster.common_lb_config.healthy_panic_threshold
    panic.value = float(outlier.min_health_percent or 0)


def _set_hash_lb(cluster: Any, lb: LoadBalancer, *, grpc: bool) -> None:
    """Ring hash or Maglev for a consistent hash (proxyless gRPC has only the ring hash:
    Maglev becomes a ring hash there)."""
    hashing = lb.consistent_hash
    if hashing is None:
        return
    cluster.ClearField("load_balancing_policy")
    if hashing.maglev and not grpc:
        cluster.lb_policy = cluster_pb2.Cluster.MAGLEV
        if hashing.table_size:
            cluster.maglev_lb_config.table_size.value = hashing.table_size
        return
    cluster.lb_policy = cluster_pb2.Cluster.RING_HASH
    size = hashing.minimum_ring_size or DEFAULT_RING_SIZE
    cluster.ring_hash_lb_config.minimum_ring_size.value = size


# -- TLS ----------------------------------------------------------------------------------


def _set_tls(
    cluster: Any,
    port: Port,
    pool: ConnectionPool | None,
    tls: ClientTLS,
    source: ConfigSourceKind,
) -> None:
    context = tls_pb2.UpstreamTlsContext(sni=tls.sni)
    common = context.common_tls_context
    if tls.mode is TLSMode.ISTIO_MUTUAL:
        # The mesh's certificates: the proxy's own (each class is sent its own secret of
        # that name) and the mesh CA, checking the callee's SPIFFE identity.
        add_mesh_identity(common, [san_matcher(name) for name in tls.subject_alt_names], source)
        if _speaks_http2(port, pool):
            common.alpn_protocols.append("h2")
        elif not port.protocol.is_http:
            common.alpn_protocols.append(MESH_TCP_ALPN)
        set_tls_socket(cluster.transport_socket, context)
        return
    if tls.mode is TLSMode.MUTUAL:
        add_certificate(common, tls.client_certificate, tls.private_key, source)
    if tls.insecure_skip_verify or not tls.ca_certificates:
        common.validation_context.SetInParent()
    else:
        matchers = [san_matcher(name) for name in tls.subject_alt_names]
        add_validation(common, tls.ca_certificates, matchers, source)
    if _speaks_http2(port, pool):
        common.alpn_protocols.append("h2")
    set_tls_socket(cluster.transport_socket, context)
    if not tls.sni and port.protocol.is_http:
        # As Istio: the SNI is the request's host, and without explicit SANs the
        # certificate is checked against it.
        verify = not tls.insecure_skip_verify and not tls.subject_alt_names
        _set_auto_sni(cluster, verify=verify)


#: The certificate provider instance (of a proxyless gRPC client's bootstrap) that holds
#: the mesh's certificates: the client's own and the mesh CA (``xdsd bootstrap --format
#: grpc --settings``).
MESH_CERTIFICATE_PROVIDER = "mesh"


def _set_grpc_mesh_tls(cluster: Any, tls: ClientTLS) -> None:
    """Mesh mutual TLS as proxyless gRPC takes it (gRFC A29): the client's certificate
    and the CA from the certificate provider ``MESH_CERTIFICATE_PROVIDER`` of its
    bootstrap, the callee's identity checked by ``match_subject_alt_names`` (the field
    gRPC reads)."""
    context = tls_pb2.UpstreamTlsContext(sni=tls.sni)
    common = context.common_tls_context
    common.tls_certificate_provider_instance.instance_name = MESH_CERTIFICATE_PROVIDER
    validation = common.validation_context
    validation.ca_certificate_provider_instance.instance_name = MESH_CERTIFICATE_PROVIDER
    for name in tls.subject_alt_names:
        validation.match_subject_alt_names.add(exact=name)
    set_tls_socket(cluster.transport_socket, context)


def _speaks_http2(port: Port, pool: ConnectionPool | None) -> bool:
    """True when the cluster's upstream connections are HTTP/2: an HTTP2 or GRPC port, or
    h2UpgradePolicy UPGRADE without useClientProtocol (Istio's ``shouldH2Upgrade``)."""
    if port.protocol.is_http2:
        return True
    http = pool.http if pool is not None else None
    if http is None or http.use_client_protocol:
        return False
    return http.h2_upgrade_policy == "UPGRADE" and port.protocol.is_http


def _set_auto_sni(cluster: Any, *, verify: bool) -> None:
    key = HTTP_PROTOCOL_OPTIONS_KEY
    options = http_protocol_options_pb2.HttpProtocolOptions()
    if key in cluster.typed_extension_protocol_options:
        cluster.typed_extension_protocol_options[key].Unpack(options)
    else:
        options.explicit_http_config.http_protocol_options.SetInParent()
    options.upstream_http_protocol_options.auto_sni = True
    options.upstream_http_protocol_options.auto_san_validation = verify
    cluster.typed_extension_protocol_options[key].CopyFrom(pack(options))


def san_matcher(name: str) -> Any:
    """An exact SAN matcher: URI for ``scheme://…`` names (SPIFFE ids), IP for address
    literals, DNS otherwise."""
    matcher = common_pb2.SubjectAltNameMatcher()
    if "://" in name:
        matcher.san_type = common_pb2.SubjectAltNameMatcher.URI
    else:
        try:
            ipaddress.ip_address(name)
            matcher.san_type = common_pb2.SubjectAltNameMatcher.IP_ADDRESS
        except ValueError:
            matcher.san_type = common_pb2.SubjectAltNameMatcher.DNS
    matcher.matcher.exact = name
    return matcher


def _grpc_tls_problem(rule: DestinationRule | None) -> Problem:
    path, line = (rule.origin.path, rule.origin.line) if rule is not None else ("<none>", 0)
    return Problem(
        path,
        line,
        "trafficPolicy.tls",
        "proxyless gRPC clients read certificates only through certificate providers: "
        "they get mesh mutual TLS (ISTIO_MUTUAL) from the one xdsd bootstrap writes, and "
        "TLS origination from certificate files is "
        "for Envoy sidecars",
    )
