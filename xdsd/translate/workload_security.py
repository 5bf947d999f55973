"""Which security policies apply to a workload (the inbound side of a sidecar, or a
gateway's own listeners).

How this works: every ``security.istio.io`` kind selects workloads the same way, by the
node's namespace and labels (``NodeClass.namespace``, ``NodeClass.labels``): a policy in
the root namespace without a selector applies to every workload of the mesh, one in the
root namespace with a selector to the workloads of any namespace it selects (Istio's
AuthorizationPolicy and RequestAuthentication; PeerAuthentication's own precedence is
``peer_authentication.effective_mode``), one in another namespace to that namespace's
workloads (those its selector picks, when it has one). ``WorkloadPolicies`` is the
hashable result, so everything built from it is memoized by it and shared by every class
with the same policies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xdsd.model import Mesh
from xdsd.model.mesh_config import ExtensionProvider, MeshConfig
from xdsd.model.networking import ROOT_NAMESPACE
from xdsd.model.security import (
    AuthorizationPolicy,
    PeerAuthentication,
    RequestAuthentication,
    SecurityObject,
)

#: A filter: its name and its typed config (a protobuf message).
NamedFilter = tuple[str, Any]


@dataclass(frozen=True, slots=True)
class WorkloadPolicies:
    """The security policies that apply to one workload, each tuple in key order, with
    what translating them needs from the settings: the mesh's trust domain (principals
    are ``TRUST_DOMAIN/ns/NS/sa/SERVICE``), its aliases (trust domains whose principals
    count as the mesh's own, as Istio's ``trustDomainAliases``) and the extension
    providers CUSTOM policies name."""

    authorization: tuple[AuthorizationPolicy, ...] = ()
    request_authentication: tuple[RequestAuthentication, ...] = ()
    peer_authentication: tuple[PeerAuthentication, ...] = ()
    trust_domain: str = "cluster.local"
    trust_domain_aliases: tuple[str, ...] = ()
    providers: tuple[ExtensionProvider, ...] = ()

    @property
    def empty(self) -> bool:
        """True when no policy applies (the workload's listeners stay as without any)."""
        return not (self.authorization or self.request_authentication or self.peer_authentication)


NO_POLICIES = WorkloadPolicies()


def applies(policy: SecurityObject, namespace: str, labels: tuple[tuple[str, str], ...]) -> bool:
    """True when ``policy`` selects the workload in ``namespace`` with node ``labels``
    (see the module docstring)."""
    if policy.namespace != namespace and policy.namespace != ROOT_NAMESPACE:
        return False
    return policy.selector is None or policy.selector.selects(labels)


def workload_policies(
    mesh: Mesh, namespace: str, labels: tuple[tuple[str, str], ...], config: MeshConfig
) -> WorkloadPolicies:
    """The policies of ``mesh`` that apply to the workload in ``namespace`` with node
    ``labels`` (sorted by key), under the settings ``config``."""
    if not (
        mesh.authorization_policies or mesh.request_authentications or mesh.peer_authentications
    ):
        return WorkloadPolicies(
            trust_domain=config.mtls.trust_domain,
            trust_domain_aliases=config.mtls.trust_domain_aliases,
        )
    authorization = tuple(p for p in mesh.authorization_policies if applies(p, namespace, labels))
    names = {p.provider for p in authorization if p.provider}
    return WorkloadPolicies(
        authorization=authorization,
        request_authentication=tuple(
            p for p in mesh.request_authentications if applies(p, namespace, labels)
        ),
        peer_authentication=tuple(
            p for p in mesh.peer_authentications if applies(p, namespace, labels)
        ),
        trust_domain=config.mtls.trust_domain,
        trust_domain_aliases=config.mtls.trust_domain_aliases,
        providers=tuple(p for p in config.extension_providers if p.name in names),
    )
