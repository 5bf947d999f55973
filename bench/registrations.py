"""Registrations per second into the embedded store and into etcd (``EtcdStore``).

``python -m bench registrations [--count N] [--present P] [--runs R]`` writes ``N``
registrations (default 1,000), with ``P`` (default 1,000) already held — by the same
store for the embedded one, by another replica for etcd — into ``MemoryStore`` and into
an ``EtcdStore`` over a real etcd started in a temporary directory (Debian's
``etcd-server``), each way: one at a time (as the registry's writer does) and all at
once (the store bounds its requests in flight), then deletes them. For etcd it also
times how long a second store (another replica) takes to see all ``N`` through its
watch, and how long a new replica's start (one paged range) takes with ``N + P``
registered. Median of ``R`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from tests.etcd import Etcd
from xdsd.model.registrations import EtcdSettings, Registration
from xdsd.model.service import Locality, ResourceKey
from xdsd.registry.etcd import EtcdStore
from xdsd.registry.store import MemoryStore, RegistrationStore

GROUP = ResourceKey("WorkloadGroup", "default", "api")


def _registrations(count: int, replica: str, group: ResourceKey = GROUP) -> list[Registration]:
    return [
        Registration(
            group=group,
            address=f"10.{n // 65536}.{n // 256 % 256}.{n % 256}",
            node_id=f"api-{n}",
            labels=(("app", "api"), ("version", "v1")),
            locality=Locality("eu", "z1"),
            replica=replica,
            since=time.time(),
        )
        for n in range(count)
    ]


async def _timed(work: Callable[[], Awaitable[None]]) -> float:
    started = time.perf_counter()
    await work()
    return time.perf_counter() - started


async def _one_store(store: RegistrationStore, batch: list[Registration]) -> dict[str, float]:
    async def sequential() -> None:
        for registration in batch:
            await store.put(registration)

    async def concurrent() -> None:
        await asyncio.gather(*(store.put(r) for r in batch))

    async def delete_all() -> None:
        await asyncio.gather(*(store.delete(r.key) for r in batch))

    one_by_one = await _timed(sequential)
    await delete_all()
    at_once = await _timed(concurrent)
    deleted = await _timed(delete_all)
    return {
        "sequential_per_second": len(batch) / one_by_one,
        "concurrent_per_second": len(batch) / at_once,
        "deletes_per_second": len(batch) / deleted,
    }


PRESENT = ResourceKey("WorkloadGroup", "default", "present")


async def _memory_figures(count: int, present: int) -> dict[str, float]:
    store = MemoryStore()
    for registration in _registrations(present, "z", PRESENT):
        await store.put(registration)
    return await _one_store(store, _registrations(count, "a"))


async def _etcd_figures(etcd: Etcd, count: int, present: int) -> dict[str, float]:
    settings = EtcdSettings(
        endpoints=(etcd.url,),
        prefix="/bench",
        lease_ttl=timedelta(seconds=10),
        timeout=timedelta(seconds=2),
    )
    keys = (count + present) * 2
    holder = EtcdStore(settings, "z", max_keys=keys)  # the replica of those present
    await holder.start(lambda: None)
    await asyncio.gather(*(holder.put(r) for r in _registrations(present, "z", PRESENT)))
    writer = EtcdStore(settings, "a", max_keys=keys)
    reader = EtcdStore(settings, "b", max_keys=keys)
    seen = asyncio.Event()
    await writer.start(lambda: None)
    await reader.start(lambda: seen.set() if len(reader.current()) >= count + present else None)
    try:
        figures = await _one_store(writer, _registrations(count, "a"))
        batch = _registrations(count, "a")
        while len(reader.current()) > present:  # the reader saw _one_store's deletes
            await asyncio.sleep(0.01)
        seen.clear()
        started = time.perf_counter()
        await asyncio.gather(*(writer.put(r) for r in batch))
        await asyncio.wait_for(seen.wait(), 60)
        figures["replica_sees_all_seconds"] = time.perf_counter() - started
        late = EtcdStore(settings, "c", max_keys=keys)
        started = time.perf_counter()
        await late.start(lambda: None)
        figures["new_replica_start_seconds"] = time.perf_counter() - started
        assert len(late.current()) == count + present
        await late.close()
    finally:
        await writer.close()
        await reader.close()
        await holder.close()
    return figures


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(r[key] for r in runs), 3) for key in runs[0]}


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench registrations", description=__doc__)
    parser.add_argument("--count", type=int, default=1000, help="registrations per run")
    parser.add_argument("--present", type=int, default=1000, help="registrations held already")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    memory = [asyncio.run(_memory_figures(args.count, args.present)) for _ in range(args.runs)]
    results: dict[str, Any] = {
        "count": args.count,
        "present": args.present,
        "memory": _median(memory),
    }
    binary = shutil.which("etcd")
    if binary is None:
        print("etcd not installed (apt-get install etcd-server): the etcd figures are skipped")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            etcd = Etcd(Path(tmp), binary)
            try:
                runs = [
                    asyncio.run(_etcd_figures(etcd, args.count, args.present))
                    for _ in range(args.runs)
                ]
            finally:
                etcd.stop()
        results["etcd"] = _median(runs)
    print(f"{args.count} registrations with {args.present} present, median of {args.runs} runs")
    print(f"{'store':8} {'one by one /s':>14} {'at once /s':>11} {'deletes /s':>11}")
    for name in ("memory", "etcd"):
        if name in results:
            r = results[name]
            print(
                f"{name:8} {r['sequential_per_second']:14.0f} {r['concurrent_per_second']:11.0f}"
                f" {r['deletes_per_second']:11.0f}"
            )
    if "etcd" in results:
        r = results["etcd"]
        print(f"another replica sees all {args.count}: {r['replica_sees_all_seconds']:.3f} s")
        start = r["new_replica_start_seconds"]
        total = args.count + args.present
        print(f"a new replica starts with {total} registered: {start:.3f} s")
    return results
