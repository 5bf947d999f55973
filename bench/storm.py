"""Reconnect storm: N simulated Envoys connect at once, and xdsd restarts under N clients.

``connect``: the daemon (pinned to CPU 0) serves an S-service mesh; N clients in load
processes (CPU 1) are released together and each opens its HTTP/2 connection and ADS
stream. Timed from the release until every client has ACKed a full configuration (CDS,
EDS, LDS, RDS); a connection that fails (refused, reset) is counted and retried after
~50 ms.

``restart``: with N clients synced, the daemon is stopped (SIGTERM) and a new one started
on the same port. Timed from the new daemon's start until every client reopened its
stream and is in sync again (a resumed client sends its subscriptions with the versions
it holds; unchanged CDS/LDS are rightly not resent, so "in sync" is EDS and RDS ACKed,
RDS coming last). Connection failures while no daemon listens are expected and reported
apart from those after it is up.

Also reported: the listen backlog the socket got (``ss -ltn``: Send-Q of a listening
socket is its backlog) and ``net.core.somaxconn``, which caps it.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._loadgen import ClientSpec, Daemon, LoadGen
from bench.meshgen import write_mesh


def listen_backlog(port: int) -> int | None:
    """The backlog of the socket listening on ``port`` (Send-Q in ``ss -ltn``)."""
    try:
        out = subprocess.run(
            ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            return int(fields[2])
    return None


def somaxconn() -> int | None:
    try:
        return int(Path("/proc/sys/net/core/somaxconn").read_text())
    except OSError:
        return None


def _wait_all_synced(load: LoadGen, n: int, since: float, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        st = load.status()
        if st["synced"] == n or time.monotonic() > deadline:
            times = [t - since for t in st["synced_at"] if t is not None]
            st["all_synced_s"] = max(times) if st["synced"] == n else None
            st["p50_synced_s"] = statistics.median(times) if times else None
            del st["synced_at"]
            return st
        time.sleep(0.02)


def run(clients: int, services: int, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="xdsd-storm-") as tmp:
        root = Path(tmp)
        config = write_mesh(root, services)
        extra: list[str] = []
        if args.backlog:
            settings = root / "settings.toml"
            settings.write_text(f"grpc_backlog = {args.backlog}\n")
            extra = ["--settings", str(settings)]
        daemon = Daemon(config, root / "xdsd.log", tree=args.tree, extra=extra)
        load = None
        out: dict[str, Any] = {"somaxconn": somaxconn()}
        try:
            out["backlog"] = listen_backlog(daemon.grpc_port)
            spec = ClientSpec("127.0.0.1", daemon.grpc_port, classes=min(args.classes, services))
            load = LoadGen(clients, spec, procs=args.procs, retry_for=3600)
            cpu0 = daemon.cpu()
            started = load.go()
            out["connect"] = _wait_all_synced(load, clients, started, args.timeout)
            out["connect"]["daemon_cpu_s"] = daemon.cpu() - cpu0
            if "restart" in args.parts:
                before = load.status()
                daemon.stop()
                down = time.time()
                daemon = Daemon(
                    config, root / "xdsd2.log", port=daemon.grpc_port, tree=args.tree, extra=extra
                )
                up = time.time()
                after_up = load.status()
                st = _wait_all_synced(load, clients, up, args.timeout)
                st["down_s"] = up - down
                st["failures_while_down"] = after_up["failures"] - before["failures"]
                st["failures_after_up"] = st["failures"] - after_up["failures"]
                out["restart"] = st
        finally:
            if load is not None:
                load.stop()
            daemon.stop()
    return out


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench storm", description=__doc__)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--services", type=int, default=10)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--parts", default="connect,restart")
    parser.add_argument("--tree", help="serve xdsd from this checkout")
    parser.add_argument("--backlog", type=int, help="grpc_backlog setting (default: xdsd's)")
    args = parser.parse_args(argv)
    runs = [run(args.clients, args.services, args) for _ in range(args.runs)]
    first = runs[0]
    print(
        f"N={args.clients} S={args.services}  backlog={first['backlog']} "
        f"somaxconn={first['somaxconn']}"
    )
    print(f"{'run':>4} {'phase':<8}{'all synced':>11}{'p50':>8}{'failures':>9}  notes")
    for i, r in enumerate(runs):
        c = r["connect"]
        print(
            f"{i:>4} {'connect':<8}{_s(c['all_synced_s']):>11}{_s(c['p50_synced_s']):>8}"
            f"{c['failures']:>9}  daemon cpu {c['daemon_cpu_s']:.2f}s"
        )
        if "restart" in r:
            s = r["restart"]
            print(
                f"{i:>4} {'restart':<8}{_s(s['all_synced_s']):>11}{_s(s['p50_synced_s']):>8}"
                f"{s['failures_after_up']:>9}  down {s['down_s']:.2f}s, "
                f"{s['failures_while_down']} refused while down"
            )
    return {"runs": runs}


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}s"
