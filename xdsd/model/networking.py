"""The rest of Istio's networking kinds: ServiceEntry, WorkloadEntry, Gateway, Sidecar and
EnvoyFilter.

As in ``rules``, only what xdsd translates is modelled and sources refuse other fields by
name. A ServiceEntry is kept as written (its hosts, ports and endpoints); the loader turns
it into ``Service`` objects, one per host, so translation sees one kind of service.
(``Location`` lives in ``service`` with the Service it describes; it is importable from
here too.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from xdsd.model.service import (
    DEFAULT_NAMESPACE,
    NO_ORIGIN,
    CertificateRef,
    FieldLines,
    Locality,
    Origin,
    Protocol,
    ResourceKey,
)
from xdsd.model.service import Location as Location  # re-exported

#: No locality (Locality is frozen, so one shared instance serves every default).
_NOWHERE = Locality()


class EntryResolution(Enum):
    """Istio's ServiceEntry.Resolution (NONE needs original-destination capture)."""

    NONE = "NONE"
    STATIC = "STATIC"
    DNS = "DNS"
    DNS_ROUND_ROBIN = "DNS_ROUND_ROBIN"


@dataclass(frozen=True, slots=True)
class EntryPort:
    """A ServiceEntry, Gateway or Sidecar port: ``number`` is what callers use,
    ``target_port`` where endpoints listen (0 = the same). ``protocol`` is how xdsd treats
    it; ``protocol_name`` the name as written, upper-cased (``HTTPS`` is ``TLS`` to a
    caller, but on a Gateway server it means "terminate TLS, then route HTTP"; ``MONGO``,
    ``MYSQL``, ``REDIS`` are ``TCP``)."""

    number: int
    protocol: Protocol
    name: str = ""
    target_port: int = 0
    protocol_name: str = ""


@dataclass(frozen=True, slots=True)
class WorkloadEndpoint:
    """Istio's WorkloadEntry spec: one workload's address, labels and per-port-name
    ports (``ports`` maps a port name to the port the workload listens on)."""

    address: str
    labels: tuple[tuple[str, str], ...] = ()
    ports: tuple[tuple[str, int], ...] = ()
    locality: Locality = _NOWHERE
    weight: int = 1
    network: str = ""
    service_account: str = ""
    #: False for a registered workload its group's probe judged UNHEALTHY (its
    #: endpoints are sent with ``health_status: UNHEALTHY``); files always say True.
    healthy: bool = True


@dataclass(frozen=True, slots=True)
class ServiceEntry:
    """Istio's ServiceEntry: hosts (each becomes a service), ports, resolution,
    endpoints given inline or selected among WorkloadEntries by ``workload_selector``."""

    name: str
    namespace: str = DEFAULT_NAMESPACE
    hosts: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()
    ports: tuple[EntryPort, ...] = ()
    location: Location = Location.MESH_EXTERNAL
    resolution: EntryResolution = EntryResolution.NONE
    endpoints: tuple[WorkloadEndpoint, ...] = ()
    workload_selector: tuple[tuple[str, str], ...] = ()
    export_to: tuple[str, ...] = ()
    subject_alt_names: tuple[str, ...] = ()
    origin: Origin = field(default=NO_ORIGIN, compare=False, repr=False)
    #: The lines of the fields the cross-checks report about.
    lines: FieldLines = field(default=(), compare=False, repr=False)
    key: ResourceKey = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", ResourceKey("ServiceEntry", self.namespace, self.name))


@dataclass(frozen=True, slots=True)
class WorkloadEntry:
    """Istio's WorkloadEntry: a workload (VM) that ServiceEntries select by labels."""

    name: str
    namespace: str = DEFAULT_NAMESPACE
    endpoint: WorkloadEndpoint = WorkloadEndpoint("")
    origin: Origin = field(default=NO_ORIGIN, compare=False, repr=False)
    #: For a registered workload (not a file's): the WorkloadGroup it registered into,
    #: and the xdsd Service of its namespace it is an endpoint of (the group's ``app``
    #: label; see ``docs/rules.md``, "WorkloadGroup").
    group: str = ""
    service: str = ""
    key: ResourceKey = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", ResourceKey("WorkloadEntry", self.namespace, self.name))


class ProbeScheme(Enum):
    """How an HTTP probe connects."""

    HTTP = "HTTP"
    HTTPS = "HTTPS"


@dataclass(frozen=True, slots=True)
class HttpProbe:
    """A probe's ``httpGet``: GET ``path`` on ``port`` of the workload (of ``host``
    instead, when given: Kubernetes' meaning), over ``scheme``, with ``headers``; healthy
    on a status from 200 to 399."""

    port: int
    path: str = "/"
    host: str = ""
    scheme: ProbeScheme = ProbeScheme.HTTP
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class TcpProbe:
    """A probe's ``tcpSocket``: healthy when a TCP connection to ``port`` of the
    workload opens."""

    port: int


@dataclass(frozen=True, slots=True)
class ReadinessProbe:
    """Istio's ReadinessProbe of a WorkloadGroup (Kubernetes' timing defaults): one of
    ``http_get`` and ``tcp_socket``; the first check ``initial_delay`` seconds after
    registration, then every ``period``, each given ``timeout``; ``success_threshold``
    successes in a row make a workload healthy, ``failure_threshold`` failures in a row
    unhealthy."""

    http_get: HttpProbe | None = None
    tcp_socket: TcpProbe | None = None
    initial_delay_seconds: int = 0
    timeout_seconds: int = 1
    period_seconds: int = 10
    success_threshold: int = 1
    failure_threshold: int = 3


@dataclass(frozen=True, slots=True)
class WorkloadGroup:
    """Istio's WorkloadGroup: what every workload that registers into it gets. ``labels``
    and ``annotations`` are its ``metadata`` (for the entries); ``template`` the entries'
    spec (no address: each registered workload brings its own); ``probe`` how their
    health is judged (None: not probed)."""

    name: str
    namespace: str = DEFAULT_NAMESPACE
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    template: WorkloadEndpoint = WorkloadEndpoint("")
    probe: ReadinessProbe | None = None
    origin: Origin = field(default=NO_ORIGIN, compare=False, repr=False)
    key: ResourceKey = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", ResourceKey("WorkloadGroup", self.namespace, self.name))

    @property
    def entry_labels(self) -> tuple[tuple[str, str], ...]:
        """The labels every entry of the group carries: ``metadata.labels`` with
        ``template.labels`` over them, sorted by key."""
        return tuple(sorted({**dict(self.labels), **dict(self.template.labels)}.items()))

    @property
    def service(self) -> str:
        """The service its workloads serve: the ``app`` entry label ("" without one)."""
        return dict(self.entry_labels).get("app", "")


class ServerTLSMode(Enum):
    """Istio's ServerTLSSettings.TLSmode."""

    PASSTHROUGH = "PASSTHROUGH"
    SIMPLE = "SIMPLE"
    MUTUAL = "MUTUAL"
    AUTO_PASSTHROUGH = "AUTO_PASSTHROUGH"
    ISTIO_MUTUAL = "ISTIO_MUTUAL"
    OPTIONAL_MUTUAL = "OPTIONAL_MUTUAL"


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """Istio's ServerTLSSettings with certificate files (paths as written; relative paths
    are relative to the config directory). ``https_redirect`` alone (no mode) is allowed on
    a plain HTTP server."""

    mode: ServerTLSMode | None = None
    https_redirect: bool = False
    server_certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""
    subject_alt_names: tuple[str, ...] = ()
    min_protocol_version: str = ""
    max_protocol_version: str = ""
    cipher_suites: tuple[str, ...] = ()
    #: Where each certificate file is named (for errors about the file; not compared).
    refs: tuple[CertificateRef, ...] = field(default=(), compare=False, repr=False)
    #: Where ``mode`` is written, as (field path, origin): for errors about ISTIO_MUTUAL
    #: without mesh mutual TLS (not compared).
    mode_at: tuple[str, Origin] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Server:
    """One server of a Gateway: a port, the hosts it admits (``ns/host`` or ``host``,
    ``*`` wildcards), TLS settings, and an optional bind address."""

    port: EntryPort
    hosts: tuple[str, ...] = ()
    tls: ServerTLS | None = None
    bind: str = ""
    name: str = ""
    #: A UDP server's backends (port protocol ``UDP``): (canonical host, UDP port,
    #: weight) each; a datagram session goes to one of them in proportion to its weight.
    #: An xdsd extension, set only by the Gateway API's conversion (a UDP listener and
    #: its UDPRoute; Istio's Gateway has no UDP); empty: the server forwards nothing and
    #: gets no listener.
    datagrams_to: tuple[tuple[str, int, int], ...] = ()
    #: Listener isolation, an xdsd extension set only by the Gateway API's conversion
    #: (each HTTP or HTTPS listener a server): the server serves only the
    #: VirtualServices bound to it by name (``VirtualService.listener``) or to no
    #: server; a name of its that the hosts of a more specific isolated server on the
    #: same port cover is left to that server; and its hosts get a virtual host even
    #: with no route (404), so a less specific server never answers for them.
    listener_isolation: bool = False


@dataclass(frozen=True, slots=True)
class Gateway:
    """Istio's Gateway: servers exposed by the gateway nodes whose labels include
    ``selector``."""

    name: str
    namespace: str = DEFAULT_NAMESPACE
    selector: tuple[tuple[str, str], ...] = ()
    servers: tuple[Server, ...] = ()
    origin: Origin = field(default=NO_ORIGIN, compare=False, repr=False)
    key: ResourceKey = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", ResourceKey("Gateway", self.namespace, self.name))


#: Server protocols whose servers merge into one plain HTTP connection manager.
HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "GRPC", "GRPC-WEB"})
#: The server TLS modes that terminate TLS on the gateway.
TERMINATING_MODES = (
    ServerTLSMode.SIMPLE,
    ServerTLSMode.MUTUAL,
    ServerTLSMode.OPTIONAL_MUTUAL,
    ServerTLSMode.ISTIO_MUTUAL,
)


def server_kind(server: Server) -> str:
    """How a server is served: ``http`` (plain, merged), ``https`` (TLS terminated, then
    routes), ``tls`` (TLS terminated or passed through, then TCP), ``tcp`` or ``udp``."""
    protocol = server.port.protocol_name
    if protocol in HTTP_PROTOCOLS:
        return "http"
    if server.port.protocol is Protocol.UDP:
        return "udp"
    tls = server.tls
    if protocol == "HTTPS" and tls is not None and tls.mode in TERMINATING_MODES:
        return "https"
    if protocol in ("HTTPS", "TLS"):
        return "tls"
    return "tcp"


def sni_hosts(server: Server) -> tuple[str, ...]:
    """The SNI names a TLS server's filter chain matches: its hosts without namespace,
    sorted, each once; none (any name) when one is ``*``."""
    names = sorted({h.rpartition("/")[2].lower() for h in server.hosts})
    return () if "*" in names else tuple(names)


@dataclass(frozen=True, slots=True)
class SharingClash:
    """Why the server at ``index`` cannot share a listener with the one at ``other``
    (indexes into what ``sharing_clashes`` was given): ``message`` says it; ``host``
    is the SNI name both claim ("" when their protocols cannot share the port)."""

    index: int
    other: int
    message: str
    host: str = ""


def sharing_clashes(servers: tuple[Server, ...]) -> tuple[SharingClash, ...]:
    """The servers of one bind and port (UDP servers apart from the others: they are
    another socket) that cannot share its listener, each once, with the server it
    clashes with. The rule the gateway translation enforces and the Gateway API's
    listener conflicts follow: either every server is plain HTTP, or every server
    carries TLS with distinct SNI hosts (``*`` for none), or there is a single TCP
    server, or a single UDP server. The first server sets the port's kind: a server
    of another kind clashes with it; a server whose SNI host an earlier one holds
    clashes with that one. Pure."""
    if not servers:
        return ()
    first_kind = server_kind(servers[0])
    seen: dict[str, int] = {}
    out: list[SharingClash] = []
    for i, server in enumerate(servers):
        kind = server_kind(server)
        number = server.port.number
        if (kind == "http") != (first_kind == "http"):
            message = f"plain HTTP and TLS servers cannot share port {number}"
            out.append(SharingClash(i, 0, message))
        elif "tcp" in (kind, first_kind) and i:
            out.append(SharingClash(i, 0, f"a TCP server cannot share port {number}"))
        elif kind == "udp" and i:
            out.append(SharingClash(i, 0, f"a UDP server cannot share UDP port {number}"))
        elif kind != "http":
            for name in sni_hosts(server) or ("*",):
                owner = seen.setdefault(name, i)
                if owner != i:
                    message = f"SNI host {name!r} is served on port {number} already"
                    out.append(SharingClash(i, owner, message, name))
                    break
    return tuple(out)


#: The gateway name that binds a VirtualService (or a match block) to sidecars.
MESH_GATEWAY_NAME = "mesh"


def gateway_key(reference: str, namespace: str) -> ResourceKey | None:
    """The Gateway a VirtualService written in ``namespace`` names by ``reference`` (an
    entry of its ``gateways`` or of a match block's): ``ns/name``; ``name`` (in the rule's
    namespace); Istio's legacy ``name.ns.svc.cluster.local`` form (``name.ns…``). None for
    ``mesh``, which names the sidecars."""
    if reference == MESH_GATEWAY_NAME:
        return None
    ns, sep, name = reference.partition("/")
    if sep:
        return ResourceKey("Gateway", ns, name)
    if "." in reference:
        name, _, rest = reference.partition(".")
        return ResourceKey("Gateway", rest.split(".", 1)[0], name)
    return ResourceKey("Gateway", namespace, reference)


@dataclass(frozen=True, slots=True)
class EgressListener:
    """Istio's IstioEgressListener: the hosts (``ns/host``, ``*`` wildcards, ``./host`` =
    the Sidecar's namespace) reachable through it; with ``port`` it is an explicit listener
    on that port (and ``bind`` address) instead of the defaults."""

    hosts: tuple[str, ...]
    port: EntryPort | None = None
    bind: str = ""


@dataclass(frozen=True, slots=True)
class IngressListener:
    """Istio's IstioIngressListener: inbound ``port`` forwarded to ``default_endpoint``
    (``127.0.0.1:PORT``)."""

    port: EntryPort
    default_endpoint: str = ""
    bind: str = ""


class OutboundPolicy(Enum):
    """Istio's OutboundTrafficPolicy.Mode."""

    REGISTRY_ONLY = "REGISTRY_ONLY"
    ALLOW_ANY = "ALLOW_ANY"


@dataclass(frozen=True, slots=True)
class Sidecar:
    """Istio's Sidecar: scopes what the selected nodes (all of the namespace when
    ``workload_selector`` is empty) may reach, and how they listen."""

    name: str
    namespace: str = DEFAULT_NAMESPACE
    workload_selector: tuple[tuple[str, str], ...] = ()
    egress: tuple[EgressListener, ...] = ()
    ingress: tuple[IngressListener, ...] = ()
    outbound_policy: OutboundPolicy | None = None
    origin: Origin = field(default=NO_ORIGIN, compare=False, repr=False)
    #: The lines of the fields the cross-checks report about.
    lines: FieldLines = field(default=(), compare=False, repr=False)
    key: ResourceKey = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", ResourceKey("Sidecar", self.namespace, self.name))


class PatchContext(Enum):
    """Istio's EnvoyFilter.PatchContext."""

    ANY = "ANY"
    SIDECAR_INBOUND = "SIDECAR_INBOUND"
    SIDECAR_OUTBOUND = "SIDECAR_OUTBOUND"
    GATEWAY = "GATEWAY"


class ApplyTo(Enum):
    """Istio's EnvoyFilter.ApplyTo (the ones xdsd implements)."""

    LISTENER = "LISTENER"
    FILTER_CHAIN = "FILTER_CHAIN"
    NETWORK_FILTER = "NETWORK_FILTER"
    HTTP_FILTER = "HTTP_FILTER"
    ROUTE_CONFIGURATION = "ROUTE_CONFIGURATION"
    VIRTUAL_HOST = "VIRTUAL_HOST"
    HTTP_ROUTE = "HTTP_ROUTE"
    CLUSTER = "CLUSTER"


class PatchOperation(Enum):
    """Istio's EnvoyFilter.Patch.Operation."""

    MERGE = "MERGE"
    ADD = "ADD"
    REMOVE = "REMOVE"
    INSERT_BEFORE = "INSERT_BEFORE"
    INSERT_AFTER = "INSERT_AFTER"
    INSERT_FIRST = "INSERT_FIRST"
    REPLACE = "REPLACE"


@dataclass(frozen=True, slots=True)
class PatchMatch:
    """Where a patch applies (every set field must match). Listener side: ``port_number``,
    ``listener_name``, ``filter_chain_name``, ``filter_name``, ``sub_filter_name``;
    route side: ``port_number``, ``route_config_name``, ``vhost_name``, ``route_name``;
    cluster side: ``port_number``, ``service``, ``subset``, ``cluster_name``. ``kind``
    says which of the three (``listener``, ``route_configuration``, ``cluster``, or "")."""

    context: PatchContext = PatchContext.ANY
    kind: str = ""
    port_number: int = 0
    listener_name: str = ""
    filter_chain_name: str = ""
    filter_name: str = ""
    sub_filter_name: str = ""
    route_config_name: str = ""
    vhost_name: str = ""
    route_name: str = ""
    service: str = ""
    subset: str = ""
    cluster_name: str = ""
    proxy_metadata: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ConfigPatch:
    """One patch: ``value`` is the patch's JSON (proto3 JSON of the target message, as
    written; ``value_json`` is its canonical text, which is what compares)."""

    apply_to: ApplyTo
    operation: PatchOperation
    match: PatchMatch = PatchMatch()
    value_json: str = ""
    filter_class: str = ""
    #: The line of ``patch.value`` in its file (for errors; takes no part in equality).
    value_line: int = field(default=0, compare=False)

    @property
    def value(self) -> Any:
        """The patch value as plain JSON data (None when there is none)."""
        return json.loads(self.value_json) if self.value_json else None


@dataclass(frozen=True, slots=True)
class EnvoyFilter:
    """Istio's EnvoyFilter: patches applied, in order, to the generated configuration of
    the selected nodes (all of the namespace when ``workload_selector`` is empty; every
    node for the root namespace)."""

    name: str
    namespace: str = DEFAULT_NAMESPACE
    workload_selector: tuple[tuple[str, str], ...] = ()
    patches: tuple[ConfigPatch, ...] = ()
    priority: int = 0
    origin: Origin = field(default=NO_ORIGIN, compare=False, repr=False)
    key: ResourceKey = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", ResourceKey("EnvoyFilter", self.namespace, self.name))


#: The namespace whose Sidecar without ``workloadSelector`` applies to every namespace that
#: has none of its own (Istio's MeshConfig ``rootNamespace`` and its default).
ROOT_NAMESPACE = "istio-system"
