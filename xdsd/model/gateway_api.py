"""The Kubernetes Gateway API (``gateway.networking.k8s.io``), read from files.

These are the kinds as written: ``sources/gateway_api/`` parses them, and the conversion
(``sources/gateway_api/convert.py``) turns what they mean into the objects the rest of
xdsd already serves — Istio-shaped ``Gateway`` servers and ``VirtualService`` rules —
plus, per object, the status conditions Kubernetes would have written back
(``Condition``). Field names follow the API's (snake_case); values stay as written
(``"PathPrefix"``, ``"Terminate"``) where the API has an open set of strings, so a
message can quote them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from xdsd.model.service import DEFAULT_NAMESPACE, NO_ORIGIN, FieldLines, Origin, ResourceKey

#: The API group of every kind here.
GATEWAY_GROUP = "gateway.networking.k8s.io"
#: The controller name a GatewayClass must give for xdsd to program its Gateways.
CONTROLLER_NAME = "xdsd.dev/gateway-controller"


@dataclass(frozen=True, slots=True)
class Condition:
    """A status condition, as Kubernetes would write it back into the object: ``type``
    (``Accepted``, ``ResolvedRefs``, ``Programmed``...), ``status`` (True/False), the API's
    ``reason`` name (``NotAllowedByListeners``, ``RefNotPermitted``, ``BackendNotFound``...)
    and a message. ``target`` names the object (``HTTPRoute ns/name``) and ``scope`` what
    within it (``parentRefs[0]``, ``listeners[https]``; "" for the object)."""

    target: ResourceKey
    type: str
    status: bool
    reason: str
    message: str = ""
    scope: str = ""


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """A reference to another object: ``group`` ("" is the core group), ``kind``,
    ``name``, ``namespace`` ("" = the referrer's), and for parents and backends
    ``section_name`` and ``port`` (0 = not given)."""

    name: str
    kind: str
    group: str = ""
    namespace: str = ""
    section_name: str = ""
    port: int = 0


@dataclass(frozen=True, slots=True)
class GatewayClass:
    """A GatewayClass: Gateways of a class whose ``controller_name`` is
    ``CONTROLLER_NAME`` are xdsd's."""

    name: str
    controller_name: str
    origin: Origin = field(default=NO_ORIGIN, compare=False, repr=False)
    lines: FieldLines = field(default=(), compare=False, repr=False)
    key: ResourceKey = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", ResourceKey("GatewayClass", "", self.name))


@dataclass(frozen=True, slots=True)
class ListenerTLS:
    """A listener's ``tls``: ``mode`` Terminate or Passthrough, the certificates it
    serves (Secret-shaped files or file paths, ``ObjectRef`` kind ``Secret``) and
    ``options``."""

    mode: str = "Terminate"
    certificate_refs: tuple[ObjectRef, ...] = ()
    options: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class LabelRequirement:
    """One ``matchExpressions`` entry of a label selector: ``operator`` In, NotIn,
    Exists or DoesNotExist over the label ``key`` (``values``: In/NotIn only)."""

    key: str
    operator: str
    values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AllowedRoutes:
    """A listener's ``allowedRoutes``: ``namespaces_from`` Same, All or Selector (with
    ``selector`` labels and ``expressions``, every one required), and the route
    ``kinds`` it takes (empty: those of its protocol)."""

    namespaces_from: str = "Same"
    selector: tuple[tuple[str, str], ...] = ()
    kinds: tuple[tuple[str, str], ...] = ()
    expressions: tuple[LabelRequirement, ...] = ()


@dataclass(frozen=True, slots=True)
class Listener:
    """One listener of a Gateway: ``protocol`` HTTP, HTTPS, TLS, TCP or UDP."""

    name: str
    port: int
    protocol: str
    hostname: str = ""
    tls: ListenerTLS | None = None
    allowed_routes: AllowedRoutes = field(default_factory=AllowedRoutes)


@dataclass(frozen=True, slots=True)
class KubeGateway:
    """A Gateway of the Gateway API (named apart from Istio's ``Gateway``).

    ``refused`` names the spec fields given that xdsd does not honour (``tls``,
    ``infrastructure``...; their lines are in ``lines``): an error when the Gateway is
    of xdsd's class (``sources.gateway_api.merge``), nothing for another controller's
    Gateway, which xdsd does not serve."""

    name: str
    namespace: str = DEFAULT_NAMESPACE
    gateway_class_name: str = ""
    listeners: tuple[Listener, ...] = ()
    addresses: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    refused: tuple[str, ...] = ()
    origin: Origin = field(default=NO_ORIGIN, compare=False, repr=False)
    lines: FieldLines = field(default=(), compare=False, repr=False)
    key: ResourceKey = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", ResourceKey("KubeGateway", self.namespace, self.name))


@dataclass(frozen=True, slots=True)
class StringMatch:
    """A path, header, query parameter or gRPC method match: ``type`` as the API
    spells it (Exact, PathPrefix, RegularExpression), ``name`` for headers and query
    parameters, ``value``."""

    type: str
    value: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """One match of an HTTPRoute or GRPCRoute rule (all conditions must hold). For a
    GRPCRoute, ``grpc_service``/``grpc_method`` with ``path`` None."""

    path: StringMatch | None = None
    headers: tuple[StringMatch, ...] = ()
    query_params: tuple[StringMatch, ...] = ()
    method: str = ""
    grpc_type: str = ""
    grpc_service: str = ""
    grpc_method: str = ""


@dataclass(frozen=True, slots=True)
class HeaderModifier:
    """RequestHeaderModifier / ResponseHeaderModifier."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PathModifier:
    """A redirect's or rewrite's ``path``: ``type`` ReplaceFullPath or
    ReplacePrefixMatch and its value."""

    type: str
    value: str


@dataclass(frozen=True, slots=True)
class RouteFilter:
    """One filter of a rule or a backend: ``type`` as the API spells it, with the one
    field of that type set."""

    type: str
    request_header_modifier: HeaderModifier | None = None
    response_header_modifier: HeaderModifier | None = None
    redirect_scheme: str = ""
    redirect_hostname: str = ""
    redirect_port: int = 0
    redirect_status: int = 0
    redirect_path: PathModifier | None = None
    rewrite_hostname: str = ""
    rewrite_path: PathModifier | None = None
    mirror: ObjectRef | None = None
    mirror_percent: float | None = None
    cors: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True, slots=True)
class BackendRef:
    """A rule's backend: the object (a Service or a ServiceEntry host), its weight and
    its own filters."""

    ref: ObjectRef
    weight: int = 1
    filters: tuple[RouteFilter, ...] = ()


@dataclass(frozen=True, slots=True)
class RouteRule:
    """One rule of any route kind (L4 kinds use only ``backend_refs``)."""

    name: str = ""
    matches: tuple[RouteMatch, ...] = ()
    filters: tuple[RouteFilter, ...] = ()
    backend_refs: tuple[BackendRef, ...] = ()
    request_timeout: timedelta | None = None
    backend_request_timeout: timedelta | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """An HTTPRoute, GRPCRoute, TCPRoute, TLSRoute or UDPRoute (``kind``)."""

    kind: str
    name: str
    namespace: str = DEFAULT_NAMESPACE
    parent_refs: tuple[ObjectRef, ...] = ()
    hostnames: tuple[str, ...] = ()
    rules: tuple[RouteRule, ...] = ()
    origin: Origin = field(default=NO_ORIGIN, compare=False, repr=False)
    lines: FieldLines = field(default=(), compare=False, repr=False)
    key: ResourceKey = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", ResourceKey(self.kind, self.namespace, self.name))


@dataclass(frozen=True, slots=True)
class ReferenceGrant:
    """A ReferenceGrant: objects of the ``from_`` (group, kind, namespace) may refer to
    the ``to`` (group, kind, name; "" name = any) objects of this namespace."""

    name: str
    namespace: str = DEFAULT_NAMESPACE
    from_: tuple[tuple[str, str, str], ...] = ()
    to: tuple[tuple[str, str, str], ...] = ()
    origin: Origin = field(default=NO_ORIGIN, compare=False, repr=False)
    lines: FieldLines = field(default=(), compare=False, repr=False)
    key: ResourceKey = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", ResourceKey("ReferenceGrant", self.namespace, self.name))


@dataclass(frozen=True, slots=True)
class BackendTLSPolicy:
    """A BackendTLSPolicy: TLS from the gateway to the ``target_refs`` services,
    checked against ``ca_certificate_refs`` (or the system's roots when
    ``well_known_ca_certificates`` is ``System``) for ``hostname``."""

    name: str
    namespace: str = DEFAULT_NAMESPACE
    target_refs: tuple[ObjectRef, ...] = ()
    ca_certificate_refs: tuple[ObjectRef, ...] = ()
    well_known_ca_certificates: str = ""
    hostname: str = ""
    subject_alt_names: tuple[str, ...] = ()
    origin: Origin = field(default=NO_ORIGIN, compare=False, repr=False)
    lines: FieldLines = field(default=(), compare=False, repr=False)
    key: ResourceKey = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", ResourceKey("BackendTLSPolicy", self.namespace, self.name))


#: The ``kind`` (``group``) of a certificate reference naming a file by path rather
#: than a Secret: ``{kind: File, group: xdsd.dev, name: /path/cert.pem}`` (see
#: ``docs/rules.md``, "Gateway API").
FILE_REF_KIND = "File"
FILE_REF_GROUP = "xdsd.dev"


@dataclass(frozen=True, slots=True)
class TLSSecret:
    """A Kubernetes ``Secret`` of type ``kubernetes.io/tls`` read from a file: the PEM
    bytes of ``tls.crt``, ``tls.key`` and (optional) ``ca.crt``. The bytes are secret:
    they are left out of ``repr`` and must never reach a log, a message or a status
    view (the key and the origin may)."""

    name: str
    namespace: str = DEFAULT_NAMESPACE
    certificate: bytes = field(default=b"", repr=False)
    private_key: bytes = field(default=b"", repr=False)
    ca_certificate: bytes = field(default=b"", repr=False)
    origin: Origin = field(default=NO_ORIGIN, compare=False, repr=False)
    lines: FieldLines = field(default=(), compare=False, repr=False)
    key: ResourceKey = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", ResourceKey("Secret", self.namespace, self.name))


#: The label Kubernetes sets on every namespace: its own name.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True, slots=True)
class KubeNamespace:
    """A Kubernetes ``Namespace`` (core ``v1``) read from a file: its name and labels,
    which listeners' ``allowedRoutes.namespaces.selector`` look at. ``labels`` always
    hold ``NAMESPACE_NAME_LABEL: name``, as Kubernetes sets it."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()
    origin: Origin = field(default=NO_ORIGIN, compare=False, repr=False)
    lines: FieldLines = field(default=(), compare=False, repr=False)
    key: ResourceKey = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", ResourceKey("Namespace", "", self.name))


#: A Gateway API object as parsed (what ``GatewayAPI`` holds).
GatewayAPIObject = (
    GatewayClass
    | KubeGateway
    | Route
    | ReferenceGrant
    | BackendTLSPolicy
    | TLSSecret
    | KubeNamespace
)

#: The classes of ``GatewayAPIObject``, for ``isinstance``.
GATEWAY_API_TYPES = (
    GatewayClass,
    KubeGateway,
    Route,
    ReferenceGrant,
    BackendTLSPolicy,
    TLSSecret,
    KubeNamespace,
)

#: The route kinds, as ``Route.kind`` and ``ResourceKey.kind`` spell them.
ROUTE_KINDS = ("HTTPRoute", "GRPCRoute", "TCPRoute", "TLSRoute", "UDPRoute")
#: The ``ResourceKey.kind`` of each Gateway API object → the ``GatewayAPI`` field
#: holding it.
GATEWAY_API_KINDS = {
    "GatewayClass": "classes",
    "KubeGateway": "gateways",
    **{kind: "routes" for kind in ROUTE_KINDS},
    "ReferenceGrant": "grants",
    "BackendTLSPolicy": "backend_tls",
    "Secret": "secrets",
    "Namespace": "namespaces",
}


@dataclass(frozen=True, slots=True)
class GatewayAPI:
    """Every Gateway API object of a directory, by kind, each tuple in key order
    (``routes``: every route kind, by key: kind, namespace, name)."""

    classes: tuple[GatewayClass, ...] = ()
    gateways: tuple[KubeGateway, ...] = ()
    routes: tuple[Route, ...] = ()
    grants: tuple[ReferenceGrant, ...] = ()
    backend_tls: tuple[BackendTLSPolicy, ...] = ()
    secrets: tuple[TLSSecret, ...] = ()
    namespaces: tuple[KubeNamespace, ...] = ()

    def __bool__(self) -> bool:
        return bool(
            self.classes
            or self.gateways
            or self.routes
            or self.grants
            or self.backend_tls
            or self.secrets
            or self.namespaces
        )

    def namespace_labels(self) -> dict[str, dict[str, str]]:
        """The labels of every namespace declared by a ``Namespace`` document, by
        name (a namespace not declared has only ``NAMESPACE_NAME_LABEL``)."""
        return {ns.name: dict(ns.labels) for ns in self.namespaces}


NO_GATEWAY_API = GatewayAPI()
