"""``xdsd capture`` with real iptables and a real Envoy: in a network namespace of the
test's own (a "VM"), an application that dials a service's *endpoint address* is
routed through the sidecar once the rules are applied — a VirtualService sending that
service's traffic elsewhere takes effect, and the sidecar's stats count the connection —
an address outside the mesh is passed through, and ``xdsd capture remove`` restores the
namespace's nat table exactly.

Topology: namespace ``vm`` (xdsd, the sidecar Envoy running as ``nobody`` so that its own
upstream connections are told apart by user, and the application, run as root) joined by
a veth pair to namespace ``far``, where the backends listen on one address. Needs root,
``ip``, ``iptables`` and ``setpriv``; skips, saying which is missing, without them."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Process, envoy_binary, wait_until, write_atomically
from xdsd.translate import NodeClass
from xdsd.translate.static import Transport, bootstrap

CAPTURE_PORT = 15002
XDS_PORT = 18000
ENVOY_ADMIN = 15000
#: The backends in ``far``: name → (port, speaks HTTP).
BACKENDS = {
    "alpha": (7000, False),
    "beta": (7001, False),
    "outside": (7002, False),  # no service: reached by passthrough
    "web": (8080, True),
    "web2": (8081, True),
}
SERVER = """
import asyncio, json, sys
backends = json.loads(sys.argv[1])
host = sys.argv[2]
async def main():
    servers = []
    for name, (port, http) in backends.items():
        async def serve(reader, writer, name=name, http=http):
            if http:
                await reader.readuntil(b"\\r\\n\\r\\n")
                body = name.encode()
                writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n"
                             b"Connection: close\\r\\n\\r\\n%s" % (len(body), body))
            else:
                writer.write(name.encode() + b"\\n")
            await writer.drain()
            writer.close()
        servers.append(await asyncio.start_server(serve, host, port))
    print("serving", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""
CLIENT = """
import socket, sys
host, port, http_host = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with socket.create_connection((host, port), timeout=5) as s:
    if http_host:
        s.sendall(f"GET / HTTP/1.1\\r\\nHost: {http_host}\\r\\nConnection: close\\r\\n\\r\\n".encode())
    data = b""
    while chunk := s.recv(4096):
        data += chunk
text = data.decode()
print(text.split("\\r\\n\\r\\n", 1)[1] if http_host else text.strip())
"""


def missing() -> str:
    """Why this host cannot run the test ("" when it can)."""
    if os.geteuid() != 0:
        return "needs root: it creates network namespaces and changes their nat table"
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    for tool, package in (("ip", "iproute2"), ("iptables", "iptables"), ("setpriv", "util-linux")):
        if shutil.which(tool, path=path) is None:
            return f"needs `{tool}` (Debian: apt-get install {package})"
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        return f"network namespaces refused here: {probe.stderr.decode().strip()}"
    return ""


def run(*argv: str, ns: str = "", check: bool = True) -> subprocess.CompletedProcess[str]:
    prefix = ["ip", "netns", "exec", ns] if ns else []
    done = subprocess.run(
        [*prefix, *argv], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {done.stdout}{done.stderr}")
    return done


@contextlib.contextmanager
def namespaces() -> Iterator[tuple[str, str, str]]:
    """Namespaces ``vm`` and ``far`` joined by a veth pair on a 10.X.Y.0/24 of their
    own: yields (vm, far, the prefix); deletes both (and so the pair) at the end."""
    tag = f"{random.randrange(16**4):04x}"
    vm, far = f"xdsd-cap-{tag}-vm", f"xdsd-cap-{tag}-far"
    prefix = f"10.{random.randint(200, 250)}.{random.randint(0, 255)}"
    run("ip", "netns", "add", vm)
    try:
        run("ip", "netns", "add", far)
        try:
            run("ip", "link", "add", f"xc{tag}a", "type", "veth", "peer", "name", f"xc{tag}b")
            run("ip", "link", "set", f"xc{tag}a", "netns", vm)
            run("ip", "link", "set", f"xc{tag}b", "netns", far)
            for ns, link, host in ((vm, f"xc{tag}a", 1), (far, f"xc{tag}b", 2)):
                run("ip", "addr", "add", f"{prefix}.{host}/24", "dev", link, ns=ns)
                run("ip", "link", "set", link, "up", ns=ns)
                run("ip", "link", "set", "lo", "up", ns=ns)
            yield vm, far, prefix
        finally:
            run("ip", "netns", "del", far, check=False)
    finally:
        run("ip", "netns", "del", vm, check=False)


def nat_table(ns: str) -> str:
    saved = run("iptables-save", "-t", "nat", ns=ns).stdout
    return "\n".join(line for line in saved.splitlines() if not line.startswith("#"))


def files(prefix: str) -> dict[str, str]:
    """The mesh: TCP services alpha and beta, HTTP services web and web2, each with one
    endpoint in ``far``."""
    out = {}
    for name, (port, http) in BACKENDS.items():
        if name == "outside":
            continue
        protocol = "HTTP" if http else "TCP"
        out[f"services/{name}.toml"] = (
            f'kind = "Service"\nname = "{name}"\n\n[[ports]]\nname = "{protocol.lower()}"\n'
            f'number = {port}\nprotocol = "{protocol}"\n\n[[endpoints]]\n'
            f'address = "{prefix}.2"\n'
        )
    return out


RULES = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: alpha}
spec:
  hosts: [alpha]
  tcp:
  - route: [{destination: {host: beta, port: {number: 7001}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [web]
  http:
  - route: [{destination: {host: web2, port: {number: 8081}}}]
"""


@pytest.mark.parametrize("transport", ["grpc", "delta"])
def test_capture_routes_endpoint_addresses_through_the_sidecar(
    tmp_path: Path, transport: Transport
) -> None:
    """Over SotW ADS, and over delta ADS with VHDS (the capture listener's HTTP chains
    fetch the virtual host of the Host they see on demand)."""
    if why := missing():
        pytest.skip(why)
    config = tmp_path / "config"
    processes: list[Process] = []
    with namespaces() as (vm, far, prefix):
        for name, text in files(prefix).items():
            write_atomically(config / name, text)
        try:
            scenario(vm, far, prefix, config, tmp_path, processes, transport)
        finally:
            for p in reversed(processes):
                with contextlib.suppress(Exception):
                    p.stop()


def scenario(
    vm: str,
    far: str,
    prefix: str,
    config: Path,
    tmp: Path,
    processes: list[Process],
    transport: Transport = "grpc",
) -> None:
    def ns(name: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", name, *argv]

    server = Process(
        ns(far, sys.executable, "-c", SERVER, json.dumps(BACKENDS), f"{prefix}.2"),
        tmp / "backends.log",
    )
    processes.append(server)
    xdsd = Process(
        ns(
            vm,
            sys.executable,
            "-m",
            "xdsd.cli",
            "serve",
            "--config-dir",
            str(config),
            "--grpc",
            f"127.0.0.1:{XDS_PORT}",
            "--rest",
            "127.0.0.1:18001",
            "--admin",
            "127.0.0.1:19001",
        ),
        tmp / "xdsd.log",
    )
    processes.append(xdsd)
    node = NodeClass(service="app", capture=CAPTURE_PORT, vhds=transport == "delta")
    boot = bootstrap(
        "vm-1",
        node,
        xds_host="127.0.0.1",
        xds_port=XDS_PORT,
        transport=transport,
        admin_port=ENVOY_ADMIN,
    )
    assert boot["node"]["metadata"]["capture"] == str(CAPTURE_PORT)
    # Envoy as nobody: the capture rules leave its own connections alone by that user
    envoy = Process(
        ns(
            vm,
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            envoy_binary(),
            "--config-yaml",
            json.dumps(boot),
            "--disable-hot-restart",
            "--concurrency",
            "1",
        ),
        tmp / "envoy.log",
    )
    processes.append(envoy)

    def app(port: int, http_host: str = "") -> str:
        """What an application in ``vm`` (root, so captured) reads from ``far``'s
        address on ``port``; "" when the connection failed."""
        done = run(
            sys.executable, "-c", CLIENT, f"{prefix}.2", str(port), http_host, ns=vm, check=False
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    def admin(path: str) -> str:
        code = (
            "import urllib.request, sys; sys.stdout.write(urllib.request.urlopen("
            f"'http://127.0.0.1:{ENVOY_ADMIN}{path}', timeout=5).read().decode())"
        )
        return run(sys.executable, "-c", code, ns=vm).stdout

    def stat(name: str) -> int:
        for line in admin("/stats").splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0

    def listening() -> bool:
        for p in processes:
            assert p.alive(), f"{p.argv[:6]} exited:\n{p.log()[-3000:]}"
        names = admin("/listeners")
        return "outbound_capture::" in names and "capture|7000::" in names

    wait_until(lambda: "serving" in server.log(), what="the backends to listen")
    wait_until(listening, timeout=90, what="the sidecar's capture listeners")

    alpha = "cluster.outbound|7000||alpha.default.svc.cluster.local.upstream_cx_total"
    before = nat_table(vm)
    # without the rules: the application reaches alpha directly, the sidecar sees nothing
    assert app(7000) == "alpha"
    assert stat(alpha) == 0

    flags = ["--proxy-user", "nobody", "--port", str(CAPTURE_PORT)]
    applied = run(sys.executable, "-m", "xdsd.cli", "capture", "apply", *flags, ns=vm)
    assert "applied" in applied.stdout
    assert nat_table(vm) != before

    # through the sidecar: same answer, counted by the service's cluster
    # (listeners show in /listeners while they warm: wait until they serve)
    wait_until(lambda: stat("listener_manager.workers_started") == 1, what="Envoy serving")
    assert app(7000) == "alpha"
    assert stat(alpha) == 1
    assert stat("listener.capture_7000.downstream_cx_total") == 1
    assert app(8080, http_host="web") == "web"
    web_config = _route_config(admin("/config_dump"), "8080")
    if transport == "delta":  # VHDS: the one virtual host the request asked for
        assert "vhds" in web_config, web_config
        held = [v["name"] for v in web_config.get("virtual_hosts", ())]
        assert held == ["8080/web.default.svc.cluster.local:8080"], held
    else:
        assert "vhds" not in web_config and web_config["virtual_hosts"]
    # the routing rules apply to a connection dialled to alpha's (and web's) endpoint
    write_atomically(config / "rules" / "capture.yaml", RULES)
    wait_until(lambda: app(7000) == "beta", timeout=60, what="alpha's traffic to go to beta")
    assert app(8080, http_host="web") == "web2"
    # an address no service has is passed through to where it was dialled
    passthrough = stat("cluster.PassthroughCluster.upstream_cx_total")
    assert app(7002) == "outside"
    assert stat("cluster.PassthroughCluster.upstream_cx_total") == passthrough + 1

    removed = run(sys.executable, "-m", "xdsd.cli", "capture", "remove", ns=vm)
    assert "removed" in removed.stdout
    assert nat_table(vm) == before
    # uncaptured again: the rule no longer applies, alpha answers itself
    captured = stat("listener.capture_7000.downstream_cx_total")
    assert app(7000) == "alpha"
    assert stat("listener.capture_7000.downstream_cx_total") == captured
    for p in processes:
        assert p.alive(), p.argv[:6]
    # no subscription waited out its initial fetch (VHDS: every route configuration started)
    assert "initial fetch timed out" not in envoy.log()


def _route_config(dump_text: str, name: str) -> dict[str, Any]:
    """The dynamic route configuration ``name`` of an Envoy ``/config_dump``."""
    for section in json.loads(dump_text)["configs"]:
        for entry in section.get("dynamic_route_configs", ()):
            config: dict[str, Any] = entry["route_config"]
            if config.get("name") == name:
                return config
    raise AssertionError(f"no route configuration {name}")


def test_without_root_it_skips_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert missing() == "needs root: it creates network namespaces and changes their nat table"
