"""The backends of L4 and gRPC routes: a ``backendRef`` → the ``Destination`` it means.

Pure. ``resolve_backend`` looks a backendRef up among the mesh's services: a Service
(core group, kind ``Service``) in the route's namespace, or in another namespace when a
ReferenceGrant there lets the route's kind refer to it; its ``port`` is required and must
be one of the service's. Anything else is the ``ResolvedRefs`` condition Kubernetes
would have written, with the API's reason (``InvalidKind``, ``RefNotPermitted``,
``BackendNotFound``, ``UnsupportedProtocol``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from xdsd.model import Service
from xdsd.model.gateway_api import (
    GATEWAY_GROUP,
    BackendRef,
    Condition,
    ReferenceGrant,
    Route,
)
from xdsd.model.rules import Destination
from xdsd.model.service import Port

#: Checks a backend's port: None when it may serve the route, else why not.
PortCheck = Callable[[Service, Port], str | None]


@dataclass(frozen=True, slots=True)
class Resolved:
    """A backendRef resolved: the destination (None when refused) and, when refused,
    the ``ResolvedRefs`` condition saying why."""

    destination: Destination | None
    weight: int
    refusal: Condition | None = None


def granted(
    grants: Sequence[ReferenceGrant], route: Route, namespace: str, group: str, kind: str, name: str
) -> bool:
    """True when a ReferenceGrant in ``namespace`` lets ``route`` (its kind, from its
    namespace) refer to the ``group``/``kind`` object ``name`` there."""
    for grant in grants:
        if grant.namespace != namespace:
            continue
        if not any(
            g == GATEWAY_GROUP and k == route.kind and ns == route.namespace
            for g, k, ns in grant.from_
        ):
            continue
        if any(g == group and k == kind and n in ("", name) for g, k, n in grant.to):
            return True
    return False


def resolve_backend(
    route: Route,
    scope: str,
    backend: BackendRef,
    services: Sequence[Service],
    grants: Sequence[ReferenceGrant],
    port_check: PortCheck | None = None,
) -> Resolved:
    """What ``backend`` (at ``scope``, e.g. ``rules[0].backendRefs[1]``) of ``route``
    means: the service's ``Destination`` (its canonical name and the port), or a
    ``ResolvedRefs`` False condition with the API's reason."""
    ref = backend.ref

    def refuse(reason: str, message: str) -> Resolved:
        return Resolved(
            None,
            backend.weight,
            Condition(route.key, "ResolvedRefs", False, reason, message, scope),
        )

    if ref.group not in ("", "core") or ref.kind != "Service":
        return refuse(
            "InvalidKind", f"backend kind {ref.group or 'core'}/{ref.kind} is not a Service"
        )
    namespace = ref.namespace or route.namespace
    if namespace != route.namespace and not granted(
        grants, route, namespace, "", "Service", ref.name
    ):
        return refuse(
            "RefNotPermitted",
            f"no ReferenceGrant in namespace {namespace!r} lets {route.kind}s of "
            f"{route.namespace!r} refer to Service {ref.name!r}",
        )
    found = next(
        (s for s in services if not s.entry and s.namespace == namespace and s.name == ref.name),
        None,
    )
    if found is None:
        return refuse("BackendNotFound", f"no Service {namespace}/{ref.name}")
    if not ref.port:
        return refuse("BackendNotFound", f"Service {namespace}/{ref.name}: port is required")
    port = next((p for p in found.ports if p.number == ref.port), None)
    if port is None:
        ports = ", ".join(str(p.number) for p in found.ports) or "(none)"
        return refuse(
            "BackendNotFound",
            f"Service {namespace}/{ref.name} has no port {ref.port}: use one of {ports}",
        )
    if port_check is not None:
        why = port_check(found, port)
        if why is not None:
            return refuse("UnsupportedProtocol", why)
    return Resolved(Destination(found.fqdn, port=ref.port), backend.weight)
