"""Cross-checks: resources of a whole directory checked against each other.

Duplicates across files, host names claimed twice, rules for unknown hosts, destinations
naming unknown services, ports or subsets, two rules for one service. The checks are linear
in the number of resources and allocate new objects only where a destination port is
filled in, so an incremental reload can run them over the whole directory every time.
"""

from __future__ import annotations

import dataclasses

from xdsd.errors import Problem, Severity
from xdsd.model import (
    Destination,
    DestinationRule,
    HTTPRoute,
    Mesh,
    Origin,
    RawResource,
    ResourceKey,
    Service,
    VirtualService,
)

Resource = Service | VirtualService | DestinationRule


def cross_check(
    resources: list[tuple[Resource, Origin]], raw: list[RawResource], problems: list[Problem]
) -> Mesh:
    """The mesh of ``resources`` (in file order: the first of two duplicates wins) and
    ``raw``, appending every problem found to ``problems`` (the mesh is meaningful only
    when none of them is an error)."""
    by_key: dict[ResourceKey, Resource] = {}
    for resource, origin in resources:
        first = by_key.get(resource.key)
        if first is not None:
            problems.append(
                Problem(
                    origin.path,
                    origin.line,
                    "",
                    f"duplicate {resource.key}: also defined at {first.origin}",
                )
            )
            continue
        by_key[resource.key] = resource
    services: list[Service] = []
    rules: list[DestinationRule] = []
    virtual: list[VirtualService] = []
    for resource in by_key.values():
        if isinstance(resource, Service):
            services.append(resource)
        elif isinstance(resource, DestinationRule):
            rules.append(resource)
        else:
            virtual.append(resource)
    mesh = Mesh(tuple(services), (), tuple(rules), ())
    _check_hosts(mesh.services, problems)
    _check_destination_rules(mesh, problems)
    checked = tuple(_check_virtual_service(mesh, vs, problems) for vs in mesh_sorted(virtual))
    _check_vs_overlap(mesh, checked, problems)
    seen_raw: dict[tuple[str, str], RawResource] = {}
    for r in raw:
        first_raw = seen_raw.get((r.type_url, r.name))
        if first_raw is not None:
            kind = r.type_url.rsplit(".", 1)[-1]
            problems.append(
                Problem(
                    r.origin.path,
                    r.origin.line,
                    "",
                    f"duplicate raw {kind} {r.name!r}: also defined at {first_raw.origin}",
                )
            )
            continue
        seen_raw[(r.type_url, r.name)] = r
    return mesh.with_virtual_services(checked, tuple(seen_raw.values()))


def mesh_sorted(virtual: list[VirtualService]) -> list[VirtualService]:
    """Virtual services in key order (deterministic checks and messages)."""
    return sorted(virtual, key=lambda v: v.key)


def _at(origin: Origin, field: str, message: str, severity: Severity = Severity.ERROR) -> Problem:
    return Problem(origin.path, origin.line, field, message, severity)


def _check_hosts(services: tuple[Service, ...], problems: list[Problem]) -> None:
    """``services`` in key order."""
    owners: dict[str, Service] = {}
    for svc in services:
        for i, host in enumerate((svc.fqdn, *svc.hosts)):
            other = owners.get(host)
            if other is not None and other.key != svc.key:
                problems.append(
                    _at(svc.origin, f"hosts[{i - 1}]" if i else "name",
                        f"host {host!r} is already a name of {other.key} ({other.origin})")
                )  # fmt: skip
            owners.setdefault(host, svc)


def _check_destination_rules(mesh: Mesh, problems: list[Problem]) -> None:
    claimed: dict[ResourceKey, DestinationRule] = {}
    for rule in mesh.destination_rules:
        svc = mesh.service(rule.host, rule.namespace)
        if svc is None:
            problems.append(
                _at(rule.origin, "host",
                    f"no service named {rule.host!r}: rule ignored until one is defined",
                    Severity.WARNING)
            )  # fmt: skip
            continue
        other = claimed.get(svc.key)
        if other is not None:
            problems.append(
                _at(rule.origin, "host",
                    f"{svc.key} already has DestinationRule {other.name!r} ({other.origin}); "
                    "merge them into one")
            )  # fmt: skip
            continue
        claimed[svc.key] = rule


def _applies_to_mesh(vs: VirtualService) -> bool:
    return not vs.gateways or "mesh" in vs.gateways


def _check_virtual_service(
    mesh: Mesh, vs: VirtualService, problems: list[Problem]
) -> VirtualService:
    """Check a VirtualService's references; returns it with destination ports filled in
    where the destination service has a single port."""
    for i, host in enumerate(vs.hosts):
        if "*" in host:
            continue
        if mesh.service(host, vs.namespace) is None:
            problems.append(
                _at(vs.origin, f"hosts[{i}]",
                    f"no service named {host!r}: this host is ignored until one is defined",
                    Severity.WARNING)
            )  # fmt: skip
    routes = []
    for i, http in enumerate(vs.http):
        destinations = [
            dataclasses.replace(rd, destination=_check_destination(
                mesh, vs, f"http[{i}].route[{j}].destination", rd.destination, problems))
            for j, rd in enumerate(http.route)
        ]  # fmt: skip
        mirrors = [
            dataclasses.replace(m, destination=_check_destination(
                mesh, vs, _mirror_field(http, i, j), m.destination, problems))
            for j, m in enumerate(http.mirrors)
        ]  # fmt: skip
        routes.append(dataclasses.replace(http, route=tuple(destinations), mirrors=tuple(mirrors)))
    return dataclasses.replace(vs, http=tuple(routes))


def _mirror_field(http: HTTPRoute, i: int, j: int) -> str:
    """Where mirror ``j`` of rule ``i`` was written (``mirror`` or ``mirrors[j]``)."""
    return (
        f"http[{i}].mirrors[{j}].destination" if len(http.mirrors) > 1 or j else f"http[{i}].mirror"
    )


def _check_destination(
    mesh: Mesh, vs: VirtualService, field: str, dest: Destination, problems: list[Problem]
) -> Destination:
    """Check one destination of ``vs`` (written at ``field``); returns it with its port
    filled in when the service has a single port."""
    svc = mesh.service(dest.host, vs.namespace)
    if svc is None:
        # A rule only gateways use is inert until gateways are implemented.
        severity = Severity.ERROR if _applies_to_mesh(vs) else Severity.WARNING
        problems.append(
            _at(vs.origin, f"{field}.host", f"no service named {dest.host!r}", severity)
        )
        return dest
    if dest.port and svc.port(dest.port) is None:
        numbers = ", ".join(str(p.number) for p in svc.ports)
        problems.append(
            _at(vs.origin, f"{field}.port.number",
                f"{svc.key} has no port {dest.port} (ports: {numbers})")
        )  # fmt: skip
    elif not dest.port and len(svc.ports) == 1:
        dest = dataclasses.replace(dest, port=svc.ports[0].number)
    elif not dest.port:
        problems.append(
            _at(vs.origin, f"{field}.port.number",
                f"is required: {svc.key} has several ports")
        )  # fmt: skip
    if dest.subset:
        rule = mesh.destination_rule(svc)
        if rule is None or rule.subset(dest.subset) is None:
            where = (
                f"DestinationRule {rule.name!r} ({rule.origin}) defines "
                + (", ".join(repr(s.name) for s in rule.subsets) or "no subsets")
                if rule is not None
                else "no DestinationRule defines subsets for it"
            )
            problems.append(
                _at(vs.origin, f"{field}.subset",
                    f"subset {dest.subset!r} of {svc.key} is not defined: {where}")
            )  # fmt: skip
    return dest


def _check_vs_overlap(
    mesh: Mesh, virtual: tuple[VirtualService, ...], problems: list[Problem]
) -> None:
    claimed: dict[ResourceKey, VirtualService] = {}
    for vs in virtual:
        if not _applies_to_mesh(vs):
            continue
        for i, host in enumerate(vs.hosts):
            svc = mesh.service(host, vs.namespace)
            if svc is None:
                continue
            other = claimed.get(svc.key)
            if other is not None and other.key != vs.key:
                problems.append(
                    _at(vs.origin, f"hosts[{i}]",
                        f"{svc.key} is already routed by VirtualService {other.name!r} "
                        f"({other.origin}); merge the two rules")
                )  # fmt: skip
                continue
            claimed[svc.key] = vs
