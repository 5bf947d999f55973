"""A Sidecar's own listeners: explicit egress listeners and ingress listeners.

An explicit egress listener (``egress[].port``, optionally ``bind``) serves its services
on ``bind:PORT`` (``outbound_ip:PORT`` without ``bind``), with a route configuration of
its own for HTTP: named like the port when it takes the default listener's place, else
``BIND:PORT``. Ingress listeners replace the inbound listeners of the node's service (as
Istio builds inbound listeners from ``ingress`` alone when a Sidecar has some): one per
ingress port, on ``instance_ip``, forwarding to ``defaultEndpoint``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from xdsd.errors import Problem
from xdsd.model import Port, Service
from xdsd.model.networking import Sidecar
from xdsd.translate.listeners import HTTP_PROXY_PORT, port_route_name
from xdsd.translate.placement import APPLICATION_IP, overlaps


def explicit_route_name(bind: str, port: int) -> str:
    """The route configuration of an explicit HTTP egress listener: the port's own name
    without ``bind`` (the listener replaces the default one), else ``BIND:PORT``."""
    return f"{bind}:{port}" if bind else port_route_name(port)


def endpoint_port(default_endpoint: str) -> int:
    """The port of a ``127.0.0.1:PORT`` default endpoint (0 when there is none)."""
    _, sep, port = default_endpoint.rpartition(":")
    return int(port) if sep and port.isdigit() else 0


def ingress_service(sidecar: Sidecar, own: Service | None, name: str, namespace: str) -> Service:
    """The node's service as its Sidecar's ingress listeners present it: one port per
    ingress listener (number and protocol as written), its target the default endpoint's
    port, or without one the service's own target for that port number (else the number
    itself). Its workload port (``Port.workload_port``: what PeerAuthentication and
    AuthorizationPolicy name it by) is the ingress port's number, whatever the target,
    as in Istio (an ingress listener has no target port of its own). Problems about
    these ports belong to the Sidecar's file."""
    ports = []
    for listener in sidecar.ingress:
        number = listener.port.number
        target = endpoint_port(listener.default_endpoint)
        if not target:
            own_port = own.port(number) if own is not None else None
            target = own_port.effective_target_port if own_port is not None else number
        ports.append(
            Port(number, listener.port.protocol, listener.port.name, target, policy_port=number)
        )
    base = own if own is not None else Service(name, namespace)
    return dataclasses.replace(base, ports=tuple(ports), origin=sidecar.origin)


def explicit_bind_problems(
    sidecar: Sidecar,
    explicit: Sequence[tuple[str, int]],
    inbound: Service | None,
    instance_ip: str,
    outbound_ip: str,
) -> list[Problem]:
    """Collisions of the explicit egress listeners (``(bind, port)``, empty bind:
    ``outbound_ip``) with the HTTP proxy, the inbound listeners of ``inbound`` (on
    ``instance_ip``) and its application (on 127.0.0.1:targetPort), on the Sidecar's
    file. A default outbound listener on the same address is not made (the explicit one
    takes its place), so it cannot collide."""
    problems: list[Problem] = []
    for bind, number in explicit:
        address = bind or outbound_ip
        index = next(
            (i for i, e in enumerate(sidecar.egress) if e.port and e.port.number == number), 0
        )
        field = f"egress[{index}]"

        def add(message: str, field: str = field) -> None:
            problems.append(Problem(sidecar.origin.path, sidecar.origin.line, field, message))

        if number == HTTP_PROXY_PORT and overlaps(address, outbound_ip):
            add(
                f"the listener {address}:{number} would bind the outbound HTTP proxy's port "
                f"{outbound_ip}:{number}: give it another bind address"
            )
        for port in inbound.ports if inbound is not None else ():
            if port.number == number and overlaps(address, instance_ip):
                add(
                    f"the listener {address}:{number} would bind the port of the inbound "
                    f"listener {instance_ip}:{number}: give it another bind address"
                )
            if port.effective_target_port == number and overlaps(address, APPLICATION_IP):
                add(
                    f"the listener {address}:{number} would bind the port the application "
                    f"listens on ({APPLICATION_IP}:{number}): give it another bind address"
                )
    return problems
