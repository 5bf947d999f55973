"""Simulated REST xDS clients, run in a child process (``bench/rest.py`` starts them).

Each simulated client behaves like an Envoy polling over REST: one poller for CDS and one
for LDS (wildcards), then one per EDS cluster named by its CDS responses and one per route
configuration named by its LDS responses, each on its own timer, each sending the client's
whole node block and the version it last received. Like Envoy's ``RestApiFetcher``, a poller
waits ``refresh`` plus a random jitter of up to ``refresh`` after each answer (1-2 s for
Envoy's usual 1 s); ``refresh`` 0 polls back to back. Every 200 is parsed (as Envoy must);
a 304 is not.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

import aiohttp

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
PATHS = {CDS: "clusters", EDS: "endpoints", LDS: "listeners", RDS: "routes"}


@dataclass(frozen=True, slots=True)
class FleetSpec:
    """What one child process simulates."""

    url: str  # http://host:port of xdsd's REST listener
    node: dict[str, Any]  # the node template (a real Envoy's), id and cluster replaced
    client_ids: tuple[str, ...]
    service: str  # node.cluster of every client
    refresh: float  # seconds between a poller's answer and its next poll
    measure_from: float  # wall time: record 304 latencies (and CPU) from here on...
    measure_until: float  # ...until here
    cpu: int | None = None  # pin this process to one CPU


@dataclass(slots=True)
class FleetResult:
    """What one child process saw."""

    requests: int = 0
    errors: int = 0
    unchanged_us: list[float] = field(default_factory=list)  # client-side 304 latencies
    updates: list[tuple[str, float, str]] = field(default_factory=list)  # (poller, wall, ver)
    pollers: int = 0
    cpu_seconds: float = 0.0  # this process's CPU time over the measured window


def run(spec: FleetSpec, stop: Event, out: Connection) -> None:
    """Process entry point: poll until ``stop`` is set, then send a FleetResult to ``out``."""
    if spec.cpu is not None:
        os.sched_setaffinity(0, {spec.cpu})
    result = FleetResult()
    asyncio.run(_fleet(spec, stop, result))
    out.send(result)
    out.close()


async def _fleet(spec: FleetSpec, stop: Event, result: FleetResult) -> None:
    clients = [_Client(spec, cid, result) for cid in spec.client_ids]
    for client in clients:
        client.start()
    await asyncio.sleep(max(0.0, spec.measure_from - time.time()))
    cpu = time.process_time()
    await asyncio.sleep(max(0.0, spec.measure_until - time.time()))
    result.cpu_seconds = time.process_time() - cpu
    while not stop.is_set():
        await asyncio.sleep(0.05)
    for client in clients:
        await client.close()
    result.pollers = sum(len(c.tasks) for c in clients)


class _Client:
    """One simulated Envoy: its node, its HTTP connection pool and its pollers."""

    def __init__(self, spec: FleetSpec, client_id: str, result: FleetResult) -> None:
        self.spec = spec
        self.id = client_id
        self.result = result
        node = {**spec.node, "id": client_id, "cluster": spec.service}
        self.node_json = json.dumps(node, separators=(",", ":"))
        self.session: aiohttp.ClientSession | None = None
        self.tasks: dict[tuple[str, tuple[str, ...]], asyncio.Task[None]] = {}

    def start(self) -> None:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2))
        self.poll(CDS, ())
        self.poll(LDS, ())

    def poll(self, type_url: str, names: tuple[str, ...]) -> None:
        key = (type_url, names)
        if key not in self.tasks:
            self.tasks[key] = asyncio.create_task(self._poller(type_url, names))

    async def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    async def _poller(self, type_url: str, names: tuple[str, ...]) -> None:
        assert self.session is not None
        spec, result = self.spec, self.result
        url = f"{spec.url}/v3/discovery:{PATHS[type_url]}"
        label = f"{self.id} {PATHS[type_url]} {','.join(names)}"
        version = ""
        names_json = json.dumps(list(names))
        headers = {"Content-Type": "application/json"}
        if spec.refresh:
            await asyncio.sleep(random.uniform(0, spec.refresh))
        while True:
            body = (
                f'{{"version_info":"{version}","node":{self.node_json},'
                f'"resource_names":{names_json},"type_url":"{type_url}"}}'
            ).encode()
            sent = time.perf_counter()
            try:
                async with self.session.post(url, data=body, headers=headers) as response:
                    data = await response.read()
                    status = response.status
            except (aiohttp.ClientError, OSError):
                result.errors += 1
                await asyncio.sleep(spec.refresh or 0.01)
                continue
            took = time.perf_counter() - sent
            result.requests += 1
            if status == 304:
                if spec.measure_from <= time.time() < spec.measure_until:
                    result.unchanged_us.append(took * 1e6)
            elif status == 200:
                answer = json.loads(data)
                version = answer["version_info"]
                result.updates.append((label, time.time(), version))
                self._discover(type_url, answer.get("resources", []))
            else:
                result.errors += 1
            await asyncio.sleep(spec.refresh + random.uniform(0, spec.refresh))

    def _discover(self, type_url: str, resources: list[dict[str, Any]]) -> None:
        """Start the pollers a CDS or LDS response calls for, as Envoy does."""
        if type_url == CDS:
            for cluster in resources:
                if cluster.get("type") == "EDS":
                    eds = cluster.get("eds_cluster_config", {})
                    self.poll(EDS, (eds.get("service_name") or cluster["name"],))
        elif type_url == LDS:
            for name in sorted(set(_route_config_names(resources))):
                self.poll(RDS, (name,))


def _route_config_names(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [value["route_config_name"]] if "route_config_name" in value else []
        for item in value.values():
            found.extend(_route_config_names(item))
        return found
    if isinstance(value, list):
        return [n for item in value for n in _route_config_names(item)]
    return []
