"""Which route attaches to which listener of which Gateway, per the Gateway API.

A route's ``parentRefs[i]`` names a Gateway (group ``gateway.networking.k8s.io``, kind
``Gateway``, namespace the route's unless given), optionally one listener by
``sectionName`` and/or ``port``. Of the listeners it names, those whose
``allowedRoutes`` take the route (its kind, and its namespace: ``Same``, ``All`` or
``Selector`` over the namespace's labels, ``selects``) and whose hostname intersects the route's
hostnames are the ones it attaches to. When none does, the parent's condition is
``Accepted`` False with the API's reason for the first filter that left none:
``NoMatchingParent`` (no such Gateway, or no listener with that section name/port),
``NotAllowedByListeners``, ``NoMatchingListenerHostname``.

HTTPRoutes and GRPCRoutes are never merged (``kind_conflicts``): where routes of the
two kinds attach to one listener with hostnames in common, the GRPCRoute API asks that
exactly one be accepted — the oldest, then the first by ``namespace/name``; files have
no creation time, so the first by ``namespace/name`` — and the other gets ``Accepted``
False (reason ``Conflicted``) for that parent, and no attachment through it.

Hostname intersection (``intersect``): a listener without hostname takes the route's
hostnames; a route without hostnames takes the listener's; otherwise each route
hostname equal to the listener's, or matched by the listener's wildcard, is kept as is,
and a wildcard route hostname that matches the listener's hostname gives the
listener's. A wildcard ``*.example.com`` matches names of one or more labels before
``.example.com`` (not ``example.com`` itself), and a less specific wildcard matches a
more specific one. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from xdsd.model.gateway_api import (
    GATEWAY_GROUP,
    NAMESPACE_NAME_LABEL,
    AllowedRoutes,
    Condition,
    KubeGateway,
    Listener,
    ObjectRef,
    Route,
)
from xdsd.model.service import ResourceKey
from xdsd.sources.gateway_api import conditions as cond

#: The route kinds a listener of each protocol takes when ``allowedRoutes.kinds`` is
#: empty (and the only ones it may list).
PROTOCOL_KINDS: Mapping[str, tuple[str, ...]] = {
    "HTTP": ("HTTPRoute", "GRPCRoute"),
    "HTTPS": ("HTTPRoute", "GRPCRoute"),
    "TLS": ("TLSRoute",),
    "TCP": ("TCPRoute",),
    "UDP": ("UDPRoute",),
}


@dataclass(frozen=True, slots=True)
class Attachment:
    """One route attached to one listener of one Gateway through ``parentRefs[parent]``:
    ``hostnames`` the intersection of the route's and the listener's (``*`` = any)."""

    route: Route
    parent: int
    gateway: KubeGateway
    listener: Listener
    hostnames: tuple[str, ...]


def wildcard_matches(pattern: str, host: str) -> bool:
    """Whether the wildcard ``pattern`` (``*.suffix``) covers ``host``: a name with one
    or more labels before the suffix, or a strictly more specific wildcard. ``*`` alone
    covers everything; a pattern without wildcard covers only itself."""
    if pattern == "*":
        return True
    if not pattern.startswith("*."):
        return pattern == host
    suffix = pattern[1:]  # ".example.com"
    name = host[1:] if host.startswith("*.") else host
    return name.endswith(suffix) and len(name) > len(suffix)


def intersect(listener_hostname: str, route_hostnames: Sequence[str]) -> tuple[str, ...]:
    """The hostnames a route serves on a listener (see the module doc); ``("*",)`` when
    neither restricts; empty when they do not intersect."""
    if not listener_hostname:
        return tuple(route_hostnames) or ("*",)
    if not route_hostnames:
        return (listener_hostname,)
    out: list[str] = []
    for host in route_hostnames:
        if host == listener_hostname or wildcard_matches(listener_hostname, host):
            kept = host
        elif host.startswith("*.") and wildcard_matches(host, listener_hostname):
            kept = listener_hostname
        else:
            continue
        if kept not in out:
            out.append(kept)
    return tuple(out)


def allows_kind(listener: Listener, kind: str) -> bool:
    """Whether ``listener`` takes routes of ``kind`` (its ``allowedRoutes.kinds``, or
    its protocol's kinds)."""
    supported = PROTOCOL_KINDS.get(listener.protocol, ())
    kinds = listener.allowed_routes.kinds
    if not kinds:
        return kind in supported
    return any(k == kind and g in ("", GATEWAY_GROUP) and k in supported for g, k in kinds)


def allows_namespace(
    listener: Listener,
    gateway: KubeGateway,
    namespace: str,
    namespace_labels: Mapping[str, Mapping[str, str]],
) -> bool:
    """Whether ``listener`` takes routes of ``namespace``: ``Same`` (the Gateway's),
    ``All``, or ``Selector`` (``selects`` over the namespace's labels, from
    ``namespace_labels``; a namespace no ``Namespace`` document declares has only the
    label ``kubernetes.io/metadata.name: NAME``, as Kubernetes gives every namespace)."""
    how = listener.allowed_routes.namespaces_from
    if how == "All":
        return True
    if how == "Selector":
        labels = namespace_labels.get(namespace)
        if labels is None:
            labels = {NAMESPACE_NAME_LABEL: namespace}
        return selects(listener.allowed_routes, labels)
    return namespace == gateway.namespace


def selects(allowed: AllowedRoutes, labels: Mapping[str, str]) -> bool:
    """Whether a label selector (``allowed``'s ``selector`` labels and ``expressions``)
    matches ``labels``, as Kubernetes' label selectors do: every ``matchLabels`` pair
    present, and every expression true — ``In``: the label present with one of the
    values; ``NotIn``: absent, or with none of them; ``Exists``; ``DoesNotExist``. An
    empty selector matches every namespace."""
    if not all(labels.get(k) == v for k, v in allowed.selector):
        return False
    for req in allowed.expressions:
        value = labels.get(req.key)
        if req.operator == "In":
            ok = value is not None and value in req.values
        elif req.operator == "NotIn":
            ok = value is None or value not in req.values
        elif req.operator == "Exists":
            ok = value is not None
        elif req.operator == "DoesNotExist":
            ok = value is None
        else:  # the parser admits no other operator: an unknown one selects nothing
            ok = False
        if not ok:
            return False
    return True


def parent_gateway(route: Route, ref: ObjectRef) -> tuple[str, str] | None:
    """The (namespace, name) of the Gateway ``ref`` names, or None when it names
    another kind (a Service: GAMMA's)."""
    if (ref.group or GATEWAY_GROUP) != GATEWAY_GROUP or (ref.kind or "Gateway") != "Gateway":
        return None
    return (ref.namespace or route.namespace, ref.name)


def attach(
    route: Route,
    gateways: Mapping[tuple[str, str], KubeGateway],
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
    rejected: Mapping[tuple[ResourceKey, int], str] | None = None,
) -> tuple[list[Attachment], list[Condition]]:
    """The listeners ``route`` attaches to through each of its Gateway parents among
    ``gateways`` (xdsd's, by (namespace, name)), and a condition per such parent:
    ``Accepted`` True, or False with the reason (module doc). Parents that are not
    Gateways are skipped (no condition); a Gateway not in ``gateways`` gets
    ``NoMatchingParent``; a parent in ``rejected`` (by (route key, parent index), the
    message: ``kind_conflicts``) gets ``Accepted`` False ``Conflicted`` and attaches
    nothing."""
    labels = namespace_labels or {}
    refused = rejected or {}
    out: list[Attachment] = []
    conditions: list[Condition] = []
    for index, ref in enumerate(route.parent_refs):
        key = parent_gateway(route, ref)
        if key is None:
            continue
        scope = cond.parent_scope(index)
        gateway = gateways.get(key)
        if gateway is None:
            conditions.append(
                cond.failed(
                    route.key,
                    cond.ACCEPTED,
                    cond.NO_MATCHING_PARENT,
                    f"no Gateway {key[0]}/{key[1]} of xdsd's GatewayClass",
                    scope,
                )
            )
            continue
        named = [
            listener
            for listener in gateway.listeners
            if (not ref.section_name or listener.name == ref.section_name)
            and (not ref.port or listener.port == ref.port)
        ]
        if not named:
            conditions.append(
                cond.failed(
                    route.key,
                    cond.ACCEPTED,
                    cond.NO_MATCHING_PARENT,
                    f"Gateway {key[0]}/{key[1]} has no listener"
                    + (f" named {ref.section_name!r}" if ref.section_name else "")
                    + (f" on port {ref.port}" if ref.port else ""),
                    scope,
                )
            )
            continue
        allowed = [
            listener
            for listener in named
            if allows_kind(listener, route.kind)
            and allows_namespace(listener, gateway, route.namespace, labels)
        ]
        if not allowed:
            conditions.append(
                cond.failed(
                    route.key,
                    cond.ACCEPTED,
                    cond.NOT_ALLOWED_BY_LISTENERS,
                    f"no listener of Gateway {key[0]}/{key[1]} allows a {route.kind} "
                    f"from namespace {route.namespace!r}",
                    scope,
                )
            )
            continue
        conflict = refused.get((route.key, index))
        if conflict is not None:
            conditions.append(
                cond.failed(route.key, cond.ACCEPTED, cond.ROUTE_CONFLICTED, conflict, scope)
            )
            continue
        found = False
        for listener in allowed:
            hosts = intersect(listener.hostname, route.hostnames)
            if hosts:
                found = True
                out.append(Attachment(route, index, gateway, listener, hosts))
        if found:
            conditions.append(cond.ok(route.key, cond.ACCEPTED, scope))
        else:
            conditions.append(
                cond.failed(
                    route.key,
                    cond.ACCEPTED,
                    cond.NO_MATCHING_LISTENER_HOSTNAME,
                    f"hostnames {', '.join(route.hostnames)} match no listener hostname of "
                    f"Gateway {key[0]}/{key[1]}",
                    scope,
                )
            )
    return out, conditions


def hostnames_overlap(a: Sequence[str], b: Sequence[str]) -> bool:
    """Whether some request host could match both hostname lists (``*`` any name; a
    wildcard covers the names and narrower wildcards under it)."""
    return any(x == y or wildcard_matches(x, y) or wildcard_matches(y, x) for x in a for y in b)


class _Held:
    """The hostnames the routes of one kind hold on one listener, indexed: exact names
    by name (a dict look-up), wildcards (``*``, ``*.suffix``) in a list; each with its
    route and the order it was taken in (the first holder wins)."""

    __slots__ = ("exact", "wild")

    def __init__(self) -> None:
        self.exact: dict[str, tuple[int, Route]] = {}
        self.wild: list[tuple[str, int, Route]] = []

    def add(self, order: int, route: Route, hosts: Sequence[str]) -> None:
        for host in hosts:
            if host.startswith("*"):
                self.wild.append((host, order, route))
            else:
                self.exact.setdefault(host, (order, route))

    def first_overlap(self, hosts: Sequence[str]) -> Route | None:
        """The earliest holder of a hostname some request host could match in both
        ``hosts`` and the held names (``hostnames_overlap``), or None."""
        best: tuple[int, Route] | None = None

        def take(order: int, route: Route) -> None:
            nonlocal best
            if best is None or order < best[0]:
                best = (order, route)

        for host in hosts:
            if host.startswith("*"):  # a wildcard: any held name it covers
                for name, found in self.exact.items():
                    if wildcard_matches(host, name):
                        take(*found)
            elif host in self.exact:
                take(*self.exact[host])
            for pattern, order, route in self.wild:
                if (
                    pattern == host
                    or wildcard_matches(pattern, host)
                    or (host.startswith("*") and wildcard_matches(host, pattern))
                ):
                    take(order, route)
        return best[1] if best is not None else None


def kind_conflicts(
    routes: Iterable[Route],
    gateways: Mapping[tuple[str, str], KubeGateway],
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[tuple[ResourceKey, int], str]:
    """The parents (route key, ``parentRefs`` index) of HTTPRoutes and GRPCRoutes that
    are refused because a route of the other kind holds a hostname in common on a
    listener they both attach to (module doc), each with the message naming that route.
    Routes are taken by namespace/name; a route refused on a listener does not hold
    its hostnames there. Exact names are looked up, not compared pairwise: the cost
    grows with the routes and the wildcards, not with their product."""
    # by (Gateway, listener, kind): a route is compared with the other kind's only
    held: dict[tuple[ResourceKey, str, str], _Held] = {}
    out: dict[tuple[ResourceKey, int], str] = {}
    ordered = sorted(
        (r for r in routes if r.kind in ("HTTPRoute", "GRPCRoute")),
        key=lambda r: (r.namespace, r.name, r.kind),
    )
    for order, route in enumerate(ordered):
        other_kind = "GRPCRoute" if route.kind == "HTTPRoute" else "HTTPRoute"
        found, _ = attach(route, gateways, namespace_labels)
        for a in found:
            others = held.get((a.gateway.key, a.listener.name, other_kind))
            winner = others.first_overlap(a.hostnames) if others is not None else None
            if winner is None:
                continue
            out.setdefault(
                (route.key, a.parent),
                f"{winner.kind} {winner.namespace}/{winner.name} holds a hostname in common "
                f"on listener {a.listener.name!r} of Gateway {a.gateway.namespace}/"
                f"{a.gateway.name} (HTTPRoutes and GRPCRoutes are not merged: the first by "
                "namespace/name is accepted)",
            )
        for a in found:
            if (route.key, a.parent) not in out:
                at = (a.gateway.key, a.listener.name, route.kind)
                held.setdefault(at, _Held()).add(order, route, a.hostnames)
    return out
