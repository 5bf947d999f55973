"""Who may speak for which node: the daemon's wiring of ``NodeAuthorizer``.

``authorize_mesh`` lets mesh identities (SPIFFE names of the mesh's trust domain) speak
for their own nodes when mesh mutual TLS is on and clients present certificates, and
warns about what is then left open; ``admin_node_access`` decides who may see a node's
resources on the admin server under mTLS.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from xdsd.cache.cache import ClientStatus
from xdsd.model.mesh_config import MeshConfig
from xdsd.settings import Settings
from xdsd.translate import NodeClass
from xdsd.translate.node import ClientKind, Role
from xdsd.transports.limits import NodeAuthorizer, NodeIdentity, certificate_sans

log = logging.getLogger(__name__)


def admin_node_access(
    authorizer: NodeAuthorizer, admin_sans: tuple[str, ...]
) -> Callable[[Mapping[str, Any] | None, ClientStatus], bool]:
    """Who may see a node's resources on the admin server (``AdminViews.node_access``):
    a certificate with one of ``admin_sans``, or one that may speak for that node over
    xDS (``authorizer``, with the role and labels of the node's class)."""
    admins = frozenset(admin_sans)

    def allowed(cert: Mapping[str, Any] | None, client: ClientStatus) -> bool:
        if admins.intersection(certificate_sans(cert)):
            return True
        key = client.key
        if not isinstance(key, NodeClass):
            return False
        role = (
            "gateway"
            if key.role is Role.GATEWAY
            else "proxyless"
            if key.client is ClientKind.GRPC
            else "sidecar"
        )
        identity = NodeIdentity(client.node_id, key.service, key.namespace, role, key.labels)
        return authorizer.allowed(cert, identity)

    return allowed


def authorize_mesh(authorizer: NodeAuthorizer, settings: Settings, mesh: MeshConfig) -> None:
    """Let mesh identities speak for their nodes when mesh mutual TLS is on and clients
    present certificates (at start, and again when SIGHUP brings other ``[mesh]``
    settings), and warn about what is then left open."""
    mtls = mesh.mtls
    authorizer.trust_domain = mtls.trust_domain if mtls.enabled and settings.tls_client_ca else ""
    if settings.tls_client_ca and not authorizer.enforcing:
        log.warning(
            "client certificates are required but authorized_nodes is empty: "
            "any client with a valid certificate may speak for any node"
        )
    if mtls.enabled and not settings.tls_client_ca:
        log.warning(
            "mesh mutual TLS is on but xDS clients are not authenticated "
            "(tls_client_ca): any client that reaches xDS can fetch any service's "
            "private key"
        )
