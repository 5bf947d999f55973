"""VirtualService specs → model objects (Istio's networking.istio.io API).

Reads the fields xdsd implements, records a problem for every wrong value, and lists the
fields it does not implement so that they are reported by name (``Fields.finish``).
References to services and subsets are checked by the loader once every file is read.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from typing import Any

from xdsd.errors import Severity
from xdsd.located import Fields
from xdsd.model import (
    CorsPolicy,
    Destination,
    DirectResponse,
    Fault,
    FaultAbort,
    FaultDelay,
    HeaderMatch,
    HeaderOperations,
    Headers,
    HTTPMatch,
    HTTPRoute,
    L4Match,
    L4Route,
    Mirror,
    Origin,
    Redirect,
    RegexRewrite,
    Retries,
    Rewrite,
    RouteDestination,
    StringMatch,
    VirtualService,
)
from xdsd.model.rules import GRPC_STATUS_NAMES, MatchKind
from xdsd.sources.re2_syntax import re2_problem

# Fields of Istio's API that xdsd does not translate yet: named in errors, never dropped.
VS_UNSUPPORTED = ("exportTo",)
HTTP_ROUTE_UNSUPPORTED = ("delegate", "mirror_percent")
HTTP_MATCH_UNSUPPORTED = ("statPrefix",)
RETRY_UNSUPPORTED: tuple[str, ...] = ()
DESTINATION_WEIGHT_UNSUPPORTED: tuple[str, ...] = ()
FAULT_DELAY_UNSUPPORTED = ("exponentialDelay", "percent")
FAULT_ABORT_UNSUPPORTED = ("http2Error",)
#: Istio's redirectCode values (Envoy's RedirectAction.RedirectResponseCode).
REDIRECT_CODES = (301, 302, 303, 307, 308)
DERIVE_PORTS = ("FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT")
UNMATCHED_PREFLIGHTS = ("FORWARD", "IGNORE")
#: The largest direct response body (Istio's limit; route configurations raise Envoy's
#: 4 KiB default to it).
MAX_DIRECT_RESPONSE_BODY = 1024 * 1024


def parse_virtual_service(
    spec: Fields, name: str, namespace: str, origin: Origin
) -> VirtualService:
    """The supported core of an Istio VirtualService."""
    hosts = spec.strings("hosts")
    if not hosts and not spec.report.failed:
        spec.error("hosts", "is required: the hosts this rule applies to")
    gateways = spec.strings("gateways")
    http = spec.parse_list("http", _parse_http_route)
    tcp = spec.parse_list("tcp", _parse_tcp_route)
    tls = spec.parse_list("tls", lambda f: _parse_tls_route(f, hosts))
    spec.finish(VS_UNSUPPORTED)
    return VirtualService(name, namespace, hosts, gateways, http, tcp=tcp, tls=tls, origin=origin)


def _parse_http_route(f: Fields) -> HTTPRoute:
    name = f.string("name")
    match = f.parse_list("match", _parse_match)
    before = len(f.report.problems)
    route = f.parse_list("route", _parse_route_destination)
    # A destination with an error (a misspelled ``weight``) says enough: no knock-on
    # "all weights are zero" after it.
    route_failed = any(p.severity is Severity.ERROR for p in f.report.problems[before:])
    redirect = _parse_redirect(f.obj("redirect"))
    direct = _parse_direct_response(f.obj("directResponse"))
    rewrite = _parse_rewrite(f.obj("rewrite"))
    fault = _parse_fault(f.obj("fault"))
    actions = [k for k in ("route", "redirect", "directResponse") if f.has(k)]
    if not actions:
        f.error("route", "is required (or redirect, or directResponse)")
    elif len(actions) > 1:
        f.error(actions[1], f"cannot be used together with {actions[0]}: set only one")
    elif not f.has("route"):
        for other in ("rewrite", "fault", "mirror", "mirrors"):
            if f.has(other):
                f.error(other, f"cannot be used with {actions[0]} (there is no upstream)")
    route = _normalize_weights(f, route, check_zero=not route_failed) if f.has("route") else ()
    timeout = f.duration("timeout")
    retries = _parse_retries(f.obj("retries"))
    mirrors = _parse_mirrors(f)
    cors = _parse_cors(f.obj("corsPolicy"))
    headers = _parse_headers(f.obj("headers"))
    if f.has("websocketUpgrade"):
        # Istio's v1alpha3 field, long gone from its API: every xdsd HTTP listener lets
        # requests upgrade to WebSocket, so ``true`` asks for what already happens.
        if f.boolean("websocketUpgrade"):
            f.warn(
                "websocketUpgrade", "is obsolete (WebSocket upgrades are always allowed): remove it"
            )
        else:
            f.error(
                "websocketUpgrade", "false is not supported: WebSocket upgrades are always allowed"
            )
    f.finish(HTTP_ROUTE_UNSUPPORTED)
    return HTTPRoute(
        name,
        match,
        route,
        timeout,
        retries,
        redirect,
        direct,
        rewrite,
        fault,
        mirrors,
        cors,
        headers,
    )


def _parse_retries(retry: Fields | None) -> Retries | None:
    if retry is None:
        return None
    attempts = retry.integer("attempts", minimum=0, maximum=1_000)
    per_try = retry.duration("perTryTimeout")
    retry_on = retry.string("retryOn")
    ignore_previous = _boolean(retry, "retryIgnorePreviousHosts")
    remote = _boolean(retry, "retryRemoteLocalities")
    backoff = retry.duration("backoff")
    retry.finish(RETRY_UNSUPPORTED)
    return Retries(attempts, per_try, retry_on, ignore_previous, remote is True, backoff)


def _normalize_weights(
    f: Fields, route: tuple[RouteDestination, ...], *, check_zero: bool = True
) -> tuple[RouteDestination, ...]:
    """Istio's rule: a lone destination takes all traffic; otherwise an omitted weight is 0.
    Weights are relative; all-zero weights route nowhere and are refused (when
    ``check_zero``: not after an error in a destination, which may be the weight's)."""
    if len(route) == 1 and route[0].weight in (-1, 0):
        if route[0].weight == 0:
            f.report.add((*f.path, "route", 0, "weight"), "must not be 0 for the only destination")
        return (RouteDestination(route[0].destination, 100, route[0].headers),)
    fixed = tuple(RouteDestination(r.destination, max(r.weight, 0), r.headers) for r in route)
    if check_zero and fixed and not any(r.weight for r in fixed):
        f.error("route", "all weights are zero: at least one destination needs a weight")
    return fixed


def _string_match(
    f: Fields | None, *, empty_is_present: bool = False, empty_prefix: bool = False
) -> StringMatch | None:
    """Istio's StringMatch (exactly one of exact, prefix, regex). With
    ``empty_is_present`` (header and query parameter conditions) ``{}`` and Istio's
    ``regex: "*"`` mean "is present" and give None without a problem. An empty regex is
    an error, and so is an empty prefix unless ``empty_prefix`` (the uri: Envoy's
    ``RouteMatch.prefix`` may be empty and matches every path, as in Istio)."""
    if f is None:
        return None
    found = []
    for kind in MatchKind:
        if f.has(kind.value):
            found.append(StringMatch(kind, f.string(kind.value)))
        else:
            f.string(kind.value)
    f.finish()
    if empty_is_present and (
        not f.data or (len(found) == 1 and found[0] == StringMatch(MatchKind.REGEX, "*"))
    ):
        return None
    if len(found) != 1:
        f.error(None, "must set exactly one of exact, prefix, regex")
        return None
    kind = found[0].kind
    if not found[0].value and (
        kind is MatchKind.REGEX or (kind is MatchKind.PREFIX and not empty_prefix)
    ):
        # Envoy's StringMatcher.prefix and RegexMatcher.regex must not be empty: it would
        # refuse the whole RouteConfiguration, so an empty one is refused here instead.
        f.error(found[0].kind.value, "must not be empty")
        return None
    if found[0].kind is MatchKind.REGEX:
        _check_regex(f, "regex", found[0].value)
    return found[0]


def _check_regex(f: Fields, key: str, pattern: str) -> None:
    """An error at ``key`` when Envoy would refuse ``pattern`` (``re2_syntax``: RE2's
    syntax, and its program size limit)."""
    problem = re2_problem(pattern)
    if problem:
        f.error(key, problem)


def _header_conditions(f: Fields, key: str, *, lower: bool = True) -> tuple[HeaderMatch, ...]:
    """A map of names to StringMatch (``{}`` = present), sorted by name. For headers
    (``lower``), a name starting with ``@`` is refused: it is no HTTP header, and Istio's
    ``@request.auth.claims.*`` (JWT claim routing) is not supported; taken as a header
    name it would never be present, and ``withoutHeaders`` would then match every
    request (fail open)."""
    out: list[HeaderMatch] = []
    conditions = f.obj(key)
    if conditions is None:
        return ()
    for name in sorted(conditions.data):
        item = conditions.obj(name, required=True)
        if item is None:
            continue
        if lower and name.startswith("@"):
            what = (
                "JWT claim conditions (@request.auth.claims) are not supported"
                if name.startswith("@request.auth.claims")
                else "is not an HTTP header name"
            )
            conditions.error(name, f"{what}: refused rather than matched as a header")
            continue
        out.append(
            HeaderMatch(name.lower() if lower else name, _string_match(item, empty_is_present=True))
        )
    return tuple(out)


def _parse_match(f: Fields) -> HTTPMatch:
    name = f.string("name")
    uri = _string_match(f.obj("uri"), empty_prefix=True)
    method = _string_match(f.obj("method"))
    scheme = _string_match(f.obj("scheme"))
    authority = _string_match(f.obj("authority"))
    headers = _header_conditions(f, "headers")
    without = _header_conditions(f, "withoutHeaders")
    query = _header_conditions(f, "queryParams", lower=False)
    port = f.port("port")
    ignore_case = _boolean(f, "ignoreUriCase") is True
    source_labels = f.labels("sourceLabels")
    source_namespace = f.string("sourceNamespace")
    gateways = f.strings("gateways")
    f.finish(HTTP_MATCH_UNSUPPORTED)
    return HTTPMatch(
        name=name,
        uri=uri,
        method=method,
        headers=headers,
        port=port,
        scheme=scheme,
        authority=authority,
        query_params=query,
        without_headers=without,
        ignore_uri_case=ignore_case,
        source_labels=source_labels,
        source_namespace=source_namespace,
        gateways=gateways,
    )


def _parse_destination(f: Fields | None) -> Destination | None:
    if f is None:
        return None
    host = f.string("host", required=True)
    subset = f.string("subset")
    number = 0
    port = f.obj("port")
    if port is not None:
        number = port.port("number", required=True)
        port.finish()
    f.finish()
    return Destination(host, subset, number) if host else None


def _parse_route_destination(f: Fields) -> RouteDestination | None:
    destination = _parse_destination(f.obj("destination", required=True))
    weight = f.integer("weight", default=-1, minimum=0)
    headers = _parse_headers(f.obj("headers"))
    f.finish(DESTINATION_WEIGHT_UNSUPPORTED)
    if destination is None:
        return None
    return RouteDestination(destination, weight, headers)


def _parse_redirect(f: Fields | None) -> Redirect | None:
    if f is None:
        return None
    uri = f.string("uri")
    authority = f.string("authority")
    port = f.port("port")
    derive = f.string("derivePort")
    if derive and derive not in DERIVE_PORTS:
        f.error("derivePort", f"must be one of {', '.join(DERIVE_PORTS)} (got {derive!r})")
        derive = ""
    if port and derive:
        f.error("derivePort", "cannot be used together with port: set only one")
    scheme = f.string("scheme")
    code = f.integer("redirectCode", default=301)
    if code not in REDIRECT_CODES:
        codes = ", ".join(map(str, REDIRECT_CODES))
        f.error("redirectCode", f"must be one of {codes} (got {code})")
        code = 301
    f.finish()
    if not (uri or authority or port or derive or scheme):
        f.error(None, "must change something: set uri, authority, port, derivePort or scheme")
    return Redirect(uri, authority, port, derive, scheme, code)


def _parse_direct_response(f: Fields | None) -> DirectResponse | None:
    if f is None:
        return None
    status = f.integer("status", required=True, minimum=200, maximum=599)
    data: bytes | None = None
    body = f.obj("body")
    if body is not None:
        text = body.string("string")
        encoded = body.string("bytes")
        if body.has("string") == body.has("bytes"):
            body.error(None, "must set exactly one of string, bytes")
        elif body.has("bytes"):
            try:
                data = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                body.error("bytes", "must be base64-encoded")
        else:
            data = text.encode()
        body.finish()
        if data is not None and len(data) > MAX_DIRECT_RESPONSE_BODY:
            f.error("body", f"is {len(data)} bytes; at most {MAX_DIRECT_RESPONSE_BODY} allowed")
            data = None
    f.finish()
    return DirectResponse(status, data)


def _parse_rewrite(f: Fields | None) -> Rewrite | None:
    if f is None:
        return None
    uri = f.string("uri")
    authority = f.string("authority")
    regex = None
    rr = f.obj("uriRegexRewrite")
    if rr is not None:
        pattern = rr.string("match", required=True)
        rewrite = rr.string("rewrite")
        if not rr.has("rewrite"):
            rr.error("rewrite", "is required")
        _check_regex(rr, "match", pattern)
        rr.finish()
        regex = RegexRewrite(pattern, rewrite)
    if uri and regex is not None:
        f.error("uriRegexRewrite", "cannot be used together with uri: set only one")
    f.finish()
    return Rewrite(uri, authority, regex)


def _parse_fault(f: Fields | None) -> Fault | None:
    if f is None:
        return None
    delay = abort = None
    d = f.obj("delay")
    if d is not None:
        fixed = d.duration("fixedDelay")
        if fixed is None and not d.has("fixedDelay"):
            d.error("fixedDelay", "is required")
        percent = _fault_percentage(d, "delayed")
        d.finish(FAULT_DELAY_UNSUPPORTED)
        if fixed is not None:
            delay = FaultDelay(fixed, percent)
    a = f.obj("abort")
    if a is not None:
        status = a.integer("httpStatus", minimum=200, maximum=599)
        grpc = a.string("grpcStatus")
        if grpc and grpc not in GRPC_STATUS_NAMES:
            a.error("grpcStatus", f"must be a gRPC status name such as UNAVAILABLE (got {grpc!r})")
        if a.has("httpStatus") == a.has("grpcStatus"):
            a.error(None, "must set exactly one of httpStatus, grpcStatus")
        percent = _fault_percentage(a, "aborted")
        a.finish(FAULT_ABORT_UNSUPPORTED)
        abort = FaultAbort(status, grpc, percent)
    f.finish()
    if delay is None and abort is None and not f.report.failed:
        f.error(None, "must set delay or abort")
    return Fault(delay, abort)


def _fault_percentage(f: Fields, what: str) -> float:
    """A fault's percentage; none means none (Istio's behaviour, which its documentation
    now states), with a warning, since that is rarely what was meant."""
    value = _percentage(f, "percentage")
    if value is None:
        f.warn(None, f"has no percentage: no request is {what} (as in Istio); set percentage.value")
        return 0.0
    return value


def _parse_mirrors(f: Fields) -> tuple[Mirror, ...]:
    out: list[Mirror] = []
    single = _parse_destination(f.obj("mirror"))
    percentage = _percentage(f, "mirrorPercentage")
    legacy = f.integer("mirrorPercent", minimum=0, maximum=100, default=-1)
    if single is not None:
        if percentage is None and legacy >= 0:
            percentage = float(legacy)
        out.append(Mirror(single, 100.0 if percentage is None else percentage))
    elif f.has("mirrorPercentage") or f.has("mirrorPercent"):
        f.error(
            "mirrorPercentage" if f.has("mirrorPercentage") else "mirrorPercent",
            "needs mirror (use mirrors[].percentage with mirrors)",
        )
    if f.has("mirror") and f.has("mirrors"):
        f.error("mirrors", "cannot be used together with mirror: set only one")
    for item in f.objects("mirrors"):
        dest = _parse_destination(item.obj("destination", required=True))
        value = _percentage(item, "percentage")
        item.finish()
        if dest is not None:
            out.append(Mirror(dest, 100.0 if value is None else value))
    return tuple(out)


def _parse_cors(f: Fields | None) -> CorsPolicy | None:
    if f is None:
        return None
    origins: list[StringMatch] = []
    for item in f.objects("allowOrigins"):
        sm = _string_match(item)
        if sm is not None:
            origins.append(sm)
    legacy = f.strings("allowOrigin")
    if legacy and origins:
        f.error("allowOrigin", "cannot be used together with allowOrigins: set only one")
    origins.extend(StringMatch(MatchKind.EXACT, o) for o in legacy)
    methods = f.strings("allowMethods")
    allow_headers = f.strings("allowHeaders")
    expose = f.strings("exposeHeaders")
    max_age = f.duration("maxAge")
    credentials = _boolean(f, "allowCredentials")
    unmatched = f.string("unmatchedPreflights").upper()
    if unmatched and unmatched not in UNMATCHED_PREFLIGHTS:
        f.error("unmatchedPreflights", f"must be FORWARD or IGNORE (got {unmatched!r})")
        unmatched = ""
    f.finish()
    return CorsPolicy(
        tuple(origins), methods, allow_headers, expose, max_age, credentials, unmatched
    )


def _parse_headers(f: Fields | None) -> Headers | None:
    if f is None:
        return None
    request = _parse_header_operations(f.obj("request"))
    response = _parse_header_operations(f.obj("response"))
    f.finish()
    return Headers(request, response)


def _parse_header_operations(f: Fields | None) -> HeaderOperations | None:
    if f is None:
        return None
    ops = HeaderOperations(_header_values(f, "set"), _header_values(f, "add"), f.strings("remove"))
    f.finish()
    return ops


def _header_values(f: Fields, key: str) -> tuple[tuple[str, str], ...]:
    """A map of header names to string values, in file order."""
    value = _read(f, key)
    if value is None:
        return ()
    if not isinstance(value, dict):
        f.error(key, f"must be a mapping of header names to strings (got {value!r})")
        return ()
    out: list[tuple[str, str]] = []
    for name, item in value.items():
        if not isinstance(item, str):
            f.report.add((*f.path, key, str(name)), f"must be a string (got {item!r}; quote it)")
            continue
        out.append((str(name), item))
    return tuple(out)


def _read(f: Fields, key: str) -> Any:
    """The raw value of ``key`` (marked as read)."""
    f.read.add(key)
    return f.data.get(key)


def _boolean(f: Fields, key: str) -> bool | None:
    """A boolean field (None when absent)."""
    value = _read(f, key)
    if value is None or isinstance(value, bool):
        return value
    f.error(key, f"must be true or false (got {value!r})")
    return None


def _percentage(f: Fields, key: str) -> float | None:
    """Istio's Percent message ``{value: 0-100}`` (None when absent)."""
    p = f.obj(key)
    if p is None:
        return None
    value = _read(p, "value")
    p.finish()
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        p.error("value", f"must be a number from 0 to 100 (got {value!r})")
        return None
    return float(value)


# -- tcp and tls routes ----------------------------------------------------------------

#: Fields of Istio's L4MatchAttributes (tcp matches) that Istio itself never applies.
L4_MATCH_UNSUPPORTED = ("sourceSubnet",)
_DNS_LABEL = r"[A-Za-z0-9](?:[-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
_SNI_HOST = re.compile(rf"\*|(?:\*\.)?{_DNS_LABEL}(?:\.{_DNS_LABEL})*")


def _parse_tcp_route(f: Fields) -> L4Route:
    """One ``tcp`` rule: optional match blocks (ORed) and weighted destinations."""
    match = f.parse_list("match", lambda m: _parse_l4_match(m, None))
    route = _parse_l4_destinations(f)
    f.finish()
    return L4Route(match, route)


def _parse_tls_route(f: Fields, hosts: tuple[str, ...]) -> L4Route:
    """One ``tls`` rule: match blocks (at least one, each with ``sniHosts`` within the
    VirtualService's ``hosts``, as Istio requires) and weighted destinations."""
    match = f.parse_list("match", lambda m: _parse_l4_match(m, hosts))
    if not f.has("match"):
        f.error("match", "is required: a tls rule needs at least one match with sniHosts")
    route = _parse_l4_destinations(f)
    f.finish()
    return L4Route(match, route)


def _parse_l4_destinations(f: Fields) -> tuple[RouteDestination, ...]:
    before = len(f.report.problems)
    route = f.parse_list("route", _parse_route_destination)
    route_failed = any(p.severity is Severity.ERROR for p in f.report.problems[before:])
    if not f.has("route"):
        f.error("route", "is required: where the connections go")
    for i, rd in enumerate(route):
        if rd.headers is not None:
            f.report.add(
                (*f.path, "route", i, "headers"), "only http routes can change headers; remove it"
            )
    return _normalize_weights(f, route, check_zero=not route_failed)


def _parse_l4_match(f: Fields, tls_hosts: tuple[str, ...] | None) -> L4Match:
    """A tcp match (``tls_hosts`` None) or a tls match, whose ``sniHosts`` are required
    and must each fall within one of ``tls_hosts`` (the VirtualService's hosts)."""
    sni_hosts: tuple[str, ...] = ()
    if tls_hosts is None:
        if f.has("sniHosts"):
            f.strings("sniHosts")
            f.error("sniHosts", "only tls matches have sniHosts: move this rule to tls")
    else:
        sni_hosts = f.strings("sniHosts", required=True)
        if f.has("sniHosts") and not sni_hosts and not f.report.failed:
            f.error("sniHosts", "must name at least one server name")
        for i, sni in enumerate(sni_hosts):
            _check_sni_host(f, i, sni, tls_hosts)
    subnets = []
    for i, text in enumerate(f.strings("destinationSubnets")):
        try:
            subnets.append(str(ipaddress.ip_network(text, strict=False)))
        except ValueError:
            f.report.add(
                (*f.path, "destinationSubnets", i),
                f"must be an IP address or a CIDR block like 10.0.0.0/8 (got {text!r})",
            )
    port = f.port("port")
    source_labels = f.labels("sourceLabels")
    source_namespace = f.string("sourceNamespace")
    gateways = f.strings("gateways")
    if tls_hosts is None:
        f.finish(L4_MATCH_UNSUPPORTED, "Istio accepts it but never applies it")
    else:
        f.finish()
    return L4Match(
        port=port,
        sni_hosts=sni_hosts,
        destination_subnets=tuple(subnets),
        source_labels=source_labels,
        source_namespace=source_namespace,
        gateways=gateways,
    )


def _check_sni_host(f: Fields, index: int, sni: str, hosts: tuple[str, ...]) -> None:
    path = (*f.path, "sniHosts", index)
    try:
        ipaddress.ip_address(sni)
    except ValueError:
        pass
    else:
        f.report.add(
            path,
            f"{sni!r} is an IP address: clients do not send IP addresses as SNI, so this "
            "match will not be taken",
            Severity.WARNING,
        )
        return
    if len(sni) > 253 or not _SNI_HOST.fullmatch(sni):
        f.report.add(
            path, f"must be a DNS name, optionally starting with '*.' (got {_shown_text(sni)})"
        )
        return
    if not any(_host_within(sni, host) for host in hosts):
        f.report.add(
            path,
            f"{sni!r} is not within any of the VirtualService's hosts ({', '.join(hosts)}): "
            "a tls rule only routes the names its VirtualService is for",
        )


def _host_within(name: str, host: str) -> bool:
    """True when every name ``name`` covers is covered by ``host`` (``*.`` prefixes are
    wildcards, a lone ``*`` covers everything): Istio's host subset rule."""
    if host.startswith("*"):
        suffix = host[1:]
        return (name[1:] if name.startswith("*") else name).endswith(suffix)
    return not name.startswith("*") and name == host


def _shown_text(text: str) -> str:
    return repr(text) if len(text) <= 60 else repr(text[:57] + "...")
