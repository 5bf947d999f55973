"""Services: what exists in the mesh, where it listens and who serves it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum
from typing import NamedTuple

DEFAULT_NAMESPACE = "default"
DOMAIN_SUFFIX = "svc.cluster.local"


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a resource was read from: a file and the 1-based line its document starts on.

    Origins never take part in equality, so a resource that moved in its file (or to
    another file) but did not change compares equal and is not rebuilt.
    """

    path: str
    line: int = 0

    def __str__(self) -> str:
        return f"{self.path}:{self.line}" if self.line else self.path


NO_ORIGIN = Origin("<none>")

#: Field paths of a document and their 1-based lines (``("rules[0].to[0].operation.paths",
#: 12)``): what a check needs to word a warning or an error at the field's own line. Kept
#: on model objects as a field that never takes part in equality.
FieldLines = tuple[tuple[str, int], ...]


def line_of(lines: FieldLines, path: str, default: int = 0) -> int:
    """The line of field ``path`` in ``lines`` (``default`` when not recorded)."""
    for key, line in lines:
        if key == path:
            return line
    return default


@dataclass(frozen=True, slots=True)
class CertificateRef:
    """A certificate or key file a rule names: its absolute ``path``, and where it is
    named (the ``field`` path of the rule, in the document at ``origin``), so that a file
    that cannot be read is reported on the line that names it."""

    path: str
    field: str
    origin: Origin


@dataclass(frozen=True, slots=True)
class CertificateFile:
    """The bytes of a certificate or key file, read by the sources (translation does no
    I/O): what SDS secrets carry inline."""

    path: str
    data: bytes


class ResourceKey(NamedTuple):
    """The identity of a configuration resource: (kind, namespace, name).

    A named tuple rather than a dataclass: keys are hashed and compared hundreds of
    thousands of times per load of a large mesh, and a tuple does both in C.
    """

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


class Protocol(Enum):
    """The protocol a service port speaks (Istio's port protocols)."""

    HTTP = "HTTP"
    HTTP2 = "HTTP2"
    GRPC = "GRPC"
    TCP = "TCP"
    TLS = "TLS"
    #: Datagrams: a port of a Service's ``datagram_ports``, which only a gateway's UDP
    #: listener (a Gateway API UDPRoute) forwards to; sidecars carry no UDP.
    UDP = "UDP"

    @property
    def is_http(self) -> bool:
        """True when Envoy can route requests on this port (HTTP connection manager)."""
        return self in (Protocol.HTTP, Protocol.HTTP2, Protocol.GRPC)

    @property
    def is_http2(self) -> bool:
        """True when upstream connections must speak HTTP/2."""
        return self in (Protocol.HTTP2, Protocol.GRPC)


class Resolution(Enum):
    """How a service's endpoint addresses are resolved.

    ``NONE`` comes only from a ServiceEntry (the xdsd Service kind refuses it): the
    service has no endpoints, and a request goes to the host it names, resolved by DNS
    when it is made (Envoy's dynamic forward proxy). Its TCP and TLS ports carry no name
    in the request, so only a sidecar that knows where the application connected serves
    them (``Service.routed_ports``).
    """

    STATIC = "STATIC"
    DNS = "DNS"
    DNS_ROUND_ROBIN = "DNS_ROUND_ROBIN"
    NONE = "NONE"


class Location(Enum):
    """Istio's ServiceEntry.Location: inside the mesh (has sidecars) or outside. xdsd's
    own services are inside."""

    MESH_EXTERNAL = "MESH_EXTERNAL"
    MESH_INTERNAL = "MESH_INTERNAL"


@dataclass(frozen=True, slots=True, order=True)
class Locality:
    """region/zone/subzone; any part may be empty."""

    region: str = ""
    zone: str = ""
    sub_zone: str = ""

    @classmethod
    def parse(cls, text: str) -> Locality:
        """Parse ``region/zone/subzone`` (trailing parts optional). Raises ValueError on
        more than three parts."""
        parts = text.split("/") if text else []
        if len(parts) > 3:
            raise ValueError(f"locality has at most 3 parts region/zone/subzone (got {text!r})")
        parts += [""] * (3 - len(parts))
        return cls(parts[0], parts[1], parts[2])

    def __str__(self) -> str:
        return "/".join((self.region, self.zone, self.sub_zone)).rstrip("/")


@dataclass(frozen=True, slots=True)
class Port:
    """A service port. ``number`` is what callers use (and what inbound listeners bind);
    ``target_port`` is where the application listens behind its sidecar.
    ``policy_port``, when set, is the workload port security policies name this port by
    instead of the target port (a Sidecar ingress listener: its own number, while the
    traffic goes on to its ``defaultEndpoint``)."""

    number: int
    protocol: Protocol
    name: str = ""
    target_port: int = 0
    policy_port: int = 0

    @property
    def effective_target_port(self) -> int:
        """``target_port``, or ``number`` when no target port was given."""
        return self.target_port or self.number

    @property
    def workload_port(self) -> int:
        """The port PeerAuthentication's ``portLevelMtls`` keys and AuthorizationPolicy's
        ``ports``/``destination.port`` name this port by (Istio's workload port):
        ``policy_port``, else ``effective_target_port``."""
        return self.policy_port or self.effective_target_port


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One instance of a service. ``ports`` overrides the target port per port name
    (as Istio's WorkloadEntry does); empty means each port's own number."""

    address: str
    labels: tuple[tuple[str, str], ...] = ()
    locality: Locality = Locality()
    weight: int = 1
    ports: tuple[tuple[str, int], ...] = ()
    #: False for a registered workload its group's probe judged UNHEALTHY: sent with
    #: ``health_status: UNHEALTHY`` (callers send it nothing).
    healthy: bool = True
    # Endpoints are hashed as parts of translation keys, many times per reload.
    _hash: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        fields = (self.address, self.labels, self.locality, self.weight, self.ports, self.healthy)
        object.__setattr__(self, "_hash", hash(fields))

    def __hash__(self) -> int:
        return self._hash

    def matches(self, selector: tuple[tuple[str, str], ...]) -> bool:
        """True when every label of ``selector`` is on this endpoint with the same value."""
        labels = self.labels  # unique keys: a (key, value) pair is present or not
        return all(pair in labels for pair in selector)

    def port_for(self, port: Port) -> int:
        """The port this endpoint serves ``port`` on."""
        for name, number in self.ports:
            if name == port.name:
                return number
        return port.number


def _endpoint_maker() -> Callable[
    [str, tuple[tuple[str, str], ...], Locality, int, tuple[tuple[str, int], ...]], Endpoint
]:
    """A maker of healthy ``Endpoint`` objects from (address, labels, locality, weight,
    ports), equal to ``Endpoint(address, labels, locality, weight, ports)`` and with the
    same hash, made by setting each slot through its descriptor: half the time of the
    frozen dataclass's ``__init__`` (which sets each field through
    ``object.__setattr__`` and then calls ``__post_init__``), for the 100,000 endpoints
    of a large mesh's files. The caller guarantees the types, as the dataclass's
    ``__init__`` does not check them either."""
    slot = Endpoint.__dict__
    set_address, set_labels, set_locality, set_weight, set_ports, set_healthy, set_hash = (
        slot[f].__set__
        for f in ("address", "labels", "locality", "weight", "ports", "healthy", "_hash")
    )
    new = object.__new__

    def made(
        address: str,
        labels: tuple[tuple[str, str], ...],
        locality: Locality,
        weight: int,
        ports: tuple[tuple[str, int], ...],
    ) -> Endpoint:
        e: Endpoint = new(Endpoint)
        set_address(e, address)
        set_labels(e, labels)
        set_locality(e, locality)
        set_weight(e, weight)
        set_ports(e, ports)
        set_healthy(e, True)
        # the tuple __post_init__ hashes
        set_hash(e, hash((address, labels, locality, weight, ports, True)))
        return e

    return made


#: ``Endpoint(address, labels, locality, weight, ports)``, made faster (``_endpoint_maker``).
make_endpoint = _endpoint_maker()


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """An active health check of every endpoint of a service (not Istio API; Kuma and
    Consul have them). With ``path`` it is an HTTP GET of that path (``host`` as Host,
    the service's canonical name when empty), healthy when the status is in one of
    ``expected_statuses`` (half-open ranges ``[start, end)``; empty: 200 only); without,
    a TCP connect. ``interval`` apart, each check given ``timeout``; an endpoint is taken
    out after ``unhealthy_threshold`` failures in a row and put back after
    ``healthy_threshold`` successes."""

    path: str = ""
    host: str = ""
    expected_statuses: tuple[tuple[int, int], ...] = ()
    interval: timedelta = timedelta(seconds=10)
    timeout: timedelta = timedelta(seconds=1)
    unhealthy_threshold: int = 2
    healthy_threshold: int = 1

    @property
    def is_http(self) -> bool:
        """True for an HTTP check, False for a TCP connect check."""
        return bool(self.path)


@dataclass(frozen=True, slots=True)
class Service:
    """xdsd's own service model: a name in a namespace, its ports and endpoints.

    A service answers to its short name, ``name.namespace``, its fully qualified name
    ``name.namespace.svc.cluster.local`` (so Istio YAML written for Kubernetes works) and
    any extra ``hosts``.

    A service made from one host of a ServiceEntry (``entry`` is the entry's name) is
    named by that host: ``name`` is the host, and it is also its canonical name and its
    only name (no short names, no namespace completion); its key is
    ``ServiceEntry namespace/ENTRY/HOST``. Its endpoints already carry the port each
    serves every port on.
    """

    name: str
    namespace: str = DEFAULT_NAMESPACE
    ports: tuple[Port, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    hosts: tuple[str, ...] = ()
    resolution: Resolution = Resolution.STATIC
    origin: Origin = field(default=NO_ORIGIN, compare=False, repr=False)
    health_check: HealthCheck | None = None
    #: The ServiceEntry this service comes from ("" for an xdsd Service).
    entry: str = ""
    #: Inside the mesh (its endpoints have sidecars: mesh mutual TLS reaches it) or not;
    #: an xdsd Service is inside, a ServiceEntry host outside unless it says otherwise.
    location: Location = Location.MESH_INTERNAL
    #: The identities a ServiceEntry host's workloads present (its ``subjectAltNames``:
    #: what callers check under mesh mutual TLS).
    subject_alt_names: tuple[str, ...] = ()
    #: The virtual addresses its file names (an xdsd Service's ``address``, a
    #: ServiceEntry's ``addresses``: IP literals, or CIDRs for an entry); empty: one is
    #: allocated from the mesh's block (``translate/virtual_addresses.py``).
    addresses: tuple[str, ...] = ()
    #: The lines of the fields the cross-checks report about: the names (``name``,
    #: ``hosts[N]``) and pinned addresses (``address``, an entry's ``addresses[N]``).
    lines: FieldLines = field(default=(), compare=False, repr=False)
    #: Its UDP ports (protocol ``UDP``), kept apart from ``ports`` (a UDP port given in
    #: ``ports`` is moved here on construction): no sidecar listener takes them; they
    #: get clusters (``translate.clusters``), which a gateway's UDP listener forwards
    #: datagrams to (a Gateway API UDPRoute's backends).
    datagram_ports: tuple[Port, ...] = ()
    # Derived once (a mesh reads them hundreds of thousands of times per load), as slots
    # rather than properties; never compared, never passed.
    #: The service's identity.
    key: ResourceKey = field(init=False, compare=False, repr=False)
    #: The canonical host name, used in cluster names: ``name.namespace.svc.cluster.local``.
    fqdn: str = field(init=False, compare=False, repr=False)
    #: Every name this service answers to, canonical first, without duplicates.
    host_names: tuple[str, ...] = field(init=False, compare=False, repr=False)
    #: The ports per-port listeners, clusters, gateways and route destinations use: every
    #: port but the TCP and TLS ports of a resolution NONE service. Those carry no name
    #: a per-port listener could go by; only virtual-address listeners (TLS by SNI, TCP by
    #: the host's resolved address) and capture serve them (``address_only``).
    routed_ports: tuple[Port, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if any(p.protocol is Protocol.UDP for p in self.ports):
            # a UDP port is never a stream port: kept apart, whoever built the service
            udp = tuple(p for p in self.ports if p.protocol is Protocol.UDP)
            object.__setattr__(self, "datagram_ports", (*self.datagram_ports, *udp))
            object.__setattr__(
                self, "ports", tuple(p for p in self.ports if p.protocol is not Protocol.UDP)
            )
        routed = self.ports
        if self.resolution is Resolution.NONE:
            routed = tuple(p for p in self.ports if p.protocol.is_http)
        object.__setattr__(self, "routed_ports", routed)
        if self.entry:
            key = ResourceKey("ServiceEntry", self.namespace, f"{self.entry}/{self.name}")
            object.__setattr__(self, "key", key)
            object.__setattr__(self, "fqdn", self.name)
            object.__setattr__(self, "host_names", (self.name,))
            return
        object.__setattr__(self, "key", ResourceKey("Service", self.namespace, self.name))
        fqdn = f"{self.name}.{self.namespace}.{DOMAIN_SUFFIX}"
        names = [fqdn, f"{self.name}.{self.namespace}.svc", f"{self.name}.{self.namespace}"]
        names.append(self.name)
        names.extend(self.hosts)
        object.__setattr__(self, "fqdn", fqdn)
        object.__setattr__(self, "host_names", tuple(dict.fromkeys(names)))

    def port(self, number: int) -> Port | None:
        """The port with this number, if any."""
        for p in self.ports:
            if p.number == number:
                return p
        return None

    def routed_port(self, number: int) -> Port | None:
        """The port with this number among ``routed_ports``, if any."""
        for p in self.routed_ports:
            if p.number == number:
                return p
        return None

    def address_only(self, port: Port) -> bool:
        """True for a port that only virtual-address listeners and capture serve (a TCP
        or TLS port of a resolution NONE service; see ``routed_ports``)."""
        return self.resolution is Resolution.NONE and not port.protocol.is_http
