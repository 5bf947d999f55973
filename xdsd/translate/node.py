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

from google.protobuf import json_format

from xdsd.errors import Problem, TranslationError
from xdsd.located import is_ip
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


def _plain(value: Any) -> Any:
    """A metadata ``google.protobuf.Value`` as plain Python, as ``MessageToDict`` reads it,
    except that a number JSON cannot hold (NaN, ±Infinity: a client may send them) is None,
    which no field accepts, where ``MessageToDict`` would raise ValueError."""
    kind = value.WhichOneof("kind")
    if kind == "number_value" and not math.isfinite(value.number_value):
        return None
    if kind == "struct_value":
        return {k: _plain(v) for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_plain(v) for v in value.list_value.values]
    return json_format.MessageToDict(value)


def node_class_from_node(
    node: Any, *, config_source: ConfigSourceKind, api_version: str = "v3"
) -> NodeClass:
    """The class of an xDS node (``envoy.config.core.v3.Node``).

    Reads only ``node.cluster`` (the service), ``node.locality``,
    ``node.user_agent_name`` and these ``node.metadata`` fields: ``namespace``,
    ``labels`` (a struct of strings; numbers and booleans are turned into strings),
    ``role`` (``sidecar`` | ``gateway``), ``instance_ip``, ``outbound_ip``, ``client``
    (``envoy`` | ``grpc`` | ``mosn``: the client kind, overriding what
    ``user_agent_name`` says; MOSN sends no ``user_agent_name``, only ``id``, ``cluster``
    and ``metadata``, so a MOSN node is known by this field), ``mesh_tls`` (true: a
    proxyless gRPC client with the mesh's certificates in its bootstrap). Every other
    field is ignored.

    Raises TranslationError (path ``<node>``) when a field cannot be used: no
    ``node.cluster``, an unknown role or client, labels that are not a struct, an
    address that is not an IP literal.
    """
    problems: list[Problem] = []
    fields = node.metadata.fields

    def text(key: str, default: str) -> str:
        if key not in fields:
            return default
        value = _plain(fields[key])
        if isinstance(value, str):
            return value
        problems.append(Problem(NODE_PATH, 0, f"metadata.{key}", "must be a string"))
        return default

    service = node.cluster
    if not service:
        problems.append(
            Problem(NODE_PATH, 0, "cluster", "is empty: set node.cluster to the service name")
        )
    namespace = text("namespace", DEFAULT_NAMESPACE) or DEFAULT_NAMESPACE
    role_text = text("role", Role.SIDECAR.value) or Role.SIDECAR.value
    try:
        role = Role(role_text.lower())
    except ValueError:
        problems.append(
            Problem(
                NODE_PATH,
                0,
                "metadata.role",
                f"must be 'sidecar' or 'gateway' (got {role_text!r})",
            )
        )
        role = Role.SIDECAR
    labels: dict[str, str] = {}
    if "labels" in fields:
        raw = _plain(fields["labels"])
        if isinstance(raw, dict):
            for key, value in raw.items():
                if isinstance(value, bool):
                    labels[key] = "true" if value else "false"
                elif isinstance(value, float) and value.is_integer():
                    labels[key] = str(int(value))
                elif isinstance(value, str | int | float):
                    labels[key] = str(value)
                else:
                    problems.append(
                        Problem(NODE_PATH, 0, f"metadata.labels.{key}", "must be a string")
                    )
        else:
            problems.append(Problem(NODE_PATH, 0, "metadata.labels", "must be a struct of strings"))
    client = client_kind(node.user_agent_name)
    client_text = text("client", "")
    if client_text:
        try:
            client = ClientKind(client_text.strip().lower())
        except ValueError:
            allowed = ", ".join(k.value for k in ClientKind)
            problems.append(
                Problem(
                    NODE_PATH,
                    0,
                    "metadata.client",
                    f"must be one of {allowed} (got {client_text!r})",
                )
            )
    mesh_tls = False
    if "mesh_tls" in fields:
        flag = _plain(fields["mesh_tls"])
        if isinstance(flag, bool):
            mesh_tls = flag
        else:
            problems.append(Problem(NODE_PATH, 0, "metadata.mesh_tls", "must be true or false"))
    instance_ip = text("instance_ip", "")
    outbound_ip = text("outbound_ip", DEFAULT_OUTBOUND_IP) or DEFAULT_OUTBOUND_IP
    for key, value in (("instance_ip", instance_ip), ("outbound_ip", outbound_ip)):
        if value and not is_ip(value):
            problems.append(
                Problem(NODE_PATH, 0, f"metadata.{key}", f"must be an IP address (got {value!r})")
            )
    if problems:
        raise TranslationError(problems)
    loc = node.locality
    return NodeClass(
        service=service,
        namespace=namespace,
        role=role,
        labels=tuple(labels.items()),
        locality=Locality(loc.region, loc.zone, loc.sub_zone),
        client=client,
        api_version=api_version,
        config_source=config_source,
        instance_ip=instance_ip,
        outbound_ip=outbound_ip,
        mesh_tls=mesh_tls and client is ClientKind.GRPC,
    )


def is_wildcard(address: str) -> bool:
    """True for the any-address of IPv4 or IPv6 (``0.0.0.0``, ``::``)."""
    try:
        return ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return False
