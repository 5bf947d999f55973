"""VirtualService specs → model objects (Istio's networking.istio.io API).

Reads the fields xdsd implements, records a problem for every wrong value, and lists the
fields it does not implement so that they are reported by name (``Fields.finish``).
References to services and subsets are checked by the loader once every file is read.
"""

from __future__ import annotations

import ipaddress
import re

from xdsd.errors import Severity
from xdsd.model import (
    Destination,
    HeaderMatch,
    HTTPMatch,
    HTTPRoute,
    L4Match,
    L4Route,
    Origin,
    Retries,
    RouteDestination,
    StringMatch,
    VirtualService,
)
from xdsd.model.rules import MatchKind
from xdsd.sources.fields import Fields

# Fields of Istio's API that xdsd does not translate yet: named in errors, never dropped.
VS_UNSUPPORTED = ("exportTo",)
HTTP_ROUTE_UNSUPPORTED = (
    "redirect", "directResponse", "delegate", "rewrite", "fault", "mirror", "mirrors",
    "mirrorPercentage", "mirrorPercent", "mirror_percent", "corsPolicy", "headers",
)  # fmt: skip
HTTP_MATCH_UNSUPPORTED = (
    "scheme", "authority", "port", "queryParams", "sourceLabels", "gateways",
    "ignoreUriCase", "withoutHeaders", "sourceNamespace", "statPrefix",
)  # fmt: skip
RETRY_UNSUPPORTED = ("retryRemoteLocalities", "retryIgnorePreviousHosts", "backoff")
DESTINATION_WEIGHT_UNSUPPORTED = ("headers",)


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
    route = f.parse_list("route", _parse_route_destination)
    if not f.has("route"):
        f.error(
            "route", "is required (redirect, directResponse and delegate are not supported yet)"
        )
    route = _normalize_weights(f, route)
    timeout = f.duration("timeout")
    retries = None
    retry = f.obj("retries")
    if retry is not None:
        attempts = retry.integer("attempts", minimum=0, maximum=1_000)
        per_try = retry.duration("perTryTimeout")
        retry_on = retry.string("retryOn")
        retry.finish(RETRY_UNSUPPORTED)
        retries = Retries(attempts, per_try, retry_on)
    f.finish(HTTP_ROUTE_UNSUPPORTED)
    return HTTPRoute(name, match, route, timeout, retries)


def _normalize_weights(
    f: Fields, route: tuple[RouteDestination, ...]
) -> tuple[RouteDestination, ...]:
    """Istio's rule: a lone destination takes all traffic; otherwise an omitted weight is 0.
    Weights are relative; all-zero weights route nowhere and are refused."""
    if len(route) == 1 and route[0].weight in (-1, 0):
        if route[0].weight == 0:
            f.report.add((*f.path, "route", 0, "weight"), "must not be 0 for the only destination")
        return (RouteDestination(route[0].destination, 100),)
    fixed = tuple(RouteDestination(r.destination, max(r.weight, 0)) for r in route)
    if fixed and not any(r.weight for r in fixed):
        f.error("route", "all weights are zero: at least one destination needs a weight")
    return fixed


def _string_match(f: Fields | None) -> StringMatch | None:
    if f is None:
        return None
    found = []
    for kind in MatchKind:
        if f.has(kind.value):
            found.append(StringMatch(kind, f.string(kind.value)))
        else:
            f.string(kind.value)
    f.finish()
    if len(found) != 1:
        f.error(None, "must set exactly one of exact, prefix, regex")
        return None
    if found[0].kind is MatchKind.REGEX:
        _check_regex(f, found[0].value)
    return found[0]


def _check_regex(f: Fields, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as e:
        f.error("regex", f"is not a valid regular expression: {e}")


def _parse_match(f: Fields) -> HTTPMatch:
    name = f.string("name")
    uri = _string_match(f.obj("uri"))
    method = _string_match(f.obj("method"))
    headers: list[HeaderMatch] = []
    header_map = f.obj("headers")
    if header_map is not None:
        for key in sorted(header_map.data):
            sm = _string_match(header_map.obj(key, required=True))
            if sm is not None:
                headers.append(HeaderMatch(key.lower(), sm))
    f.finish(HTTP_MATCH_UNSUPPORTED)
    return HTTPMatch(name=name, uri=uri, method=method, headers=tuple(headers))


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
    f.finish(DESTINATION_WEIGHT_UNSUPPORTED)
    if destination is None:
        return None
    return RouteDestination(destination, weight)


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
    route = f.parse_list("route", _parse_route_destination)
    if not f.has("route"):
        f.error("route", "is required: where the connections go")
    for i, rd in enumerate(route):
        if rd.headers is not None:
            f.report.add(
                (*f.path, "route", i, "headers"), "only http routes can change headers; remove it"
            )
    return _normalize_weights(f, route)


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
