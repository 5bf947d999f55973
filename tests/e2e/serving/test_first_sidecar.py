"""The README's "Point a proxy at it", as a newcomer follows it on a workstation: `xdsd
serve` on the example config, `xdsd bootstrap --config-dir config --service productpage
--instance-ip 127.x --output FILE`, a real Envoy from that file, then `xdsd status`. Only
the addresses differ from the README (a random loopback block and free ports, so that
tests running at the same time do not collide)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.harness import Envoy, Xdsd, free_port, loopback_block, running, wait_until
from tests.paths import EXAMPLE_CONFIG


def xdsd_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xdsd.cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_the_readme_first_sidecar_binds_its_listeners_and_syncs(tmp_path: Path) -> None:
    config = tmp_path / "config"
    shutil.copytree(EXAMPLE_CONFIG, config)
    block = loopback_block()
    server = Xdsd(config, tmp_path)
    envoy_admin = free_port()
    bootstrap = tmp_path / "productpage-envoy.yaml"
    made = xdsd_cli(
        "bootstrap",
        "--config-dir",
        str(config),
        "--service",
        "productpage",
        "--instance-ip",
        f"{block}.11",
        "--outbound-ip",
        f"{block}.1",
        "--xds",
        f"127.0.0.1:{server.grpc_port}",
        "--admin-port",
        str(envoy_admin),
        "--output",
        str(bootstrap),
    )
    assert made.returncode == 0 and made.stderr == "", made.stderr
    envoy = Envoy(bootstrap, envoy_admin, tmp_path)
    with running(server, envoy):
        envoy.ready()
        wait_until(
            lambda: (f"{block}.11", 9080) in envoy.listener_addresses(),
            what="the inbound listener on the instance address",
        )
        stats = envoy.stats()
        assert stats.get("listener_manager.lds.update_rejected", 0) == 0
        assert "cannot bind" not in envoy.log()

        def in_sync() -> subprocess.CompletedProcess[str] | None:
            done = xdsd_cli("status", "--admin", f"127.0.0.1:{server.admin_port}")
            return done if done.returncode == 0 and "productpage-sidecar" in done.stdout else None

        wait_until(in_sync, what="xdsd status to show the sidecar in sync")
