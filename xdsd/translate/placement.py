"""Where a sidecar's listeners bind, and the collisions that would stop them binding.

How this works: a sidecar binds one outbound listener per service port number on
``outbound_ip``, the HTTP proxy on ``outbound_ip:15001`` and one inbound listener per port
of its own service on ``instance_ip``; its application listens on ``127.0.0.1:targetPort``.
Two of these sockets collide when they have the same port and the same address, or when
either address is the wildcard (Linux refuses ``127.0.0.1:P`` next to ``0.0.0.0:P``, and
listeners never share a port: ``enable_reuse_port`` is off). One listener per port also
means one TCP service per port (TLS services may share one: SNI tells them apart). Each
collision becomes a ``Problem`` on the file of the service to change, with what to change.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from xdsd.errors import Problem
from xdsd.located import is_ip
from xdsd.model import Port, Protocol, Service
from xdsd.translate.node import is_wildcard

WILDCARD = "0.0.0.0"
#: Where an application behind its sidecar listens.
APPLICATION_IP = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class PortGroup:
    """The service ports that share one port number, services in key order."""

    number: int
    members: tuple[tuple[Service, Port], ...]
    #: The members whose protocol is routed by HTTP.
    http: tuple[tuple[Service, Port], ...] = field(init=False, compare=False, repr=False)
    #: The members proxied as plain TCP (TCP, TLS).
    tcp: tuple[tuple[Service, Port], ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "http", tuple(m for m in self.members if m[1].protocol.is_http))
        object.__setattr__(self, "tcp", tuple(m for m in self.members if not m[1].protocol.is_http))


def default_instance_ip(own: Service | None, labels: tuple[tuple[str, str], ...]) -> str:
    """The inbound bind address when the node does not give one: the address of the one
    endpoint of its service matching its labels, if there is exactly one and it is an IP
    literal; otherwise the wildcard ``0.0.0.0``."""
    if own is None:
        return WILDCARD
    matching = [e for e in own.endpoints if e.matches(labels)]
    if len(matching) == 1 and is_ip(matching[0].address):
        return matching[0].address
    return WILDCARD


class _Kind(Enum):
    OUTBOUND = "outbound"
    PROXY = "proxy"
    INBOUND = "inbound"
    APPLICATION = "application"


@dataclass(frozen=True, slots=True)
class _Bind:
    kind: _Kind
    ip: str
    port: int
    service: Service | None  # whose file a problem goes to
    service_port: Port | None


def overlaps(a: str, b: str) -> bool:
    """True when sockets bound to addresses ``a`` and ``b`` on one port would collide."""
    if is_wildcard(a) or is_wildcard(b):
        return True
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a == b


def check_port_groups(groups: Sequence[PortGroup]) -> list[Problem]:
    """Port numbers that cannot have one outbound listener: two TCP services, a TCP and a
    TLS service, or HTTP and TCP/TLS services, on one number. The same for every sidecar
    of a mesh."""
    return [problem for group in groups for problem in _protocol_mix(group)]


def ambiguous(group: PortGroup) -> bool:
    """True when ``group``'s port cannot have one outbound listener (what
    ``check_port_groups`` reports about it): two plain TCP services, TCP next to TLS, or
    HTTP next to TCP/TLS. A sidecar with virtual addresses reaches each of those services
    on its own address instead, and goes without the port's per-port listener."""
    tcp = group.tcp
    if not tcp:
        return False
    if group.http:
        return True
    plain = sum(1 for _, p in tcp if p.protocol is not Protocol.TLS)
    return plain > 1 or (plain == 1 and len(tcp) > 1)


def check_binds(
    own: Service | None,
    instance_ip: str,
    outbound_ip: str,
    groups: Mapping[int, PortGroup],
    proxy_port: int,
) -> list[Problem]:
    """Every collision between the listeners of a sidecar (and its application), in a
    stable order; ``groups`` are the mesh's port groups by number. Empty when the sidecar
    can bind everything. Outbound listeners cannot collide with each other (one per
    number), so only the ports of the sidecar's own service and of the proxy are looked
    at: the cost does not grow with the mesh."""
    binds: list[_Bind] = [_Bind(_Kind.PROXY, outbound_ip, proxy_port, None, None)]
    if own is not None:
        for port in own.ports:
            binds.append(_Bind(_Kind.INBOUND, instance_ip, port.number, own, port))
        for port in own.ports:
            binds.append(
                _Bind(_Kind.APPLICATION, APPLICATION_IP, port.effective_target_port, own, port)
            )
    for number in sorted({b.port for b in binds}):
        group = groups.get(number)
        if group is not None:
            service, port = group.members[0]
            binds.insert(0, _Bind(_Kind.OUTBOUND, outbound_ip, number, service, port))
    by_port: dict[int, list[_Bind]] = {}
    for bind in binds:
        by_port.setdefault(bind.port, []).append(bind)
    problems: list[Problem] = []
    for number in sorted(by_port):
        same_port = by_port[number]
        for i, a in enumerate(same_port):
            for b in same_port[i + 1 :]:
                if not overlaps(a.ip, b.ip):
                    continue
                problem = _collision(a, b, instance_ip, outbound_ip, groups)
                if problem is not None and problem not in problems:
                    problems.append(problem)
    return problems


def _protocol_mix(group: PortGroup) -> list[Problem]:
    """Several TLS services may share a port (the listener tells them apart by SNI); a
    plain TCP service has nothing to be told apart by, so it must be alone on its port."""
    out: list[Problem] = []
    tcp = group.tcp
    plain = [m for m in tcp if m[1].protocol is not Protocol.TLS]
    tls = [m for m in tcp if m[1].protocol is Protocol.TLS]
    for service, port in plain[1:]:
        first = plain[0][0]
        out.append(
            _at(
                service,
                port,
                f"{service.fqdn} and {first.fqdn} are both TCP services on port "
                f"{group.number}, and a sidecar has one outbound listener per port: give one "
                "of them another port number",
            )
        )
    if plain and tls:
        service, port = plain[0]
        out.append(
            _at(
                service,
                port,
                f"port {group.number} carries TCP service {service.fqdn} and TLS service "
                f"{tls[0][0].fqdn}, and a sidecar has one outbound listener per port, which "
                "tells services apart only by SNI: give one of them another port number",
            )
        )
    if tcp and group.http:
        service, port = tcp[0]
        http_service = group.http[0][0]
        out.append(
            _at(
                service,
                port,
                f"port {group.number} carries HTTP service {http_service.fqdn} and TCP service "
                f"{service.fqdn}, and a sidecar has one outbound listener per port: give one of "
                "them another port number",
            )
        )
    return out


def _collision(
    a: _Bind, b: _Bind, instance_ip: str, outbound_ip: str, groups: Mapping[int, PortGroup]
) -> Problem | None:
    kinds = {a.kind, b.kind}
    by_kind = {a.kind: a, b.kind: b}
    if kinds == {_Kind.OUTBOUND, _Kind.PROXY}:
        out = by_kind[_Kind.OUTBOUND]
        return _at(
            out.service,
            out.service_port,
            f"port {out.port} is the port of the outbound HTTP proxy listener "
            f"({outbound_ip}:{out.port}): give {_name(out)} another port number",
        )
    if kinds == {_Kind.INBOUND, _Kind.OUTBOUND}:
        inbound = by_kind[_Kind.INBOUND]
        fix = (
            "set instance_ip to a concrete address other than outbound_ip"
            if is_wildcard(instance_ip)
            else "set outbound_ip to a concrete address other than instance_ip"
            if is_wildcard(outbound_ip)
            else "set instance_ip and outbound_ip to different addresses"
        )
        return _at(
            inbound.service,
            inbound.service_port,
            f"the inbound listener {instance_ip}:{inbound.port} and the outbound listener "
            f"{outbound_ip}:{inbound.port} would bind the same port: {fix}",
        )
    if kinds == {_Kind.INBOUND, _Kind.APPLICATION}:
        app = by_kind[_Kind.APPLICATION]
        inbound = by_kind[_Kind.INBOUND]
        assert app.service_port is not None
        fix = (
            "set instance_ip to a concrete address"
            if is_wildcard(instance_ip)
            else f"set instance_ip to an address other than {APPLICATION_IP}"
        )
        return _at(
            app.service,
            app.service_port,
            f"the application listens on {APPLICATION_IP}:{app.port} (the target of port "
            f"{app.service_port.number}) and the inbound listener would bind "
            f"{instance_ip}:{inbound.port}: {fix}, or give the port a targetPort",
        )
    if kinds == {_Kind.APPLICATION, _Kind.OUTBOUND}:
        app = by_kind[_Kind.APPLICATION]
        assert app.service_port is not None
        used = groups.get(app.port)
        users = ", ".join(s.fqdn for s, _ in used.members) if used is not None else ""
        return _at(
            app.service,
            app.service_port,
            f"the application listens on {APPLICATION_IP}:{app.port} (the target of port "
            f"{app.service_port.number}), where the outbound listener for port {app.port} "
            f"({users}) would bind {outbound_ip}:{app.port}: give the port a targetPort that "
            f"no service uses as a port, or set outbound_ip to an address other than "
            f"{APPLICATION_IP}",
        )
    if kinds == {_Kind.APPLICATION, _Kind.PROXY}:
        app = by_kind[_Kind.APPLICATION]
        assert app.service_port is not None
        return _at(
            app.service,
            app.service_port,
            f"the application listens on {APPLICATION_IP}:{app.port} (the target of port "
            f"{app.service_port.number}), the outbound HTTP proxy's port on "
            f"{outbound_ip}: give the port another targetPort, or set outbound_ip to an "
            f"address other than {APPLICATION_IP}",
        )
    if kinds == {_Kind.INBOUND, _Kind.PROXY}:
        inbound = by_kind[_Kind.INBOUND]
        return _at(
            inbound.service,
            inbound.service_port,
            f"the inbound listener {instance_ip}:{inbound.port} would bind the outbound HTTP "
            f"proxy's port {outbound_ip}:{inbound.port}: set instance_ip and outbound_ip to "
            "different addresses",
        )
    return None


def _name(bind: _Bind) -> str:
    return bind.service.fqdn if bind.service is not None else "the service"


def _at(service: Service | None, port: Port | None, message: str) -> Problem:
    if service is None:
        return Problem("<node>", 0, "", message)
    field = ""
    if port is not None and port in service.ports:
        field = f"ports[{service.ports.index(port)}]"
    return Problem(service.origin.path, service.origin.line, field, message)
