"""Traffic rules: the core of Istio's VirtualService and DestinationRule.

Only what xdsd translates is modelled; sources report any other field by name instead of
dropping it. Durations are ``timedelta``; weights are relative (a destination gets
weight / sum of weights), as in Istio.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum

from xdsd.model.service import (
    DEFAULT_NAMESPACE,
    NO_ORIGIN,
    CertificateRef,
    FieldLines,
    Origin,
    ResourceKey,
)


class MatchKind(Enum):
    """How a StringMatch compares."""

    EXACT = "exact"
    PREFIX = "prefix"
    REGEX = "regex"


@dataclass(frozen=True, slots=True)
class StringMatch:
    """Istio's StringMatch: exactly one of exact, prefix, regex (RE2 syntax)."""

    kind: MatchKind
    value: str


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """A request header (or query parameter) condition: ``name`` (header names
    lower-cased) matches ``match``; ``match`` None means "is present" (Istio's empty
    StringMatch ``{}``)."""

    name: str
    match: StringMatch | None


@dataclass(frozen=True, slots=True)
class HTTPMatch:
    """One match block: all conditions must hold (AND). Blocks of a route are ORed.

    ``without_headers`` must all fail to match; ``ignore_uri_case`` applies to ``uri``;
    ``source_labels`` restrict the block to callers (nodes) whose labels include them, and
    ``gateways`` to those gateways (decided per node class, at translation); ``port`` to
    the service port the request arrived on (0 = any).
    """

    name: str = ""
    uri: StringMatch | None = None
    method: StringMatch | None = None
    headers: tuple[HeaderMatch, ...] = ()
    port: int = 0
    scheme: StringMatch | None = None
    authority: StringMatch | None = None
    query_params: tuple[HeaderMatch, ...] = ()
    without_headers: tuple[HeaderMatch, ...] = ()
    ignore_uri_case: bool = False
    source_labels: tuple[tuple[str, str], ...] = ()
    source_namespace: str = ""
    gateways: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Destination:
    """Where traffic goes: a host (resolved against services), an optional subset and
    port (0 = the service's only port)."""

    host: str
    subset: str = ""
    port: int = 0


@dataclass(frozen=True, slots=True)
class HeaderOperations:
    """Istio's Headers.HeaderOperations: ``set`` overwrites, ``add`` appends, ``remove``
    drops (names as written; pairs in file order)."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Headers:
    """Header changes on the request (to the upstream) and on the response (to the
    caller)."""

    request: HeaderOperations | None = None
    response: HeaderOperations | None = None


#: The destination host of a Gateway API backend that does not resolve (no such
#: service, or another namespace's without a ReferenceGrant): the Gateway API answers
#: its share of requests with 500. Translation routes it to a cluster that does not
#: exist, with 500 as the route's cluster-not-found code; the cross-checks let it be.
UNRESOLVED_BACKEND_HOST = "<unresolved-backend>"


@dataclass(frozen=True, slots=True)
class RouteDestination:
    """A weighted destination of an HTTP (or TCP/TLS) route, with header changes that apply
    only when it is chosen."""

    destination: Destination
    weight: int = 0
    headers: Headers | None = None


@dataclass(frozen=True, slots=True)
class Redirect:
    """Istio's HTTPRedirect. Empty strings and 0 keep the request's own value; ``code``
    defaults to 301. ``derive_port`` is "FROM_PROTOCOL_DEFAULT" or "FROM_REQUEST_PORT"
    (or "")."""

    uri: str = ""
    authority: str = ""
    port: int = 0
    derive_port: str = ""
    scheme: str = ""
    code: int = 301
    #: Replaces the matched prefix of the path instead of the whole path (the Gateway
    #: API's ``ReplacePrefixMatch``; Istio's HTTPRedirect cannot say it): "" = unused.
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class RegexRewrite:
    """Replace what ``match`` (RE2) matches in the path with ``rewrite`` (``\\1``
    references groups)."""

    match: str
    rewrite: str


@dataclass(frozen=True, slots=True)
class Rewrite:
    """Istio's HTTPRewrite: ``uri`` replaces the matched prefix (or the whole path for
    exact/regex matches); ``authority`` replaces Host; ``uri_regex`` rewrites by regex."""

    uri: str = ""
    authority: str = ""
    uri_regex: RegexRewrite | None = None


@dataclass(frozen=True, slots=True)
class DirectResponse:
    """Istio's HTTPDirectResponse: answer ``status`` with ``body`` (bytes) without an
    upstream."""

    status: int
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class FaultDelay:
    """Delay ``percentage`` % of requests by ``fixed_delay``."""

    fixed_delay: timedelta
    percentage: float = 100.0


#: gRPC status code names, in code order (a name's index is its code): what
#: ``FaultAbort.grpc_status`` may be.
GRPC_STATUS_NAMES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)


@dataclass(frozen=True, slots=True)
class FaultAbort:
    """Answer ``percentage`` % of requests with ``http_status`` (or the gRPC status
    ``grpc_status``, a code name such as "UNAVAILABLE") without an upstream."""

    http_status: int = 0
    grpc_status: str = ""
    percentage: float = 100.0


@dataclass(frozen=True, slots=True)
class Fault:
    """Istio's HTTPFaultInjection."""

    delay: FaultDelay | None = None
    abort: FaultAbort | None = None


@dataclass(frozen=True, slots=True)
class Mirror:
    """Copy ``percentage`` % of requests to ``destination`` (fire and forget)."""

    destination: Destination
    percentage: float = 100.0


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    """Istio's CorsPolicy. ``allow_credentials`` None leaves Envoy's default;
    ``unmatched_preflights`` is "FORWARD" or "IGNORE" (or "")."""

    allow_origins: tuple[StringMatch, ...] = ()
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: timedelta | None = None
    allow_credentials: bool | None = None
    unmatched_preflights: str = ""


@dataclass(frozen=True, slots=True)
class Retries:
    """Istio's HTTPRetry. ``attempts`` 0 disables retries. ``retry_ignore_previous_hosts``
    avoids hosts already tried when true, never when false; None (not written) takes
    Istio's default, which depends on the route (see ``routes.retry_policy``);
    ``retry_remote_localities`` lets retries
    go to other localities; ``backoff`` is the base interval between attempts (None:
    Envoy's 25 ms)."""

    attempts: int
    per_try_timeout: timedelta | None = None
    retry_on: str = ""
    retry_ignore_previous_hosts: bool | None = None
    retry_remote_localities: bool = False
    backoff: timedelta | None = None


@dataclass(frozen=True, slots=True)
class HTTPRoute:
    """One HTTP rule of a VirtualService: matches (ORed) and what to do: weighted
    destinations (``route``), or ``redirect``, or ``direct_response`` (exactly one of the
    three), with the optional filters around it."""

    name: str = ""
    match: tuple[HTTPMatch, ...] = ()
    route: tuple[RouteDestination, ...] = ()
    timeout: timedelta | None = None
    retries: Retries | None = None
    redirect: Redirect | None = None
    direct_response: DirectResponse | None = None
    rewrite: Rewrite | None = None
    fault: Fault | None = None
    mirrors: tuple[Mirror, ...] = ()
    cors_policy: CorsPolicy | None = None
    headers: Headers | None = None


@dataclass(frozen=True, slots=True)
class L4Match:
    """A TCP or TLS route condition (all must hold): the service ``port`` (0 = any),
    ``sni_hosts`` (TLS only; ``*.`` wildcards allowed), destination subnets (CIDRs), and the
    callers' ``source_labels`` / ``gateways`` as in HTTPMatch."""

    port: int = 0
    sni_hosts: tuple[str, ...] = ()
    destination_subnets: tuple[str, ...] = ()
    source_labels: tuple[tuple[str, str], ...] = ()
    source_namespace: str = ""
    gateways: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class L4Route:
    """One TCP or TLS rule: matches (ORed; a TLS rule needs at least one) and weighted
    destinations."""

    match: tuple[L4Match, ...] = ()
    route: tuple[RouteDestination, ...] = ()


@dataclass(frozen=True, slots=True)
class VirtualService:
    """Routing rules for a set of hosts; the first matching HTTP rule wins."""

    name: str
    namespace: str = DEFAULT_NAMESPACE
    hosts: tuple[str, ...] = ()
    gateways: tuple[str, ...] = ()
    http: tuple[HTTPRoute, ...] = ()
    tcp: tuple[L4Route, ...] = ()
    tls: tuple[L4Route, ...] = ()
    export_to: tuple[str, ...] = ()
    #: The one server (by name) of its gateways that serves it, an xdsd extension set
    #: only by the Gateway API's conversion (the listener its routes attached
    #: through); empty: every server whose hosts meet its own (Istio's binding).
    listener: str = ""
    origin: Origin = field(default=NO_ORIGIN, compare=False, repr=False)
    #: The lines of the fields the cross-checks report about (references, subsets).
    lines: FieldLines = field(default=(), compare=False, repr=False)
    #: The rule's identity (derived once, never compared nor passed).
    key: ResourceKey = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", ResourceKey("VirtualService", self.namespace, self.name))


class SimpleLB(Enum):
    """Istio's LoadBalancerSettings.SimpleLB."""

    UNSPECIFIED = "UNSPECIFIED"
    LEAST_REQUEST = "LEAST_REQUEST"
    ROUND_ROBIN = "ROUND_ROBIN"
    RANDOM = "RANDOM"
    PASSTHROUGH = "PASSTHROUGH"
    LEAST_CONN = "LEAST_CONN"


class HashKind(Enum):
    """What a consistent hash is computed from."""

    HEADER = "httpHeaderName"
    COOKIE = "httpCookie"
    SOURCE_IP = "useSourceIp"
    QUERY_PARAMETER = "httpQueryParameterName"


@dataclass(frozen=True, slots=True)
class ConsistentHash:
    """Istio's ConsistentHashLB: hash on ``kind`` (``name`` is the header, cookie or
    query parameter; a cookie with ``ttl`` is generated when absent, ``path`` its path).
    ``maglev`` selects Maglev instead of a ring hash; ``minimum_ring_size`` 0 = default."""

    kind: HashKind
    name: str = ""
    ttl: timedelta | None = None
    path: str = ""
    maglev: bool = False
    minimum_ring_size: int = 0
    table_size: int = 0


@dataclass(frozen=True, slots=True)
class LocalityWeights:
    """``from`` (a locality, ``*`` wildcards allowed) sends traffic to ``to``: localities
    with percentages summing to 100."""

    source: str
    to: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class LocalityFailover:
    """Traffic from ``source`` (a region) fails over to ``to`` (a region) when the local
    endpoints are unhealthy."""

    source: str
    to: str


@dataclass(frozen=True, slots=True)
class LocalityLbSetting:
    """Istio's LocalityLoadBalancerSetting (``distribute`` and ``failover`` exclude each
    other). ``enabled`` None leaves the mesh default (on)."""

    distribute: tuple[LocalityWeights, ...] = ()
    failover: tuple[LocalityFailover, ...] = ()
    failover_priority: tuple[str, ...] = ()
    enabled: bool | None = None


@dataclass(frozen=True, slots=True)
class LoadBalancer:
    """Load-balancer policy: ``simple`` or ``consistent_hash`` (not both), and locality
    weighting; ``warmup`` is the slow-start window for new endpoints."""

    simple: SimpleLB = SimpleLB.UNSPECIFIED
    consistent_hash: ConsistentHash | None = None
    locality: LocalityLbSetting | None = None
    warmup: timedelta | None = None


@dataclass(frozen=True, slots=True)
class TcpKeepalive:
    """Istio's ConnectionPoolSettings.TCPSettings.TcpKeepalive (0/None = OS default)."""

    probes: int = 0
    time: timedelta | None = None
    interval: timedelta | None = None


@dataclass(frozen=True, slots=True)
class TcpPool:
    """Istio's ConnectionPoolSettings.TCPSettings (0/None = Envoy's default)."""

    max_connections: int = 0
    connect_timeout: timedelta | None = None
    keepalive: TcpKeepalive | None = None
    max_connection_duration: timedelta | None = None
    idle_timeout: timedelta | None = None


@dataclass(frozen=True, slots=True)
class HttpPool:
    """Istio's ConnectionPoolSettings.HTTPSettings (0/None = Envoy's default).
    ``h2_upgrade_policy`` is "DEFAULT", "DO_NOT_UPGRADE" or "UPGRADE"."""

    http1_max_pending_requests: int = 0
    http2_max_requests: int = 0
    max_requests_per_connection: int = 0
    max_retries: int = 0
    idle_timeout: timedelta | None = None
    h2_upgrade_policy: str = ""
    use_client_protocol: bool = False
    max_concurrent_streams: int = 0


@dataclass(frozen=True, slots=True)
class ConnectionPool:
    """Istio's ConnectionPoolSettings: limits that become Envoy circuit breakers and
    timeouts."""

    tcp: TcpPool | None = None
    http: HttpPool | None = None


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """Istio's OutlierDetection (0/None = Istio's default)."""

    consecutive_5xx_errors: int | None = None
    consecutive_gateway_errors: int | None = None
    consecutive_local_origin_failures: int | None = None
    split_external_local_origin_errors: bool = False
    interval: timedelta | None = None
    base_ejection_time: timedelta | None = None
    max_ejection_percent: int | None = None
    min_health_percent: int | None = None


class TLSMode(Enum):
    """Istio's ClientTLSSettings.TLSmode."""

    DISABLE = "DISABLE"
    SIMPLE = "SIMPLE"
    MUTUAL = "MUTUAL"
    ISTIO_MUTUAL = "ISTIO_MUTUAL"


@dataclass(frozen=True, slots=True)
class ClientTLS:
    """Istio's ClientTLSSettings with certificate files. Sources resolve the paths
    (relative ones against the config directory) and check that the files exist, so the
    model holds absolute paths, which the proxy reads as they are."""

    mode: TLSMode = TLSMode.DISABLE
    client_certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""
    subject_alt_names: tuple[str, ...] = ()
    sni: str = ""
    insecure_skip_verify: bool = False
    #: Where each certificate file is named (for errors about the file; not compared).
    refs: tuple[CertificateRef, ...] = field(default=(), compare=False, repr=False)
    #: Where ``mode`` is written, as (field path, origin): for errors about ISTIO_MUTUAL
    #: without mesh mutual TLS (not compared).
    mode_at: tuple[str, Origin] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class PortTrafficPolicy:
    """A policy for one service port; it replaces the enclosing policy's four fields
    (none is inherited), as in Istio."""

    port: int
    load_balancer: LoadBalancer | None = None
    connection_pool: ConnectionPool | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLS | None = None


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    """Per-destination policy: a subset's field, when set, overrides the rule's; a
    port-level entry replaces all four fields of the level it is in, as in Istio."""

    load_balancer: LoadBalancer | None = None
    connection_pool: ConnectionPool | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLS | None = None
    port_level_settings: tuple[PortTrafficPolicy, ...] = ()

    def for_port(self, port: int) -> TrafficPolicy:
        """This policy at ``port`` (no port-level settings left). As in Istio, a
        port-level entry for ``port`` is not merged with the top level: it replaces all
        four fields, a field it leaves unset being unset (Envoy's default), not the top
        level's."""
        found = next((p for p in self.port_level_settings if p.port == port), None)
        if found is None:
            if not self.port_level_settings:
                return self
            return TrafficPolicy(
                self.load_balancer, self.connection_pool, self.outlier_detection, self.tls
            )
        return TrafficPolicy(
            found.load_balancer, found.connection_pool, found.outlier_detection, found.tls
        )


def merge_policies(
    outer: TrafficPolicy | None, inner: TrafficPolicy | None, port: int
) -> TrafficPolicy | None:
    """Istio's merge for a subset on a port: start from the rule's policy (``outer``) at
    ``port`` (see ``TrafficPolicy.for_port``); each field the subset's policy (``inner``)
    sets at its top level replaces the rule's; then a port-level entry of the subset for
    ``port`` replaces all four fields (unset ones become unset). None when neither sets
    anything."""
    if outer is None and inner is None:
        return None
    base = outer.for_port(port) if outer is not None else TrafficPolicy()
    if inner is None:
        return base
    found = next((p for p in inner.port_level_settings if p.port == port), None)
    if found is not None:
        return TrafficPolicy(
            found.load_balancer, found.connection_pool, found.outlier_detection, found.tls
        )
    return TrafficPolicy(
        inner.load_balancer or base.load_balancer,
        inner.connection_pool or base.connection_pool,
        inner.outlier_detection or base.outlier_detection,
        inner.tls or base.tls,
    )


@dataclass(frozen=True, slots=True)
class Subset:
    """A named group of a service's endpoints, chosen by labels."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()
    traffic_policy: TrafficPolicy | None = None


@dataclass(frozen=True, slots=True)
class DestinationRule:
    """Policies for traffic to one host, and its subsets."""

    name: str
    host: str
    namespace: str = DEFAULT_NAMESPACE
    traffic_policy: TrafficPolicy | None = None
    subsets: tuple[Subset, ...] = ()
    export_to: tuple[str, ...] = ()
    origin: Origin = field(default=NO_ORIGIN, compare=False, repr=False)
    #: The lines of the fields the cross-checks report about (references, subsets).
    lines: FieldLines = field(default=(), compare=False, repr=False)
    #: The rule's identity (derived once, never compared nor passed).
    key: ResourceKey = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", ResourceKey("DestinationRule", self.namespace, self.name))

    def subset(self, name: str) -> Subset | None:
        """The subset with this name, if defined."""
        for s in self.subsets:
            if s.name == name:
                return s
        return None

    def client_tls(self) -> list[ClientTLS]:
        """Every TLS setting written in the rule (top level, subsets, and their port
        settings), in the rule's order."""
        out: list[ClientTLS] = []
        for policy in (self.traffic_policy, *(s.traffic_policy for s in self.subsets)):
            if policy is None:
                continue
            if policy.tls is not None:
                out.append(policy.tls)
            out.extend(p.tls for p in policy.port_level_settings if p.tls is not None)
        return out

    def policy_for(self, subset: str, port: int = 0) -> TrafficPolicy | None:
        """The effective policy for traffic to ``subset`` ("" = the whole service) on
        ``port``: Istio's merge (``merge_policies``) of the rule's policy and the
        subset's."""
        s = self.subset(subset) if subset else None
        return merge_policies(
            self.traffic_policy, s.traffic_policy if s is not None else None, port
        )
