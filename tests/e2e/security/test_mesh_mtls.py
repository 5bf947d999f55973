"""Mesh mutual TLS between two real Envoy sidecars, with certificates from files per service
(``[mesh.mtls]``): the caller's sidecar originates mTLS, the callee's inbound listener
requires it and tells its application who called (``x-forwarded-client-cert``); a client
without a mesh certificate (none, or another CA's) is refused; the caller checks the
callee's identity, so a callee whose certificate names another service is refused; a
replaced certificate reaches the proxies with no restart; PERMISSIVE (after SIGHUP) lets
plaintext in too."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.certs import CertAuthority, CertFiles
from tests.e2e.traffic_mesh import Sidecar, TrafficMesh
from tests.e2e.upstreams import Upstream
from tests.harness import free_port, wait_until

TRUST_DOMAIN = "mesh.test"


WEB_RULE = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web}
spec:
  host: web
  trafficPolicy:
    connectionPool: {http: {maxRequestsPerConnection: 1}}
"""


def identity(service: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/default/sa/{service}"


def settings(pki: Path, mode: str) -> str:
    return (
        "[mesh.mtls]\n"
        f'mode = "{mode}"\n'
        f'trust_domain = "{TRUST_DOMAIN}"\n'
        f'ca = "{pki}/ca.pem"\n'
        f'certificate = "{pki}/{{namespace}}/{{service}}/cert.pem"\n'
        f'private_key = "{pki}/{{namespace}}/{{service}}/key.pem"\n'
    )


def install(files: CertFiles, directory: Path) -> None:
    """Put ``files`` in place as ``cert.pem`` and ``key.pem`` of ``directory`` (each by an
    atomic rename, key first)."""
    directory.mkdir(parents=True, exist_ok=True)
    for source, name in ((files.key, "key.pem"), (files.cert, "cert.pem")):
        staged = directory / f".{name}.new"
        shutil.copyfile(source, staged)
        os.replace(staged, directory / name)


@dataclass
class World:
    mesh: TrafficMesh
    ca: CertAuthority
    pki: Path
    client: Sidecar
    web: Sidecar
    app: Upstream
    settings: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("mesh-mtls")
    pki = root / "pki"
    ca = CertAuthority(pki)
    for service in ("client", "web", "ingress"):
        install(
            ca.issue(service, uris=[identity(service)], directory=root / "issued"),
            pki / "default" / service,
        )
    with TrafficMesh(root) as mesh:
        path = root / "settings.toml"
        path.write_text(settings(pki, "STRICT"))
        mesh.xdsd_args = ["--settings", str(path)]
        app_port = free_port()
        app = mesh.upstream("web-app", host="127.0.0.1", port=app_port)
        # A connection per request, so that a certificate replaced on disk is seen by the
        # next request (Envoy keeps pooled connections over a secret change); also shows
        # a DestinationRule without tls keeping the mesh's mutual TLS.
        mesh.rule("web", WEB_RULE)
        web = mesh.start("web", app_port=app_port)
        client = mesh.start("client")
        yield World(mesh, ca, pki, client, web, app, path)


def call_web(world: World) -> int:
    return world.client.request("web", port=world.web.inbound_port).status


def client_cert_details(header: str) -> dict[str, str]:
    """One ``x-forwarded-client-cert`` element as its key=value pairs (asserting that
    there is exactly one: nothing the caller sent survived)."""
    assert "," not in header, header
    return dict(part.split("=", 1) for part in header.split(";"))


def test_sidecars_speak_mutual_tls_and_the_callee_learns_the_callers_identity(
    world: World,
) -> None:
    world.client.wait_for(lambda: call_web(world) == 200, "client → web over mesh mTLS")
    world.app.reset()
    # A caller cannot pass itself off as another: its own x-forwarded-client-cert is
    # dropped, and the callee's sidecar writes the one the handshake proved.
    reply = world.client.request(
        "web",
        port=world.web.inbound_port,
        headers={"x-forwarded-client-cert": f"URI={identity('admin')}"},
    )
    assert reply.status == 200 and reply.backend == "web-app"
    details = client_cert_details(world.app.seen[-1].headers["x-forwarded-client-cert"])
    assert details["URI"] == identity("client") and details["By"] == identity("web"), details
    # Both ends count TLS handshakes: the caller's cluster, the callee's inbound listener.
    client_stats = world.client.stats()
    origin = [
        k
        for k, v in client_stats.items()
        if k.startswith("cluster.outbound|")
        and "|web." in k
        and k.endswith(".ssl.handshake")
        and v > 0
    ]
    assert origin, "the client's cluster to web made no TLS handshake"
    web_stats = world.web.stats()
    inbound = f"listener.inbound_{world.web.inbound_port}.ssl.handshake"
    assert web_stats.get(inbound, 0) > 0, "web's inbound listener made no TLS handshake"
    # xdsd's config dump shows the secrets a node was sent, without the private key.
    assert world.mesh.xdsd is not None
    dump = world.mesh.xdsd.admin("/debug/config_dump?node=client-sidecar")
    secrets = {item["name"]: item for item in dump["resources"]["secrets"]}
    own = secrets["default"]["tls_certificate"]
    assert own["private_key"] == {"inline_bytes": "[redacted]"}  # the field kept, its value not
    assert own["certificate_chain"]["inline_bytes"]
    assert "validation_context" in secrets["ROOTCA"]


def plaintext_get(world: World) -> int:
    """A plaintext request straight to web's inbound listener (its status; raises when
    the connection is refused or closed)."""
    conn = http.client.HTTPConnection(world.web.ip, world.web.inbound_port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": "web"})
        return conn.getresponse().status
    finally:
        conn.close()


def tls_get(world: World, cert: CertFiles | None) -> int:
    """A request over TLS straight to web's inbound listener, trusting the mesh CA and
    presenting ``cert`` (none: no client certificate)."""
    with connect_tls(world, cert) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        data = s.recv(65536)
    if not data:
        raise ConnectionResetError("closed without an answer")
    return int(data.split()[1])


def connect_tls(world: World, cert: CertFiles | None) -> ssl.SSLSocket:
    """A TLS connection to web's inbound listener, trusting the mesh CA (mesh
    certificates name SPIFFE ids, not host names) and presenting ``cert``, if any."""
    ctx = ssl.create_default_context(cafile=str(world.ca.ca_path))
    ctx.check_hostname = False
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    raw = socket.create_connection((world.web.ip, world.web.inbound_port), timeout=5)
    try:
        return ctx.wrap_socket(raw)
    except BaseException:
        raw.close()
        raise


def refused(call: Callable[[], object]) -> bool:
    try:
        call()
    except (OSError, http.client.HTTPException, ssl.SSLError):
        return True
    return False


def test_clients_without_a_mesh_certificate_are_refused(world: World, tmp_path: Path) -> None:
    world.client.wait_for(lambda: call_web(world) == 200, "client → web over mesh mTLS")
    assert refused(lambda: plaintext_get(world))
    assert refused(lambda: tls_get(world, None))
    stranger = CertAuthority(tmp_path / "stranger", "another CA").issue(
        "stranger", uris=[identity("client")]
    )
    assert refused(lambda: tls_get(world, stranger))
    # The same request with a certificate of the mesh CA gets through: the refusals above
    # are about the certificate, not the request.
    member = world.ca.issue("member", uris=[identity("member")], directory=tmp_path)
    assert tls_get(world, member) == 200


def test_the_caller_checks_the_callees_identity_and_follows_replaced_files(
    world: World, tmp_path: Path
) -> None:
    world.client.wait_for(lambda: call_web(world) == 200, "client → web over mesh mTLS")
    web_dir = world.pki / "default" / "web"
    original = CertFiles(web_dir / "cert.pem", web_dir / "key.pem", world.ca.ca_path)
    kept = CertFiles(tmp_path / "web.pem", tmp_path / "web-key.pem", world.ca.ca_path)
    shutil.copyfile(original.cert, kept.cert)
    shutil.copyfile(original.key, kept.key)
    # web now presents a certificate of the mesh CA naming another service: the client
    # refuses it (no restart of anything; xdsd pushes web's new secret).
    impostor = world.ca.issue("impostor", uris=[identity("billing")], directory=tmp_path)
    install(impostor, web_dir)
    wait_until(lambda: presented(world) == [identity("billing")], what="web to present it")
    world.client.wait_for(lambda: call_web(world) == 503, "the client to refuse web's identity")
    install(kept, web_dir)
    world.client.wait_for(lambda: call_web(world) == 200, "web's own certificate back")
    assert presented(world) == [identity("web")]


def presented(world: World) -> list[str]:
    """The URI SANs of the certificate web's inbound listener presents to a member."""
    member = world.ca.issue(
        "prober", uris=[identity("prober")], directory=world.pki.parent / "issued"
    )
    with connect_tls(world, member) as s:
        cert = s.getpeercert() or {}
    return [v for k, v in cert.get("subjectAltName", ()) if k == "URI"]


def test_permissive_mode_lets_plaintext_in_besides_mutual_tls(world: World) -> None:
    world.settings.write_text(settings(world.pki, "PERMISSIVE"))
    assert world.mesh.xdsd is not None
    try:
        world.mesh.xdsd.proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: not refused(lambda: plaintext_get(world)) and plaintext_get(world) == 200,
            what="plaintext accepted under PERMISSIVE",
        )
        world.app.reset()
        assert call_web(world) == 200
        details = client_cert_details(world.app.seen[-1].headers["x-forwarded-client-cert"])
        assert details["URI"] == identity("client"), details
        # A plaintext caller cannot claim an identity either.
        conn = http.client.HTTPConnection(world.web.ip, world.web.inbound_port, timeout=5)
        conn.request("GET", "/", headers={"Host": "web", "x-forwarded-client-cert": "URI=x"})
        assert conn.getresponse().status == 200
        conn.close()
        assert "x-forwarded-client-cert" not in world.app.seen[-1].headers
    finally:
        world.settings.write_text(settings(world.pki, "STRICT"))
        world.mesh.xdsd.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: refused(lambda: plaintext_get(world)), what="STRICT again")


GATEWAY_RULES = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: east-west}}
spec:
  selector: {{istio: eastwestgateway}}
  servers:
  - port: {{number: {port}, name: mtls, protocol: HTTPS}}
    hosts: ["*"]
    tls: {{mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web-through-east-west}}
spec:
  hosts: [web.mesh.example]
  gateways: [east-west]
  http:
  - route: [{{destination: {{host: web}}}}]
"""


def test_a_gateway_server_in_istio_mutual_takes_mesh_clients_and_calls_in_the_mesh(
    world: World, tmp_path: Path
) -> None:
    """An ISTIO_MUTUAL gateway server presents the gateway's mesh certificate and wants
    one of the mesh CA; the gateway then calls web over mesh mTLS as itself."""
    ip = world.mesh.gateway_ip("ingress")
    port = free_port(ip)
    world.mesh.rule("east-west", GATEWAY_RULES.format(port=port))
    gateway = world.mesh.start_gateway("ingress", {"istio": "eastwestgateway"})
    member = world.ca.issue("caller", uris=[identity("caller")], directory=tmp_path)

    def through_gateway(cert: CertFiles | None) -> int:
        ctx = ssl.create_default_context(cafile=str(world.ca.ca_path))
        ctx.check_hostname = False
        if cert is not None:
            ctx.load_cert_chain(str(cert.cert), str(cert.key))
        conn = http.client.HTTPConnection(ip, port, timeout=5)
        try:
            raw = socket.create_connection((ip, port), timeout=5)
            conn.sock = ctx.wrap_socket(raw)
            presented = conn.sock.getpeercert() or {}
            uris = [v for k, v in presented.get("subjectAltName", ()) if k == "URI"]
            assert uris == [identity("ingress")], uris
            conn.request("GET", "/", headers={"Host": "web.mesh.example"})
            return conn.getresponse().status
        finally:
            conn.close()

    gateway.wait_for(lambda: through_gateway(member) == 200, "web through the gateway")
    details = client_cert_details(world.app.seen[-1].headers["x-forwarded-client-cert"])
    assert details["URI"] == identity("ingress"), details
    assert refused(lambda: through_gateway(None))


def test_a_proxyless_grpc_client_speaks_mesh_mtls_from_its_bootstrap(
    world: World, tmp_path: Path
) -> None:
    """A proxyless gRPC client whose bootstrap (``xdsd bootstrap --format grpc
    --settings``) holds its mesh certificate reaches a gRPC service behind a STRICT
    sidecar, checking the callee's identity; the same client without it is refused."""
    import json
    import queue
    import subprocess
    import sys
    import threading
    from concurrent import futures

    import grpc

    for service in ("greeter", "caller"):
        install(
            world.ca.issue(service, uris=[identity(service)], directory=tmp_path),
            world.pki / "default" / service,
        )
    app_port = free_port()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Echo", {"Who": grpc.unary_unary_rpc_method_handler(lambda r, c: b"greeter")}
            ),
        )
    )
    server.add_insecure_port(f"127.0.0.1:{app_port}")
    server.start()
    greeter = world.mesh.start("greeter", app_port=app_port, protocol="GRPC")
    assert world.mesh.xdsd is not None
    clients: list[subprocess.Popen[str]] = []

    def start_client(mesh_tls: bool) -> queue.Queue[str]:
        argv = [
            sys.executable,
            "-m",
            "xdsd.cli",
            "bootstrap",
            "--service",
            "caller",
            "--format",
            "grpc",
            "--xds",
            f"127.0.0.1:{world.mesh.xdsd.grpc_port}",
        ]
        if mesh_tls:
            argv += ["--settings", str(world.settings)]
        boot = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
        doc = json.loads(boot.stdout)
        assert ("certificate_providers" in doc) is mesh_tls, doc
        path = tmp_path / f"bootstrap-{mesh_tls}.json"
        path.write_text(json.dumps(doc))
        client = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).parents[1] / "grpc_client.py"),
                f"greeter:{greeter.inbound_port}",
                "--xds-credentials",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "GRPC_XDS_BOOTSTRAP": str(path)},
        )
        clients.append(client)
        seen: queue.Queue[str] = queue.Queue()
        threading.Thread(
            target=lambda: [seen.put(line.strip()) for line in client.stdout or []], daemon=True
        ).start()
        return seen

    def answers(seen: queue.Queue[str], n: int = 5) -> list[str]:
        return [seen.get(timeout=30) for _ in range(n)]

    try:
        secured = start_client(mesh_tls=True)
        wait_until(
            lambda: answers(secured) == ["greeter"] * 5,
            timeout=60,
            what="the proxyless client answered over mesh mTLS",
        )
        stats = greeter.stats()
        assert stats.get(f"listener.inbound_{greeter.inbound_port}.ssl.handshake", 0) > 0
        plain = start_client(mesh_tls=False)
        got = answers(plain, 2)  # each waits out the client's 5 s deadline
        assert all(line.startswith("error") for line in got), got
    finally:
        for client in clients:
            client.kill()
            client.wait()
        server.stop(None)


SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
XDSD_NAME = "xdsd.mesh.test"


def test_a_proxy_certificate_fetches_its_own_secret_and_no_other(tmp_path: Path) -> None:
    """The mesh certificates double as xDS client certificates: with xdsd requiring
    client certificates and mesh mTLS on, a mesh identity may speak for the nodes of its
    own service in its own namespace (no ``[authorized_nodes]`` needed), so a proxy gets
    its own ``default`` secret and cannot fetch another service's, nor the same
    service's in another namespace."""
    import grpc
    from envoy.config.core.v3 import base_pb2
    from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
    from envoy.service.discovery.v3 import discovery_pb2

    from tests.harness import Xdsd
    from tests.xds_clients import first_response_over_tls

    pki = tmp_path / "pki"
    ca = CertAuthority(pki)
    server = ca.issue("xdsd", dns_names=[XDSD_NAME], directory=tmp_path / "server")
    members = (("default", "client"), ("default", "web"), ("prod", "web"))
    for namespace, service in members:
        uri = f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service}"
        install(
            ca.issue(f"{namespace}-{service}", uris=[uri], directory=tmp_path / "issued"),
            pki / namespace / service,
        )
    path = tmp_path / "settings.toml"
    path.write_text(
        f'tls_cert = "{server.cert}"\ntls_key = "{server.key}"\n'
        f'tls_client_ca = "{ca.ca_path}"\n\n' + settings(pki, "STRICT")
    )
    config = tmp_path / "config" / "services"
    config.mkdir(parents=True)
    for n, (namespace, service) in enumerate(members, 1):
        (config / f"{namespace}-{service}.toml").write_text(
            f'kind = "Service"\nname = "{service}"\nnamespace = "{namespace}"\n[[ports]]\n'
            f'name = "http"\nnumber = 8080\nprotocol = "HTTP"\ntargetPort = 9090\n'
            f'[[endpoints]]\naddress = "10.9.0.{n}"\n'
        )

    def fetch(cert_of: tuple[str, str], node_of: tuple[str, str]) -> bytes | grpc.RpcError:
        """Ask for SDS ``default`` as a node of (namespace, service) ``node_of``,
        presenting the mesh certificate of ``cert_of``; its certificate chain, or the
        stream's error."""
        files = pki / cert_of[0] / cert_of[1]
        node = base_pb2.Node(id=f"{node_of[1]}-1", cluster=node_of[1])
        node.metadata.update({"namespace": node_of[0]})
        request = discovery_pb2.DiscoveryRequest(
            node=node, type_url=SECRET_TYPE, resource_names=["default"]
        )
        response = first_response_over_tls(
            xdsd.grpc_port,
            request,
            root=ca.ca_path.read_bytes(),
            key=(files / "key.pem").read_bytes(),
            chain=(files / "cert.pem").read_bytes(),
            server_name=XDSD_NAME,
        )
        if isinstance(response, grpc.RpcError):
            return response
        secret = secret_pb2.Secret()
        (packed,) = response.resources
        packed.Unpack(secret)
        assert secret.name == "default"
        return bytes(secret.tls_certificate.certificate_chain.inline_bytes)

    xdsd = Xdsd(tmp_path / "config", tmp_path, extra=["--settings", str(path)])
    try:
        for member in members:
            own = fetch(member, member)
            assert own == (pki / member[0] / member[1] / "cert.pem").read_bytes(), own
        for cert_of, node_of in (
            (("default", "client"), ("default", "web")),  # another service
            (("default", "web"), ("prod", "web")),  # the same service, another namespace
        ):
            denied = fetch(cert_of, node_of)
            assert isinstance(denied, grpc.RpcError), node_of
            assert denied.code() == grpc.StatusCode.PERMISSION_DENIED, denied.details()
            assert f"in namespace {node_of[0]!r}" in (denied.details() or "")
    finally:
        xdsd.stop()


def test_a_service_whose_certificate_directory_appears_later_is_served_then(
    world: World, tmp_path: Path
) -> None:
    """Its Service first, its certificate directory renamed into place afterwards: xdsd
    notices the new directory (its parent is watched) and serves the proxy its secret."""
    import json
    import urllib.error
    import urllib.request

    assert world.mesh.xdsd is not None
    world.mesh.service("late", [world.mesh.upstream("late-app")])
    body = json.dumps(
        {
            "node": {"id": "late-1", "cluster": "late", "metadata": {"outbound_ip": "127.0.0.2"}},
            "resource_names": ["default"],
        }
    ).encode()
    url = f"http://127.0.0.1:{world.mesh.xdsd.rest_port}/v3/discovery:secrets"

    def poll() -> int:
        request = urllib.request.Request(url, data=body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    wait_until(lambda: poll() == 500, what="the late service without its certificate")
    # Only once xdsd has loaded the service (so that no config change is left to find
    # the files) does the directory appear.
    clusters = f"http://127.0.0.1:{world.mesh.xdsd.rest_port}/v3/discovery:clusters"
    probe = json.dumps(
        {"node": {"id": "probe", "cluster": "client", "metadata": {"outbound_ip": "127.0.0.3"}}}
    ).encode()

    def late_loaded() -> bool:
        request = urllib.request.Request(clusters, data=probe, method="POST")
        with urllib.request.urlopen(request, timeout=5) as answer:
            return b"||late.default.svc.cluster.local" in answer.read()

    wait_until(late_loaded, what="xdsd to load the late service")
    staged = tmp_path / "late"
    install(world.ca.issue("late", uris=[identity("late")], directory=tmp_path / "issued"), staged)
    os.replace(staged, world.pki / "default" / "late")
    wait_until(lambda: poll() == 200, what="the late service's certificate to be served")
