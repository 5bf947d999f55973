"""HTTPRoutes attached to Gateways, as VirtualServices bound to their Istio Gateways.

One VirtualService per (Gateway, listener, hostname), ``gateway-api.GATEWAY~LISTENER~HOST``:
every rule of every HTTPRoute attached to that listener with that hostname (the
intersection of the route's and the listener's, ``attach.intersect``), one Istio rule
per match (a rule without matches matches ``PathPrefix /``), bound to that listener's
server alone (``VirtualService.listener``; its match blocks carry the listener's port
too). That is the Gateway API's listener isolation: the converted servers are isolated
(``Server.listener_isolation``), so a request for a name that a more specific
listener's hostname covers is routed by that listener's routes only (404 when it has
none), never by a route attached to a less specific listener of the same port, even
one naming that host. Rules are ordered by the Gateway API's precedence
(``precedence``) across all those routes: an ``Exact`` path,
then a ``RegularExpression`` path (an implementation-specific rank: before prefixes, so
a regex is not shadowed by ``/``), then the longest ``PathPrefix``; then a method
match; then the most header matches; then the most query parameter matches; ties go to
the route first in ``namespace/name`` order (files carry no creation time, so the
Gateway API's "oldest first" is read as that order), then rule and match order.

A ``PathPrefix`` matches whole path elements: ``/foo`` is the exact path ``/foo`` and
the prefix ``/foo/``. Header names match regardless of case.

Filters: ``RequestHeaderModifier``/``ResponseHeaderModifier`` → the rule's ``headers``
(per backend: that destination's); ``RequestRedirect`` → ``redirect`` (status 302
unless given; without port, the scheme's default when a scheme is given, else the
listener's port; ``ReplacePrefixMatch`` with ``Redirect.prefix``); ``URLRewrite`` →
``rewrite`` (``ReplaceFullPath`` a regex rewrite of the whole path,
``ReplacePrefixMatch`` the matched prefix); ``RequestMirror`` → ``mirrors`` (percent or
fraction; a mirror whose backend does not resolve is left out, with its condition);
``CORS`` → ``corsPolicy``. Any other filter type cannot be honoured: the rule answers
500, as the API requires for a filter that cannot be applied. A backendRef's filters
other than the header modifiers (a redirect, rewrite, mirror or CORS on one backend)
cannot be honoured either: the rule answers 500 and the route gets ``Accepted`` False,
``UnsupportedValue``, at ``rules[N].backendRefs[M].filters[K]``
(``backends.backend_filter_refusals``).

Backends: weight 0 is left out; no backend, or all of weight 0, answers 500; a backend
that does not resolve (``refs.resolve_backend``) is ``UNRESOLVED_BACKEND_HOST``, whose
share of requests Envoy answers 500, and the route's ``ResolvedRefs`` is False with the
reason. Timeouts: ``request`` is the rule's timeout; ``backendRequest`` the per-try
timeout of Istio's default retries. A rule's name (or index) names its Envoy routes:
``NAMESPACE.ROUTE.RULE``. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta

from xdsd.model import (
    CorsPolicy,
    Destination,
    DirectResponse,
    HeaderMatch,
    HeaderOperations,
    Headers,
    HTTPMatch,
    HTTPRoute,
    MatchKind,
    Mirror,
    Redirect,
    RegexRewrite,
    Retries,
    Rewrite,
    RouteDestination,
    Service,
    StringMatch,
    VirtualService,
)
from xdsd.model.gateway_api import (
    Condition,
    HeaderModifier,
    KubeGateway,
    PathModifier,
    ReferenceGrant,
    Route,
    RouteFilter,
    RouteMatch,
    RouteRule,
)
from xdsd.model.gateway_api import StringMatch as ApiMatch
from xdsd.model.rules import UNRESOLVED_BACKEND_HOST
from xdsd.model.service import ResourceKey
from xdsd.sources.gateway_api import conditions as cond
from xdsd.sources.gateway_api.attach import attach
from xdsd.sources.gateway_api.backends import BACKEND_FILTERS, backend_filter_refusals
from xdsd.sources.gateway_api.names import PREFIX, istio_gateway_name
from xdsd.sources.gateway_api.refs import Resolved, resolve_backend

#: What a rule answers when it has no backend to send to (the Gateway API's 500).
NO_BACKEND_STATUS = 500
_PATH_RANK = {"Exact": 0, "RegularExpression": 1, "PathPrefix": 2}


@dataclass(frozen=True, slots=True)
class _Rule:
    """One Istio rule made from one match of a route's rule, with its precedence."""

    order: tuple[object, ...]
    http: HTTPRoute


def precedence(match: RouteMatch) -> tuple[int, int, int, int, int]:
    """The sort key of a match (smaller first), see the module doc."""
    path = match.path or ApiMatch("PathPrefix", "/")
    return (
        _PATH_RANK.get(path.type, 2),
        -len(path.value),
        0 if match.method else 1,
        -len(match.headers),
        -len(match.query_params),
    )


def http_virtual_services(
    routes: Sequence[Route],
    gateways: Mapping[tuple[str, str], KubeGateway],
    services: Sequence[Service],
    grants: Sequence[ReferenceGrant],
    namespace_labels: Mapping[str, Mapping[str, str]],
    rejected: Mapping[tuple[ResourceKey, int], str] | None = None,
) -> tuple[list[VirtualService], list[Condition]]:
    """The VirtualServices of ``routes`` (HTTPRoutes) on ``gateways`` (xdsd's, by
    (namespace, name)) and every route's conditions; the parents in ``rejected``
    (``attach.kind_conflicts``) attach nothing."""
    conditions: list[Condition] = []
    groups: dict[tuple[str, str, str, str], list[_Rule]] = {}
    origins: dict[tuple[str, str, str, str], Route] = {}
    for route in sorted(routes, key=lambda r: (r.namespace, r.name)):
        found, attached = attach(route, gateways, namespace_labels, rejected)
        conditions.extend(attached)
        if not found:
            continue
        rules, failures = route_rules(route, services, grants)
        for i in range(len(route.rules)):
            conditions.extend(backend_filter_refusals(route, i))
        for parent in sorted({a.parent for a in found}):
            scope = cond.parent_scope(parent)
            if failures:
                reason = failures[0][0]
                message = "; ".join(m for _, m in failures)
                conditions.append(
                    cond.failed(route.key, cond.RESOLVED_REFS, reason, message, scope)
                )
            else:
                conditions.append(cond.ok(route.key, cond.RESOLVED_REFS, scope))
        for a in found:
            for host in a.hostnames:
                group = (a.gateway.namespace, a.gateway.name, a.listener.name, host)
                origins.setdefault(group, route)
                bucket = groups.setdefault(group, [])
                for rule in rules:
                    blocks = tuple(replace(m, port=a.listener.port) for m in rule.http.match)
                    bucket.append(_Rule(rule.order, replace(rule.http, match=blocks)))
    out: list[VirtualService] = []
    for group, rules in sorted(groups.items()):
        namespace, name, listener, host = group
        rules.sort(key=lambda r: r.order)
        out.append(
            VirtualService(
                f"{PREFIX}{name}~{listener}~{host.replace('*', '_')}",
                namespace,
                (host,),
                (f"{namespace}/{istio_gateway_name(name)}",),
                tuple(r.http for r in rules),
                listener=listener,
                origin=origins[group].origin,
            )
        )
    return out, conditions


def route_rules(
    route: Route, services: Sequence[Service], grants: Sequence[ReferenceGrant]
) -> tuple[list[_Rule], list[tuple[str, str]]]:
    """The Istio rules of ``route`` (without ports) with their precedence, and the
    (reason, message) of each reference that did not resolve."""
    failures: list[tuple[str, str]] = []
    out: list[_Rule] = []
    for i, rule in enumerate(route.rules):
        name = f"{route.namespace}.{route.name}.{rule.name or i}"
        matches = rule.matches or (RouteMatch(ApiMatch("PathPrefix", "/")),)
        template = _rule(route, rule, services, grants, failures)
        by_prefix = any(
            (f.type == "RequestRedirect" and _replaces_prefix(f.redirect_path))
            or (f.type == "URLRewrite" and _replaces_prefix(f.rewrite_path))
            for f in rule.filters
        )
        for j, match in enumerate(matches):
            for k, (block, prefix_part) in enumerate(_blocks(match)):
                http = replace(template, name=name, match=(block,))
                if by_prefix:
                    http = _for_block(http, prefix_part)
                order = (*precedence(match), route.namespace, route.name, i, j, k)
                out.append(_Rule(order, http))
    return out, failures


def _blocks(match: RouteMatch) -> list[tuple[HTTPMatch, str]]:
    """The Istio match blocks of one match, each with the prefix it matches ("" for a
    whole path or a regex): a ``PathPrefix`` other than ``/`` is two."""
    headers = tuple(_header(h) for h in match.headers)
    query = tuple(_header(q) for q in match.query_params)
    method = StringMatch(MatchKind.EXACT, match.method) if match.method else None
    path = match.path or ApiMatch("PathPrefix", "/")

    def block(uri: StringMatch) -> HTTPMatch:
        return HTTPMatch(uri=uri, method=method, headers=headers, query_params=query)

    if path.type == "Exact":
        return [(block(StringMatch(MatchKind.EXACT, path.value)), "")]
    if path.type == "RegularExpression":
        return [(block(StringMatch(MatchKind.REGEX, path.value)), "")]
    trimmed = path.value.rstrip("/")
    if not trimmed:
        return [(block(StringMatch(MatchKind.PREFIX, "/")), "/")]
    return [
        (block(StringMatch(MatchKind.EXACT, trimmed)), ""),
        (block(StringMatch(MatchKind.PREFIX, trimmed + "/")), trimmed + "/"),
    ]


def _header(match: ApiMatch) -> HeaderMatch:
    kind = MatchKind.REGEX if match.type == "RegularExpression" else MatchKind.EXACT
    return HeaderMatch(match.name.lower(), StringMatch(kind, match.value))


def _replaces_prefix(path: PathModifier | None) -> bool:
    return path is not None and path.type == "ReplacePrefixMatch"


def _for_block(http: HTTPRoute, prefix_part: str) -> HTTPRoute:
    """``http``, whose redirect or rewrite replaces the matched prefix
    (``Redirect.prefix`` / ``Rewrite.uri`` holding the replacement as written), made
    right for the block matching ``prefix_part`` ("" for the exact half of a split
    prefix): the matched ``/foo/`` becomes the replacement with one trailing slash, the
    exact ``/foo`` the replacement itself; under a ``/`` prefix, a rewrite is a regex on
    the leading slash."""
    if http.redirect is not None and http.redirect.prefix:
        value = http.redirect.prefix
        prefix = _slash(value) if prefix_part else value or "/"
        return replace(http, redirect=replace(http.redirect, prefix=prefix))
    if http.rewrite is not None and http.rewrite.uri:
        value = http.rewrite.uri
        if prefix_part == "/":
            rewrite = replace(http.rewrite, uri="", uri_regex=RegexRewrite("^/", _slash(value)))
        else:
            rewrite = replace(http.rewrite, uri=_slash(value) if prefix_part else value or "/")
        return replace(http, rewrite=rewrite)
    return http


def _slash(value: str) -> str:
    """A prefix replacement for a matched prefix ending in ``/``."""
    return value.rstrip("/") + "/"


def _rule(
    route: Route,
    rule: RouteRule,
    services: Sequence[Service],
    grants: Sequence[ReferenceGrant],
    failures: list[tuple[str, str]],
) -> HTTPRoute:
    """One rule as an Istio rule without name and match."""
    request = HeaderOperations()
    response = HeaderOperations()
    redirect: Redirect | None = None
    rewrite: Rewrite | None = None
    mirrors: list[Mirror] = []
    cors: CorsPolicy | None = None
    unsupported = False
    for f in rule.filters:
        if f.type == "RequestHeaderModifier" and f.request_header_modifier is not None:
            request = _merge(request, f.request_header_modifier)
        elif f.type == "ResponseHeaderModifier" and f.response_header_modifier is not None:
            response = _merge(response, f.response_header_modifier)
        elif f.type == "RequestRedirect":
            redirect = _redirect(f)
        elif f.type == "URLRewrite":
            rewrite = _rewrite(f)
        elif f.type == "RequestMirror" and f.mirror is not None:
            resolved = resolve_backend(f.mirror, route.kind, route.namespace, services, grants)
            if resolved.service is None:
                failures.append((resolved.reason, f"mirror: {resolved.message}"))
                continue
            percent = 100.0 if f.mirror_percent is None else f.mirror_percent
            mirrors.append(Mirror(_destination(resolved, f.mirror.port), percent))
        elif f.type == "CORS":
            cors = _cors(f.cors)
        else:
            unsupported = True
    headers = _headers(request, response)
    timeout = rule.request_timeout
    retries = (
        Retries(2, rule.backend_request_timeout)
        if rule.backend_request_timeout is not None
        else None
    )
    base = HTTPRoute(
        timeout=timeout,
        retries=retries,
        rewrite=rewrite,
        mirrors=tuple(mirrors),
        cors_policy=cors,
        headers=headers,
    )
    destinations: list[RouteDestination] = []
    if any(f.type not in BACKEND_FILTERS for b in rule.backend_refs for f in b.filters):
        unsupported = True  # backends.backend_filter_refusals reports them
    for backend in rule.backend_refs:
        resolved = resolve_backend(backend.ref, route.kind, route.namespace, services, grants)
        if resolved.service is None:
            failures.append((resolved.reason, resolved.message))
        if backend.weight <= 0:
            continue
        per = HeaderOperations()
        per_response = HeaderOperations()
        for f in backend.filters:
            if f.type == "RequestHeaderModifier" and f.request_header_modifier is not None:
                per = _merge(per, f.request_header_modifier)
            elif f.type == "ResponseHeaderModifier" and f.response_header_modifier is not None:
                per_response = _merge(per_response, f.response_header_modifier)
        dest = (
            _destination(resolved, backend.ref.port)
            if resolved.service is not None
            else Destination(UNRESOLVED_BACKEND_HOST)
        )
        destinations.append(RouteDestination(dest, backend.weight, _headers(per, per_response)))
    if unsupported:
        return replace(base, direct_response=DirectResponse(NO_BACKEND_STATUS))
    if redirect is not None:
        return replace(base, redirect=redirect, rewrite=None, mirrors=())
    if not destinations or all(d.destination.host == UNRESOLVED_BACKEND_HOST for d in destinations):
        return replace(base, direct_response=DirectResponse(NO_BACKEND_STATUS), mirrors=())
    return replace(base, route=tuple(destinations))


def _destination(resolved: Resolved, port: int) -> Destination:
    assert resolved.service is not None
    return Destination(resolved.service.fqdn, port=port)


def _merge(ops: HeaderOperations, mod: HeaderModifier) -> HeaderOperations:
    return HeaderOperations(ops.set + mod.set, ops.add + mod.add, ops.remove + mod.remove)


def _headers(request: HeaderOperations, response: HeaderOperations) -> Headers | None:
    empty = HeaderOperations()
    if request == empty and response == empty:
        return None
    return Headers(request if request != empty else None, response if response != empty else None)


def _redirect(f: RouteFilter) -> Redirect:
    """A ``RequestRedirect`` (a ``ReplacePrefixMatch`` as written: ``_for_block``
    adapts it to each match block)."""
    uri = prefix = ""
    if f.redirect_path is not None:
        if f.redirect_path.type == "ReplaceFullPath":
            uri = f.redirect_path.value or "/"
        else:
            prefix = f.redirect_path.value
    derive = "" if f.redirect_port or f.redirect_scheme else "FROM_REQUEST_PORT"
    return Redirect(
        uri=uri,
        authority=f.redirect_hostname,
        port=f.redirect_port,
        derive_port=derive,
        scheme=f.redirect_scheme,
        code=f.redirect_status or 302,
        prefix=prefix,
    )


def _rewrite(f: RouteFilter) -> Rewrite:
    """A ``URLRewrite`` (a ``ReplacePrefixMatch`` as written: ``_for_block`` adapts it
    to each match block)."""
    path = f.rewrite_path
    if path is None:
        return Rewrite(authority=f.rewrite_hostname)
    if path.type == "ReplaceFullPath":
        return Rewrite(
            authority=f.rewrite_hostname, uri_regex=RegexRewrite("^/.*", path.value or "/")
        )
    return Rewrite(uri=path.value, authority=f.rewrite_hostname)


def _cors(fields: tuple[tuple[str, object], ...]) -> CorsPolicy:
    """The CORS filter's fields (as the API spells them) as Istio's CorsPolicy; an
    origin with ``*`` matches by regex."""
    given = dict(fields)

    def strings(key: str) -> tuple[str, ...]:
        value = given.get(key, ())
        return tuple(str(v) for v in value) if isinstance(value, (list, tuple)) else ()

    origins: list[StringMatch] = []
    for origin in strings("allowOrigins"):
        if "*" in origin:
            pattern = ".*".join(re.escape(part) for part in origin.split("*"))
            origins.append(StringMatch(MatchKind.REGEX, pattern))
        else:
            origins.append(StringMatch(MatchKind.EXACT, origin))
    max_age = given.get("maxAge")
    credentials = given.get("allowCredentials")
    return CorsPolicy(
        allow_origins=tuple(origins),
        allow_methods=strings("allowMethods"),
        allow_headers=strings("allowHeaders"),
        expose_headers=strings("exposeHeaders"),
        max_age=timedelta(seconds=max_age) if isinstance(max_age, int) else None,
        allow_credentials=credentials if isinstance(credentials, bool) else None,
    )
