"""Reconnect storm: N simulated Envoys connect at once, and xdsd restarts under N clients.

``connect``: the daemon (pinned to CPU 0) serves an S-service mesh; N clients in load
processes (CPU 1) are released together and each opens its HTTP/2 connection and ADS
stream. Timed from the release until every client has ACKed a full configuration (CDS,
EDS, LDS, RDS); a connection that fails (refused, reset) is counted and retried after
~50 ms.

``restart``: with N clients synced, the daemon is stopped (SIGTERM) and a new one started
on the same port. Timed from the new daemon's readiness (``/readyz``; also reported from
its process start) until every client reopened its stream and is in sync again (a
resumed client sends its subscriptions with the versions it holds; unchanged CDS/LDS are
rightly not resent, so "in sync" is EDS and RDS ACKed, RDS coming last). Connection
failures while no daemon listens are expected and reported apart from those after it is
up.

``--identities`` (default on) runs the same storm a second time, in the same run, with
xdsd as the mesh's CA (``[mesh.ca]``, STRICT mesh mTLS): every client carries an xdsd token
for its service (``authorization: Bearer``, one token per service, minted with ``xdsd
token``) and counts as synced only once it also received and ACKed its own SDS
``default`` secret — a fresh key pair and certificate xdsd made for that client. After a
restart the new daemon has no workload keys (they live in memory only): every client is
issued a new one.

Also reported: the listen backlog the socket got (``ss -ltn``: Send-Q of a listening
socket is its backlog) and ``net.core.somaxconn``, which caps it.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
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


CA_SETTINGS = """
[mesh.mtls]
mode = "STRICT"
trust_domain = "bench.local"

[mesh.ca]
state_dir = "{state}"
"""


def mint_tokens(settings: Path, classes: int, tree: str | None) -> tuple[str, ...]:
    """An xdsd token for each class's service (``svc-{c:05d}``, namespace default)."""
    tokens = []
    for c in range(classes):
        out = subprocess.run(
            [
                *(sys.executable, "-m", "xdsd.cli", "token"),
                *("--service", f"svc-{c:05d}", "--settings", str(settings)),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tree or None,
            check=True,
        )
        tokens.append(out.stdout.strip())
    return tuple(tokens)


def run(
    clients: int, services: int, args: argparse.Namespace, *, identities: bool = False
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="xdsd-storm-") as tmp:
        root = Path(tmp)
        config = write_mesh(root, services)
        extra: list[str] = []
        text = f"grpc_backlog = {args.backlog}\n" if args.backlog else ""
        if identities:
            text += CA_SETTINGS.format(state=root / "ca-state")
        if text:
            settings = root / "settings.toml"
            settings.write_text(text)
            extra = ["--settings", str(settings)]
        daemon = Daemon(config, root / "xdsd.log", tree=args.tree, extra=extra)
        load = None
        out: dict[str, Any] = {"somaxconn": somaxconn(), "identities": identities}
        try:
            out["backlog"] = listen_backlog(daemon.grpc_port)
            classes = min(args.classes, services)
            tokens = mint_tokens(settings, classes, args.tree) if identities else ()
            spec = ClientSpec("127.0.0.1", daemon.grpc_port, classes=classes, tokens=tokens)
            load = LoadGen(clients, spec, procs=args.procs, retry_for=3600)
            cpu0 = daemon.cpu()
            started = load.go()
            out["connect"] = _wait_all_synced(load, clients, started, args.timeout)
            out["connect"]["daemon_cpu_s"] = daemon.cpu() - cpu0
            out["connect"]["daemon_rss_mb"] = daemon.rss() / 2**20
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
                # from the new process's start: readiness can come late when the new
                # daemon is already busy with reconnecting clients (issuing certificates)
                if st["all_synced_s"] is not None:
                    st["from_start_s"] = st["all_synced_s"] + st["down_s"]
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
    parser.add_argument(
        "--identities",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the storm with token-bearing clients that each get a certificate",
    )
    args = parser.parse_args(argv)
    runs = []
    for _ in range(args.runs):  # interleaved, so that noise hits both alike
        runs.append(run(args.clients, args.services, args))
        if args.identities:
            runs.append(run(args.clients, args.services, args, identities=True))
    first = runs[0]
    print(
        f"N={args.clients} S={args.services}  backlog={first['backlog']} "
        f"somaxconn={first['somaxconn']}"
    )
    print(
        f"{'run':>4} {'clients':<9}{'phase':<8}{'all synced':>11}{'p50':>8}{'failures':>9}  notes"
    )
    for i, r in enumerate(runs):
        c = r["connect"]
        kind = "tokens" if r["identities"] else "plain"
        certs = f", {c['certificates']} certificates" if r["identities"] else ""
        print(
            f"{i:>4} {kind:<9}{'connect':<8}{_s(c['all_synced_s']):>11}"
            f"{_s(c['p50_synced_s']):>8}{c['failures']:>9}  daemon cpu "
            f"{c['daemon_cpu_s']:.2f}s, rss {c['daemon_rss_mb']:.0f} MB{certs}"
        )
        if "restart" in r:
            s = r["restart"]
            print(
                f"{i:>4} {kind:<9}{'restart':<8}{_s(s['all_synced_s']):>11}"
                f"{_s(s['p50_synced_s']):>8}{s['failures_after_up']:>9}  down "
                f"{s['down_s']:.2f}s (all synced {_s(s.get('from_start_s'))} after the "
                f"start), {s['failures_while_down']} refused while down"
            )
    plain = [r["connect"]["all_synced_s"] for r in runs if not r["identities"]]
    issued = [r["connect"]["all_synced_s"] for r in runs if r["identities"]]
    if issued and None not in plain + issued:
        ratio = statistics.median(issued) / statistics.median(plain)
        print(
            f"median all synced: plain {statistics.median(plain):.2f}s, with a certificate "
            f"each {statistics.median(issued):.2f}s ({ratio:.2f}x)"
        )
    return {"runs": runs}


def _s(v: float | None) -> str:
    """Seconds with two decimals, ``-`` for none."""
    return "-" if v is None else f"{v:.2f}s"
