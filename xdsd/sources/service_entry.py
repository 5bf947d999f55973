"""ServiceEntry and WorkloadEntry specs → model objects (Istio's networking.istio.io API),
and the port parser the Gateway and Sidecar parsers share.

Reads the fields xdsd implements, records a problem for every wrong value, and refuses the
fields it does not implement by name (``Fields.finish``). Which WorkloadEntries a
``workloadSelector`` picks, and host collisions with other services, are decided by the
loader once every file is read.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from xdsd.errors import Problem, Severity
from xdsd.located import Fields, is_ip
from xdsd.model import Endpoint, Origin, Port, Protocol, Resolution, Service, line_of
from xdsd.model.networking import (
    EntryPort,
    EntryResolution,
    Location,
    ServiceEntry,
    WorkloadEndpoint,
    WorkloadEntry,
)
from xdsd.sources.service import is_virtual_address, read_locality, read_port_map

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


def parse_workload(
    f: Fields, *, port_names: set[str] | None = None, template: bool = False
) -> WorkloadEndpoint | None:
    """An endpoint of a ServiceEntry, the spec of a WorkloadEntry or (``template``) a
    WorkloadGroup's template, whose address must be empty (each registered workload
    brings its own). ``port_names`` (a ServiceEntry's) limits the keys of ``ports``; None
    accepts any name."""
    if template:
        address = f.string("address")
        if address:
            f.error(
                "address",
                "must be empty in a WorkloadGroup's template: each workload registers at "
                "its own address (xdsd bootstrap --instance-ip IP)",
            )
        address = ""
    else:
        address = f.string("address", required=True)
    labels = f.labels("labels")
    ports = read_port_map(f, port_names, "this ServiceEntry")
    locality = read_locality(f)
    weight = f.integer("weight", default=1, minimum=1, maximum=2**31 - 1)
    network = f.string("network")
    account = f.string("serviceAccount")
    f.finish()
    if not address and not template:
        return None
    return WorkloadEndpoint(address, labels, ports, locality, weight, network, account)


def parse_service_entry(spec: Fields, name: str, namespace: str, origin: Origin) -> ServiceEntry:
    """An Istio ServiceEntry. Rules checked here: hosts and ports required; ``endpoints``
    and ``workloadSelector`` exclude each other; STATIC endpoints are IP addresses (or
    ``unix:///path`` sockets); DNS entries without endpoints resolve their hosts, which
    must then not be wildcards. ``addresses`` are IP addresses or CIDR ranges
    (``service.is_virtual_address``), each once; every host's service gets them."""
    hosts = spec.strings("hosts", required=True)
    ports = spec.parse_list("ports", parse_entry_port)
    location = spec.enum("location", Location, Location.MESH_EXTERNAL)
    before = len(spec.report.problems)
    resolution = spec.enum("resolution", EntryResolution, EntryResolution.NONE)
    # A wrong resolution is reported once, not again by the checks of the default.
    known = len(spec.report.problems) == before
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
        if not selector and not sel.report.failed:
            sel.error("labels", "is required: a workloadSelector selects by at least one label")
        sel.finish()
        if spec.has("endpoints"):
            spec.error("workloadSelector", "excludes endpoints: give one or the other")
    addresses = _addresses(spec)
    export_to = spec.strings("exportTo")
    sans = spec.strings("subjectAltNames")
    spec.finish()
    _check_entry(spec, hosts, ports, resolution if known else None, endpoints)
    return ServiceEntry(
        name,
        namespace,
        hosts,
        addresses,
        ports,
        location,
        resolution,
        endpoints,
        selector,
        export_to,
        sans,
        origin=origin,
    )


def _addresses(spec: Fields) -> tuple[str, ...]:
    """``addresses``: the entry's virtual addresses, IP literals or CIDR ranges (as
    Istio's), none listed twice (compared as addresses: ``10.0.0.1`` and
    ``10.0.0.1/32`` are one)."""
    out: list[str] = []
    seen: dict[str, int] = {}
    for i, text in enumerate(spec.strings("addresses")):
        at = (*spec.path, "addresses", i)
        if not is_virtual_address(text, ranges=True):
            spec.report.add(
                at,
                "must be an IP address or a CIDR range (e.g. 10.0.0.1 or 10.0.0.0/24; not "
                f"unspecified, multicast or broadcast; got {text[:60]!r})",
            )
            continue
        network = str(ipaddress.ip_network(text, strict=False))
        if network in seen:
            spec.report.add(at, f"{text!r} is listed twice (addresses[{seen[network]}])")
            continue
        seen[network] = i
        out.append(text)
    return tuple(out)


def _check_entry(
    spec: Fields,
    hosts: tuple[str, ...],
    ports: tuple[EntryPort, ...],
    resolution: EntryResolution | None,
    endpoints: tuple[WorkloadEndpoint, ...],
) -> None:
    """The checks of a whole entry (``resolution`` None: it was wrong, and the checks
    that depend on it are skipped)."""
    if not ports and not spec.report.failed:
        spec.error("ports", "is required: a ServiceEntry needs at least one port")
    for i, host in enumerate(hosts):
        if host in hosts[:i]:
            spec.report.add((*spec.path, "hosts", i), f"host {host!r} is listed twice")
    seen: set[int] = set()
    names: set[str] = set()
    for i, port in enumerate(ports):
        if port.number in seen:
            spec.report.add(
                (*spec.path, "ports", i, "number"), f"port {port.number} is listed twice"
            )
        seen.add(port.number)
        if not port.name:
            spec.report.add(
                (*spec.path, "ports", i, "name"),
                "is required: endpoints name the ports they serve (ports: {NAME: number})",
            )
        elif port.name in names:
            spec.report.add(
                (*spec.path, "ports", i, "name"), f"port name {port.name!r} is used twice"
            )
        names.add(port.name)
        wildcards = [h for h in hosts if h.startswith("*")]
        if resolution is EntryResolution.NONE and port.protocol is Protocol.TCP and wildcards:
            spec.report.add(
                (*spec.path, "ports", i),
                f"port {port.number} (TCP) of wildcard host {wildcards[0]!r} has no virtual "
                "address (a TCP connection carries no name to go by): only a sidecar with "
                "capture (xdsd capture) serves it, passing connections through to the "
                "address the application dialled; list concrete hosts, or use TLS (served "
                "by SNI) or HTTP",
                Severity.WARNING,
            )
    if resolution is EntryResolution.NONE and endpoints:
        spec.error("endpoints", "must be empty for resolution NONE (or use STATIC or DNS)")
    if resolution is EntryResolution.DNS_ROUND_ROBIN and len(endpoints) > 1:
        spec.error(
            "endpoints",
            "DNS_ROUND_ROBIN resolves one name: give at most one endpoint (or use DNS)",
        )
    if resolution is EntryResolution.STATIC:
        for i, endpoint in enumerate(endpoints):
            if not is_ip(endpoint.address) and not endpoint.address.startswith("unix://"):
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


#: How a ServiceEntry's resolution becomes a service's.
_RESOLUTIONS = {
    EntryResolution.STATIC: Resolution.STATIC,
    EntryResolution.DNS: Resolution.DNS,
    EntryResolution.DNS_ROUND_ROBIN: Resolution.DNS_ROUND_ROBIN,
    EntryResolution.NONE: Resolution.NONE,
}


def entry_services(
    entry: ServiceEntry, workloads: Iterable[WorkloadEntry]
) -> tuple[tuple[Service, ...], list[Problem]]:
    """The services of ``entry``, one per host, in host order, and the problems of the
    WorkloadEntries it selects. ``workloads`` are the WorkloadEntries that may be selected,
    in key order (those of other namespaces are skipped here).

    As Istio: each port's endpoints are the inline ``endpoints``, or the WorkloadEntries
    of the entry's namespace whose labels include ``workloadSelector``, or (DNS and
    DNS_ROUND_ROBIN without either) the host itself; an endpoint serves a port on the
    number its ``ports`` map gives for the port's name, else the port's ``targetPort``,
    else its number. Resolution NONE has no endpoints; its TCP and TLS ports are kept
    (``Service.routed_ports`` leaves them out: only virtual-address listeners and capture
    serve them); an entry without ports has no services. A
    STATIC entry selecting a WorkloadEntry whose address is not an IP address (or
    ``unix://`` path) is an error at the entry.
    """
    resolution = _RESOLUTIONS[entry.resolution]
    ports = tuple(Port(p.number, p.protocol, p.name, p.target_port) for p in entry.ports)
    problems: list[Problem] = []
    if not ports:
        return (), problems
    sources: list[WorkloadEndpoint] = []
    if entry.workload_selector:
        for workload in workloads:
            if workload.namespace != entry.namespace:
                continue
            endpoint = workload.endpoint
            if not _selects(entry.workload_selector, endpoint.labels):
                continue
            address = endpoint.address
            if (
                resolution is Resolution.STATIC
                and not is_ip(address)
                and not address.startswith("unix://")
            ):
                problems.append(
                    Problem(
                        entry.origin.path,
                        line_of(entry.lines, "workloadSelector", entry.origin.line),
                        "workloadSelector",
                        f"selects {workload.key} ({workload.origin}), whose address "
                        f"{address!r} is not an IP address: resolution STATIC needs IP "
                        "addresses (use resolution DNS for host names)",
                    )
                )
                continue
            sources.append(endpoint)
    elif resolution is not Resolution.NONE:
        sources.extend(entry.endpoints)
    services = []
    for host in entry.hosts:
        found = sources
        if (
            not found
            and not entry.workload_selector
            and resolution in (Resolution.DNS, Resolution.DNS_ROUND_ROBIN)
        ):
            found = [WorkloadEndpoint(host)]
        endpoints = tuple(_endpoint(e, ports) for e in found)
        services.append(
            Service(
                name=host,
                namespace=entry.namespace,
                ports=ports,
                endpoints=endpoints,
                resolution=resolution,
                origin=entry.origin,
                lines=entry.lines,
                entry=entry.name,
                location=entry.location,
                subject_alt_names=entry.subject_alt_names,
                addresses=entry.addresses,
            )
        )
    return tuple(services), problems


def _selects(selector: tuple[tuple[str, str], ...], labels: tuple[tuple[str, str], ...]) -> bool:
    return all(pair in labels for pair in selector)


def _endpoint(workload: WorkloadEndpoint, ports: tuple[Port, ...]) -> Endpoint:
    """A workload as an endpoint of a service with ``ports``: the number it serves each
    port on is written out where it is not the port's number."""
    given = dict(workload.ports)
    serves = []
    for port in ports:
        number = given.get(port.name) or port.target_port or port.number
        if number != port.number:
            serves.append((port.name, number))
    return Endpoint(
        workload.address,
        workload.labels,
        workload.locality,
        workload.weight,
        tuple(serves),
        workload.healthy,
    )
