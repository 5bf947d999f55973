"""REST polling: what N pollers cost xdsd, and how fast an edit reaches all of them.

xdsd serves a generated mesh (``meshgen``, 1 service by default) over REST, pinned to
CPU 0; simulated Envoys (``bench/_rest_poller.py``) run in child processes pinned to CPU 1,
each sending a real Envoy 1.40 node block (captured at the start of the run, ~77 KB) on
every poll, polling CDS, LDS, and then every EDS cluster and route configuration those
name, each poller on its own timer of 1 s plus up to 1 s of jitter, the way Envoy does with
``refresh_delay: 1s`` (7 pollers per client with one service). Three scenarios:

- in process (``_rest_micro``): ``RestDiscovery.answer`` on each poller's unchanged body in a
  loop, without sockets: the server's own cost per poll with the least noise (``--profile``
  adds a cProfile table).

- ``fleet``: for each fleet size, a steady window (client-side latency of unchanged polls,
  304, and the server's own time per poll from ``GET /debug/rest/timings``: body read to
  response ready), then one route edit (the service's VirtualService weights swapped,
  written atomically): the time from the write until every poller whose answer changes
  has received the new version (max over pollers; p50 too), and the watcher's detection
  part, read from xdsd's log.
- ``throughput``: the same clients polling back to back (no timer): unchanged polls per
  second, client and server latency, and the clients' CPU (a client bottleneck shows as
  their CPU near 100 % of a core).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

from bench._rest_micro import measure
from bench._rest_node import capture_envoy_node
from bench._rest_poller import FleetResult, FleetSpec, run
from bench.meshgen import write_mesh
from tests.harness import Xdsd, write_atomically

SERVICE = "svc-00000"
POLLERS_PER_CLIENT = 7  # CDS, LDS, 3 EDS clusters, 2 route configurations (1 service)
SERVER_CPU, CLIENT_CPU = 0, 1


def _vs(v1: int, v2: int) -> str:
    return (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        f"metadata: {{name: {SERVICE}}}\nspec:\n  host: {SERVICE}\n  subsets:\n"
        "  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n"
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        f"metadata: {{name: {SERVICE}}}\nspec:\n  hosts: [{SERVICE}]\n  http:\n  - route:\n"
        f"    - {{destination: {{host: {SERVICE}, subset: v1}}, weight: {v1}}}\n"
        f"    - {{destination: {{host: {SERVICE}, subset: v2}}, weight: {v2}}}\n"
    )


class Fleet:
    """Child processes simulating ``clients`` Envoys against one xdsd."""

    def __init__(
        self,
        xdsd: Xdsd,
        node: dict[str, Any],
        clients: int,
        refresh: float,
        warmup: float,
        window: float,
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.stop_event = ctx.Event()
        self.measure_from = time.time() + warmup
        self.window = window
        processes = 1 if clients < 20 else 2
        self.pipes = []
        self.processes = []
        ids = [f"poller-{i:05d}" for i in range(clients)]
        for p in range(processes):
            spec = FleetSpec(
                url=f"http://127.0.0.1:{xdsd.rest_port}",
                node=node,
                client_ids=tuple(ids[p::processes]),
                service=SERVICE,
                refresh=refresh,
                measure_from=self.measure_from,
                measure_until=self.measure_from + window,
                cpu=CLIENT_CPU if _cpus() > 1 else None,
            )
            receive, send = ctx.Pipe(duplex=False)
            process = ctx.Process(target=run, args=(spec, self.stop_event, send), daemon=True)
            process.start()
            self.pipes.append(receive)
            self.processes.append(process)

    def wait_for_measuring(self) -> None:
        time.sleep(max(0.0, self.measure_from - time.time()))

    def finish(self) -> FleetResult:
        """Stop the children; their results merged."""
        self.stop_event.set()
        merged = FleetResult()
        for pipe, process in zip(self.pipes, self.processes, strict=True):
            part: FleetResult = pipe.recv()
            process.join(30)
            merged.requests += part.requests
            merged.errors += part.errors
            merged.unchanged_us.extend(part.unchanged_us)
            merged.updates.extend(part.updates)
            merged.pollers += part.pollers
            merged.cpu_seconds += part.cpu_seconds
        return merged


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    s = sorted(values)

    def at(q: float) -> float:
        return s[min(len(s) - 1, int(q * len(s)))]

    return {"p50": at(0.5), "p99": at(0.99), "max": s[-1], "n": len(s)}


def _server_timings(xdsd: Xdsd, reset: bool = False) -> dict[str, Any]:
    url = f"http://127.0.0.1:{xdsd.admin_port}/debug/rest/timings" + ("?reset=1" if reset else "")
    with urllib.request.urlopen(url, timeout=10) as r:
        result: dict[str, Any] = json.loads(r.read())
    return result


def _detected_after(xdsd: Xdsd, wall: float) -> float | None:
    floor = int(wall * 1000) / 1000
    for line in xdsd.log().splitlines():
        if "config change detected" in line:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if stamp >= floor:
                return stamp
    return None


def fleet(
    xdsd: Xdsd, config: Path, node: dict[str, Any], clients: int, window: float, edit: int
) -> dict[str, Any]:
    """One fleet size: steady-state polls, then one route edit."""
    run_fleet = Fleet(xdsd, node, clients, refresh=1.0, warmup=3.0, window=window)
    run_fleet.wait_for_measuring()
    _server_timings(xdsd, reset=True)
    time.sleep(window)
    server = _server_timings(xdsd, reset=True)
    wall = time.time()
    write_atomically(
        config / "rules" / f"{SERVICE}.yaml", _vs(10, 90) if edit % 2 == 0 else _vs(90, 10)
    )
    time.sleep(4.5)  # a poller waits at most 2 s (1 s + jitter); answers come after
    result = run_fleet.finish()
    first: dict[str, float] = {}
    for label, at, _version in result.updates:
        if at >= wall and label not in first:
            first[label] = at
    delays_ms = [(t - wall) * 1000 for t in first.values()]
    detected = _detected_after(xdsd, wall)
    steady = result.unchanged_us
    return {
        "clients": clients,
        "pollers": result.pollers,
        "polls_per_s": len(steady) / window if steady else 0.0,
        "errors": result.errors,
        "client_304_us": _quantiles(steady),
        "server": server,
        "updated_pollers": len(first),
        "updated_clients": len({label.split()[0] for label in first}),
        "all_updated_ms": max(delays_ms) if delays_ms else None,
        "p50_updated_ms": statistics.median(delays_ms) if delays_ms else None,
        "detect_ms": None if detected is None else (detected - wall) * 1000,
        "client_cpu_percent": 100 * result.cpu_seconds / window,
    }


def throughput(xdsd: Xdsd, node: dict[str, Any], clients: int, window: float) -> dict[str, Any]:
    """Pollers polling back to back: unchanged polls per second."""
    run_fleet = Fleet(xdsd, node, clients, refresh=0.0, warmup=3.0, window=window)
    run_fleet.wait_for_measuring()
    _server_timings(xdsd, reset=True)
    cpu_before = _process_cpu(xdsd)
    time.sleep(window)
    server = _server_timings(xdsd, reset=True)
    server_cpu = (_process_cpu(xdsd) - cpu_before) / window * 100
    result = run_fleet.finish()
    steady = result.unchanged_us
    return {
        "clients": clients,
        "pollers": result.pollers,
        "polls_per_s": len(steady) / window,
        "errors": result.errors,
        "client_304_us": _quantiles(steady),
        "server": server,
        "server_cpu_percent": server_cpu,
        "client_cpu_percent": 100 * result.cpu_seconds / window,
    }


def _process_cpu(xdsd: Xdsd) -> float:
    fields = Path(f"/proc/{xdsd.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m bench rest", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--pollers",
        type=int,
        nargs="+",
        default=[10, 100, 1000],
        help="fleet sizes in pollers (7 per simulated Envoy)",
    )
    parser.add_argument("--throughput-clients", type=int, default=10)
    parser.add_argument("--window", type=float, default=5.0, help="seconds measured")
    parser.add_argument("--skip", choices=["fleet", "throughput", "micro"], nargs="*", default=[])
    parser.add_argument("--profile", action="store_true", help="cProfile the in-process polls")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"fleet": [], "throughput": None, "micro": None}
    with tempfile.TemporaryDirectory(prefix="xdsd-rest-") as tmp:
        root = Path(tmp)
        # the sidecar of the service's first endpoint (meshgen addresses them from 10.0.0.1)
        node = {**capture_envoy_node(root), "metadata": {"instance_ip": "10.0.0.1"}}
        results["node_bytes"] = len(json.dumps(node, separators=(",", ":")))
        config = write_mesh(root, 1)
        write_atomically(config / "rules" / f"{SERVICE}.yaml", _vs(90, 10))
        if "micro" not in args.skip:
            results["micro"] = measure(config, {**node, "cluster": SERVICE}, 2000, args.profile)
        xdsd = Xdsd(config, root)
        try:
            if _cpus() > 1:
                os.sched_setaffinity(xdsd.proc.pid, {SERVER_CPU})
            if "fleet" not in args.skip:
                for i, pollers in enumerate(args.pollers):
                    clients = max(1, math.ceil(pollers / POLLERS_PER_CLIENT))
                    results["fleet"].append(fleet(xdsd, config, node, clients, args.window, i))
            if "throughput" not in args.skip:
                results["throughput"] = throughput(xdsd, node, args.throughput_clients, args.window)
        finally:
            xdsd.stop()
    _print(results)
    return results


def _print(results: dict[str, Any]) -> None:
    print(f"node block {results['node_bytes']} bytes per poll")
    micro = results["micro"]
    if micro:
        print(micro.pop("profile", ""))
        print(f"in process, unchanged poll ({micro['pollers']} pollers, {micro['body_bytes']} B):")
        for short, figures in micro.items():
            if isinstance(figures, dict):
                print(
                    f"  {short:<9} p50 {figures['p50_us']:>7.1f} us"
                    f"  p99 {figures['p99_us']:>7.1f} us"
                )
    if results["fleet"]:
        print(
            f"{'clients':>8}{'pollers':>8}{'polls/s':>9}{'cli 304 p50/p99':>18}"
            f"{'srv 304 p50/p99/max (cpu p99)':>34}{'all new':>9}{'p50 new':>9}{'detect':>8}"
            f"{'errs':>6}"
        )
        for r in results["fleet"]:
            c, s = r["client_304_us"], r["server"].get("304", {})
            print(
                f"{r['clients']:>8}{r['pollers']:>8}{r['polls_per_s']:>9.0f}"
                f"{c.get('p50', 0):>8.0f}/{c.get('p99', 0):>6.0f}us"
                f"{s.get('p50_us', 0):>9.0f}/{s.get('p99_us', 0):>5.0f}"
                f"/{s.get('max_us', 0):>6.0f}us ({s.get('cpu_p99_us', 0):>4.0f}us)"
                f"{r['all_updated_ms'] or 0:>7.0f}ms{r['p50_updated_ms'] or 0:>7.0f}ms"
                f"{r['detect_ms'] or 0:>6.0f}ms{r['errors']:>6}"
                f"   ({r['updated_pollers']} pollers of {r['updated_clients']} clients updated)"
            )
    t = results["throughput"]
    if t:
        c, s = t["client_304_us"], t["server"].get("304", {})
        print(
            f"throughput: {t['clients']} clients ({t['pollers']} pollers) back to back: "
            f"{t['polls_per_s']:.0f} polls/s; client 304 p50 {c.get('p50', 0):.0f} us, "
            f"p99 {c.get('p99', 0):.0f} us; server 304 p50 {s.get('p50_us', 0):.0f} us, "
            f"p99 {s.get('p99_us', 0):.0f} us (CPU {s.get('cpu_p99_us', 0):.0f} us); "
            f"server CPU {t['server_cpu_percent']:.0f}%, "
            f"clients CPU {t['client_cpu_percent']:.0f}%"
        )
