"""GRPCRoute, as VirtualService ``http`` rules on the Gateway it attaches to.

Pure. What each field becomes (``docs/rules.md``, "Gateway API"):

- ``hostnames`` and ``parentRefs``: attached as HTTPRoutes are (``l4.attach``: listeners
  of protocol HTTP or HTTPS taking GRPCRoutes, hostnames intersected with the
  listener's); the VirtualService is bound to the converted Gateway, hosts = those names.
- ``matches[].method``: a gRPC request is a POST to ``/SERVICE/METHOD``, so type
  ``Exact`` (the default) with service and method is an exact path, with the service
  alone the prefix ``/SERVICE/``, with the method alone the regex ``/[^/]+/METHOD``;
  type ``RegularExpression`` is the regex ``/SERVICE/METHOD``, a missing part
  ``[^/]+``. No match at all is the prefix ``/``. ``matches[].headers`` (Exact,
  RegularExpression) are header matches, names lower case.
- ``filters``: RequestHeaderModifier and ResponseHeaderModifier → the rule's header
  operations; RequestMirror → a mirror (its backend resolved as a backendRef); a
  backendRef's own header modifiers → that destination's. Any other filter
  (ExtensionRef) makes the rule answer 500 (as HTTPRoute's): ``Accepted`` False,
  ``UnsupportedValue``, at ``rules[N].filters[K]``; so does any other filter of a
  backendRef (a RequestMirror there: ``backends.backend_filter_refusals``), at
  ``rules[N].backendRefs[M].filters[K]``.
- ``backendRefs``: weighted destinations. The backend's port must speak HTTP/2 upstream:
  an xdsd Service port of protocol GRPC or HTTP2 (xdsd's ports have no ``appProtocol``;
  their protocol is what says it). Another port, a missing Service, a cross-namespace
  one without a ReferenceGrant are ``ResolvedRefs`` False (``UnsupportedProtocol``,
  ``BackendNotFound``, ``RefNotPermitted``) and keep their share of the requests,
  answered 500 (as HTTPRoute's, ``http.py``); a rule with none that resolves (or none
  written) answers 500.
- Precedence (the API's, within and across GRPCRoutes of a listener): each match is a
  rule of its own, sorted by the longest exact hostname, the longest hostname, the
  longest service, the longest method, the most header matches, then the route's key
  and the rule's order (``precedence``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from xdsd.model import Service, VirtualService
from xdsd.model.gateway_api import (
    BackendRef,
    Condition,
    HeaderModifier,
    KubeGateway,
    ReferenceGrant,
    Route,
    RouteFilter,
    RouteMatch,
)
from xdsd.model.rules import (
    UNRESOLVED_BACKEND_HOST,
    Destination,
    DirectResponse,
    HeaderMatch,
    HeaderOperations,
    Headers,
    HTTPMatch,
    HTTPRoute,
    MatchKind,
    Mirror,
    RouteDestination,
    StringMatch,
)
from xdsd.model.service import Port, ResourceKey
from xdsd.sources.gateway_api import conditions as cond
from xdsd.sources.gateway_api.attach import Attachment, attach
from xdsd.sources.gateway_api.backends import backend_filter_refusals, resolve_destination
from xdsd.sources.gateway_api.common import GRPC_SEGMENT
from xdsd.sources.gateway_api.names import PREFIX

#: What a path segment of a gRPC request is, in a regex.
_SEGMENT = GRPC_SEGMENT
#: The filter types a GRPCRoute rule may carry and xdsd serves.
SERVED_FILTERS = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror")


def http2_port(service: Service, port: Port) -> str | None:
    """The backend port check of a GRPCRoute: None when ``port`` speaks HTTP/2 upstream
    (protocol GRPC or HTTP2), else why not."""
    if port.protocol.is_http2:
        return None
    return (
        f"Service {service.namespace}/{service.name} port {port.number} is "
        f"{port.protocol.value}: a GRPCRoute needs a port of protocol GRPC or HTTP2"
    )


def method_match(match: RouteMatch) -> StringMatch:
    """The path match of a GRPCRoute match's method (see the module doc)."""
    service, method = match.grpc_service, match.grpc_method
    if match.grpc_type == "RegularExpression":
        return StringMatch(MatchKind.REGEX, f"/{service or _SEGMENT}/{method or _SEGMENT}")
    if service and method:
        return StringMatch(MatchKind.EXACT, f"/{service}/{method}")
    if service:
        return StringMatch(MatchKind.PREFIX, f"/{service}/")
    if method:
        return StringMatch(MatchKind.REGEX, f"/{_SEGMENT}/{re.escape(method)}")
    return StringMatch(MatchKind.PREFIX, "/")


def http_match(match: RouteMatch) -> HTTPMatch:
    """The Istio match block of one GRPCRoute match."""
    headers = tuple(
        HeaderMatch(
            h.name.lower(),
            StringMatch(
                MatchKind.REGEX if h.type == "RegularExpression" else MatchKind.EXACT, h.value
            ),
        )
        for h in match.headers
    )
    return HTTPMatch(uri=method_match(match), headers=headers)


def _operations(modifier: HeaderModifier | None) -> HeaderOperations | None:
    if modifier is None:
        return None
    return HeaderOperations(modifier.set, modifier.add, modifier.remove)


def _headers(filters: Sequence[RouteFilter]) -> Headers | None:
    request = next(
        (_operations(f.request_header_modifier) for f in filters if f.request_header_modifier),
        None,
    )
    response = next(
        (_operations(f.response_header_modifier) for f in filters if f.response_header_modifier),
        None,
    )
    return Headers(request, response) if request or response else None


@dataclass(frozen=True, slots=True)
class RankedRule:
    """One Istio http rule of a GRPCRoute, with the key it is sorted by among the rules
    of the routes on a listener and hostname (smaller first)."""

    precedence: tuple[object, ...]
    rule: HTTPRoute


def precedence(
    hostname: str, match: RouteMatch | None, route: Route, index: int
) -> tuple[object, ...]:
    """The API's precedence of a GRPCRoute match on ``hostname`` as a sort key."""
    exact = "" if hostname.startswith("*") else hostname
    service = match.grpc_service if match is not None else ""
    method = match.grpc_method if match is not None else ""
    headers = len(match.headers) if match is not None else 0
    return (
        -len(exact),
        -len(hostname),
        -len(service),
        -len(method),
        -headers,
        route.namespace,
        route.name,
        index,
    )


def grpc_rules(
    attachment: Attachment,
    services: Sequence[Service],
    grants: Sequence[ReferenceGrant],
) -> tuple[tuple[RankedRule, ...], tuple[Condition, ...]]:
    """The ranked http rules ``route`` gives on one listener, and the conditions of its
    rules, filters and backends (see the module doc)."""
    route = attachment.route
    hostname = attachment.hostnames[0] if attachment.hostnames else ""
    ranked: list[RankedRule] = []
    conditions: list[Condition] = []
    for i, rule in enumerate(route.rules):
        unsupported = [
            (k, f.type) for k, f in enumerate(rule.filters) if f.type not in SERVED_FILTERS
        ]
        if unsupported:
            k, kind = unsupported[0]
            conditions.append(
                Condition(
                    route.key,
                    "Accepted",
                    False,
                    "UnsupportedValue",
                    f"filter {kind!r} is not served on a GRPCRoute: the rule answers 500",
                    f"rules[{i}].filters[{k}]",
                )
            )
        refusals = backend_filter_refusals(route, i)
        conditions.extend(refusals)
        destinations: list[RouteDestination] = []
        for j, backend in enumerate(rule.backend_refs):
            scope = f"rules[{i}].backendRefs[{j}]"
            resolved = resolve_destination(route, scope, backend, services, grants, http2_port)
            if resolved.refusal is not None:
                conditions.append(resolved.refusal)
            if resolved.weight > 0:
                # a backend that does not resolve keeps its share, answered 500
                where = resolved.destination or Destination(UNRESOLVED_BACKEND_HOST)
                destinations.append(
                    RouteDestination(where, resolved.weight, _headers(backend.filters))
                )
        mirrors: list[Mirror] = []
        for k, f in enumerate(rule.filters):
            if f.mirror is None:
                continue
            scope = f"rules[{i}].filters[{k}].requestMirror.backendRef"
            resolved = resolve_destination(
                route, scope, BackendRef(f.mirror), services, grants, http2_port
            )
            if resolved.refusal is not None:
                conditions.append(resolved.refusal)
            elif resolved.destination is not None:
                percent = 100.0 if f.mirror_percent is None else f.mirror_percent
                mirrors.append(Mirror(resolved.destination, percent))
        if (
            unsupported
            or refusals
            or all(d.destination.host == UNRESOLVED_BACKEND_HOST for d in destinations)
        ):
            destinations = []
        base = HTTPRoute(
            name=f"{route.namespace}.{route.name}.{rule.name or i}",
            route=tuple(destinations),
            direct_response=None if destinations else DirectResponse(500),
            mirrors=tuple(mirrors) if destinations else (),
            headers=_headers(rule.filters) if destinations else None,
        )
        for match in rule.matches or (None,):
            block = (
                HTTPMatch(uri=StringMatch(MatchKind.PREFIX, "/"))
                if match is None
                else http_match(match)
            )
            ranked.append(
                RankedRule(
                    precedence(hostname, match, route, i),
                    HTTPRoute(
                        name=base.name,
                        match=(block,),
                        route=base.route,
                        direct_response=base.direct_response,
                        mirrors=base.mirrors,
                        headers=base.headers,
                    ),
                )
            )
    return tuple(ranked), tuple(conditions)


def grpc_virtual_service(
    attachment: Attachment,
    gateway_ref: str,
    services: Sequence[Service],
    grants: Sequence[ReferenceGrant],
    name: str,
) -> tuple[VirtualService, tuple[Condition, ...]]:
    """The GRPCRoute of ``attachment`` on its listener as a VirtualService of its own
    (``name``, bound to the converted Gateway ``gateway_ref``, hosts the attachment's
    hostnames, served on the attachment's listener alone), its rules in precedence
    order, and the conditions (``grpc_rules``)."""
    route = attachment.route
    ranked, conditions = grpc_rules(attachment, services, grants)
    rules = tuple(r.rule for r in sorted(ranked, key=lambda r: r.precedence))
    vs = VirtualService(
        name=name,
        namespace=route.namespace,
        hosts=attachment.hostnames,
        gateways=(gateway_ref,),
        http=rules,
        listener=attachment.listener.name,
        origin=route.origin,
    )
    return vs, conditions


def convert_grpc_routes(
    routes: Sequence[Route],
    gateways: Mapping[tuple[str, str], KubeGateway],
    gateway_ref: Callable[[KubeGateway], str],
    services: Sequence[Service],
    grants: Sequence[ReferenceGrant],
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
    rejected: Mapping[tuple[ResourceKey, int], str] | None = None,
) -> tuple[tuple[VirtualService, ...], tuple[Condition, ...]]:
    """The GRPCRoutes of ``routes`` (others skipped), in key order, attached
    (``attach.attach``) to ``gateways`` (xdsd's, by (namespace, name)), each attachment
    a VirtualService ``gateway-api.grpcroute.ROUTE.N`` bound to ``gateway_ref(gateway)``; with the
    parents' conditions and ``ResolvedRefs``; the parents in ``rejected``
    (``attach.kind_conflicts``) attach nothing."""
    out: list[VirtualService] = []
    conditions: list[Condition] = []
    for route in sorted(routes, key=lambda r: r.key):
        if route.kind != "GRPCRoute":
            continue
        attachments, parents = attach(route, gateways, namespace_labels, rejected)
        conditions.extend(parents)
        found: list[Condition] = []
        for n, attachment in enumerate(attachments):
            name = f"{PREFIX}grpcroute.{route.name}.{n}"
            vs, more = grpc_virtual_service(
                attachment, gateway_ref(attachment.gateway), services, grants, name
            )
            out.append(vs)
            found.extend(c for c in more if c not in found)
        conditions.extend(found)
        if attachments and not any(c.type == cond.RESOLVED_REFS for c in found):
            conditions.append(cond.ok(route.key, cond.RESOLVED_REFS))
    return tuple(out), tuple(conditions)
