"""ServiceEntry and WorkloadEntry specs → model objects (Istio's networking.istio.io API),
and the port parser the Gateway and Sidecar parsers share.

Reads the fields xdsd implements, records a problem for every wrong value, and refuses the
fields it does not implement by name (``Fields.finish``). Which WorkloadEntries a
``workloadSelector`` picks, and host collisions with other services, are decided by the
loader once every file is read.
"""

from __future__ import annotations

import ipaddress

from xdsd.model import Locality, Origin, Protocol
from xdsd.model.networking import (
    EntryPort,
    EntryResolution,
    Location,
    ServiceEntry,
    WorkloadEndpoint,
    WorkloadEntry,
)
from xdsd.sources.fields import Fields

#: Istio port protocols → how xdsd treats them (anything opaque is TCP).
PROTOCOLS: dict[str, Protocol] = {
    "HTTP": Protocol.HTTP,
    "HTTP2": Protocol.HTTP2,
    "GRPC": Protocol.GRPC,
    "GRPC-WEB": Protocol.HTTP,
    "HTTPS": Protocol.TLS,
    "TLS": Protocol.TLS,
    "TCP": Protocol.TCP,
    "MONGO": Protocol.TCP,
    "MYSQL": Protocol.TCP,
    "REDIS": Protocol.TCP,
}


def parse_entry_port(f: Fields) -> EntryPort | None:
    """A port of a ServiceEntry, Gateway server or Sidecar listener: number (required),
    protocol (Istio's names; UDP is refused), name, targetPort."""
    number = f.port("number", required=True)
    protocol_name = f.string("protocol").upper()
    protocol = Protocol.TCP
    if protocol_name:
        found = PROTOCOLS.get(protocol_name)
        if found is None:
            allowed = ", ".join(PROTOCOLS)
            f.error("protocol", f"must be one of {allowed} (got {protocol_name!r})")
        else:
            protocol = found
    name = f.string("name")
    target = f.port("targetPort")
    f.finish()
    if not number:
        return None
    return EntryPort(number, protocol, name, target, protocol_name or "TCP")


def parse_workload(f: Fields, *, port_names: set[str] | None = None) -> WorkloadEndpoint | None:
    """An endpoint of a ServiceEntry or the spec of a WorkloadEntry. ``port_names``
    (a ServiceEntry's) limits the keys of ``ports``; None accepts any name."""
    address = f.string("address", required=True)
    labels = f.labels("labels")
    ports: list[tuple[str, int]] = []
    port_map = f.obj("ports")
    if port_map is not None:
        for key in sorted(port_map.data):
            number = port_map.port(key, required=True)
            if port_names is not None and key not in port_names:
                port_map.error(key, "names no port of this ServiceEntry")
            elif number:
                ports.append((key, number))
    locality = Locality()
    text = f.string("locality")
    if text:
        try:
            locality = Locality.parse(text)
        except ValueError as e:
            f.error("locality", str(e))
    weight = f.integer("weight", default=1, minimum=1, maximum=2**31 - 1)
    network = f.string("network")
    account = f.string("serviceAccount")
    f.finish()
    if not address:
        return None
    return WorkloadEndpoint(address, labels, tuple(ports), locality, weight, network, account)


def parse_service_entry(spec: Fields, name: str, namespace: str, origin: Origin) -> ServiceEntry:
    """An Istio ServiceEntry. Rules checked here: hosts and ports required; ``endpoints``
    and ``workloadSelector`` exclude each other; STATIC endpoints are IP addresses (or
    ``unix:///path`` sockets); DNS entries without endpoints resolve their hosts, which
    must then not be wildcards. ``addresses`` are kept but only warned about."""
    hosts = spec.strings("hosts", required=True)
    ports = spec.parse_list("ports", parse_entry_port)
    location = spec.enum("location", Location, Location.MESH_EXTERNAL)
    resolution = spec.enum("resolution", EntryResolution, EntryResolution.NONE)
    port_names = {p.name for p in ports if p.name}
    endpoints = tuple(
        e
        for e in (parse_workload(item, port_names=port_names) for item in spec.objects("endpoints"))
        if e is not None
    )
    selector: tuple[tuple[str, str], ...] = ()
    sel = spec.obj("workloadSelector")
    if sel is not None:
        selector = sel.labels("labels")
        sel.finish()
        if spec.has("endpoints"):
            spec.error("workloadSelector", "excludes endpoints: give one or the other")
    addresses = spec.strings("addresses")
    if addresses:
        spec.warn(
            "addresses",
            "virtual IPs are not captured on xdsd's VM sidecars (no iptables): callers reach "
            "this entry by host name through the HTTP proxy or on its per-port listener",
        )
    export_to = spec.strings("exportTo")
    sans = spec.strings("subjectAltNames")
    spec.finish()
    _check_entry(spec, hosts, ports, resolution, endpoints)
    return ServiceEntry(
        name, namespace, hosts, addresses, ports, location, resolution, endpoints, selector,
        export_to, sans, origin=origin,
    )  # fmt: skip


def _check_entry(
    spec: Fields,
    hosts: tuple[str, ...],
    ports: tuple[EntryPort, ...],
    resolution: EntryResolution,
    endpoints: tuple[WorkloadEndpoint, ...],
) -> None:
    if not ports and not spec.report.failed:
        spec.error("ports", "is required: a ServiceEntry needs at least one port")
    seen: set[int] = set()
    for i, port in enumerate(ports):
        if port.number in seen:
            spec.report.add(
                (*spec.path, "ports", i, "number"), f"port {port.number} is listed twice"
            )
        seen.add(port.number)
    if resolution is EntryResolution.STATIC:
        for i, endpoint in enumerate(endpoints):
            if not _is_ip(endpoint.address) and not endpoint.address.startswith("unix://"):
                spec.report.add(
                    (*spec.path, "endpoints", i, "address"),
                    "must be an IP address or unix:///path for resolution STATIC "
                    f"(got {endpoint.address!r})",
                )
    if resolution in (EntryResolution.DNS, EntryResolution.DNS_ROUND_ROBIN) and not endpoints:
        for i, host in enumerate(hosts):
            if host.startswith("*"):
                spec.report.add(
                    (*spec.path, "hosts", i),
                    f"a wildcard host ({host!r}) cannot be resolved by DNS: "
                    "give endpoints or use resolution NONE",
                )


def parse_workload_entry(spec: Fields, name: str, namespace: str, origin: Origin) -> WorkloadEntry:
    """An Istio WorkloadEntry (one workload that ServiceEntries select by labels)."""
    endpoint = parse_workload(spec)
    return WorkloadEntry(name, namespace, endpoint or WorkloadEndpoint(""), origin=origin)


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True
