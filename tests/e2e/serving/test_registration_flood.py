"""A flood of registrations over real gRPC streams against two xdsd replicas sharing one
real etcd: many short-lived ADS streams (grpcio clients, as many connections) whose node
names the WorkloadGroup, ``instance_ip`` drawn from a bounded set and two node ids per
address, alternating between the replicas. Each stream is admitted or refused —
``RESOURCE_EXHAUSTED`` once a replica holds ``max_registrations`` (those in their grace
count), ``ALREADY_EXISTS`` for an address another connected node holds — and every
refusal the clients see is counted by the replicas' metrics under its reason. Once the
flood and the grace are over: no registration key and no lease but the replicas' own in
etcd (asked directly), ``/debug/registrations`` empty on both replicas, and their
internal maps empty and their tasks as many as before the flood."""

from __future__ import annotations

import asyncio
import random
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import struct_pb2

from tests.etcd import Etcd, etcd_binary
from tests.harness import Xdsd, free_port, wait_until

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
GRACE = 1
TTL = 3
LIMIT = 12  # [registry] max_registrations of each replica
ADDRESSES = [f"10.77.0.{n}" for n in range(1, 31)]
CYCLES = 400
AT_ONCE = 40

API = """\
kind = "Service"
name = "api"

[[ports]]
name = "http"
number = 8080
protocol = "HTTP"
targetPort = {target}
"""

GROUP = """\
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: api}
spec:
  metadata:
    labels: {app: api}
  template:
    serviceAccount: api
"""

SETTINGS = """\
[registry]
grace = {grace}
replica = "{name}"
max_registrations = {limit}

[registry.etcd]
endpoints = ["{url}"]
prefix = "/flood"
lease_ttl = {ttl}
timeout = 1
"""


class World:
    def __init__(self, root: Path, binary: str) -> None:
        self.etcd = Etcd(root, binary)
        config = root / "config"
        config.mkdir()
        (config / "api.toml").write_text(API.format(target=free_port()))
        (config / "group.yaml").write_text(GROUP)
        self.xdsd: dict[str, Xdsd] = {}
        for name in ("r1", "r2"):
            settings = root / f"{name}.toml"
            settings.write_text(
                SETTINGS.format(grace=GRACE, name=name, limit=LIMIT, url=self.etcd.url, ttl=TTL)
            )
            self.xdsd[name] = Xdsd(config, root, extra=["--settings", str(settings)])

    def view(self, name: str) -> dict[str, Any]:
        view: dict[str, Any] = self.xdsd[name].admin("/debug/registrations")
        return view

    def metrics(self, name: str) -> dict[str, float]:
        port = self.xdsd[name].admin_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            lines = r.read().decode().splitlines()
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in lines
            if line.startswith("xdsd_")
        }

    def stop(self) -> None:
        for xdsd in self.xdsd.values():
            xdsd.stop()
        self.etcd.stop()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    binary = etcd_binary()
    if binary is None:
        pytest.skip("etcd not installed (apt-get install etcd-server; .ci/run does)")
    world = World(tmp_path, binary)
    try:
        yield world
    finally:
        world.stop()


def node(node_id: str, address: str) -> base_pb2.Node:
    metadata = struct_pb2.Struct()
    metadata.update({"instance_ip": address, "workload_group": "api"})
    return base_pb2.Node(id=node_id, cluster="api", metadata=metadata, user_agent_name="envoy")


async def cycle(port: int, node_id: str, address: str, hold: float) -> tuple[str, str]:
    """One sidecar's life: connect, ask for clusters, hold the stream for ``hold``
    seconds once answered, go. The status and details when refused, else OK."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(
            ADS,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )()
        try:
            await call.write(
                discovery_pb2.DiscoveryRequest(node=node(node_id, address), type_url=CDS)
            )
            answer = await asyncio.wait_for(call.read(), 20)
        except grpc.aio.AioRpcError as e:
            return e.code().name, e.details() or ""
        assert isinstance(answer, discovery_pb2.DiscoveryResponse), answer
        await asyncio.sleep(hold)
        call.cancel()
        return "OK", ""


async def flood(ports: list[int], seed: int) -> list[tuple[str, str]]:
    chance = random.Random(seed)
    turns = asyncio.Semaphore(AT_ONCE)

    async def one(n: int) -> tuple[str, str]:
        address = chance.choice(ADDRESSES)
        node_id = f"api-{address}-{chance.randrange(2)}"
        hold = chance.uniform(0.0, 0.2)
        async with turns:
            return await cycle(ports[n % len(ports)], node_id, address, hold)

    return await asyncio.gather(*(one(n) for n in range(CYCLES)))


def readyz(world: World, name: str) -> bool:
    port = world.xdsd[name].admin_port
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def test_a_flood_of_cycles_leaves_no_key_no_lease_and_bounded_state(world: World) -> None:
    for name in world.xdsd:
        wait_until(lambda n=name: readyz(world, n), what=f"{name} ready")
    before = {name: world.view(name)["bookkeeping"] for name in world.xdsd}
    leases = world.etcd.leases()
    assert len(leases) == 2  # one per replica

    outcomes = asyncio.run(flood([x.grpc_port for x in world.xdsd.values()], seed=20))
    seen = Counter(code for code, _ in outcomes)
    print(f"flood of {CYCLES} streams: {dict(seen)}")
    assert set(seen) <= {"OK", "RESOURCE_EXHAUSTED", "ALREADY_EXISTS"}, seen
    assert seen["OK"] > 0 and seen["RESOURCE_EXHAUSTED"] > 0
    full = [details for code, details in outcomes if code == "RESOURCE_EXHAUSTED"]
    assert all(f"{LIMIT} workloads are registered" in d and "max_registrations" in d for d in full)
    taken = [details for code, details in outcomes if code == "ALREADY_EXISTS"]
    assert all("is registered by node" in d for d in taken)

    # every refusal a client saw is counted under its reason by the replica that refused
    metrics = {name: world.metrics(name) for name in world.xdsd}

    def refused(reason: str) -> float:
        name = f'xdsd_registrations_refused_total{{reason="{reason}"}}'
        return sum(m.get(name, 0.0) for m in metrics.values())

    assert refused("registry_full") == seen["RESOURCE_EXHAUSTED"]
    assert refused("address_in_use") == seen["ALREADY_EXISTS"]
    for name, m in metrics.items():
        assert m["xdsd_registrations_held"] <= LIMIT, name

    # after the grace: nothing left anywhere
    prefix = "/flood/registrations/"
    wait_until(lambda: world.etcd.keys(prefix) == {}, timeout=GRACE + 20, what="no key left")
    assert world.etcd.leases() == leases
    for name in world.xdsd:
        wait_until(lambda n=name: world.view(n)["registrations"] == [], what=f"{name} empty")
        after = world.view(name)["bookkeeping"]
        print(f"{name}: bookkeeping before {before[name]}, after {after}")
        assert {k: v for k, v in after.items() if k != "tasks"} == {
            k: 0 for k in after if k != "tasks"
        }, after
        assert after["tasks"] <= before[name]["tasks"] + 2, (before[name], after)
        m = world.metrics(name)
        assert m["xdsd_registrations_held"] == 0 and m["xdsd_registrations_current"] == 0
        assert m["xdsd_registry_writes_pending"] == 0
        assert m["xdsd_registry_store_connected"] == 1
        assert m["xdsd_registrations_total"] > 0
