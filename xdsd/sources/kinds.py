"""Spec mappings → model objects, one parser per kind.

Each parser reads the fields xdsd implements, records a problem for every wrong value, and
lists the fields of Istio's API it does not implement yet so that they are reported by name
(see ``Fields.finish``). Cross-resource checks (subsets, hosts, duplicates) are done by the
loader once every file is read.

Services and simple DestinationRules, which a large mesh has by the thousand, also have a
plain reader (``parse_plain_*``): straight from the mapping, five to ten times faster, and
giving up (None) at the first thing that is not plainly valid, so that every problem is
still reported by the careful parser, word for word.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Collection
from datetime import timedelta
from typing import Any

from xdsd.model import (
    DestinationRule,
    Endpoint,
    HealthCheck,
    Locality,
    Origin,
    Port,
    Protocol,
    Resolution,
    Service,
    Subset,
)
from xdsd.sources.destination_rule import parse_destination_rule
from xdsd.sources.fields import Fields
from xdsd.sources.virtual_service import parse_virtual_service

__all__ = [
    "parse_destination_rule",
    "parse_plain_destination_rule",
    "parse_plain_service",
    "parse_service",
    "parse_virtual_service",
]


def parse_service(spec: Fields, name: str, namespace: str, origin: Origin) -> Service:
    """An xdsd Service spec (see DESIGN.md's interface contract), with an optional
    ``healthCheck`` (see ``_parse_health_check``)."""
    resolution = spec.enum("resolution", Resolution, Resolution.STATIC)
    if resolution is Resolution.NONE:
        spec.error(
            "resolution",
            "NONE is for ServiceEntries (a Service lists its endpoints): use STATIC or DNS",
        )
        resolution = Resolution.STATIC
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
    check = spec.obj("healthCheck")
    health_check = _parse_health_check(check) if check is not None else None
    spec.finish()
    return Service(
        name=name,
        namespace=namespace,
        ports=ports,
        endpoints=tuple(endpoints),
        hosts=hosts,
        resolution=resolution,
        origin=origin,
        health_check=health_check,
    )


_STATUS_RANGE = re.compile(r"^\s*(\d{3})\s*-\s*(\d{3})\s*$")


def _parse_health_check(f: Fields) -> HealthCheck:
    """``healthCheck``: ``path`` (an HTTP GET; without it, a TCP connect), ``host``,
    ``expectedStatuses`` (codes, or inclusive ``"200-299"`` ranges; HTTP only; default
    200), ``interval`` (default 10s), ``timeout`` (default 1s; both above zero),
    ``unhealthyThreshold`` (default 2), ``healthyThreshold`` (default 1)."""
    default = HealthCheck()
    path = f.string("path")
    if path and not path.startswith("/"):
        f.error("path", f"must start with '/' (got {path!r})")
    host = f.string("host")
    statuses: list[tuple[int, int]] = []
    for i, item in f.items("expectedStatuses"):
        found = _status_range(item)
        if found is None:
            f.report.add(
                (*f.path, "expectedStatuses", i),
                f'must be an HTTP status (100-599) or a range like "200-299" (got {item!r})',
            )
        else:
            statuses.append(found)
    for key in ("host", "expectedStatuses"):
        if f.has(key) and not path:
            f.error(key, "needs path: only an HTTP check has it (without path: TCP connect)")
    interval = _positive(f, "interval", default.interval)
    timeout = _positive(f, "timeout", default.timeout)
    limit = 2**32 - 1
    unhealthy = f.integer(
        "unhealthyThreshold", default=default.unhealthy_threshold, minimum=1, maximum=limit
    )
    healthy = f.integer(
        "healthyThreshold", default=default.healthy_threshold, minimum=1, maximum=limit
    )
    f.finish()
    return HealthCheck(path, host, tuple(statuses), interval, timeout, unhealthy, healthy)


def _status_range(item: object) -> tuple[int, int] | None:
    """A status or inclusive range as Envoy's half-open range, None when invalid."""
    if isinstance(item, int) and not isinstance(item, bool):
        start, end = item, item
    elif isinstance(item, str) and (m := _STATUS_RANGE.match(item)):
        start, end = int(m.group(1)), int(m.group(2))
    else:
        return None
    if not 100 <= start <= end <= 599:
        return None
    return start, end + 1


def _positive(f: Fields, key: str, default: timedelta) -> timedelta:
    value = f.duration(key)
    if value is None:
        return default
    if value <= timedelta(0):
        f.error(key, "must be above zero")
        return default
    return value


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
    if address and resolution is Resolution.STATIC and not is_ip(address):
        f.error(
            "address",
            f"must be an IP address for a STATIC service (got {address!r}); "
            'set resolution = "DNS" for host names',
        )
    labels = f.labels("labels")
    locality = read_locality(f)
    weight = f.integer("weight", default=1, minimum=1, maximum=2**31 - 1)
    ports = read_port_map(f, port_names, "this service")
    f.finish()
    if not address:
        return None
    return Endpoint(address, labels, locality, weight, ports)


def read_locality(f: Fields) -> Locality:
    """An endpoint's ``locality`` (``region/zone/subzone``); none when absent or wrong (a
    wrong one is recorded)."""
    text = f.string("locality")
    if not text:
        return Locality()
    try:
        return Locality.parse(text)
    except ValueError as e:
        f.error("locality", str(e))
        return Locality()


def read_port_map(
    f: Fields, port_names: Collection[str] | None, owner: str
) -> tuple[tuple[str, int], ...]:
    """An endpoint's ``ports`` (port name → the port it listens on), sorted by name;
    with ``port_names``, a name not among them is an error ("names no port of
    ``owner``")."""
    ports: list[tuple[str, int]] = []
    port_map = f.obj("ports")
    if port_map is not None:
        for key in sorted(port_map.data):
            number = port_map.port(key, required=True)
            if port_names is not None and key not in port_names:
                port_map.error(key, f"names no port of {owner}")
            elif number:
                ports.append((key, number))
    return tuple(ports)


_SERVICE_KEYS = frozenset({"resolution", "hosts", "ports", "endpoints"})
_PORT_KEYS = frozenset({"number", "protocol", "targetPort", "name"})
_ENDPOINT_KEYS = frozenset({"address", "labels", "locality", "weight", "ports"})
#: What a plain Service may say (NONE is refused, with a reason, by ``parse_service``).
_RESOLUTIONS = {r.value: r for r in Resolution if r is not Resolution.NONE}
_PROTOCOLS = {p.value: p for p in Protocol}
_WEIGHT_MAX = 2**31 - 1


def parse_plain_service(
    data: dict[str, Any], name: str, namespace: str, origin: Origin
) -> Service | None:
    """What ``parse_service`` gives for the spec ``data`` when it has nothing to report,
    read straight from the mapping; None at the first thing that is not plainly valid
    (a missing or wrong field, an unusual spelling such as a lower-case enum value or an
    integral float, a duplicate port), for ``parse_service`` to read again and explain.
    ``tests/sources/test_fast_parsing.py`` checks that whenever this returns a service,
    ``parse_service`` returns an equal one and reports nothing."""
    if not _SERVICE_KEYS.issuperset(data):
        return None
    resolution = data.get("resolution")
    if resolution is None:
        resolution = Resolution.STATIC
    else:
        resolution = _RESOLUTIONS.get(resolution) if type(resolution) is str else None
        if resolution is None:
            return None
    hosts = data.get("hosts")
    if hosts is None:
        hosts = ()
    elif type(hosts) is list and all(type(h) is str and h for h in hosts):
        hosts = tuple(hosts)
    else:
        return None
    port_items = data.get("ports")
    if type(port_items) is not list:
        return None
    ports = []
    numbers: set[int] = set()
    names: set[str] = set()
    for item in port_items:
        if type(item) is not dict or not _PORT_KEYS.issuperset(item):
            return None
        number = item.get("number")
        protocol_name = item.get("protocol")
        protocol = _PROTOCOLS.get(protocol_name) if type(protocol_name) is str else None
        target = item.get("targetPort")
        port_name = item.get("name")
        if port_name is None:
            port_name = ""
        if (
            type(number) is not int
            or not 0 < number <= 65535
            or number in numbers
            or protocol is None
            or (target is not None and (type(target) is not int or not 0 < target <= 65535))
            or type(port_name) is not str
            or (port_name and port_name in names)
        ):
            return None
        numbers.add(number)
        names.add(port_name)
        ports.append(Port(number, protocol, port_name, target or 0))
    names.discard("")
    endpoint_items = data.get("endpoints")
    if endpoint_items is None:
        endpoint_items = []
    elif type(endpoint_items) is not list:
        return None
    endpoints = []
    static = resolution is Resolution.STATIC
    for item in endpoint_items:
        endpoint = _plain_endpoint(item, static, names) if type(item) is dict else None
        if endpoint is None:
            return None
        endpoints.append(endpoint)
    return Service(
        name=name,
        namespace=namespace,
        ports=tuple(ports),
        endpoints=tuple(endpoints),
        hosts=hosts,
        resolution=resolution,
        origin=origin,
    )


def _plain_endpoint(item: dict[str, Any], static: bool, port_names: set[str]) -> Endpoint | None:
    """``_parse_endpoint``'s endpoint when it has nothing to report, else None."""
    if not _ENDPOINT_KEYS.issuperset(item):
        return None
    address = item.get("address")
    if type(address) is not str or not address or (static and not is_ip(address)):
        return None
    labels = item.get("labels")
    if labels is None:
        label_pairs: tuple[tuple[str, str], ...] = ()
    else:
        if type(labels) is not dict:
            return None
        for key, value in labels.items():
            if type(key) is not str or type(value) is not str:
                return None
        label_pairs = tuple(sorted(labels.items()))
    locality = item.get("locality")
    if locality is None or locality == "":
        where = _NO_LOCALITY
    else:
        found = _locality(locality) if type(locality) is str else None
        if found is None:
            return None
        where = found
    weight = item.get("weight")
    if weight is None:
        weight = 1
    elif type(weight) is not int or not 1 <= weight <= _WEIGHT_MAX:
        return None
    port_map = item.get("ports")
    ports: tuple[tuple[str, int], ...] = ()
    if port_map is not None:
        if type(port_map) is not dict:
            return None
        pairs = []
        for key in sorted(port_map):
            number = port_map[key]
            if key not in port_names or type(number) is not int or not 0 < number <= 65535:
                return None
            pairs.append((key, number))
        ports = tuple(pairs)
    return Endpoint(address, label_pairs, where, weight, ports)


_RULE_KEYS = frozenset({"host", "subsets"})
_SUBSET_KEYS = frozenset({"name", "labels"})


def parse_plain_destination_rule(
    data: dict[str, Any], name: str, namespace: str, origin: Origin
) -> DestinationRule | None:
    """What ``parse_destination_rule`` gives for the spec ``data`` of a rule with a host
    and subsets chosen by labels, and no traffic policy (so no paths to resolve and no
    warnings), when it has nothing to report; None at the first doubt, as
    ``parse_plain_service`` does (tested the same way)."""
    if not _RULE_KEYS.issuperset(data):
        return None
    host = data.get("host")
    items = data.get("subsets")
    if type(host) is not str or not host:
        return None
    if items is None:
        items = []
    elif type(items) is not list:
        return None
    subsets = []
    names: set[str] = set()
    for item in items:
        if type(item) is not dict or not _SUBSET_KEYS.issuperset(item):
            return None
        subset_name = item.get("name")
        labels = item.get("labels")
        if type(subset_name) is not str or not subset_name or subset_name in names:
            return None
        names.add(subset_name)
        if labels is None:
            pairs: tuple[tuple[str, str], ...] = ()
        elif type(labels) is dict and all(
            type(k) is str and type(v) is str for k, v in labels.items()
        ):
            pairs = tuple(sorted(labels.items()))
        else:
            return None
        subsets.append(Subset(subset_name, pairs, None))
    return DestinationRule(name, host, namespace, None, tuple(subsets), origin=origin)


_NO_LOCALITY = Locality()


@functools.lru_cache(maxsize=1024)
def _locality(text: str) -> Locality | None:
    """``Locality.parse(text)``, or None where it refuses the text; remembered (a mesh
    names few localities, and its endpoints then share the objects)."""
    try:
        return Locality.parse(text)
    except ValueError:
        return None


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def is_ip(address: str) -> bool:
    """True for an IPv4 or IPv6 literal (dotted IPv4 by a regular expression, which is
    what nearly every endpoint is, ten times faster than ``ipaddress``)."""
    if _IPV4.fullmatch(address):
        return True
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True
