"""GAMMA: HTTPRoutes and GRPCRoutes whose parent is a Service, for sidecars.

A route with a ``parentRef`` of group ``""`` (or ``core``) and kind ``Service`` applies,
as in Istio, to the sidecars calling that service: every such route of a service becomes
part of one ``VirtualService`` for the service's canonical host, bound to ``mesh``. A
parentRef ``port`` (or a ``sectionName`` naming a port) restricts the route to that port
(``HTTPMatch.port`` on each of its matches). The rules themselves — matches, filters,
backends — mean what they mean on a Gateway: their conversion is the caller's
(``RuleConversion``), shared with the ingress conversion.

A parentRef that is neither a Gateway (the ingress conversion's) nor a Service of an
HTTPRoute or GRPCRoute is ``Accepted`` False ``UnsupportedValue`` and a warning (a
Service with the group left out is the Gateway API group's, not a Service). Each
Service parentRef gets ``Accepted`` (``NoMatchingParent`` for a Service or port that does
not exist, ``UnsupportedValue`` for what xdsd does not serve: a Service of another
namespace — a "consumer" route —, a port that is not HTTP) and, when accepted,
``ResolvedRefs`` from the rule conversion. What is not served is also a warning, so it
is never dropped silently.

A GRPCRoute and an HTTPRoute for one Service (on the same port, or either on all its
ports) are not merged: as GEP-1294 says of route kinds bound to one Service and port,
the GRPCRoute is applied and the HTTPRoute's parent is ``Accepted`` False
``Conflicted``, with a warning naming the GRPCRoute.

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
from xdsd.model.gateway_api import (
    Condition,
    KubeGateway,
    Listener,
    ObjectRef,
    ReferenceGrant,
    Route,
)
from xdsd.model.rules import HTTPMatch, HTTPRoute
from xdsd.model.service import line_of
from xdsd.sources.gateway_api import conditions as cond
from xdsd.sources.gateway_api.attach import Attachment, parent_gateway
from xdsd.sources.gateway_api.backends import backend_filter_refusals
from xdsd.sources.gateway_api.grpc import grpc_rules
from xdsd.sources.gateway_api.http import route_rules

#: The route kinds a Service parent takes.
MESH_ROUTE_KINDS = ("HTTPRoute", "GRPCRoute")
#: The separator of a generated VirtualService's name (never in a Kubernetes name).
NAME_SEPARATOR = "~"


@dataclass(frozen=True, slots=True)
class ConvertedRules:
    """A route's rules as Istio HTTP routes; ``keys`` (when given, one per rule) the
    Gateway API precedence they are sorted by among all the rules of a service's routes
    (else route after route, each route's in its order); its unresolved references as
    (reason, message): ``BackendNotFound``, ``RefNotPermitted``, ``InvalidKind``...;
    and any other condition the rules' conversion found."""

    rules: tuple[HTTPRoute, ...] = ()
    unresolved: tuple[tuple[str, str], ...] = ()
    keys: tuple[tuple[object, ...], ...] = ()
    conditions: tuple[Condition, ...] = ()


#: Converts a route's rules (the ingress conversion's, shared: ``shared_rules``).
RuleConversion = Callable[[Route], ConvertedRules]


def shared_rules(services: Sequence[Service], grants: Sequence[ReferenceGrant]) -> RuleConversion:
    """The rule conversion of the ingress routes, for GAMMA: an HTTPRoute's
    (``http.route_rules``: matches, filters, weighted backends, 500s, precedence) and a
    GRPCRoute's (``grpc.grpc_rules``)."""

    def convert(route: Route) -> ConvertedRules:
        if route.kind == "HTTPRoute":
            ranked, failures = route_rules(route, services, grants)
            return ConvertedRules(
                tuple(r.http for r in ranked),
                tuple(failures),
                tuple((1, *r.order) for r in ranked),
                tuple(
                    c for i in range(len(route.rules)) for c in backend_filter_refusals(route, i)
                ),
            )
        # grpc_rules reads only the route and the hostname of an attachment.
        attachment = Attachment(route, 0, _NO_GATEWAY, _NO_LISTENER, ())
        rules, found = grpc_rules(attachment, services, grants)
        unresolved = tuple(
            (c.reason, c.message) for c in found if c.type == cond.RESOLVED_REFS and not c.status
        )
        others = tuple(c for c in found if c.type != cond.RESOLVED_REFS)
        return ConvertedRules(
            tuple(r.rule for r in rules),
            unresolved,
            tuple((0, *r.precedence) for r in rules),  # gRPC's paths before HTTP's
            others,
        )

    return convert


_NO_GATEWAY = KubeGateway("")
_NO_LISTENER = Listener("", 0, "HTTP")


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
) -> MeshRoutes:
    """The VirtualServices, conditions and problems of the Service parents of
    ``routes`` (see the module doc). Pure; routes without a Service parent give
    nothing, their other parents are the ingress conversion's."""
    by_name = {(s.namespace, s.name): s for s in services if not s.entry}
    conditions: list[Condition] = []
    problems: list[Problem] = []
    bound: dict[tuple[str, str], list[tuple[MeshBinding, ConvertedRules]]] = {}
    grpc = _grpc_bindings(routes, by_name)
    for route in sorted(routes, key=lambda r: r.key):
        for index, ref in enumerate(route.parent_refs):
            why = _other_parent(route, ref)
            if why:
                scope = cond.parent_scope(index)
                conditions.append(
                    cond.failed(route.key, cond.ACCEPTED, cond.UNSUPPORTED_VALUE, why, scope)
                )
                problems.append(_problem(route, scope, f"not served: {why}"))
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
            holder = _grpc_holder(binding, grpc) if route.kind == "HTTPRoute" else None
            if holder is not None:
                message = (
                    f"GRPCRoute {holder.namespace}/{holder.name} routes the callers of Service "
                    f"{binding.service.namespace}/{binding.service.name} on this port: a "
                    "GRPCRoute and an HTTPRoute for one Service are not merged, the GRPCRoute "
                    "applies"
                )
                conditions.append(
                    cond.failed(route.key, cond.ACCEPTED, cond.ROUTE_CONFLICTED, message, scope)
                )
                problems.append(_problem(route, scope, f"not served: {message}"))
                continue
            conditions.append(cond.ok(route.key, cond.ACCEPTED, scope))
            conditions.append(_resolved(route, scope, converted))
            conditions.extend(c for c in converted.conditions if c not in conditions)
            service = binding.service
            bound.setdefault((service.namespace, service.name), []).append(
                (binding, replace(converted, rules=_restricted(converted.rules, binding.port)))
            )
    out: list[VirtualService] = []
    for key in sorted(bound):
        out.append(_virtual_service(bound[key][0][0], _ordered([c for _, c in bound[key]])))
    return MeshRoutes(tuple(out), tuple(conditions), tuple(problems))


def _grpc_bindings(
    routes: Sequence[Route], services: dict[tuple[str, str], Service]
) -> dict[tuple[str, str], list[tuple[int, Route]]]:
    """The (port, GRPCRoute) bound to each Service (by namespace, name)."""
    out: dict[tuple[str, str], list[tuple[int, Route]]] = {}
    for route in sorted(routes, key=lambda r: r.key):
        if route.kind != "GRPCRoute":
            continue
        for index, ref in enumerate(route.parent_refs):
            if not is_service_parent(ref):
                continue
            binding, _ = _bind(route, index, ref, services)
            if binding is not None:
                key = (binding.service.namespace, binding.service.name)
                out.setdefault(key, []).append((binding.port, route))
    return out


def _grpc_holder(
    binding: MeshBinding, grpc: dict[tuple[str, str], list[tuple[int, Route]]]
) -> Route | None:
    """The first GRPCRoute bound to ``binding``'s Service on a port in common with it
    (port 0: every port), or None."""
    for port, route in grpc.get((binding.service.namespace, binding.service.name), ()):
        if not port or not binding.port or port == binding.port:
            return route
    return None


def _other_parent(route: Route, ref: ObjectRef) -> str:
    """Why ``ref`` is a parent no conversion takes ("" for a Gateway, and for a Service
    of a route kind GAMMA takes): the ingress conversion skips what is not a Gateway,
    and this one what is not a Service, so nothing would say it otherwise."""
    if parent_gateway(route, ref) is not None:
        return ""
    if is_service_parent(ref):
        if route.kind in MESH_ROUTE_KINDS:
            return ""
        return f"a {route.kind} cannot have a Service parent (only HTTPRoutes and GRPCRoutes)"
    group = ref.group or '""'
    hint = ' (a Service parent is group "")' if ref.kind == "Service" else ""
    return f"a parent of group {group} and kind {ref.kind} is neither a Gateway nor a Service{hint}"


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


def _ordered(converted: Sequence[ConvertedRules]) -> tuple[HTTPRoute, ...]:
    """The rules of a service's routes (in route key order) in precedence order: by
    their keys when every route has them, else route after route."""
    if all(len(c.keys) == len(c.rules) for c in converted):
        keyed = [(k, r) for c in converted for k, r in zip(c.keys, c.rules, strict=True)]
        keyed.sort(key=lambda kr: kr[0])
        return tuple(r for _, r in keyed)
    return tuple(r for c in converted for r in c.rules)


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
