"""File write → a real Envoy routing by the new rule.

A real Envoy (the client sidecar of ``tests/e2e/mesh.py``) sends requests through its
per-port outbound listener in a tight loop while a VirtualService file is rewritten
(atomically) to move all traffic between two backends. For each edit the time from just
before the write to the first response from the new backend is recorded (confirmed by the
next three responses). The figure includes detection (the watcher's inotify read and
2 ms quiet check), the reload, the push, and Envoy applying it; with REST it includes the
1 s poll interval.

``--baseline DIR`` also runs, in the same invocation, the xdsd of DIR (a ``git worktree``
of another commit: ``PYTHONPATH=DIR``, ``PYTHONSAFEPATH=1``), alternating blocks of edits
with this tree's, for side-by-side figures.

Usage: ``python -m bench propagation [EDITS [TRANSPORT...]] [--baseline DIR]``.
"""

from __future__ import annotations

import os
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


def _samples(transport: str, edits: int, env: dict[str, str] | None) -> list[float]:
    """``edits`` edits' write → routing times (seconds) against a fresh mesh."""
    with tempfile.TemporaryDirectory() as tmp:
        mesh = EchoMesh(Path(tmp))
        try:
            mesh.start_xdsd(env=env)
            mesh.start_envoy(transport)
            mesh.wait_for("v1")
            return [_one_edit(mesh, "v2" if i % 2 == 0 else "v1") for i in range(edits)]
        finally:
            mesh.stop()


def _figures(samples: list[float]) -> dict[str, Any]:
    samples_ms = sorted(s * 1000 for s in samples)
    return {
        "edits": len(samples_ms),
        "median_ms": statistics.median(samples_ms),
        "p90_ms": samples_ms[int(0.9 * (len(samples_ms) - 1))],
        "p99_ms": samples_ms[int(0.99 * (len(samples_ms) - 1))],
        "min_ms": samples_ms[0],
        "max_ms": samples_ms[-1],
        "samples_ms": samples_ms,
    }


def run(transport: str, edits: int, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Write → routing figures for ``edits`` edits over ``transport``."""
    return _figures(_samples(transport, edits, env))


def main(argv: list[str]) -> dict[str, Any]:
    args = list(argv)
    trees: list[tuple[str, dict[str, str] | None]] = [("", None)]
    if "--baseline" in args:
        at = args.index("--baseline")
        base = os.path.abspath(args[at + 1])
        del args[at : at + 2]
        trees = [("baseline ", {"PYTHONPATH": base, "PYTHONSAFEPATH": "1"}), ("this tree ", None)]
    edits = int(args[0]) if args else 15
    transports = args[1:] or ["grpc", "rest"]
    results: dict[str, Any] = {}
    for t in transports:
        collected: dict[str, list[float]] = {label: [] for label, _ in trees}
        block = max(1, edits // 3) if len(trees) > 1 else edits
        while len(collected[trees[-1][0]]) < edits:  # alternate blocks of edits
            for label, env in trees:
                n = min(block, edits - len(collected[label]))
                collected[label] += _samples(t, n, env)
        for label, samples in collected.items():
            results[f"{label}{t}"] = _figures(samples)
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) at the end")
    print(
        f"{'transport':<20}{'edits':>6}{'median':>10}{'p90':>10}{'p99':>10}{'min':>10}{'max':>10}"
    )
    for t, r in results.items():
        print(
            f"{t:<20}{r['edits']:>6}{r['median_ms']:>8.1f}ms{r['p90_ms']:>8.1f}ms"
            f"{r['p99_ms']:>8.1f}ms{r['min_ms']:>8.1f}ms{r['max_ms']:>8.1f}ms"
        )
    return results
