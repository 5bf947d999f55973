"""Every sidecar of the example mesh: ``render --static`` starts a real Envoy that reaches
LIVE with all its listeners bound."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import Envoy, free_port, loopback_block, port_open, running, wait_until
from tests.paths import EXAMPLE_CONFIG

SIDECARS = [
    ("productpage", "v1"),
    ("details", "v1"),
    ("reviews", "v1"),
    ("reviews", "v2"),
    ("reviews", "v3"),
    ("ratings", "v1"),
]


def render(*args: str) -> dict:  # type: ignore[type-arg]
    proc = subprocess.run(
        [sys.executable, "-m", "xdsd.cli", "render", "--config-dir", str(EXAMPLE_CONFIG), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize(("service", "version"), SIDECARS, ids=[f"{s}-{v}" for s, v in SIDECARS])
def test_static_config_goes_live_with_every_listener_bound(
    service: str, version: str, tmp_path: Path
) -> None:
    block = loopback_block()
    instance_ip, outbound_ip = f"{block}.1", f"{block}.2"
    admin_port = free_port()
    config = render(
        "--static",
        "--service",
        service,
        "--label",
        f"version={version}",
        "--label",
        f"app={service}",
        "--instance-ip",
        instance_ip,
        "--outbound-ip",
        outbound_ip,
        "--admin-port",
        str(admin_port),
    )
    listeners = config["static_resources"]["listeners"]
    expected = {
        (
            lst["address"]["socket_address"]["address"],
            lst["address"]["socket_address"]["port_value"],
        )
        for lst in listeners
    }
    # the sidecar's own inbound port, the per-port outbound listener, the HTTP proxy
    assert {(instance_ip, 9080), (outbound_ip, 9080), (outbound_ip, 15001)} <= expected
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(config))
    envoy = Envoy(path, admin_port, tmp_path)
    with running(envoy):
        envoy.ready()
        bound = wait_until(
            lambda: set(envoy.listener_addresses()) >= expected and envoy.listener_addresses(),
            what="every listener bound",
        )
        assert set(bound) == expected
        for host, port in expected:
            assert port_open(host, port), f"{host}:{port} does not accept connections"
