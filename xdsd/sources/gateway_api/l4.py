"""TLS Passthrough, TCP and UDP listeners, TLSRoute, TCPRoute and UDPRoute, as Istio's
kinds (and, for UDP, an xdsd extension of the Gateway server).

Pure. What each becomes (``docs/rules.md``, "Gateway API"):

- A listener of protocol ``TLS`` with ``tls.mode: Passthrough`` → a Gateway server of
  protocol TLS, mode PASSTHROUGH, hosts the listener's ``hostname`` (``*`` without
  one); ``tls.mode: Terminate`` on a TLS listener is not served (the listener's
  ``Accepted`` False, ``UnsupportedValue``).
- A listener of protocol ``TCP`` → a Gateway server of protocol TCP, hosts ``*``.
- A listener of protocol ``UDP`` → a Gateway server of protocol UDP, hosts ``*``,
  whose ``datagrams_to`` ``convert`` sets from its UDPRoute (``udp_backend``): the
  first rule's weighted backends, UDP ports of Services; one UDPRoute per listener, as
  for TCP.
- A TLSRoute attached to a Passthrough listener → a VirtualService bound to that
  Gateway, one ``tls`` rule per route rule, matched by ``sniHosts`` = the route's
  hostnames intersected with the listener's and the listener's port, routing to the
  rule's weighted backends.
- A TCPRoute attached to a TCP listener → a VirtualService with one ``tcp`` rule (the
  listener's port) over its weighted backends. A TCP listener cannot tell connections
  apart: it serves one route's one rule; a later rule is not accepted (``Accepted``
  False, ``UnsupportedValue``). Of several TCPRoutes on one listener, and of several
  TLSRoutes for one SNI hostname on one listener, the first by namespace/name routes;
  the others stay attached (``Accepted`` True, as the API's conformance tests ask of
  TCPRoutes) and route nothing there, with a warning naming the route that does.

Backends that do not resolve (``backends.resolve_backend``) are left out of their rule
(its connections' share goes to the others; with none left the listener refuses the
connection, as the API asks), each with its ``ResolvedRefs`` condition.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from xdsd.errors import Problem, Severity
from xdsd.model import Service, VirtualService
from xdsd.model.gateway_api import (
    Condition,
    KubeGateway,
    Listener,
    ReferenceGrant,
    Route,
)
from xdsd.model.networking import EntryPort, Server, ServerTLS, ServerTLSMode
from xdsd.model.rules import L4Match, L4Route, RouteDestination
from xdsd.model.service import Protocol, Resolution, ResourceKey, line_of
from xdsd.sources.gateway_api import conditions as cond
from xdsd.sources.gateway_api.attach import Attachment, attach
from xdsd.sources.gateway_api.backends import resolve_destination
from xdsd.sources.gateway_api.names import PREFIX


def listener_server(gateway: KubeGateway, listener: Listener) -> Server | Condition | None:
    """The Gateway server a TLS or TCP listener becomes, or the ``Accepted`` False
    condition of a TLS listener xdsd does not serve (Terminate); None for other
    protocols (HTTP, HTTPS: not this module's)."""
    scope = cond.listener_scope(listener.name)
    port = EntryPort(listener.port, Protocol.TCP, listener.name, 0, listener.protocol)
    if listener.protocol == "TLS":
        mode = listener.tls.mode if listener.tls is not None else ""
        if mode != "Passthrough":
            return Condition(
                gateway.key,
                "Accepted",
                False,
                "UnsupportedValue",
                f"tls.mode {mode or '(none)'!r} on a TLS listener: xdsd serves TLS "
                "listeners in Passthrough mode (terminate TLS with an HTTPS listener)",
                scope,
            )
        return Server(
            EntryPort(listener.port, Protocol.TLS, listener.name, 0, "TLS"),
            (listener.hostname or "*",),
            ServerTLS(ServerTLSMode.PASSTHROUGH),
            name=listener.name,
        )
    if listener.protocol == "TCP":
        return Server(port, ("*",), name=listener.name)
    if listener.protocol == "UDP":
        udp = EntryPort(listener.port, Protocol.UDP, listener.name, 0, "UDP")
        return Server(udp, ("*",), name=listener.name)
    return None


def unsupported_problem(origin_path: str, line: int, field: str, message: str) -> Problem:
    """A warning naming what xdsd does not serve, at its file and line."""
    return Problem(origin_path, line, field, message, Severity.WARNING)


def _held_problem(
    route: Route, attachment: Attachment, owner: ResourceKey, hosts: tuple[str, ...]
) -> Problem:
    """The warning of a TCPRoute (UDPRoute) on a TCP (UDP) listener another route
    holds, or of a
    TLSRoute hostname (``hosts``) another TLSRoute holds on its listener: at the
    hostname's line, else the parent's."""
    listener = attachment.listener
    parent = f"parentRefs[{attachment.parent}]"
    line = line_of(route.lines, parent, route.origin.line)
    field = f"spec.{parent}"
    if hosts and hosts[0] in route.hostnames:
        index = route.hostnames.index(hosts[0])
        line = line_of(route.lines, f"hostnames[{index}]", line)
        field = f"spec.hostnames[{index}]"
    what = f"SNI {hosts[0]!r}" if hosts else "its connections"
    if route.kind == "UDPRoute":
        what = "its datagrams"
    return Problem(
        route.origin.path,
        line,
        field,
        f"{route.kind} {route.namespace}/{route.name}: {what} on listener "
        f"{listener.name!r} of Gateway {attachment.gateway.namespace}/"
        f"{attachment.gateway.name} go to {owner.kind} {owner.namespace}/{owner.name}, "
        "the first by namespace/name; this route is attached there but routes none of them",
        Severity.WARNING,
    )


def udp_backend(
    attachment: Attachment, services: Sequence[Service], grants: Sequence[ReferenceGrant]
) -> tuple[tuple[tuple[str, int, int], ...], tuple[Condition, ...]]:
    """Where a UDPRoute sends the datagrams of the UDP listener of ``attachment``: its
    first rule's backends that resolve, with weight above 0 — (canonical host, a UDP
    port of the Service, weight) each, weights summed per backend — and the conditions
    of its backends and rules. Several backends become one cluster of their endpoints
    (``translate.gateways.udp_weighted_cluster``), which needs their addresses: a
    backend Service of DNS resolution among several is not served (``Accepted`` False
    ``UnsupportedValue``); alone, it is its own cluster."""
    route = attachment.route
    conditions: list[Condition] = []
    if len(route.rules) > 1:
        conditions.append(
            cond.failed(
                route.key,
                cond.ACCEPTED,
                cond.UNSUPPORTED_VALUE,
                "a UDP listener serves one rule: rules after the first are not served",
                "rules[1]",
            )
        )
    if not route.rules:
        return (), tuple(conditions)
    weights: dict[tuple[str, int], int] = {}
    by_host = {s.fqdn: s for s in services}
    for j, backend in enumerate(route.rules[0].backend_refs):
        scope = f"rules[0].backendRefs[{j}]"
        resolved = resolve_destination(route, scope, backend, services, grants)
        if resolved.refusal is not None:
            conditions.append(resolved.refusal)
        elif resolved.destination is not None and resolved.weight > 0:
            target = (resolved.destination.host, resolved.destination.port)
            weights[target] = weights.get(target, 0) + resolved.weight
    if len(weights) > 1:
        for host, _ in weights:
            service = by_host.get(host)
            if service is not None and service.resolution is not Resolution.STATIC:
                conditions.append(
                    cond.failed(
                        route.key,
                        cond.ACCEPTED,
                        cond.UNSUPPORTED_VALUE,
                        f"{host} resolves its endpoints by DNS: weighted UDP backends are "
                        "one cluster of their endpoints' addresses, so each must list them",
                        "rules[0]",
                    )
                )
                return (), tuple(conditions)
    return tuple((h, p, w) for (h, p), w in weights.items()), tuple(conditions)


def l4_virtual_service(
    attachment: Attachment,
    gateway_ref: str,
    services: Sequence[Service],
    grants: Sequence[ReferenceGrant],
    name: str,
) -> tuple[VirtualService | None, tuple[Condition, ...]]:
    """The VirtualService (``name``, bound to the converted Gateway ``gateway_ref``) a
    TLSRoute or TCPRoute means on the listener of ``attachment``, and the conditions of
    its backends and rules (see the module doc). None when nothing routes (the listener
    then refuses the connections)."""
    route, listener = attachment.route, attachment.listener
    conditions: list[Condition] = []
    rules: list[L4Route] = []
    lines: list[tuple[str, int]] = []
    field = "tls" if route.kind == "TLSRoute" else "tcp"
    for i, rule in enumerate(route.rules):
        if field == "tcp" and i > 0:
            conditions.append(
                cond.failed(
                    route.key,
                    cond.ACCEPTED,
                    cond.UNSUPPORTED_VALUE,
                    "a TCP listener serves one rule: rules after the first are not served",
                    f"rules[{i}]",
                )
            )
            break
        destinations: list[RouteDestination] = []
        for j, backend in enumerate(rule.backend_refs):
            scope = f"rules[{i}].backendRefs[{j}]"
            resolved = resolve_destination(route, scope, backend, services, grants)
            if resolved.refusal is not None:
                conditions.append(resolved.refusal)
            elif resolved.destination is not None and resolved.weight > 0:
                at = f"{field}[{len(rules)}].route[{len(destinations)}].destination.host"
                lines.append((at, line_of(route.lines, scope, route.origin.line)))
                destinations.append(RouteDestination(resolved.destination, resolved.weight))
        if not destinations:
            continue
        sni = attachment.hostnames if field == "tls" else ()
        match = L4Match(port=listener.port, sni_hosts=sni, gateways=(gateway_ref,))
        rules.append(L4Route((match,), tuple(destinations)))
    if not rules:
        return None, tuple(conditions)
    vs = VirtualService(
        name=name,
        namespace=route.namespace,
        hosts=attachment.hostnames if field == "tls" else ("*",),
        gateways=(gateway_ref,),
        tls=tuple(rules) if field == "tls" else (),
        tcp=tuple(rules) if field == "tcp" else (),
        origin=route.origin,
        lines=tuple(lines),
    )
    return vs, tuple(conditions)


@dataclass(frozen=True, slots=True)
class L4Converted:
    """What the L4 routes give: VirtualServices, conditions, problems (warnings)."""

    virtual_services: tuple[VirtualService, ...] = ()
    conditions: tuple[Condition, ...] = ()
    problems: tuple[Problem, ...] = ()
    #: Each UDP listener's backends, by (Gateway key, listener name): (canonical host,
    #: UDP port, weight) each (``Server.datagrams_to``).
    datagrams: tuple[tuple[tuple[ResourceKey, str], tuple[tuple[str, int, int], ...]], ...] = ()


def convert_l4_routes(
    routes: Sequence[Route],
    gateways: Mapping[tuple[str, str], KubeGateway],
    gateway_ref: Callable[[KubeGateway], str],
    served: Callable[[KubeGateway, Listener], bool],
    services: Sequence[Service],
    grants: Sequence[ReferenceGrant],
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
) -> L4Converted:
    """The TLSRoutes, TCPRoutes and UDPRoutes of ``routes`` (others are skipped), in
    key order, attached (``attach.attach``) to ``gateways`` (xdsd's, by (namespace,
    name)), as VirtualServices named ``gateway-api.tlsroute.ROUTE.N`` (or ``tcproute``; N
    counting its attachments) bound to ``gateway_ref(gateway)``, with their conditions;
    UDPRoutes as ``L4Converted.datagrams`` (no VirtualService). A route attached only
    to listeners xdsd does not serve (``served`` False: TLS Terminate) is not accepted
    there (``UnsupportedValue``)."""
    out: list[VirtualService] = []
    conditions: list[Condition] = []
    problems: list[Problem] = []
    taken: dict[tuple[ResourceKey, str], ResourceKey] = {}
    sni: dict[tuple[ResourceKey, str, str], ResourceKey] = {}
    datagrams: list[tuple[tuple[ResourceKey, str], tuple[tuple[str, int, int], ...]]] = []
    for route in sorted(routes, key=lambda r: r.key):
        if route.kind not in ("TLSRoute", "TCPRoute", "UDPRoute"):
            continue
        attachments, parents = attach(route, gateways, namespace_labels)
        refused = False
        usable: dict[int, int] = {}
        found: list[Condition] = []
        for n, attachment in enumerate(attachments):
            listener = attachment.listener
            if not served(attachment.gateway, listener):
                continue
            # attached (Accepted) even where another route holds the listener or SNI
            usable[attachment.parent] = usable.get(attachment.parent, 0) + 1
            at = (attachment.gateway.key, listener.name)
            if route.kind in ("TCPRoute", "UDPRoute"):
                owner = taken.setdefault(at, route.key)
                if owner != route.key:
                    problems.append(_held_problem(route, attachment, owner, ()))
                    continue
            if route.kind == "UDPRoute":
                targets, more = udp_backend(attachment, services, grants)
                found.extend(c for c in more if c not in found)
                if targets:
                    datagrams.append((at, targets))
                continue
            else:
                hosts = attachment.hostnames
                kept = tuple(h for h in hosts if sni.setdefault((*at, h), route.key) == route.key)
                for host in hosts:
                    owner = sni[(*at, host)]
                    if owner != route.key:
                        problems.append(_held_problem(route, attachment, owner, (host,)))
                if not kept:
                    continue
                attachment = replace(attachment, hostnames=kept)
            name = f"{PREFIX}{route.kind.lower()}.{route.name}.{n}"
            vs, more = l4_virtual_service(
                attachment, gateway_ref(attachment.gateway), services, grants, name
            )
            refused = refused or bool(more)
            found.extend(c for c in more if c not in found)
            if vs is not None:
                out.append(vs)
        for c in parents:
            index = int(c.scope.removeprefix("parentRefs[").rstrip("]"))
            if c.status and not usable.get(index):
                c = cond.failed(
                    route.key,
                    cond.ACCEPTED,
                    cond.UNSUPPORTED_VALUE,
                    "the listeners it attaches to are not served (see the Gateway's conditions)",
                    c.scope,
                )
            conditions.append(c)
        conditions.extend(found)
        if usable and not any(c.type == cond.RESOLVED_REFS for c in found):
            conditions.append(cond.ok(route.key, cond.RESOLVED_REFS))
    return L4Converted(tuple(out), tuple(conditions), tuple(problems), tuple(datagrams))
