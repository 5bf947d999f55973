"""Daemon memory: RSS against idle connected clients and against mesh size.

Clients: one ``xdsd serve`` (pinned to CPU 0) with an S-service mesh; simulated Envoys
(load processes on CPU 1) connect in steps (one per node class, then up to each N) and
sync; after each step and a pause the daemon's VmRSS (``/proc/PID/status``) is read.
Bytes per client = RSS growth from the one-per-class step (snapshots of every class
built) to N, divided by the clients added. Run once with clients that send their node
only on the first request (what ``xdsd bootstrap`` configures) and once with "fat"
clients that send a 61 KB node on every request, as Envoy does without
``set_node_on_first_message_only``.

Mesh size: for S services a fresh daemon with one client; RSS before the client (mesh
loaded and translated) and after it synced; bytes per resource = RSS growth over the
smallest mesh divided by the resources (clusters, assignments, listeners, routes) added.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._loadgen import ClientSpec, Daemon, LoadGen
from bench.meshgen import write_mesh

FAT_NODE = 61 * 1024


def _settled_rss(daemon: Daemon, pause: float) -> int:
    time.sleep(pause)
    return daemon.rss()


def clients_curve(
    steps: list[int], services: int, classes: int, fat: int, args: argparse.Namespace
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="xdsd-memory-") as tmp:
        root = Path(tmp)
        config = write_mesh(root, services)
        daemon = Daemon(config, root / "xdsd.log", tree=args.tree)
        loads: list[LoadGen] = []
        try:
            spec = ClientSpec("127.0.0.1", daemon.grpc_port, classes=classes, fat=fat)
            rss = {0: _settled_rss(daemon, args.pause)}
            have = 0
            for n in sorted({classes, *steps} - {0}):
                load = LoadGen(n - have, spec, procs=args.procs, first=have)
                loads.append(load)
                load.go()
                load.wait_synced(timeout=300)
                have = n
                rss[n] = _settled_rss(daemon, args.pause)
            base_n = classes
            per_client = {n: (rss[n] - rss[base_n]) / (n - base_n) for n in rss if n > base_n}
            return {"rss": rss, "per_client": per_client, "fat_node": fat}
        finally:
            for load in loads:
                load.stop()
            daemon.stop()


def mesh_curve(sizes: list[int], args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s in sizes:
        with tempfile.TemporaryDirectory(prefix="xdsd-memory-") as tmp:
            root = Path(tmp)
            config = write_mesh(root, s)
            daemon = Daemon(config, root / "xdsd.log", tree=args.tree)
            load = None
            try:
                before = _settled_rss(daemon, args.pause)
                load = LoadGen(1, ClientSpec("127.0.0.1", daemon.grpc_port, classes=1), procs=1)
                load.go()
                status = load.wait_synced(timeout=600)
                after = _settled_rss(daemon, args.pause)
                out[s] = {
                    "rss_loaded": before,
                    "rss_one_client": after,
                    "resources": status["resources"],
                }
            finally:
                if load is not None:
                    load.stop()
                daemon.stop()
        gc.collect()
    smallest = min(sizes)
    for s in sizes:
        if s == smallest:
            continue
        added = out[s]["resources"] - out[smallest]["resources"]
        grown = out[s]["rss_one_client"] - out[smallest]["rss_one_client"]
        out[s]["per_resource"] = grown / added if added else None
    return out


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench memory", description=__doc__)
    parser.add_argument("--clients", default="100,1000")
    parser.add_argument("--services", type=int, default=10, help="mesh for the client curve")
    parser.add_argument("--mesh", default="10,1000,10000", help="mesh sizes at N = 1")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--pause", type=float, default=1.0, help="settle before reading RSS")
    parser.add_argument("--parts", default="clients,fat,mesh")
    parser.add_argument("--tree", help="serve xdsd from this checkout")
    args = parser.parse_args(argv)
    steps = [int(x) for x in args.clients.split(",")]
    parts = args.parts.split(",")
    results: dict[str, Any] = {}
    mib = 1024 * 1024
    for part, fat in (("clients", 0), ("fat", FAT_NODE)):
        if part not in parts:
            continue
        r = clients_curve(steps, args.services, args.classes, fat, args)
        results[part] = r
        label = "node once" if not fat else f"{fat // 1024} KB node every request"
        print(f"idle clients, S={args.services}, {args.classes} classes, {label}")
        print(f"{'N':>6}{'RSS MiB':>10}{'per client KiB':>16}")
        for n, rss in r["rss"].items():
            per = r["per_client"].get(n)
            print(f"{n:>6}{rss / mib:>10.1f}{'' if per is None else f'{per / 1024:.1f}':>16}")
    if "mesh" in parts:
        r = mesh_curve([int(x) for x in args.mesh.split(",")], args)
        results["mesh"] = r
        print("mesh size, N=1")
        print(f"{'S':>6}{'resources':>10}{'RSS loaded':>11}{'RSS +1':>9}{'per resource':>14}")
        for s, v in r.items():
            per = v.get("per_resource")
            print(
                f"{s:>6}{v['resources']:>10}{v['rss_loaded'] / mib:>9.1f}Mi"
                f"{v['rss_one_client'] / mib:>7.1f}Mi"
                f"{'' if per is None else f'{per / 1024:.2f} KiB':>14}"
            )
    return results
