"""HTTPRoute, GRPCRoute, TCPRoute, TLSRoute and UDPRoute specs → ``Route``.

Every field is read and checked as the API validates it (limits, enums, patterns and
its CEL rules: path values, filter combinations, weights...); the fields the conversion
does not honour are refused by name (``RULE_REFUSED``, ``REFUSED_FILTERS``...; listed in
``docs/rules.md``). Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta

from xdsd.located import Fields
from xdsd.model import Origin
from xdsd.model.gateway_api import (
    BackendRef,
    PathModifier,
    Route,
    RouteFilter,
    RouteMatch,
    RouteRule,
    StringMatch,
)
from xdsd.model.service import FieldLines
from xdsd.sources.gateway_api.common import (
    GRPC_SEGMENT,
    MAX_BACKEND_REFS,
    MAX_FILTERS,
    MAX_HEADER_MATCHES,
    MAX_HOSTNAMES,
    MAX_MATCHES,
    MAX_PARENT_REFS,
    MAX_PATH,
    MAX_QUERY_VALUE,
    MAX_RULES,
    MAX_TLS_HOSTNAMES,
    MAX_TOTAL_MATCHES,
    MAX_VALUE,
    MAX_WEIGHT,
    backend_object_ref,
    bounded_list,
    bounded_strings,
    check_regex,
    duration,
    header_modifier,
    hostname,
    hostnames,
    item_lines,
    name_field,
    parent_refs,
    string_match,
)

#: Rule fields the conversion does not honour (refused by name).
RULE_REFUSED = ("sessionPersistence", "retry")
#: Filter types the conversion does not honour (refused by name at ``type``).
REFUSED_FILTERS = ("ExtensionRef", "ExternalAuth")
HTTP_FILTERS = (
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestMirror",
    "RequestRedirect",
    "URLRewrite",
    "CORS",
    *REFUSED_FILTERS,
)
GRPC_FILTERS = (
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestMirror",
    *REFUSED_FILTERS,
)
PATH_TYPES = ("PathPrefix", "Exact", "RegularExpression")
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
REDIRECT_CODES = (301, 302, 303, 307, 308)
_FILTER_FIELDS = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestMirror": "requestMirror",
    "RequestRedirect": "requestRedirect",
    "URLRewrite": "urlRewrite",
    "CORS": "cors",
    "ExtensionRef": "extensionRef",
    "ExternalAuth": "externalAuth",
}
_BAD_PATH = ("//", "/./", "/../", "%2f", "%2F", "#")
_GRPC_SERVICE = re.compile(r"^\.?[a-zA-Z_][a-zA-Z_0-9]*(\.[a-zA-Z_][a-zA-Z_0-9]*)*$")
_GRPC_METHOD = re.compile(r"^[A-Za-z_][A-Za-z_0-9]*$")
_MAX_CORS = 64
#: An HTTPRoute rule's match when it gives none (the API's default).
DEFAULT_MATCH = RouteMatch(StringMatch("PathPrefix", "/"))


def parse_http_route(spec: Fields, name: str, namespace: str, origin: Origin) -> Route:
    """An HTTPRoute: parentRefs, hostnames, rules (at most 16; matches, filters,
    backendRefs, timeouts, name)."""
    parents = parent_refs(spec)
    hosts = hostnames(spec)
    rules = bounded_list(spec, "rules", _http_rule, MAX_RULES)
    _total_matches(spec)
    _unique_rule_names(spec, rules)
    spec.finish()
    return Route(
        "HTTPRoute", name, namespace, parents, hosts, rules, origin=origin, lines=route_lines(spec)
    )


def parse_grpc_route(spec: Fields, name: str, namespace: str, origin: Origin) -> Route:
    """A GRPCRoute: parentRefs, hostnames, rules (at most 16; method and header
    matches, filters, backendRefs, name)."""
    parents = parent_refs(spec)
    hosts = hostnames(spec)
    rules = bounded_list(spec, "rules", _grpc_rule, MAX_RULES)
    _total_matches(spec)
    _unique_rule_names(spec, rules)
    spec.finish()
    return Route(
        "GRPCRoute", name, namespace, parents, hosts, rules, origin=origin, lines=route_lines(spec)
    )


def _total_matches(spec: Fields) -> None:
    """The API's bound on the matches written in all rules of one route together (a
    rule without ``matches`` counts none, as the API's rule counts)."""
    raw = spec.data.get("rules")
    if not isinstance(raw, list) or len(raw) > MAX_RULES:
        return
    total = sum(
        len(r["matches"]) for r in raw if isinstance(r, dict) and isinstance(r.get("matches"), list)
    )
    if total > MAX_TOTAL_MATCHES:
        spec.error(
            "rules",
            f"hold {total} matches together: the Gateway API allows at most {MAX_TOTAL_MATCHES}",
        )


def parse_tcp_route(spec: Fields, name: str, namespace: str, origin: Origin) -> Route:
    """A TCPRoute: parentRefs and 1 to 16 rules of 1 to 16 backendRefs."""
    return _l4_route("TCPRoute", spec, name, namespace, origin, hosts=False)


def parse_udp_route(spec: Fields, name: str, namespace: str, origin: Origin) -> Route:
    """A UDPRoute: parentRefs and 1 to 16 rules of 1 to 16 backendRefs."""
    return _l4_route("UDPRoute", spec, name, namespace, origin, hosts=False)


def parse_tls_route(spec: Fields, name: str, namespace: str, origin: Origin) -> Route:
    """A TLSRoute: parentRefs, hostnames (SNI, at most 1024), 1 to 16 rules of 1 to 16
    backendRefs."""
    return _l4_route("TLSRoute", spec, name, namespace, origin, hosts=True)


def _l4_route(
    kind: str, spec: Fields, name: str, namespace: str, origin: Origin, *, hosts: bool
) -> Route:
    parents = parent_refs(spec)
    names = hostnames(spec, maximum=MAX_TLS_HOSTNAMES) if hosts else ()
    rules = bounded_list(spec, "rules", _l4_rule, MAX_RULES, minimum=1, required=True)
    _unique_rule_names(spec, rules)
    spec.finish()
    return Route(
        kind, name, namespace, parents, names, rules, origin=origin, lines=route_lines(spec)
    )


#: The lists whose items a route's conditions and warnings name (``parentRefs[0]``,
#: ``hostnames[1]``, ``rules[0].backendRefs[2]``): their lines go in ``Route.lines``.
_ROUTE_LISTS = (
    ("parentRefs", MAX_PARENT_REFS, ()),
    ("hostnames", MAX_HOSTNAMES, ()),
    ("rules", MAX_RULES, (("backendRefs", MAX_BACKEND_REFS),)),
)


def route_lines(spec: Fields) -> FieldLines:
    """The lines of a route's parentRefs, hostnames, rules and their backendRefs."""
    return item_lines(spec, _ROUTE_LISTS)


def _unique_rule_names(spec: Fields, rules: tuple[RouteRule, ...]) -> None:
    raw = spec.data.get("rules")
    if not isinstance(raw, list) or len(raw) != len(rules):
        return
    seen: dict[str, int] = {}
    for i, rule in enumerate(rules):
        if rule.name and rule.name in seen:
            spec.report.add(
                (*spec.path, "rules", i, "name"),
                f"rule names must be unique: {rule.name!r} is also rules[{seen[rule.name]}]",
            )
        seen.setdefault(rule.name, i)


# -- rules ---------------------------------------------------------------------------


def _l4_rule(f: Fields) -> RouteRule | None:
    name = name_field(f, "name")
    backends = bounded_list(
        f, "backendRefs", _l4_backend, MAX_BACKEND_REFS, minimum=1, required=True
    )
    f.finish()
    return RouteRule(name, backend_refs=backends)


def _l4_backend(f: Fields) -> BackendRef | None:
    ref = backend_object_ref(f)
    weight = f.integer("weight", default=1, minimum=0, maximum=MAX_WEIGHT)
    f.finish()
    return BackendRef(ref, weight) if ref is not None else None


def _http_rule(f: Fields) -> RouteRule | None:
    name = name_field(f, "name")
    matches = bounded_list(f, "matches", _http_match, MAX_MATCHES)
    if not f.has("matches"):
        matches = (DEFAULT_MATCH,)  # the API's default: every path
    filters = _filters(f, HTTP_FILTERS, matches)
    backends = bounded_list(
        f, "backendRefs", lambda b: _http_backend(b, HTTP_FILTERS, matches), MAX_BACKEND_REFS
    )
    request, backend_request = _timeouts(f)
    f.finish(RULE_REFUSED)
    if any(x.type == "RequestRedirect" for x in filters) and f.has("backendRefs"):
        f.error("backendRefs", "must not be set with a RequestRedirect filter")
    return RouteRule(name, matches, filters, backends, request, backend_request)


def _grpc_rule(f: Fields) -> RouteRule | None:
    name = name_field(f, "name")
    matches = bounded_list(f, "matches", _grpc_match, MAX_MATCHES)
    filters = _filters(f, GRPC_FILTERS, ())
    backends = bounded_list(
        f, "backendRefs", lambda b: _http_backend(b, GRPC_FILTERS, ()), MAX_BACKEND_REFS
    )
    f.finish(RULE_REFUSED)
    return RouteRule(name, matches, filters, backends)


def _timeouts(f: Fields) -> tuple[timedelta | None, timedelta | None]:
    t = f.obj("timeouts")
    if t is None:
        return None, None
    request = duration(t, "request")
    backend = duration(t, "backendRequest")
    t.finish()
    if request and backend and backend > request:
        t.error("backendRequest", "must not be longer than request")
    return request, backend


def _http_backend(
    f: Fields, types: tuple[str, ...], matches: tuple[RouteMatch, ...]
) -> BackendRef | None:
    ref = backend_object_ref(f)
    weight = f.integer("weight", default=1, minimum=0, maximum=MAX_WEIGHT)
    filters = _filters(f, types, matches)
    f.finish()
    return BackendRef(ref, weight, filters) if ref is not None else None


# -- matches -------------------------------------------------------------------------


def _http_match(f: Fields) -> RouteMatch | None:
    path = None
    p = f.obj("path")
    if p is not None:
        path = _path_match(p)
    headers = _matches(f, "headers", ("Exact", "RegularExpression"))
    query = _matches(f, "queryParams", ("Exact", "RegularExpression"))
    method = f.choice("method", METHODS) or ""
    f.finish()
    if path is None and p is None:
        path = StringMatch("PathPrefix", "/")
    return RouteMatch(path, headers, query, method)


def _path_match(f: Fields) -> StringMatch | None:
    kind = f.choice("type", PATH_TYPES, default="PathPrefix") or "PathPrefix"
    value = f.string("value", default="/")
    f.finish()
    if len(value) > MAX_PATH:
        f.error("value", f"must be at most {MAX_PATH} characters")
        return None
    if kind == "RegularExpression":
        check_regex(f, "value", value)
        return StringMatch(kind, value)
    if not value.startswith("/"):
        f.error("value", f"must be an absolute path, starting with '/' (got {value!r:.60})")
        return None
    bad = [s for s in _BAD_PATH if s in value]
    if bad or value.endswith(("/..", "/.")):
        f.error("value", f"must not hold {bad[0] if bad else 'a final /. or /..'!r}")
        return None
    return StringMatch(kind, value)


def _matches(f: Fields, key: str, types: tuple[str, ...]) -> tuple[StringMatch, ...]:
    most = MAX_QUERY_VALUE if key == "queryParams" else MAX_VALUE
    found = bounded_list(
        f, key, lambda m: string_match(m, types, value_max=most), MAX_HEADER_MATCHES
    )
    seen: set[str] = set()
    for i, match in enumerate(found):
        folded = match.name.lower() if key == "headers" else match.name
        if folded in seen:
            f.report.add((*f.path, key, i), f"repeats {match.name!r}: each name at most once")
        seen.add(folded)
    return found


def _grpc_match(f: Fields) -> RouteMatch | None:
    grpc_type = ""
    service = method = ""
    m = f.obj("method")
    if m is not None:
        grpc_type = m.choice("type", ("Exact", "RegularExpression"), default="Exact") or "Exact"
        service = m.string("service")
        method = m.string("method")
        m.finish()
        if len(service) > 1024 or len(method) > 1024:
            m.error(None, "service and method must be at most 1024 characters")
        elif grpc_type == "Exact":
            if not service and not method:
                m.error(None, "give service, method or both")
            if service and not _GRPC_SERVICE.match(service):
                m.error("service", f"must be a gRPC service name (pkg.Service): {service!r:.80}")
            if method and not _GRPC_METHOD.match(method):
                m.error("method", f"must be a gRPC method name: {method!r:.80}")
        else:
            fine = all(
                check_regex(m, k, v) for k, v in (("service", service), ("method", method)) if v
            )
            if fine:
                # what Envoy runs: the path /SERVICE/METHOD (grpc.method_match)
                check_regex(m, None, f"/{service or GRPC_SEGMENT}/{method or GRPC_SEGMENT}")
    headers = _matches(f, "headers", ("Exact", "RegularExpression"))
    f.finish()
    return RouteMatch(
        headers=headers, grpc_type=grpc_type, grpc_service=service, grpc_method=method
    )


# -- filters -------------------------------------------------------------------------


def _filters(
    f: Fields, types: tuple[str, ...], matches: tuple[RouteMatch, ...]
) -> tuple[RouteFilter, ...]:
    filters = bounded_list(f, "filters", lambda x: _filter(x, types, matches), MAX_FILTERS)
    seen: set[str] = set()
    for i, flt in enumerate(filters):
        if flt.type != "RequestMirror" and flt.type in seen:
            f.report.add((*f.path, "filters", i), f"{flt.type} may be given once per list")
        seen.add(flt.type)
    if "RequestRedirect" in seen and "URLRewrite" in seen:
        f.error("filters", "RequestRedirect and URLRewrite cannot be used together")
    return filters


def _filter(
    f: Fields, types: tuple[str, ...], matches: tuple[RouteMatch, ...]
) -> RouteFilter | None:
    kind = f.choice("type", types)
    if kind is None:
        if not f.has("type"):
            f.error("type", "is required")
        return None
    if kind in REFUSED_FILTERS:
        for key in _FILTER_FIELDS.values():
            f.read.add(key)
        f.error("type", f"{kind} filters are not supported by xdsd; remove it")
        return None
    own = _FILTER_FIELDS[kind]
    parsers: dict[str, Callable[[Fields], RouteFilter | None]] = {
        "RequestHeaderModifier": lambda x: RouteFilter(
            kind, request_header_modifier=header_modifier(x)
        ),
        "ResponseHeaderModifier": lambda x: RouteFilter(
            kind, response_header_modifier=header_modifier(x)
        ),
        "RequestMirror": _mirror,
        "RequestRedirect": lambda x: _redirect(x, matches),
        "URLRewrite": lambda x: _rewrite(x, matches),
        "CORS": _cors,
    }
    body = f.obj(own)
    for other in _FILTER_FIELDS.values():
        if other != own and f.has(other):
            f.read.add(other)
            f.error(other, f"does not go with type {kind} (give {own})")
    f.finish()
    if body is None:
        f.error(own, f"is required for type {kind}")
        return None
    return parsers[kind](body)


def _mirror(f: Fields) -> RouteFilter | None:
    b = f.obj("backendRef", required=True)
    ref = backend_object_ref(b) if b is not None else None
    if b is not None:
        b.finish()
    percent: float | None = None
    if f.has("percent"):
        percent = float(f.integer("percent", minimum=0, maximum=100))
    frac = f.obj("fraction")
    if frac is not None:
        numerator = frac.integer("numerator", required=True, minimum=0)
        denominator = frac.integer("denominator", default=100, minimum=1)
        frac.finish()
        if numerator > denominator:
            frac.error("numerator", "must not be more than denominator")
        else:
            percent = 100.0 * numerator / denominator
        if f.has("percent"):
            f.error("fraction", "give percent or fraction, not both")
    f.finish()
    if ref is None:
        return None
    return RouteFilter("RequestMirror", mirror=ref, mirror_percent=percent)


def _path_modifier(f: Fields, matches: tuple[RouteMatch, ...]) -> PathModifier | None:
    kind = f.choice("type", ("ReplaceFullPath", "ReplacePrefixMatch"))
    full = f.string("replaceFullPath") if f.has("replaceFullPath") else None
    prefix = f.string("replacePrefixMatch") if f.has("replacePrefixMatch") else None
    f.read.update(("replaceFullPath", "replacePrefixMatch"))
    f.finish()
    if kind is None:
        if not f.has("type"):
            f.error("type", "is required")
        return None
    key = "replaceFullPath" if kind == "ReplaceFullPath" else "replacePrefixMatch"
    value = full if kind == "ReplaceFullPath" else prefix
    other = "replacePrefixMatch" if kind == "ReplaceFullPath" else "replaceFullPath"
    if (prefix if kind == "ReplaceFullPath" else full) is not None:
        f.error(other, f"does not go with type {kind}")
    if value is None:
        f.error(key, f"is required for type {kind}")
        return None
    if len(value) > MAX_PATH or (value and not value.startswith("/")):
        f.error(key, f"must be a path starting with '/' of at most {MAX_PATH} characters")
        return None
    if kind == "ReplacePrefixMatch" and any(
        m.path is None or m.path.type != "PathPrefix" for m in matches
    ):
        f.error("type", "ReplacePrefixMatch needs every match of the rule to be a PathPrefix")
    return PathModifier(kind, value)


def _redirect(f: Fields, matches: tuple[RouteMatch, ...]) -> RouteFilter | None:
    scheme = f.choice("scheme", ("http", "https")) or ""
    host = hostname(f, "hostname", f.data["hostname"], wildcard=False) if f.has("hostname") else ""
    f.read.add("hostname")
    p = f.obj("path")
    path = _path_modifier(p, matches) if p is not None else None
    port = f.port("port")
    status = f.integer("statusCode", default=302)
    if status not in REDIRECT_CODES:
        f.error(
            "statusCode", f"must be one of {', '.join(map(str, REDIRECT_CODES))} (got {status})"
        )
    f.finish()
    return RouteFilter(
        "RequestRedirect",
        redirect_scheme=scheme,
        redirect_hostname=host,
        redirect_port=port,
        redirect_status=status,
        redirect_path=path,
    )


def _rewrite(f: Fields, matches: tuple[RouteMatch, ...]) -> RouteFilter | None:
    host = hostname(f, "hostname", f.data["hostname"], wildcard=False) if f.has("hostname") else ""
    f.read.add("hostname")
    p = f.obj("path")
    path = _path_modifier(p, matches) if p is not None else None
    f.finish()
    return RouteFilter("URLRewrite", rewrite_hostname=host, rewrite_path=path)


def _cors(f: Fields) -> RouteFilter | None:
    """CORS: ``allowOrigins`` (``*``, or SCHEME://HOST[:PORT] with at most one leading
    ``*.``), ``allowCredentials``, ``allowMethods`` (``*`` or methods), ``allowHeaders``,
    ``exposeHeaders``, ``maxAge`` (seconds, default 5). Kept in ``cors`` as (field,
    value) pairs in this order."""
    origins = bounded_strings(f, "allowOrigins", _MAX_CORS)
    for i, origin in enumerate(origins):
        if origin != "*" and not re.match(
            r"^(https?)://(\*\.)?[A-Za-z0-9.-]+(:[0-9]{1,5})?$", origin
        ):
            f.report.add(
                (*f.path, "allowOrigins", i), f"must be '*' or SCHEME://HOST[:PORT]: {origin!r:.80}"
            )
    credentials = f.boolean("allowCredentials")
    methods = bounded_strings(f, "allowMethods", 9)
    for i, method in enumerate(methods):
        if method != "*" and method not in METHODS:
            f.report.add(
                (*f.path, "allowMethods", i), f"must be '*' or an HTTP method: {method!r:.40}"
            )
    if "*" in methods and len(methods) > 1:
        f.error("allowMethods", "'*' must be the only method")
    allow_headers = bounded_strings(f, "allowHeaders", _MAX_CORS)
    expose = bounded_strings(f, "exposeHeaders", _MAX_CORS)
    max_age = f.integer("maxAge", default=5, minimum=1)
    f.finish()
    if credentials and "*" in origins:
        f.error("allowCredentials", "cannot be true with allowOrigins '*'")
    cors: tuple[tuple[str, object], ...] = (
        ("allowOrigins", origins),
        ("allowCredentials", credentials),
        ("allowMethods", methods),
        ("allowHeaders", allow_headers),
        ("exposeHeaders", expose),
        ("maxAge", max_age),
    )
    return RouteFilter("CORS", cors=cors)
