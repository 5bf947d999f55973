"""ClusterLoadAssignments: a service port's endpoints, filtered by subset and grouped by
locality.

Every ``LocalityLbEndpoints`` carries a ``locality`` (empty when the endpoints have none)
and a ``load_balancing_weight`` (the sum of its endpoints' weights): proxyless gRPC
drops a group without them. Localities are ordered by (region, zone, subzone) and
endpoints by (address, port), so the same endpoints always encode to the same bytes,
whatever order the files listed them in. An endpoint address ``unix:///path`` (a
ServiceEntry's Unix domain socket) becomes a ``pipe`` address. An endpoint its callers
reach in plaintext (its workload's PeerAuthentication mode is DISABLE, see
``peer_authentication``) carries the metadata the cluster's plaintext transport socket
match looks for.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from itertools import groupby
from operator import itemgetter
from typing import Any

from envoy.config.core.v3 import address_pb2, base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from google.protobuf import wrappers_pb2

from xdsd.model import Endpoint, Locality, Port, Service
from xdsd.resources import ENDPOINT, Resource
from xdsd.translate.peer_authentication import plaintext_metadata
from xdsd.translate.wire import SMALL_VARINTS, delimited, tag, varint


def endpoint_weight(endpoint: Endpoint) -> int:
    """The weight sent for an endpoint: its own, at least 1 (Envoy and gRPC reject 0)."""
    return max(endpoint.weight, 1)


def select_endpoints(
    service: Service, port: Port, selector: tuple[tuple[str, str], ...] = ()
) -> tuple[Endpoint, ...]:
    """The endpoints of ``service`` whose labels include ``selector`` (all of them for an
    empty selector), in (locality, address, port) order."""
    chosen = list(filter_endpoints(service.endpoints, selector))
    chosen.sort(key=lambda e: (_order(e.locality), e.address, e.port_for(port), e.weight, e.labels))
    return tuple(chosen)


def filter_endpoints(
    endpoints: tuple[Endpoint, ...], selector: tuple[tuple[str, str], ...]
) -> tuple[Endpoint, ...]:
    """The ``endpoints`` whose labels include ``selector`` (all for an empty one), in
    their order."""
    if not selector:
        return endpoints
    if len(selector) == 1:  # a subset's one label: Endpoint.matches without a call
        pair = selector[0]
        return tuple([e for e in endpoints if pair in e.labels])
    return tuple([e for e in endpoints if e.matches(selector)])


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


def load_assignment(
    cluster_name: str,
    port: Port,
    endpoints: Iterable[Endpoint],
    plaintext: Collection[Endpoint] = (),
) -> Any:
    """The ``ClusterLoadAssignment`` named ``cluster_name`` for ``endpoints`` (as ordered by
    ``select_endpoints``) serving ``port``; those in ``plaintext`` carry the plaintext
    transport socket match metadata.

    Written as wire bytes and parsed (see ``wire``): the same message as setting its fields
    one by one, in half the time."""
    return _CLA.FromString(assignment_payload(cluster_name, port, endpoints, plaintext))


def assignment_resource(
    cluster_name: str,
    port: Port,
    endpoints: Iterable[Endpoint],
    plaintext: Collection[Endpoint] = (),
) -> Resource:
    """``Resource.of(cluster_name, load_assignment(cluster_name, port, endpoints,
    plaintext))``, made from the wire bytes without parsing them (nor encoding the message
    again): the bytes are the message's deterministic encoding (tested)."""
    return Resource.encoded(
        cluster_name, ENDPOINT, assignment_payload(cluster_name, port, endpoints, plaintext), ()
    )


def assignment_payload(
    cluster_name: str,
    port: Port,
    endpoints: Iterable[Endpoint],
    plaintext: Collection[Endpoint] = (),
) -> bytes:
    """The deterministic encoding of ``load_assignment(cluster_name, port, endpoints,
    plaintext)``: fields in number order, as ``encode`` writes them."""
    if not isinstance(endpoints, tuple | list):
        endpoints = tuple(endpoints)  # read twice when not in order
    number = port.number
    out = [delimited(_CLA_NAME, cluster_name.encode())]
    lb_endpoint = _lb_endpoint
    check = bool(plaintext)
    # One pass when the endpoints come in (locality, address, port) order, as
    # ``select_endpoints`` gives them: a locality's group ends where the next begins.
    where: tuple[str, str, str] | None = None
    last_locality: Locality | None = None
    last_address, last_port = "", -1
    parts: list[bytes] = []
    total = 0
    for e in endpoints:
        locality = e.locality
        address = e.address
        port_number = e.port_for(port) if e.ports else number
        if locality is not last_locality:
            key = (locality.region, locality.zone, locality.sub_zone)
            if key != where:
                if where is not None:
                    if key < where:
                        return _sorted_payload(cluster_name, port, endpoints, plaintext)
                    parts.append(_lle_weight(total))
                    out.append(delimited(_LLE_ENDPOINTS, b"".join(parts)))
                where = key
                parts = [_locality(key)]
                total = 0
                last_address, last_port = "", -1
            last_locality = locality
        if address < last_address or (address == last_address and port_number < last_port):
            return _sorted_payload(cluster_name, port, endpoints, plaintext)
        last_address, last_port = address, port_number
        weight = e.weight if e.weight > 1 else 1  # endpoint_weight
        parts.append(
            lb_endpoint(address, port_number, weight, check and e in plaintext, not e.healthy)
        )
        total += weight
    if where is not None:
        parts.append(_lle_weight(total))
        out.append(delimited(_LLE_ENDPOINTS, b"".join(parts)))
    return b"".join(out)


def _sorted_payload(
    cluster_name: str,
    port: Port,
    endpoints: Iterable[Endpoint],
    plaintext: Collection[Endpoint],
) -> bytes:
    """``assignment_payload`` of endpoints in any order: sorted first."""
    # (locality, address, port), then the given order: a stable sort by that key.
    number = port.number
    rows = sorted(
        (
            ((loc := e.locality).region, loc.zone, loc.sub_zone),
            e.address,
            e.port_for(port) if e.ports else number,
            i,
            e.weight if e.weight > 1 else 1,  # endpoint_weight
            bool(plaintext) and e in plaintext,
            e.healthy,
        )
        for i, e in enumerate(endpoints)
    )
    out = [delimited(_CLA_NAME, cluster_name.encode())]
    lb_endpoint = _lb_endpoint
    for where, group in groupby(rows, key=_FIRST):
        parts = [_locality(where)]
        total = 0
        for _, address, port_number, _, weight, plain, healthy in group:
            parts.append(lb_endpoint(address, port_number, weight, plain, not healthy))
            total += weight
        parts.append(_lle_weight(total))
        out.append(delimited(_LLE_ENDPOINTS, b"".join(parts)))
    return b"".join(out)


#: One endpoint as ``assignment_of_rows`` takes it: its locality's sort key, its
#: ``lb_endpoints`` field (``_lb_endpoint``) and its weight (``endpoint_weight``).
EndpointRow = tuple[tuple[str, str, str], bytes, int]


def _locality_field(where: tuple[str, str, str], rows: Sequence[EndpointRow]) -> bytes:
    """An ``endpoints`` field: the ``LocalityLbEndpoints`` of ``rows``, all of locality
    ``where``."""
    parts = [_locality(where)]
    total = 0
    for _, encoded, weight in rows:
        parts.append(encoded)
        total += weight
    parts.append(_lle_weight(total))
    body = b"".join(parts)
    n = len(body)
    return _LLE_ENDPOINTS + (SMALL_VARINTS[n] if n < 0x80 else varint(n)) + body


def endpoint_rows(port: Port, endpoints: Iterable[Endpoint]) -> tuple[EndpointRow, ...]:
    """``endpoints`` (serving ``port``) as rows for ``assignment_of_rows``, in the order
    given, none of them marked plaintext. Each endpoint is encoded once here, so the
    assignments of a service's subsets, which hold some of its endpoints, join rows
    instead of encoding their endpoints again."""
    return ordered_rows(port, endpoints, sort=False)[1]


def ordered_rows(
    port: Port, endpoints: Iterable[Endpoint], *, sort: bool = True
) -> tuple[tuple[Endpoint, ...], tuple[EndpointRow, ...]]:
    """``endpoints`` in the order ``select_endpoints`` gives (kept as given without
    ``sort``), and their ``endpoint_rows``: one pass computes both the sort key and the
    row of each endpoint."""
    number = port.number
    decorated = []
    for i, e in enumerate(endpoints):
        loc = e.locality
        decorated.append(
            (
                (loc.region, loc.zone, loc.sub_zone),
                e.address,
                e.port_for(port) if e.ports else number,
                e.weight,
                e.labels,
                i,  # a stable sort: ties keep the given order, endpoints are not compared
                e,
            )
        )
    if sort:
        decorated.sort()
    lb_endpoint = _lb_endpoint
    rows = []
    for where, address, port_number, weight, _, _, e in decorated:
        weight = weight if weight > 1 else 1  # endpoint_weight
        rows.append(
            (where, lb_endpoint(address, port_number, weight, False, not e.healthy), weight)
        )
    ordered = tuple([d[6] for d in decorated])
    return ordered, tuple(rows)


def assignment_of_rows(cluster_name: str, rows: tuple[EndpointRow, ...]) -> Resource:
    """``assignment_resource(cluster_name, port, endpoints)`` for ``rows =
    endpoint_rows(port, endpoints)``, ``endpoints`` in the order ``select_endpoints``
    gives (any filtering of it keeps that order): rows of one locality are consecutive,
    and each group is written in the order given (tested equal to ``Resource.of`` of the
    message built field by field). Raises ValueError, as the generated class does, when
    a locality's weight does not fit 32 bits."""
    raw = cluster_name.encode()
    n = len(raw)
    out = [_CLA_NAME, SMALL_VARINTS[n] if n < 0x80 else varint(n), raw]
    if rows and rows[0][0] == rows[-1][0]:  # one locality (they come in order)
        out.append(_locality_field(rows[0][0], rows))
    else:
        out.extend(_locality_field(where, list(group)) for where, group in groupby(rows, _FIRST))
    return Resource.encoded(cluster_name, ENDPOINT, b"".join(out), ())


_FIRST = itemgetter(0)
_CLA = endpoint_pb2.ClusterLoadAssignment
_LLE = endpoint_components_pb2.LocalityLbEndpoints
_LB = endpoint_components_pb2.LbEndpoint
_CLA_NAME = tag(_CLA, "cluster_name")[1]
_LLE_ENDPOINTS = tag(_CLA, "endpoints")[1]
_LLE_LOCALITY = tag(_LLE, "locality")[1]
_LLE_LB_ENDPOINTS = tag(_LLE, "lb_endpoints")[1]
_LB_ENDPOINT = tag(_LB, "endpoint")[1]
_HEALTH_STATUS = tag(_LB, "health_status")[0]
_PLAINTEXT_METADATA = delimited(tag(_LB, "metadata")[1], plaintext_metadata())
_ENDPOINT_ADDRESS = tag(endpoint_components_pb2.Endpoint, "address")[1]
_SOCKET_ADDRESS = tag(address_pb2.Address, "socket_address")[1]
_PIPE = tag(address_pb2.Address, "pipe")[1]
_PIPE_PATH = tag(address_pb2.Pipe, "path")[1]
UNIX_PREFIX = "unix://"
_SOCKET_HOST = tag(address_pb2.SocketAddress, "address")[1]
_SOCKET_PORT = tag(address_pb2.SocketAddress, "port_value")[0]
_REGION = tag(base_pb2.Locality, "region")[1]
_ZONE = tag(base_pb2.Locality, "zone")[1]
_SUB_ZONE = tag(base_pb2.Locality, "sub_zone")[1]
_UINT32_VALUE = tag(wrappers_pb2.UInt32Value, "value")[0]
_LLE_WEIGHT = tag(_LLE, "load_balancing_weight")[1]
_UINT32_MAX = 2**32 - 1


def _uint32_value(value: int) -> bytes:
    """A ``UInt32Value`` message (proto3: a zero value is left out)."""
    return _UINT32_VALUE + varint(value) if value else b""


@functools.lru_cache(maxsize=256)
def _lb_weight(weight: int) -> bytes:
    """An ``LbEndpoint``'s ``load_balancing_weight`` field."""
    return delimited(tag(_LB, "load_balancing_weight")[1], _uint32_value(weight))


@functools.lru_cache(maxsize=1024)
def _lle_weight(weight: int) -> bytes:
    """A ``LocalityLbEndpoints``' ``load_balancing_weight`` field.

    Raises ValueError, as the generated class does, when the sum does not fit 32 bits."""
    if weight > _UINT32_MAX:
        raise ValueError(f"Value out of range: {weight}")
    return delimited(_LLE_WEIGHT, _uint32_value(weight))


def _lb_endpoint(
    address: str, port: int, weight: int, plaintext: bool = False, unhealthy: bool = False
) -> bytes:
    """One ``lb_endpoints`` field: the socket address (its port is in a oneof, so it is
    written even when 0), ``health_status: UNHEALTHY`` when ``unhealthy`` (a registered
    workload its probe failed), the plaintext metadata when ``plaintext``, and the
    endpoint's weight. A socket address is the host's bytes between a head and a tail
    that depend only on the host's length and the other arguments (``_lb_frame``)."""
    if address.startswith(UNIX_PREFIX):
        return _pipe_lb_endpoint(address, weight, plaintext, unhealthy)
    host = address.encode()
    head, tail = _lb_frame(len(host), port, weight, plaintext, unhealthy)
    return head + host + tail


@functools.lru_cache(maxsize=4096)
def _lb_frame(
    n: int, port: int, weight: int, plaintext: bool, unhealthy: bool
) -> tuple[bytes, bytes]:
    """What ``_lb_endpoint`` writes before and after a socket address' host of ``n``
    bytes: the keys and lengths of the enclosing messages, then the port, health status,
    metadata and weight."""
    tail = _port_value(port)
    socket = len(_SOCKET_HOST) + len(varint(n)) + n + len(tail)
    address = len(_SOCKET_ADDRESS) + len(varint(socket)) + socket
    endpoint = len(_ENDPOINT_ADDRESS) + len(varint(address)) + address
    after = _lb_after(weight, plaintext, unhealthy)
    body = len(_LB_ENDPOINT) + len(varint(endpoint)) + endpoint + len(after)
    head = b"".join(
        (
            _LLE_LB_ENDPOINTS,
            varint(body),
            _LB_ENDPOINT,
            varint(endpoint),
            _ENDPOINT_ADDRESS,
            varint(address),
            _SOCKET_ADDRESS,
            varint(socket),
            _SOCKET_HOST,
            varint(n),
        )
    )
    return head, tail + after


def _lb_after(weight: int, plaintext: bool, unhealthy: bool) -> bytes:
    """An ``LbEndpoint``'s fields after its ``endpoint``, in number order."""
    out = b""
    if unhealthy:
        out += _HEALTH_STATUS + varint(health_check_pb2.UNHEALTHY)
    if plaintext:
        out += _PLAINTEXT_METADATA
    return out + _lb_weight(weight)


def _pipe_lb_endpoint(address: str, weight: int, plaintext: bool, unhealthy: bool) -> bytes:
    """``_lb_endpoint`` of a ``unix://`` address: a ``pipe``."""
    address_field = delimited(_PIPE, delimited(_PIPE_PATH, address[len(UNIX_PREFIX) :].encode()))
    endpoint = delimited(_ENDPOINT_ADDRESS, address_field)
    body = delimited(_LB_ENDPOINT, endpoint) + _lb_after(weight, plaintext, unhealthy)
    return delimited(_LLE_LB_ENDPOINTS, body)


@functools.lru_cache(maxsize=1024)
def _port_value(port: int) -> bytes:
    """A ``SocketAddress``' ``port_value`` field (written even when 0: it is in a oneof)."""
    return _SOCKET_PORT + varint(port)


@functools.lru_cache(maxsize=1024)
def _locality(locality: tuple[str, str, str]) -> bytes:
    """A ``LocalityLbEndpoints``' ``locality`` field, always present (empty parts left
    out, as proto3 does)."""
    body = b"".join(
        delimited(key, part.encode())
        for key, part in zip((_REGION, _ZONE, _SUB_ZONE), locality, strict=True)
        if part
    )
    return delimited(_LLE_LOCALITY, body)


def assignment_of_groups(
    cluster_name: str,
    port: Port,
    groups: Iterable[LocalityGroup],
    plaintext: Collection[Endpoint] = (),
) -> Any:
    """The ``ClusterLoadAssignment`` named ``cluster_name`` with one
    ``LocalityLbEndpoints`` per group, in the order given (with its priority); members in
    ``plaintext`` carry the plaintext transport socket match metadata."""
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=cluster_name)
    for group in groups:
        lle = cla.endpoints.add()
        _set_locality(lle.locality, group.locality)
        lle.load_balancing_weight.value = group.weight
        if group.priority:
            lle.priority = group.priority
        for member in group.members:
            lb = lle.lb_endpoints.add()
            set_address(lb.endpoint.address, member.address, member.port_for(port))
            if not member.healthy:
                lb.health_status = health_check_pb2.UNHEALTHY
            if member in plaintext:
                lb.metadata.MergeFromString(plaintext_metadata())
            lb.load_balancing_weight.value = endpoint_weight(member)
    return cla


def set_address(target: Any, address: str, port: int) -> None:
    """Fill the ``Address`` ``target``: a ``pipe`` for ``unix:///path``, else a socket
    address."""
    if address.startswith(UNIX_PREFIX):
        target.pipe.path = address[len(UNIX_PREFIX) :]
    else:
        target.socket_address.address = address
        target.socket_address.port_value = port


def _set_locality(target: Any, locality: Locality) -> None:
    target.SetInParent()
    target.region = locality.region
    target.zone = locality.zone
    target.sub_zone = locality.sub_zone
