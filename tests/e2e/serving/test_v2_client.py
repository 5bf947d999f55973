"""A real v2-API xDS client: grpcio 1.49.1 (the last with xDS v2), installed by this
test in its own virtual environment, with a bootstrap whose ``server_features`` lack
``xds_v3``, resolves an ``xds:///`` target through xdsd's v2 ADS service, reaches a
backend, and follows a change of the route's weights."""

from __future__ import annotations

import subprocess
import venv
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.serving.test_proxyless_grpc import greeter_mesh

OLD_GRPCIO = "grpcio==1.49.1"


@pytest.fixture(scope="module")
def old_python(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A virtual environment with grpcio 1.49.1 only; its python."""
    root = tmp_path_factory.mktemp("grpcio-1.49.1")
    venv.create(root, with_pip=True)
    python = root / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--only-binary=:all:", OLD_GRPCIO],
        check=True,
        timeout=600,
    )
    yield python


def test_v2_grpc_client_follows_route_weights(tmp_path: Path, old_python: Path) -> None:
    version = subprocess.run(
        [str(old_python), "-c", "import grpc; print(grpc.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert version == "1.49.1"

    def v2_bootstrap(doc: dict[str, Any]) -> None:
        for server in doc["xds_servers"]:  # a v2 client: no xds_v3
            server["server_features"] = [
                f for f in server.get("server_features", []) if f != "xds_v3"
            ]

    with greeter_mesh(tmp_path) as mesh:
        mesh.start_client(str(old_python), v2_bootstrap)
        mesh.wait_for(lambda c: c == Counter({"v1": 10}), 10, "calls to v1")
        clients = mesh.xdsd.admin("/debug/clients")
        assert [c["transport"] for c in clients] == ["ads-v2"], clients
        mesh.route({"v2": 100})
        mesh.wait_for(lambda c: c == Counter({"v2": 10}), 10, "calls to v2")
        assert mesh.nacks() == []
