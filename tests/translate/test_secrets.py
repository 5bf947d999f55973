"""SDS secrets from certificate files: TLS contexts name secrets, each class's snapshot
holds exactly the secrets its clusters and listeners name, a replaced file gives a new
secret version (and nothing else changes), REST classes fetch secrets by REST, gRPC keeps
refusing TLS, and static rendering keeps the bytes as static secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from tests.pem import FAKE_CERTIFICATE, write_fake_pem
from xdsd.errors import ConfigError, TranslationError
from xdsd.model import Mesh
from xdsd.resources import CLUSTER, LISTENER, SECRET
from xdsd.sources import DirectoryLoader
from xdsd.translate import (
    ClientKind,
    ConfigSourceKind,
    MeshTranslation,
    NodeClass,
    Role,
    render_static,
)

CONFIG = """\
kind: Service
name: web
ports: [{number: 8080, protocol: HTTP}]
endpoints: [{address: 10.0.0.1}]
---
kind: Service
name: api
ports: [{number: 8080, protocol: HTTP}]
endpoints: [{address: 10.0.0.2}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api}
spec:
  host: api
  trafficPolicy:
    tls:
      mode: MUTUAL
      clientCertificate: PKI/client.pem
      privateKey: PKI/client-key.pem
      caCertificates: PKI/ca.pem
      sni: api.test
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [web.example.com]
    tls: {mode: SIMPLE, serverCertificate: PKI/gw.pem, privateKey: PKI/gw-key.pem}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [web.example.com]
  gateways: [edge]
  http:
  - route: [{destination: {host: web}}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: narrow}
spec:
  workloadSelector: {labels: {app: narrow}}
  egress: [{hosts: ["./web.default.svc.cluster.local"]}]
"""

INGRESS = NodeClass("ingress", role=Role.GATEWAY, labels=(("istio", "ingressgateway"),))
EGRESS = NodeClass("egress", role=Role.GATEWAY, labels=(("istio", "egressgateway"),))
SIDECAR = NodeClass("client")
NARROW = NodeClass("client", labels=(("app", "narrow"),))
REST = NodeClass("client", config_source=ConfigSourceKind.REST)


def setup(tmp: Path) -> tuple[DirectoryLoader, Path]:
    """A config directory naming certificate files in a directory outside it."""
    pki = tmp / "pki"
    pki.mkdir()
    for name in ("client.pem", "client-key.pem", "ca.pem", "gw.pem", "gw-key.pem"):
        write_fake_pem(pki / name)
    config = tmp / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(CONFIG.replace("PKI", str(pki)))
    return DirectoryLoader(str(config)), pki


def names(pki: Path) -> tuple[str, str, str]:
    return (
        f"file-cert:{pki}/client.pem~{pki}/client-key.pem",
        f"file-root:{pki}/ca.pem",
        f"file-cert:{pki}/gw.pem~{pki}/gw-key.pem",
    )


def test_each_class_gets_exactly_the_secrets_it_names(tmp_path: Path) -> None:
    loader, pki = setup(tmp_path)
    mesh = loader.load().mesh
    client, ca, gateway = names(pki)
    translation = MeshTranslation(mesh)
    got = {
        node: sorted(translation.snapshot_for(node).get(SECRET))
        for node in (INGRESS, EGRESS, SIDECAR, NARROW, REST)
    }
    assert got[INGRESS] == sorted([client, ca, gateway])
    assert got[EGRESS] == sorted([client, ca])  # the api clusters, no server certificate
    assert got[SIDECAR] == sorted([client, ca])
    assert got[REST] == sorted([client, ca])
    assert got[NARROW] == []  # its Sidecar hides api, whose clusters name them
    secret = translation.snapshot_for(INGRESS).get(SECRET)[gateway].message
    assert secret.tls_certificate.certificate_chain.inline_bytes == (pki / "gw.pem").read_bytes()
    assert secret.tls_certificate.private_key.inline_bytes == (pki / "gw-key.pem").read_bytes()
    ca_secret = translation.snapshot_for(SIDECAR).get(SECRET)[ca].message
    assert ca_secret.validation_context.trusted_ca.inline_bytes.decode() == FAKE_CERTIFICATE


def test_tls_contexts_name_secrets_fetched_like_the_class_fetches(tmp_path: Path) -> None:
    loader, pki = setup(tmp_path)
    translation = MeshTranslation(loader.load().mesh)
    client, ca, gateway = names(pki)
    for node, kind in ((SIDECAR, "ads"), (REST, "api_config_source")):
        cluster = (
            translation.snapshot_for(node)
            .get(CLUSTER)["outbound|8080||api.default.svc.cluster.local"]
            .message
        )
        context = tls_pb2.UpstreamTlsContext()
        cluster.transport_socket.typed_config.Unpack(context)
        common = context.common_tls_context
        [certificate] = common.tls_certificate_sds_secret_configs
        validation = common.combined_validation_context.validation_context_sds_secret_config
        assert (certificate.name, validation.name) == (client, ca)
        for config in (certificate, validation):
            assert config.sds_config.WhichOneof("config_source_specifier") == kind
        assert not common.tls_certificates and not common.HasField("validation_context")
    listener = translation.snapshot_for(INGRESS).get(LISTENER)["0.0.0.0_443"].message
    context = tls_pb2.DownstreamTlsContext()
    listener.filter_chains[0].transport_socket.typed_config.Unpack(context)
    assert context.common_tls_context.tls_certificate_sds_secret_configs[0].name == gateway


def test_a_replaced_file_changes_only_its_secret(tmp_path: Path) -> None:
    loader, pki = setup(tmp_path)
    first = loader.load().mesh
    before = MeshTranslation(first).snapshot_for(INGRESS)
    client, _, gateway = names(pki)
    (pki / "gw.pem").write_text(FAKE_CERTIFICATE + "# renewed\n")
    second = loader.load([str(pki / "gw.pem")]).mesh
    assert second != first
    after = MeshTranslation(second, previous=MeshTranslation(first)).snapshot_for(INGRESS)
    assert after.version(SECRET) != before.version(SECRET)
    assert after.get(SECRET)[gateway].digest != before.get(SECRET)[gateway].digest
    assert after.get(SECRET)[client].digest == before.get(SECRET)[client].digest
    for kind in (CLUSTER, LISTENER):
        assert after.version(kind) == before.version(kind)
    # an unchanged reload gives an equal mesh: nothing to push
    assert loader.load([str(pki / "gw.pem")]).mesh == second


def test_an_incremental_translation_follows_a_secret_change(tmp_path: Path) -> None:
    loader, pki = setup(tmp_path)
    first_mesh = loader.load().mesh
    first = MeshTranslation(first_mesh)
    for node in (INGRESS, SIDECAR, NARROW):
        first.snapshot_for(node)
    (pki / "ca.pem").write_text(FAKE_CERTIFICATE + "# another CA\n")
    second_mesh = loader.load([str(pki / "ca.pem")]).mesh
    second = MeshTranslation(second_mesh, previous=first)
    cold = MeshTranslation(second_mesh)
    for node in (INGRESS, SIDECAR, NARROW):
        assert second.snapshot_for(node).versions == cold.snapshot_for(node).versions


@pytest.mark.parametrize(
    ("file", "content", "field", "message"),
    [
        ("gw-key.pem", "oops", "servers[0].tls.privateKey", "holds no PEM private key"),
        ("ca.pem", "oops", "trafficPolicy.tls.caCertificates", "holds no PEM certificate"),
        ("client.pem", None, "trafficPolicy.tls.clientCertificate", "cannot read"),
    ],
)
def test_bad_or_missing_files_are_errors_on_the_naming_line(
    tmp_path: Path, file: str, content: str | None, field: str, message: str
) -> None:
    loader, pki = setup(tmp_path)
    loader.load()
    if content is None:
        (pki / file).unlink()
    else:
        (pki / file).write_text(content)
    with pytest.raises(ConfigError) as err:
        loader.load([str(pki / file)])
    [problem] = err.value.problems
    assert (problem.field, str(pki / file) in problem.message) == (field, True)
    assert message in problem.message
    lines = (tmp_path / "config" / "mesh.yaml").read_text().splitlines()
    assert field.rsplit(".", 1)[1] + ":" in lines[problem.line - 1]


def test_grpc_still_refuses_tls_origination(tmp_path: Path) -> None:
    loader, _ = setup(tmp_path)
    grpc = NodeClass("web", client=ClientKind.GRPC)
    with pytest.raises(TranslationError, match="certificate providers"):
        MeshTranslation(loader.load().mesh).snapshot_for(grpc)


def test_static_rendering_keeps_the_bytes_as_static_secrets(tmp_path: Path) -> None:
    loader, pki = setup(tmp_path)
    mesh: Mesh = loader.load().mesh
    client, ca, gateway = names(pki)
    rendered = render_static(mesh, INGRESS, admin_port=15000)
    static = rendered["static_resources"]
    assert sorted(s["name"] for s in static["secrets"]) == sorted([client, ca, gateway])
    text = str(static["clusters"]) + str(static["listeners"])
    assert "sds_config" not in text and "filename" not in text
    assert client in text and gateway in text


def test_a_gateway_api_secrets_certificate_pair_is_found() -> None:
    """A Gateway API Secret's files are ``<secret>/NS/NAME/tls.crt`` (not absolute
    paths): the pair is still split where both halves are loaded files."""
    from xdsd.translate.secrets import Secrets, certificate_secret_name

    files = {
        "<secret>/default/a~b/tls.crt": b"chain",
        "<secret>/default/a~b/tls.key": b"key",
    }

    class Files:
        def certificate(self, path: str) -> bytes | None:
            return files.get(path)

    name = certificate_secret_name(*files)
    found = Secrets(Files()).get(name)  # type: ignore[arg-type]
    assert found is not None, name
    assert found.message.tls_certificate.certificate_chain.inline_bytes == b"chain"
    assert found.message.tls_certificate.private_key.inline_bytes == b"key"
    assert Secrets(Files()).get(name.replace("tls.key", "other")) is None  # type: ignore[arg-type]
