"""TLS on xdsd's own listeners and node authorization, with a real Envoy connected over
mTLS (its bootstrap from ``xdsd bootstrap --xds-tls-*``): it is served and routes; a
client without a valid certificate is refused by xdsd; a client whose certificate names
node A cannot speak for node B (gRPC PERMISSION_DENIED, REST 403), counted in metrics.
Every test with a daemon runs once per gRPC server implementation (grpclib, grpcio)."""

from __future__ import annotations

import json
import re
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from tests.e2e.certs import CertAuthority, CertFiles
from tests.e2e.traffic_mesh import Sidecar, TrafficMesh
from tests.xds_clients import first_response_over_tls

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
SERVER_NAME = "xdsd.mesh.test"


class Pki:
    """The test CA, xdsd's server certificate and the clients' certificates."""

    def __init__(self, directory: Path) -> None:
        self.ca = CertAuthority(directory)
        self.server = self.ca.issue("xdsd", dns_names=[SERVER_NAME])
        self.client = self.ca.issue("client", uris=["spiffe://mesh.test/client"])
        self.other = self.ca.issue("other", uris=["spiffe://mesh.test/other"])
        self.stranger = CertAuthority(directory / "stranger", "another CA").issue(
            "stranger", uris=["spiffe://mesh.test/client"]
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module", params=["grpclib", "grpcio"])
def mesh(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pki: Pki
) -> Iterator[TrafficMesh]:
    root = tmp_path_factory.mktemp(f"tls-{request.param}")
    with TrafficMesh(root) as m:
        (root / "settings.toml").write_text(
            f'tls_cert = "{pki.server.cert}"\ntls_key = "{pki.server.key}"\n'
            f'tls_client_ca = "{pki.ca.ca_path}"\n\n'
            "[authorized_nodes]\n"
            '"spiffe://mesh.test/client" = { node_ids = ["client-sidecar", "poller-sidecar"] }\n'
            '"spiffe://mesh.test/other" = { services = ["other"] }\n'
        )
        m.xdsd_args = ["--settings", str(root / "settings.toml"), "--grpc-impl", request.param]
        m.service("echo", [m.upstream("echo-1")])
        yield m


@pytest.fixture(scope="module")
def client(mesh: TrafficMesh, pki: Pki) -> Sidecar:
    return mesh.start(
        bootstrap_args=(
            "--xds-tls-ca",
            str(pki.ca.ca_path),
            "--xds-tls-cert",
            str(pki.client.cert),
            "--xds-tls-key",
            str(pki.client.key),
            "--xds-tls-server-name",
            SERVER_NAME,
        )
    )


def _https(pki: Pki, cert: CertFiles | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca.ca_path))
    context.check_hostname = False  # xdsd is reached by address; the CA is what is checked
    if cert is not None:
        context.load_cert_chain(cert.cert, cert.key)
    return context


def _admin(mesh: TrafficMesh, pki: Pki, path: str, cert: CertFiles | None) -> str:
    assert mesh.xdsd is not None
    url = f"https://127.0.0.1:{mesh.xdsd.admin_port}{path}"
    with urllib.request.urlopen(url, timeout=10, context=_https(pki, cert)) as r:
        return str(r.read().decode())


def _ads(mesh: TrafficMesh, pki: Pki, cert: CertFiles | None, node: base_pb2.Node) -> Any:
    """Open an ADS stream over TLS (presenting ``cert``) as ``node``; return the first
    response, or the RpcError the stream ended with."""
    assert mesh.xdsd is not None
    return first_response_over_tls(
        mesh.xdsd.grpc_port,
        discovery_pb2.DiscoveryRequest(node=node, type_url=CDS),
        root=pki.ca.ca_path.read_bytes(),
        key=cert.key.read_bytes() if cert else None,
        chain=cert.cert.read_bytes() if cert else None,
        server_name=SERVER_NAME,
    )


def _refusals(mesh: TrafficMesh, pki: Pki) -> dict[tuple[str, str], float]:
    text = _admin(mesh, pki, "/metrics", pki.client)
    found = re.findall(r'xdsd_refused_total\{listener="(\w+)",reason="(\w+)"\} ([0-9.e+]+)', text)
    return {(listener, reason): float(n) for listener, reason, n in found}


def test_envoy_over_mtls_is_served_and_routes(mesh: TrafficMesh, client: Sidecar, pki: Pki) -> None:
    assert client.request("echo").backend == "echo-1"
    clients = json.loads(_admin(mesh, pki, "/debug/clients", pki.client))
    assert any(c.get("node_id") == "client-sidecar" for c in clients), clients
    # served, not just configured once: an edit reaches it
    mesh.service("later", [mesh.upstream("later-1")])
    client.wait_for(lambda: client.request("later").backend == "later-1", "later routed")
    tls_stats = client.stats()
    assert tls_stats.get("cluster.xds_cluster.ssl.handshake", 0) >= 1


@pytest.mark.parametrize("who", ["no-certificate", "another-CA"])
def test_a_client_without_a_valid_certificate_is_refused(
    mesh: TrafficMesh, client: Sidecar, pki: Pki, who: str
) -> None:
    cert = None if who == "no-certificate" else pki.stranger
    outcome = _ads(mesh, pki, cert, base_pb2.Node(id="client-sidecar", cluster="client"))
    assert isinstance(outcome, grpc.RpcError)
    assert outcome.code() == grpc.StatusCode.UNAVAILABLE, outcome.details()
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        _admin(mesh, pki, "/healthz", cert)
    assert client.request("echo").backend == "echo-1"


def test_plaintext_is_refused(mesh: TrafficMesh, client: Sidecar) -> None:
    assert mesh.xdsd is not None
    with grpc.insecure_channel(f"127.0.0.1:{mesh.xdsd.grpc_port}") as channel:
        request = discovery_pb2.DiscoveryRequest(
            node=base_pb2.Node(id="client-sidecar", cluster="client"), type_url=CDS
        )
        with pytest.raises(grpc.RpcError) as info:
            next(channel.stream_stream(ADS)(iter([request.SerializeToString()]), timeout=20))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


def test_a_certificate_for_node_a_cannot_speak_for_node_b(
    mesh: TrafficMesh, client: Sidecar, pki: Pki
) -> None:
    before = _refusals(mesh, pki).get(("grpc", "permission_denied"), 0)
    # "other" may speak for service other only
    denied = _ads(mesh, pki, pki.other, base_pb2.Node(id="client-sidecar", cluster="client"))
    assert isinstance(denied, grpc.RpcError)
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED, denied.details()
    assert "spiffe://mesh.test/other" in (denied.details() or "")
    served = _ads(mesh, pki, pki.other, base_pb2.Node(id="other-1", cluster="other"))
    assert isinstance(served, discovery_pb2.DiscoveryResponse) and served.type_url == CDS
    # "client" may speak for node client-sidecar only, whatever service it names
    denied = _ads(mesh, pki, pki.client, base_pb2.Node(id="other-1", cluster="other"))
    assert isinstance(denied, grpc.RpcError)
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _refusals(mesh, pki)[("grpc", "permission_denied")] >= before + 2
    assert client.request("echo").backend == "echo-1"


def test_a_rest_envoy_polls_over_mtls(mesh: TrafficMesh, client: Sidecar, pki: Pki) -> None:
    poller = mesh.start(
        "poller",
        transport="rest",
        bootstrap_args=(
            "--xds-tls-ca",
            str(pki.ca.ca_path),
            "--xds-tls-cert",
            str(pki.client.cert),
            "--xds-tls-key",
            str(pki.client.key),
            "--xds-tls-server-name",
            SERVER_NAME,
        ),
    )
    poller.wait_for(lambda: poller.request("echo").backend == "echo-1", "REST Envoy routed")


def _rest(mesh: TrafficMesh, pki: Pki, cert: CertFiles, node: dict[str, str]) -> int:
    assert mesh.xdsd is not None
    url = f"https://127.0.0.1:{mesh.xdsd.rest_port}/v3/discovery:clusters"
    body = json.dumps({"node": node}).encode()
    request = urllib.request.Request(url, data=body)
    try:
        with urllib.request.urlopen(request, timeout=10, context=_https(pki, cert)) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


def test_rest_authorizes_nodes_too(mesh: TrafficMesh, client: Sidecar, pki: Pki) -> None:
    node = {"id": "client-sidecar", "cluster": "client"}
    assert _rest(mesh, pki, pki.other, node) == 403
    assert _rest(mesh, pki, pki.client, node) == 200
    # the same body from another certificate is checked again (not taken from a cache)
    assert _rest(mesh, pki, pki.other, node) == 403
    assert _refusals(mesh, pki)[("rest", "permission_denied")] >= 2


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('tls_cert = "c.pem"\n', "tls_cert and tls_key go together"),
        ('tls_client_ca = "ca.pem"\n', "needs tls_cert"),
        (
            'tls_cert = "c"\ntls_key = "k"\n[authorized_nodes]\n"a" = { services = ["x"] }\n',
            "needs tls_client_ca",
        ),
        (
            'tls_cert = "c"\ntls_key = "k"\ntls_client_ca = "ca"\n[authorized_nodes]\n"a" = {}\n',
            "names no node_ids and no services",
        ),
        (
            'tls_cert = "c"\ntls_key = "k"\ntls_client_ca = "ca"\n[authorized_nodes]\n'
            '"a" = { node_ids = "x" }\n',
            "a list of names",
        ),
        ("admin_tls = 1\n", "true or false"),
    ],
)
def test_tls_settings_that_cannot_work_are_errors(tmp_path: Path, text: str, fragment: str) -> None:
    from xdsd.errors import ConfigError
    from xdsd.settings import Settings

    path = tmp_path / "settings.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        Settings.from_file(str(path))
    assert fragment in str(info.value)


def test_grpc_bootstrap_gets_tls_channel_credentials(pki: Pki) -> None:
    import contextlib
    import io

    from xdsd.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            [
                "bootstrap",
                "--service",
                "a",
                "--format",
                "grpc",
                "--xds-tls-ca",
                str(pki.ca.ca_path),
                "--xds-tls-cert",
                str(pki.client.cert),
                "--xds-tls-key",
                str(pki.client.key),
            ]
        )
    assert code == 0
    creds = json.loads(out.getvalue())["xds_servers"][0]["channel_creds"]
    assert creds == [
        {
            "type": "tls",
            "config": {
                "ca_certificate_file": str(pki.ca.ca_path),
                "certificate_file": str(pki.client.cert),
                "private_key_file": str(pki.client.key),
            },
        }
    ]
    assert main(["bootstrap", "--service", "a", "--xds-tls-cert", "c.pem"]) == 2
