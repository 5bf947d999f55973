"""Mesh-wide proxy defaults with a real xdsd and a real Envoy sidecar: access log lines in
the file the settings name, Envoy's statistics in Prometheus text on the stats port,
spans at a collector, unknown hosts blocked by a REGISTRY_ONLY default, and a settings
edit reaching the connected proxy on SIGHUP. (One mesh for the module; the SIGHUP test
changes the settings, so it runs last.)"""

from __future__ import annotations

import http.server
import json
import signal
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.traffic_mesh import Sidecar, TrafficMesh
from tests.harness import wait_until

SETTINGS = """\
[mesh]
outbound_traffic_policy = "REGISTRY_ONLY"

[mesh.access_log]
path = "{log}"

[mesh.prometheus]
enabled = true

[mesh.tracing]
provider = "zipkin"
address = "{collector}"
sampling = 100
"""


class ZipkinCollector:
    """A Zipkin collector on ``host``: keeps the spans POSTed to ``/api/v2/spans`` (JSON
    arrays, with a Content-Length or chunked, as Envoy sends them)."""

    def __init__(self, host: str) -> None:
        self.spans: list[Any] = []
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = b""
                    while size := int(self.rfile.readline().split(b";")[0].strip(), 16):
                        body += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                else:
                    body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/api/v2/spans":
                    collector.spans.extend(json.loads(body))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.host, self.port = host, int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class World:
    def __init__(
        self,
        mesh: TrafficMesh,
        client: Sidecar,
        collector: ZipkinCollector,
        settings: Path,
        log: Path,
    ) -> None:
        self.mesh, self.client, self.collector = mesh, client, collector
        self.settings, self.log = settings, log


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("mesh-defaults")
    with TrafficMesh(root) as mesh:
        echo = mesh.upstream("echo")
        mesh.service("echo", [echo])
        collector = ZipkinCollector(mesh.ip())
        log = root / "access.log"
        settings = root / "xdsd.toml"
        settings.write_text(
            SETTINGS.format(log=log, collector=f"{collector.host}:{collector.port}")
        )
        mesh.xdsd_args = ["--settings", str(settings)]
        try:
            client = mesh.start()
            yield World(mesh, client, collector, settings, log)
        finally:
            collector.stop()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def test_access_log_lines_in_the_settings_file(world: World) -> None:
    reply = world.client.request("echo", "/logged-path")
    assert reply.status == 200 and reply.backend == "echo"

    def logged() -> list[str]:
        text = world.log.read_text() if world.log.exists() else ""
        return [line for line in text.splitlines() if "/logged-path" in line]

    lines = wait_until(logged, what="an access log line for /logged-path")
    # Envoy logs the request on the outbound listener (and the inbound of the callee,
    # which has no sidecar here): method, path, status and upstream cluster.
    assert any('"GET /logged-path HTTP/1.1" 200' in line for line in lines), lines
    assert any(
        "outbound|" in line and "echo.default.svc.cluster.local" in line for line in lines
    ), lines


def test_stats_port_answers_with_prometheus_text_and_nothing_else(world: World) -> None:
    base = f"http://{world.client.ip}:15090"
    status, text = get(f"{base}/stats/prometheus")
    assert status == 200
    assert "# TYPE envoy_" in text and "envoy_cluster_upstream_rq" in text
    # Only that path: the rest of Envoy's admin API is not reachable from outside.
    for path in ("/stats", "/quitquitquit", "/config_dump"):
        assert get(f"{base}{path}")[0] == 404, path
    assert world.client.envoy.alive()


def test_spans_reach_the_collector(world: World) -> None:
    assert world.client.request("echo", "/traced").status == 200

    def spans() -> list[Any]:
        return [s for s in list(world.collector.spans) if "/traced" in json.dumps(s)]

    found = wait_until(spans, timeout=60, what="a Zipkin span for /traced")
    # The sidecar's span names the service it runs for (node.cluster) and the request.
    assert any(s.get("localEndpoint", {}).get("serviceName") == "client" for s in found), found


def test_registry_only_default_blocks_an_unknown_host(world: World) -> None:
    blocked = world.client.request("unknown.example.com", "/")
    assert blocked.status == 502 and blocked.backend == ""
    assert world.client.request("echo", "/").status == 200


def test_settings_change_reaches_the_proxy_on_sighup(world: World) -> None:
    xdsd = world.mesh.xdsd
    assert xdsd is not None
    text = world.settings.read_text().replace('"REGISTRY_ONLY"', '"ALLOW_ANY"')
    world.settings.write_text(
        text.replace("[mesh.prometheus]\nenabled = true", "[mesh.prometheus]\nenabled = false")
    )
    xdsd.proc.send_signal(signal.SIGHUP)
    # ALLOW_ANY: no catch-all; xdsd has no passthrough, so an unknown host gets 404.
    wait_until(
        lambda: world.client.request("unknown.example.com", "/").status == 404,
        what="the REGISTRY_ONLY catch-all to go away",
    )

    def stats_gone() -> bool:
        try:
            get(f"http://{world.client.ip}:15090/stats/prometheus")
        except (urllib.error.URLError, ConnectionError, OSError):
            return True
        return False

    wait_until(stats_gone, what="the stats listener to be removed")
    # A broken settings file on SIGHUP is refused: the current defaults stay.
    world.settings.write_text("[mesh]\nbogus = 1\n")
    xdsd.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "mesh.bogus: unknown setting" in xdsd.log(), what="the refusal logged")
    assert world.client.request("echo", "/").status == 200
    assert xdsd.alive()
