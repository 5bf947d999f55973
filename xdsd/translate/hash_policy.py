"""The route half of a DestinationRule's consistent hash: what the hash is computed from.

A consistent hash needs two things in Envoy: a hashing load balancer on the cluster
(``RING_HASH``/``MAGLEV``, ``cluster_policy.py``) and a ``hash_policy`` on the route
action that picks the key (a header, a cookie, the source IP, a query parameter).
Which consistent hash applies to a route destination follows Istio's lookup
(``HashForHTTPDestination``): the subset's port-level setting, else the subset's, else
the rule's port-level setting, else the rule's top-level one — each only if it has a
``consistentHash``.
"""

from __future__ import annotations

from typing import Any

from envoy.config.route.v3 import route_components_pb2

from xdsd.model import (
    DEFAULT_NAMESPACE,
    ConsistentHash,
    DestinationRule,
    HashKind,
    Mesh,
    TrafficPolicy,
)
from xdsd.translate.config_sources import duration


def consistent_hash_for(
    rule: DestinationRule | None, subset: str, port: int
) -> ConsistentHash | None:
    """The consistent hash of traffic to ``subset`` ("" = the whole service) on ``port``
    under ``rule`` (None when there is none)."""
    if rule is None:
        return None
    found = rule.subset(subset) if subset else None
    inner = found.traffic_policy if found is not None else None
    for policy, at_port in (
        (inner, True),
        (inner, False),
        (rule.traffic_policy, True),
        (rule.traffic_policy, False),
    ):
        hashing = _hash_of(policy, port if at_port else None)
        if hashing is not None:
            return hashing
    return None


def rule_hashes(rule: DestinationRule | None) -> tuple[ConsistentHash | None, ...]:
    """Every consistent hash ``rule`` writes (a value that changes when any of them
    does: for route configurations, which are rebuilt only when their inputs change)."""
    if rule is None:
        return ()
    policies = (rule.traffic_policy, *(s.traffic_policy for s in rule.subsets))
    out: list[ConsistentHash | None] = []
    for policy in policies:
        if policy is None:
            continue
        out.append(_hash_of(policy, None))
        out.extend(_hash_of(policy, p.port) for p in policy.port_level_settings)
    return tuple(out)


def hash_policy(hashing: ConsistentHash) -> Any:
    """The ``RouteAction.HashPolicy`` that computes ``hashing``'s key."""
    out = route_components_pb2.RouteAction.HashPolicy()
    if hashing.kind is HashKind.HEADER:
        out.header.header_name = hashing.name
    elif hashing.kind is HashKind.COOKIE:
        out.cookie.name = hashing.name
        if hashing.path:
            out.cookie.path = hashing.path
        if hashing.ttl is not None:
            out.cookie.ttl.CopyFrom(duration(hashing.ttl))
    elif hashing.kind is HashKind.SOURCE_IP:
        out.connection_properties.source_ip = True
    else:
        out.query_parameter.name = hashing.name
    return out


def add_hash_policies(action: Any, mesh: Mesh) -> None:
    """Append to a finished route ``action`` the hash policy of each of its outbound
    clusters (``outbound|PORT|SUBSET|FQDN``) whose DestinationRule has a consistent hash,
    once per distinct hash, in cluster order (Istio appends one per destination)."""
    names = (
        [action.cluster] if action.cluster else [c.name for c in action.weighted_clusters.clusters]
    )
    seen: list[ConsistentHash] = []
    for name in names:
        parts = name.split("|")
        if len(parts) != 4 or parts[0] != "outbound" or not parts[1].isdigit():
            continue
        service = mesh.service(parts[3], DEFAULT_NAMESPACE)
        if service is None:
            continue
        hashing = consistent_hash_for(mesh.destination_rule(service), parts[2], int(parts[1]))
        if hashing is not None and hashing not in seen:
            seen.append(hashing)
            action.hash_policy.append(hash_policy(hashing))


def _hash_of(policy: TrafficPolicy | None, port: int | None) -> ConsistentHash | None:
    """The consistent hash written at the top of ``policy`` (``port`` None) or in its
    port-level settings for ``port``."""
    if policy is None:
        return None
    if port is None:
        lb = policy.load_balancer
    else:
        found = next((p for p in policy.port_level_settings if p.port == port), None)
        lb = found.load_balancer if found is not None else None
    return lb.consistent_hash if lb is not None else None
