"""Hostile clients, with xdsd's client limits as shipped and with them lifted, in one run.

``slow``: one raw HTTP/2 client opens an ADS stream, grants the server no window (so no
response can be sent) and sends ``--requests`` DiscoveryRequests of about 1 MB each.
Reported: how many requests the client got out before the stream ended, how it ended,
and the daemon's resident memory before, right after, and once the client is gone.

``reset``: one raw HTTP/2 client opens and resets ``--resets`` streams in a loop (the
rapid-reset attack). Reported: how many resets it got out before the connection was
closed, and the daemon's CPU seconds spent meanwhile.

Each runs against two daemons serving the same one-service directory: ``bounded`` (the
default settings: ``max_queued_requests = 16``, ``max_stream_resets_per_second = 50``)
and ``unbounded`` (both lifted: a million queued requests, no reset rate), which is what
xdsd did before these limits existed. Both use the grpclib server (grpcio's core applies
its own defences). A well-behaved ADS client stays connected throughout; the table says
whether it was still served afterwards.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2

from tests.e2e.hostile.h2_hostile import rapid_reset, slow_reader
from tests.e2e.hostile.test_client_limits import Daemon
from tests.xds_clients import make_node

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
MODES = {
    "bounded": "",
    "unbounded": "max_queued_requests = 1000000\nmax_stream_resets_per_second = 0.0\n",
}


def _big_request() -> bytes:
    """A DiscoveryRequest of about 1 MB (10,000 long resource names)."""
    return discovery_pb2.DiscoveryRequest(
        node=make_node("slow", "client"),
        type_url=CDS,
        resource_names=[f"name-{i:06d}-" + "x" * 90 for i in range(10_000)],
    ).SerializeToString()


def _settle_rss(daemon: Daemon, seconds: float = 2.0) -> int:
    """The daemon's RSS once it stopped changing for a moment (or after ``seconds``)."""
    deadline = time.monotonic() + seconds
    last = daemon.rss()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = daemon.rss()
        if now == last:
            return now
        last = now
    return last


def run_slow(daemon: Daemon, requests: int) -> dict[str, Any]:
    big = _big_request()
    before = daemon.rss()
    outcome = slow_reader(daemon.xdsd.grpc_port, big, requests, linger=3.0)
    during = daemon.rss()
    after = _settle_rss(daemon)
    return {
        "sent": outcome.sent,
        "request_bytes": len(big),
        "ended": f"grpc-status {outcome.grpc_status}"
        if outcome.grpc_status
        else "reset"
        if outcome.reset
        else "closed"
        if outcome.closed
        else "not ended",
        "rss_before_mib": before / 1024,
        "rss_during_mib": during / 1024,
        "rss_after_mib": after / 1024,
    }


def run_reset(daemon: Daemon, resets: int) -> dict[str, Any]:
    cpu = daemon.cpu()
    started = time.perf_counter()
    outcome = rapid_reset(daemon.xdsd.grpc_port, resets, linger=3.0)
    return {
        "sent": outcome.sent,
        "ended": "GOAWAY"
        if outcome.goaway is not None
        else "closed"
        if outcome.closed
        else "not ended",
        "daemon_cpu_s": daemon.cpu() - cpu,
        "wall_s": time.perf_counter() - started,
    }


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench hostile", description=__doc__)
    parser.add_argument("--requests", type=int, default=150, help="~1 MB requests (slow)")
    parser.add_argument("--resets", type=int, default=20_000, help="streams reset (reset)")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    for mode, settings in MODES.items():
        with tempfile.TemporaryDirectory(prefix=f"xdsd-hostile-{mode}-") as tmp:
            daemon = Daemon(Path(tmp), settings)
            try:
                slow = run_slow(daemon, args.requests)
                reset = run_reset(daemon, args.resets)
                daemon.still_serves("after")
                served = True
            except AssertionError:
                served = False
            finally:
                daemon.stop()
        results[mode] = {"slow": slow, "reset": reset, "good_client_served": served}
    print(f"slow reader: {args.requests} requests of ~1 MB, no window granted")
    print(f"{'mode':10} {'sent':>5} {'ended':>16} {'RSS before':>11} {'during':>8} {'after':>8}")
    for mode, r in results.items():
        s = r["slow"]
        print(
            f"{mode:10} {s['sent']:>5} {s['ended']:>16} {s['rss_before_mib']:>9.1f}MB "
            f"{s['rss_during_mib']:>6.1f}MB {s['rss_after_mib']:>6.1f}MB"
        )
    print(f"\nrapid reset: {args.resets} streams opened and reset on one connection")
    print(
        f"{'mode':10} {'sent':>6} {'ended':>10} {'daemon CPU':>11} {'wall':>7} {'good client':>12}"
    )
    for mode, r in results.items():
        x = r["reset"]
        served = "served" if r["good_client_served"] else "NOT served"
        print(
            f"{mode:10} {x['sent']:>6} {x['ended']:>10} {x['daemon_cpu_s']:>10.2f}s "
            f"{x['wall_s']:>6.2f}s {served:>12}"
        )
    b, u = results["bounded"], results["unbounded"]
    growth_b = b["slow"]["rss_during_mib"] - b["slow"]["rss_before_mib"]
    growth_u = u["slow"]["rss_during_mib"] - u["slow"]["rss_before_mib"]
    print(
        f"\nRSS growth under the slow reader: bounded {growth_b:.1f} MB, unbounded "
        f"{growth_u:.1f} MB; reset CPU bounded/unbounded "
        f"{b['reset']['daemon_cpu_s'] / max(u['reset']['daemon_cpu_s'], 0.01):.2f}"
    )
    return results
