"""Behaviour of the first VirtualService fields, proven by real requests through a real
Envoy sidecar configured by xdsd (one mesh for the module; each test its own host)."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.traffic_mesh import Sidecar, TrafficMesh

RULES = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: paths}
spec:
  hosts: [paths]
  http:
  - match: [{uri: {exact: /exact}}]
    route: [{destination: {host: paths, subset: a}}]
  - match: [{uri: {prefix: /api/}}, {headers: {x-team: {regex: "blue|green"}}}]
    route: [{destination: {host: paths, subset: b}}]
  - route: [{destination: {host: paths, subset: c}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: paths}
spec:
  host: paths
  subsets:
  - {name: a, labels: {version: a}}
  - {name: b, labels: {version: b}}
  - {name: c, labels: {version: c}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: split}
spec:
  hosts: [split]
  http:
  - route:
    - {destination: {host: split, subset: a}, weight: 3}
    - {destination: {host: split, subset: b}, weight: 1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: split}
spec:
  host: split
  subsets:
  - {name: a, labels: {version: a}}
  - {name: b, labels: {version: b}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: slow}
spec:
  hosts: [slow]
  http:
  - timeout: 0.5s
    route: [{destination: {host: slow}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: flaky}
spec:
  hosts: [flaky]
  http:
  - retries: {attempts: 3, perTryTimeout: 2s, retryOn: 5xx}
    route: [{destination: {host: flaky}}]
"""


class WebSocketEcho:
    """A server that accepts an HTTP/1.1 ``Upgrade: websocket`` request with 101 and then
    echoes raw bytes (framing is the endpoints' business; Envoy just relays them)."""

    def __init__(self, host: str, port: int) -> None:
        self.labels: dict[str, str] = {}
        self.locality = ""

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = self.request.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                head, _, rest = data.partition(b"\r\n\r\n")
                if b"upgrade: websocket" not in head.lower():
                    self.request.sendall(
                        b"HTTP/1.1 426 Upgrade Required\r\ncontent-length: 0\r\n\r\n"
                    )
                    return
                self.request.sendall(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\n\r\n"
                )
                if rest:
                    self.request.sendall(rest)
                while chunk := self.request.recv(4096):
                    self.request.sendall(chunk)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.server = Server((host, port), Handler)
        self.host, self.port = host, port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Mesh:
    def __init__(self, tmp: Path) -> None:
        self.mesh = TrafficMesh(tmp)
        m = self.mesh
        self.paths = {v: m.upstream(f"paths-{v}", version=v) for v in "abc"}
        self.split = {v: m.upstream(f"split-{v}", version=v) for v in "ab"}
        self.slow = m.upstream("slow")
        self.flaky = m.upstream("flaky")
        m.service("paths", self.paths.values())
        m.service("split", self.split.values())
        m.service("slow", [self.slow])
        m.service("flaky", [self.flaky])
        self.ws = WebSocketEcho(m.ip(), m.port)
        m._things.append(self.ws)  # stopped with the mesh
        m.service("ws", [self.ws])  # type: ignore[list-item]
        m.rule("rules", RULES)
        self.client: Sidecar = m.start()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    w = Mesh(tmp_path_factory.mktemp("rules-basic"))
    try:
        yield w
    finally:
        w.mesh.stop()


def backend(client: Sidecar, host: str, path: str = "/", **headers: str) -> str:
    reply = client.request(host, path, headers=headers)
    assert reply.status == 200, (reply.status, reply.body[:200])
    return reply.backend


def test_uri_exact_prefix_and_header_regex_match(world: Mesh) -> None:
    """VirtualService http[].match[].uri exact/prefix, headers regex; matches ORed, rules
    in order, a rule without match as the default."""
    c = world.client
    c.wait_for(lambda: backend(c, "paths", "/exact") == "paths-a", "routes to be served")
    assert backend(c, "paths", "/exact/no") == "paths-c"  # exact is exact
    assert backend(c, "paths", "/api/x") == "paths-b"
    assert backend(c, "paths", "/api") == "paths-c"  # prefix /api/ does not match /api
    assert backend(c, "paths", "/other", **{"x-team": "green"}) == "paths-b"
    assert backend(c, "paths", "/other", **{"x-team": "greenish"}) == "paths-c"  # full match
    seen = world.paths["b"].seen[-1]
    assert seen.path == "/other" and seen.headers["x-team"] == "green"


def test_relative_weights_split_traffic(world: Mesh) -> None:
    """http[].route[].weight is relative: 3 and 1 send 75 % and 25 %."""
    c = world.client
    c.wait_for(lambda: backend(c, "split") in ("split-a", "split-b"), "split to be served")
    counts = Counter(backend(c, "split") for _ in range(400))
    # 300 expected on a: binomial sd 8.7; ±45 is over 5 sd
    assert 255 <= counts["split-a"] <= 345, counts
    assert counts["split-a"] + counts["split-b"] == 400


def test_timeout_gives_504(world: Mesh) -> None:
    """http[].timeout: an upstream slower than 0.5 s gets the caller a 504."""
    c = world.client
    c.wait_for(lambda: c.request("slow").status == 200, "slow to be served")
    assert c.request("slow", headers={"x-echo-delay-ms": "100"}).status == 200
    reply = c.request("slow", headers={"x-echo-delay-ms": "1500"})
    assert reply.status == 504 and reply.backend == "", reply


def test_retries_hide_a_flaky_upstream(world: Mesh) -> None:
    """http[].retries attempts/retryOn 5xx: two failures then success look like success."""
    c = world.client
    c.wait_for(lambda: c.request("flaky").status == 200, "flaky to be served")
    before = world.flaky.hits
    world.flaky.fail_next = 2
    reply = c.request("flaky")
    assert reply.status == 200 and reply.backend == "flaky"
    assert world.flaky.hits - before == 3  # two 503s retried, then the 200
    world.flaky.fail_next = 10  # more failures than attempts: the caller sees the 503
    assert c.request("flaky").status == 503
    world.flaky.reset()


def test_websocket_upgrade_passes_through_the_sidecar(world: Mesh) -> None:
    """Every HTTP listener lets requests upgrade to WebSocket (Istio's upgrade_configs;
    the obsolete http[].websocketUpgrade is accepted as a no-op): the 101 comes back and
    bytes then flow both ways through Envoy."""
    c = world.client

    def upgrade() -> bytes:
        with socket.create_connection((c.outbound_ip, world.mesh.port), timeout=5) as s:
            s.sendall(
                b"GET /chat HTTP/1.1\r\nHost: ws\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"
            )
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = s.recv(4096)
                if not chunk:
                    break
                head += chunk
            if not head.startswith(b"HTTP/1.1 101"):
                return head
            s.sendall(b"\x81\x05hello")
            return head + b"|" + s.recv(4096)

    c.wait_for(lambda: upgrade().startswith(b"HTTP/1.1 101"), "the upgrade to be served")
    reply = upgrade()
    assert reply.split(b"|", 1)[1] == b"\x81\x05hello", reply
