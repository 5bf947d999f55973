"""Locality load balancing: assignments as a caller's locality sees them, and their
sharing between node classes."""

from __future__ import annotations

from typing import Any

import pytest

from tests.translate.meshes import http, service
from xdsd.model import (
    DestinationRule,
    Endpoint,
    LoadBalancer,
    Locality,
    LocalityFailover,
    LocalityLbSetting,
    LocalityWeights,
    Mesh,
    OutlierDetection,
    TrafficPolicy,
)
from xdsd.resources import ENDPOINT
from xdsd.translate import NodeClass
from xdsd.translate.endpoints import locality_groups
from xdsd.translate.locality import (
    CallerKey,
    caller_key,
    locality_matches,
    locality_policy,
    localize,
)
from xdsd.translate.mesh import MeshTranslation

PORT = http(80)
R1Z1 = Locality("r1", "z1")
ENDPOINTS = (
    Endpoint("10.0.0.1", (("env", "prod"),), R1Z1),
    Endpoint("10.0.0.2", (("env", "test"),), R1Z1),
    Endpoint("10.0.0.3", (), Locality("r1", "z2")),
    Endpoint("10.0.0.4", (), Locality("r2", "z1"), weight=3),
    Endpoint("10.0.0.5", (), Locality("r3", "z1")),
)
OUTLIER = OutlierDetection()


def setting(**kw: Any) -> TrafficPolicy:
    return TrafficPolicy(LoadBalancer(locality=LocalityLbSetting(**kw)), outlier_detection=OUTLIER)


def view(policy: TrafficPolicy, caller: Locality, labels: tuple[tuple[str, str], ...] = ()) -> Any:
    lp = locality_policy(policy)
    assert lp is not None
    groups = localize(locality_groups(PORT, ENDPOINTS), lp, caller_key(lp, caller, labels))
    return [
        (str(g.locality), g.priority, g.weight, [e.address[-1] for e in g.members]) for g in groups
    ]


def test_default_failover_priorities_by_distance() -> None:
    """Same zone 0, same region 1, elsewhere 2 (Istio's 0/1/2/3 renumbered)."""
    assert view(setting(), R1Z1) == [
        ("r1/z1", 0, 2, ["1", "2"]),
        ("r1/z2", 1, 1, ["3"]),
        ("r2/z1", 2, 3, ["4"]),
        ("r3/z1", 2, 1, ["5"]),
    ]


def test_explicit_failover_region_comes_before_other_regions() -> None:
    got = view(setting(failover=(LocalityFailover("r1", "r3"),)), R1Z1)
    assert [(loc, p) for loc, p, _, _ in got] == [
        ("r1/z1", 0),
        ("r1/z2", 1),
        ("r2/z1", 3),
        ("r3/z1", 2),
    ]


def test_failover_priority_labels_split_groups() -> None:
    """failoverPriority [region label, env]: same region and env first, then same region,
    then the rest; the caller's labels decide."""
    policy = setting(failover_priority=("topology.kubernetes.io/region", "env"))
    got = view(policy, R1Z1, (("env", "prod"),))
    assert got == [
        ("r1/z1", 0, 1, ["1"]),
        ("r1/z1", 1, 1, ["2"]),
        ("r1/z2", 1, 1, ["3"]),
        ("r2/z1", 2, 3, ["4"]),
        ("r3/z1", 2, 1, ["5"]),
    ]


def test_failover_priority_with_fixed_value() -> None:
    got = view(setting(failover_priority=("env=test",)), Locality("r9"))
    assert [(p, m) for _, p, _, m in got if p == 0] == [(0, ["2"])]


def test_distribute_splits_percentages_by_group_weight() -> None:
    """80 % to r1/* (split 2:1 by the groups' own weights), 20 % to r2; r3 gets none."""
    policy = TrafficPolicy(
        LoadBalancer(
            locality=LocalityLbSetting(
                distribute=(
                    LocalityWeights("r2/*", (("r2/*", 100),)),
                    LocalityWeights("r1/z1/*", (("r1/*", 80), ("r2/*", 20))),
                )
            )
        )
    )
    assert [(loc, w) for loc, _, w, _ in view(policy, R1Z1)] == [
        ("r1/z1", 54),
        ("r1/z2", 27),
        ("r2/z1", 20),
    ]


def test_caller_without_locality_or_outlier_detection_sees_the_plain_assignment() -> None:
    policy = setting(failover=(LocalityFailover("r1", "r2"),))
    lp = locality_policy(policy)
    assert lp is not None
    groups = locality_groups(PORT, ENDPOINTS)
    assert localize(groups, lp, CallerKey(Locality())) == groups
    mesh_default = locality_policy(TrafficPolicy(outlier_detection=OUTLIER))
    assert mesh_default is not None and mesh_default.setting == LocalityLbSetting()
    no_outlier = TrafficPolicy(LoadBalancer(locality=LocalityLbSetting()))
    assert locality_policy(no_outlier) is None
    assert locality_policy(setting(enabled=False)) is None
    assert locality_policy(None) is None


@pytest.mark.parametrize(
    ("pattern", "locality", "matches"),
    [
        ("r1", R1Z1, True),
        ("r1/*", R1Z1, True),
        ("r1/z1/*", R1Z1, True),
        ("r1/z2", R1Z1, False),
        ("*", R1Z1, True),
        ("r2/*", R1Z1, False),
        ("", R1Z1, False),
        ("r1/z1/s1", Locality("r1", "z1", "s2"), False),
    ],
)
def test_locality_patterns(pattern: str, locality: Locality, matches: bool) -> None:
    assert locality_matches(locality, pattern) is matches


def test_caller_key_keeps_only_failover_priority_labels() -> None:
    lp = locality_policy(setting(failover_priority=("env=prod", "tier")))
    assert lp is not None
    key = caller_key(lp, R1Z1, (("app", "x"), ("tier", "web"), ("env", "dev")))
    assert key == CallerKey(R1Z1, (("env", "dev"), ("tier", "web")))
    plain = locality_policy(setting())
    assert plain is not None and caller_key(plain, R1Z1, (("tier", "web"),)) == CallerKey(R1Z1)


def test_classes_share_assignments_per_locality() -> None:
    """Callers in one locality get the very same assignment object; a caller elsewhere
    its own; a caller without a locality the shared base one."""
    web = service("web", PORT, endpoints=ENDPOINTS)
    rule = DestinationRule("web", "web", traffic_policy=setting())
    mesh = Mesh((web, service("a", http(81, 9181))), (), (rule,))
    translation = MeshTranslation(mesh)
    name = "outbound|80||web.default.svc.cluster.local"

    def cla(**kw: Any) -> Any:
        node = NodeClass(service="a", instance_ip="127.0.0.9", **kw)
        return translation.snapshot_for(node).get(ENDPOINT)[name]

    x = cla(locality=R1Z1, labels=(("version", "1"),))
    y = cla(locality=R1Z1, labels=(("version", "2"),))
    far = cla(locality=Locality("r3"))
    base = cla()
    assert x is y
    assert far is not x and base is not x
    assert [e.priority for e in x.message.endpoints] == [0, 1, 2, 2]
    assert [e.priority for e in far.message.endpoints] == [1, 1, 1, 0]
    assert [e.priority for e in base.message.endpoints] == [0, 0, 0, 0]
