"""File write → a real Envoy routing by the new rule.

A real Envoy (the client sidecar of ``tests/e2e/mesh.py``) sends requests through its
per-port outbound listener in a tight loop while a VirtualService file is rewritten
(atomically) to move all traffic between two backends. For each edit the time from just
before the write to the first response from the new backend is recorded (confirmed by the
next three responses). The figure includes the watcher's quiet period (10-20 ms), the reload,
the push, and Envoy applying it; with REST it includes the 1 s poll interval.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.e2e.mesh import EchoMesh, route_to, vs
from tests.harness import write_atomically


def _one_edit(mesh: EchoMesh, target: str, deadline: float = 30.0) -> float:
    started = time.perf_counter()
    write_atomically(mesh.rules, vs(route_to({target: 100})))
    while time.perf_counter() - started < deadline:
        if mesh.ask() == target:
            seen = time.perf_counter() - started
            if all(mesh.ask() == target for _ in range(3)):
                return seen
    raise RuntimeError(f"traffic did not move to {target} within {deadline}s")


def run(transport: str, edits: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        mesh = EchoMesh(Path(tmp))
        try:
            mesh.start_xdsd()
            mesh.start_envoy(transport)
            mesh.wait_for("v1")
            samples = [_one_edit(mesh, "v2" if i % 2 == 0 else "v1") for i in range(edits)]
        finally:
            mesh.stop()
    samples_ms = sorted(s * 1000 for s in samples)
    return {
        "edits": edits,
        "median_ms": statistics.median(samples_ms),
        "p90_ms": samples_ms[int(0.9 * (len(samples_ms) - 1))],
        "min_ms": samples_ms[0],
        "max_ms": samples_ms[-1],
        "samples_ms": samples_ms,
    }


def main(argv: list[str]) -> dict[str, Any]:
    edits = int(argv[0]) if argv else 15
    transports = argv[1:] or ["grpc", "rest"]
    results = {t: run(t, edits) for t in transports}
    print(f"{'transport':<10}{'edits':>6}{'median':>10}{'p90':>10}{'min':>10}{'max':>10}")
    for t, r in results.items():
        print(
            f"{t:<10}{r['edits']:>6}{r['median_ms']:>8.0f}ms{r['p90_ms']:>8.0f}ms"
            f"{r['min_ms']:>8.0f}ms{r['max_ms']:>8.0f}ms"
        )
    return results
