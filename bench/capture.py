"""What capture costs a sidecar: listeners, LDS bytes and translation time.

A generated mesh (``meshgen``: HTTP services with ``--endpoints`` endpoints each over 20
port numbers, and as many TCP services on ports of their own); a sidecar class with and
without node metadata ``capture``, unscoped and with a Sidecar that lets it see a tenth of
the services. Prints, per case, the listeners, the bytes of its LDS resources, the
capture listeners' share, and the median time to translate the class (first class of a
translation, and one more class with the same inputs on it).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.meshgen import write_mesh


def _tcp_services(config: Path, count: int, endpoints: int) -> None:
    for i in range(count):
        lines = [
            'kind = "Service"',
            f'name = "tcp-{i:05d}"',
            "",
            "[[ports]]",
            'name = "tcp"',
            f"number = {20000 + i}",
            'protocol = "TCP"',
        ]
        for j in range(endpoints):
            a, b = divmod(i * endpoints + j, 250)
            lines += ["", "[[endpoints]]", f'address = "172.{16 + a // 250}.{a % 250}.{b + 1}"']
        (config / "services" / f"tcp-{i:05d}.toml").write_text("\n".join(lines) + "\n")


def _scope(config: Path) -> None:
    hosts = ", ".join(f'"./svc-{i:05d}"' for i in range(0, 1000, 10))
    (config / "rules" / "zz-sidecar.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: scoped}\n"
        f"spec:\n  workloadSelector: {{labels: {{app: scoped}}}}\n"
        f"  egress:\n  - hosts: [{hosts}]\n"
    )


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench capture", description=__doc__)
    parser.add_argument("--services", type=int, default=1000, help="HTTP services (and TCP)")
    parser.add_argument("--endpoints", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)

    from xdsd.resources import LISTENER
    from xdsd.sources import load_directory
    from xdsd.translate import MeshTranslation, NodeClass

    with tempfile.TemporaryDirectory() as tmp:
        config = write_mesh(Path(tmp), args.services, args.endpoints)
        _tcp_services(config, args.services, args.endpoints)
        _scope(config)
        mesh = load_directory(str(config)).mesh
    plain = NodeClass(service="client")
    cases = {
        "unscoped": plain,
        "unscoped+capture": dataclasses.replace(plain, capture=15002),
        "scoped": dataclasses.replace(plain, labels=(("app", "scoped"),)),
        "scoped+capture": dataclasses.replace(plain, labels=(("app", "scoped"),), capture=15002),
    }
    results: dict[str, Any] = {}
    print(f"{args.services} HTTP + {args.services} TCP services, {args.endpoints} endpoints each")
    heads = ("listeners", "LDS KiB", "capture KiB", "1st ms", "2nd ms")
    print(f"{'case':<18} " + " ".join(f"{h:>{max(9, len(h))}}" for h in heads))
    for name, node in cases.items():
        first, second = [], []
        listeners: dict[str, Any] = {}
        for _ in range(args.runs):
            translation = MeshTranslation(mesh)
            t = time.perf_counter()
            translation.snapshot_for(node)
            first.append(time.perf_counter() - t)
            t = time.perf_counter()
            snap = translation.snapshot_for(dataclasses.replace(node, service="client-2"))
            second.append(time.perf_counter() - t)
            listeners = snap.get(LISTENER)
        total = sum(len(r.payload) for r in listeners.values())
        captured = sum(len(r.payload) for n, r in listeners.items() if "capture" in n)
        row = {
            "listeners": len(listeners),
            "lds_bytes": total,
            "capture_bytes": captured,
            "first_ms": statistics.median(first) * 1000,
            "second_ms": statistics.median(second) * 1000,
        }
        results[name] = row
        print(
            f"{name:<18} {row['listeners']:>9} {total / 1024:>9.1f} {captured / 1024:>11.1f} "
            f"{row['first_ms']:>9.1f} {row['second_ms']:>9.1f}"
        )
    return results
