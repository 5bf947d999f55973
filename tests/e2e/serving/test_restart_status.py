"""Status after a restart (issue 14 #13): a real Envoy connected to xdsd (ADS SotW, delta,
REST polling), xdsd killed with SIGKILL and started again on the same ports; Envoy
reconnects holding exactly what it would be sent, so nothing is sent — and what it holds
counts as acknowledged: ``/debug/clients`` shows every type in sync, ``xdsd status``
SYNCED, and no client is pending in ``/metrics``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.mesh import EchoMesh
from tests.harness import Xdsd, wait_until

#: How ``xdsd status`` names the types.
TYPE_NAMES = ("CDS", "EDS", "LDS", "RDS", "clusters", "endpoints", "listeners", "routes")


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[EchoMesh]:
    m = EchoMesh(tmp_path)
    try:
        yield m
    finally:
        m.stop()


def _types(xdsd: Xdsd, node: str) -> dict[str, str]:
    """The sync state of each type of ``node``'s connected clients (empty: none)."""
    out: dict[str, str] = {}
    for client in xdsd.admin(f"/debug/clients?node={node}"):
        if client["connected"]:
            out.update({t: s["state"] for t, s in client["types"].items()})
    return out


def _pending(xdsd: Xdsd) -> float:
    url = f"http://127.0.0.1:{xdsd.admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    found = re.findall(r'^xdsd_client_sync\{state="pending",type="\w+"\} (\S+)$', text, re.M)
    found += re.findall(r'^xdsd_client_sync\{type="\w+",state="pending"\} (\S+)$', text, re.M)
    return sum(float(n) for n in found)


def _status(xdsd: Xdsd) -> Any:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "xdsd.cli",
            "status",
            "--admin",
            f"127.0.0.1:{xdsd.admin_port}",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("transport", ["grpc", "delta", "rest"])
def test_after_a_sigkill_and_restart_every_type_is_in_sync(mesh: EchoMesh, transport: str) -> None:
    first = mesh.start_xdsd()
    envoy = mesh.start_envoy(transport)
    mesh.wait_for("v1")
    node = f"client-{transport}"
    expected = {"clusters", "endpoints", "listeners", "routes"}

    def synced(xdsd: Xdsd) -> bool:
        types = _types(xdsd, node)
        return expected <= set(types) and all(s == "in_sync" for s in types.values())

    wait_until(lambda: synced(first), what="every type in sync before the restart")
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    first.stop()
    ports = (first.grpc_port, first.rest_port, first.admin_port)
    second = mesh.xdsd = Xdsd(mesh.config, mesh.root, ports=ports)
    wait_until(lambda: synced(second), timeout=60, what="every type in sync after the restart")
    wait_until(lambda: _pending(second) == 0, what="no pending client in /metrics")
    proxies = [p for p in _status(second)["proxies"] if p["node_id"] == node]
    states = {t: s["state"] for p in proxies for t, s in p["types"].items() if t in TYPE_NAMES}
    assert set(states.values()) == {"SYNCED"} and len(states) >= 4, proxies
    assert envoy.alive()
    mesh.wait_for("v1")  # still routed
