"""Workers: each builds its own snapshots, or one builder sends them — the cost per edit.

``xdsd serve --workers N`` could give every worker its snapshots in two ways: each worker
watches the directory and rebuilds (what it does), or one builder process rebuilds and
sends each worker the snapshots. This measures both per route edit (a VirtualService
weight, as ``fanout``'s ``route`` edit), in one process, for a generated mesh of S
services served to 10 node classes (``fanout``'s fleet of 1,000 clients has 10 classes:
snapshots are per class, so N does not change either cost):

- ``own build``: CPU of ``MeshState.reload`` of the edited file with the 10 classes
  watched (their new snapshots in the cache): what each worker pays per edit.
- ``builder, whole set``: the 10 classes' snapshots as the builder would send them
  (each resource's name, type, encoding and references, pickled): bytes per worker, the
  builder's CPU to serialize, and each worker's CPU to read them back and build its
  ``Snapshot``s (``Resource.encoded``, ``Snapshot.build`` without the consistency check).
- ``builder, changed only``: the same for only the resources whose digest changed (the
  least a builder could send), bytes and CPU both sides.

``python -m bench workers [--services 10,1000] [--edits 20]``
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.meshgen import write_mesh
from xdsd.cache.snapshot import Snapshot
from xdsd.resources import Resource
from xdsd.state import MeshState
from xdsd.translate import NodeClass

CLASSES = 10

#: One resource as a builder would send it: name, type, encoding, references.
Wire = tuple[str, str, bytes, tuple[tuple[str, str], ...]]


def _classes() -> list[NodeClass]:
    return [
        NodeClass(service=f"svc-{c:05d}", instance_ip=f"127.{1 + c // 250}.{c % 250}.1")
        for c in range(CLASSES)
    ]


def _wire(resources: list[Resource]) -> list[Wire]:
    return [(r.name, r.type_url, r.payload, r.references) for r in resources]


def _receive(data: bytes) -> list[Snapshot]:
    """A worker's side: the pickled classes back into snapshots."""
    classes: list[list[Wire]] = pickle.loads(data)
    return [
        Snapshot.build(
            (
                Resource.encoded(name, type_url, payload, refs)
                for name, type_url, payload, refs in c
            ),  # type: ignore[arg-type]
            check=False,
        )
        for c in classes
    ]


def _all(snapshot: Snapshot) -> list[Resource]:
    return [r for by_name in snapshot.resources.values() for r in by_name.values()]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _p99(values: list[float]) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(0.99 * (len(s) - 1)))]


def measure(services: int, edits: int) -> dict[str, Any]:
    """The per-edit figures (medians and p99 over ``edits`` route edits) for S =
    ``services``."""
    with tempfile.TemporaryDirectory(prefix="xdsd-workers-bench-") as tmp:
        config = write_mesh(Path(tmp), services)
        state = MeshState(str(config))
        state.reload()
        classes = _classes()
        for node in classes:
            state.cache.subscribe(node, lambda _snapshot: None)
            state.snapshot(node)
        rule = config / "rules" / "svc-00000.yaml"
        text = rule.read_text()
        own: list[float] = []
        full_bytes: list[int] = []
        full_send: list[float] = []
        full_receive: list[float] = []
        changed_bytes: list[int] = []
        changed_send: list[float] = []
        changed_receive: list[float] = []
        for i in range(edits):
            before = {node: state.snapshot(node) for node in classes}
            w = 80 if i % 2 == 0 else 90
            rule.write_text(
                text.replace("weight: 90", f"weight: {w}").replace(
                    "weight: 10", f"weight: {100 - w}"
                )
            )
            os.utime(rule)
            c = time.process_time()
            assert state.reload({str(rule)}), "the edit must change the configuration"
            for node in classes:
                state.snapshot(node)
            own.append(time.process_time() - c)
            after = {node: state.snapshot(node) for node in classes}
            # the whole set
            c = time.process_time()
            data = pickle.dumps([_wire(_all(s)) for s in after.values() if s is not None])
            full_send.append(time.process_time() - c)
            full_bytes.append(len(data))
            c = time.process_time()
            _receive(data)
            full_receive.append(time.process_time() - c)
            # only the resources that changed
            c = time.process_time()
            changed = []
            for node, snapshot in after.items():
                assert snapshot is not None
                old = before[node]
                known = {r.digest for r in _all(old)} if old is not None else set()
                changed.append(_wire([r for r in _all(snapshot) if r.digest not in known]))
            data = pickle.dumps(changed)
            changed_send.append(time.process_time() - c)
            changed_bytes.append(len(data))
            c = time.process_time()
            pickle.loads(data)
            changed_receive.append(time.process_time() - c)
    return {
        "own_build_cpu_ms": _ms(statistics.median(own)),
        "own_build_cpu_p99_ms": _ms(_p99(own)),
        "full_bytes": int(statistics.median(full_bytes)),
        "full_send_cpu_ms": _ms(statistics.median(full_send)),
        "full_receive_cpu_ms": _ms(statistics.median(full_receive)),
        "changed_bytes": int(statistics.median(changed_bytes)),
        "changed_send_cpu_ms": _ms(statistics.median(changed_send)),
        "changed_receive_cpu_ms": _ms(statistics.median(changed_receive)),
    }


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench workers", description=__doc__)
    parser.add_argument("--services", default="10,1000")
    parser.add_argument("--edits", type=int, default=20)
    args = parser.parse_args(argv)
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"{'S':>6} | {'own build':>9}{'p99':>7} | {'whole set':>10}{'send':>7}{'receive':>8}"
        f" | {'changed':>8}{'send':>7}{'receive':>8}   (CPU ms per edit per worker; bytes)"
    )
    results: dict[str, Any] = {}
    for services in (int(s) for s in args.services.split(",")):
        r = measure(services, args.edits)
        results[f"S={services}"] = r
        print(
            f"{services:>6} | {r['own_build_cpu_ms']:>9.2f}{r['own_build_cpu_p99_ms']:>7.2f} | "
            f"{r['full_bytes']:>10}{r['full_send_cpu_ms']:>7.2f}{r['full_receive_cpu_ms']:>8.2f} | "
            f"{r['changed_bytes']:>8}{r['changed_send_cpu_ms']:>7.2f}"
            f"{r['changed_receive_cpu_ms']:>8.2f}",
            flush=True,
        )
    return results
