"""A real proxyless gRPC client (grpcio, ``xds:///`` target) configured by xdsd reaches a
gRPC backend, and follows a change of the route's weights."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from tests.harness import Xdsd, free_port, loopback_block, wait_until, write_atomically


def _backend(name: str, host: str, port: int) -> grpc.Server:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "test.Echo", {"Who": grpc.unary_unary_rpc_method_handler(lambda req, ctx: name.encode())}
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server


def _rules(weights: dict[str, int]) -> str:
    routes = "".join(
        f"    - destination: {{host: greeter, subset: {s}}}\n      weight: {w}\n"
        for s, w in weights.items()
    )
    return (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: greeter}\n"
        "spec:\n  host: greeter\n  subsets:\n  - {name: v1, labels: {version: v1}}\n"
        "  - {name: v2, labels: {version: v2}}\n---\n"
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: greeter}\n"
        "spec:\n  hosts: [greeter]\n  http:\n  - route:\n" + routes
    )


class GreeterMesh:
    """Two gRPC backends of service ``greeter`` (subsets v1, v2), xdsd, and a proxyless
    client (``grpc_client.py``) run by a given Python, printing who answers each call."""

    def __init__(self, tmp_path: Path) -> None:
        block = loopback_block()
        g1, g2 = f"{block}.51", f"{block}.52"
        self.tmp_path = tmp_path
        self.port = port = free_port(g1)
        config = tmp_path / "config"
        config.mkdir()
        (config / "greeter.toml").write_text(
            f'kind = "Service"\nname = "greeter"\n[[ports]]\nname = "grpc"\nnumber = {port}\n'
            f'protocol = "GRPC"\n[[endpoints]]\naddress = "{g1}"\nlabels = {{ version = "v1" }}\n'
            f'[[endpoints]]\naddress = "{g2}"\nlabels = {{ version = "v2" }}\n'
        )
        self.rules = config / "greeter-rules.yaml"
        self.route({"v1": 100})
        self.servers = [_backend("v1", g1, port), _backend("v2", g2, port)]
        self.xdsd = Xdsd(config, tmp_path)
        self.client: subprocess.Popen[str] | None = None
        self.seen: queue.Queue[str] = queue.Queue()

    def route(self, weights: dict[str, int]) -> None:
        write_atomically(self.rules, _rules(weights))

    def start_client(
        self, python: str = sys.executable, edit: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        """Run the client with ``python``, its bootstrap from ``xdsd bootstrap --format
        grpc`` (changed by ``edit`` first, when given)."""
        boot = subprocess.run(
            [
                sys.executable,
                "-m",
                "xdsd.cli",
                "bootstrap",
                "--service",
                "caller",
                "--format",
                "grpc",
                "--xds",
                f"127.0.0.1:{self.xdsd.grpc_port}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        doc = json.loads(boot.stdout)
        if edit is not None:
            edit(doc)
        path = self.tmp_path / "bootstrap.json"
        path.write_text(json.dumps(doc))
        env = {**os.environ, "GRPC_XDS_BOOTSTRAP": str(path)}
        self.client = client = subprocess.Popen(
            [python, str(Path(__file__).parents[1] / "grpc_client.py"), f"greeter:{self.port}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        threading.Thread(
            target=lambda: [self.seen.put(line.strip()) for line in client.stdout or []],
            daemon=True,
        ).start()

    def recent(self, n: int) -> Counter[str]:
        """Who answered the next ``n`` calls."""
        got: Counter[str] = Counter()
        for _ in range(n):
            got[self.seen.get(timeout=30)] += 1
        return got

    def wait_for(self, expected: Callable[[Counter[str]], bool], n: int, what: str) -> None:
        wait_until(lambda: expected(self.recent(n)), timeout=60, what=what)

    def nacks(self) -> list[Any]:
        return [
            c
            for c in self.xdsd.admin("/debug/clients")
            if any(t["nack"] for t in c["types"].values())
        ]

    def stop(self) -> None:
        if self.client is not None:
            self.client.kill()
            self.client.wait()
        self.xdsd.stop()
        for s in self.servers:
            s.stop(None)


@contextlib.contextmanager
def greeter_mesh(tmp_path: Path) -> Iterator[GreeterMesh]:
    mesh = GreeterMesh(tmp_path)
    try:
        yield mesh
    finally:
        mesh.stop()


def test_proxyless_grpc_follows_route_weights(tmp_path: Path) -> None:
    with greeter_mesh(tmp_path) as mesh:
        mesh.start_client()
        mesh.wait_for(lambda c: c == Counter({"v1": 10}), 10, "calls to v1")
        mesh.route({"v2": 100})
        mesh.wait_for(lambda c: c == Counter({"v2": 10}), 10, "calls to v2")
        mesh.route({"v1": 50, "v2": 50})
        mesh.wait_for(lambda c: set(c) == {"v1", "v2"}, 20, "a split")
        assert mesh.nacks() == []
