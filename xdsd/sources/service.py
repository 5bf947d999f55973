"""The xdsd ``Service`` kind: its spec → a ``Service``, read field by field with ``Fields``.

Every wrong value is recorded as a problem with its file, line and field path, and
parsing goes on, so one pass reports everything a Service says wrong. The plain reader
for well-formed Services (``plain_readers.parse_plain_service``) gives up to this parser
at the first doubt. ``read_locality`` and ``read_port_map`` are shared with the
ServiceEntry and Gateway parsers.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection
from datetime import timedelta

from xdsd.located import Fields, is_ip
from xdsd.model import (
    Endpoint,
    HealthCheck,
    Locality,
    Origin,
    Port,
    Protocol,
    Resolution,
    Service,
)


def parse_service(spec: Fields, name: str, namespace: str, origin: Origin) -> Service:
    """An xdsd Service spec (``docs/rules.md``, "Service: xdsd's own kind"), with an optional
    ``healthCheck`` (see ``_parse_health_check``) and an optional ``address``, the
    service's virtual address (``is_virtual_address``) as ``Service.addresses``."""
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
    address = spec.string("address")
    if address and not is_virtual_address(address):
        spec.error("address", f"{VIRTUAL_ADDRESS_WANTED} (got {address[:60]!r})")
        address = ""
    spec.finish()
    return Service(
        name=name,
        namespace=namespace,
        ports=tuple(ports),  # its UDP ports go to datagram_ports (Service)
        endpoints=tuple(endpoints),
        hosts=hosts,
        resolution=resolution,
        origin=origin,
        health_check=health_check,
        addresses=(address,) if address else (),
    )


#: What a virtual address a file pins must be (the message of a wrong one).
VIRTUAL_ADDRESS_WANTED = (
    "must be one IP address, IPv4 or IPv6 (the service's virtual address, e.g. "
    '"127.240.0.10"; not unspecified, multicast or broadcast)'
)


def is_virtual_address(text: str, *, ranges: bool = False) -> bool:
    """True when ``text`` can be a virtual address a file pins: one IPv4 or IPv6
    literal (no zone), not the unspecified address, a multicast or the broadcast
    address, none of which a listener can serve a service on. ``ranges``: a CIDR range
    (``10.0.0.0/24``, host bits allowed as Istio allows them; not ``/0``) is one too, as a
    ServiceEntry's ``addresses`` may hold."""
    if not 0 < len(text) <= 64 or "%" in text:
        return False
    try:
        if "/" in text:
            if not ranges:
                return False
            network = ipaddress.ip_network(text, strict=False)
            if network.prefixlen == 0:
                return False
            ip = network.network_address
        else:
            ip = ipaddress.ip_address(text)
    except ValueError:
        return False
    return not (
        ip.is_unspecified
        or ip.is_multicast
        or (ip.version == 4 and ip == ipaddress.IPv4Address("255.255.255.255"))
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
        f.error("protocol", "is required: one of HTTP, HTTP2, GRPC, TCP, TLS, UDP")
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
