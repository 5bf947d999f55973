"""GAMMA: HTTPRoutes and GRPCRoutes whose parent is a Service, for sidecars.

A route with a ``parentRef`` of group ``""`` (or ``core``) and kind ``Service`` applies,
as in Istio, to the sidecars calling that service: every such route of a service becomes
part of one ``VirtualService`` for the service's canonical host, bound to ``mesh``. A
parentRef ``port`` (or a ``sectionName`` naming a port) restricts the route to that port
(``HTTPMatch.port`` on each of its matches). The rules themselves — matches, filters,
backends — mean what they mean on a Gateway: their conversion is the caller's
(``RuleConversion``), shared with the ingress conversion.

Each parentRef gets ``Accepted`` (``NoMatchingParent`` for a Service or port that does
not exist, ``UnsupportedValue`` for what xdsd does not serve: a Service of another
namespace — a "consumer" route —, a port that is not HTTP) and, when accepted,
``ResolvedRefs`` from the rule conversion. What is not served is also a warning, so it
is never dropped silently.

A generated VirtualService is named ``KIND~ROUTE~SERVICE`` (its first route, by key
order, and its service: ``~`` cannot be in a Kubernetes name, so it never meets an
operator's VirtualService key); ``gamma_source`` reads that back, so the check refusing
two rules for one service (``crosscheck/virtual_services.py``) names the route and its
file when an Istio VirtualService and a GAMMA route both target a service.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from xdsd.errors import Problem, Severity
from xdsd.model import Service, VirtualService
from xdsd.model.gateway_api import Condition, ObjectRef, Route
from xdsd.model.rules import HTTPMatch, HTTPRoute
from xdsd.model.service import line_of
from xdsd.sources.gateway_api import conditions as cond

#: The route kinds a Service parent takes.
MESH_ROUTE_KINDS = ("HTTPRoute", "GRPCRoute")
#: The separator of a generated VirtualService's name (never in a Kubernetes name).
NAME_SEPARATOR = "~"


@dataclass(frozen=True, slots=True)
class ConvertedRules:
    """A route's rules as Istio HTTP routes (in the route's precedence order), and its
    unresolved references as (reason, message): ``BackendNotFound``,
    ``RefNotPermitted``, ``InvalidKind``..."""

    rules: tuple[HTTPRoute, ...] = ()
    unresolved: tuple[tuple[str, str], ...] = ()


#: Converts a route's rules for a parent (the ingress conversion's, shared).
RuleConversion = Callable[[Route], ConvertedRules]
#: Orders the rules of every route of one service into one list (Gateway API's
#: precedence across routes); given (route, its rules) in route key order.
RuleOrder = Callable[[Sequence[tuple[Route, tuple[HTTPRoute, ...]]]], tuple[HTTPRoute, ...]]


def in_route_order(routes: Sequence[tuple[Route, tuple[HTTPRoute, ...]]]) -> tuple[HTTPRoute, ...]:
    """Every route's rules, route after route (the default ``RuleOrder``)."""
    return tuple(rule for _route, rules in routes for rule in rules)


@dataclass(frozen=True, slots=True)
class MeshBinding:
    """A route's parentRef ``index`` accepted for ``service`` (``port`` 0: all ports)."""

    route: Route
    index: int
    service: Service
    port: int = 0


@dataclass(frozen=True, slots=True)
class MeshRoutes:
    """What ``mesh_routes`` gives: the VirtualServices, conditions and problems."""

    virtual_services: tuple[VirtualService, ...] = ()
    conditions: tuple[Condition, ...] = ()
    problems: tuple[Problem, ...] = ()


def is_service_parent(ref: ObjectRef) -> bool:
    """True for a parentRef naming a Service (group ``""`` or ``core``)."""
    return ref.kind == "Service" and ref.group in ("", "core")


def parent_line(route: Route, index: int) -> int:
    """The line of the route's parentRef ``index`` (its first line when not recorded)."""
    path = cond.parent_scope(index)
    return line_of(route.lines, path, line_of(route.lines, f"spec.{path}", route.origin.line))


def mesh_routes(
    routes: Sequence[Route],
    services: Sequence[Service],
    convert_rules: RuleConversion,
    order: RuleOrder = in_route_order,
) -> MeshRoutes:
    """The VirtualServices, conditions and problems of the Service parents of
    ``routes`` (see the module doc). Pure; routes without a Service parent give
    nothing, their other parents are the ingress conversion's."""
    by_name = {(s.namespace, s.name): s for s in services if not s.entry}
    conditions: list[Condition] = []
    problems: list[Problem] = []
    bound: dict[tuple[str, str], list[tuple[MeshBinding, tuple[HTTPRoute, ...]]]] = {}
    for route in sorted(routes, key=lambda r: r.key):
        if route.kind not in MESH_ROUTE_KINDS:
            continue
        parents = [(i, p) for i, p in enumerate(route.parent_refs) if is_service_parent(p)]
        if not parents:
            continue
        converted = convert_rules(route)
        if route.hostnames:
            problems.append(
                _problem(route, "hostnames", "hostnames do not apply to a Service parent; ignored")
            )
        for index, ref in parents:
            binding, refused = _bind(route, index, ref, by_name)
            scope = cond.parent_scope(index)
            if binding is None:
                reason, message = refused
                conditions.append(cond.failed(route.key, cond.ACCEPTED, reason, message, scope))
                problems.append(_problem(route, scope, f"not served: {message}"))
                continue
            conditions.append(cond.ok(route.key, cond.ACCEPTED, scope))
            conditions.append(_resolved(route, scope, converted))
            service = binding.service
            bound.setdefault((service.namespace, service.name), []).append(
                (binding, _restricted(converted.rules, binding.port))
            )
    out: list[VirtualService] = []
    for key in sorted(bound):
        pieces = [(b.route, rules) for b, rules in bound[key]]
        out.append(_virtual_service(bound[key][0][0], order(pieces)))
    return MeshRoutes(tuple(out), tuple(conditions), tuple(problems))


def _bind(
    route: Route, index: int, ref: ObjectRef, services: dict[tuple[str, str], Service]
) -> tuple[MeshBinding | None, tuple[str, str]]:
    """The binding of parentRef ``index``, or None with (reason, message)."""
    namespace = ref.namespace or route.namespace
    if namespace != route.namespace:
        return None, (
            cond.UNSUPPORTED_VALUE,
            f"Service {namespace}/{ref.name} is in another namespace: routes for the callers "
            "of one namespace (consumer routes) are not supported",
        )
    service = services.get((namespace, ref.name))
    if service is None:
        return None, (cond.NO_MATCHING_PARENT, f"no Service {namespace}/{ref.name}")
    port = ref.port
    if ref.section_name:
        named = [p for p in service.ports if p.name == ref.section_name]
        if not named:
            return None, (
                cond.NO_MATCHING_PARENT,
                f"Service {namespace}/{ref.name} has no port named {ref.section_name!r}",
            )
        if port and named[0].number != port:
            return None, (
                cond.NO_MATCHING_PARENT,
                f"port {ref.section_name!r} of Service {namespace}/{ref.name} is not {port}",
            )
        port = named[0].number
    if port:
        found = service.routed_port(port)
        if found is None:
            return None, (
                cond.NO_MATCHING_PARENT,
                f"Service {namespace}/{ref.name} has no port {port}",
            )
        if not found.protocol.is_http:
            return None, (
                cond.UNSUPPORTED_VALUE,
                f"port {port} of Service {namespace}/{ref.name} is {found.protocol.value}, "
                f"not a protocol a {route.kind} can route",
            )
    elif not any(p.protocol.is_http for p in service.routed_ports):
        return None, (
            cond.UNSUPPORTED_VALUE,
            f"Service {namespace}/{ref.name} has no HTTP port a {route.kind} can route",
        )
    return MeshBinding(route, index, service, port), ("", "")


def _resolved(route: Route, scope: str, converted: ConvertedRules) -> Condition:
    """ResolvedRefs for one parent: the first unresolved reference's reason, if any."""
    if not converted.unresolved:
        return cond.ok(route.key, cond.RESOLVED_REFS, scope)
    reason, message = converted.unresolved[0]
    return cond.failed(route.key, cond.RESOLVED_REFS, reason, message, scope)


def _restricted(rules: tuple[HTTPRoute, ...], port: int) -> tuple[HTTPRoute, ...]:
    """``rules`` matching only on ``port`` (unchanged for 0)."""
    if not port:
        return rules
    return tuple(
        replace(
            rule,
            match=tuple(replace(m, port=port) for m in rule.match) or (HTTPMatch(port=port),),
        )
        for rule in rules
    )


def _virtual_service(first: MeshBinding, rules: tuple[HTTPRoute, ...]) -> VirtualService:
    """The VirtualService of one service's bindings, ``first`` theirs by route key (its
    origin and parentRef line are the VirtualService's)."""
    service = first.service
    name = NAME_SEPARATOR.join((first.route.kind, first.route.name, service.name))
    return VirtualService(
        name=name,
        namespace=service.namespace,
        hosts=(service.fqdn,),
        gateways=("mesh",),
        http=rules,
        origin=first.route.origin,
        lines=(("hosts[0]", parent_line(first.route, first.index)),),
    )


def gamma_source(vs: VirtualService) -> str:
    """``HTTPRoute ns/name`` for a VirtualService made of GAMMA routes (its first),
    else ""."""
    parts = vs.name.split(NAME_SEPARATOR)
    if len(parts) != 3 or parts[0] not in MESH_ROUTE_KINDS:
        return ""
    return f"{parts[0]} {vs.namespace}/{parts[1]}"


def _problem(route: Route, field: str, message: str) -> Problem:
    """A warning at ``field`` of ``route``."""
    line = line_of(route.lines, field, line_of(route.lines, f"spec.{field}", route.origin.line))
    return Problem(route.origin.path, line, field, f"{route.key}: {message}", Severity.WARNING)
