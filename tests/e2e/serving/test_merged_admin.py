"""The merged admin of ``xdsd serve --workers``: two real daemons on one config directory,
each with its admin on a unix socket and its own gRPC port, a real Envoy connected to
one and a gRPC ADS client to the other, and a ``MergedAdmin`` in front. The admin
address shows them as one daemon: /debug/clients lists both (each with its worker),
/metrics sums them, the status page and ``xdsd status --admin`` see both in sync, and
/readyz turns 503 naming the worker that stopped."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.mesh import EchoMesh
from tests.harness import Envoy, free_port, wait_until
from tests.xds_clients import AdsClient
from xdsd.app import Daemon
from xdsd.settings import Address, Settings
from xdsd.transports.connections import ConnectionGate, ConnectionLimits
from xdsd.workers.admin import UNUSABLE_HEADER, MergedAdmin

T = TypeVar("T")


class Workers:
    """Two ``Daemon``s with admin sockets and a ``MergedAdmin``, on one event loop in a
    thread of their own (the test's Envoy and clients are driven synchronously)."""

    def __init__(self, config: Path, root: Path) -> None:
        self.sockets = [str(root / "w0.sock"), str(root / "w1.sock")]
        self.grpc = [free_port(), free_port()]
        self.admin_port = free_port()
        settings = Settings(
            config_dir=str(config),
            grpc=Address("127.0.0.1", 0),
            rest=None,
            admin=Address("127.0.0.1", self.admin_port),
        )
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def build() -> tuple[list[Daemon], MergedAdmin]:
            daemons = []
            for port, path in zip(self.grpc, self.sockets, strict=True):
                s = settings.merged({"grpc": f"127.0.0.1:{port}"}, source="test")
                daemon = Daemon(s, admin_socket=path)
                await daemon.start()
                daemons.append(daemon)
            gate = ConnectionGate(ConnectionLimits.from_settings(settings))
            merged = MergedAdmin(settings, lambda: self.sockets, gate)
            await merged.start()
            return daemons, merged

        self.daemons, self.merged = self.run(build())

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)

    def stop_worker(self, n: int) -> None:
        self.run(self.daemons[n].shutdown(1.0))

    def stop(self) -> None:
        async def end() -> None:
            from xdsd.listeners import Deadline

            await self.merged.close(Deadline.after(1.0))
            for daemon in self.daemons:
                await daemon.shutdown(1.0)

        try:
            self.run(end())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)

    def get(self, path: str) -> tuple[int, dict[str, str], str]:
        url = f"http://127.0.0.1:{self.admin_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=15) as r:
                return r.status, dict(r.headers), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read().decode()

    def json(self, path: str) -> Any:
        status, _, body = self.get(path)
        assert status == 200, body
        return json.loads(body)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[EchoMesh, Workers]]:
    mesh = EchoMesh(tmp_path)
    workers = Workers(mesh.config, tmp_path)
    try:
        yield mesh, workers
    finally:
        workers.stop()
        mesh.stop()


def _envoy_on(mesh: EchoMesh, port: int) -> Envoy:
    """The mesh's client sidecar, a real Envoy, bootstrapped against gRPC ``port``."""
    admin_port = free_port()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "xdsd.cli",
            "bootstrap",
            "--service",
            "client",
            "--node-id",
            "envoy-on-0",
            "--instance-ip",
            mesh.client_ip,
            "--outbound-ip",
            mesh.outbound_ip,
            "--xds",
            f"127.0.0.1:{port}",
            "--admin-port",
            str(admin_port),
            "--no-dns",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    path = mesh.root / "envoy.yaml"
    path.write_text(proc.stdout)
    envoy = Envoy(path, admin_port, mesh.root)
    mesh.envoy = envoy
    envoy.ready()
    return envoy


def _in_sync(client: dict[str, Any]) -> bool:
    return bool(client["connected"]) and all(
        t["state"] == "in_sync" for t in client["types"].values()
    )


def test_the_merged_admin_shows_both_workers_as_one_daemon(
    world: tuple[EchoMesh, Workers],
) -> None:
    mesh, workers = world
    _envoy_on(mesh, workers.grpc[0])
    ads = AdsClient(workers.grpc[1], "ads-on-1", "sim")
    try:
        # real traffic through the Envoy that worker 0 configured
        mesh.wait_for("v1")

        def both() -> list[dict[str, Any]]:
            clients = workers.json("/debug/clients")
            found = {c["node_id"]: c for c in clients if _in_sync(c)}
            return [found[n] for n in ("envoy-on-0", "ads-on-1") if n in found]

        found = wait_until(lambda: len(both()) == 2 and both(), what="both clients in sync")
        assert [c["worker"] for c in found] == ["0", "1"]

        # /metrics: one exposition, the clients of both workers summed
        status, headers, text = workers.get("/metrics")
        assert status == 200 and UNUSABLE_HEADER not in headers
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }
        assert samples[("xdsd_connected_clients", (("transport", "ads"),))] == 2
        assert samples[("xdsd_worker_up", (("worker", "0"),))] == 1
        assert samples[("xdsd_worker_up", (("worker", "1"),))] == 1
        assert samples[("xdsd_config_loaded", ())] == 1
        sent = [v for (n, _), v in samples.items() if n == "xdsd_responses_total"]
        assert sum(sent) >= 5  # Envoy's four types and the ADS client's clusters

        # the status page, one daemon's, lists both proxies
        status, _, page = workers.get("/")
        assert status == 200
        assert "envoy-on-0" in page and "ads-on-1" in page and "2 proxies" in page

        # xdsd status against the merged admin: every proxy in sync (exit 0)
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "xdsd.cli",
                "status",
                "--admin",
                f"127.0.0.1:{workers.admin_port}",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stdout + cli.stderr
        assert {"envoy-on-0", "ads-on-1"} <= {
            p["node_id"] for p in json.loads(cli.stdout)["proxies"]
        }

        # one node's config dump comes from the worker holding it
        dump = workers.json("/debug/config_dump?node=ads-on-1")
        assert dump["worker"] == "1" and dump["node_id"] == "ads-on-1"
        assert workers.get("/debug/config_dump?node=nobody")[0] == 404
        assert workers.json("/readyz")["ready"] is True

        # worker 1 stops: /readyz 503 naming it; the views keep worker 0's
        ads.stop()
        workers.stop_worker(1)
        status, headers, body = workers.get("/readyz")
        assert status == 503 and json.loads(body)["not_ready"] == ["1"]
        status, headers, body = workers.get("/debug/clients")
        assert status == 200 and "worker 1" in headers[UNUSABLE_HEADER]
        assert {c["worker"] for c in json.loads(body)} == {"0"}
        status, _, page = workers.get("/")
        assert status == 200 and "&lt;worker 1&gt;" in page
        assert mesh.ask() == "v1"  # worker 0 still serves
    finally:
        ads.stop()
