"""``Mesh``: everything loaded from one config directory, indexed for translation."""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import attrgetter

from xdsd.model.gateway_api import NO_GATEWAY_API, Condition, GatewayAPI, GatewayAPIObject
from xdsd.model.networking import (
    EnvoyFilter,
    Gateway,
    ServiceEntry,
    Sidecar,
    WorkloadEntry,
    WorkloadGroup,
)
from xdsd.model.rules import DestinationRule, VirtualService
from xdsd.model.security import AuthorizationPolicy, PeerAuthentication, RequestAuthentication
from xdsd.model.service import (
    DOMAIN_SUFFIX,
    NO_ORIGIN,
    CertificateFile,
    CertificateRef,
    Origin,
    ResourceKey,
    Service,
)


@dataclass(frozen=True, slots=True)
class RawResource:
    """A raw Envoy resource passed through unchanged (the escape hatch).

    ``payload`` is the message's deterministic wire encoding, already validated against
    its proto by the source that read it; ``type_url`` names its message type.
    """

    type_url: str
    name: str
    payload: bytes
    origin: Origin = field(default=NO_ORIGIN, compare=False, repr=False)


#: What a config document defines: one model object of a kind xdsd reads (not an Envoy
#: resource, which is ``xdsd.resources.Resource``; raw Envoy resources are ``RawResource``).
MeshObject = (
    Service
    | VirtualService
    | DestinationRule
    | Gateway
    | Sidecar
    | EnvoyFilter
    | ServiceEntry
    | WorkloadEntry
    | WorkloadGroup
    | AuthorizationPolicy
    | PeerAuthentication
    | RequestAuthentication
    | GatewayAPIObject
)


#: The kinds a mesh holds as sorted tuples without indexes, by kind: the field's name.
OTHER_KINDS = {
    "Gateway": "gateways",
    "Sidecar": "sidecars",
    "EnvoyFilter": "envoy_filters",
    "ServiceEntry": "service_entries",
    "WorkloadEntry": "workload_entries",
    "WorkloadGroup": "workload_groups",
    "AuthorizationPolicy": "authorization_policies",
    "PeerAuthentication": "peer_authentications",
    "RequestAuthentication": "request_authentications",
}


@dataclass(frozen=True, slots=True)
class Mesh:
    """An immutable, cross-checked set of resources.

    Tuples are sorted by key so that the same files always give the same mesh, whatever
    the order they were read in. Lookups are by host name as a rule written in
    ``namespace`` would mean it.
    """

    services: tuple[Service, ...] = ()
    virtual_services: tuple[VirtualService, ...] = ()
    destination_rules: tuple[DestinationRule, ...] = ()
    raw_resources: tuple[RawResource, ...] = ()
    gateways: tuple[Gateway, ...] = ()
    sidecars: tuple[Sidecar, ...] = ()
    envoy_filters: tuple[EnvoyFilter, ...] = ()
    service_entries: tuple[ServiceEntry, ...] = ()
    workload_entries: tuple[WorkloadEntry, ...] = ()
    #: WorkloadGroups (files only); registered workloads are among ``workload_entries``
    #: (their ``group`` set) and the endpoints of the services they serve.
    workload_groups: tuple[WorkloadGroup, ...] = ()
    authorization_policies: tuple[AuthorizationPolicy, ...] = ()
    peer_authentications: tuple[PeerAuthentication, ...] = ()
    request_authentications: tuple[RequestAuthentication, ...] = ()
    #: The Gateway API objects as written (their meaning is converted into ``gateways``
    #: and ``virtual_services``, and their status conditions kept here).
    gateway_api: GatewayAPI = NO_GATEWAY_API
    #: The status conditions of the Gateway API objects, as the conversion found them
    #: (``sources.gateway_api.convert``): what Kubernetes would write back, for the
    #: status views.
    gateway_conditions: tuple[Condition, ...] = ()
    #: The certificate and key files the rules name, with their bytes, by path (read by
    #: the sources on every load, so that a file replaced on disk changes the mesh).
    certificates: tuple[CertificateFile, ...] = ()
    _hosts: dict[str, Service] = field(default_factory=dict, compare=False, repr=False)
    _rules: dict[ResourceKey, DestinationRule] = field(
        default_factory=dict, compare=False, repr=False
    )
    _by_path: dict[str, bytes] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        by_key = attrgetter("key")  # a slot: read in C
        object.__setattr__(self, "services", tuple(sorted(self.services, key=by_key)))
        object.__setattr__(
            self, "virtual_services", tuple(sorted(self.virtual_services, key=by_key))
        )
        object.__setattr__(
            self, "destination_rules", tuple(sorted(self.destination_rules, key=by_key))
        )
        object.__setattr__(
            self,
            "raw_resources",
            tuple(sorted(self.raw_resources, key=lambda r: (r.type_url, r.name))),
        )
        for name in OTHER_KINDS.values():
            object.__setattr__(self, name, tuple(sorted(getattr(self, name), key=by_key)))
        hosts = self._hosts
        for svc in self.services:
            hosts.setdefault(svc.fqdn, svc)
            for host in svc.hosts:
                hosts.setdefault(host, svc)
        for rule in self.destination_rules:
            target = self.service(rule.host, rule.namespace)
            if target is None:
                continue
            current = self._rules.get(target.key)
            if current is None or (
                current.namespace != target.namespace and rule.namespace == target.namespace
            ):
                self._rules[target.key] = rule

    def with_virtual_services(
        self, virtual_services: tuple[VirtualService, ...], raw_resources: tuple[RawResource, ...]
    ) -> Mesh:
        """This mesh's services and destination rules with other virtual services and raw
        resources (the host and rule indexes are shared, not built again)."""
        mesh = object.__new__(Mesh)
        for name, value in (
            ("services", self.services),
            ("virtual_services", tuple(sorted(virtual_services, key=lambda v: v.key))),
            ("destination_rules", self.destination_rules),
            ("raw_resources", tuple(sorted(raw_resources, key=lambda r: (r.type_url, r.name)))),
            *((name, getattr(self, name)) for name in OTHER_KINDS.values()),
            ("gateway_api", self.gateway_api),
            ("gateway_conditions", self.gateway_conditions),
            ("certificates", self.certificates),
            ("_by_path", self._by_path),
            ("_hosts", self._hosts),
            ("_rules", self._rules),
        ):
            object.__setattr__(mesh, name, value)
        return mesh

    def with_certificates(self, certificates: tuple[CertificateFile, ...]) -> Mesh:
        """This mesh with other certificate file contents (sorted by path; indexes
        shared, not built again)."""
        mesh = object.__new__(Mesh)
        for name in Mesh.__dataclass_fields__:
            object.__setattr__(mesh, name, getattr(self, name))
        ordered = tuple(sorted(certificates, key=lambda c: c.path))
        object.__setattr__(mesh, "certificates", ordered)
        object.__setattr__(mesh, "_by_path", {})
        return mesh

    def with_gateway_conditions(self, conditions: tuple[Condition, ...]) -> Mesh:
        """This mesh with other Gateway API status conditions (indexes shared)."""
        mesh = object.__new__(Mesh)
        for name in Mesh.__dataclass_fields__:
            object.__setattr__(mesh, name, getattr(self, name))
        object.__setattr__(mesh, "gateway_conditions", conditions)
        return mesh

    def certificate(self, path: str) -> bytes | None:
        """The bytes of the certificate file at ``path`` (None when not loaded)."""
        if len(self._by_path) != len(self.certificates):
            self._by_path.update((c.path, c.data) for c in self.certificates)
        return self._by_path.get(path)

    def gateway_certificate_refs(self) -> list[CertificateRef]:
        """The certificate files Gateway servers terminating TLS name."""
        refs: list[CertificateRef] = []
        for gateway in self.gateways:
            for server in gateway.servers:
                if server.tls is not None:
                    refs.extend(server.tls.refs)
        return refs

    def service(self, host: str, namespace: str) -> Service | None:
        """The service ``host`` names when written in ``namespace``.

        ``reviews`` means ``reviews.<namespace>.svc.cluster.local``; ``reviews.other`` and
        ``reviews.other.svc`` are completed the same way; full names and a service's extra
        ``hosts`` match exactly.
        """
        found = self._hosts.get(host)
        if found is not None:
            return found
        return self._hosts.get(qualify_host(host, namespace))

    def matches(self, pattern: str) -> bool:
        """True when the wildcard host ``pattern`` matches a service's full name or one of
        its extra ``hosts`` (``wildcard_matches``)."""
        return any(wildcard_matches(pattern, name) for name in self._hosts)

    def service_by_name(self, namespace: str, name: str) -> Service | None:
        """The service with this namespace and name."""
        return self._hosts.get(f"{name}.{namespace}.{DOMAIN_SUFFIX}")

    def destination_rule(self, service: Service) -> DestinationRule | None:
        """The DestinationRule that applies to ``service``, preferring one in the service's
        own namespace (Istio's lookup order), else the first by key."""
        return self._rules.get(service.key)


def is_wildcard(host: str) -> bool:
    """True for a wildcard host as Istio writes one: ``*`` or ``*`` then a suffix."""
    return host.startswith("*")


def wildcard_matches(pattern: str, name: str) -> bool:
    """True when the wildcard host ``pattern`` (``is_wildcard``) matches the host name
    ``name``, ignoring case: ``*`` matches every name, ``*.example.com`` every name ending
    in ``.example.com``. Never qualified with a namespace (as in Istio, a wildcard is a
    full name)."""
    return name.lower().endswith(pattern[1:].lower())


def qualify_host(host: str, namespace: str) -> str:
    """Complete a short Kubernetes-style host name: ``a`` → ``a.ns.svc.cluster.local``,
    ``a.b`` → ``a.b.svc.cluster.local``, ``a.b.svc`` → ``a.b.svc.cluster.local``. Other names
    are returned unchanged."""
    parts = host.split(".")
    if len(parts) == 1:
        return f"{host}.{namespace}.{DOMAIN_SUFFIX}"
    if len(parts) == 2:
        return f"{host}.{DOMAIN_SUFFIX}"
    if len(parts) == 3 and parts[2] == "svc":
        return f"{host}.cluster.local"
    return host
