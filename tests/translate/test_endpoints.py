"""ClusterLoadAssignments: subsets, localities, weights, order."""

from __future__ import annotations

from typing import Any

import pytest

from tests.translate.meshes import http, service
from xdsd.model import Endpoint, Locality, Port, Protocol
from xdsd.translate.endpoints import load_assignment, select_endpoints

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
