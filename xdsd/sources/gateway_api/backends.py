"""The backends of L4 and gRPC routes: a ``backendRef`` → the ``Destination`` it means.

Pure. ``resolve_destination`` resolves a backendRef with ``refs.resolve_backend``
(kinds, ReferenceGrants, the service) and then asks for what these routes need: a
``port`` (the API requires one for a Service; an L4 or gRPC destination is a port; a
UDPRoute's is one of the Service's UDP ports), and for gRPC a port speaking HTTP/2
(``port_check``). What does not hold is the
``ResolvedRefs`` False condition Kubernetes would have written, with the API's reason
(``InvalidKind``, ``RefNotPermitted``, ``BackendNotFound``, ``UnsupportedProtocol``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from xdsd.model import Service
from xdsd.model.gateway_api import BackendRef, Condition, ReferenceGrant, Route
from xdsd.model.rules import Destination
from xdsd.model.service import Port
from xdsd.sources.gateway_api import conditions as cond
from xdsd.sources.gateway_api.refs import resolve_backend

#: Checks a backend's port: None when it may serve the route, else why not.
PortCheck = Callable[[Service, Port], str | None]
#: The reason of a backend whose port does not speak the route's protocol.
UNSUPPORTED_PROTOCOL = "UnsupportedProtocol"


@dataclass(frozen=True, slots=True)
class Resolved:
    """A backendRef resolved: the destination (None when refused), its weight and, when
    refused, the ``ResolvedRefs`` condition saying why."""

    destination: Destination | None
    weight: int
    refusal: Condition | None = None


def resolve_destination(
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

    def refuse(reason: str, message: str) -> Resolved:
        return Resolved(
            None,
            backend.weight,
            cond.failed(route.key, cond.RESOLVED_REFS, reason, message, scope),
        )

    ref = backend.ref
    found = resolve_backend(ref, route.kind, route.namespace, services, grants)
    if found.service is None:
        return refuse(found.reason, found.message)
    service = found.service
    number = ref.port or (
        service.ports[0].number if len(service.ports) == 1 and service.entry else 0
    )
    ports = service.datagram_ports if route.kind == "UDPRoute" else service.ports
    port = next((p for p in ports if p.number == number), None)
    if port is None:
        return refuse(
            cond.BACKEND_NOT_FOUND, f"{ref.kind or 'Service'} {ref.name}: port is required"
        )
    if port_check is not None:
        why = port_check(service, port)
        if why is not None:
            return refuse(UNSUPPORTED_PROTOCOL, why)
    return Resolved(Destination(service.fqdn, port=number), backend.weight)


#: The filters a backendRef may carry that xdsd applies to that destination alone (its
#: header operations); any other (a mirror, a redirect, a rewrite, CORS) cannot be
#: scoped to one destination, so its rule answers 500 (``backend_filter_refusals``).
BACKEND_FILTERS = ("RequestHeaderModifier", "ResponseHeaderModifier")


def backend_filter_refusals(route: Route, rule_index: int) -> tuple[Condition, ...]:
    """For each filter of a backendRef of ``route.rules[rule_index]`` not in
    ``BACKEND_FILTERS``: ``Accepted`` False, ``UnsupportedValue``, scoped
    ``rules[N].backendRefs[M].filters[K]``. The API never lets a filter be skipped, so
    a rule with any of these answers 500 (HTTPRoute and GRPCRoute alike): empty means
    the rule's backend filters are all served."""
    out: list[Condition] = []
    for m, backend in enumerate(route.rules[rule_index].backend_refs):
        for k, f in enumerate(backend.filters):
            if f.type in BACKEND_FILTERS:
                continue
            out.append(
                cond.failed(
                    route.key,
                    cond.ACCEPTED,
                    cond.UNSUPPORTED_VALUE,
                    f"filter {f.type!r} is not served on a backendRef (only header "
                    "modifiers are): the rule answers 500",
                    f"rules[{rule_index}].backendRefs[{m}].filters[{k}]",
                )
            )
    return tuple(out)
