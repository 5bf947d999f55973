"""Two xdsd replicas sharing registrations through one real etcd, with real Envoys and
real traffic: the caller is connected to replica 1 and the api workloads to replica 2
(each bootstrap lists both, ``--xds`` in its own order), and the caller reaches them.
etcd stopped: both replicas keep serving (``/readyz`` 200 and ``degraded``, the metric
at 0), a workload that joins replica 2 meanwhile reaches replica 1 once etcd is back.
Replica 2 SIGKILLed: its workloads reconnect to replica 1 within the grace, traffic
continues and the caller never loses an endpoint. Replica 2 stopped gracefully (SIGTERM):
its registrations stay until the workloads register on replica 1, no flap. At the end
no lease is left."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.etcd import Etcd, etcd_binary
from tests.harness import Backend, Envoy, Xdsd, free_port, http_get, loopback_block, wait_until

GRACE = 6  # [registry] grace, seconds
TTL = 6  # [registry.etcd] lease_ttl

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

GROUP = """\
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: api}
spec:
  metadata:
    labels: {app: api}
  template:
    serviceAccount: api
"""

PROBE = """\
  probe:
    httpGet: {{path: /ready, port: {port}}}
    periodSeconds: 1
    timeoutSeconds: 1
    failureThreshold: 1
    successThreshold: 1
"""

SETTINGS = """\
[registry]
grace = {grace}
replica = "{name}"

[registry.etcd]
endpoints = ["{url}"]
prefix = "/e2e"
lease_ttl = {ttl}
timeout = 1
"""


class Replicas:
    """etcd, two xdsd replicas on one config directory, the application behind every
    api sidecar, the sidecars."""

    def __init__(self, root: Path, binary: str, *, probe_port: int = 0) -> None:
        self.root = root
        self.etcd = Etcd(root, binary)
        self.block = loopback_block()
        self.client_ip, self.outbound_ip = f"{self.block}.30", f"{self.block}.31"
        config = root / "config"
        config.mkdir()
        self.port = free_port(self.client_ip)
        target = free_port()
        (config / "api.toml").write_text(API.format(port=self.port, target=target))
        (config / "client.toml").write_text(
            CLIENT.format(port=free_port(self.client_ip), target=free_port(), ip=self.client_ip)
        )
        probe = PROBE.format(port=probe_port) if probe_port else ""
        (config / "group.yaml").write_text(GROUP + probe)
        self.app = Backend("app", "127.0.0.1", target)
        self.xdsd: dict[str, Xdsd] = {}
        for name in ("r1", "r2"):
            settings = root / f"{name}.toml"
            settings.write_text(SETTINGS.format(grace=GRACE, name=name, url=self.etcd.url, ttl=TTL))
            self.xdsd[name] = Xdsd(config, root, extra=["--settings", str(settings)])
        self.sidecars: dict[str, Envoy] = {}

    def xds(self, *order: str) -> str:
        return ",".join(f"127.0.0.1:{self.xdsd[name].grpc_port}" for name in order)

    def start(self, name: str, args: list[str], xds: str) -> Envoy:
        admin_port = free_port()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "xdsd.cli",
                "bootstrap",
                "--node-id",
                name,
                "--xds",
                xds,
                "--admin-port",
                str(admin_port),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        path = self.root / f"{name}.yaml"
        path.write_text(done.stdout)
        envoy = Envoy(path, admin_port, self.root)
        self.sidecars[name] = envoy
        envoy.ready()
        return envoy

    def workload(self, name: str, n: int) -> Envoy:
        """An api sidecar at ``BLOCK.1n``, replica 2 first."""
        ip, outbound = f"{self.block}.{10 + n}", f"{self.block}.{40 + n}"
        args = ["--service", "api", "--workload-group", "api", "--instance-ip", ip]
        return self.start(name, [*args, "--outbound-ip", outbound], self.xds("r2", "r1"))

    def caller(self) -> Envoy:
        args = ["--service", "client", "--instance-ip", self.client_ip]
        return self.start("caller", [*args, "--outbound-ip", self.outbound_ip], self.xds("r1"))

    def ask(self) -> int:
        status, _, _ = http_get(self.outbound_ip, self.port, "/", {"Host": "api"}, timeout=3)
        return status

    def registered(self, replica: str) -> dict[str, dict[str, Any]]:
        view = self.xdsd[replica].admin("/debug/registrations")
        return {r["node"]: r for r in view["registrations"]}

    def status(self, replica: str) -> str:
        """``xdsd status`` against ``replica``."""
        admin = f"127.0.0.1:{self.xdsd[replica].admin_port}"
        done = subprocess.run(
            [sys.executable, "-m", "xdsd.cli", "status", "--admin", admin],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return done.stdout

    def page(self, replica: str) -> str:
        """The status page of ``replica``."""
        port = self.xdsd[replica].admin_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            return str(r.read().decode())

    def clients(self, replica: str) -> set[str]:
        clients = self.xdsd[replica].admin("/debug/clients")
        return {c["node_id"] for c in clients if c["connected"]}

    def readyz(self, replica: str) -> tuple[int, dict[str, Any]]:
        port = self.xdsd[replica].admin_port
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def metric(self, replica: str, name: str) -> float:
        port = self.xdsd[replica].admin_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no metric {name}")

    def served(self, name: str) -> int:
        stats = self.sidecars[name].stats()
        return stats.get(f"cluster.inbound|{self.port}||.upstream_rq_completed", 0)

    def caller_endpoints(self) -> int:
        """Healthy members of the caller's cluster of api."""
        pattern = re.compile(rf"cluster\.outbound\|{self.port}\|\|api[^:]*\.membership_healthy")
        stats = self.sidecars["caller"].stats()
        return sum(v for k, v in stats.items() if pattern.fullmatch(k))

    def stop(self) -> None:
        for envoy in self.sidecars.values():
            envoy.stop()
        for xdsd in self.xdsd.values():
            xdsd.stop()
        self.app.stop()
        self.etcd.stop()


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[Replicas]:
    binary = etcd_binary()
    if binary is None:
        pytest.skip("etcd not installed (apt-get install etcd-server; .ci/run does)")
    world = Replicas(tmp_path, binary)
    try:
        yield world
    finally:
        world.stop()


class Traffic:
    """The caller's requests in a loop, and the fewest api endpoints it held meanwhile."""

    def __init__(self, world: Replicas) -> None:
        self.world = world
        self.ok = 0
        self.failures: list[str] = []
        self.fewest: int | None = None
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._ask, daemon=True),
            threading.Thread(target=self._watch, daemon=True),
        ]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        wait_until(lambda: self.fewest is not None, what="the caller's endpoints")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _ask(self) -> None:
        while not self._stop.is_set():
            try:
                status = self.world.ask()
            except Exception as e:
                self.failures.append(repr(e))
                continue
            if status == 200:
                self.ok += 1
            else:
                self.failures.append(f"status {status}")

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            try:
                count = self.world.caller_endpoints()
            except Exception:
                continue
            self.fewest = count if self.fewest is None else min(self.fewest, count)

    def more(self, n: int = 20) -> None:
        seen = self.ok
        wait_until(lambda: self.ok >= seen + n, what=f"{n} more requests")


def test_replicas_share_registrations_fail_over_and_outlive_etcd(replicas: Replicas) -> None:
    world = replicas
    world.workload("api-1", 1)
    world.workload("api-2", 2)
    wait_until(lambda: {"api-1", "api-2"} <= world.clients("r2"), what="workloads on r2")
    # replica 1 sees replica 2's registrations through etcd
    wait_until(lambda: {"api-1", "api-2"} <= set(world.registered("r1")), what="r1 sees them")
    assert world.registered("r1")["api-1"]["replica"] == "r2"
    world.caller()
    assert world.clients("r1") == {"caller"}
    wait_until(lambda: world.ask() == 200, what="the caller to reach api through r1")
    for _ in range(30):
        assert world.ask() == 200
    assert world.served("api-1") > 0 and world.served("api-2") > 0

    # etcd stops: both keep serving, say so, and converge when it returns
    with Traffic(world) as traffic:
        traffic.more()
        world.etcd.stop()
        for name in ("r1", "r2"):
            wait_until(lambda n=name: "degraded" in world.readyz(n)[1], what=f"{name} degraded")
            status, body = world.readyz(name)
            assert status == 200 and body["ready"] is True
            assert "etcd unreachable since" in body["degraded"]
            assert world.metric(name, "xdsd_registry_store_connected") == 0
        world.workload("api-3", 3)  # joins replica 2 while etcd is down
        wait_until(lambda: "api-3" in world.registered("r2"), what="r2 serves api-3")
        assert "api-3" not in world.registered("r1")
        traffic.more()
        world.etcd.start()
        for name in ("r1", "r2"):
            wait_until(lambda n=name: "degraded" not in world.readyz(n)[1], timeout=30)
            assert world.metric(name, "xdsd_registry_store_connected") == 1
        wait_until(lambda: "api-3" in world.registered("r1"), what="r1 learns of api-3")
        wait_until(lambda: world.served("api-3") > 3, what="the caller reaches api-3")
        traffic.more()
    assert traffic.failures == [], traffic.failures[:5]

    # replica 2 dies: its workloads reconnect to replica 1 within the grace
    with Traffic(world) as traffic:
        traffic.more()
        assert traffic.fewest == 3
        killed = time.monotonic()
        world.xdsd["r2"].proc.kill()
        names = {"api-1", "api-2", "api-3"}
        wait_until(lambda: names <= world.clients("r1"), timeout=GRACE, what="reconnected")
        reconnected = time.monotonic() - killed
        wait_until(
            lambda: all(r["replica"] == "r1" for r in world.registered("r1").values()),
            what="r1 holds them",
        )
        assert all(world.registered("r1")[n]["connected"] for n in names)
        traffic.more()
        before = {n: world.served(n) for n in names}
        wait_until(lambda: all(world.served(n) > before[n] for n in names), what="all serve")
        # beyond the dead replica's lease: nothing left to expire
        wait_until(lambda: len(world.etcd.leases()) == 1, timeout=TTL + 10, what="r2's lease")
        traffic.more()
    assert traffic.failures == [], traffic.failures[:5]
    assert traffic.fewest == 3, "the caller lost an endpoint during the failover"
    print(f"workloads reconnected to r1 {reconnected:.2f} s after r2 died")
    assert reconnected < GRACE
    assert len(world.registered("r1")) == 3

    # a graceful stop of the last replica: its registrations are handed to a lease of
    # the grace (nobody takes them over), its own lease is revoked; after the grace
    # nothing is left in etcd
    world.xdsd["r1"].stop()
    left = world.etcd.keys("/e2e/")
    assert len(left) == 3 and all(value["disconnected"] for value, _ in left.values())
    wait_until(lambda: world.etcd.leases() == set(), timeout=GRACE + 10, what="the lease")
    assert world.etcd.keys("/e2e/") == {}


def test_a_replica_stopped_gracefully_leaves_its_workloads_to_the_others(
    replicas: Replicas,
) -> None:
    """SIGTERM to replica 2, which holds the workloads: their registrations stay in etcd
    (handed to a lease of the grace) until replica 1 takes them over as they reconnect,
    so the caller (on replica 1) never loses an endpoint nor a request; afterwards no
    lease is left but replica 1's."""
    world = replicas
    names = {"api-1", "api-2"}
    world.workload("api-1", 1)
    world.workload("api-2", 2)
    wait_until(lambda: names <= world.clients("r2"), what="workloads on r2")
    wait_until(lambda: names <= set(world.registered("r1")), what="r1 sees them")
    world.caller()
    wait_until(lambda: world.ask() == 200, what="the caller to reach api through r1")
    # which replica holds each, as r1 shows it: xdsd status, the status page, config_dump
    shown = world.status("r1")
    assert "node api-1 (connected, registered" in shown and "held by replica r2)" in shown
    assert "<td>r2</td>" in world.page("r1")
    dump = world.xdsd["r2"].admin("/debug/config_dump?node=api-1")
    assert [r["replica"] for r in dump["registrations"]] == ["r2"]
    with Traffic(world) as traffic:
        traffic.more()
        assert traffic.fewest == 2
        stopped = time.monotonic()
        assert world.xdsd["r2"].stop() == 0  # SIGTERM: a graceful stop
        wait_until(lambda: names <= world.clients("r1"), timeout=GRACE, what="reconnected")
        moved = time.monotonic() - stopped
        wait_until(
            lambda: all(
                r["replica"] == "r1" and r["connected"] for r in world.registered("r1").values()
            ),
            what="r1 holds them",
        )
        before = {n: world.served(n) for n in names}
        wait_until(lambda: all(world.served(n) > before[n] for n in names), what="all serve")
        traffic.more()
    assert traffic.failures == [], traffic.failures[:5]
    assert traffic.fewest == 2, "the caller lost an endpoint when r2 stopped"
    print(f"workloads reconnected to r1 {moved:.2f} s after r2's SIGTERM")
    keys = world.etcd.keys("/e2e/registrations/")
    r1_lease = {lease for _, lease in keys.values()}
    assert len(keys) == 2 and len(r1_lease) == 1
    # r2's own lease was revoked once its keys were handed over; the handover lease
    # lapses after the grace: no lease is left but r1's
    wait_until(lambda: world.etcd.leases() == r1_lease, timeout=GRACE + 10, what="r2's leases")
    assert len(world.registered("r1")) == 2
    dump = world.xdsd["r1"].admin("/debug/config_dump?node=api-2")
    assert [r["replica"] for r in dump["registrations"]] == ["r1"]
    assert "held by replica r2" not in world.status("r1")


def test_a_failing_probe_takes_a_workload_out_of_every_callers_endpoints(
    tmp_path: Path,
) -> None:
    """The probe runs in replica 2 (which holds the workloads); its verdict reaches the
    caller on replica 1 through etcd: a workload whose probe fails gets no traffic, and
    gets it back when the probe passes again."""
    binary = etcd_binary()
    if binary is None:
        pytest.skip("etcd not installed (apt-get install etcd-server; .ci/run does)")
    probe_port = free_port()
    world = Replicas(tmp_path, binary, probe_port=probe_port)
    health: dict[str, Backend] = {}
    try:
        for n, name in ((1, "api-1"), (2, "api-2")):
            # what each workload's probe asks, at the workload's own address
            health[name] = Backend(f"{name}-ready", f"{world.block}.{10 + n}", probe_port)
            world.workload(name, n)
        registered = lambda: world.registered("r1")  # noqa: E731
        wait_until(
            lambda: all(registered().get(n, {}).get("health") == "HEALTHY" for n in health),
            what="both HEALTHY, seen from r1",
        )
        world.caller()
        wait_until(lambda: world.ask() == 200, what="the caller to reach api")
        with Traffic(world) as traffic:
            traffic.more()
            assert world.served("api-1") > 0 and world.served("api-2") > 0
            health["api-1"].stop()  # api-1's probe fails from now on
            wait_until(
                lambda: registered()["api-1"]["health"] == "UNHEALTHY", what="api-1 UNHEALTHY"
            )
            wait_until(lambda: world.caller_endpoints() == 1, what="the caller drops api-1")
            before = world.served("api-1")
            traffic.more(40)
            assert world.served("api-1") == before, "an UNHEALTHY workload got traffic"
            health["api-1"] = Backend("api-1-ready", f"{world.block}.11", probe_port)
            wait_until(lambda: registered()["api-1"]["health"] == "HEALTHY", what="recovered")
            wait_until(lambda: world.served("api-1") > before, what="api-1 serves again")
        assert traffic.failures == [], traffic.failures[:5]
        assert world.metric("r2", "xdsd_probe_failures_total") >= 1
        assert world.metric("r2", 'xdsd_probe_transitions_total{health="UNHEALTHY"}') == 1
        assert world.metric("r1", "xdsd_probe_checks_total") == 0  # not r1's to probe
    finally:
        for backend in health.values():
            backend.stop()
        world.stop()
