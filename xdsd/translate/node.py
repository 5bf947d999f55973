"""Node classes: everything about an xDS client that decides which resources it gets.

Two clients with equal ``NodeClass`` values receive the same snapshot, so a class (not a
node id) is what snapshots are built and cached for. ``node_class_from_node`` reduces an
xDS ``Node`` to a class by reading a handful of its fields and nothing else, because Envoy
sends a very large node block and every field read is a field that splits classes.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

from xdsd.errors import TranslationError
from xdsd.located import NULL, Document, Fields, Report, is_ip, split_host_port
from xdsd.model import DEFAULT_NAMESPACE, Locality

DEFAULT_OUTBOUND_IP = "127.0.0.1"
NO_LOCALITY = Locality()
#: Written as the path of problems found in a node's own metadata.
NODE_PATH = "<node>"


class Role(Enum):
    """What a proxy is: a sidecar in front of one service, or a gateway."""

    SIDECAR = "sidecar"
    GATEWAY = "gateway"


class ClientKind(Enum):
    """Which xDS client implementation a node is (from ``node.metadata.client``, else
    ``node.user_agent_name``)."""

    ENVOY = "envoy"
    GRPC = "grpc"
    MOSN = "mosn"


class ConfigSourceKind(Enum):
    """How the client fetches resources; decides the ``ConfigSource`` written into the
    clusters and listeners it receives. STATIC is for ``render --static``: resources that
    end up inline in a bootstrap (they are built as for ADS and then inlined)."""

    ADS = "ads"
    DELTA = "delta"
    REST = "rest"
    STATIC = "static"


@dataclass(frozen=True, slots=True)
class NodeClass:
    """Everything that decides a node's resources, and nothing else.

    ``labels`` is sorted by key. ``instance_ip`` is the address inbound listeners bind
    (empty: decided from the service's endpoints, see ``MeshTranslation``);
    ``outbound_ip`` is the address outbound listeners bind.
    """

    service: str
    namespace: str = DEFAULT_NAMESPACE
    role: Role = Role.SIDECAR
    labels: tuple[tuple[str, str], ...] = ()
    locality: Locality = NO_LOCALITY
    client: ClientKind = ClientKind.ENVOY
    api_version: str = "v3"
    config_source: ConfigSourceKind = ConfigSourceKind.ADS
    instance_ip: str = ""
    outbound_ip: str = DEFAULT_OUTBOUND_IP
    #: A proxyless gRPC client whose bootstrap holds the mesh's certificates (the
    #: certificate provider ``mesh``): it is sent mesh mutual TLS (``clusters``).
    mesh_tls: bool = False
    #: The IPv4 block (CIDR) this sidecar's virtual-address listeners live in (empty:
    #: none; metadata ``virtual_addresses``): a listener on ``VIP:PORT`` per port of
    #: every service it can see (``translate/virtual_addresses.py``).
    virtual_addresses: str = ""
    #: ``IP:PORT`` of this sidecar's DNS listener (empty: none; metadata ``dns``).
    dns: str = ""
    #: Resolvers (``IP`` or ``IP:PORT``) its DNS listener forwards other names to
    #: (metadata ``dns_upstream``; empty: the settings' ``[mesh.dns] upstream``).
    dns_upstream: tuple[str, ...] = ()
    #: The port of this sidecar's capture listener (0: none; metadata ``capture``): the
    #: original-destination listener ``xdsd capture``'s rules redirect outbound TCP to.
    capture: int = 0
    #: A delta client whose outbound route configurations come with their virtual hosts
    #: as resources of their own, fetched on demand (VHDS; metadata ``vhds``, honoured on
    #: delta streams only: ``translate/vhds.py``).
    vhds: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(sorted(dict(self.labels).items())))

    def __str__(self) -> str:
        """A one-line description for logs and the admin server, e.g. ``sidecar
        reviews.default {version=v2} envoy/v3/ads in=10.0.0.7`` (locality after ``@``;
        ``out=`` only when not the default outbound address)."""
        parts = [f"{self.role.value} {self.service}.{self.namespace}"]
        if self.labels:
            parts.append("{" + ",".join(f"{k}={v}" for k, v in self.labels) + "}")
        locality = "/".join(
            p for p in (self.locality.region, self.locality.zone, self.locality.sub_zone) if p
        )
        if locality:
            parts.append(f"@{locality}")
        parts.append(f"{self.client.value}/{self.api_version}/{self.config_source.value}")
        if self.instance_ip:
            parts.append(f"in={self.instance_ip}")
        if self.outbound_ip != DEFAULT_OUTBOUND_IP:
            parts.append(f"out={self.outbound_ip}")
        if self.mesh_tls:
            parts.append("mesh-tls")
        if self.virtual_addresses:
            parts.append(f"vips={self.virtual_addresses}")
        if self.dns:
            parts.append(f"dns={self.dns}")
        if self.vhds:
            parts.append("vhds")
        return " ".join(parts)


def client_kind(user_agent_name: str) -> ClientKind:
    """The client kind a ``user_agent_name`` announces: ``grpc…`` (any case, e.g.
    ``gRPC C-core linux``) is proxyless gRPC, ``mosn…`` is MOSN, anything else Envoy."""
    name = user_agent_name.strip().lower()
    if name.startswith("grpc"):
        return ClientKind.GRPC
    if name.startswith("mosn"):
        return ClientKind.MOSN
    return ClientKind.ENVOY


#: The ``node.metadata`` fields a node class reads; every other one is ignored.
METADATA_FIELDS = (
    "namespace",
    "labels",
    "role",
    "instance_ip",
    "outbound_ip",
    "client",
    "mesh_tls",
    "virtual_addresses",
    "dns",
    "dns_upstream",
    "capture",
    "vhds",
)


def _plain(value: Any) -> Any:
    """A metadata ``google.protobuf.Value`` as plain Python, as ``MessageToDict`` reads it,
    except that a null is ``located.NULL`` (refused as a value, where ``None`` would read
    as absent) and a number JSON cannot hold (NaN, ±Infinity: a client may send them)
    stays a float, which every accessor of ``_read_metadata`` refuses, where
    ``MessageToDict`` would raise ValueError."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        return value.number_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return {k: _plain(v) for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_plain(v) for v in value.list_value.values]
    return NULL


def _is_label(value: Any) -> bool:
    """A label value a node may send: a string, a boolean or a finite number."""
    return isinstance(value, str | bool) or (isinstance(value, float) and math.isfinite(value))


def _label_text(value: str | bool | float) -> str:
    """A label value as the string a node class holds: ``true``/``false``, ``2`` for 2.0."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else str(value)
    return value


def _is_address(value: Any) -> bool:
    """An IP literal, or empty (not given)."""
    return isinstance(value, str) and (not value or is_ip(value))


_ROLES = tuple(r.value for r in Role)
_CLIENTS = tuple(k.value for k in ClientKind)


@dataclass(frozen=True, slots=True)
class _Metadata:
    """What ``node_class_from_node`` reads from ``node.metadata``."""

    namespace: str
    role: Role
    labels: tuple[tuple[str, str], ...]
    client: ClientKind
    mesh_tls: bool
    instance_ip: str
    outbound_ip: str
    virtual_addresses: str
    dns: str
    dns_upstream: tuple[str, ...]
    capture: int
    vhds: bool


def _is_port(value: Any) -> bool:
    """A port number (0: none): a whole number, or its decimal digits as a string (Envoy
    hands YAML bootstraps' metadata scalars over as strings)."""
    if isinstance(value, str):
        return 0 < len(value) <= 5 and value.isascii() and value.isdigit() and int(value) < 65536
    return isinstance(value, float) and value.is_integer() and 0 <= value < 65536


def _is_flag(value: Any) -> bool:
    """A boolean, or ``true``/``false`` as a string (how Envoy hands a YAML bootstrap's
    metadata scalars over)."""
    return isinstance(value, bool) or value in ("true", "false")


def _is_block(value: Any) -> bool:
    """An IPv4 network in CIDR notation with host bits zero, or empty (not given)."""
    if not isinstance(value, str):
        return False
    if not value:
        return True
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError:
        return False
    return network.version == 4 and network.num_addresses >= 4


def _is_host_port(value: Any) -> bool:
    """``IP:PORT`` (``[IPv6]:PORT``) with a port in 1..65535, or empty (not given)."""
    if not isinstance(value, str):
        return False
    return not value or split_host_port(value) is not None


def _is_dns_address(value: Any) -> bool:
    """The DNS listener's ``IP:PORT`` (``_is_host_port``) on a unicast address, or empty
    (not given): not the any-address (an open resolver on every interface), a multicast
    or broadcast address, or an IPv6 address with a scope (Envoy cannot bind it)."""
    if not _is_host_port(value):
        return False
    found = split_host_port(value)
    return found is None or _is_unicast(found[0])


def _is_resolver(value: Any) -> bool:
    """A resolver: a unicast IP literal (``_is_unicast``), or ``IP:PORT`` of one."""
    if not isinstance(value, str) or not value:
        return False
    if is_ip(value):
        return _is_unicast(value)
    found = split_host_port(value)
    return found is not None and _is_unicast(found[0])


def _is_unicast(host: str) -> bool:
    """An IP literal a socket can be bound to or sent to as one host: not the
    any-address, multicast, the IPv4 broadcast address, or IPv6 with a scope."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        return False
    broadcast = ip == ipaddress.IPv4Address("255.255.255.255")
    return not (ip.is_unspecified or ip.is_multicast or broadcast)


def _read_resolvers(metadata: Fields) -> tuple[str, ...]:
    """``metadata.dns_upstream``: a list of resolvers (``IP`` or ``IP:PORT``)."""
    listed = metadata.value(
        "dns_upstream",
        lambda v: isinstance(v, list) and len(v) <= 8 and all(_is_resolver(x) for x in v),
        "a list of at most 8 resolvers, IP or IP:PORT of a unicast address",
    )
    return tuple(listed) if listed else ()


def _read_metadata(metadata: Fields, user_agent_name: str) -> _Metadata:
    """The node class's fields of ``metadata``, its problems recorded in its report: a
    blank role is a sidecar, a client that is not given (or empty) is the one
    ``user_agent_name`` names, a blank namespace ``default``."""
    namespace = metadata.string("namespace") or DEFAULT_NAMESPACE
    role = metadata.choice(
        "role", _ROLES, default=Role.SIDECAR.value, fold=lambda s: s.lower() or Role.SIDECAR.value
    )
    labels = _read_labels(metadata)
    default_client = client_kind(user_agent_name).value
    client = metadata.choice(
        "client",
        _CLIENTS,
        default=default_client,
        fold=lambda s: s.strip().lower() if s else default_client,
    )
    mesh_tls = metadata.boolean("mesh_tls")
    instance_ip = metadata.value("instance_ip", _is_address, "an IP address", "")
    outbound_ip = metadata.value("outbound_ip", _is_address, "an IP address", "")
    blocks = metadata.value(
        "virtual_addresses", _is_block, "an IPv4 network in CIDR notation (127.240.0.0/16)", ""
    )
    dns = metadata.value(
        "dns", _is_dns_address, "IP:PORT of a unicast address (127.0.0.1:15053)", ""
    )
    dns_upstream = _read_resolvers(metadata)
    capture = metadata.value("capture", _is_port, "a port number", 0.0)
    vhds = metadata.value("vhds", _is_flag, "true or false", False) in (True, "true")
    return _Metadata(
        namespace=namespace,
        role=Role(role),
        labels=labels,
        client=ClientKind(client),
        mesh_tls=mesh_tls,
        instance_ip=instance_ip,
        outbound_ip=outbound_ip or DEFAULT_OUTBOUND_IP,
        virtual_addresses=blocks,
        dns=dns,
        dns_upstream=dns_upstream,
        capture=int(capture),  # a float or a string of digits, checked
        vhds=vhds,
    )


def _read_labels(metadata: Fields) -> tuple[tuple[str, str], ...]:
    """``metadata.labels``: a struct of strings, booleans and finite numbers, as strings."""
    table = metadata.value("labels", lambda v: isinstance(v, dict), "a struct of strings")
    if table is None:
        return ()
    fields = Fields(metadata.report, (*metadata.path, "labels"), table)
    labels: list[tuple[str, str]] = []
    for key in table:
        value = fields.value(key, _is_label, "a string")
        if value is not None:
            labels.append((key, _label_text(value)))
    return tuple(labels)


def node_class_from_node(
    node: Any, *, config_source: ConfigSourceKind, api_version: str = "v3"
) -> NodeClass:
    """The class of an xDS node (``envoy.config.core.v3.Node``).

    Reads only ``node.cluster`` (the service), ``node.locality``,
    ``node.user_agent_name`` and these ``node.metadata`` fields (``METADATA_FIELDS``):
    ``namespace``, ``labels`` (a struct of strings; numbers and booleans are turned into
    strings), ``role`` (``sidecar`` | ``gateway``), ``instance_ip``, ``outbound_ip``,
    ``client`` (``envoy`` | ``grpc`` | ``mosn``: the client kind, overriding what
    ``user_agent_name`` says; MOSN sends no ``user_agent_name``, only ``id``, ``cluster``
    and ``metadata``, so a MOSN node is known by this field), ``mesh_tls`` (true: a
    proxyless gRPC client with the mesh's certificates in its bootstrap),
    ``virtual_addresses`` (an IPv4 CIDR), ``dns`` (``IP:PORT``) and ``dns_upstream`` (a
    list of ``IP`` or ``IP:PORT``): a sidecar's virtual addresses and DNS; ``capture``
    (a port): its original-destination capture listener; ``vhds`` (a boolean): virtual
    hosts by VHDS, honoured only when ``config_source`` is DELTA (Envoy takes VHDS on a
    delta stream only; on any other stream the field is read, checked and ignored). Every
    other
    field is ignored. The metadata is read with ``xdsd.located.Fields``, as config
    documents are.

    Raises TranslationError (path ``<node>``, line 0) when a field cannot be used: no
    ``node.cluster``, an unknown role or client, labels that are not a struct, a value
    of the wrong type (a null, NaN or ±Infinity included), an address that is not an IP
    literal.
    """
    given = node.metadata.fields
    data = {key: _plain(given[key]) for key in METADATA_FIELDS if key in given}
    report = Report(Document(NODE_PATH, 0, data), ())
    if not node.cluster:
        report.add(("cluster",), "is empty: set node.cluster to the service name")
    read = _read_metadata(Fields(report, ("metadata",), data), node.user_agent_name)
    if report.problems:
        raise TranslationError(report.problems)
    loc = node.locality
    return NodeClass(
        service=node.cluster,
        namespace=read.namespace,
        role=read.role,
        labels=read.labels,
        locality=Locality(loc.region, loc.zone, loc.sub_zone),
        client=read.client,
        api_version=api_version,
        config_source=config_source,
        instance_ip=read.instance_ip,
        outbound_ip=read.outbound_ip,
        mesh_tls=read.mesh_tls and read.client is ClientKind.GRPC,
        virtual_addresses=read.virtual_addresses,
        dns=read.dns,
        dns_upstream=read.dns_upstream,
        capture=read.capture,
        vhds=read.vhds and config_source is ConfigSourceKind.DELTA,
    )


def is_wildcard(address: str) -> bool:
    """True for the any-address of IPv4 or IPv6 (``0.0.0.0``, ``::``)."""
    try:
        return ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return False


#: The ``node.metadata`` field naming the WorkloadGroup a sidecar registers into (read
#: by ``workload_group_of``, not part of the node class: it decides no resource).
WORKLOAD_GROUP_FIELD = "workload_group"


def is_group_name(value: Any) -> bool:
    """A WorkloadGroup name: a DNS label of at most 63 characters, or empty."""
    if not isinstance(value, str):
        return False
    if not value:
        return True
    return (
        len(value) <= 63
        and value[0] != "-"
        and value[-1] != "-"
        and all(c.isascii() and (c.islower() or c.isdigit() or c == "-") for c in value)
    )


def workload_group_of(node: Any) -> str:
    """The WorkloadGroup ``node`` asks to register into (``node.metadata.
    workload_group``; "" when none: the node does not register). Its address is the
    node class's ``instance_ip``, its namespace the class's. Raises TranslationError
    (path ``<node>``) when the value is not a group name."""
    given = node.metadata.fields
    if WORKLOAD_GROUP_FIELD not in given:
        return ""
    data = {WORKLOAD_GROUP_FIELD: _plain(given[WORKLOAD_GROUP_FIELD])}
    report = Report(Document(NODE_PATH, 0, data), ())
    group: str = Fields(report, ("metadata",), data).value(
        WORKLOAD_GROUP_FIELD, is_group_name, "a WorkloadGroup name (a DNS label)", ""
    )
    if report.problems:
        raise TranslationError(report.problems)
    return group
