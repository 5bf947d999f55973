"""Locality load balancing: a ClusterLoadAssignment as one caller's locality sees it.

How this works: Istio writes locality preferences into the endpoints a proxy receives,
per proxy: with ``distribute``, each locality group gets the share of traffic the rule
gives it (``load_balancing_weight``) for callers whose locality matches ``from``; with
failover, each group gets a ``priority`` — 0 for the caller's own region/zone/subzone,
1 for its zone, 2 for its region, 3 elsewhere (4 for regions other than the ``failover``
target of the caller's region), or by ``failoverPriority`` labels — and Envoy sends
traffic to the lowest priority that has healthy endpoints. Failover without outlier
detection could never act (nothing would ever be unhealthy), so, as in Istio, priorities
are written only when the policy has ``outlierDetection``; ``distribute`` applies either
way. A DestinationRule without ``localityLbSetting`` gets Istio's mesh default (enabled,
nothing distributed, no explicit failover); ``enabled: false`` turns it off.

Everything here is a pure function of the endpoints, the policy and ``CallerKey`` — the
part of the caller that matters (its locality, and its labels only when
``failoverPriority`` names labels) — so an assignment is built once per distinct key and
shared by every class with that key (``MeshTranslation`` memoizes it). A caller without a
locality gets the plain assignment.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

from xdsd.model import Endpoint, Locality, LocalityLbSetting, TrafficPolicy
from xdsd.translate.endpoints import LocalityGroup

#: The labels Istio gives every endpoint and proxy from its locality, usable in
#: ``failoverPriority``.
REGION_LABEL = "topology.kubernetes.io/region"
ZONE_LABEL = "topology.kubernetes.io/zone"
SUBZONE_LABEL = "topology.istio.io/subzone"


@dataclass(frozen=True, slots=True)
class LocalityPolicy:
    """The locality behaviour of one cluster: the effective setting and whether failover
    may act (the policy has outlier detection)."""

    setting: LocalityLbSetting
    failover: bool


@dataclass(frozen=True, slots=True)
class CallerKey:
    """What of a caller decides its view of a cluster's endpoints."""

    locality: Locality
    labels: tuple[tuple[str, str], ...] = ()


def locality_policy(policy: TrafficPolicy | None) -> LocalityPolicy | None:
    """The locality behaviour ``policy`` asks for, None when the assignment is the same
    for every caller (disabled, or neither weights nor outlier detection)."""
    if policy is None:
        return None
    lb = policy.load_balancer
    setting = lb.locality if lb is not None else None
    if setting is not None and setting.enabled is False:
        return None
    setting = setting or LocalityLbSetting()
    failover = policy.outlier_detection is not None
    if setting.distribute or failover:
        return LocalityPolicy(setting, failover)
    return None


def caller_key(
    policy: LocalityPolicy, locality: Locality, labels: Iterable[tuple[str, str]]
) -> CallerKey:
    """The caller's key for ``policy``: its labels count only when failoverPriority
    names them (and only those labels)."""
    names = {p.split("=", 1)[0] for p in policy.setting.failover_priority}
    if not names or not policy.failover or policy.setting.distribute:
        return CallerKey(locality)
    return CallerKey(locality, tuple(sorted((k, v) for k, v in labels if k in names)))


def localize(
    groups: list[LocalityGroup], policy: LocalityPolicy, caller: CallerKey
) -> list[LocalityGroup]:
    """``groups`` (one per locality, as ``locality_groups`` makes them) as ``caller``
    sees them under ``policy`` (Istio's ``ApplyLocalityLoadBalancer``)."""
    setting = policy.setting
    if caller.locality == Locality():
        return groups
    if setting.distribute:
        return _distribute(groups, setting, caller.locality)
    if not policy.failover:
        return groups
    if setting.failover_priority:
        groups = _by_failover_priority(groups, setting.failover_priority, caller)
        if not setting.failover:
            return groups
    return _by_locality(groups, setting, caller.locality)


def locality_matches(locality: Locality, pattern: str) -> bool:
    """Istio's locality pattern match: ``region[/zone[/subzone]]`` where ``*`` matches
    anything and a missing part matches anything (a pattern needs a region)."""
    parts = [*pattern.split("/"), "", ""][:3]
    region, zone, subzone = parts
    if not region:
        return False
    return (
        (region == "*" or region == locality.region)
        and (zone in ("", "*") or zone == locality.zone)
        and (subzone in ("", "*") or subzone == locality.sub_zone)
    )


def _distribute(
    groups: list[LocalityGroup], setting: LocalityLbSetting, caller: Locality
) -> list[LocalityGroup]:
    """The first ``distribute`` entry whose ``from`` matches the caller decides: each
    ``to`` pattern's percentage is split among the groups it matches (first pattern
    wins) by their own weights; groups no pattern matches get no traffic."""
    for entry in setting.distribute:
        if not locality_matches(caller, entry.source):
            continue
        weights: dict[int, int] = {}
        for pattern, percent in entry.to:
            matched = [
                i
                for i, g in enumerate(groups)
                if i not in weights and locality_matches(g.locality, pattern)
            ]
            total = sum(groups[i].weight for i in matched)
            for i in matched:
                weights[i] = max(1, math.ceil(groups[i].weight * percent / total))
        return [replace(g, weight=weights[i]) for i, g in enumerate(groups) if i in weights]
    return groups


def _locality_priority(caller: Locality, target: Locality, setting: LocalityLbSetting) -> int:
    if caller.region == target.region:
        if caller.zone == target.zone:
            return 0 if caller.sub_zone == target.sub_zone else 1
        return 2
    for entry in setting.failover:
        if entry.source == caller.region:
            return 3 if target.region == entry.to else 4
    return 3


def _by_locality(
    groups: list[LocalityGroup], setting: LocalityLbSetting, caller: Locality
) -> list[LocalityGroup]:
    """Priorities by locality distance (after any failoverPriority ones: those stay the
    major order), renumbered 0..N without gaps."""
    raw = [g.priority * 5 + _locality_priority(caller, g.locality, setting) for g in groups]
    return _compact([replace(g, priority=p) for g, p in zip(groups, raw, strict=True)])


def _labels_of(endpoint_labels: Iterable[tuple[str, str]], locality: Locality) -> dict[str, str]:
    labels = {
        REGION_LABEL: locality.region,
        ZONE_LABEL: locality.zone,
        SUBZONE_LABEL: locality.sub_zone,
    }
    labels.update(endpoint_labels)
    return labels


def _by_failover_priority(
    groups: list[LocalityGroup], names: tuple[str, ...], caller: CallerKey
) -> list[LocalityGroup]:
    """Each locality group split by how many leading ``failoverPriority`` labels an
    endpoint shares with the caller (all: priority 0; none: the lowest). A ``label=value``
    entry compares with that value instead of the caller's."""
    mine = _labels_of(caller.labels, caller.locality)
    wanted: list[tuple[str, str]] = []
    for entry in names:
        name, _, value = entry.partition("=")
        wanted.append((name, value if "=" in entry else mine.get(name, "")))
    out: list[LocalityGroup] = []
    for group in groups:
        by_priority: dict[int, list[Endpoint]] = {}
        for member in group.members:
            theirs = _labels_of(member.labels, member.locality)
            priority = 0
            for j, (name, value) in enumerate(wanted):
                if theirs.get(name, "") != value:
                    priority = len(wanted) - j
                    break
            by_priority.setdefault(priority, []).append(member)
        for priority in sorted(by_priority):
            members = tuple(by_priority[priority])
            weight = sum(max(m.weight, 1) for m in members)
            out.append(LocalityGroup(group.locality, members, weight, priority))
    return _compact(out)


def _compact(groups: list[LocalityGroup]) -> list[LocalityGroup]:
    """Priorities renumbered 0..N in the same order (Envoy needs them without gaps)."""
    rank = {p: i for i, p in enumerate(sorted({g.priority for g in groups}))}
    return [replace(g, priority=rank[g.priority]) for g in groups]
