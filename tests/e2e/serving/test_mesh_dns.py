"""Mesh DNS end to end: unchanged clients call services by name.

In a network namespace of its own (so every port is free and nothing on the host is
touched) the test runs xdsd, one sidecar Envoy bootstrapped by ``xdsd bootstrap`` with
virtual addresses and its DNS listener on ``127.0.10.53:53``, and the backends: HTTP
``reviews`` v1 and v2, two TCP services on the same port (``ledger-a``, ``ledger-b``) and
one more TCP service (``cache``). The clients — ``curl``, Python's ``urllib`` and plain
sockets, resolving with glibc's ``getaddrinfo`` — run in a mount namespace whose
``/etc/resolv.conf`` is the file ``xdsd bootstrap --resolver-config resolv.conf`` wrote:
they know nothing of the mesh but names. Each name reaches the right backend, through the
sidecar (a VirtualService weight change shows up). Needs root, ``ip``, ``unshare`` and
``curl``; it skips, saying which is missing, without them."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import Process, envoy_binary, wait_until, write_atomically
from tests.paths import REPO
from xdsd.resolver import nameservers

#: The sidecar runs as nobody with CAP_NET_BIND_SERVICE (bit 10) as its only capability.
NOBODY = 65534
CAP_NET_BIND_SERVICE = 10
UNPRIVILEGED = (
    "setpriv",
    f"--reuid={NOBODY}",
    f"--regid={NOBODY}",
    "--clear-groups",
    "--inh-caps=-all,+net_bind_service",
    "--ambient-caps=-all,+net_bind_service",
    "--bounding-set=-all,+net_bind_service",
)
#: Where the sidecar's DNS listens: resolv.conf can name port 53 only.
DNS = ("127.0.10.53", 53)
VIRTUAL_ADDRESSES = "127.240.0.0/16"
XDS_PORT, ADMIN_PORT, ENVOY_ADMIN = 18000, 19001, 15000
#: Backends: (name, address, port) — the services' endpoints, on the service ports (no
#: sidecar in front of them: the client's sidecar connects to them directly).
HTTP_BACKENDS = (("reviews-v1", "127.0.1.21", 9080), ("reviews-v2", "127.0.1.22", 9080))
TCP_BACKENDS = (
    ("ledger-a", "127.0.1.31", 5432),
    ("ledger-b", "127.0.1.32", 5432),
    ("cache", "127.0.1.41", 6379),
)

SERVICES = """\
apiVersion: xdsd.io/v1
kind: Service
metadata: {name: client}
spec:
  ports: [{name: http, number: 8000, protocol: HTTP, targetPort: 8001}]
  endpoints: [{address: 127.0.1.11}]
---
apiVersion: xdsd.io/v1
kind: Service
metadata: {name: reviews}
spec:
  ports: [{name: http, number: 9080, protocol: HTTP}]
  endpoints:
  - {address: 127.0.1.21, labels: {app: reviews, version: v1}}
  - {address: 127.0.1.22, labels: {app: reviews, version: v2}}
---
apiVersion: xdsd.io/v1
kind: Service
metadata: {name: ledger-a}
spec:
  ports: [{name: tcp, number: 5432, protocol: TCP}]
  endpoints: [{address: 127.0.1.31}]
---
apiVersion: xdsd.io/v1
kind: Service
metadata: {name: ledger-b}
spec:
  ports: [{name: tcp, number: 5432, protocol: TCP}]
  endpoints: [{address: 127.0.1.32}]
---
apiVersion: xdsd.io/v1
kind: Service
metadata: {name: cache}
spec:
  ports: [{name: tcp, number: 6379, protocol: TCP}]
  endpoints: [{address: 127.0.1.41}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""

CANARY = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {{host: reviews, subset: v1}}
      weight: {v1}
    - destination: {{host: reviews, subset: v2}}
      weight: {v2}
"""

#: One process serving every backend: HTTP servers naming themselves (``backend``) and
#: TCP servers answering each chunk with ``NAME:`` + the chunk.
BACKENDS = """\
import signal, sys
from tests.harness import Backend
from tests.e2e.upstreams import TcpEcho
http, tcp = eval(sys.argv[1]), eval(sys.argv[2])
servers = [Backend(n, h, p) for n, h, p in http] + [TcpEcho(n, h, p) for n, h, p in tcp]
print("serving", flush=True)
signal.pause()
"""

#: A client resolving with getaddrinfo: ``resolve NAME`` prints the addresses,
#: ``http URL`` the body urllib gets, ``tcp NAME PORT`` what a TCP server answers "ping".
CLIENT = """\
import socket, sys, urllib.request
what = sys.argv[1]
if what == "resolve":
    infos = socket.getaddrinfo(sys.argv[2], 80, socket.AF_INET, socket.SOCK_STREAM)
    print(" ".join(sorted({i[4][0] for i in infos})))
elif what == "http":
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    print(opener.open(sys.argv[2], timeout=5).read().decode())
else:
    with socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=5) as s:
        s.sendall(b"ping")
        print(s.recv(1024).decode())
"""


def missing() -> str:
    """Why this host cannot run the test ("" when it can)."""
    if os.geteuid() != 0:
        return "needs root: it creates a network namespace and a mount namespace"
    for tool, why in (
        ("ip", "iproute2"),
        ("unshare", "util-linux"),
        ("setpriv", "util-linux"),
        ("curl", "curl"),
    ):
        if shutil.which(tool) is None:
            return f"needs `{tool}` ({why})"
    probe = subprocess.run(["unshare", "--net", "--mount", "true"], capture_output=True)
    if probe.returncode != 0:
        return f"namespaces refused here: {probe.stderr.decode().strip()}"
    return ""


@pytest.fixture
def namespace() -> Iterator[str]:
    """A fresh network namespace with its loopback up; deleted afterwards."""
    if why := missing():
        pytest.skip(why)
    name = f"xdsd-dns-{random.randrange(16**6):06x}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def inside(ns: str, *argv: str) -> list[str]:
    """``argv`` run in network namespace ``ns`` (``ip netns exec`` execs it: same PID)."""
    return ["ip", "netns", "exec", ns, *argv]


def with_resolv_conf(ns: str, resolv_conf: Path, *argv: str) -> list[str]:
    """``argv`` run in ``ns`` and in a mount namespace of its own where
    ``/etc/resolv.conf`` is ``resolv_conf`` (bind-mounted; the host's is untouched)."""
    script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
    return inside(ns, "unshare", "--mount", "sh", "-c", script, str(resolv_conf), *argv)


def clean_env() -> dict[str, str]:
    """The environment without proxy variables: the clients must not know the mesh."""
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


@contextlib.contextmanager
def started(things: list[Process]) -> Iterator[None]:
    try:
        yield
    finally:
        for thing in reversed(things):
            with contextlib.suppress(Exception):
                thing.stop()


def test_unchanged_clients_call_services_by_name(namespace: str, tmp_path: Path) -> None:
    processes: list[Process] = []
    cleanups: list[Callable[[], None]] = []
    try:
        with started(processes):
            run(namespace, processes, cleanups, tmp_path)
    finally:
        for cleanup in cleanups:
            cleanup()


def run(ns: str, processes: list[Process], cleanups: list[Callable[[], None]], tmp: Path) -> None:
    config = tmp / "config"
    write_atomically(config / "services.yaml", SERVICES)
    write_atomically(config / "canary.yaml", CANARY.format(v1=100, v2=0))
    python = sys.executable

    def start(name: str, argv: list[str]) -> Process:
        # PYTHONPATH: the backends import the test harness
        process = Process(inside(ns, *argv), tmp / f"{name}.log", {"PYTHONPATH": str(REPO)})
        processes.append(process)
        return process

    def in_ns(*argv: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            inside(ns, *argv), capture_output=True, text=True, timeout=timeout, cwd=REPO
        )

    def client(*argv: str) -> str:
        """What an unchanged client prints (AssertionError with its stderr if it fails)."""
        done = subprocess.run(
            with_resolv_conf(ns, tmp / "resolv.conf", *argv),
            capture_output=True,
            text=True,
            timeout=30,
            env=clean_env(),
            cwd=REPO,
        )
        assert done.returncode == 0, f"{argv}: {done.stderr.strip()}"
        return done.stdout.strip()

    def listening(port: int) -> bool:
        code = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1)"
        return in_ns(python, "-c", code).returncode == 0

    start(
        "xdsd",
        [
            python,
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
            f"127.0.0.1:{ADMIN_PORT}",
        ],
    )
    backends = start(
        "backends",
        [python, "-c", BACKENDS, repr(HTTP_BACKENDS), repr(TCP_BACKENDS)],
    )
    wait_until(lambda: listening(XDS_PORT), what="xdsd to listen")

    # the sidecar's bootstrap and the client's resolv.conf, as an operator makes them
    made = subprocess.run(
        [
            python,
            "-m",
            "xdsd.cli",
            "bootstrap",
            "--config-dir",
            str(config),
            "--service",
            "client",
            "--instance-ip",
            "127.0.1.11",
            "--xds",
            f"127.0.0.1:{XDS_PORT}",
            "--admin-port",
            str(ENVOY_ADMIN),
            "--virtual-addresses",
            VIRTUAL_ADDRESSES,
            "--dns",
            f"{DNS[0]}:{DNS[1]}",
            "--dns-upstream",
            "127.0.0.1:5399",  # nothing there: no name here leaves the mesh
            "--resolver-config",
            "resolv.conf",
            "--resolver-file",
            str(tmp / "resolv.conf"),
            "--output",
            str(tmp / "client.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    assert nameservers((tmp / "resolv.conf").read_text()) == [DNS[0]]
    # Envoy as an unprivileged user with CAP_NET_BIND_SERVICE alone, as the sidecar unit
    # runs it (systemd/xdsd-sidecar.service): that is enough for port 53
    shared = Path(tempfile.mkdtemp(prefix="xdsd-mesh-dns-"))
    cleanups.append(lambda: shutil.rmtree(shared, ignore_errors=True))
    shared.chmod(0o755)
    shutil.copy(tmp / "client.yaml", shared / "client.yaml")
    (shared / "client.yaml").chmod(0o644)
    envoy = start(
        "envoy",
        [
            *UNPRIVILEGED,
            envoy_binary(),
            "-c",
            str(shared / "client.yaml"),
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "info",
        ],
    )
    wait_until(lambda: backends.log().startswith("serving"), what="the backends to serve")

    def envoy_admin(path: str) -> str:
        assert envoy.alive(), envoy.log()[-3000:]
        return in_ns("curl", "-sf", f"http://127.0.0.1:{ENVOY_ADMIN}{path}").stdout

    # the clients' resolver is the file xdsd bootstrap wrote; the host's is untouched
    assert nameservers(client("cat", "/etc/resolv.conf")) == [DNS[0]]
    assert DNS[0] not in Path("/etc/resolv.conf").read_text()

    # names resolve, through glibc and the sidecar's DNS, to virtual addresses
    block = ipaddress.ip_network(VIRTUAL_ADDRESSES)
    vip = wait_until(
        lambda: client(python, "-c", CLIENT, "resolve", "reviews"),
        timeout=90,
        what="reviews to resolve in the client's namespace",
    )
    assert ipaddress.ip_address(vip) in block, vip

    # the DNS socket on port 53 is held by nobody, with one capability
    sockets = in_ns("ss", "-Hulnp", f"sport = :{DNS[1]}").stdout
    (holder,) = {int(pid) for pid in re.findall(r"pid=(\d+)", sockets)}
    status = Path(f"/proc/{holder}/status").read_text()
    assert re.search(rf"^Uid:\s+{NOBODY}\s", status, re.M), status
    capabilities = re.search(r"^CapEff:\s+([0-9a-f]+)$", status, re.M)
    assert capabilities, status
    assert int(capabilities[1], 16) == 1 << CAP_NET_BIND_SERVICE, capabilities[1]

    for name in ("reviews.default", "reviews.default.svc.cluster.local"):
        assert client(python, "-c", CLIENT, "resolve", name) == vip
    addresses = {n: client(python, "-c", CLIENT, "resolve", n) for n in ("ledger-a", "ledger-b")}
    assert len(set(addresses.values()) | {vip}) == 3  # an address per service
    assert all(ipaddress.ip_address(a) in block for a in addresses.values())
    listeners = envoy_admin("/listeners")
    assert f"outbound|{vip}|9080" in listeners, listeners

    def curl_reviews() -> str:
        body = client("curl", "-sS", "--max-time", "5", "-i", "http://reviews:9080/")
        head, _, rest = body.partition("\n\n")  # text mode: CRLF read as LF
        assert head.startswith("HTTP/1.1 200"), body
        return str(json.loads(rest)["backend"])

    wait_until(lambda: curl_reviews() == "reviews-v1", timeout=60, what="curl to reach reviews")
    assert {curl_reviews() for _ in range(5)} == {"reviews-v1"}
    page = json.loads(client(python, "-c", CLIENT, "http", "http://reviews:9080/"))
    assert page["backend"] == "reviews-v1"
    headers = {k.lower(): v for k, v in page["headers"].items()}
    assert headers["host"] == "reviews:9080"
    assert "x-request-id" in headers and "x-forwarded-proto" in headers  # through Envoy

    # TCP by name: two services on one port, and another, each its own backend
    for name, port in (("ledger-a", 5432), ("ledger-b", 5432), ("cache", 6379)):
        assert client(python, "-c", CLIENT, "tcp", name, str(port)) == f"{name}:ping"

    # it went through the sidecar: the rules apply — shift reviews to v2
    write_atomically(tmp / "config" / "canary.yaml", CANARY.format(v1=0, v2=100))
    wait_until(lambda: curl_reviews() == "reviews-v2", timeout=60, what="reviews v2 by name")
    assert {curl_reviews() for _ in range(5)} == {"reviews-v2"}
    stats = envoy_admin("/stats")
    fqdn = "reviews.default.svc.cluster.local"
    assert f"cluster.outbound|9080|v2|{fqdn}.upstream_rq_total" in stats
    for p in processes:
        assert p.alive(), p.argv


def test_without_root_it_skips_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert missing() == "needs root: it creates a network namespace and a mount namespace"
