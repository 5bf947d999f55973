"""ClusterLoadAssignments: a service port's endpoints, filtered by subset and grouped by
locality.

Every ``LocalityLbEndpoints`` carries a ``locality`` (empty when the endpoints have none)
and a ``load_balancing_weight`` (the sum of its endpoints' weights): proxyless gRPC
drops a group without them. Localities are ordered by (region, zone, subzone) and
endpoints by (address, port), so the same endpoints always encode to the same bytes,
whatever order the files listed them in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import groupby
from typing import Any

from envoy.config.endpoint.v3 import endpoint_pb2

from xdsd.model import Endpoint, Locality, Port, Service


def endpoint_weight(endpoint: Endpoint) -> int:
    """The weight sent for an endpoint: its own, at least 1 (Envoy and gRPC reject 0)."""
    return max(endpoint.weight, 1)


def select_endpoints(
    service: Service, port: Port, selector: tuple[tuple[str, str], ...] = ()
) -> tuple[Endpoint, ...]:
    """The endpoints of ``service`` whose labels include ``selector`` (all of them for an
    empty selector), in (locality, address, port) order."""
    chosen = (
        [e for e in service.endpoints if e.matches(selector)] if selector else [*service.endpoints]
    )
    chosen.sort(key=lambda e: (_order(e.locality), e.address, e.port_for(port), e.weight, e.labels))
    return tuple(chosen)


def _order(locality: Locality) -> tuple[str, str, str]:
    """A locality's sort key (the dataclass order, compared in C)."""
    return (locality.region, locality.zone, locality.sub_zone)


@dataclass(frozen=True, slots=True)
class LocalityGroup:
    """The endpoints of one locality at one priority, with the group's weight."""

    locality: Locality
    members: tuple[Endpoint, ...]
    weight: int
    priority: int = 0


def locality_groups(port: Port, endpoints: Iterable[Endpoint]) -> list[LocalityGroup]:
    """``endpoints`` grouped by locality in (region, zone, subzone) order, endpoints by
    (address, port) within a group; a group weighs the sum of its endpoints' weights."""
    ordered = sorted(endpoints, key=lambda e: (_order(e.locality), e.address, e.port_for(port)))
    out: list[LocalityGroup] = []
    for _, group in groupby(ordered, key=lambda e: _order(e.locality)):
        members = tuple(group)
        weight = sum(endpoint_weight(e) for e in members)
        out.append(LocalityGroup(members[0].locality, members, weight))
    return out


def load_assignment(cluster_name: str, port: Port, endpoints: Iterable[Endpoint]) -> Any:
    """The ``ClusterLoadAssignment`` named ``cluster_name`` for ``endpoints`` (as ordered by
    ``select_endpoints``) serving ``port``."""
    return assignment_of_groups(cluster_name, port, locality_groups(port, endpoints))


def assignment_of_groups(cluster_name: str, port: Port, groups: Iterable[LocalityGroup]) -> Any:
    """The ``ClusterLoadAssignment`` named ``cluster_name`` with one
    ``LocalityLbEndpoints`` per group, in the order given."""
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=cluster_name)
    for group in groups:
        lle = cla.endpoints.add()
        _set_locality(lle.locality, group.locality)
        lle.load_balancing_weight.value = group.weight
        if group.priority:
            lle.priority = group.priority
        for member in group.members:
            lb = lle.lb_endpoints.add()
            sock = lb.endpoint.address.socket_address
            sock.address = member.address
            sock.port_value = member.port_for(port)
            lb.load_balancing_weight.value = endpoint_weight(member)
    return cla


def _set_locality(target: Any, locality: Locality) -> None:
    target.SetInParent()
    target.region = locality.region
    target.zone = locality.zone
    target.sub_zone = locality.sub_zone
