"""A small mesh for end-to-end tests: an ``echo`` service with two versions served by
real HTTP backends on loopback addresses, and a ``client`` service whose sidecar (a real
Envoy) is configured by xdsd. Rule edits are written atomically (temp file + rename)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

from tests.harness import (
    Backend,
    Envoy,
    Xdsd,
    free_port,
    http_get,
    loopback_block,
    wait_until,
    write_atomically,
)

ECHO = """\
kind = "Service"
name = "echo"

[[ports]]
name = "http"
number = {port}
protocol = "HTTP"

[[endpoints]]
address = "{v1}"
labels = {{ version = "v1" }}

[[endpoints]]
address = "{v2}"
labels = {{ version = "v2" }}

[[endpoints]]
address = "{v3}"
labels = {{ version = "v3" }}
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

DR = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo}}
spec:
  host: echo
  subsets:
{subsets}
"""


def vs(*routes: str) -> str:
    """A VirtualService for echo whose http list is ``routes`` (YAML snippets)."""
    return (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: echo}\n"
        "spec:\n  hosts: [echo]\n  http:\n" + "".join(routes)
    )


def route_to(weights: dict[str, int], match_header: tuple[str, str] | None = None) -> str:
    """One http route: optional header match, then weighted subsets of echo."""
    text = "  - "
    if match_header is not None:
        text += (
            f"match:\n    - headers:\n        {match_header[0]}:\n"
            f"          exact: {match_header[1]}\n    "
        )
    text += "route:\n"
    for subset, weight in weights.items():
        text += f"    - destination: {{host: echo, subset: {subset}}}\n      weight: {weight}\n"
    return text


class EchoMesh:
    """The files, backends, xdsd and client Envoy of one test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        block = loopback_block()  # this mesh's own addresses: .11-.13 backends, .30/.31 sidecar
        self.client_ip, self.outbound_ip = f"{block}.30", f"{block}.31"
        v1_ip, v2_ip, v3_ip = f"{block}.11", f"{block}.12", f"{block}.13"
        self.config = root / "config"
        (self.config / "services").mkdir(parents=True)
        (self.config / "rules").mkdir()
        self.port = free_port(v1_ip)
        self.backends = {
            "v1": Backend("v1", v1_ip, self.port),
            "v2": Backend("v2", v2_ip, self.port),
            "v3": Backend("v3", v3_ip, self.port),
        }
        self.client_port = free_port(self.client_ip)
        (self.config / "services" / "echo.toml").write_text(
            ECHO.format(port=self.port, v1=v1_ip, v2=v2_ip, v3=v3_ip)
        )
        (self.config / "services" / "client.toml").write_text(
            CLIENT.format(port=self.client_port, target=free_port(), ip=self.client_ip)
        )
        self.set_subsets("v1", "v2")
        self.rules = self.config / "rules" / "echo-vs.yaml"
        write_atomically(self.rules, vs(route_to({"v1": 100})))
        self.xdsd: Xdsd | None = None
        self.envoy: Envoy | None = None

    def set_subsets(self, *names: str) -> None:
        subsets = "".join(f"  - name: {n}\n    labels: {{version: {n}}}\n" for n in names)
        write_atomically(self.config / "rules" / "echo-dr.yaml", DR.format(subsets=subsets))

    def start_xdsd(self, **kwargs: object) -> Xdsd:
        self.xdsd = Xdsd(self.config, self.root, **kwargs)  # type: ignore[arg-type]
        return self.xdsd

    def start_envoy(
        self,
        transport: str = "grpc",
        extra: tuple[str, ...] = (),
        bootstrap: tuple[str, ...] = (),
    ) -> Envoy:
        assert self.xdsd is not None
        admin_port = free_port()
        port = self.xdsd.grpc_port if transport != "rest" else self.xdsd.rest_port
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "xdsd.cli",
                "bootstrap",
                "--service",
                "client",
                "--node-id",
                f"client-{transport}",
                "--instance-ip",
                self.client_ip,
                "--outbound-ip",
                self.outbound_ip,
                "--xds",
                f"127.0.0.1:{port}",
                "--transport",
                transport,
                "--admin-port",
                str(admin_port),
                "--no-dns",
                *bootstrap,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        path = self.root / f"envoy-{transport}.yaml"
        path.write_text(proc.stdout)
        self.envoy = Envoy(path, admin_port, self.root, extra)
        self.envoy.ready()
        return self.envoy

    def ask(self, via: str = "port", headers: dict[str, str] | None = None) -> str:
        """One request to echo through the client's sidecar; returns the backend's name
        (or raises). ``via`` is ``port`` (the per-port listener) or ``proxy`` (15001)."""
        if via == "port":
            status, got, _ = http_get(
                self.outbound_ip, self.port, "/", {"Host": "echo", **(headers or {})}
            )
        else:
            status, got, _ = http_get(
                self.outbound_ip, 15001, headers=headers, proxy_url=f"http://echo:{self.port}/"
            )
        if status != 200:
            raise AssertionError(f"status {status} via {via}")
        return got.get("x-backend", "?")

    def wait_for(
        self,
        backend: str,
        via: str = "port",
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> None:
        """Wait until 5 requests in a row reach ``backend``."""
        wait_until(
            lambda: all(self.ask(via, headers) == backend for _ in range(5)),
            timeout=timeout,
            what=f"traffic via {via} to reach {backend}",
        )

    def stop(self) -> None:
        for thing in (self.envoy, self.xdsd, *self.backends.values()):
            if thing is not None:
                with contextlib.suppress(Exception):
                    thing.stop()


class Prober:
    """Sends requests through both listeners in a loop, counting every outcome, so that a
    single failed request during a switch is seen."""

    def __init__(self, mesh: EchoMesh) -> None:
        self.mesh = mesh
        self.outcomes: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Prober:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            for via in ("port", "proxy"):
                try:
                    self.outcomes[self.mesh.ask(via)] += 1
                except Exception as e:
                    self.failures.append(f"{via}: {e!r}")
