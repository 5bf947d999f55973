"""One small mesh for the AuthorizationPolicy tests, shared by a module: xdsd with mesh
mutual TLS (STRICT) and two extension providers, a callee ``web`` (namespace
``default``) with an HTTP port and a TCP port behind its sidecar, and two callers with
their own sidecars and identities: ``client`` (namespace ``default``) and ``intruder``
(namespace ``other``). The ext_authz servers (HTTP and gRPC) are ServiceEntry hosts
outside the mesh, so the callee's sidecar asks them in plaintext.

A test writes its policies to ``rules/authz.yaml`` (``World.policies``) and waits for
the status a probe request should get now; every test starts from no policy.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.certs import CertAuthority, CertFiles
from tests.e2e.security.ext_authz import GrpcAuthz, HttpAuthz
from tests.e2e.traffic_mesh import Sidecar, TrafficMesh
from tests.e2e.upstreams import TcpEcho, Upstream
from tests.harness import free_port, write_atomically

TRUST_DOMAIN = "mesh.test"
WEB_HOST = "web.default.svc.cluster.local"
HTTP_AUTHZ_HOST = "http-authz.example"
GRPC_AUTHZ_HOST = "grpc-authz.example"


WEB_RULE = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web}
spec:
  host: web.default.svc.cluster.local
  trafficPolicy:
    connectionPool: {http: {maxRequestsPerConnection: 1}}
"""


def principal(namespace: str, service: str) -> str:
    """A workload's principal as AuthorizationPolicy writes it (no ``spiffe://``)."""
    return f"{TRUST_DOMAIN}/ns/{namespace}/sa/{service}"


def install(files: CertFiles, directory: Path) -> None:
    """``files`` as ``cert.pem`` and ``key.pem`` of ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for source, name in ((files.key, "key.pem"), (files.cert, "cert.pem")):
        staged = directory / f".{name}.new"
        shutil.copyfile(source, staged)
        os.replace(staged, directory / name)


#: The access log line of every proxy: the path, AUDIT's hint and what the RBAC filters
#: left in the request's metadata (the names of the policies that decided).
LOG_FORMAT = (
    "%REQ(:PATH)% audit=%DYNAMIC_METADATA(envoy.common:access_log_hint)% "
    "rbac=%DYNAMIC_METADATA(envoy.filters.http.rbac)%"
)


def settings(pki: Path, http_port: int, grpc_port: int, log: Path) -> str:
    return f"""\
[mesh.access_log]
path = "{log}"
format = "{LOG_FORMAT}"

[mesh.mtls]
mode = "STRICT"
trust_domain = "{TRUST_DOMAIN}"
ca = "{pki}/ca.pem"
certificate = "{pki}/{{namespace}}/{{service}}/cert.pem"
private_key = "{pki}/{{namespace}}/{{service}}/key.pem"

[[mesh.extension_providers]]
name = "http-authz"
[mesh.extension_providers.envoy_ext_authz_http]
service = "{HTTP_AUTHZ_HOST}"
port = {http_port}
timeout = "2s"
path_prefix = "/check"
include_request_headers_in_check = ["x-ext-authz"]
headers_to_downstream_on_deny = ["x-ext-authz-check"]

[[mesh.extension_providers]]
name = "grpc-authz"
[mesh.extension_providers.envoy_ext_authz_grpc]
service = "{GRPC_AUTHZ_HOST}"
port = {grpc_port}
timeout = "2s"
"""


def service_entry(name: str, host: str, address: str, port: int, protocol: str) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{host}]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: {port}, name: {protocol.lower()}, protocol: {protocol}}}]
  endpoints: [{{address: {address}}}]
"""


@dataclass
class World:
    mesh: TrafficMesh
    web: Sidecar
    client: Sidecar
    intruder: Sidecar
    app: Upstream
    tcp_port: int
    http_authz: HttpAuthz
    grpc_authz: GrpcAuthz
    #: The access log every proxy appends to (``LOG_FORMAT``).
    access_log: Path

    def logged(self, path: str) -> list[str]:
        """The access log lines of requests for ``path`` (every proxy's)."""
        if not self.access_log.exists():
            return []
        lines = self.access_log.read_text(errors="replace").splitlines()
        return [line for line in lines if line.startswith(path + " ")]

    def policies(self, text: str) -> Path:
        """Write ``rules/authz.yaml`` (empty text: remove it, no policy)."""
        if not text:
            path = self.mesh.config / "rules" / "authz.yaml"
            path.unlink(missing_ok=True)
            return path
        return self.mesh.rule("authz", text)

    def call(
        self,
        caller: Sidecar,
        path: str = "/",
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
    ) -> int:
        """The status ``caller`` gets for a request to web's HTTP port."""
        reply = caller.request(
            WEB_HOST, path, method=method, headers=headers, port=self.web.inbound_port
        )
        return reply.status

    def tcp(self, caller: Sidecar) -> bytes:
        """What web's TCP port echoes to ``caller`` (b"" when the connection is closed
        without an answer)."""
        with socket.create_connection((caller.outbound_ip, self.tcp_port), timeout=5) as s:
            s.sendall(b"ping")
            try:
                return s.recv(65536)
            except ConnectionResetError:
                return b""

    def until(self, check: Callable[[], bool], what: str) -> None:
        """Wait (with a deadline) until ``check`` holds."""
        self.client.wait_for(check, what)

    def rbac_stats(self, sidecar: Sidecar | None = None) -> dict[str, int]:
        """``sidecar``'s (web's by default) RBAC counters, by stat name."""
        stats = (sidecar or self.web).stats()
        return {k: v for k, v in stats.items() if "rbac" in k}


def build(root: Path) -> tuple[World, list[TcpEcho | HttpAuthz | GrpcAuthz]]:
    """Start the mesh of the module docstring under ``root``; returns the world and what
    to stop besides the mesh (the ext_authz servers)."""
    pki = root / "pki"
    ca = CertAuthority(pki)
    for namespace, service in (("default", "web"), ("default", "client"), ("other", "intruder")):
        uri = f"spiffe://{principal(namespace, service)}"
        issued = ca.issue(service, uris=[uri], directory=root / "issued" / namespace)
        install(issued, pki / namespace / service)
    mesh = TrafficMesh(root)
    http_authz = HttpAuthz(mesh.ip())
    grpc_ip = mesh.ip()
    grpc_authz = GrpcAuthz(grpc_ip, free_port(grpc_ip))
    path = root / "settings.toml"
    log = root / "access.log"
    path.write_text(settings(pki, http_authz.port, grpc_authz.port, log))
    mesh.xdsd_args = ["--settings", str(path)]
    entries = service_entry("http-authz", HTTP_AUTHZ_HOST, http_authz.host, http_authz.port, "HTTP")
    entries += "---\n" + service_entry(
        "grpc-authz", GRPC_AUTHZ_HOST, grpc_authz.host, grpc_authz.port, "GRPC"
    )
    mesh.rule("providers", entries)
    # A connection per request: a policy edit replaces web's inbound listener, and a
    # pooled connection would stay on the old one while it drains.
    mesh.rule("web", WEB_RULE)
    app_port = free_port()
    app = mesh.upstream("web-app", host="127.0.0.1", port=app_port)
    web = mesh.start("web", app_port=app_port, labels={"app": "web"}, drain_time_s=1)
    echo = TcpEcho("web-tcp", "127.0.0.1", free_port())
    tcp_port = free_port(web.ip)
    text = (mesh.config / "services" / "web.toml").read_text()
    text += (
        f'\n[[ports]]\nname = "tcp"\nnumber = {tcp_port}\nprotocol = "TCP"\n'
        f"targetPort = {echo.port}\n"
    )
    # A second port after the endpoints: TOML appends it to ``ports`` all the same.
    write_atomically(mesh.config / "services" / "web.toml", text)
    client = mesh.start("client", labels={"app": "client"})
    intruder = mesh.start("intruder", namespace="other", labels={"app": "intruder"})
    world = World(mesh, web, client, intruder, app, tcp_port, http_authz, grpc_authz, log)
    return world, [echo, http_authz, grpc_authz]
