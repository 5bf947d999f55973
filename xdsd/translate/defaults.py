"""The mesh-wide proxy defaults laid over a class's resources (stage *defaults*).

How this works: after its parts are chosen and before EnvoyFilters patch them, an Envoy or
MOSN class's listeners get the mesh's access log and tracing (``proxy_defaults``), and the
class gets the Prometheus stats listener on its ``instance_ip`` and the tracing collector's
cluster. Every resource is built through the translation's ``memo.Memo`` (a decorated
listener keyed by the listener it decorates and the defaults), so classes share them.
"""

from __future__ import annotations

import dataclasses

from xdsd.errors import Problem
from xdsd.model.mesh_config import MeshConfig, PrometheusStats
from xdsd.resources import CLUSTER, LISTENER, Resource
from xdsd.translate.memo import Memo
from xdsd.translate.node import NodeClass
from xdsd.translate.placement import overlaps
from xdsd.translate.proxy_defaults import (
    decorated_listener,
    stats_listener,
    stats_listener_name,
    tracing_cluster,
)


def apply_mesh_config(
    memo: Memo,
    config: MeshConfig,
    node: NodeClass,
    ip: str,
    chosen: dict[tuple[str, str], Resource],
) -> list[Problem]:
    """Lay ``config``'s proxy defaults over ``chosen`` (in place; ``node``'s generated
    resources, by (type URL, name)): each listener with the access log and tracing, the
    Prometheus stats listener on ``ip`` (the node's ``instance_ip``), and the tracing
    collector's cluster. Returns the problems: a stats listener that would collide with
    one of the node's listeners."""
    if config.decorates:
        for slot, resource in chosen.items():
            if resource.type_url == LISTENER:
                chosen[slot] = memo.get(_decorated, resource, config)
    if config.tracing is not None:
        cluster = memo.resource(tracing_cluster, config.tracing)
        chosen[(CLUSTER, cluster.name)] = cluster
    stats = config.prometheus
    if not stats.enabled:
        return []
    for resource in chosen.values():
        if resource.type_url != LISTENER:
            continue
        sock = resource.message.address.socket_address
        if sock.protocol == sock.UDP:
            continue  # a UDP listener (DNS) shares no port with the TCP stats listener
        if sock.port_value == stats.port and overlaps(sock.address, ip):
            return [
                Problem(
                    "<settings>",
                    0,
                    "mesh.prometheus.port",
                    f"the stats listener on {ip}:{stats.port} would collide with listener "
                    f"{resource.name!r} of {node.namespace}/{node.service}: choose another "
                    "port for the stats listener, or move that port",
                )
            ]
    listener = memo.get(_stats_resource, ip, stats)
    chosen[(LISTENER, stats_listener_name(ip, stats.port))] = listener
    return []


def _decorated(resource: Resource, config: MeshConfig) -> Resource:
    """The listener ``resource`` with ``config``'s access log and tracing (a memo
    build)."""
    return Resource.of(resource.name, decorated_listener(resource.message, config))


def _stats_resource(ip: str, stats: PrometheusStats) -> Resource:
    """The stats listener as a Resource that references nothing: its cluster
    ``prometheus_stats`` is in the proxy's bootstrap, not in the snapshot (a memo
    build)."""
    return dataclasses.replace(
        Resource.of(stats_listener_name(ip, stats.port), stats_listener(ip, stats)),
        references=(),
    )
