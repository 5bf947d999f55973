"""A real v2-API xDS client: grpcio 1.49.1 (the last with xDS v2), installed by this
test in its own virtual environment, with a bootstrap whose ``server_features`` lack
``xds_v3``, resolves an ``xds:///`` target through xdsd's v2 ADS service, reaches a
backend, and follows a change of the route's weights."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import venv
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.mesh import write_atomically
from tests.e2e.test_proxyless_grpc import _backend, _rules
from tests.harness import Xdsd, free_port, loopback_block, wait_until

OLD_GRPCIO = "grpcio==1.49.1"


@pytest.fixture(scope="module")
def old_python(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A virtual environment with grpcio 1.49.1 only; its python."""
    root = tmp_path_factory.mktemp("grpcio-1.49.1")
    venv.create(root, with_pip=True)
    python = root / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--only-binary=:all:", OLD_GRPCIO],
        check=True, timeout=600,
    )  # fmt: skip
    yield python


def test_v2_grpc_client_follows_route_weights(tmp_path: Path, old_python: Path) -> None:
    version = subprocess.run(
        [str(old_python), "-c", "import grpc; print(grpc.__version__)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert version == "1.49.1"
    block = loopback_block()
    g1, g2 = f"{block}.61", f"{block}.62"
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
        doc = json.loads(boot.stdout)
        for server in doc["xds_servers"]:  # a v2 client: no xds_v3
            server["server_features"] = [
                f for f in server.get("server_features", []) if f != "xds_v3"
            ]
        (tmp_path / "bootstrap.json").write_text(json.dumps(doc))
        env = {**os.environ, "GRPC_XDS_BOOTSTRAP": str(tmp_path / "bootstrap.json")}
        script = Path(__file__).with_name("grpc_client.py")
        client = subprocess.Popen(
            [str(old_python), str(script), f"greeter:{port}"],
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
        clients = xdsd.admin("/debug/clients")
        assert [c["transport"] for c in clients] == ["ads-v2"], clients
        write_atomically(rules, _rules({"v2": 100}))
        wait_until(lambda: recent(10) == Counter({"v2": 10}), timeout=60, what="calls to v2")
        nacks = [c for c in xdsd.admin("/debug/clients") if any(
            t["nack"] for t in c["types"].values())]  # fmt: skip
        assert nacks == []
    finally:
        if client is not None:
            client.kill()
            client.wait()
        xdsd.stop()
        for s in servers:
            s.stop(None)
