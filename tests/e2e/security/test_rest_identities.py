"""Identities for REST proxies under xdsd's own CA (``[mesh.ca]``): a real ``xdsd serve``
whose REST listener requires client certificates, and real Envoys polling it over REST
(``xdsd bootstrap --transport rest --xds-tls-*``) with a client certificate whose SAN is
their mesh identity. Each receives its own ``default`` secret, issued by xdsd's CA (Envoy's
``/certs``), and the two speak STRICT mesh mTLS; with a short ``workload_ttl`` the
certificate is renewed on a later poll (its serial in ``/certs`` changes); a client
certificate for one service claiming another gets 403 and no secret."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.e2e.certs import CertAuthority, CertFiles
from tests.e2e.traffic_mesh import Sidecar, TrafficMesh
from tests.e2e.upstreams import Upstream
from tests.harness import free_port, wait_until

TRUST_DOMAIN = "mesh.test"
SERVER_NAME = "xdsd.mesh.test"
SDS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
#: Short enough that a test sees renewals (at half life), long enough for Envoy to start.
WORKLOAD_TTL = "20s"


def identity(service: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/default/sa/{service}"


@dataclass
class World:
    mesh: TrafficMesh
    ca: CertAuthority
    state: Path
    certs: dict[str, CertFiles]
    client: Sidecar
    web: Sidecar
    app: Upstream


def _bootstrap_tls(ca: CertAuthority, cert: CertFiles) -> tuple[str, ...]:
    return (
        "--xds-tls-ca",
        str(ca.ca_path),
        "--xds-tls-cert",
        str(cert.cert),
        "--xds-tls-key",
        str(cert.key),
        "--xds-tls-server-name",
        SERVER_NAME,
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("rest-identities")
    ca = CertAuthority(root / "pki")
    server = ca.issue("xdsd", dns_names=[SERVER_NAME])
    certs = {name: ca.issue(name, uris=[identity(name)]) for name in ("web", "client")}
    state = root / "state"
    with TrafficMesh(root) as mesh:
        settings = root / "settings.toml"
        settings.write_text(
            f'tls_cert = "{server.cert}"\ntls_key = "{server.key}"\n'
            f'tls_client_ca = "{ca.ca_path}"\n\n'
            f'[mesh.mtls]\nmode = "STRICT"\ntrust_domain = "{TRUST_DOMAIN}"\n\n'
            f'[mesh.ca]\nstate_dir = "{state}"\nworkload_ttl = "{WORKLOAD_TTL}"\n'
        )
        mesh.xdsd_args = ["--settings", str(settings)]
        app_port = free_port()
        app = mesh.upstream("web-app", host="127.0.0.1", port=app_port)
        web = mesh.start(
            "web",
            transport="rest",
            app_port=app_port,
            bootstrap_args=_bootstrap_tls(ca, certs["web"]),
        )
        client = mesh.start(
            "client", transport="rest", bootstrap_args=_bootstrap_tls(ca, certs["client"])
        )
        yield World(mesh, ca, state, certs, client, web, app)


def _own_certificates(sidecar: Sidecar) -> list[dict[str, Any]]:
    """The certificates (not CAs) Envoy's ``/certs`` shows."""
    entries = sidecar.envoy.admin_json("/certs").get("certificates", [])
    return [c for entry in entries for c in entry.get("cert_chain", [])]


def _serials(sidecar: Sidecar, service: str) -> set[str]:
    """The serials of the certificates for ``service``'s identity Envoy holds."""
    return {
        c["serial_number"]
        for c in _own_certificates(sidecar)
        if any(san.get("uri") == identity(service) for san in c.get("subject_alt_names", []))
    }


def _xdsd_ca(world: World) -> x509.Certificate:
    """The certificate of the authority xdsd generated in its state directory."""
    (path,) = world.state.glob("*/ca.crt")
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_rest_sidecars_with_client_certificates_speak_issued_mutual_tls(world: World) -> None:
    def call() -> int:
        return world.client.request("web", port=world.web.inbound_port).status

    world.client.wait_for(lambda: call() == 200, "client → web over issued mTLS (REST)")
    world.app.reset()
    assert call() == 200
    header = world.app.seen[-1].headers["x-forwarded-client-cert"]
    details = dict(part.split("=", 1) for part in header.split(";"))
    assert details["URI"] == identity("client") and details["By"] == identity("web"), details
    # Envoy holds a certificate for its identity, issued by xdsd's CA (not the test's PKI
    # its xDS client certificate came from)
    assert _serials(world.web, "web")
    authority = _xdsd_ca(world)
    cas = world.web.envoy.admin_json("/certs")["certificates"]
    # Envoy writes a serial's hex with its leading zeros (whole bytes): compare numbers
    ca_serials = {int(c["serial_number"], 16) for entry in cas for c in entry.get("ca_cert", [])}
    assert authority.serial_number in ca_serials, ca_serials


def test_a_rest_sidecars_certificate_is_renewed_on_a_later_poll(world: World) -> None:
    first = _serials(world.web, "web")
    assert first
    wait_until(
        lambda: _serials(world.web, "web") - first,
        timeout=90,
        interval=0.5,
        what="web's issued certificate renewed (a new serial in /certs)",
    )
    assert world.client.request("web", port=world.web.inbound_port).status == 200


def _poll_secret(world: World, cert: CertFiles, service: str) -> tuple[int, Any]:
    assert world.mesh.xdsd is not None
    context = ssl.create_default_context(cafile=str(world.ca.ca_path))
    context.check_hostname = False
    context.load_cert_chain(cert.cert, cert.key)
    body = json.dumps(
        {
            "node": {"id": f"posing-{service}", "cluster": service},
            "resource_names": ["default"],
            "type_url": SDS,
        }
    ).encode()
    url = f"https://127.0.0.1:{world.mesh.xdsd.rest_port}/v3/discovery:secrets"
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, data=body), timeout=10, context=context
        ) as r:
            return int(r.status), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_a_client_certificate_for_a_cannot_get_bs_identity(world: World) -> None:
    status, body = _poll_secret(world, world.certs["client"], "web")
    assert status == 403, body
    assert identity("client") in body["message"] and "PRIVATE KEY" not in json.dumps(body)
    # the same poll with web's own certificate gets web's secret
    status, body = _poll_secret(world, world.certs["web"], "web")
    assert status == 200, body
    (secret,) = body["resources"]
    chain = secret["tls_certificate"]["certificate_chain"]["inline_bytes"]
    leaf = x509.load_pem_x509_certificate(base64.b64decode(chain))
    uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(u) for u in uris.get_values_for_type(x509.UniformResourceIdentifier)] == [
        identity("web")
    ]
    assert leaf.issuer == _xdsd_ca(world).subject
