"""The registry on the streams: a gRPC stream's node that names a WorkloadGroup is
registered while the stream is open (``WorkloadRegistrar``, the transports'
``StreamRegistrar``).

The stream has already authorized its node (``NodeAuthorizer`` against its client
certificate, identities against its token) and classified it when ``attach`` runs, so
the claim handed to the registry — service, namespace, labels, locality, address — is
what the credential allows; the registry decides the rest (``xdsd.registry.registry``).
Its refusals end the stream with their gRPC status, through the transports' ``Refused``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from xdsd.registry.registry import Claim, RegistrationRefused, Registry
from xdsd.translate.node import NodeClass, Role, workload_group_of
from xdsd.transports.limits import Refused

#: The HTTP status a refusal's gRPC status stands for (REST never registers).
_HTTP = {
    "INVALID_ARGUMENT": 400,
    "NOT_FOUND": 404,
    "PERMISSION_DENIED": 403,
    "ALREADY_EXISTS": 409,
    "RESOURCE_EXHAUSTED": 429,
}


class WorkloadRegistrar:
    """Registers streams' nodes into ``registry`` (see the module doc)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def attach(self, node: Any, key: Hashable) -> Callable[[], None] | None:
        """None for a node naming no group; else the registration's detach. Raises
        Refused (reason ``registration_REASON``) for a refused one."""
        group = workload_group_of(node)
        if not group:
            return None
        if not isinstance(key, NodeClass) or key.role is not Role.SIDECAR:
            raise Refused(
                "INVALID_ARGUMENT",
                400,
                "registration_not_sidecar",
                "only a sidecar registers into a WorkloadGroup (not a gateway)",
            )
        claim = Claim(
            node_id=node.id,
            service=key.service,
            namespace=key.namespace,
            group=group,
            address=key.instance_ip,
            labels=key.labels,
            locality=key.locality,
        )
        try:
            attachment = self.registry.attach(claim)
        except RegistrationRefused as e:
            raise Refused(
                e.code, _HTTP.get(e.code, 400), f"registration_{e.reason}", e.message
            ) from None
        return attachment.close
