"""Restart at scale: time until a restarted xdsd serves the right versions, with the
restart cache and without (a cold build), side by side in one run.

Process (the figure an operator sees): ``xdsd serve`` is started on a generated mesh,
alternately with ``--no-cache`` (cold: load the directory, then build the client's class
when it asks) and with ``--state-dir`` holding the cache a first daemon wrote (after a
client of the measured class connected). Timed from the process's spawn (so Python's
start and xdsd's imports are included) to ``/readyz`` answering 200, and to an ADS client
of the measured class receiving its clusters with the version the cold daemon serves
(checked equal: the right versions), and the daemon's CPU time until then (the steadier
figure on a shared machine). The client retries its connection every 5 ms.

In process (what the restart itself costs, imports excluded): cold = ``MeshState.reload``
then the first snapshot of each cached class (``rebuild``'s cold build); cache = read the
cache, check it against the directory, publish its classes (``Daemon.start``'s path); the
full load that verifies it afterwards (off the serving path); and the cost of writing the
cache after a load: the first write (every file hashed) and a later one (hashes reused by
stamp), in the worker thread that does it in the daemon.

Side by side with another tree (``--baseline TREE``, e.g. ``git worktree add --detach
/tmp/base main``): its daemons are spawned too (``cwd`` and ``PYTHONPATH`` = the tree), cold
and from their own cache, alternately with this tree's, and the in-process read + check + publish
runs in one child process per tree (each writes its own cache from one load, then reads it
when told), the children told in turn. Both trees' bytecode is compiled first
(``compileall``), as an installed xdsd has it (``pip install`` compiles; a source tree run
with ``PYTHONDONTWRITEBYTECODE=1`` would compile every module at every start: ``--source``).

``python -m bench restart [--services 10000] [--endpoints 10] [--runs 5] [--classes 5]
[--baseline TREE] [--source]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import struct_pb2
from grpclib.client import Channel
from grpclib.const import Cardinality

from bench._trees import compile_bytecode
from bench.meshgen import write_mesh
from bench.rebuild import _classes
from xdsd.build_cache import BuildCache, Capture, fingerprint
from xdsd.state import MeshState
from xdsd.translate import NodeClass

ADS_PATH = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def _summary(values: list[float]) -> dict[str, float]:
    return {"p50_ms": _ms(statistics.median(values)), "p99_ms": _ms(_p99(values))}


# -- in process -------------------------------------------------------------------------


def in_process(config: Path, state_dir: Path, runs: int, classes: int) -> dict[str, Any]:
    """Cold build vs read + check + publish of the cache, the verifying load, and the
    cost of writing the cache (medians over ``runs``)."""
    keys = _classes()[:classes]
    cold: list[float] = []
    cold_cpu: list[float] = []
    versions: dict[NodeClass, dict[str, str]] = {}
    state = MeshState(str(config))
    for _ in range(runs):
        t, c = time.perf_counter(), time.process_time()
        state = MeshState(str(config))
        state.reload()
        for key in keys:
            state.snapshot(key)
        cold.append(time.perf_counter() - t)
        cold_cpu.append(time.process_time() - c)
    for key in keys:
        snapshot = state.cache.get(key)
        assert snapshot is not None
        versions[key] = dict(snapshot.versions)
    assert state.loaded is not None
    capture = Capture(
        str(config),
        fingerprint("bench"),
        state.loaded.files,
        state.file_stamps(),
        state.certificate_paths,
        {key: s for key in keys if (s := state.cache.get(key)) is not None},
        len(state.loaded.mesh.services),
    )
    first_write: list[float] = []
    later_write: list[float] = []
    size = 0
    for i in range(runs):
        cache = BuildCache(str(state_dir / f"w{i}"))
        t = time.perf_counter()
        assert cache.write(capture)
        first_write.append(time.perf_counter() - t)
        t = time.perf_counter()
        assert cache.write(capture)
        later_write.append(time.perf_counter() - t)
        size = cache.last_write[0]
    cached: list[float] = []
    cached_cpu: list[float] = []
    verify: list[float] = []
    cache = BuildCache(str(state_dir / "w0"))
    for _ in range(runs):
        t, c = time.perf_counter(), time.process_time()
        found = cache.read(fingerprint("bench"), max_classes=10000)
        assert not isinstance(found, str), found
        assert found.check() == ""
        fresh = MeshState(str(config))
        fresh.publish_cached(found.classes, found.describe())
        cached.append(time.perf_counter() - t)
        cached_cpu.append(time.process_time() - c)
        for key in keys:
            got = fresh.cache.get(key)
            assert got is not None and dict(got.versions) == versions[key], "wrong versions"
        for key in keys:
            fresh.cache.subscribe(key, lambda _snapshot: None)
        t = time.perf_counter()
        fresh.reload()
        verify.append(time.perf_counter() - t)
        for key in keys:  # the full load agrees: the same versions
            got = fresh.cache.get(key)
            assert got is not None and dict(got.versions) == versions[key], "full load differs"
    return {
        "classes": len(keys),
        "resources_per_class": len(state.cache.get(keys[0]) or ()),
        "cache_bytes": size,
        "cold": {**_summary(cold), "cpu_p50_ms": _ms(statistics.median(cold_cpu))},
        "cache": {**_summary(cached), "cpu_p50_ms": _ms(statistics.median(cached_cpu))},
        "verifying_load": _summary(verify),
        "first_write": _summary(first_write),
        "later_write": _summary(later_write),
    }


#: The in-process child (``side_by_side``): run with the tree's xdsd first on the path;
#: writes a cache of ``classes`` classes from one load, prints ``ready``, then for each
#: line on stdin times read + check + publish and prints its wall and CPU seconds.
_READER = """
import json, sys, time
from pathlib import Path
from bench.rebuild import _classes
from xdsd.build_cache import BuildCache, Capture, fingerprint
from xdsd.state import MeshState
config, state_dir, classes = sys.argv[1], sys.argv[2], int(sys.argv[3])
keys = _classes()[:classes]
state = MeshState(config)
state.reload()
for key in keys:
    state.snapshot(key)
held = {key: s for key in keys if (s := state.cache.get(key)) is not None}
capture = Capture(config, fingerprint("bench"), state.loaded.files, state.file_stamps(),
                  state.certificate_paths, held, len(state.loaded.mesh.services))
cache = BuildCache(state_dir)
assert cache.write(capture)
versions = {key: dict(s.versions) for key, s in held.items()}
del state, held, capture
print("ready", flush=True)
for _ in sys.stdin:
    t, c = time.perf_counter(), time.process_time()
    found = cache.read(fingerprint("bench"), max_classes=10000)
    assert not isinstance(found, str), found
    assert found.check() == ""
    fresh = MeshState(config)
    fresh.publish_cached(found.classes, found.describe())
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    for key, v in versions.items():
        got = fresh.cache.get(key)
        assert got is not None and dict(got.versions) == v, "wrong versions"
    del found, fresh
    print(json.dumps([wall, cpu]), flush=True)
"""


def _tree_env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree)}


def side_by_side(
    config: Path, state_dir: Path, trees: dict[str, Path], runs: int, classes: int
) -> dict[str, Any]:
    """Read + check + publish of the cache, one child process per tree, told in turn
    (``runs`` each): medians and p99 of wall and CPU time per tree."""
    children: dict[str, Any] = {}
    for label, tree in trees.items():
        directory = state_dir / f"side-{label}"
        children[label] = subprocess.Popen(
            [sys.executable, "-c", _READER, str(config), str(directory), str(classes)],
            cwd=tree,
            env=_tree_env(tree),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
    try:
        for label, child in children.items():  # one at a time: setting up is a load
            line = child.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"{label}: the reader did not start ({line!r})")
        walls: dict[str, list[float]] = {label: [] for label in trees}
        cpus: dict[str, list[float]] = {label: [] for label in trees}
        for i in range(runs):
            order = list(children) if i % 2 == 0 else list(reversed(children))
            for label in order:
                child = children[label]
                child.stdin.write("go\n")
                child.stdin.flush()
                wall, cpu = json.loads(child.stdout.readline())
                walls[label].append(wall)
                cpus[label].append(cpu)
    finally:
        for child in children.values():
            child.stdin.close()
            child.wait(60)
    return {
        label: {**_summary(walls[label]), "cpu_p50_ms": _ms(statistics.median(cpus[label]))}
        for label in trees
    }


# -- process ----------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _node(key: NodeClass) -> base_pb2.Node:
    metadata = struct_pb2.Struct()
    metadata.update({"instance_ip": key.instance_ip, "labels": dict(key.labels)})
    return base_pb2.Node(
        id="bench-restart", cluster=key.service, metadata=metadata, user_agent_name="envoy"
    )


async def _clusters_version(port: int, node: base_pb2.Node) -> str:
    """The version of the first CDS response on a new ADS stream (raises when the
    connection fails)."""
    channel = Channel("127.0.0.1", port)
    try:
        async with channel.request(
            ADS_PATH,
            Cardinality.STREAM_STREAM,
            discovery_pb2.DiscoveryRequest,
            discovery_pb2.DiscoveryResponse,
        ) as stream:
            await stream.send_message(discovery_pb2.DiscoveryRequest(node=node, type_url=CDS))
            response = await stream.recv_message()
            assert response is not None
            await stream.cancel()
            return str(response.version_info)
    finally:
        channel.close()


async def _hold(port: int, node: base_pb2.Node, log: Path) -> None:
    """Keep a client of ``node``'s class connected until the daemon logging to ``log``
    wrote its restart cache (the cache holds the classes clients hold)."""
    channel = Channel("127.0.0.1", port)
    try:
        async with channel.request(
            ADS_PATH,
            Cardinality.STREAM_STREAM,
            discovery_pb2.DiscoveryRequest,
            discovery_pb2.DiscoveryResponse,
        ) as stream:
            await stream.send_message(discovery_pb2.DiscoveryRequest(node=node, type_url=CDS))
            assert await stream.recv_message() is not None
            deadline = time.monotonic() + 300
            while "restart cache written: 1 class" not in log.read_text(errors="replace"):
                if time.monotonic() > deadline:
                    raise RuntimeError("the restart cache was not written:\n" + log.read_text())
                await asyncio.sleep(0.05)
            await stream.cancel()
    finally:
        channel.close()


def _ready(admin: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


async def _measure(
    grpc: int, admin: int, node: base_pb2.Node, t0: float
) -> tuple[float, float, str]:
    """(seconds to /readyz 200, seconds to the first CDS response, its version) from
    ``t0``."""
    ready_at = 0.0

    async def readiness() -> None:
        nonlocal ready_at
        while not await asyncio.to_thread(_ready, admin):
            await asyncio.sleep(0.005)
        ready_at = time.perf_counter() - t0

    waiting = asyncio.create_task(readiness())
    while True:
        try:
            version = await asyncio.wait_for(_clusters_version(grpc, node), 60)
            break
        except Exception:  # refused, reset, grpclib's errors while the server starts
            await asyncio.sleep(0.005)
    served = time.perf_counter() - t0
    await waiting
    return ready_at, served, version


def _serve(
    config: Path, workdir: Path, flags: list[str], log_name: str, tree: Path
) -> tuple[Any, int, int]:
    grpc, rest, admin = _free_port(), _free_port(), _free_port()
    log = open(workdir / log_name, "wb")  # noqa: SIM115 - closed with the process
    argv = [
        sys.executable,
        "-m",
        "xdsd.cli",
        "serve",
        "--config-dir",
        str(config),
        "--grpc",
        f"127.0.0.1:{grpc}",
        "--rest",
        f"127.0.0.1:{rest}",
        "--admin",
        f"127.0.0.1:{admin}",
        *flags,
    ]
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, cwd=tree, env=_tree_env(tree)
    )
    proc.log = log  # type: ignore[attr-defined]
    return proc, grpc, admin


def _cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) process ``pid`` has used so far (Linux)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stop(proc: Any) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    proc.log.close()


def processes(config: Path, workdir: Path, runs: int, trees: dict[str, Path]) -> dict[str, Any]:
    """Spawn → ready and spawn → first client served: cold and from the cache (each
    tree's own), alternately (``runs`` of each)."""
    key = _classes()[0]
    node = _node(key)
    expected = ""
    for label, tree in trees.items():
        # a first daemon of each tree writes its cache, after a client of the class connected
        state_dir = workdir / f"daemon-state-{label}"
        log = f"first-{label}.log"
        proc, grpc, admin = _serve(config, workdir, ["--state-dir", str(state_dir)], log, tree)
        try:
            _, _, version = asyncio.run(_measure(grpc, admin, node, time.perf_counter()))
            asyncio.run(_hold(grpc, node, workdir / log))
        finally:
            _stop(proc)
        expected = expected or version
        assert version == expected, f"{label}: version {version}, expected {expected}"
    modes = [*(f"cold:{label}" for label in trees), *(f"cache:{label}" for label in trees)]
    figures: dict[str, dict[str, list[float]]] = {
        mode: {"ready": [], "served": [], "cpu": []} for mode in modes
    }
    for i in range(runs):
        order = modes if i % 2 == 0 else list(reversed(modes))
        for mode in order:
            if mode.startswith("cold:"):
                flags, tree = ["--no-cache"], trees[mode.split(":", 1)[1]]
            else:
                label = mode.split(":", 1)[1]
                flags, tree = ["--state-dir", str(workdir / f"daemon-state-{label}")], trees[label]
            log_name = f"{mode.replace(':', '-')}-{i}.log"
            t0 = time.perf_counter()
            proc, grpc, admin = _serve(config, workdir, flags, log_name, tree)
            try:
                ready, served, version = asyncio.run(_measure(grpc, admin, node, t0))
                cpu = _cpu_seconds(proc.pid)
            finally:
                _stop(proc)
            text = (workdir / log_name).read_text(errors="replace")
            if mode.startswith("cache:") and "serving the restart cache's build" not in text:
                raise RuntimeError(f"{mode}: the cache was not used:\n" + text[-3000:])
            assert version == expected, f"{mode}: version {version}, expected {expected}"
            figures[mode]["ready"].append(ready)
            figures[mode]["served"].append(served)
            figures[mode]["cpu"].append(cpu)
    return {
        mode: {what: _summary(values) for what, values in f.items()} for mode, f in figures.items()
    }


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench restart", description=__doc__)
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--classes", type=int, default=5, help="classes held (in process)")
    parser.add_argument("--no-process", action="store_true", help="in process only")
    parser.add_argument(
        "--baseline", type=Path, help="another tree (a git worktree) to run side by side"
    )
    parser.add_argument(
        "--source", action="store_true", help="do not compile the trees' bytecode first"
    )
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"services": args.services, "endpoints": args.endpoints}
    trees = {"this": Path(__file__).resolve().parents[1]}
    if args.baseline is not None:
        trees["baseline"] = args.baseline.resolve()
    if not args.source:
        for tree in trees.values():
            compile_bytecode(tree)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = write_mesh(root, args.services, endpoints=args.endpoints)
        (root / "state").mkdir(mode=0o700)
        results["in_process"] = in_process(config, root / "state", args.runs, args.classes)
        results["side_by_side"] = side_by_side(
            config, root / "state", trees, args.runs, args.classes
        )
        if not args.no_process:
            results["process"] = processes(config, root, args.runs, trees)
    results["load_average"] = os.getloadavg()
    r = results["in_process"]
    print(
        f"{args.services} services, {r['classes']} classes held, "
        f"{r['resources_per_class']} resources per class, cache {r['cache_bytes']} bytes; "
        f"medians and p99 of {args.runs} runs"
    )
    print(f"{'in process':44}{'p50':>10}{'p99':>10}")
    rows = [
        ("cold: load + build the classes", r["cold"]),
        ("cache: read + check + publish", r["cache"]),
        ("  then the verifying full load (background)", r["verifying_load"]),
        ("writing the cache: first (all files hashed)", r["first_write"]),
        ("writing the cache: later (hashes reused)", r["later_write"]),
    ]
    for name, f in rows:
        print(f"{name:44}{f['p50_ms']:>8.0f}ms{f['p99_ms']:>8.0f}ms")
    print(
        f"  CPU p50: cold {r['cold']['cpu_p50_ms']:.0f} ms, cache {r['cache']['cpu_p50_ms']:.0f} ms"
    )
    print(f"{'read + check + publish, one child per tree':44}{'p50':>10}{'p99':>10}{'CPU p50':>10}")
    for label, f in results["side_by_side"].items():
        name = f"cache: {label} ({trees[label]})"
        print(f"{name:44}{f['p50_ms']:>8.0f}ms{f['p99_ms']:>8.0f}ms{f['cpu_p50_ms']:>8.0f}ms")
    if "process" in results:
        p = results["process"]
        print(f"{'xdsd serve, from spawn (imports included)':44}{'p50':>10}{'p99':>10}")
        for mode in p:
            for what, label in (
                ("ready", "/readyz 200"),
                ("served", "first client served"),
                ("cpu", "its CPU time until then"),
            ):
                f = p[mode][what]
                name = f"{mode}: {label}"
                print(f"{name:44}{f['p50_ms']:>8.0f}ms{f['p99_ms']:>8.0f}ms")
    la = results["load_average"]
    print(f"load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}")
    return results
