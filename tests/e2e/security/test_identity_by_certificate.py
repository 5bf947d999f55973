"""Identities of xdsd's own CA (``[mesh.ca]``) for proxies that prove who they are with
the client certificate of an mTLS xDS listener (``tls_client_ca``), not a token: a real
Envoy whose xDS client certificate names service A (``spiffe://TD/ns/default/sa/a``)
and which has no token gets its ``default`` secret issued by xdsd's CA for A; the same
certificate claiming B is refused (PERMISSION_DENIED) and gets no secret. With a token
and a certificate both must hold (docs/operations.md, "What a proxy needs to get an
identity from xdsd's CA"): a token for A with a certificate for B is refused whether the
node claims A or B, a token and a certificate for A get A. Every case runs once per gRPC
server implementation (``xdsd serve --grpc-impl``: grpclib, grpcio)."""

from __future__ import annotations

import base64
import re
import ssl
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2

from tests.e2e.certs import CertAuthority, CertFiles
from tests.e2e.traffic_mesh import Sidecar, TrafficMesh
from tests.harness import wait_until
from tests.xds_clients import first_response_over_tls
from xdsd.ca.tokens import TokenAuthority
from xdsd.settings import Settings

TRUST_DOMAIN = "mesh.test"
SERVER_NAME = "xdsd.mesh.test"
OPS = "spiffe://mesh.test/ops"
SDS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def identity(service: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/default/sa/{service}"


@dataclass
class World:
    """xdsd serving xDS over mTLS (clients' certificates of the test CA ``pki``) with
    ``[mesh.ca]``; ``a`` a real Envoy of service a holding only ``certs["a"]``."""

    mesh: TrafficMesh
    pki: CertAuthority
    certs: dict[str, CertFiles]
    state: Path
    tokens: TokenAuthority
    a: Sidecar

    def ads(self, cert: str, node: base_pb2.Node, token: str = "") -> Any:
        """The first response of an SDS stream asking for ``default`` as ``node``,
        presenting the client certificate ``certs[cert]`` and ``token`` (if any); or
        the RpcError the stream ended with."""
        assert self.mesh.xdsd is not None
        files = self.certs[cert]
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        return first_response_over_tls(
            self.mesh.xdsd.grpc_port,
            discovery_pb2.DiscoveryRequest(node=node, type_url=SDS, resource_names=["default"]),
            root=self.pki.ca_path.read_bytes(),
            key=files.key.read_bytes(),
            chain=files.cert.read_bytes(),
            server_name=SERVER_NAME,
            metadata=metadata,
        )

    def ca_certificate(self) -> x509.Certificate:
        """xdsd's generated signing authority (``STATE_DIR/default/ca.crt``)."""
        return x509.load_pem_x509_certificate((self.state / "default" / "ca.crt").read_bytes())

    def admin(self, path: str) -> str:
        """``path`` of xdsd's admin server (mTLS too), as the operator (``ops``)."""
        assert self.mesh.xdsd is not None
        context = ssl.create_default_context(cafile=str(self.pki.ca_path))
        context.check_hostname = False  # reached by address; the CA is what is checked
        context.load_cert_chain(self.certs["ops"].cert, self.certs["ops"].key)
        url = f"https://127.0.0.1:{self.mesh.xdsd.admin_port}{path}"
        with urllib.request.urlopen(url, timeout=10, context=context) as r:
            return str(r.read().decode())

    def refusals(self) -> float:
        """``xdsd_refused_total{listener="grpc",reason="permission_denied"}`` now."""
        text = self.admin("/metrics")
        found = re.search(
            r'xdsd_refused_total\{listener="grpc",reason="permission_denied"\} ([0-9.e+]+)', text
        )
        return float(found.group(1)) if found else 0.0


@pytest.fixture(scope="module", params=["grpclib", "grpcio"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    root = tmp_path_factory.mktemp(f"by-certificate-{request.param}")
    pki = CertAuthority(root / "pki")
    server = pki.issue("xdsd", dns_names=[SERVER_NAME])
    certs = {s: pki.issue(s, uris=[identity(s)]) for s in ("a", "b")}
    certs["ops"] = pki.issue("ops", uris=[OPS])
    state = root / "state"
    path = root / "settings.toml"
    path.write_text(
        f'tls_cert = "{server.cert}"\ntls_key = "{server.key}"\n'
        f'tls_client_ca = "{pki.ca_path}"\n'
        f'admin_sans = ["{OPS}"]\n\n'
        "[mesh.mtls]\n"
        'mode = "STRICT"\n'
        f'trust_domain = "{TRUST_DOMAIN}"\n\n'
        "[mesh.ca]\n"
        f'state_dir = "{state}"\n'
    )
    ca = Settings.from_file(str(path)).mesh.ca
    assert ca is not None
    tokens = TokenAuthority(ca)  # generates the token key xdsd will read
    with TrafficMesh(root) as mesh:
        mesh.xdsd_args = ["--settings", str(path), "--grpc-impl", request.param]
        mesh.service("b", [mesh.upstream("b-1")])
        a = mesh.start(
            "a",
            bootstrap_args=(
                "--xds-tls-ca",
                str(pki.ca_path),
                "--xds-tls-cert",
                str(certs["a"].cert),
                "--xds-tls-key",
                str(certs["a"].key),
                "--xds-tls-server-name",
                SERVER_NAME,
            ),
        )
        yield World(mesh, pki, certs, state, tokens, a)


def node(service: str, like: Sidecar | None = None) -> base_pb2.Node:
    """A sidecar's node of ``service`` (at ``like``'s addresses, when given)."""
    n = base_pb2.Node(id=f"{service}-probe", cluster=service, user_agent_name="envoy")
    if like is None:
        n.metadata.update({"instance_ip": "127.0.0.1"})
    else:
        n.metadata.update({"instance_ip": like.ip, "outbound_ip": like.outbound_ip})
    return n


def leaf_of(response: Any) -> x509.Certificate:
    """The leaf certificate of the ``default`` secret in an SDS response."""
    assert isinstance(response, discovery_pb2.DiscoveryResponse), response
    (packed,) = response.resources
    secret = secret_pb2.Secret()
    packed.Unpack(secret)
    assert secret.name == "default"
    assert secret.tls_certificate.private_key.inline_bytes  # the proxy's own new key
    chain = x509.load_pem_x509_certificates(secret.tls_certificate.certificate_chain.inline_bytes)
    return chain[0]


def spiffe_ids(cert: x509.Certificate) -> list[str]:
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sans.get_values_for_type(x509.UniformResourceIdentifier)


def issued_lines(world: World, node_id: str, proof: str = "") -> list[str]:
    """xdsd's log lines about issuing a's identity to ``node_id`` (with ``proof``)."""
    assert world.mesh.xdsd is not None
    return [
        line
        for line in world.mesh.xdsd.log().splitlines()
        if f"node={node_id}: identity issued: {identity('a')}" in line and proof in line
    ]


def assert_issued_by_xdsd_for(world: World, cert: x509.Certificate, service: str) -> None:
    """``cert`` names ``service`` only and is signed by xdsd's CA, not the test CA that
    signed the xDS client certificate."""
    assert spiffe_ids(cert) == [identity(service)]
    ca = world.ca_certificate()
    cert.verify_directly_issued_by(ca)
    assert cert.issuer == ca.subject


def test_an_envoy_with_a_certificate_for_a_and_no_token_gets_as_identity(world: World) -> None:
    def issued() -> dict[str, Any]:
        dump = world.a.envoy.admin_json("/config_dump?resource=dynamic_active_secrets")
        return {c["name"]: c for c in dump.get("configs", [])}

    wait_until(lambda: "default" in issued(), what="Envoy a's default secret")
    pem = issued()["default"]["secret"]["tls_certificate"]["certificate_chain"]["inline_bytes"]
    leaf = x509.load_pem_x509_certificates(base64.b64decode(pem))[0]
    assert_issued_by_xdsd_for(world, leaf, "a")
    # xdsd logged how it proved itself: by its certificate, no token.
    wait_until(lambda: issued_lines(world, "a-sidecar"), what="a's issue logged")
    lines = issued_lines(world, "a-sidecar")
    assert all(line.endswith("(certificate)") for line in lines), lines


def test_a_certificate_for_a_gets_a_and_cannot_get_b(world: World) -> None:
    own = world.ads("a", node("a", like=world.a))
    assert_issued_by_xdsd_for(world, leaf_of(own), "a")
    before = world.refusals()
    denied = world.ads("a", node("b"))
    assert isinstance(denied, grpc.RpcError), "a's certificate got b's secret"
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED, denied.details()
    assert identity("a") in (denied.details() or "")
    wait_until(lambda: world.refusals() > before, what="the refusal counted")


@pytest.mark.parametrize("claims", ["a", "b"])
def test_a_token_for_a_with_a_certificate_for_b_is_refused(world: World, claims: str) -> None:
    """Both must hold: claiming a, the certificate (b) may not speak for a; claiming b,
    the token (a) names another service."""
    token = world.tokens.mint("default", "a", 3600).token
    denied = world.ads("b", node(claims, like=world.a if claims == "a" else None), token)
    assert isinstance(denied, grpc.RpcError), f"claiming {claims} got a secret"
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED, denied.details()
    details = denied.details() or ""
    if claims == "a":  # the certificate's check refused it
        assert f"client certificate (SANs: {identity('b')})" in details, details
    else:  # the certificate allows b; the token's check refused it
        assert "is for service 'a'" in details and "claims service 'b'" in details, details


def test_a_token_and_a_certificate_for_a_get_a(world: World) -> None:
    token = world.tokens.mint("default", "a", 3600)
    own = world.ads("a", node("a", like=world.a), token.token)
    assert_issued_by_xdsd_for(world, leaf_of(own), "a")
    # the lease is the token's (its renewal checks the token), as xdsd logs (a queue)
    wait_until(
        lambda: issued_lines(world, "a-probe", f"(token {token.claims.token_id})"),
        what="the token's issue logged",
    )
