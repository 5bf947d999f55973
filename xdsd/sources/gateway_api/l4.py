"""TLS Passthrough and TCP listeners, TLSRoute, TCPRoute and UDPRoute, as Istio's kinds.

Pure. What each becomes (``docs/rules.md``, "Gateway API"):

- A listener of protocol ``TLS`` with ``tls.mode: Passthrough`` → a Gateway server of
  protocol TLS, mode PASSTHROUGH, hosts the listener's ``hostname`` (``*`` without
  one); ``tls.mode: Terminate`` on a TLS listener is not served (the listener's
  ``Accepted`` False, ``UnsupportedValue``).
- A listener of protocol ``TCP`` → a Gateway server of protocol TCP, hosts ``*``.
- A listener of protocol ``UDP`` is refused by name: xdsd's gateways have no UDP
  listeners (``Accepted`` False, ``UnsupportedProtocol``, and a warning at the
  Gateway's line), and so is every UDPRoute (``Accepted`` False, ``UnsupportedValue``,
  and a warning at its line): never served, never silently dropped.
- A TLSRoute attached to a Passthrough listener → a VirtualService bound to that
  Gateway, one ``tls`` rule per route rule, matched by ``sniHosts`` = the route's
  hostnames intersected with the listener's and the listener's port, routing to the
  rule's weighted backends.
- A TCPRoute attached to a TCP listener → a VirtualService with one ``tcp`` rule (the
  listener's port) over its weighted backends. A TCP listener cannot tell connections
  apart: it serves one route's one rule; another route (in namespace/name order) or
  rule is not accepted (``Accepted`` False, ``UnsupportedValue``).

Backends that do not resolve (``backends.resolve_backend``) are left out of their rule
(its connections' share goes to the others; with none left the listener refuses the
connection, as the API asks), each with its ``ResolvedRefs`` condition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from xdsd.errors import Problem, Severity
from xdsd.model import Service, VirtualService
from xdsd.model.gateway_api import (
    GATEWAY_GROUP,
    Condition,
    KubeGateway,
    Listener,
    ReferenceGrant,
    Route,
)
from xdsd.model.networking import EntryPort, Server, ServerTLS, ServerTLSMode
from xdsd.model.rules import L4Match, L4Route, RouteDestination
from xdsd.model.service import Protocol, ResourceKey, line_of
from xdsd.sources.gateway_api.backends import resolve_backend

#: The route kinds each listener protocol takes when ``allowedRoutes.kinds`` is empty.
DEFAULT_KINDS: dict[str, tuple[str, ...]] = {
    "HTTP": ("HTTPRoute", "GRPCRoute"),
    "HTTPS": ("HTTPRoute", "GRPCRoute"),
    "TLS": ("TLSRoute",),
    "TCP": ("TCPRoute",),
    "UDP": ("UDPRoute",),
}


@dataclass(frozen=True, slots=True)
class Attachment:
    """A route attached to one listener: the Gateway, the listener, the reference its
    converted Istio Gateway goes by in a VirtualService's ``gateways`` (``ns/name``),
    the route's hostnames that hold there (``()`` = any name the listener takes), and
    the parentRef's scope (``parentRefs[N]``)."""

    gateway: KubeGateway
    listener: Listener
    gateway_ref: str
    hostnames: tuple[str, ...] = ()
    scope: str = ""


def listener_scope(listener: Listener) -> str:
    """How a condition names a listener."""
    return f"listeners[{listener.name}]"


def listener_server(gateway: KubeGateway, listener: Listener) -> Server | Condition | None:
    """The Gateway server a TLS or TCP listener becomes, or the ``Accepted`` False
    condition of a TLS/TCP/UDP listener xdsd does not serve; None for other
    protocols (HTTP, HTTPS: not this module's)."""
    scope = listener_scope(listener)
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
        return Condition(
            gateway.key,
            "Accepted",
            False,
            "UnsupportedProtocol",
            "UDP listeners are not served: xdsd's gateways have no UDP listeners",
            scope,
        )
    return None


def unsupported_problem(origin_path: str, line: int, field: str, message: str) -> Problem:
    """A warning naming what xdsd does not serve, at its file and line."""
    return Problem(origin_path, line, field, message, Severity.WARNING)


def udp_listener_problem(gateway: KubeGateway, listener: Listener, index: int) -> Problem:
    """The warning of a UDP listener, at its line."""
    field = f"spec.listeners[{index}].protocol"
    return unsupported_problem(
        gateway.origin.path,
        line_of(gateway.lines, field, gateway.origin.line),
        field,
        f"listener {listener.name!r}: UDP is not served (xdsd's gateways have no UDP "
        "listeners); the listener is not accepted",
    )


def udp_route(route: Route) -> tuple[Condition, Problem]:
    """A UDPRoute's refusal: its condition and a warning at its line."""
    message = "UDPRoute is not served: xdsd's gateways have no UDP listeners"
    return (
        Condition(route.key, "Accepted", False, "UnsupportedValue", message),
        unsupported_problem(route.origin.path, route.origin.line, "kind", message),
    )


def intersect_hostnames(listener: str, route: Sequence[str]) -> tuple[str, ...] | None:
    """The hostnames a route's ``route`` names and a listener's ``listener`` hostname
    have in common (the more specific of each pair where one covers the other), in
    order; ``()`` when neither restricts (any name); None when they share none."""
    if not route:
        return (listener,) if listener else ()
    if not listener:
        return tuple(dict.fromkeys(h.lower() for h in route))
    out: list[str] = []
    own = listener.lower()
    for host in (h.lower() for h in route):
        common = host if _covers(own, host) else own if _covers(host, own) else ""
        if common and common not in out:
            out.append(common)
    return tuple(out) or None


def _covers(wide: str, name: str) -> bool:
    """True when ``wide`` (a name or ``*.suffix``) covers every name ``name`` covers."""
    if wide == name:
        return True
    if not wide.startswith("*."):
        return False
    suffix = wide[1:]
    return (name[1:] if name.startswith("*.") else name).endswith(suffix) and len(
        name.lstrip("*")
    ) > len(suffix)


def kind_allowed(listener: Listener, kind: str) -> bool:
    """True when ``listener`` takes routes of ``kind``."""
    kinds = listener.allowed_routes.kinds
    if kinds:
        return any(k == kind and g in ("", GATEWAY_GROUP) for g, k in kinds)
    return kind in DEFAULT_KINDS.get(listener.protocol, ())


def l4_virtual_service(
    route: Route,
    attachment: Attachment,
    services: Sequence[Service],
    grants: Sequence[ReferenceGrant],
    origin_name: str,
) -> tuple[VirtualService | None, tuple[Condition, ...]]:
    """The VirtualService (named ``origin_name``) a TLSRoute or TCPRoute means on one
    listener, and the conditions of its backends and rules (see the module doc). None
    when nothing routes (the listener then refuses connections)."""
    listener = attachment.listener
    conditions: list[Condition] = []
    rules: list[L4Route] = []
    lines: list[tuple[str, int]] = []
    field = "tls" if route.kind == "TLSRoute" else "tcp"
    for i, rule in enumerate(route.rules):
        if field == "tcp" and i > 0:
            conditions.append(
                Condition(
                    route.key,
                    "Accepted",
                    False,
                    "UnsupportedValue",
                    "a TCP listener serves one rule: rules after the first are not served",
                    f"rules[{i}]",
                )
            )
            break
        destinations: list[RouteDestination] = []
        for j, backend in enumerate(rule.backend_refs):
            scope = f"rules[{i}].backendRefs[{j}]"
            resolved = resolve_backend(route, scope, backend, services, grants)
            if resolved.refusal is not None:
                conditions.append(resolved.refusal)
            elif resolved.destination is not None and resolved.weight > 0:
                at = f"{field}[{len(rules)}].route[{len(destinations)}].destination.host"
                lines.append((at, line_of(route.lines, f"spec.{scope}", route.origin.line)))
                destinations.append(RouteDestination(resolved.destination, resolved.weight))
        if not destinations:
            continue
        match = L4Match(
            port=listener.port,
            sni_hosts=(attachment.hostnames or ("*",)) if field == "tls" else (),
            gateways=(attachment.gateway_ref,),
        )
        rules.append(L4Route((match,), tuple(destinations)))
    if not rules:
        return None, tuple(conditions)
    hosts = (attachment.hostnames or ("*",)) if field == "tls" else ("*",)
    vs = VirtualService(
        name=origin_name,
        namespace=route.namespace,
        hosts=hosts,
        gateways=(attachment.gateway_ref,),
        tls=tuple(rules) if field == "tls" else (),
        tcp=tuple(rules) if field == "tcp" else (),
        origin=route.origin,
        lines=tuple(lines),
    )
    return vs, tuple(conditions)


@dataclass(frozen=True, slots=True)
class Attached:
    """Where a route's parentRefs attach it: the attachments, and a condition per
    parentRef (``Accepted`` True, or False with the API's reason)."""

    attachments: tuple[Attachment, ...]
    conditions: tuple[Condition, ...]


def namespace_allowed(gateway: KubeGateway, listener: Listener, namespace: str) -> bool:
    """True when ``listener`` takes routes of ``namespace`` (``Same``, ``All``;
    ``Selector`` takes none: namespaces have no labels in files)."""
    allowed = listener.allowed_routes.namespaces_from
    return allowed == "All" or (allowed == "Same" and namespace == gateway.namespace)


def attach(
    route: Route,
    gateways: Mapping[ResourceKey, tuple[KubeGateway, str]],
    served: Mapping[tuple[ResourceKey, str], bool],
) -> Attached:
    """The listeners ``route``'s parentRefs attach it to, among ``gateways`` (xdsd's,
    by key, each with its converted Gateway's reference); ``served`` says which
    (gateway, listener name) xdsd serves. A parentRef naming a Gateway that is not
    xdsd's gets no condition (another controller's); one naming nothing, or no
    listener that takes the route, gets ``Accepted`` False with the API's reason."""
    found: list[Attachment] = []
    conditions: list[Condition] = []
    for i, parent in enumerate(route.parent_refs):
        scope = f"parentRefs[{i}]"
        if parent.group not in ("", GATEWAY_GROUP) or parent.kind not in ("", "Gateway"):
            conditions.append(
                Condition(
                    route.key,
                    "Accepted",
                    False,
                    "NoMatchingParent",
                    f"a {route.kind} attaches to Gateways only, not to {parent.kind}",
                    scope,
                )
            )
            continue
        key = ResourceKey("KubeGateway", parent.namespace or route.namespace, parent.name)
        entry = gateways.get(key)
        if entry is None:
            continue
        gateway, ref = entry
        reason = "NoMatchingParent"
        message = f"Gateway {key.namespace}/{key.name} has no such listener"
        before = len(found)
        for listener in gateway.listeners:
            if parent.section_name and listener.name != parent.section_name:
                continue
            if parent.port and listener.port != parent.port:
                continue
            if not served.get((key, listener.name), False):
                continue
            if not kind_allowed(listener, route.kind) or not namespace_allowed(
                gateway, listener, route.namespace
            ):
                if reason == "NoMatchingParent":
                    reason = "NotAllowedByListeners"
                    message = f"no listener of Gateway {key.namespace}/{key.name} takes this route"
                continue
            hosts: tuple[str, ...] = ()
            if route.kind in ("TLSRoute", "GRPCRoute", "HTTPRoute"):
                common = intersect_hostnames(listener.hostname, route.hostnames)
                if common is None:
                    reason = "NoMatchingListenerHostname"
                    message = "no hostname of the route is the listener's"
                    continue
                hosts = common
            found.append(Attachment(gateway, listener, ref, hosts, scope))
        if len(found) > before:
            conditions.append(Condition(route.key, "Accepted", True, "Accepted", "", scope))
        else:
            conditions.append(Condition(route.key, "Accepted", False, reason, message, scope))
    return Attached(tuple(found), tuple(conditions))


@dataclass(frozen=True, slots=True)
class L4Converted:
    """What the L4 routes give: VirtualServices, conditions, problems (warnings)."""

    virtual_services: tuple[VirtualService, ...] = ()
    conditions: tuple[Condition, ...] = ()
    problems: tuple[Problem, ...] = ()


def convert_l4_routes(
    routes: Sequence[Route],
    gateways: Mapping[ResourceKey, tuple[KubeGateway, str]],
    served: Mapping[tuple[ResourceKey, str], bool],
    services: Sequence[Service],
    grants: Sequence[ReferenceGrant],
) -> L4Converted:
    """The TLSRoutes, TCPRoutes and UDPRoutes of ``routes`` (others are skipped), in
    key order, as VirtualServices named ``ROUTE-KIND-N`` (N counting the listeners it
    attaches to), with their conditions (see ``attach`` and the module doc)."""
    out: list[VirtualService] = []
    conditions: list[Condition] = []
    problems: list[Problem] = []
    taken: dict[tuple[ResourceKey, str], ResourceKey] = {}
    for route in sorted(routes, key=lambda r: r.key):
        if route.kind == "UDPRoute":
            condition, problem = udp_route(route)
            conditions.append(condition)
            problems.append(problem)
            continue
        if route.kind not in ("TLSRoute", "TCPRoute"):
            continue
        attached = attach(route, gateways, served)
        conditions.extend(attached.conditions)
        refused = False
        for n, attachment in enumerate(attached.attachments):
            at = (attachment.gateway.key, attachment.listener.name)
            if route.kind == "TCPRoute":
                owner = taken.setdefault(at, route.key)
                if owner != route.key:
                    conditions.append(
                        Condition(
                            route.key,
                            "Accepted",
                            False,
                            "UnsupportedValue",
                            f"TCP listener {attachment.listener.name!r} already serves "
                            f"TCPRoute {owner.namespace}/{owner.name}: a TCP listener "
                            "serves one route",
                            attachment.scope,
                        )
                    )
                    continue
            name = f"{route.name}-{route.kind.lower()}-{n}"
            vs, found = l4_virtual_service(route, attachment, services, grants, name)
            refused = refused or any(c.type == "ResolvedRefs" for c in found)
            conditions.extend(c for c in found if c not in conditions)
            if vs is not None:
                out.append(vs)
        if attached.attachments and not refused:
            conditions.append(Condition(route.key, "ResolvedRefs", True, "ResolvedRefs"))
    return L4Converted(tuple(out), tuple(conditions), tuple(problems))
