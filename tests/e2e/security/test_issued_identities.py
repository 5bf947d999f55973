"""Identities issued by xdsd's own CA (``[mesh.ca]``) to real Envoy sidecars whose
bootstrap carries only a token (``xdsd bootstrap --token-file``): they speak STRICT mesh
mTLS to each other, the callee's application learns the caller's SPIFFE id (XFCC), and
Envoy's ``/certs`` shows the issued certificate. A proxyless gRPC client whose certificate
files ``xdsd certificate`` fetched with a token calls through such a sidecar over the
same STRICT mTLS, and the sidecar's application sees its SPIFFE id. Streams whose token
does not hold — for another service, expired, revoked (ended on SIGHUP while connected),
forged, absent — end with the right gRPC status and get no ``default`` secret (real
grpcio ADS clients). Every case runs once per gRPC server implementation (``xdsd serve
--grpc-impl``: grpclib, grpcio)."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2

from tests.e2e.traffic_mesh import Sidecar, TrafficMesh
from tests.e2e.upstreams import Upstream
from tests.harness import free_port, wait_until
from xdsd.ca.tokens import TokenAuthority
from xdsd.settings import Settings

TRUST_DOMAIN = "mesh.test"
ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
SDS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def identity(service: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/default/sa/{service}"


def settings_text(state: Path, revoked: tuple[str, ...] = ()) -> str:
    listed = ", ".join(f'"{r}"' for r in revoked)
    return (
        "[mesh.mtls]\n"
        'mode = "STRICT"\n'
        f'trust_domain = "{TRUST_DOMAIN}"\n\n'
        "[mesh.ca]\n"
        f'state_dir = "{state}"\n'
        f"revoked_tokens = [{listed}]\n"
    )


@dataclass
class World:
    root: Path
    mesh: TrafficMesh
    settings: Path
    state: Path
    tokens: TokenAuthority
    client: Sidecar
    web: Sidecar
    app: Upstream

    def token(self, service: str, ttl: float = 3600.0) -> tuple[str, str]:
        """A token for ``service`` (default namespace) and its id."""
        minted = self.tokens.mint("default", service, ttl)
        return minted.token, minted.claims.token_id

    def token_file(self, service: str) -> Path:
        token, token_id = self.token(service)
        path = self.root / f"token-{service}-{token_id}"
        path.write_text(token + "\n")
        path.chmod(0o600)
        return path


@pytest.fixture(scope="module", params=["grpclib", "grpcio"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    root = tmp_path_factory.mktemp(f"issued-{request.param}")
    state = root / "state"
    with TrafficMesh(root) as mesh:
        path = root / "settings.toml"
        path.write_text(settings_text(state))
        ca = Settings.from_file(str(path)).mesh.ca
        assert ca is not None
        tokens = TokenAuthority(ca)  # generates the token key xdsd will read
        mesh.xdsd_args = ["--settings", str(path), "--grpc-impl", request.param]
        app_port = free_port()
        app = mesh.upstream("web-app", host="127.0.0.1", port=app_port)
        w = World(root, mesh, path, state, tokens, None, None, app)  # type: ignore[arg-type]
        w.web = mesh.start(
            "web", app_port=app_port, bootstrap_args=("--token-file", str(w.token_file("web")))
        )
        w.client = mesh.start(
            "client", bootstrap_args=("--token-file", str(w.token_file("client")))
        )
        yield w


def call_web(world: World) -> int:
    return world.client.request("web", port=world.web.inbound_port).status


def test_sidecars_with_only_a_token_speak_mutual_tls(world: World) -> None:
    world.client.wait_for(lambda: call_web(world) == 200, "client → web over issued mTLS")
    world.app.reset()
    reply = world.client.request("web", port=world.web.inbound_port)
    assert reply.status == 200 and reply.backend == "web-app"
    header = world.app.seen[-1].headers["x-forwarded-client-cert"]
    details = dict(part.split("=", 1) for part in header.split(";"))
    assert details["URI"] == identity("client") and details["By"] == identity("web"), details
    # Envoy's own view of its certificate: the SPIFFE id and a serial.
    certs = world.web.envoy.admin_json("/certs")["certificates"]
    chains = [c for entry in certs for c in entry.get("cert_chain", [])]
    uris = [san.get("uri") for c in chains for san in c.get("subject_alt_names", [])]
    assert identity("web") in uris
    serials = [c["serial_number"] for c in chains if c.get("serial_number")]
    assert serials
    # xdsd records who holds which identity (never a key) ...
    assert world.mesh.xdsd is not None
    clients = world.mesh.xdsd.admin("/debug/clients")
    text = str(clients)
    assert "PRIVATE KEY" not in text
    # ... and its debug views and state directory never show a workload key.
    dump = world.mesh.xdsd.admin("/debug/config_dump?node=web-sidecar")
    assert "default" not in {item["name"] for item in dump["resources"]["secrets"]}
    for path in world.state.rglob("*"):
        if path.is_file() and path.name not in ("ca.key", "token.key"):
            assert b"PRIVATE KEY" not in path.read_bytes(), path


def sidecar_node(node_id: str, service: str, like: Sidecar | None = None) -> base_pb2.Node:
    """A sidecar's node for ``service`` (at the addresses of ``like``, so that it can be
    configured)."""
    node = base_pb2.Node(id=node_id, cluster=service, user_agent_name="envoy")
    if like is None:
        node.metadata.update({"instance_ip": "127.0.0.1"})
    else:
        node.metadata.update({"instance_ip": like.ip, "outbound_ip": like.outbound_ip})
    return node


class Stream:
    """A grpcio ADS stream asking for the ``default`` secret, with ``token`` (if any)."""

    def __init__(self, port: int, node: base_pb2.Node, token: str | None) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        method = self.channel.stream_stream(
            ADS,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )
        self.requests: queue.Queue[Any] = queue.Queue()
        self.requests.put(
            discovery_pb2.DiscoveryRequest(node=node, type_url=SDS, resource_names=["default"])
        )
        metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
        self.call = method(iter(self.requests.get, None), metadata=metadata, timeout=60)

    def first(self) -> Any:
        """The first response, or the RpcError that ended the stream."""
        try:
            return next(self.call)
        except grpc.RpcError as e:
            return e

    def close(self) -> None:
        self.requests.put(None)
        self.call.cancel()
        self.channel.close()


def refused_with(world: World, node: base_pb2.Node, token: str | None) -> tuple[Any, str]:
    assert world.mesh.xdsd is not None
    stream = Stream(world.mesh.xdsd.grpc_port, node, token)
    try:
        got = stream.first()
    finally:
        stream.close()
    assert isinstance(got, grpc.RpcError), "the stream got a response"
    return got.code(), got.details()


def test_a_token_for_another_service_is_permission_denied(world: World) -> None:
    token, token_id = world.token("client")
    code, details = refused_with(world, sidecar_node("posing", "web"), token)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert token_id in details and token not in details


@pytest.mark.parametrize("case", ["expired", "forged", "absent", "malformed"])
def test_tokens_that_do_not_verify_are_unauthenticated(
    world: World, tmp_path: Path, case: str
) -> None:
    token: str | None
    if case == "expired":
        token = expired_token(world)
    elif case == "forged":
        other = Settings.from_file(str(world.settings)).mesh.ca
        assert other is not None
        forged = TokenAuthority(dataclasses.replace(other, state_dir=str(tmp_path / "other")))
        token = forged.mint("default", "client", 3600).token
    elif case == "malformed":
        token = "not.a.token"
    else:
        token = None
    code, details = refused_with(world, sidecar_node(f"n-{case}", "client"), token)
    assert code == grpc.StatusCode.UNAUTHENTICATED, details
    if token is not None:
        assert token not in details


def expired_token(world: World) -> str:
    """A token of the world's key whose expiry is long past (signed the way xdsd signs,
    with an ``exp`` in the past)."""
    ca = Settings.from_file(str(world.settings)).mesh.ca
    assert ca is not None
    minted = TokenAuthority(ca).mint("default", "client", 3600)
    header, _, _ = minted.token.split(".")
    now = int(time.time())
    claims = {
        "iss": "xdsd",
        "ns": "default",
        "svc": "client",
        "jti": minted.claims.token_id,
        "iat": now - 7200,
        "exp": now - 3600,
    }
    payload = base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode())
    signed = f"{header}.{payload.rstrip(b'=').decode()}"
    signature = world.tokens._key.sign(signed.encode())  # the test's own key
    return f"{signed}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def test_a_revoked_token_ends_its_connected_stream_on_sighup(world: World) -> None:
    assert world.mesh.xdsd is not None
    token, token_id = world.token("client")
    node = sidecar_node("revoked", "client", like=world.client)
    stream = Stream(world.mesh.xdsd.grpc_port, node, token)
    try:
        first = stream.first()
        assert isinstance(first, discovery_pb2.DiscoveryResponse), first
        secret = secret_pb2.Secret()
        first.resources[0].Unpack(secret)
        assert secret.name == "default"
        assert secret.tls_certificate.certificate_chain.inline_bytes
        world.settings.write_text(settings_text(world.state, revoked=(token_id,)))
        world.mesh.xdsd.proc.send_signal(signal.SIGHUP)
        ended = stream.first()
        assert isinstance(ended, grpc.RpcError), ended
        assert ended.code() == grpc.StatusCode.UNAUTHENTICATED
        assert token_id in ended.details()
    finally:
        stream.close()
    # a new stream with it is refused too; the other sidecars are untouched
    code, _ = refused_with(world, sidecar_node("revoked-2", "client"), token)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert call_web(world) == 200


def xfcc_echo(port: int) -> grpc.Server:
    """A gRPC application on 127.0.0.1:``port`` whose ``/test.Echo/Who`` answers the URI
    of the ``x-forwarded-client-cert`` its sidecar added (``none`` without one)."""

    def who(request: bytes, context: grpc.ServicerContext) -> bytes:
        headers = dict(context.invocation_metadata())
        header = str(headers.get("x-forwarded-client-cert", ""))
        details = dict(part.split("=", 1) for part in header.split(";") if "=" in part)
        return details.get("URI", "none").encode()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Echo", {"Who": grpc.unary_unary_rpc_method_handler(who)}
            ),
        )
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xdsd.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_a_proxyless_client_with_xdsd_certificate_files_speaks_mesh_mtls(
    world: World, tmp_path: Path
) -> None:
    """A proxyless gRPC client (grpcio, xDS channel credentials) whose bootstrap is
    ``xdsd bootstrap --format grpc --certificate-dir DIR``, DIR written by ``xdsd
    certificate`` with a token against the running daemon, calls greeter through its
    token-only Envoy sidecar over STRICT mesh mTLS: greeter's application sees the
    client's SPIFFE id. The same client without the files is refused by the sidecar."""
    assert world.mesh.xdsd is not None
    xds = f"127.0.0.1:{world.mesh.xdsd.grpc_port}"
    app_port = free_port()
    app = xfcc_echo(app_port)
    clients: list[subprocess.Popen[str]] = []
    try:
        greeter = world.mesh.start(
            "greeter",
            app_port=app_port,
            protocol="GRPC",
            bootstrap_args=("--token-file", str(world.token_file("greeter"))),
        )
        out = tmp_path / "caller-certificate"
        fetched = cli(
            "certificate",
            "--service",
            "caller",
            "--token-file",
            str(world.token_file("caller")),
            "--xds",
            xds,
            "--out",
            str(out),
        )
        assert fetched.returncode == 0, fetched.stderr
        leaf = x509.load_pem_x509_certificates((out / "cert.pem").read_bytes())[0]
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [identity("caller")]

        def start_client(certificate_dir: Path | None) -> queue.Queue[str]:
            argv = ["bootstrap", "--service", "caller", "--format", "grpc", "--xds", xds]
            if certificate_dir is not None:
                argv += ["--certificate-dir", str(certificate_dir)]
            boot = cli(*argv)
            assert boot.returncode == 0, boot.stderr
            doc = json.loads(boot.stdout)
            assert ("certificate_providers" in doc) is (certificate_dir is not None), doc
            path = tmp_path / f"bootstrap-{len(clients)}.json"
            path.write_text(boot.stdout)
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
                target=lambda: [seen.put(line.strip()) for line in client.stdout or []],
                daemon=True,
            ).start()
            return seen

        def answers(seen: queue.Queue[str], n: int) -> list[str]:
            return [seen.get(timeout=30) for _ in range(n)]

        secured = start_client(out)
        wait_until(
            lambda: answers(secured, 3) == [identity("caller")] * 3,
            timeout=60,
            what="the proxyless client's calls, its SPIFFE id seen by greeter's app",
        )
        handshakes = greeter.stats().get(f"listener.inbound_{greeter.inbound_port}.ssl.handshake")
        assert handshakes, "greeter's inbound listener completed no TLS handshake"
        # Without the files: plaintext, which the STRICT sidecar refuses in its handshake.
        failed = f"listener.inbound_{greeter.inbound_port}.ssl.connection_error"
        before = greeter.stats().get(failed, 0)
        plain = start_client(None)
        got = answers(plain, 1)  # waits out the client's 5 s deadline
        assert got[0].startswith("error"), got
        assert greeter.stats().get(failed, 0) > before
    finally:
        for client in clients:
            client.kill()
            client.wait()
        app.stop(None)
