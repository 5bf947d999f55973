"""The server's cost of one REST poll, in process: no sockets, no aiohttp, no noise from
other processes. ``RestDiscovery.answer`` (body bytes in, response out) is called in a
loop for each poller of one simulated Envoy, with the Envoy's real node block, first to
learn the versions (200), then unchanged (304). Optionally under cProfile.
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import time
from pathlib import Path
from typing import Any

from xdsd.app import MeshState
from xdsd.resources import SHORT_NAMES, TypeUrl
from xdsd.transports.rest import RestDiscovery

CDS = TypeUrl("type.googleapis.com/envoy.config.cluster.v3.Cluster")
LDS = TypeUrl("type.googleapis.com/envoy.config.listener.v3.Listener")
EDS = TypeUrl("type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment")
RDS = TypeUrl("type.googleapis.com/envoy.config.route.v3.RouteConfiguration")


def _body(node_json: str, type_url: str, names: list[str], version: str) -> bytes:
    return (
        f'{{"version_info":"{version}","node":{node_json},'
        f'"resource_names":{json.dumps(names)},"type_url":"{type_url}"}}'
    ).encode()


def pollers(rest: RestDiscovery, node_json: str) -> list[tuple[TypeUrl, bytes]]:
    """Every poller of one client with the version it holds, as unchanged poll bodies."""
    found: list[tuple[TypeUrl, list[str]]] = [(CDS, []), (LDS, [])]
    out: list[tuple[TypeUrl, bytes]] = []
    i = 0
    while i < len(found):
        type_url, names = found[i]
        i += 1
        response = rest.answer(type_url, _body(node_json, type_url, names, ""))
        assert response.status == 200, response.body
        assert isinstance(response.body, bytes)
        answer = json.loads(response.body)
        out.append((type_url, _body(node_json, type_url, names, answer["version_info"])))
        for r in answer.get("resources", []):
            if type_url == CDS and r.get("type") == "EDS":
                eds = r.get("eds_cluster_config", {}).get("service_name") or r["name"]
                found.append((EDS, [eds]))
            if type_url == LDS:
                for name in sorted(set(_route_names(r))):
                    if (RDS, [name]) not in found:
                        found.append((RDS, [name]))
    return out


def _route_names(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [value["route_config_name"]] if "route_config_name" in value else []
        return found + [n for v in value.values() for n in _route_names(v)]
    if isinstance(value, list):
        return [n for v in value for n in _route_names(v)]
    return []


def measure(config: Path, node: dict[str, Any], rounds: int, profile: bool) -> dict[str, Any]:
    """Per-poll server time (µs) of unchanged polls, by type; and the top of a profile."""
    state = MeshState(config)
    state.reload()
    rest = RestDiscovery(state)
    node_json = json.dumps(node, separators=(",", ":"))
    bodies = pollers(rest, node_json)
    per_type: dict[str, list[float]] = {}
    profiler = cProfile.Profile() if profile else None
    for _ in range(rounds):
        for type_url, body in bodies:
            body = bytes(bytearray(body))  # a new object, as each request's body is
            if profiler is not None:
                profiler.enable()
            started = time.perf_counter_ns()
            response = rest.answer(type_url, body)
            took = time.perf_counter_ns() - started
            if profiler is not None:
                profiler.disable()
            assert response.status == 304, response.status
            per_type.setdefault(SHORT_NAMES[type_url], []).append(took / 1000)
    result: dict[str, Any] = {"pollers": len(bodies), "body_bytes": len(bodies[0][1])}
    for short, samples in per_type.items():
        s = sorted(samples)
        result[short] = {"p50_us": s[len(s) // 2], "p99_us": s[int(0.99 * len(s))]}
    every = sorted(x for samples in per_type.values() for x in samples)
    result["all"] = {"p50_us": every[len(every) // 2], "p99_us": every[int(0.99 * len(every))]}
    if profiler is not None:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
        result["profile"] = text.getvalue()
    return result
