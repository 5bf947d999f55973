"""A real proxyless gRPC client (grpcio, ``xds:///`` target) configured by xdsd reaches a
gRPC backend, and follows a change of the route's weights."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from collections import Counter
from concurrent import futures
from pathlib import Path

import grpc

from tests.e2e.mesh import write_atomically
from tests.harness import Xdsd, free_port, loopback_block, wait_until


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


def test_proxyless_grpc_follows_route_weights(tmp_path: Path) -> None:
    block = loopback_block()
    g1, g2 = f"{block}.51", f"{block}.52"
    port = free_port(g1)
    config = tmp_path / "config"
    config.mkdir()
    (config / "greeter.toml").write_text(
        f'kind = "Service"\nname = "greeter"\n[[ports]]\nname = "grpc"\nnumber = {port}\n'
        f'protocol = "GRPC"\n[[endpoints]]\naddress = "{g1}"\nlabels = {{ version = "v1" }}\n'
        f'[[endpoints]]\naddress = "{g2}"\nlabels = {{ version = "v2" }}\n'
    )
    rules = config / "greeter-rules.yaml"
    write_atomically(rules, _rules({"v1": 100}))
    servers = [_backend("v1", g1, port), _backend("v2", g2, port)]
    xdsd = Xdsd(config, tmp_path)
    client: subprocess.Popen[str] | None = None
    try:
        boot = subprocess.run(
            [sys.executable, "-m", "xdsd.cli", "bootstrap", "--service", "caller",
             "--format", "grpc", "--xds", f"127.0.0.1:{xdsd.grpc_port}"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        (tmp_path / "bootstrap.json").write_text(boot.stdout)
        env = {**os.environ, "GRPC_XDS_BOOTSTRAP": str(tmp_path / "bootstrap.json")}
        client = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("grpc_client.py")), f"greeter:{port}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )  # fmt: skip
        seen: queue.Queue[str] = queue.Queue()
        threading.Thread(
            target=lambda: [seen.put(line.strip()) for line in client.stdout or []], daemon=True
        ).start()

        def recent(n: int) -> Counter[str]:
            got: Counter[str] = Counter()
            for _ in range(n):
                got[seen.get(timeout=30)] += 1
            return got

        wait_until(lambda: recent(10) == Counter({"v1": 10}), timeout=60, what="calls to v1")
        write_atomically(rules, _rules({"v2": 100}))
        wait_until(lambda: recent(10) == Counter({"v2": 10}), timeout=60, what="calls to v2")
        write_atomically(rules, _rules({"v1": 50, "v2": 50}))
        wait_until(lambda: set(recent(20)) == {"v1", "v2"}, timeout=60, what="a split")
        errors = [c for c in xdsd.admin("/debug/clients") if any(
            t["nack"] for t in c["types"].values())]  # fmt: skip
        assert errors == []
    finally:
        if client is not None:
            client.kill()
            client.wait()
        xdsd.stop()
        for s in servers:
            s.stop(None)
