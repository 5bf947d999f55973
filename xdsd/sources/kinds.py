"""Spec mappings → model objects, one parser per kind.

Each parser reads the fields xdsd implements, records a problem for every wrong value, and
lists the fields of Istio's API it does not implement yet so that they are reported by name
(see ``Fields.finish``). Cross-resource checks (subsets, hosts, duplicates) are done by the
loader once every file is read.
"""

from __future__ import annotations

import ipaddress
import re

from xdsd.model import (
    Destination,
    DestinationRule,
    Endpoint,
    HeaderMatch,
    HTTPMatch,
    HTTPRoute,
    LoadBalancer,
    Locality,
    Origin,
    Port,
    Protocol,
    Resolution,
    Retries,
    RouteDestination,
    Service,
    StringMatch,
    Subset,
    TrafficPolicy,
    VirtualService,
)
from xdsd.model.rules import MatchKind, SimpleLB
from xdsd.sources.fields import Fields

# Fields of Istio's API that xdsd does not translate yet: named in errors, never dropped.
VS_UNSUPPORTED = ("tls", "tcp", "exportTo")
HTTP_ROUTE_UNSUPPORTED = (
    "redirect", "directResponse", "delegate", "rewrite", "fault", "mirror", "mirrors",
    "mirrorPercentage", "mirrorPercent", "mirror_percent", "corsPolicy", "headers",
)  # fmt: skip
HTTP_MATCH_UNSUPPORTED = (
    "scheme", "authority", "port", "queryParams", "sourceLabels", "gateways",
    "ignoreUriCase", "withoutHeaders", "sourceNamespace", "statPrefix",
)  # fmt: skip
RETRY_UNSUPPORTED = ("retryRemoteLocalities", "retryIgnorePreviousHosts", "backoff")
DR_UNSUPPORTED = ("exportTo", "workloadSelector")
POLICY_UNSUPPORTED = (
    "connectionPool", "outlierDetection", "tls", "portLevelSettings", "tunnel", "proxyProtocol",
)  # fmt: skip
LB_UNSUPPORTED = ("consistentHash", "localityLbSetting", "warmupDurationSecs", "warmup")
DESTINATION_WEIGHT_UNSUPPORTED = ("headers",)


def parse_service(spec: Fields, name: str, namespace: str, origin: Origin) -> Service:
    """An xdsd Service spec (see DESIGN.md's interface contract)."""
    resolution = spec.enum("resolution", Resolution, Resolution.STATIC)
    hosts = spec.strings("hosts")
    ports = spec.parse_list("ports", _parse_port)
    if not spec.has("ports"):
        spec.error("ports", "is required: a service needs at least one port")
    seen_numbers: dict[int, int] = {}
    seen_names: dict[str, int] = {}
    for i, port in enumerate(ports):
        if port.number in seen_numbers:
            spec.report.add(("ports", i, "number"), f"port {port.number} is listed twice")
        seen_numbers[port.number] = i
        if port.name and port.name in seen_names:
            spec.report.add(("ports", i, "name"), f"port name {port.name!r} is used twice")
        seen_names[port.name] = i
    endpoints = []
    for item in spec.objects("endpoints"):
        endpoint = _parse_endpoint(item, resolution, {p.name for p in ports if p.name})
        if endpoint is not None:
            endpoints.append(endpoint)
    spec.finish()
    return Service(
        name=name,
        namespace=namespace,
        ports=ports,
        endpoints=tuple(endpoints),
        hosts=hosts,
        resolution=resolution,
        origin=origin,
    )


def _parse_port(f: Fields) -> Port | None:
    number = f.port("number", required=True)
    protocol = f.enum("protocol", Protocol, Protocol.TCP) if f.has("protocol") else None
    if protocol is None:
        f.error("protocol", "is required: one of HTTP, HTTP2, GRPC, TCP, TLS")
        protocol = Protocol.TCP
    target = f.port("targetPort")
    name = f.string("name")
    f.finish()
    return Port(number=number, protocol=protocol, name=name, target_port=target) if number else None


def _parse_endpoint(f: Fields, resolution: Resolution, port_names: set[str]) -> Endpoint | None:
    address = f.string("address", required=True)
    if address:
        is_ip = _is_ip(address)
        if resolution is Resolution.STATIC and not is_ip:
            f.error(
                "address",
                f"must be an IP address for a STATIC service (got {address!r}); "
                'set resolution = "DNS" for host names',
            )
    labels = f.labels("labels")
    locality = Locality()
    text = f.string("locality")
    if text:
        try:
            locality = Locality.parse(text)
        except ValueError as e:
            f.error("locality", str(e))
    weight = f.integer("weight", default=1, minimum=1, maximum=2**31 - 1)
    ports: list[tuple[str, int]] = []
    port_map = f.obj("ports")
    if port_map is not None:
        for key in sorted(port_map.data):
            number = port_map.port(key, required=True)
            if key not in port_names:
                port_map.error(key, "names no port of this service")
            elif number:
                ports.append((key, number))
    f.finish()
    if not address:
        return None
    return Endpoint(address, labels, locality, weight, tuple(ports))


def parse_virtual_service(
    spec: Fields, name: str, namespace: str, origin: Origin
) -> VirtualService:
    """The supported core of an Istio VirtualService."""
    hosts = spec.strings("hosts")
    if not hosts and not spec.report.failed:
        spec.error("hosts", "is required: the hosts this rule applies to")
    gateways = spec.strings("gateways")
    http = spec.parse_list("http", _parse_http_route)
    spec.finish(VS_UNSUPPORTED)
    return VirtualService(name, namespace, hosts, gateways, http, origin=origin)


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
    import re

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


def parse_destination_rule(
    spec: Fields, name: str, namespace: str, origin: Origin
) -> DestinationRule:
    """The supported core of an Istio DestinationRule."""
    host = spec.string("host", required=True)
    policy = _parse_policy(spec.obj("trafficPolicy"))
    subsets = spec.parse_list("subsets", _parse_subset)
    seen: set[str] = set()
    for i, subset in enumerate(subsets):
        if subset.name in seen:
            spec.report.add(("subsets", i, "name"), f"subset {subset.name!r} is defined twice")
        seen.add(subset.name)
    spec.finish(DR_UNSUPPORTED)
    return DestinationRule(name, host, namespace, policy, subsets, origin=origin)


def _parse_subset(f: Fields) -> Subset:
    name = f.string("name", required=True)
    labels = f.labels("labels")
    policy = _parse_policy(f.obj("trafficPolicy"))
    f.finish()
    return Subset(name, labels, policy)


def _parse_policy(f: Fields | None) -> TrafficPolicy | None:
    if f is None:
        return None
    lb = None
    lb_fields = f.obj("loadBalancer")
    if lb_fields is not None:
        simple = lb_fields.enum("simple", SimpleLB, SimpleLB.UNSPECIFIED)
        if simple is SimpleLB.PASSTHROUGH:
            lb_fields.error(
                "simple",
                "PASSTHROUGH needs original-destination capture (iptables), "
                "which xdsd's VM sidecars do not have",
            )
        lb_fields.finish(LB_UNSUPPORTED)
        lb = LoadBalancer(simple)
    f.finish(POLICY_UNSUPPORTED)
    return TrafficPolicy(lb)


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def _is_ip(address: str) -> bool:
    """True for an IPv4 or IPv6 literal (dotted IPv4 by a regular expression, which is
    what nearly every endpoint is, ten times faster than ``ipaddress``)."""
    if _IPV4.fullmatch(address):
        return True
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True
