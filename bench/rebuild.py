"""Rebuild cost: cold builds of generated meshes, and one service's file changing.

Cold: for each mesh size, in one process, as the daemon starts: ``MeshState.reload`` (read,
parse, validate, cross-check the whole directory), then the first snapshot of one node
class (translation included), and of four more classes (other services, other bind
addresses). Wall and CPU time: the machine is shared, CPU time is the steadier figure.

One-file change: a ``MeshState`` serving the largest mesh with every measured class
watched; one service's file is rewritten (an endpoint address changes, so its clusters'
endpoints change) and ``MeshState.reload`` is called with the changed path, as the
watcher does. Timed from the reload call to the new snapshot of every watched class being
in the cache, split into reading+parsing, cross-checking, translating and snapshot
building (``MeshState.last_timings``). The watcher's quiet period is not included.

With ``--mtls``, mesh mutual TLS is on (STRICT, a certificate and key file per service,
placeholder PEM: nothing here checks signatures), so every load also reads 2N+1
certificate files and every cluster of the mesh is an ISTIO_MUTUAL one.

With ``--policies P``, the largest mesh is measured again in the same run with ``P``
generated AuthorizationPolicies (``meshgen.policy_text``: a mesh-wide DENY, a
namespace-wide ALLOW, the rest one workload each, with principals, methods, paths, some
conditions) next to it without them: cold build, each further class, one service's file
changed, and one policy's file changed (a policy selecting a watched class; the
mesh-wide one, which every class takes), with the ratios.

With ``--baseline TREE`` (a checkout of other code, e.g. ``git worktree add ../base REV``),
the largest mesh is measured side by side instead: ``--runs`` times, alternately with
TREE's code and this tree's, a cold build in a fresh Python process (``MeshState.reload``
then the first class's snapshot, imports excluded; wall, CPU, peak RSS), then in
``--edit-runs`` fresh processes per tree, alternately, the one-file change (``--edits``
edits) and its peak RSS; medians, p99 and the load average. Both trees' bytecode is
compiled first, so that neither compiles the modules its load imports lazily while
timed. Both trees must produce the same snapshots (checked: a digest of every watched
class's resources and versions).

``python -m bench rebuild [--services 100,1000,10000] [--endpoints 10] [--edits 20]
[--runs 3] [--mtls] [--policies 1000] [--baseline TREE]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._trees import compile_bytecode
from bench.meshgen import policy_text, write_mesh, write_policies
from xdsd.app import MeshState
from xdsd.model.mesh_config import DEFAULT_MESH_CONFIG, MeshConfig, MeshTLS, MTLSMode
from xdsd.translate import NodeClass

_PEM = "-----BEGIN {0}-----\nbench placeholder\n-----END {0}-----\n"


def mesh_tls(root: Path, services: int) -> MeshConfig:
    """Mesh mutual TLS with placeholder files for ``services`` generated services."""
    pki = root / "pki"
    for i in range(services):
        directory = pki / "default" / f"svc-{i:05d}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "cert.pem").write_text(_PEM.format("CERTIFICATE"))
        (directory / "key.pem").write_text(_PEM.format("PRIVATE KEY"))
    (pki / "ca.pem").write_text(_PEM.format("CERTIFICATE"))
    return MeshConfig(
        mtls=MeshTLS(
            mode=MTLSMode.STRICT,
            ca=str(pki / "ca.pem"),
            certificate=str(pki / "{namespace}" / "{service}" / "cert.pem"),
            private_key=str(pki / "{namespace}" / "{service}" / "key.pem"),
        )
    )


def _classes() -> list[NodeClass]:
    """The measured classes: five services' sidecars (``app`` labelled, as the generated
    AuthorizationPolicies select them)."""

    def labels(i: int, version: str = "v1") -> tuple[tuple[str, str], ...]:
        return (("app", f"svc-{i:05d}"), ("version", version))

    return [
        NodeClass(service="svc-00000", labels=labels(0), instance_ip="127.0.0.2"),
        NodeClass(service="svc-00001", labels=labels(1), instance_ip="127.0.0.3"),
        NodeClass(service="svc-00002", labels=labels(2, "v2"), instance_ip="127.0.0.4"),
        NodeClass(
            service="svc-00003", labels=labels(3), instance_ip="127.0.0.5", outbound_ip="127.0.1.1"
        ),
        NodeClass(service="svc-00004", labels=labels(4), instance_ip="127.0.0.6"),
    ]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def cold(config: Path, runs: int, mesh: MeshConfig = DEFAULT_MESH_CONFIG) -> dict[str, Any]:
    """Median cold-build figures (ms) over ``runs`` in-process builds, the way the daemon
    builds: ``MeshState.reload`` then a class's first snapshot. Wall and CPU time (the
    machine is shared: CPU time is the steadier figure)."""
    wall: dict[str, list[float]] = {"load": [], "first": [], "more": []}
    cpu: dict[str, list[float]] = {"load": [], "first": [], "more": []}
    size = 0
    for _ in range(runs):
        classes = _classes()
        marks = [(time.perf_counter(), time.process_time())]
        state = MeshState(str(config), mesh_config=mesh)
        state.reload()
        marks.append((time.perf_counter(), time.process_time()))
        first = state.snapshot(classes[0])
        assert first is not None
        size = len(first)
        marks.append((time.perf_counter(), time.process_time()))
        for node in classes[1:]:
            state.snapshot(node)
        marks.append((time.perf_counter(), time.process_time()))
        for i, phase in enumerate(("load", "first", "more")):
            scale = len(classes) - 1 if phase == "more" else 1
            wall[phase].append((marks[i + 1][0] - marks[i][0]) / scale)
            cpu[phase].append((marks[i + 1][1] - marks[i][1]) / scale)
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    return {
        "resources": size,
        "load_ms": _ms(med["load"]),
        "first_class_ms": _ms(med["first"]),
        "cold_one_class_ms": _ms(med["load"] + med["first"]),
        "per_extra_class_ms": _ms(med["more"]),
        "cold_five_classes_ms": _ms(med["load"] + med["first"] + 4 * med["more"]),
        "cold_one_class_cpu_ms": _ms(med_cpu["load"] + med_cpu["first"]),
        "per_extra_class_cpu_ms": _ms(med_cpu["more"]),
    }


def _rewrite(path: Path, edit: int) -> None:
    text = path.read_text()
    head, sep, tail = text.partition('address = "')
    old = tail.split('"', 1)[0]
    tail = tail.replace(old, f"10.250.{edit // 250 % 250}.{edit % 250 + 1}", 1)
    path.write_text(head + sep + tail)


def one_file(
    config: Path,
    edits: int,
    mesh: MeshConfig = DEFAULT_MESH_CONFIG,
    policies: tuple[int, list[int]] | None = None,
) -> dict[str, Any]:
    """p50/p99/max (ms) of one service file's change through ``MeshState.reload``; with
    ``policies`` (how many services the generated policies are over, and the indexes of
    the policies to edit in turn), of one AuthorizationPolicy file's change instead."""
    state = MeshState(str(config), mesh_config=mesh)
    started = time.perf_counter()
    state.reload()
    initial = time.perf_counter() - started
    for node in _classes():
        state.cache.subscribe(node, lambda _snapshot: None)
        state.snapshot(node)
    services = sorted((config / "services").glob("*.toml"))
    totals: list[float] = []
    cpu_totals: list[float] = []
    phases: dict[str, list[float]] = {}
    for i in range(edits):
        if policies is None:
            path = services[(i * 7919) % len(services)]
            _rewrite(path, i)
        else:
            over, chosen = policies
            index = chosen[i % len(chosen)]
            path = config / "security" / f"policy-{index:05d}.yaml"
            path.write_text(policy_text(index, over, edit=i + 1))
        t, c = time.perf_counter(), time.process_time()
        changed = state.reload({str(path)})
        totals.append(time.perf_counter() - t)
        cpu_totals.append(time.process_time() - c)
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
        "p50_cpu_ms": _ms(statistics.median(cpu_totals)),
        "phases_p50_ms": {k: _ms(statistics.median(v)) for k, v in phases.items()},
    }


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench rebuild", description=__doc__)
    parser.add_argument(
        "--services",
        default="100,1000,10000",
        help="comma-separated mesh sizes; the largest gets the edits",
    )
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3, help="cold builds per size")
    parser.add_argument("--mtls", action="store_true", help="with mesh mutual TLS (STRICT)")
    parser.add_argument(
        "--policies",
        type=int,
        default=0,
        help="also measure the largest mesh with this many AuthorizationPolicies",
    )
    parser.add_argument(
        "--edit-runs",
        type=int,
        default=1,
        help="with --baseline: fresh processes per tree measuring the edits, alternately",
    )
    parser.add_argument(
        "--baseline",
        default="",
        help="a checkout of other code: the largest mesh built alternately with it and this "
        "tree, each build in a fresh process",
    )
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.services.split(","))
    if args.baseline:
        return side_by_side(Path(args.baseline).resolve(), sizes[-1], args)
    results: dict[str, Any] = {"endpoints": args.endpoints, "mtls": args.mtls, "cold": {}}
    with tempfile.TemporaryDirectory() as tmp:
        config = Path()
        for n in sizes:
            config = write_mesh(Path(tmp) / str(n), n, endpoints=args.endpoints)
            mesh = mesh_tls(Path(tmp) / str(n), n) if args.mtls else DEFAULT_MESH_CONFIG
            results["cold"][str(n)] = cold(config, args.runs, mesh)
        results["one_file"] = one_file(config, args.edits, mesh)
        results["one_file"]["services"] = sizes[-1]
        if args.policies:
            results["policies"] = with_policies(
                Path(tmp) / "policies", sizes[-1], args, mesh, results
            )
    print(
        f"{'services':>9}{'resources':>11}{'load':>9}{'1st class':>11}{'cold':>9}"
        f"{'+class':>9}{'cold x5':>9}{'cold cpu':>10}{'+cls cpu':>10}"
    )
    for n, r in results["cold"].items():
        print(
            f"{n:>9}{r['resources']:>11}{r['load_ms']:>7.0f}ms{r['first_class_ms']:>9.0f}ms"
            f"{r['cold_one_class_ms']:>7.0f}ms{r['per_extra_class_ms']:>7.1f}ms"
            f"{r['cold_five_classes_ms']:>7.0f}ms{r['cold_one_class_cpu_ms']:>8.0f}ms"
            f"{r['per_extra_class_cpu_ms']:>8.1f}ms"
        )
    one = results["one_file"]
    phases = ", ".join(f"{k} {v:.1f}" for k, v in one["phases_p50_ms"].items())
    print(
        f"one service file changed in {one['services']} services, {one['classes']} classes "
        f"watched, {one['edits']} edits: p50 {one['p50_ms']:.1f} ms, p99 {one['p99_ms']:.1f} "
        f"ms, max {one['max_ms']:.1f} ms, p50 CPU {one['p50_cpu_ms']:.1f} ms "
        f"(p50 phases ms: {phases})"
    )
    print(f"(cold: median of {args.runs} runs; in-process, imports excluded)")
    if args.policies:
        _print_policies(results)
    return results


def with_policies(
    root: Path, services: int, args: argparse.Namespace, mesh: MeshConfig, plain: dict[str, Any]
) -> dict[str, Any]:
    """The largest mesh again with ``args.policies`` AuthorizationPolicies: cold build,
    further classes, one service file and one policy file changed (a policy of a watched
    class's workload, and the mesh-wide one); ``plain`` holds the figures without."""
    config = write_mesh(root, services, endpoints=args.endpoints)
    write_policies(config, services, args.policies)
    watched = [i for i in range(2, min(args.policies, 5))]  # svc-00002..4's own policies
    out: dict[str, Any] = {"policies": args.policies, "services": services}
    out["cold"] = cold(config, args.runs, mesh)
    out["one_file"] = one_file(config, args.edits, mesh)
    out["one_policy"] = one_file(config, args.edits, mesh, (services, watched))
    out["mesh_wide_policy"] = one_file(config, args.edits, mesh, (services, [0]))
    out["without"] = {"cold": plain["cold"][str(services)], "one_file": plain["one_file"]}
    return out


def _print_policies(results: dict[str, Any]) -> None:
    r = results["policies"]
    before, after = r["without"], r
    rows = [
        (
            "cold build (load + 1st class)",
            before["cold"]["cold_one_class_ms"],
            after["cold"]["cold_one_class_ms"],
        ),
        (
            "cold build CPU",
            before["cold"]["cold_one_class_cpu_ms"],
            after["cold"]["cold_one_class_cpu_ms"],
        ),
        ("load", before["cold"]["load_ms"], after["cold"]["load_ms"]),
        ("first class", before["cold"]["first_class_ms"], after["cold"]["first_class_ms"]),
        (
            "each further class",
            before["cold"]["per_extra_class_ms"],
            after["cold"]["per_extra_class_ms"],
        ),
        ("one service file: p50", before["one_file"]["p50_ms"], after["one_file"]["p50_ms"]),
        ("one service file: p99", before["one_file"]["p99_ms"], after["one_file"]["p99_ms"]),
        ("one workload's policy file: p50", None, after["one_policy"]["p50_ms"]),
        ("one workload's policy file: p99", None, after["one_policy"]["p99_ms"]),
        ("the mesh-wide policy file: p50", None, after["mesh_wide_policy"]["p50_ms"]),
        ("the mesh-wide policy file: p99", None, after["mesh_wide_policy"]["p99_ms"]),
    ]
    print(f"\n{r['services']} services, without and with {r['policies']} AuthorizationPolicies:")
    print(f"{'':34}{'without':>10}{'with':>10}{'ratio':>8}")
    for name, a, b in rows:
        ratio = f"{b / a:.2f}x" if a else ""
        left = f"{a:.1f}" if a is not None else "-"
        print(f"{name:34}{left:>10}{b:>10.1f}{ratio:>8}")
    for key in ("one_file", "one_policy", "mesh_wide_policy"):
        phases = ", ".join(f"{k} {v:.1f}" for k, v in r[key]["phases_p50_ms"].items())
        print(f"  {key} p50 phases ms: {phases}")


#: What a fresh process runs (``python -c``, the measured tree first on ``sys.path``):
#: argv: config directory, "cold" or "edits", the number of edits. Prints one JSON line.
_FRESH = """
import hashlib, json, resource, sys, time
t, c = time.perf_counter(), time.process_time()
from xdsd.app import MeshState
from bench.rebuild import _classes, one_file
from pathlib import Path
config, mode, edits = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = {}
if mode == "cold":
    t, c = time.perf_counter(), time.process_time()
    state = MeshState(config)
    state.reload()
    out["load"] = time.perf_counter() - t
    out["load_cpu"] = time.process_time() - c
    state.snapshot(_classes()[0])
    out["cold"], out["cpu"] = time.perf_counter() - t, time.process_time() - c
    digest = hashlib.sha256()
    for node in _classes():
        snapshot = state.snapshot(node)
        digest.update(repr(sorted(snapshot.versions.items())).encode())
        for type_url in sorted(snapshot.resources):
            for name, r in snapshot.resources[type_url].items():
                digest.update(f"{type_url}{name}{r.digest}{r.references}".encode() + r.payload)
    out["digest"] = digest.hexdigest()
else:
    out = one_file(Path(config), edits)
out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def _fresh(tree: Path, config: Path, mode: str, edits: int) -> dict[str, Any]:
    """One fresh process running ``_FRESH`` with ``tree``'s code."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-c", _FRESH, str(config), mode, str(edits)],
        env=env,
        cwd=str(tree),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"{tree}: {mode} run failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def side_by_side(baseline: Path, services: int, args: argparse.Namespace) -> dict[str, Any]:
    """``--baseline``: the cold build and the one-file change of ``services`` services,
    alternately with ``baseline``'s code and this tree's, each in fresh processes."""
    here = Path(__file__).resolve().parent.parent
    trees = {"baseline": baseline, "this tree": here}
    for tree in trees.values():  # the lazy imports a load makes: read, not compiled
        compile_bytecode(tree)
    cold_runs: dict[str, list[dict[str, Any]]] = {k: [] for k in trees}
    edits: dict[str, list[dict[str, Any]]] = {}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        config = write_mesh(Path(tmp), services, endpoints=args.endpoints)
        for _ in range(args.runs):
            for label, tree in trees.items():
                cold_runs[label].append(_fresh(tree, config, "cold", 0))
                loads.append(os.getloadavg()[0])
        for run in range(args.edit_runs):
            for i, (label, tree) in enumerate(trees.items()):
                # a mesh of its own: the edits write the same addresses in turn
                root = Path(tmp) / f"edits-{run}-{i}"
                fresh = write_mesh(root, services, endpoints=args.endpoints)
                edits.setdefault(label, []).append(_fresh(tree, fresh, "edits", args.edits))
                loads.append(os.getloadavg()[0])
    digests = {label: {r["digest"] for r in runs} for label, runs in cold_runs.items()}
    same = len(set().union(*digests.values())) == 1
    out: dict[str, Any] = {"services": services, "runs": args.runs, "same_snapshots": same}
    print(
        f"{services} services, {args.endpoints} endpoints each; cold build (reload + first "
        f"class) in {args.runs} fresh processes per tree, alternately; load average "
        f"{min(loads):.2f}-{max(loads):.2f}"
    )
    print(
        f"{'':11}{'cold p50':>10}{'p99':>8}{'min':>8}{'load p50':>10}{'CPU p50':>9}"
        f"{'RSS MB':>8}{'edit p50':>10}{'p99':>9}{'max':>9}{'RSS MB':>8}"
    )
    print(f"(edits: {args.edit_runs} fresh processes per tree, alternately; p50 their median)")
    for label, runs in cold_runs.items():
        colds = [r["cold"] for r in runs]
        row = {
            "cold_p50_s": round(statistics.median(colds), 3),
            "cold_p99_s": round(_p99(colds), 3),
            "cold_min_s": round(min(colds), 3),
            "cold_runs_s": [round(c, 3) for c in colds],
            "load_p50_s": round(statistics.median(r["load"] for r in runs), 3),
            "cpu_p50_s": round(statistics.median(r["cpu"] for r in runs), 3),
            "cold_rss_mb": round(statistics.median(r["rss_mb"] for r in runs), 1),
            "one_file": edits[label],
        }
        out[label] = row
        e = {
            "p50_ms": statistics.median(r["p50_ms"] for r in edits[label]),
            "p99_ms": max(r["p99_ms"] for r in edits[label]),
            "max_ms": max(r["max_ms"] for r in edits[label]),
            "rss_mb": max(r["rss_mb"] for r in edits[label]),
        }
        row["one_file_summary"] = e
        print(
            f"{label:11}{row['cold_p50_s']:>9.2f}s{row['cold_p99_s']:>7.2f}s"
            f"{row['cold_min_s']:>7.2f}s{row['load_p50_s']:>9.2f}s{row['cpu_p50_s']:>8.2f}s"
            f"{row['cold_rss_mb']:>8.0f}{e['p50_ms']:>8.1f}ms{e['p99_ms']:>7.1f}ms"
            f"{e['max_ms']:>7.1f}ms{e['rss_mb']:>8.0f}"
        )
    for label, runs in cold_runs.items():
        load_cpu = [r["load_cpu"] for r in runs]
        cpu = [r["cpu"] for r in runs]
        out[label]["load_cpu_p50_s"] = round(statistics.median(load_cpu), 3)
        print(
            f"{label}: load (MeshState.reload) CPU p50 {statistics.median(load_cpu):.2f} s, "
            f"p99 {_p99(load_cpu):.2f} s; cold CPU p99 {_p99(cpu):.2f} s"
        )
    print(f"same snapshots from both trees: {same}")
    return out
