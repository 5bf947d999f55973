"""Registered workloads end to end, with 1,000 registered already: a workload's connect to
a caller's first request reaching it, and registrations per second through the daemon.

``python -m bench workloads [--present 1000] [--burst 200] [--runs 15] [--store both]``
runs ``xdsd serve`` (the embedded store, then a real etcd: Debian's ``etcd-server``)
with two WorkloadGroups: ``other``, into which ``--present`` registrations are made
first and kept (grpcio ADS clients, one stream each, held open, each at its own
``instance_ip``, subscribed to a route configuration that does not exist: they cost the
registry, the store and the translation of every caller, not the push of every change
to 1,000 sidecars' own clusters, which real Envoys would add), and ``api``, which a real
caller Envoy (service ``client``) sends requests to in a loop. Then:

- **registrations per second**: ``--burst`` more grpcio streams into ``other`` opened at
  once, timed until the daemon's store holds them all (``xdsd_registrations_current``),
  with ``--present`` registered; the first fill (0 → ``--present``) is printed too;
- **connect → first request**: ``--runs`` times, a real Envoy sidecar of ``api``
  (``xdsd bootstrap --workload-group api``) starts; the time from its registration's
  ``since`` (the daemon's clock when its stream's first request admitted it) to the
  first of the caller's requests reaching the application behind it (that
  application's clock; one machine) — the EDS push, the caller's Envoy taking the
  endpoint, and its next request. Envoy's own start (process start → registration) is
  printed apart. Each run's workload is stopped and its registration expired (grace
  1 s) before the next, so the caller's cluster of ``api`` holds one endpoint at most.
  Median and p99 (of ``--runs``: with 15 runs, p99 is the slowest).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.server
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import struct_pb2

from tests.etcd import Etcd
from tests.harness import Envoy, Process, free_port, http_get, loopback_block, port_open, wait_until

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
STREAMS_PER_CHANNEL = 50

CONFIG = """\
kind = "Service"
name = "api"
[[ports]]
name = "http"
number = {port}
protocol = "HTTP"
targetPort = {target}
"""

CLIENT = """\
kind = "Service"
name = "client"
[[ports]]
name = "http"
number = {client_port}
protocol = "HTTP"
targetPort = {client_target}
[[endpoints]]
address = "{client_ip}"
"""

GROUPS = """\
kind: Service
name: other
ports: [{name: http, number: 8080, protocol: HTTP, targetPort: 9999}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: api}
spec:
  metadata: {labels: {app: api}}
  template: {serviceAccount: api}
---
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: other}
spec:
  metadata: {labels: {app: other}}
  template: {serviceAccount: other}
"""

SETTINGS = """\
max_streams_per_address = {streams}
max_connections_per_address = {streams}

[registry]
grace = 1
replica = "bench"
max_registrations = {streams}
"""

ETCD = """
[registry.etcd]
endpoints = ["{url}"]
prefix = "/bench-workloads"
lease_ttl = 10
timeout = 2
"""


class Recorder:
    """The application behind every api sidecar: remembers when the first request since
    ``reset`` arrived (``time.time()``)."""

    def __init__(self, port: int) -> None:
        self.first: float | None = None
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                if recorder.first is None:
                    recorder.first = time.time()
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a stopped sidecar's connections break: not news

        self.server = Server(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Streams:
    """grpcio ADS streams held open in a thread of their own: each a registration."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.channels: list[grpc.aio.Channel] = []
        self.calls: list[Any] = []
        self.refused: list[str] = []
        self._draining: set[asyncio.Future[None]] = set()

    def open(self, group: str, addresses: list[str]) -> None:
        """Open one stream per address (waits until each is sent, not answered)."""
        asyncio.run_coroutine_threadsafe(self._open(group, addresses), self.loop).result(120)

    async def _open(self, group: str, addresses: list[str]) -> None:
        for start in range(0, len(addresses), STREAMS_PER_CHANNEL):
            # a connection per channel (grpc shares one between channels otherwise, and
            # a connection carries at most 100 streams at once)
            channel = grpc.aio.insecure_channel(
                f"127.0.0.1:{self.port}", options=[("grpc.use_local_subchannel_pool", 1)]
            )
            self.channels.append(channel)
            for address in addresses[start : start + STREAMS_PER_CHANNEL]:
                call = channel.stream_stream(
                    ADS,
                    request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
                    response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
                )()
                metadata = struct_pb2.Struct()
                metadata.update({"instance_ip": address, "workload_group": group})
                node = base_pb2.Node(
                    id=f"{group}-{address}",
                    cluster=group,
                    metadata=metadata,
                    user_agent_name="envoy",
                )
                # a route configuration that does not exist: registered, sent nothing
                request = discovery_pb2.DiscoveryRequest(
                    node=node, type_url=RDS, resource_names=["bench-nothing"]
                )
                await call.write(request)
                self.calls.append(call)
                task = asyncio.ensure_future(self._drain(call))
                self._draining.add(task)
                task.add_done_callback(self._draining.discard)

    async def _drain(self, call: Any) -> None:
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                self.refused.append(f"{e.code().name}: {e.details()}")

    def close(self) -> None:
        async def closing() -> None:
            for call in self.calls:
                call.cancel()
            for channel in self.channels:
                await channel.close()

        asyncio.run_coroutine_threadsafe(closing(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class World:
    """xdsd (and etcd), the caller Envoy and its request loop, the application."""

    def __init__(self, root: Path, store: str, capacity: int) -> None:
        self.root = root
        self.block = loopback_block()
        self.client_ip, self.outbound_ip = f"{self.block}.2", f"{self.block}.3"
        self.port = free_port(self.client_ip)
        target = free_port()
        config = root / "config"
        config.mkdir()
        (config / "api.toml").write_text(CONFIG.format(port=self.port, target=target))
        (config / "client.toml").write_text(
            CLIENT.format(
                client_port=free_port(self.client_ip),
                client_target=free_port(),
                client_ip=self.client_ip,
            )
        )
        (config / "groups.yaml").write_text(GROUPS)
        settings = SETTINGS.format(streams=capacity)
        self.etcd: Etcd | None = None
        if store == "etcd":
            binary = shutil.which("etcd")
            assert binary is not None
            self.etcd = Etcd(root, binary)
            settings += ETCD.format(url=self.etcd.url)
        (root / "settings.toml").write_text(settings)
        self.grpc_port, self.admin_port = free_port(), free_port()
        argv = [sys.executable, "-m", "xdsd.cli", "--log-level", "warning", "serve"]
        argv += ["--config-dir", str(config), "--settings", str(root / "settings.toml")]
        argv += ["--grpc", f"127.0.0.1:{self.grpc_port}", "--rest", f"127.0.0.1:{free_port()}"]
        argv += ["--admin", f"127.0.0.1:{self.admin_port}"]
        self.xdsd = Process(argv, root / "xdsd.log")
        wait_until(lambda: port_open("127.0.0.1", self.grpc_port), what="xdsd to listen")
        wait_until(self._ready, what="xdsd to load the configuration")
        self.app = Recorder(target)
        self.streams = Streams(self.grpc_port)
        self.envoys: list[Envoy] = []
        self.caller = self.envoy(
            "caller", ["--service", "client", "--instance-ip", self.client_ip], self.outbound_ip
        )
        self.caller.ready()
        self._stop = threading.Event()
        self.last_status = 0
        self._asking = threading.Thread(target=self._ask, daemon=True)
        self._asking.start()

    def envoy(self, name: str, args: list[str], outbound: str) -> Envoy:
        admin = free_port()
        done = subprocess.run(
            [
                *(sys.executable, "-m", "xdsd.cli", "bootstrap", "--node-id", name),
                *("--xds", f"127.0.0.1:{self.grpc_port}", "--admin-port", str(admin)),
                *("--outbound-ip", outbound, *args),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        path = self.root / f"{name}.yaml"
        path.write_text(done.stdout)
        envoy = Envoy(path, admin, self.root)
        self.envoys.append(envoy)
        return envoy

    def _ask(self) -> None:
        while not self._stop.is_set():
            try:
                status, _, _ = http_get(self.outbound_ip, self.port, "/", {"Host": "api"}, 2)
            except Exception:  # refused, reset, cut short: the endpoint is going
                status = -1
                time.sleep(0.01)
            self.last_status = status

    def _ready(self) -> bool:
        if not self.xdsd.alive():
            raise RuntimeError(f"xdsd exited:\n{self.xdsd.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/readyz") as r:
                return r.status == 200
        except OSError:
            return False

    def admin(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=10) as r:
            return json.loads(r.read())

    def current(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("xdsd_registrations_current "):
                    return int(float(line.split()[1]))
        return 0

    def register(self, addresses: list[str]) -> float:
        """Seconds from opening a stream per address (group other) until the store holds
        them all."""
        want = self.current() + len(addresses)
        started = time.perf_counter()
        self.streams.open("other", addresses)

        def done() -> bool:
            if self.streams.refused:
                raise RuntimeError(f"refused: {self.streams.refused[:3]}")
            return self.current() >= want

        wait_until(done, timeout=300, interval=0.01, what="registered")
        return time.perf_counter() - started

    def join_once(self, n: int) -> tuple[float, float]:
        """(registration → first request reaching the workload, Envoy start →
        registration), seconds."""
        ip = f"{self.block}.{10 + n}"
        name = f"api-{n}"
        self.app.first = None
        started = time.time()
        envoy = self.envoy(
            name,
            ["--service", "api", "--workload-group", "api", "--instance-ip", ip],
            f"{self.block}.{100 + n}",
        )
        wait_until(lambda: self.app.first is not None, timeout=60, interval=0.005, what="reached")
        first = self.app.first
        assert first is not None
        since = next(
            r["since"]
            for r in self.admin("/debug/registrations")["registrations"]
            if r["node"] == name
        )
        envoy.stop()
        self.envoys.remove(envoy)
        wait_until(
            lambda: (
                name not in {r["node"] for r in self.admin("/debug/registrations")["registrations"]}
            ),
            timeout=30,
            what="the registration to expire",
        )
        wait_until(lambda: self.last_status == 503, timeout=30, what="the caller to lose it")
        return first - since, since - started

    def stop(self) -> None:
        self._stop.set()
        self._asking.join(5)
        for envoy in self.envoys:
            envoy.stop()
        with contextlib.suppress(Exception):
            self.streams.close()
        self.xdsd.stop()
        self.app.stop()
        if self.etcd is not None:
            self.etcd.stop()


@contextlib.contextmanager
def world(store: str, capacity: int) -> Iterator[World]:
    with tempfile.TemporaryDirectory() as tmp:
        w = World(Path(tmp), store, capacity)
        try:
            yield w
        finally:
            w.stop()


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def measure(store: str, present: int, burst: int, runs: int) -> dict[str, Any]:
    addresses = [f"10.{n // 65536 + 1}.{n // 256 % 256}.{n % 256}" for n in range(present + burst)]
    with world(store, present + burst + 100) as w:
        fill = w.register(addresses[:present])
        burst_seconds = w.register(addresses[present:])
        joins = [w.join_once(n) for n in range(runs)]
    reach = [j[0] for j in joins]
    start = [j[1] for j in joins]
    return {
        "fill_per_second": round(present / fill, 1),
        "burst_per_second": round(burst / burst_seconds, 1),
        "reach_median_ms": round(1000 * statistics.median(reach), 1),
        "reach_p99_ms": round(1000 * _p99(reach), 1),
        "reach_runs_ms": [round(1000 * r, 1) for r in reach],
        "envoy_start_median_ms": round(1000 * statistics.median(start), 1),
    }


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench workloads", description=__doc__)
    parser.add_argument("--present", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--store", choices=("memory", "etcd", "both"), default="both")
    args = parser.parse_args(argv)
    stores = ["memory", "etcd"] if args.store == "both" else [args.store]
    if "etcd" in stores and shutil.which("etcd") is None:
        print("etcd not installed (apt-get install etcd-server): the etcd figures are skipped")
        stores.remove("etcd")
    results: dict[str, Any] = {"present": args.present, "burst": args.burst, "runs": args.runs}
    for store in stores:
        results[store] = measure(store, args.present, args.burst, args.runs)
    print(
        f"{args.present} registered (grpcio ADS streams), then {args.burst} more at once; "
        f"{args.runs} real Envoy workloads joining one at a time, a real Envoy caller"
    )
    header = (
        f"{'store':7} {'fill /s':>8} {'burst /s':>9} {'reach median':>13} {'reach p99':>10}"
        f" {'envoy start':>12}"
    )
    print(header)
    for store in stores:
        r = results[store]
        print(
            f"{store:7} {r['fill_per_second']:8.0f} {r['burst_per_second']:9.0f}"
            f" {r['reach_median_ms']:10.0f} ms {r['reach_p99_ms']:7.0f} ms"
            f" {r['envoy_start_median_ms']:9.0f} ms"
        )
    return results
