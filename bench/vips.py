"""What virtual-address listeners cost a sidecar: listeners, LDS bytes, build and encode.

For a generated mesh of S services (``meshgen``: HTTP, 20 port numbers), in process, four
sidecar classes: unscoped and scoped by a namespace-wide Sidecar to K services
(``svc-00000`` and the next K-1), each without and with ``virtual_addresses`` in its
metadata, and with virtual addresses as a delta VHDS class (``vhds``). Per class:

- ``listeners`` and ``lds_bytes``: how many listeners its snapshot holds and the sum of
  their encoded sizes (what one LDS response carries);
- ``first``: its snapshot built on a fresh translation (every shared resource built);
- ``another``: a second class with the same inputs but another ``instance_ip`` (what each
  further proxy of a fleet costs: selections and memoized resources are shared);
- ``after_edit``: the class's snapshot on the translation after one edit (a
  VirtualService weight: what every class pays on each reload, the fan-out's rebuild);
- ``encode``: one LDS DiscoveryResponse of its listeners serialized;
- ``edit_bytes``: the encoded size of the route configurations and virtual hosts the
  edit changed in its snapshot (what a client holding them all is sent; a VHDS client
  is sent only the changed virtual hosts it asked for).

Medians of ``--runs`` runs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.meshgen import write_mesh


def sidecar_text(hosts: int) -> str:
    names = ", ".join(f"./svc-{i:05d}" for i in range(hosts))
    return (
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\n"
        f"metadata: {{name: scoped, namespace: default}}\nspec:\n  egress:\n"
        f"  - hosts: [{names}]\n"
    )


def edit_text(weight: int) -> str:
    return (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        "metadata: {name: svc-00000}\nspec:\n  host: svc-00000\n  subsets:\n"
        "  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n"
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        "metadata: {name: svc-00000}\nspec:\n  hosts: [svc-00000]\n  http:\n  - route:\n"
        f"    - {{destination: {{host: svc-00000, subset: v1}}, weight: {weight}}}\n"
        f"    - {{destination: {{host: svc-00000, subset: v2}}, weight: {100 - weight}}}\n"
    )


def measure(config: Path, vips: bool, runs: int, vhds: bool = False) -> dict[str, Any]:
    from envoy.service.discovery.v3 import discovery_pb2
    from google.protobuf import any_pb2

    from xdsd.resources import LISTENER, ROUTE, VIRTUAL_HOST
    from xdsd.sources import load_directory
    from xdsd.translate import ConfigSourceKind, MeshTranslation, NodeClass

    block = "127.240.0.0/16" if vips else ""
    source = ConfigSourceKind.DELTA if vhds else ConfigSourceKind.ADS
    node = NodeClass(
        "svc-00001",
        labels=(("version", "v1"),),
        instance_ip="10.9.0.1",
        virtual_addresses=block,
        config_source=source,
        vhds=vhds,
    )
    other = NodeClass(
        "svc-00002",
        labels=(("version", "v1"),),
        instance_ip="10.9.0.2",
        virtual_addresses=block,
        config_source=source,
        vhds=vhds,
    )
    edit = config / "rules" / "svc-00000.yaml"
    original = edit.read_text()
    first, another, after, encode, edit_bytes = [], [], [], [], []
    listeners: dict[str, Any] = {}
    for run in range(runs):
        edit.write_text(original)
        mesh = load_directory(str(config)).mesh
        t = time.perf_counter()
        translation = MeshTranslation(mesh)
        snap = translation.snapshot_for(node)
        first.append(time.perf_counter() - t)
        t = time.perf_counter()
        translation.snapshot_for(other)
        another.append(time.perf_counter() - t)
        listeners = snap.get(LISTENER)
        t = time.perf_counter()
        response = discovery_pb2.DiscoveryResponse(
            version_info="1",
            type_url=LISTENER,
            resources=[any_pb2.Any(type_url=LISTENER, value=r.payload) for r in listeners.values()],
        )
        response.SerializeToString()
        encode.append(time.perf_counter() - t)
        edit.write_text(edit_text(50 + run))
        changed = load_directory(str(config)).mesh
        t = time.perf_counter()
        edited = MeshTranslation(changed, previous=translation).snapshot_for(node)
        after.append(time.perf_counter() - t)
        sent = 0
        for type_url in (ROUTE, VIRTUAL_HOST):
            old = snap.get(type_url)
            for name, r in edited.get(type_url).items():
                if name not in old or old[name].payload != r.payload:
                    sent += len(r.payload)
        edit_bytes.append(sent)
    edit.write_text(original)

    def ms(samples: list[float]) -> float:
        return statistics.median(samples) * 1000

    return {
        "listeners": len(listeners),
        "lds_bytes": sum(len(r.payload) for r in listeners.values()),
        "first_ms": ms(first),
        "another_ms": ms(another),
        "after_edit_ms": ms(after),
        "encode_ms": ms(encode),
        "edit_bytes": statistics.median(edit_bytes),
    }


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench vips", description=__doc__)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--sidecar-hosts", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        config = write_mesh(Path(tmp), args.services)
        for scoped in (False, True):
            sidecar = config / "rules" / "sidecar.yaml"
            if scoped:
                sidecar.write_text(sidecar_text(args.sidecar_hosts))
            elif sidecar.exists():
                sidecar.unlink()
            for vips, vhds, kind in (
                (False, False, "no-vips"),
                (True, False, "vips"),
                (True, True, "vips+vhds"),
            ):
                name = f"{'scoped' if scoped else 'unscoped'}/{kind}"
                results[name] = measure(config, vips, args.runs, vhds)
    header = (
        "class",
        "listeners",
        "LDS bytes",
        "1st class",
        "another",
        "after edit",
        "encode",
        "edit bytes",
    )
    print("{:<18}{:>10}{:>12}{:>11}{:>10}{:>12}{:>9}{:>12}".format(*header))
    for name, r in results.items():
        print(
            f"{name:<18}{r['listeners']:>10}{r['lds_bytes']:>12,}{r['first_ms']:>9.0f}ms"
            f"{r['another_ms']:>8.1f}ms{r['after_edit_ms']:>10.1f}ms{r['encode_ms']:>7.1f}ms"
            f"{r['edit_bytes']:>12,.0f}"
        )
    print(
        f"({args.services} services, Sidecar scope {args.sidecar_hosts} hosts; median of "
        f"{args.runs} runs)"
    )
    return results
