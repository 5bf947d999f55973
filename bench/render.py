"""How long ``xdsd render`` takes: the example mesh and generated meshes.

Reports, per mesh, the median of several runs of: the whole command in a fresh process
(what a user waits for), and in-process the load (parse + validate), the translation of
one node class's snapshot, and one more class on the same translation.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.meshgen import write_mesh

REPO = Path(__file__).resolve().parent.parent


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def measure(config: Path, service: str, label: str, runs: int) -> dict[str, Any]:
    from xdsd.sources import load_directory
    from xdsd.translate import MeshTranslation, NodeClass

    command = [
        sys.executable,
        "-m",
        "xdsd.cli",
        "render",
        "--config-dir",
        str(config),
        "--service",
        service,
        "--label",
        label,
        "--instance-ip",
        "127.0.0.2",
    ]
    whole, load, first, second = [], [], [], []
    size = 0
    for _ in range(runs):
        t = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, check=True)
        whole.append(time.perf_counter() - t)
        size = len(proc.stdout)
        t = time.perf_counter()
        mesh = load_directory(str(config)).mesh
        load.append(time.perf_counter() - t)
        t = time.perf_counter()
        translation = MeshTranslation(mesh)
        key, value = label.split("=")
        snap = translation.snapshot_for(
            NodeClass(service=service, labels=((key, value),), instance_ip="127.0.0.2")
        )
        first.append(time.perf_counter() - t)
        t = time.perf_counter()
        translation.snapshot_for(
            NodeClass(service=service, labels=((key, value),), instance_ip="127.0.0.3")
        )
        second.append(time.perf_counter() - t)
    return {
        "resources": len(snap),
        "output_bytes": size,
        "render_command_ms": _median_ms(whole),
        "load_ms": _median_ms(load),
        "first_class_ms": _median_ms(first),
        "another_class_ms": _median_ms(second),
    }


def main(argv: list[str]) -> dict[str, Any]:
    runs = 5
    sizes = [int(a) for a in argv] or [1000]
    results: dict[str, Any] = {
        "example": measure(REPO / "config", "productpage", "version=v1", runs)
    }
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            config = write_mesh(Path(tmp), n)
            results[f"generated-{n}"] = measure(config, "svc-00000", "version=v1", runs)
    header = ("mesh", "resources", "render cmd", "load", "1st class", "2nd class")
    print("{:<18}{:>10}{:>12}{:>10}{:>11}{:>11}".format(*header))
    for name, r in results.items():
        print(
            f"{name:<18}{r['resources']:>10}{r['render_command_ms']:>10.0f}ms"
            f"{r['load_ms']:>8.0f}ms{r['first_class_ms']:>9.0f}ms{r['another_class_ms']:>9.1f}ms"
        )
    print(f"(median of {runs} runs each; 'render cmd' is a fresh process, imports included)")
    return results
