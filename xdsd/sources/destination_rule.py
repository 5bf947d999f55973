"""DestinationRule specs → model objects (Istio's networking.istio.io API).

Reads the fields xdsd implements, records a problem for every wrong value, and lists the
fields it does not implement so that they are reported by name (``Fields.finish``).

Certificate files of ``tls`` (caCertificates, clientCertificate, privateKey) are resolved
here: a relative path is relative to the config directory, and the file must exist when
the rule is loaded (a missing file is an error naming the field), so the model holds
absolute paths that the proxy reads as they are.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from datetime import timedelta

from xdsd.errors import Severity
from xdsd.located import Fields, format_path
from xdsd.model import (
    CertificateRef,
    ClientTLS,
    ConnectionPool,
    ConsistentHash,
    DestinationRule,
    HashKind,
    HttpPool,
    LoadBalancer,
    LocalityFailover,
    LocalityLbSetting,
    LocalityWeights,
    Origin,
    OutlierDetection,
    PortTrafficPolicy,
    Subset,
    TcpKeepalive,
    TcpPool,
    TLSMode,
    TrafficPolicy,
)
from xdsd.model.rules import SimpleLB

# Fields of Istio's API that xdsd does not translate yet: named in errors, never dropped.
DR_UNSUPPORTED = ("exportTo", "workloadSelector")
POLICY_UNSUPPORTED = ("tunnel", "proxyProtocol", "retryBudget")
LB_UNSUPPORTED = ("warmupDurationSecs", "warmup")
OUTLIER_UNSUPPORTED = ("consecutiveErrors", "outlierDetectionHttpErrorCodes")
HTTP_POOL_UNSUPPORTED = ("http2KeepAlive",)
COOKIE_UNSUPPORTED = ("attributes",)
TLS_UNSUPPORTED = ("caCrl",)
H2_UPGRADE_POLICIES = ("DEFAULT", "DO_NOT_UPGRADE", "UPGRADE")
TOPOLOGY_LABELS = (
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
)
_UINT32 = 2**32 - 1
_INT32 = 2**31 - 1


def parse_destination_rule(
    spec: Fields, name: str, namespace: str, origin: Origin, *, config_dir: str = ""
) -> DestinationRule:
    """An Istio DestinationRule. Relative certificate paths are resolved against
    ``config_dir`` (the current directory when empty)."""
    host = spec.string("host", required=True)
    policy = _parse_policy(spec.obj("trafficPolicy"), config_dir)
    subsets = spec.parse_list("subsets", lambda f: _parse_subset(f, config_dir))
    seen: set[str] = set()
    for i, subset in enumerate(subsets):
        if subset.name in seen:
            spec.report.add(("subsets", i, "name"), f"subset {subset.name!r} is defined twice")
        seen.add(subset.name)
    spec.finish(DR_UNSUPPORTED)
    rule = DestinationRule(name, host, namespace, policy, subsets, origin=origin)
    _warn_failover_without_outlier(spec, rule)
    return rule


def _warn_failover_without_outlier(spec: Fields, rule: DestinationRule) -> None:
    """Warn (as Istio's validation does) where locality failover is configured for traffic
    that has no outlier detection: nothing would ever be ejected, so failover never acts
    (and xdsd writes no priorities for it)."""
    places: list[tuple[str, tuple[str | int, ...]]] = [("", ("trafficPolicy",))]
    places += [(s.name, ("subsets", i, "trafficPolicy")) for i, s in enumerate(rule.subsets)]
    ports = {0}
    for policy in (rule.traffic_policy, *(s.traffic_policy for s in rule.subsets)):
        if policy is not None:
            ports.update(x.port for x in policy.port_level_settings)
    for subset, path in places:
        for port in sorted(ports):
            merged = rule.policy_for(subset, port)
            lb = merged.load_balancer if merged is not None else None
            setting = lb.locality if lb is not None else None
            if (
                merged is not None
                and setting is not None
                and (setting.failover or setting.failover_priority)
                and merged.outlier_detection is None
            ):
                spec.report.add(
                    path,
                    "localityLbSetting failover needs outlierDetection to act (nothing is "
                    "ever ejected without it): failover is not configured"
                    + (f" for port {port}" if port else ""),
                    Severity.WARNING,
                )
                break


def _parse_subset(f: Fields, config_dir: str) -> Subset:
    name = f.string("name", required=True)
    labels = f.labels("labels")
    policy = _parse_policy(f.obj("trafficPolicy"), config_dir)
    f.finish()
    return Subset(name, labels, policy)


def _parse_policy(f: Fields | None, config_dir: str) -> TrafficPolicy | None:
    if f is None:
        return None
    lb = _parse_lb(f.obj("loadBalancer"))
    pool = _parse_pool(f.obj("connectionPool"))
    outlier = _parse_outlier(f.obj("outlierDetection"))
    tls = _parse_tls(f.obj("tls"), config_dir)
    ports: list[PortTrafficPolicy] = []
    seen: set[int] = set()
    for item in f.objects("portLevelSettings"):
        parsed = _parse_port_policy(item, config_dir)
        if parsed is None:
            continue
        if parsed.port in seen:
            item.error("port", f"port {parsed.port} has settings twice")
            continue
        seen.add(parsed.port)
        ports.append(parsed)
    f.finish(POLICY_UNSUPPORTED)
    return TrafficPolicy(lb, pool, outlier, tls, tuple(ports))


def _parse_port_policy(f: Fields, config_dir: str) -> PortTrafficPolicy | None:
    port_fields = f.obj("port", required=True)
    number = 0
    if port_fields is not None:
        number = port_fields.port("number", required=True)
        port_fields.finish()
    lb = _parse_lb(f.obj("loadBalancer"))
    pool = _parse_pool(f.obj("connectionPool"))
    outlier = _parse_outlier(f.obj("outlierDetection"))
    tls = _parse_tls(f.obj("tls"), config_dir)
    f.finish()
    return PortTrafficPolicy(number, lb, pool, outlier, tls) if number else None


# -- load balancer --------------------------------------------------------------------


def _parse_lb(f: Fields | None) -> LoadBalancer | None:
    if f is None:
        return None
    simple = f.enum("simple", SimpleLB, SimpleLB.UNSPECIFIED)
    if simple is SimpleLB.PASSTHROUGH:
        f.error(
            "simple",
            "PASSTHROUGH needs original-destination capture (iptables), "
            "which xdsd's VM sidecars do not have",
        )
    consistent = _parse_consistent_hash(f.obj("consistentHash"))
    if consistent is not None and f.has("simple"):
        f.error("consistentHash", "simple and consistentHash exclude each other: set one")
    locality = _parse_locality(f.obj("localityLbSetting"))
    f.finish(LB_UNSUPPORTED)
    return LoadBalancer(simple, consistent, locality)


def _parse_consistent_hash(f: Fields | None) -> ConsistentHash | None:
    if f is None:
        return None
    keys: list[ConsistentHash] = []
    header = f.string("httpHeaderName")
    if header:
        keys.append(ConsistentHash(HashKind.HEADER, header.lower()))
    query = f.string("httpQueryParameterName")
    if query:
        keys.append(ConsistentHash(HashKind.QUERY_PARAMETER, query))
    if _boolean(f, "useSourceIp"):
        keys.append(ConsistentHash(HashKind.SOURCE_IP))
    cookie = f.obj("httpCookie")
    if cookie is not None:
        cookie_name = cookie.string("name", required=True)
        path = cookie.string("path")
        ttl = cookie.duration("ttl")
        cookie.finish(COOKIE_UNSUPPORTED)
        keys.append(ConsistentHash(HashKind.COOKIE, cookie_name, ttl, path))
    ring = f.obj("ringHash")
    maglev = f.obj("maglev")
    ring_size = f.integer("minimumRingSize", minimum=0)
    table_size = 0
    if ring is not None:
        ring_size = ring.integer("minimumRingSize", minimum=0) or ring_size
        ring.finish()
    if maglev is not None:
        table_size = maglev.integer("tableSize", minimum=0)
        maglev.finish()
        if ring is not None:
            f.error("maglev", "ringHash and maglev exclude each other: set one")
    f.finish()
    if len(keys) != 1:
        f.error(
            None,
            "set exactly one of httpHeaderName, httpCookie, useSourceIp (true), "
            f"httpQueryParameterName (got {len(keys)})",
        )
        return None
    key = keys[0]
    return ConsistentHash(
        key.kind,
        key.name,
        key.ttl,
        key.path,
        maglev=maglev is not None,
        minimum_ring_size=ring_size,
        table_size=table_size,
    )


def _parse_locality(f: Fields | None) -> LocalityLbSetting | None:
    if f is None:
        return None
    distribute: list[LocalityWeights] = []
    for item in f.objects("distribute"):
        source = item.string("from", required=True)
        targets: list[tuple[str, int]] = []
        to = item.obj("to", required=True)
        if to is not None:
            for locality in to.data:
                weight = to.integer(locality, minimum=1, maximum=100)
                targets.append((str(locality), weight))
            total = sum(w for _, w in targets)
            if targets and total != 100:
                item.error("to", f"weights must sum to 100 (got {total})")
        item.finish()
        distribute.append(LocalityWeights(source, tuple(targets)))
    failover: list[LocalityFailover] = []
    for item in f.objects("failover"):
        source = item.string("from", required=True)
        target = item.string("to", required=True)
        for key, region in (("from", source), ("to", target)):
            if "/" in region or "*" in region:
                item.error(key, f"must be a region, without '/' or '*' (got {region!r})")
        if source and source == target:
            item.error("to", f"must differ from 'from' (both {source!r})")
        item.finish()
        failover.append(LocalityFailover(source, target))
    priority = f.strings("failoverPriority")
    if failover:
        for i, label in enumerate(priority):
            if label.split("=", 1)[0] in TOPOLOGY_LABELS:
                f.report.add(
                    (*f.path, "failoverPriority", i),
                    f"{label!r} cannot be combined with failover (failover already orders "
                    "by region, zone and subzone)",
                )
    enabled = _boolean(f, "enabled") if f.has("enabled") else None
    if distribute and failover:
        f.error("distribute", "distribute and failover exclude each other")
    f.finish()
    return LocalityLbSetting(tuple(distribute), tuple(failover), priority, enabled)


# -- connection pool and outlier detection --------------------------------------------


def _parse_pool(f: Fields | None) -> ConnectionPool | None:
    if f is None:
        return None
    tcp = None
    t = f.obj("tcp")
    if t is not None:
        keepalive = None
        k = t.obj("tcpKeepalive")
        if k is not None:
            keepalive = TcpKeepalive(
                k.integer("probes", minimum=0, maximum=_UINT32),
                _positive(k, "time"),
                _positive(k, "interval"),
            )
            k.finish()
        tcp = TcpPool(
            t.integer("maxConnections", minimum=0, maximum=_INT32),
            _positive(t, "connectTimeout"),
            keepalive,
            _positive(t, "maxConnectionDuration"),
            t.duration("idleTimeout"),
        )
        t.finish()
    http = None
    h = f.obj("http")
    if h is not None:
        policy = h.string("h2UpgradePolicy").upper()
        if policy and policy not in H2_UPGRADE_POLICIES:
            h.error("h2UpgradePolicy", f"must be one of {', '.join(H2_UPGRADE_POLICIES)}")
            policy = ""
        http = HttpPool(
            http1_max_pending_requests=h.integer(
                "http1MaxPendingRequests", minimum=0, maximum=_INT32
            ),
            http2_max_requests=h.integer("http2MaxRequests", minimum=0, maximum=_INT32),
            max_requests_per_connection=h.integer(
                "maxRequestsPerConnection", minimum=0, maximum=_INT32
            ),
            max_retries=h.integer("maxRetries", minimum=0, maximum=_INT32),
            idle_timeout=h.duration("idleTimeout"),
            h2_upgrade_policy=policy,
            use_client_protocol=_boolean(h, "useClientProtocol"),
            max_concurrent_streams=h.integer("maxConcurrentStreams", minimum=0, maximum=_INT32),
        )
        h.finish(HTTP_POOL_UNSUPPORTED)
    f.finish()
    return ConnectionPool(tcp, http)


def _parse_outlier(f: Fields | None) -> OutlierDetection | None:
    if f is None:
        return None

    def count(key: str) -> int | None:
        return f.integer(key, minimum=0, maximum=_UINT32) if f.has(key) else None

    def percent(key: str) -> int | None:
        return f.integer(key, minimum=0, maximum=100) if f.has(key) else None

    out = OutlierDetection(
        consecutive_5xx_errors=count("consecutive5xxErrors"),
        consecutive_gateway_errors=count("consecutiveGatewayErrors"),
        consecutive_local_origin_failures=count("consecutiveLocalOriginFailures"),
        split_external_local_origin_errors=_boolean(f, "splitExternalLocalOriginErrors"),
        interval=_positive(f, "interval"),
        base_ejection_time=_positive(f, "baseEjectionTime"),
        max_ejection_percent=percent("maxEjectionPercent"),
        min_health_percent=percent("minHealthPercent"),
    )
    if out.consecutive_local_origin_failures and not out.split_external_local_origin_errors:
        f.error(
            "consecutiveLocalOriginFailures",
            "applies only with splitExternalLocalOriginErrors: true",
        )
    f.finish(
        OUTLIER_UNSUPPORTED,
        note="use consecutive5xxErrors / consecutiveGatewayErrors",
    )
    return out


# -- TLS --------------------------------------------------------------------------------


def _parse_tls(f: Fields | None, config_dir: str) -> ClientTLS | None:
    if f is None:
        return None
    mode = f.enum("mode", TLSMode, TLSMode.DISABLE)
    mode_at = None
    if mode is TLSMode.ISTIO_MUTUAL:
        mode_at = istio_mutual_at(f, ("caCertificates", "clientCertificate", "privateKey"))
    if f.has("credentialName"):
        f.read.add("credentialName")
        f.error(
            "credentialName",
            "names a Kubernetes secret, which xdsd cannot read: give the certificate "
            "files (caCertificates, clientCertificate, privateKey) instead",
        )
    ca = certificate_file(f, "caCertificates", config_dir)
    cert = certificate_file(f, "clientCertificate", config_dir)
    key = certificate_file(f, "privateKey", config_dir)
    sans = f.strings("subjectAltNames")
    sni = f.string("sni")
    skip = _boolean(f, "insecureSkipVerify")
    if mode is TLSMode.MUTUAL:
        for name, value in (("clientCertificate", cert), ("privateKey", key)):
            if not value and not f.has(name):
                f.error(name, "is required with mode MUTUAL")
    elif mode in (TLSMode.SIMPLE, TLSMode.DISABLE):
        for name in ("clientCertificate", "privateKey"):
            if f.has(name):
                f.error(name, f"applies only with mode MUTUAL (mode is {mode.value})")
    if mode in (TLSMode.SIMPLE, TLSMode.MUTUAL) and not skip and not f.has("caCertificates"):
        f.error(
            "caCertificates",
            f"is required with mode {mode.value} (xdsd does not know where the proxy's "
            "system CA bundle is): give a CA file, or set insecureSkipVerify: true",
        )
    f.finish(TLS_UNSUPPORTED)
    refs = certificate_refs(
        f, (("caCertificates", ca), ("clientCertificate", cert), ("privateKey", key))
    )
    return ClientTLS(mode, cert, key, ca, sans, sni, skip, refs, mode_at)


def certificate_file(f: Fields, key: str, config_dir: str) -> str:
    """The absolute path of a certificate file field ("" when absent); a file that does
    not exist (or is not a regular file) is an error naming the field."""
    value = f.string(key)
    if not value:
        return ""
    path = os.path.abspath(os.path.join(config_dir, value))
    where = "" if os.path.isabs(value) else f" (relative to the config directory: {path})"
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        regular = False
    except OSError as e:  # it may exist: say why it cannot be looked at
        f.error(key, f"cannot stat file {value!r}{where}: {e.strerror or e}")
        return path
    if not regular:
        f.error(key, f"file {value!r} does not exist{where}")
    return path


def certificate_refs(f: Fields, files: Iterable[tuple[str, str]]) -> tuple[CertificateRef, ...]:
    """Where each (field, absolute path) of ``files`` with a path is named: the field's
    path and line, for errors about reading the file (``sources.certificates``)."""
    return tuple(CertificateRef(path, *field_at(f, key)) for key, path in files if path)


def istio_mutual_at(f: Fields, files: tuple[str, ...]) -> tuple[str, Origin]:
    """Where TLS settings ``f`` say ``mode: ISTIO_MUTUAL`` (the loader refuses it while
    mesh mutual TLS is off), after an error on each of the certificate file fields
    ``files`` given: that mode uses the mesh's certificates."""
    for name in files:
        if f.has(name):
            f.error(
                name,
                "does not apply with mode ISTIO_MUTUAL, which uses the mesh's "
                "certificates ([mesh.mtls] in the settings)",
            )
    return field_at(f, "mode")


def field_at(f: Fields, key: str) -> tuple[str, Origin]:
    """The full path of field ``key`` of ``f`` and where it is written (file and line),
    for errors reported after parsing."""
    at = (*f.path, key)
    doc = f.report.doc
    return format_path(at), Origin(doc.path, doc.line_of((*f.report.base, *at)))


# -- scalars -----------------------------------------------------------------------------


def _boolean(f: Fields, key: str) -> bool:
    """A boolean field (absent: False); anything else is an error."""
    f.read.add(key)
    value = f.data.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        f.error(key, f"must be true or false (got {value!r})")
        return False
    return value


def _positive(f: Fields, key: str) -> timedelta | None:
    """A duration that must be longer than zero when given."""
    value = f.duration(key)
    if value is not None and value <= timedelta(0):
        f.error(key, "must be longer than 0s")
        return None
    return value
