"""Mesh-wide proxy defaults: what every proxy gets whatever its class (Istio's MeshConfig).

These come from the ``[mesh]`` section of xdsd's settings, not from the config directory:
they are the operator's choices for the whole mesh (access logs, a Prometheus stats
listener, tracing, the default outbound traffic policy, mutual TLS between proxies).
Frozen values, so a translation can key what it builds by them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum

from xdsd.model.networking import OutboundPolicy
from xdsd.model.service import NO_ORIGIN, Origin

#: Envoy command operators of the default TEXT access log line (one request or
#: connection per line: when, what, how it ended, sizes, timing, who and where).
DEFAULT_TEXT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% "
    '%CONNECTION_TERMINATION_DETAILS% "%UPSTREAM_TRANSPORT_FAILURE_REASON%" '
    "%BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "
    '"%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" '
    '"%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% '
    "%DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% "
    "%ROUTE_NAME%\n"
)

#: The default JSON access log record: field name → Envoy command operator.
DEFAULT_JSON_FIELDS: tuple[tuple[str, str], ...] = (
    ("start_time", "%START_TIME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    ("connection_termination_details", "%CONNECTION_TERMINATION_DETAILS%"),
    ("upstream_transport_failure_reason", "%UPSTREAM_TRANSPORT_FAILURE_REASON%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    ("upstream_service_time", "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%"),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    ("route_name", "%ROUTE_NAME%"),
)


class LogEncoding(Enum):
    """Istio's ``accessLogEncoding``."""

    TEXT = "TEXT"
    JSON = "JSON"


class TracingProvider(Enum):
    """Where spans go: a Zipkin collector (HTTP JSON v2) or an OpenTelemetry one (OTLP
    over gRPC)."""

    ZIPKIN = "zipkin"
    OPENTELEMETRY = "opentelemetry"


@dataclass(frozen=True, slots=True)
class AccessLog:
    """A file access log on every HTTP connection manager and TCP proxy of every proxy
    (Istio's ``accessLogFile``, ``accessLogEncoding``, ``accessLogFormat``). ``format``
    is the TEXT line (Envoy command operators; empty: ``DEFAULT_TEXT_FORMAT``);
    ``fields`` the JSON record (empty: ``DEFAULT_JSON_FIELDS``)."""

    enabled: bool = False
    path: str = "/dev/stdout"
    encoding: LogEncoding = LogEncoding.TEXT
    format: str = ""
    fields: tuple[tuple[str, str], ...] = ()

    @property
    def text_format(self) -> str:
        """The TEXT line Envoy writes (ends with a newline)."""
        line = self.format or DEFAULT_TEXT_FORMAT
        return line if line.endswith("\n") else line + "\n"

    @property
    def json_fields(self) -> tuple[tuple[str, str], ...]:
        """The JSON record Envoy writes, field by field."""
        return self.fields or DEFAULT_JSON_FIELDS


@dataclass(frozen=True, slots=True)
class PrometheusStats:
    """A listener on every sidecar and gateway, on its ``instance_ip:port``, answering
    ``path`` (only) with Envoy's statistics in Prometheus text (Istio's 15090): it
    forwards to Envoy's own admin server through the bootstrap's ``prometheus_stats``
    cluster."""

    enabled: bool = False
    port: int = 15090
    path: str = "/stats/prometheus"


@dataclass(frozen=True, slots=True)
class Tracing:
    """Spans of every HTTP request through every proxy, sent to the collector at
    ``host:port`` (a ``tracing_collector`` cluster); ``sampling`` is the percentage of
    requests traced when the caller did not decide (Istio's default is 1%).
    ``zipkin_path`` is where a Zipkin collector takes spans."""

    provider: TracingProvider
    host: str
    port: int
    sampling: float = 1.0
    zipkin_path: str = "/api/v2/spans"


class MTLSMode(Enum):
    """What a sidecar's inbound listeners accept (Istio's mesh-wide PeerAuthentication
    mode): DISABLE (plaintext only: mesh mTLS is off), PERMISSIVE (mutual TLS or
    plaintext, told apart by the first bytes) or STRICT (mutual TLS only). Under
    PERMISSIVE and STRICT every sidecar and gateway also originates mutual TLS to the
    mesh's own services (Istio's auto mTLS)."""

    DISABLE = "DISABLE"
    PERMISSIVE = "PERMISSIVE"
    STRICT = "STRICT"


#: The placeholders a mesh certificate path may hold.
MTLS_PLACEHOLDERS = ("namespace", "service", "instance_ip")
#: The SDS names of a proxy's own certificate and of the mesh's root CA (Istio's names, so
#: ``istioctl``-trained eyes find them where they expect).
WORKLOAD_SECRET = "default"
ROOT_CA_SECRET = "ROOTCA"
#: The ALPN a sidecar offers when it speaks mesh mutual TLS on a TCP or TLS port (Istio's
#: marker): a PERMISSIVE inbound listener tells it from an application's own TLS by it.
MESH_TCP_ALPN = "istio"
#: The error on TLS mode ISTIO_MUTUAL while mesh mutual TLS is off.
ISTIO_MUTUAL_WITHOUT_MESH_TLS = (
    "ISTIO_MUTUAL uses the mesh's certificates, and mesh mutual TLS is off: set "
    "[mesh.mtls] in xdsd's settings, or use MUTUAL with certificate files"
)


@dataclass(frozen=True, slots=True)
class MeshTLS:
    """Mutual TLS between the mesh's proxies, from certificate files (``[mesh.mtls]``).

    ``certificate`` and ``private_key`` are absolute path templates naming a proxy's own
    files: ``{namespace}`` and ``{service}`` (a certificate per service) and
    ``{instance_ip}`` (per workload: the node's inbound address) are replaced by the
    node's. ``ca`` is the absolute path of the root CA bundle every proxy trusts. A
    service's identity, which its certificate must carry as a URI SAN and which its
    callers check, is ``spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE``.
    ``trust_domain_aliases`` (Istio's ``trustDomainAliases``) are other trust domains an
    AuthorizationPolicy principal of the mesh's may be written in, or come from: a
    principal in any of them matches the same service in all of them. ``origin`` is
    where the table was read (for errors about its files; not compared).
    """

    mode: MTLSMode = MTLSMode.DISABLE
    ca: str = ""
    certificate: str = ""
    private_key: str = ""
    trust_domain: str = "cluster.local"
    trust_domain_aliases: tuple[str, ...] = ()
    #: True when xdsd's own CA issues every proxy's certificate (``[mesh.ca]``): the
    #: ``default`` secret is then each connected proxy's own, added to its snapshot by
    #: the server, and ``ROOTCA`` is ``bundle`` (the PEM of every trusted authority,
    #: set by the daemon once it has loaded the CA) instead of the ``ca`` file.
    issued: bool = False
    bundle: bytes = field(default=b"", repr=False)
    origin: Origin = field(default=NO_ORIGIN, compare=False)

    @property
    def enabled(self) -> bool:
        """True when proxies speak mutual TLS to each other."""
        return self.mode is not MTLSMode.DISABLE

    def identity(self, namespace: str, service: str) -> str:
        """The SPIFFE id of ``service`` in ``namespace``."""
        return f"spiffe://{self.trust_domain}/ns/{namespace}/sa/{service}"

    def workload_files(self, namespace: str, service: str, instance_ip: str) -> tuple[str, str]:
        """The certificate and key paths of the proxy of ``service`` at ``instance_ip``."""
        values = {"namespace": namespace, "service": service, "instance_ip": instance_ip}
        return self.certificate.format(**values), self.private_key.format(**values)

    @property
    def per_workload(self) -> bool:
        """True when the paths name each workload by its ``{instance_ip}``."""
        return "{instance_ip}" in self.certificate + self.private_key


NO_MESH_TLS = MeshTLS()


#: The workload key types ``[mesh.ca] key_type`` may name (the first is the default).
WORKLOAD_KEY_TYPES = ("ecdsa-p256", "rsa-2048")


@dataclass(frozen=True, slots=True)
class CAAuthority:
    """One certificate authority of ``[mesh.ca]`` (``[[mesh.ca.authorities]]``): the
    operator's CA or intermediate (``cert`` and ``key``, absolute paths), or, with both
    empty, one xdsd generates at first start and keeps in the state directory under
    ``name``."""

    name: str
    cert: str = ""
    key: str = ""


@dataclass(frozen=True, slots=True)
class MeshCA:
    """xdsd as the mesh's certificate authority (``[mesh.ca]``).

    ``authorities`` are all trusted (the bundle holds each one's certificate); ``signing``
    names the one that issues (default: the first), so a CA is rotated in three settings
    changes: add the new one, make it the signing one, remove the old one. Workload
    certificates live ``workload_ttl_seconds`` and are renewed at ``renew_fraction`` of
    their life. Tokens (``xdsd token``) are signed with ``token_key`` (an Ed25519 private
    key file; empty: one generated in ``state_dir``) and refused when their id is in
    ``revoked_tokens``. ``state_dir`` (absolute) holds what xdsd generates, created 0700.
    """

    state_dir: str
    authorities: tuple[CAAuthority, ...] = ()
    signing: str = ""
    workload_ttl_seconds: float = 86400.0
    renew_fraction: float = 0.5
    key_type: str = "ecdsa-p256"
    token_key: str = ""
    revoked_tokens: tuple[str, ...] = ()
    origin: Origin = field(default=NO_ORIGIN, compare=False)

    @property
    def signing_authority(self) -> CAAuthority:
        """The authority that issues (``signing``, else the first)."""
        for authority in self.authorities:
            if authority.name == self.signing:
                return authority
        return self.authorities[0] if self.authorities else CAAuthority("default")


class ExtAuthzKind(Enum):
    """How an external authorization server is asked: Istio's ``envoyExtAuthzHttp`` (an
    HTTP request per check) or ``envoyExtAuthzGrpc`` (Envoy's gRPC ``Authorization``
    service)."""

    HTTP = "envoy_ext_authz_http"
    GRPC = "envoy_ext_authz_grpc"


@dataclass(frozen=True, slots=True)
class ExtensionProvider:
    """An external authorization server a CUSTOM AuthorizationPolicy names (Istio's
    ``meshConfig.extensionProviders``, from ``[[mesh.extension_providers]]``).

    ``service`` is a host of the mesh (a Service or a ServiceEntry host) and ``port`` its
    port. ``timeout_seconds`` 0 is Envoy's default; ``fail_open`` lets requests through
    when the server cannot be asked; ``status_on_error`` is the status otherwise (0:
    403). HTTP only: ``path_prefix`` and the header lists. ``include_request_body``
    (``max_request_bytes`` > 0) sends the body, up to that many bytes.
    """

    name: str
    kind: ExtAuthzKind
    service: str
    port: int
    timeout_seconds: float = 0.0
    fail_open: bool = False
    status_on_error: int = 0
    path_prefix: str = ""
    include_request_headers_in_check: tuple[str, ...] = ()
    include_additional_headers_in_check: tuple[tuple[str, str], ...] = ()
    headers_to_upstream_on_allow: tuple[str, ...] = ()
    headers_to_downstream_on_deny: tuple[str, ...] = ()
    headers_to_downstream_on_allow: tuple[str, ...] = ()
    max_request_bytes: int = 0
    allow_partial_message: bool = False
    pack_as_bytes: bool = False
    origin: Origin = field(default=NO_ORIGIN, compare=False)


#: The default block virtual addresses are allocated from: a /16 inside 127.0.0.0/8,
#: which Linux delivers to the loopback interface with no set-up.
DEFAULT_VIRTUAL_ADDRESSES = "127.240.0.0/16"
#: The default port of a sidecar's DNS listener (on its outbound address).
DEFAULT_DNS_PORT = 15053


@dataclass(frozen=True, slots=True)
class MeshDNS:
    """``[mesh.dns]``: virtual addresses per service and the sidecars' DNS listeners.

    ``virtual_addresses`` is the IPv4 block addresses are allocated from (its size
    decides the allocation; a node may name another block of at least that size, e.g.
    when several sidecars share a host); ``virtual_addresses_v6`` an optional IPv6 block
    (AAAA answers; empty: AAAA answers are empty). ``upstream`` are the resolvers
    (``IP`` or ``IP:PORT``) that names outside the mesh are forwarded to (empty: the
    proxy host's own, or what the node's bootstrap names). ``ttl`` is the TTL of the
    answers for mesh names. ``enabled`` false gives no sidecar virtual-address listeners
    or DNS listener, whatever its bootstrap asks. ``origin`` is where the settings file
    sets ``virtual_addresses`` (its line; the table's when it keeps the default): what a
    problem of the allocation (a block too small for the mesh) names.
    """

    enabled: bool = True
    virtual_addresses: str = DEFAULT_VIRTUAL_ADDRESSES
    virtual_addresses_v6: str = ""
    upstream: tuple[str, ...] = ()
    ttl: timedelta = timedelta(seconds=30)
    origin: Origin = field(default=NO_ORIGIN, compare=False)


@dataclass(frozen=True, slots=True)
class MeshConfig:
    """Every mesh-wide proxy default. The defaults change nothing: no access log, no stats
    listener, no tracing, ALLOW_ANY (Istio's default outbound policy) and no mutual TLS."""

    access_log: AccessLog = field(default_factory=AccessLog)
    prometheus: PrometheusStats = field(default_factory=PrometheusStats)
    tracing: Tracing | None = None
    outbound_traffic_policy: OutboundPolicy = OutboundPolicy.ALLOW_ANY
    mtls: MeshTLS = NO_MESH_TLS
    extension_providers: tuple[ExtensionProvider, ...] = ()
    #: xdsd's own CA (``[mesh.ca]``); None: certificates come from ``mtls``'s files.
    ca: MeshCA | None = None
    #: Virtual addresses and the sidecars' DNS (``[mesh.dns]``).
    dns: MeshDNS = field(default_factory=MeshDNS)

    def extension_provider(self, name: str) -> ExtensionProvider | None:
        """The extension provider called ``name`` (None when the settings declare none)."""
        for provider in self.extension_providers:
            if provider.name == name:
                return provider
        return None

    @property
    def decorates(self) -> bool:
        """True when listeners get something added (an access log or tracing)."""
        return self.access_log.enabled or self.tracing is not None


#: The mesh defaults when the settings say nothing.
DEFAULT_MESH_CONFIG = MeshConfig()
