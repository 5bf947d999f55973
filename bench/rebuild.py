"""Rebuild cost: cold builds of generated meshes, and one service's file changing.

Cold: for each mesh size, in one process, the load of the whole directory (read, parse,
validate, cross-check), the translation and snapshot of one node class, and of four more
classes (other services, other bind addresses) on the same translation.

One-file change: a ``MeshState`` serving the largest mesh with every measured class
watched; one service's file is rewritten (an endpoint address changes, so its clusters'
endpoints change) and ``MeshState.reload`` is called with the changed path, as the
watcher does. Timed from the reload call to the new snapshot of every watched class being
in the cache, split into reading+parsing, cross-checking, translating and snapshot
building (``MeshState.last_timings``). The watcher's quiet period is not included.

``python -m bench rebuild [--services 100,1000,10000] [--endpoints 10] [--edits 20]
[--runs 3]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.meshgen import write_mesh
from xdsd.app import MeshState
from xdsd.sources import load_directory
from xdsd.translate import MeshTranslation, NodeClass


def _classes() -> list[NodeClass]:
    v1 = (("version", "v1"),)
    return [
        NodeClass(service="svc-00000", labels=v1, instance_ip="127.0.0.2"),
        NodeClass(service="svc-00001", labels=v1, instance_ip="127.0.0.3"),
        NodeClass(service="svc-00002", labels=(("version", "v2"),), instance_ip="127.0.0.4"),
        NodeClass(service="svc-00003", labels=v1, instance_ip="127.0.0.5", outbound_ip="127.0.1.1"),
        NodeClass(service="svc-00004", labels=v1, instance_ip="127.0.0.6"),
    ]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def cold(config: Path, runs: int) -> dict[str, Any]:
    """Median cold-build figures (ms) over ``runs`` in-process builds."""
    load, first, more = [], [], []
    size = 0
    for _ in range(runs):
        t0 = time.perf_counter()
        mesh = load_directory(str(config)).mesh
        t1 = time.perf_counter()
        translation = MeshTranslation(mesh)
        classes = _classes()
        size = len(translation.snapshot_for(classes[0]))
        t2 = time.perf_counter()
        for node in classes[1:]:
            translation.snapshot_for(node)
        t3 = time.perf_counter()
        load.append(t1 - t0)
        first.append(t2 - t1)
        more.append((t3 - t2) / (len(classes) - 1))
    return {
        "resources": size,
        "load_ms": _ms(statistics.median(load)),
        "first_class_ms": _ms(statistics.median(first)),
        "cold_one_class_ms": _ms(statistics.median(load) + statistics.median(first)),
        "per_extra_class_ms": _ms(statistics.median(more)),
        "cold_five_classes_ms": _ms(
            statistics.median(load) + statistics.median(first) + 4 * statistics.median(more)
        ),
    }


def _rewrite(path: Path, edit: int) -> None:
    text = path.read_text()
    head, sep, tail = text.partition('address = "')
    old = tail.split('"', 1)[0]
    tail = tail.replace(old, f"10.250.{edit // 250 % 250}.{edit % 250 + 1}", 1)
    path.write_text(head + sep + tail)


def one_file(config: Path, edits: int) -> dict[str, Any]:
    """p50/p99/max (ms) of one service file's change through ``MeshState.reload``."""
    state = MeshState(str(config))
    started = time.perf_counter()
    state.reload()
    initial = time.perf_counter() - started
    for node in _classes():
        state.cache.subscribe(node, lambda _snapshot: None)
        state.snapshot(node)
    services = sorted((config / "services").glob("*.toml"))
    totals: list[float] = []
    phases: dict[str, list[float]] = {}
    for i in range(edits):
        path = services[(i * 7919) % len(services)]
        _rewrite(path, i)
        t = time.perf_counter()
        changed = state.reload({str(path)})
        totals.append(time.perf_counter() - t)
        assert changed, "the edit must produce a new configuration"
        for phase, seconds in state.last_timings.items():
            phases.setdefault(phase, []).append(seconds)
    totals.sort()
    p99 = totals[min(len(totals) - 1, round(0.99 * (len(totals) - 1)))]
    return {
        "edits": edits,
        "classes": len(_classes()),
        "initial_reload_ms": _ms(initial),
        "p50_ms": _ms(statistics.median(totals)),
        "p99_ms": _ms(p99),
        "max_ms": _ms(totals[-1]),
        "phases_p50_ms": {k: _ms(statistics.median(v)) for k, v in phases.items()},
    }


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench rebuild", description=__doc__)
    parser.add_argument("--services", default="100,1000,10000",
                        help="comma-separated mesh sizes; the largest gets the edits")  # fmt: skip
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3, help="cold builds per size")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.services.split(","))
    results: dict[str, Any] = {"endpoints": args.endpoints, "cold": {}}
    with tempfile.TemporaryDirectory() as tmp:
        config = Path()
        for n in sizes:
            config = write_mesh(Path(tmp) / str(n), n, endpoints=args.endpoints)
            results["cold"][str(n)] = cold(config, args.runs)
        results["one_file"] = one_file(config, args.edits)
        results["one_file"]["services"] = sizes[-1]
    print(f"{'services':>9}{'resources':>11}{'load':>9}{'1st class':>11}{'cold':>9}"
          f"{'+class':>9}{'cold x5':>9}")  # fmt: skip
    for n, r in results["cold"].items():
        print(f"{n:>9}{r['resources']:>11}{r['load_ms']:>7.0f}ms{r['first_class_ms']:>9.0f}ms"
              f"{r['cold_one_class_ms']:>7.0f}ms{r['per_extra_class_ms']:>7.1f}ms"
              f"{r['cold_five_classes_ms']:>7.0f}ms")  # fmt: skip
    one = results["one_file"]
    phases = ", ".join(f"{k} {v:.1f}" for k, v in one["phases_p50_ms"].items())
    print(f"one service file changed in {one['services']} services, {one['classes']} classes "
          f"watched, {one['edits']} edits: p50 {one['p50_ms']:.1f} ms, p99 {one['p99_ms']:.1f} "
          f"ms, max {one['max_ms']:.1f} ms (p50 phases ms: {phases})")  # fmt: skip
    print(f"(cold: median of {args.runs} runs; in-process, imports excluded)")
    return results
