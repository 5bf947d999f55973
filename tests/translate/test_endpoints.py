"""ClusterLoadAssignments: subsets, localities, weights, order."""

from __future__ import annotations

from typing import Any

import pytest

from tests.translate.meshes import http, service
from xdsd.model import Endpoint, Locality, Port, Protocol
from xdsd.resources import Resource
from xdsd.translate.endpoints import (
    assignment_of_rows,
    assignment_resource,
    endpoint_rows,
    load_assignment,
    ordered_rows,
    select_endpoints,
)

PORT = Port(9080, Protocol.HTTP, "http")
ENDPOINTS = (
    Endpoint("10.0.0.4", (("version", "v2"),), Locality("us", "b"), weight=2),
    Endpoint("10.0.0.1", (("version", "v1"),), Locality("eu", "a")),
    Endpoint("10.0.0.3", (("version", "v2"),), Locality("us", "b"), weight=5),
    Endpoint("10.0.0.2", (("version", "v1"),)),
    Endpoint("10.0.0.5", (("version", "v2"),), ports=(("http", 19080),)),
)
SVC = service("reviews", PORT, endpoints=ENDPOINTS)


def flat(cla: Any) -> list[tuple[str, int, int]]:
    return [
        (
            lb.endpoint.address.socket_address.address,
            lb.endpoint.address.socket_address.port_value,
            lb.load_balancing_weight.value,
        )
        for group in cla.endpoints
        for lb in group.lb_endpoints
    ]


def test_groups_by_locality_with_locality_and_weight_always_set() -> None:
    cla = load_assignment("c", PORT, select_endpoints(SVC, PORT))
    assert cla.cluster_name == "c"
    got = [
        (
            group.HasField("locality"),
            (group.locality.region, group.locality.zone, group.locality.sub_zone),
            group.HasField("load_balancing_weight"),
            group.load_balancing_weight.value,
            len(group.lb_endpoints),
        )
        for group in cla.endpoints
    ]
    assert got == [
        (True, ("", "", ""), True, 2, 2),
        (True, ("eu", "a", ""), True, 1, 1),
        (True, ("us", "b", ""), True, 7, 2),
    ]
    assert all(lb.HasField("load_balancing_weight") for g in cla.endpoints for lb in g.lb_endpoints)


def test_endpoint_order_ignores_file_order_and_uses_port_overrides() -> None:
    cla = load_assignment("c", PORT, select_endpoints(SVC, PORT))
    assert flat(cla) == [
        ("10.0.0.2", 9080, 1),
        ("10.0.0.5", 19080, 1),
        ("10.0.0.1", 9080, 1),
        ("10.0.0.3", 9080, 5),
        ("10.0.0.4", 9080, 2),
    ]
    shuffled = service("reviews", PORT, endpoints=tuple(reversed(ENDPOINTS)))
    again = load_assignment("c", PORT, select_endpoints(shuffled, PORT))
    assert again.SerializeToString(deterministic=True) == cla.SerializeToString(deterministic=True)


@pytest.mark.parametrize(
    ("selector", "addresses"),
    [
        ((), ["10.0.0.2", "10.0.0.5", "10.0.0.1", "10.0.0.3", "10.0.0.4"]),
        ((("version", "v1"),), ["10.0.0.2", "10.0.0.1"]),
        ((("version", "v2"),), ["10.0.0.5", "10.0.0.3", "10.0.0.4"]),
        ((("version", "v3"),), []),
    ],
)
def test_subset_filtering(selector: tuple[tuple[str, str], ...], addresses: list[str]) -> None:
    cla = load_assignment("c", PORT, select_endpoints(SVC, PORT, selector))
    assert [a for a, _, _ in flat(cla)] == addresses


def test_weight_zero_is_sent_as_one() -> None:
    svc = service("s", http(80), endpoints=(Endpoint("10.0.0.1", weight=0),))
    cla = load_assignment("c", svc.ports[0], select_endpoints(svc, svc.ports[0]))
    assert flat(cla) == [("10.0.0.1", 80, 1)]
    assert cla.endpoints[0].load_balancing_weight.value == 1


def reference_assignment(
    cluster_name: str, port: Port, endpoints: Any, plaintext: Any = frozenset()
) -> Any:
    """The assignment built field by field with the generated classes (what
    ``load_assignment`` writes as wire bytes)."""
    from itertools import groupby

    from envoy.config.core.v3 import health_check_pb2
    from envoy.config.endpoint.v3 import endpoint_pb2

    from xdsd.translate.peer_authentication import plaintext_metadata

    def where(e: Endpoint) -> tuple[str, str, str]:
        return (e.locality.region, e.locality.zone, e.locality.sub_zone)

    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=cluster_name)
    ordered = sorted(endpoints, key=lambda e: (where(e), e.address, e.port_for(port)))
    for _, group in groupby(ordered, key=where):
        members = list(group)
        lle = cla.endpoints.add()
        lle.locality.SetInParent()
        lle.locality.region, lle.locality.zone, lle.locality.sub_zone = where(members[0])
        lle.load_balancing_weight.value = sum(max(e.weight, 1) for e in members)
        for member in members:
            lb = lle.lb_endpoints.add()
            if member.address.startswith("unix://"):
                lb.endpoint.address.pipe.path = member.address[len("unix://") :]
            else:
                sock = lb.endpoint.address.socket_address
                sock.address = member.address
                sock.port_value = member.port_for(port)
            if not member.healthy:
                lb.health_status = health_check_pb2.UNHEALTHY
            if member in plaintext:
                lb.metadata.MergeFromString(plaintext_metadata())
            lb.load_balancing_weight.value = max(member.weight, 1)
    return cla


MANY = tuple(
    Endpoint(
        f"10.{i % 3}.{i % 7}.{i}" if i % 5 else f"host-{i}.example.com",
        (("version", f"v{i % 3}"),),
        Locality(
            *[("eu", "us", "", "ap")[i % 4], ("a", "", "b")[i % 3], ("", "x")[i % 2]][: 1 + i % 3]
        ),
        weight=(0, 1, 7, 300, 2**24)[i % 5],
        ports=(("http", 1 + i * 997 % 65535),) if i % 4 == 0 else (),
    )
    for i in range(60)
)


#: Unhealthy endpoints, Unix domain sockets, long host names, one locality.
ODD = tuple(
    Endpoint(
        f"unix:///run/s{i}.sock" if i % 3 == 0 else "x" * (i * 9) + f"{i}.example.com",
        (("version", f"v{i % 2}"),),
        Locality("eu") if i % 5 else Locality(),
        weight=i,
        healthy=bool(i % 4),
    )
    for i in range(30)
)


@pytest.mark.parametrize(
    ("name", "endpoints"),
    [
        ("c", ENDPOINTS),
        ("outbound|9080|v1|reviews.default.svc.cluster.local", MANY),
        ("é" * 200, MANY[:3]),  # multi-byte lengths
        # an address (and so each enclosing message) longer than a one-byte length
        ("long address", (Endpoint("h" * 130 + ".example.com"), Endpoint("a" * 100 + ".io"))),
        ("empty", ()),
        ("same address twice", (Endpoint("10.0.0.1", weight=3), Endpoint("10.0.0.1", weight=2))),
        ("unsorted input", tuple(reversed(MANY))),
        ("odd endpoints", ODD),
    ],
)
def test_wire_built_assignment_equals_field_by_field(name: str, endpoints: Any) -> None:
    for selector in ((), (("version", "v1"),)):
        chosen = [e for e in endpoints if e.matches(selector)]
        for given in (
            select_endpoints(service("s", PORT, endpoints=endpoints), PORT, selector),
            chosen,
        ):
            got = load_assignment(name, PORT, given)
            want = reference_assignment(name, PORT, given)
            assert got == want
            assert got.SerializeToString(deterministic=True) == want.SerializeToString(
                deterministic=True
            )
            # made from the bytes, never parsed nor encoded again: the same resource
            made, reference = assignment_resource(name, PORT, given), Resource.of(name, want)
            assert made.payload == reference.payload
            assert (made.name, made.type_url, made.digest, made.token, made.references) == (
                reference.name,
                reference.type_url,
                reference.digest,
                reference.token,
                reference.references,
            )
            assert made == reference
            assert made.parsed is None and made.message == want  # parsed when asked for


def test_a_locality_weight_over_32_bits_is_refused_as_field_by_field() -> None:
    heavy = (
        Endpoint("10.0.0.1", weight=2**31 - 1),
        Endpoint("10.0.0.2", weight=2**31 - 1),
        Endpoint("10.0.0.3", weight=2),
    )
    with pytest.raises(ValueError, match="out of range"):
        reference_assignment("c", PORT, heavy)
    with pytest.raises(ValueError, match="out of range"):
        load_assignment("c", PORT, heavy)


@pytest.mark.parametrize("endpoints", [ENDPOINTS, MANY, ODD, MANY[:1], ()])
def test_assignments_joined_from_rows_equal_field_by_field(endpoints: Any) -> None:
    """``assignment_of_rows`` (a service's endpoints encoded once, its subsets' rows
    picked from them) writes what the generated classes do, each subset included."""
    svc = service("s", PORT, endpoints=endpoints)
    ordered = select_endpoints(svc, PORT)
    rows = endpoint_rows(PORT, ordered)
    for selector in ((), (("version", "v1"),), (("version", "v2"),), (("version", "v0"),)):
        picked = tuple(r for e, r in zip(ordered, rows, strict=True) if e.matches(selector))
        chosen = select_endpoints(svc, PORT, selector)
        made = assignment_of_rows("outbound|9080|v1|s", picked)
        reference = Resource.of(
            "outbound|9080|v1|s", reference_assignment("outbound|9080|v1|s", PORT, chosen)
        )
        assert made.payload == reference.payload
        assert (made.digest, made.token, made.references) == (
            reference.digest,
            reference.token,
            reference.references,
        )
        assert made.payload == assignment_resource(made.name, PORT, chosen).payload


def test_plaintext_endpoints_written_as_field_by_field() -> None:
    chosen = select_endpoints(service("s", PORT, endpoints=ODD), PORT)
    plaintext = frozenset(chosen[::3])
    made = assignment_resource("c", PORT, chosen, plaintext)
    assert (
        made.payload == Resource.of("c", reference_assignment("c", PORT, chosen, plaintext)).payload
    )


#: Ties on (locality, address, port): weights and labels decide, then the given order.
TIES = (
    Endpoint("10.0.0.1", (("version", "v2"),), weight=3),
    Endpoint("10.0.0.1", (("version", "v1"),), weight=3),
    Endpoint("10.0.0.1", (("version", "v1"),), weight=2),
    Endpoint("10.0.0.1", (("version", "v1"),), weight=2, healthy=False),
    Endpoint("10.0.0.1", (("version", "v1"),), weight=2),
)


@pytest.mark.parametrize("endpoints", [ENDPOINTS, MANY, ODD, TIES, tuple(reversed(MANY)), ()])
def test_ordered_rows_are_select_endpoints_and_their_rows(endpoints: Any) -> None:
    ordered, rows = ordered_rows(PORT, endpoints)
    want = select_endpoints(service("s", PORT, endpoints=endpoints), PORT)
    assert [id(e) for e in ordered] == [id(e) for e in want]
    assert rows == endpoint_rows(PORT, want)
