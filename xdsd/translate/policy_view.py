"""Which security policies apply to a node class, as operators are shown them.

``applied_policies`` is what ``/debug/config_dump``, ``/debug/clients``, the status page
and ``xdsd status`` say about a class: the AuthorizationPolicies, PeerAuthentications and
RequestAuthentications that select its workload (``workload_security.workload_policies``,
the very selection its listeners are built from) and, for a sidecar, the mutual TLS
mode each inbound port ends up with (``peer_authentication.effective_mode`` over the
``[mesh.mtls]`` mode). Pure: it reads a translation, builds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xdsd.model import Service
from xdsd.model.security import AuthorizationPolicy, SecurityObject
from xdsd.translate.mesh import MeshTranslation
from xdsd.translate.node import ClientKind, NodeClass, Role
from xdsd.translate.peer_authentication import effective_mode
from xdsd.translate.sidecar_ports import ingress_service
from xdsd.translate.workload_security import workload_policies


@dataclass(frozen=True, slots=True)
class AppliedPolicy:
    """One policy that selects a workload: its kind, namespace and name, where it was
    read (``path:line``) and, for an AuthorizationPolicy, its action (``DRY-RUN``
    appended under ``istio.io/dry-run``)."""

    kind: str
    namespace: str
    name: str
    origin: str
    action: str = ""

    def __str__(self) -> str:
        action = f" ({self.action})" if self.action else ""
        return f"{self.kind} {self.namespace}/{self.name}{action}"

    def as_json(self) -> dict[str, Any]:
        """This policy as JSON (``action`` only for an AuthorizationPolicy)."""
        out: dict[str, Any] = {"namespace": self.namespace, "name": self.name}
        if self.action:
            out["action"] = self.action
        out["origin"] = self.origin
        return out


@dataclass(frozen=True, slots=True)
class AppliedPolicies:
    """The policies that apply to one node class, by kind (each in key order), and the
    mutual TLS mode of each inbound port (port number, mode; a sidecar's only)."""

    authorization_policies: tuple[AppliedPolicy, ...] = ()
    peer_authentications: tuple[AppliedPolicy, ...] = ()
    request_authentications: tuple[AppliedPolicy, ...] = ()
    mtls: tuple[tuple[int, str], ...] = ()

    def as_json(self) -> dict[str, Any]:
        """The JSON the admin server shows (``docs/operations.md``): a list per kind and
        ``mtls`` mapping each inbound port (as a string) to its mode."""
        return {
            "authorization_policies": [p.as_json() for p in self.authorization_policies],
            "peer_authentications": [p.as_json() for p in self.peer_authentications],
            "request_authentications": [p.as_json() for p in self.request_authentications],
            "mtls": {str(port): mode for port, mode in self.mtls},
        }


NO_APPLIED_POLICIES = AppliedPolicies()


def applied_policies(translation: MeshTranslation, node: NodeClass) -> AppliedPolicies:
    """The policies of ``translation``'s mesh that apply to ``node``'s workload, and its
    inbound ports' mutual TLS modes (none for gateways and proxyless gRPC clients, which
    have no sidecar inbound side). Never raises for what the mesh holds: a Sidecar that
    cannot be translated leaves the ports of the node's own service."""
    policies = workload_policies(
        translation.mesh, node.namespace, node.labels, translation.mesh_config
    )
    mtls: tuple[tuple[int, str], ...] = ()
    if node.role is Role.SIDECAR and node.client is not ClientKind.GRPC:
        default = translation.mesh_config.mtls.mode
        own = _inbound_service(translation, node)
        ports = own.ports if own is not None else ()
        mtls = tuple((port.number, effective_mode(policies, port, default).value) for port in ports)
    return AppliedPolicies(
        authorization_policies=tuple(_applied(p) for p in policies.authorization),
        peer_authentications=tuple(_applied(p) for p in policies.peer_authentication),
        request_authentications=tuple(_applied(p) for p in policies.request_authentication),
        mtls=mtls,
    )


def _inbound_service(translation: MeshTranslation, node: NodeClass) -> Service | None:
    """The service whose ports ``node``'s inbound listeners take (its Sidecar's ingress
    listeners when it has some, as ``parts.ClassParts.inbound`` does)."""
    own = translation.own_service(node)
    sidecar = translation.sidecar(node)
    if sidecar is not None and sidecar.ingress:
        return ingress_service(sidecar, own, node.service, node.namespace)
    return own


def _applied(policy: SecurityObject) -> AppliedPolicy:
    """``policy`` as shown to operators."""
    action = ""
    if isinstance(policy, AuthorizationPolicy):
        action = policy.action.value + (" DRY-RUN" if policy.dry_run else "")
    return AppliedPolicy(
        kind=policy.key.kind,
        namespace=policy.namespace,
        name=policy.name,
        origin=str(policy.origin),
        action=action,
    )
