"""The docker-compose demo's topology, built with Linux network namespaces (no Docker engine
runs here): each application and its sidecar Envoy share one namespace, as compose's
``network_mode: service:APP`` makes them; the namespaces hang off a bridge in the root
namespace, where xdsd and the client run. Applications listen on their namespace's own
127.0.0.1, so the only way in is their sidecar's inbound listener, and the only way out
is their sidecar's HTTP proxy. Needs root, ``ip`` and ``unshare`` (CI runs as root); it
skips, saying which is missing, without them."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Process, envoy_binary, http_get, port_open, wait_until, write_atomically
from xdsd.demo.mesh import (
    ADMIN_PORT,
    CANARY_FILE,
    ENVOY_ADMIN_PORT,
    GATEWAY_PORT,
    PROXY_PORT,
    REST_PORT,
    SERVICE_PORT,
    XDS_PORT,
    bootstrap_files,
    config_files,
    namespaced_layout,
    write_files,
)


def ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def free_subnet() -> str:
    """A ``10.X.Y`` /24 prefix no route on this host uses."""
    routes = ip("-4", "route", "show", "table", "all")
    for _ in range(100):
        prefix = f"10.{random.randint(200, 250)}.{random.randint(0, 255)}"
        if f"{prefix}." not in routes:
            return prefix
    raise AssertionError("no free 10.x.y.0/24 subnet")


class Topology:
    """A bridge in the root namespace and one namespace per node, each joined to the bridge
    by a veth pair. ``close()`` deletes all of it."""

    def __init__(self, prefix: str) -> None:
        self.tag = f"{random.randrange(16**4):04x}"
        self.prefix = prefix
        self.bridge = f"xdb{self.tag}"
        self.namespaces: dict[str, str] = {}
        self.veths: list[str] = []
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{prefix}.1/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def add(self, name: str, address: str) -> str:
        """A namespace for ``name`` with ``address``/24 on its veth and loopback up."""
        ns = f"xdsd-{self.tag}-{name}"
        index = len(self.namespaces)
        outside, inside = f"xv{self.tag}{index}", f"xp{self.tag}{index}"
        ip("netns", "add", ns)
        self.namespaces[name] = ns
        ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        self.veths.append(outside)
        ip("link", "set", inside, "netns", ns)
        ip("link", "set", outside, "master", self.bridge)
        ip("link", "set", outside, "up")
        ip("-n", ns, "addr", "add", f"{address}/24", "dev", inside)
        ip("-n", ns, "link", "set", inside, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        return ns

    def close(self) -> None:
        for veth in self.veths:  # deleting one end deletes its peer
            with contextlib.suppress(AssertionError):
                ip("link", "del", veth)
        for ns in self.namespaces.values():
            with contextlib.suppress(AssertionError):
                ip("netns", "del", ns)
        with contextlib.suppress(AssertionError):
            ip("link", "del", self.bridge)

    def leftovers(self) -> list[str]:
        """Namespaces and links of this topology that still exist."""
        names = ip("netns", "list") + ip("link", "show")
        return [w for w in names.split() if self.tag in w]


def in_namespace(ns: str, *argv: str) -> list[str]:
    """``argv`` run inside ``ns`` (``ip netns exec`` execs it: same PID)."""
    return ["ip", "netns", "exec", ns, *argv]


def connects(ns: str | None, host: str, port: int) -> bool:
    """True when a TCP connection from namespace ``ns`` (root when None) succeeds."""
    code = f"import socket; socket.create_connection(({host!r}, {port}), timeout=3)"
    argv = [sys.executable, "-c", code]
    done = subprocess.run(in_namespace(ns, *argv) if ns else argv, capture_output=True, timeout=30)
    return done.returncode == 0


def netns_missing() -> str:
    """Why this host cannot build the topology ("" when it can): not root, no ``ip``
    (iproute2), or network namespaces refused (a container without CAP_SYS_ADMIN)."""
    if os.geteuid() != 0:
        return "needs root: it creates network namespaces, a bridge and veth pairs"
    if shutil.which("ip") is None:
        return "needs `ip` (iproute2) to build network namespaces"
    if shutil.which("unshare") is None:
        return "needs `unshare` (util-linux) to check that network namespaces can be made"
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        return f"network namespaces refused here: {probe.stderr.decode().strip()}"
    return ""


@pytest.fixture
def root_with_ip() -> None:
    if why := netns_missing():
        pytest.skip(why)


@contextlib.contextmanager
def started(things: list[Process]) -> Iterator[None]:
    try:
        yield
    finally:
        for thing in reversed(things):
            with contextlib.suppress(Exception):
                thing.stop()


def test_compose_topology_in_network_namespaces(root_with_ip: None, tmp_path: Path) -> None:
    prefix = free_subnet()
    topo = Topology(prefix)
    processes: list[Process] = []
    try:
        with started(processes):
            run(topo, processes, tmp_path)
    finally:
        topo.close()
    wait_until(lambda: topo.leftovers() == [], what="namespaces and links to be gone")


def run(topo: Topology, processes: list[Process], tmp: Path) -> None:
    prefix = topo.prefix
    layout = namespaced_layout(prefix, xds_host=f"{prefix}.1")
    # Envoy admin on each namespace's own address, so the test reads stats from outside
    layout = dataclasses.replace(layout, admin_on_own_address=True)
    config = tmp / "config"
    write_files(config, config_files(layout))
    write_files(tmp / "bootstrap", bootstrap_files(layout))

    xdsd = Process(
        [
            sys.executable,
            "-m",
            "xdsd.cli",
            "serve",
            "--config-dir",
            str(config),
            "--grpc",
            f"{prefix}.1:{XDS_PORT}",
            "--rest",
            f"{prefix}.1:{REST_PORT}",
            "--admin",
            f"{prefix}.1:{ADMIN_PORT}",
        ],
        tmp / "xdsd.log",
    )
    processes.append(xdsd)
    wait_until(lambda: port_open(f"{prefix}.1", XDS_PORT), what="xdsd to listen")

    nodes = [("ingressgateway", layout.gateway_address)]
    nodes += [(w.name, w.address) for w in layout.workloads]
    for name, address in nodes:
        ns = topo.add(name, address)
        boot = tmp / "bootstrap" / f"{name}.yaml"
        argv = [envoy_binary(), "-c", str(boot), "--disable-hot-restart", "--concurrency", "1"]
        processes.append(Process(in_namespace(ns, *argv), tmp / f"envoy-{name}.log"))
    for w in layout.workloads:
        argv = [
            sys.executable,
            "-m",
            "xdsd.demo.app",
            "--name",
            w.service,
            "--version",
            w.version,
            "--listen",
            f"127.0.0.1:{w.app_port}",
            "--proxy",
            f"http://127.0.0.1:{PROXY_PORT}",
        ]
        for url in w.calls:
            argv += ["--call", url]
        processes.append(
            Process(in_namespace(topo.namespaces[w.name], *argv), tmp / f"{w.name}.log")
        )

    def admin(name: str, path: str) -> str:
        address = (
            layout.gateway_address if name == "ingressgateway" else layout.workload(name).address
        )
        status, _, body = http_get(address, ENVOY_ADMIN_PORT, path)
        assert status == 200
        return body.decode()

    def stat(name: str, key: str) -> int:
        for line in admin(name, "/stats").splitlines():
            k, _, v = line.partition(": ")
            if k == key:
                return int(v)
        return 0

    gateway = (layout.gateway_address, GATEWAY_PORT)

    def page() -> dict[str, object] | None:
        status, _, body = http_get(*gateway, "/")
        return json.loads(body) if status == 200 else None

    first = wait_until(page, timeout=120, what="a request through the gateway to cross the mesh")
    assert first == {
        "service": "productpage",
        "version": "v1",
        "calls": [{"service": "reviews", "version": "v1", "calls": []}],
    }
    # it went through productpage's sidecar (outbound) and reviews v1's (inbound)
    fqdn = "reviews.default.svc.cluster.local"
    assert (
        stat("productpage-v1", f"cluster.outbound|{SERVICE_PORT}|v1|{fqdn}.upstream_rq_total") >= 1
    )
    assert stat("reviews-v1", f"cluster.inbound|{SERVICE_PORT}||.upstream_rq_total") >= 1

    # the config directory drives the namespaces' proxies: shift reviews to v2
    canary = (config / CANARY_FILE).read_text()
    assert canary.count("weight: 100\n") == 1 and canary.count("weight: 0\n") == 1
    shifted = canary.replace("weight: 100\n", "weight: X\n").replace("weight: 0\n", "weight: 100\n")
    write_atomically(config / CANARY_FILE, shifted.replace("weight: X\n", "weight: 0\n"))

    def v2() -> bool:
        got = page()
        return bool(got) and got["calls"][0]["version"] == "v2"  # type: ignore[index]

    wait_until(v2, timeout=60, what="reviews v2 to take the traffic")
    got = page()
    assert got is not None
    assert got["calls"] == [
        {
            "service": "reviews",
            "version": "v2",
            "calls": [{"service": "ratings", "version": "v1", "calls": []}],
        }
    ]

    # isolation: an application is reachable only through its sidecar
    reviews = layout.workload("reviews-v2")
    pp = topo.namespaces["productpage-v1"]
    assert not connects(None, reviews.address, reviews.app_port)
    assert not connects(pp, reviews.address, reviews.app_port)
    assert not connects(pp, "127.0.0.1", reviews.app_port)  # not in productpage's namespace
    assert connects(pp, "127.0.0.1", PROXY_PORT)  # its own sidecar's HTTP proxy
    assert connects(topo.namespaces["reviews-v2"], "127.0.0.1", reviews.app_port)
    assert connects(None, reviews.address, SERVICE_PORT)  # reviews v2's sidecar, inbound
    for p in processes:
        assert p.alive(), p.argv


def test_without_root_it_skips_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert netns_missing() == "needs root: it creates network namespaces, a bridge and veth pairs"
    with pytest.raises(pytest.skip.Exception, match="needs root"):
        root_with_ip.__wrapped__()  # type: ignore[attr-defined]
