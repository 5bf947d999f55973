"""One VirtualService checked against the mesh: its hosts and every destination.

A pure function of the rule and what it looks up (``Lookup``: a ``Mesh``, or the
cross-checks' indexes recording what was asked), so that the cross-checks know what to
check again when a service or a DestinationRule changes.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from xdsd.errors import Problem, Severity
from xdsd.model import (
    Destination,
    DestinationRule,
    HTTPRoute,
    L4Route,
    Service,
    VirtualService,
)
from xdsd.model.mesh import is_wildcard
from xdsd.model.rules import UNRESOLVED_BACKEND_HOST
from xdsd.sources.crosscheck.index import did_you_mean, problem_at


class Lookup(Protocol):
    """What a VirtualService check asks of the mesh (``Mesh`` answers it too)."""

    def service(self, host: str, namespace: str) -> Service | None: ...
    def matches(self, pattern: str) -> bool:
        """True when the wildcard host ``pattern`` matches some service's name."""
        ...

    def destination_rule(self, service: Service) -> DestinationRule | None: ...
    def hint(self, host: str, namespace: str) -> str:
        """``"; did you mean 'x'?"`` for a ``host`` no service answers to, or ""."""
        ...


def applies_to_mesh(vs: VirtualService) -> bool:
    """True for a rule that applies to sidecars (no gateways, or the ``mesh`` gateway)."""
    return not vs.gateways or "mesh" in vs.gateways


def check_virtual_service(
    mesh: Lookup, vs: VirtualService, problems: list[Problem]
) -> VirtualService:
    """Check a VirtualService's references; returns it with destination ports filled in
    where the destination service has a single port (``vs`` itself when nothing is).
    Hosts are looked up only for rules that apply to sidecars: a gateway's hosts are the
    names clients outside use, not services. A wildcard host (``*``, ``*.suffix``) that
    matches no service's name is warned about, as an unknown host is."""
    for i, host in enumerate(vs.hosts):
        if not applies_to_mesh(vs):
            continue
        if is_wildcard(host):
            if not mesh.matches(host):
                problems.append(
                    problem_at(
                        vs.origin,
                        f"hosts[{i}]",
                        f"no service name matches {host!r}: this wildcard is ignored until one "
                        "does",
                        Severity.WARNING,
                        vs.lines,
                    )
                )
            continue
        if mesh.service(host, vs.namespace) is None:
            problems.append(
                problem_at(
                    vs.origin,
                    f"hosts[{i}]",
                    f"no service named {host!r}: this host is ignored until one is defined"
                    + mesh.hint(host, vs.namespace),
                    Severity.WARNING,
                    vs.lines,
                )
            )
    routes = []
    for i, http in enumerate(vs.http):
        destinations = []
        for j, rd in enumerate(http.route):
            dest = _check_destination(
                mesh, vs, f"http[{i}].route[{j}].destination", rd.destination, problems
            )
            destinations.append(
                rd if dest is rd.destination else dataclasses.replace(rd, destination=dest)
            )
        mirrors = []
        for j, mirror in enumerate(http.mirrors):
            dest = _check_destination(
                mesh, vs, _mirror_field(http, i, j), mirror.destination, problems
            )
            mirrors.append(
                mirror
                if dest is mirror.destination
                else dataclasses.replace(mirror, destination=dest)
            )
        routes.append(dataclasses.replace(http, route=tuple(destinations), mirrors=tuple(mirrors)))
    tcp = _check_l4(mesh, vs, "tcp", vs.tcp, problems)
    tls = _check_l4(mesh, vs, "tls", vs.tls, problems)
    return dataclasses.replace(vs, http=tuple(routes), tcp=tcp, tls=tls)


def _check_l4(
    mesh: Lookup,
    vs: VirtualService,
    kind: str,
    rules: tuple[L4Route, ...],
    problems: list[Problem],
) -> tuple[L4Route, ...]:
    """Check the destinations of ``vs``'s tcp or tls rules (``kind``); a destination
    without a port may name a service with several ports (the listener's port is taken)."""
    out = []
    for i, rule in enumerate(rules):
        destinations = []
        for j, rd in enumerate(rule.route):
            field = f"{kind}[{i}].route[{j}].destination"
            dest = _check_destination(mesh, vs, field, rd.destination, problems, any_port=True)
            destinations.append(
                rd if dest is rd.destination else dataclasses.replace(rd, destination=dest)
            )
        changed = any(a is not b for a, b in zip(destinations, rule.route, strict=True))
        out.append(dataclasses.replace(rule, route=tuple(destinations)) if changed else rule)
    return tuple(out)


def _mirror_field(http: HTTPRoute, i: int, j: int) -> str:
    """Where mirror ``j`` of rule ``i`` was written (``mirror`` or ``mirrors[j]``)."""
    return (
        f"http[{i}].mirrors[{j}].destination" if len(http.mirrors) > 1 or j else f"http[{i}].mirror"
    )


def _check_destination(
    mesh: Lookup,
    vs: VirtualService,
    field: str,
    dest: Destination,
    problems: list[Problem],
    *,
    any_port: bool = False,
) -> Destination:
    """Check one destination of ``vs`` (written at ``field``); returns it with its port
    filled in when the service has a single port (``dest`` itself otherwise). Without
    ``any_port``, a service with several ports needs the port named. The Gateway API's
    unresolved backend (``UNRESOLVED_BACKEND_HOST``) is left as is: its condition says
    why."""
    if dest.host == UNRESOLVED_BACKEND_HOST:
        return dest
    svc = mesh.service(dest.host, vs.namespace)
    if svc is None:
        # A rule only gateways use routes there with 503, as Istio does.
        severity = Severity.ERROR if applies_to_mesh(vs) else Severity.WARNING
        problems.append(
            problem_at(
                vs.origin,
                f"{field}.host",
                f"no service named {dest.host!r}" + mesh.hint(dest.host, vs.namespace),
                severity,
                vs.lines,
            )
        )
        return dest
    if not svc.routed_ports:
        # Only TCP/TLS ports of resolution NONE: as if there were no service (a
        # gateway's route answers 503).
        severity = Severity.ERROR if applies_to_mesh(vs) else Severity.WARNING
        problems.append(
            problem_at(
                vs.origin,
                f"{field}.host",
                f"{svc.key} has only TCP/TLS ports of resolution NONE, which are served by "
                "the address the application connects to (virtual addresses, capture), "
                "never as a route's destination",
                severity,
                vs.lines,
            )
        )
        return dest
    if dest.port and svc.routed_port(dest.port) is None:
        numbers = ", ".join(str(p.number) for p in svc.routed_ports)
        why = f"{svc.key} has no port {dest.port} (ports: {numbers})"
        if svc.port(dest.port) is not None:
            why = (
                f"port {dest.port} of {svc.key} is a TCP/TLS port of resolution NONE, served "
                "by the address the application connects to (virtual addresses, capture), "
                f"never as a route's destination (ports: {numbers})"
            )
        problems.append(problem_at(vs.origin, f"{field}.port.number", why, lines=vs.lines))
    elif not dest.port and len(svc.routed_ports) == 1:
        dest = dataclasses.replace(dest, port=svc.routed_ports[0].number)
    elif not dest.port and not any_port:
        problems.append(
            problem_at(
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
                problem_at(
                    vs.origin,
                    f"{field}.subset",
                    f"subset {dest.subset!r} of {svc.key} is not defined: {where}",
                    lines=vs.lines,
                )
            )
    return dest
