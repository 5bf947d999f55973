"""The cross-checks as one pass over the whole directory: the reference the incremental
``CrossCheck`` is held to (the implementation it replaced, kept as the specification).

``reference_load`` loads a directory with it, the way a cold load did.
"""

from __future__ import annotations

import dataclasses

from xdsd.errors import Problem, Severity
from xdsd.model import (
    DestinationRule,
    FieldLines,
    Mesh,
    MeshObject,
    Origin,
    RawResource,
    ResourceKey,
    Service,
    VirtualService,
    line_of,
)
from xdsd.model.gateway_api import GATEWAY_API_KINDS, GatewayAPI
from xdsd.model.mesh import OTHER_KINDS
from xdsd.model.networking import Gateway, ServiceEntry, WorkloadEntry
from xdsd.sources.config_file import parse_config_file
from xdsd.sources.crosscheck.addresses import clash_problem, clashing_port, pinned
from xdsd.sources.crosscheck.authorization import http_only_problems
from xdsd.sources.crosscheck.endpoints import endpoint_problems
from xdsd.sources.crosscheck.gateways import gateway_problems
from xdsd.sources.crosscheck.hosts import host_hint
from xdsd.sources.crosscheck.index import did_you_mean
from xdsd.sources.crosscheck.jwt_issuers import conflict_problems, service_conflicts
from xdsd.sources.listing import list_config_files
from xdsd.sources.service_entry import entry_services


def reference_load(root: str) -> tuple[Mesh, list[Problem], tuple[str, ...]]:
    """The mesh, every problem (in order) and the files of a cold one-pass load."""
    problems: list[Problem] = []
    files = list_config_files(root, problems)
    resources: list[tuple[MeshObject, Origin]] = []
    raw: list[RawResource] = []
    for path in files:
        result = parse_config_file(root, path)
        resources.extend(result.resources)
        raw.extend(result.raw)
        problems.extend(result.problems)
    mesh = cross_check(resources, raw, problems)
    return mesh, problems, tuple(files)


def cross_check(
    resources: list[tuple[MeshObject, Origin]], raw: list[RawResource], problems: list[Problem]
) -> Mesh:
    """The mesh of ``resources`` (in file order: the first of two duplicates wins) and
    ``raw``, appending every problem found to ``problems`` (the mesh is meaningful only
    when none of them is an error)."""
    by_key: dict[ResourceKey, MeshObject] = {}
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
    others: dict[str, list[MeshObject]] = {kind: [] for kind in OTHER_KINDS}
    api: dict[str, list[MeshObject]] = {name: [] for name in GATEWAY_API_KINDS.values()}
    for resource in by_key.values():
        if isinstance(resource, Service):
            services.append(resource)
        elif isinstance(resource, DestinationRule):
            rules.append(resource)
        elif isinstance(resource, VirtualService):
            virtual.append(resource)
        elif resource.key.kind in GATEWAY_API_KINDS:
            api[GATEWAY_API_KINDS[resource.key.kind]].append(resource)
        else:
            others[resource.key.kind].append(resource)
    # Each ServiceEntry (in key order) gives a service per host, with the WorkloadEntries
    # of its namespace (in key order) that it selects.
    entries = sorted(
        (e for e in others["ServiceEntry"] if isinstance(e, ServiceEntry)), key=lambda e: e.key
    )
    workloads = sorted(
        (w for w in others["WorkloadEntry"] if isinstance(w, WorkloadEntry)), key=lambda w: w.key
    )
    for entry in entries:
        derived, found = entry_services(entry, workloads)
        services.extend(derived)
        problems.extend(found)
    kinds = {name: tuple(others[kind]) for kind, name in OTHER_KINDS.items()}
    gateway_api = GatewayAPI(
        **{name: tuple(sorted(found, key=lambda o: o.key)) for name, found in api.items()}  # type: ignore[arg-type]
    )
    mesh = Mesh(tuple(services), (), tuple(rules), (), **kinds, gateway_api=gateway_api)  # type: ignore[arg-type]
    _check_hosts(mesh.services, entries, problems)
    _check_destination_rules(mesh, problems)
    # Services without endpoints, subsets selecting none (by service key).
    entry_keys = {e.key: e for e in entries}
    for svc in mesh.services:
        problems.extend(endpoint_problems(svc, mesh.destination_rule(svc), entry_keys))
    _check_pinned_addresses(mesh.services, problems)
    checked = tuple(_check_virtual_service(mesh, vs, problems) for vs in mesh_sorted(virtual))
    _check_vs_overlap(mesh, checked, problems)
    defined = {g.key for g in others["Gateway"] if isinstance(g, Gateway)}
    for vs in mesh_sorted(virtual):
        problems.extend(gateway_problems(vs, defined)[1])
    # AuthorizationPolicies (in key order) warn about HTTP-only fields on TCP ports.
    for policy in mesh.authorization_policies:
        problems.extend(http_only_problems(policy, mesh.services))
    # RequestAuthentications: one issuer twice for the workloads of a service.
    authentications = {p.key: p for p in mesh.request_authentications}
    conflicts = {
        svc.key: service_conflicts(svc, mesh.request_authentications) for svc in mesh.services
    }
    problems.extend(conflict_problems(conflicts, authentications))
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


def _at(
    origin: Origin,
    field: str,
    message: str,
    severity: Severity = Severity.ERROR,
    lines: FieldLines = (),
) -> Problem:
    return Problem(origin.path, line_of(lines, field, origin.line), field, message, severity)


def _hint(mesh: Mesh, host: str, namespace: str) -> str:
    """A near name for ``host`` among every host name of the mesh."""
    return host_hint(mesh._hosts, host, namespace)


def _field(svc: Service, i: int, entries: list[ServiceEntry]) -> str:
    """Where name ``i`` of ``svc`` is written (a service of a ServiceEntry is one of the
    entry's hosts)."""
    if svc.entry:
        [entry] = [e for e in entries if (e.namespace, e.name) == (svc.namespace, svc.entry)]
        return f"hosts[{entry.hosts.index(svc.name)}]"
    return f"hosts[{i - 1}]" if i else "name"


def _check_hosts(
    services: tuple[Service, ...], entries: list[ServiceEntry], problems: list[Problem]
) -> None:
    """``services`` in key order."""
    owners: dict[str, Service] = {}
    for svc in services:
        for i, host in enumerate((svc.fqdn, *svc.hosts)):
            other = owners.get(host)
            if other is not None and other.key != svc.key:
                problems.append(
                    _at(
                        svc.origin,
                        _field(svc, i, entries),
                        f"host {host!r} is already a name of {other.key} ({other.origin})",
                        lines=svc.lines,
                    )
                )
            owners.setdefault(host, svc)


def _check_pinned_addresses(services: tuple[Service, ...], problems: list[Problem]) -> None:
    """``services`` in key order: each single address pinned by a service that an earlier
    one pins too, with a port number both have, TCP on either side."""
    earlier: dict[str, list[tuple[Service, str]]] = {}
    for svc in services:
        for address, field in pinned(svc):
            claimants = earlier.setdefault(address, [])
            for other, other_field in claimants:
                port = clashing_port(svc, other)
                if port is not None:
                    problems.append(clash_problem(svc, field, address, other, other_field, port))
                    break
            claimants.append((svc, field))


def _check_destination_rules(mesh: Mesh, problems: list[Problem]) -> None:
    claimed: dict[ResourceKey, DestinationRule] = {}
    for rule in mesh.destination_rules:
        svc = mesh.service(rule.host, rule.namespace)
        if svc is None:
            problems.append(
                _at(
                    rule.origin,
                    "host",
                    f"no service named {rule.host!r}: rule ignored until one is defined"
                    + _hint(mesh, rule.host, rule.namespace),
                    Severity.WARNING,
                    rule.lines,
                )
            )
            continue
        other = claimed.get(svc.key)
        if other is not None:
            problems.append(
                _at(
                    rule.origin,
                    "host",
                    f"{svc.key} already has DestinationRule {other.name!r} ({other.origin}); "
                    "merge them into one",
                    lines=rule.lines,
                )
            )
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
        if not _applies_to_mesh(vs):
            continue
        if host.startswith("*"):
            suffix = host[1:].lower()
            if not any(name.lower().endswith(suffix) for name in mesh._hosts):
                problems.append(
                    _at(
                        vs.origin,
                        f"hosts[{i}]",
                        f"no service name matches {host!r}: this wildcard is ignored until "
                        "one does",
                        Severity.WARNING,
                        vs.lines,
                    )
                )
            continue
        if mesh.service(host, vs.namespace) is None:
            problems.append(
                _at(
                    vs.origin,
                    f"hosts[{i}]",
                    f"no service named {host!r}: this host is ignored until one is defined"
                    + _hint(mesh, host, vs.namespace),
                    Severity.WARNING,
                    vs.lines,
                )
            )
    routes = []
    for i, http in enumerate(vs.http):
        destinations = []
        for j, rd in enumerate(http.route):
            field = f"http[{i}].route[{j}].destination"
            dest = rd.destination
            svc = mesh.service(dest.host, vs.namespace)
            if svc is None:
                # A rule only gateways use routes there with 503, as Istio does.
                severity = Severity.ERROR if _applies_to_mesh(vs) else Severity.WARNING
                problems.append(
                    _at(
                        vs.origin,
                        f"{field}.host",
                        f"no service named {dest.host!r}" + _hint(mesh, dest.host, vs.namespace),
                        severity,
                        vs.lines,
                    )
                )
                destinations.append(rd)
                continue
            if dest.port and svc.port(dest.port) is None:
                numbers = ", ".join(str(p.number) for p in svc.ports)
                problems.append(
                    _at(
                        vs.origin,
                        f"{field}.port.number",
                        f"{svc.key} has no port {dest.port} (ports: {numbers})",
                        lines=vs.lines,
                    )
                )
            elif not dest.port and len(svc.ports) == 1:
                dest = dataclasses.replace(dest, port=svc.ports[0].number)
            elif not dest.port:
                problems.append(
                    _at(
                        vs.origin,
                        f"{field}.port.number",
                        f"is required: {svc.key} has several ports",
                        lines=vs.lines,
                    )
                )
            if dest.subset:
                rule = mesh.destination_rule(svc)
                if rule is None or rule.subset(dest.subset) is None:
                    where = (
                        f"DestinationRule {rule.name!r} ({rule.origin}) defines "
                        + (", ".join(repr(s.name) for s in rule.subsets) or "no subsets")
                        + did_you_mean(dest.subset, [s.name for s in rule.subsets])
                        if rule is not None
                        else "no DestinationRule defines subsets for it"
                    )
                    problems.append(
                        _at(
                            vs.origin,
                            f"{field}.subset",
                            f"subset {dest.subset!r} of {svc.key} is not defined: {where}",
                            lines=vs.lines,
                        )
                    )
            destinations.append(dataclasses.replace(rd, destination=dest))
        routes.append(dataclasses.replace(http, route=tuple(destinations)))
    return dataclasses.replace(vs, http=tuple(routes))


def _check_vs_overlap(
    mesh: Mesh, virtual: tuple[VirtualService, ...], problems: list[Problem]
) -> None:
    claimed: dict[ResourceKey, VirtualService] = {}
    wildcards: dict[str, VirtualService] = {}
    for vs in virtual:
        if not _applies_to_mesh(vs):
            continue
        for i, host in enumerate(vs.hosts):
            if host.startswith("*"):
                first = wildcards.setdefault(host.lower(), vs)
                if first.key != vs.key:
                    problems.append(
                        _at(
                            vs.origin,
                            f"hosts[{i}]",
                            f"{host!r} is already routed by VirtualService {first.name!r} "
                            f"({first.origin}); merge the two rules",
                            lines=vs.lines,
                        )
                    )
                continue
            svc = mesh.service(host, vs.namespace)
            if svc is None:
                continue
            other = claimed.get(svc.key)
            if other is not None and other.key != vs.key:
                problems.append(
                    _at(
                        vs.origin,
                        f"hosts[{i}]",
                        f"{svc.key} is already routed by VirtualService {other.name!r} "
                        f"({other.origin}); merge the two rules",
                        lines=vs.lines,
                    )
                )
                continue
            claimed[svc.key] = vs
