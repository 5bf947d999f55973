"""Workloads that register themselves (WorkloadGroup auto-registration), with real Envoys
and real traffic: three sidecars of ``api`` join through a WorkloadGroup with no endpoint
in any file, a caller's requests spread over them; one is SIGKILLed and leaves after the
grace period, a new one joins and gets traffic, and the caller sees no failed request
beyond the one that may be in flight on the killed one. A sidecar naming another
service's group is refused."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import (
    Backend,
    Envoy,
    Xdsd,
    free_port,
    http_get,
    loopback_block,
    wait_until,
)

GRACE = 3  # seconds: [registry] grace

API = """\
kind = "Service"
name = "api"

[[ports]]
name = "http"
number = {port}
protocol = "HTTP"
targetPort = {target}
"""

CLIENT = """\
kind = "Service"
name = "client"

[[ports]]
name = "http"
number = {port}
protocol = "HTTP"
targetPort = {target}

[[endpoints]]
address = "{ip}"
"""

GROUPS = """\
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: api}
spec:
  metadata:
    labels: {app: api}
  template:
    serviceAccount: api
---
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: web}
spec:
  metadata:
    labels: {app: web}
  template: {}
"""


class Mesh:
    """xdsd, the application behind every api sidecar, the caller's sidecar."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.block = loopback_block()
        self.client_ip, self.outbound_ip = f"{self.block}.30", f"{self.block}.31"
        config = root / "config"
        config.mkdir()
        self.port = free_port(self.client_ip)
        self.target = free_port()
        (config / "api.toml").write_text(API.format(port=self.port, target=self.target))
        client_port = free_port(self.client_ip)
        (config / "client.toml").write_text(
            CLIENT.format(port=client_port, target=free_port(), ip=self.client_ip)
        )
        (config / "groups.yaml").write_text(GROUPS)
        settings = root / "xdsd.toml"
        settings.write_text(f"[registry]\ngrace = {GRACE}\n")
        # One application for every api sidecar (each forwards to 127.0.0.1:target);
        # which sidecar served a request is read from that sidecar's own stats.
        self.app = Backend("app", "127.0.0.1", self.target)
        self.xdsd = Xdsd(config, root, extra=["--settings", str(settings)])
        self.sidecars: dict[str, Envoy] = {}

    def sidecar(self, name: str, n: int, *, service: str = "api", group: str = "api") -> Envoy:
        """Start api sidecar ``name`` at ``BLOCK.1n`` registering into ``group``."""
        admin_port = free_port()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "xdsd.cli",
                "bootstrap",
                "--service",
                service,
                "--node-id",
                name,
                "--workload-group",
                group,
                "--instance-ip",
                f"{self.block}.{10 + n}",
                "--outbound-ip",
                f"{self.block}.{40 + n}",
                "--xds",
                f"127.0.0.1:{self.xdsd.grpc_port}",
                "--admin-port",
                str(admin_port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        path = self.root / f"{name}.yaml"
        path.write_text(proc.stdout)
        envoy = Envoy(path, admin_port, self.root)
        self.sidecars[name] = envoy
        return envoy

    def caller(self) -> Envoy:
        admin_port = free_port()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "xdsd.cli",
                "bootstrap",
                "--service",
                "client",
                "--node-id",
                "caller",
                "--instance-ip",
                self.client_ip,
                "--outbound-ip",
                self.outbound_ip,
                "--xds",
                f"127.0.0.1:{self.xdsd.grpc_port}",
                "--admin-port",
                str(admin_port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        path = self.root / "caller.yaml"
        path.write_text(proc.stdout)
        envoy = Envoy(path, admin_port, self.root)
        envoy.ready()
        self.sidecars["caller"] = envoy
        return envoy

    def ask(self) -> int:
        status, _, _ = http_get(self.outbound_ip, self.port, "/", {"Host": "api"})
        return status

    def registered(self) -> dict[str, dict[str, object]]:
        """The registrations xdsd holds, by node."""
        view = self.xdsd.admin("/debug/registrations")
        return {r["node"]: r for r in view["registrations"]}

    def served(self, name: str) -> int:
        """Requests sidecar ``name`` passed to the application."""
        stats = self.sidecars[name].stats()
        return stats.get(f"cluster.inbound|{self.port}||.upstream_rq_completed", 0)

    def metric(self, line_start: str) -> float:
        with __import__("urllib.request").request.urlopen(
            f"http://127.0.0.1:{self.xdsd.admin_port}/metrics", timeout=5
        ) as r:
            text = r.read().decode()
        for line in text.splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self) -> None:
        for envoy in self.sidecars.values():
            envoy.stop()
        self.xdsd.stop()
        self.app.stop()


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    m = Mesh(tmp_path)
    try:
        yield m
    finally:
        m.stop()


class Caller:
    """Requests in a loop from the caller's side, one at a time, counting outcomes."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Caller:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status = self.mesh.ask()
            except Exception as e:
                self.failures.append(repr(e))
                continue
            if status == 200:
                self.ok += 1
            else:
                self.failures.append(f"status {status}")


def test_registered_sidecars_serve_come_and_go(mesh: Mesh) -> None:
    for i, name in enumerate(("api-1", "api-2", "api-3"), start=1):
        mesh.sidecar(name, i)
    for envoy in mesh.sidecars.values():
        envoy.ready()
    wait_until(
        lambda: {"api-1", "api-2", "api-3"} <= set(mesh.registered()),
        what="three registrations",
    )
    view = mesh.registered()
    assert view["api-1"]["group"] == "api" and view["api-1"]["address"] == f"{mesh.block}.11"
    assert view["api-1"]["connected"] is True and view["api-1"]["health"] == "UNKNOWN"
    # seen in config_dump, the status page and `xdsd status`
    dump = mesh.xdsd.admin("/debug/config_dump?node=api-1")
    assert [r["address"] for r in dump["registrations"]] == [f"{mesh.block}.11"]
    page = __import__("urllib.request").request.urlopen(
        f"http://127.0.0.1:{mesh.xdsd.admin_port}/", timeout=5
    )
    assert "Registered workloads" in page.read().decode()
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "xdsd.cli",
            "status",
            "--admin",
            f"127.0.0.1:{mesh.xdsd.admin_port}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "registered workloads:" in shown.stdout, shown.stdout
    assert f"default/api {mesh.block}.12 node api-2 (connected" in shown.stdout, shown.stdout
    assert mesh.metric("xdsd_registrations_current") == 3
    mesh.caller()
    wait_until(lambda: mesh.ask() == 200, what="the caller to reach api")
    for _ in range(60):
        assert mesh.ask() == 200
    for name in ("api-1", "api-2", "api-3"):
        assert mesh.served(name) > 0, f"{name} got no request"

    with Caller(mesh) as caller:
        wait_until(lambda: caller.ok > 20, what="the caller to be under way")
        mesh.sidecars["api-1"].proc.kill()  # SIGKILL: no goodbye
        wait_until(lambda: "api-1" not in mesh.registered(), timeout=GRACE + 20, what="expiry")
        assert mesh.metric("xdsd_registration_expiries_total") >= 1
        # a new one joins and gets traffic
        mesh.sidecar("api-4", 4).ready()
        wait_until(lambda: "api-4" in mesh.registered(), what="api-4 registered")
        wait_until(lambda: mesh.served("api-4") > 5, what="api-4 to get traffic")
        seen = caller.ok
        wait_until(lambda: caller.ok > seen + 20, what="more requests")
    # one request may have been in flight on the killed sidecar; none other fails
    assert len(caller.failures) <= 1, caller.failures
    assert mesh.served("api-2") > 0 and mesh.served("api-3") > 0


def test_a_node_may_not_register_into_another_services_group(mesh: Mesh) -> None:
    envoy = mesh.sidecar("api-9", 9, group="web")
    wait_until(
        lambda: mesh.metric('xdsd_registrations_refused_total{reason="other_service"}') >= 1,
        what="the refusal",
    )
    assert "api-9" not in mesh.registered()
    assert "registers only into a group whose app label names its service" in mesh.xdsd.log()
    assert envoy.alive()
