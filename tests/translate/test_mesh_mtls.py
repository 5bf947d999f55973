"""Mesh mutual TLS (``[mesh.mtls]``): the settings, how the loader reads its files and
refuses ISTIO_MUTUAL without it, and what each class receives — ISTIO_MUTUAL clusters to
the mesh's own services (checking the callee's SPIFFE id), inbound listeners that require
(STRICT) or accept (PERMISSIVE) mesh certificates, and its own ``default`` and ``ROOTCA``
secrets; Envoy accepts every variant."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from tests.e2e.certs import CertAuthority
from tests.harness import envoy_accepts
from xdsd.errors import ConfigError, TranslationError
from xdsd.model.mesh_config import DEFAULT_MESH_CONFIG, MeshConfig, MeshTLS, MTLSMode
from xdsd.resources import CLUSTER, LISTENER, SECRET
from xdsd.settings import Settings
from xdsd.sources import load_directory
from xdsd.translate import ClientKind, MeshTranslation, NodeClass, Role, render_static

CONFIG = """\
kind: Service
name: web
ports: [{number: 8080, protocol: HTTP}, {number: 9000, name: db, protocol: TCP}]
endpoints: [{address: 10.0.0.1}]
---
kind: Service
name: api
ports: [{number: 8081, protocol: GRPC}]
endpoints: [{address: 10.0.0.2}]
---
kind: Service
name: legacy
ports: [{number: 8082, protocol: HTTP}]
endpoints: [{address: 10.0.0.3}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: legacy}
spec:
  host: legacy
  trafficPolicy: {tls: {mode: DISABLE}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: https, protocol: TLS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vm}
spec:
  hosts: [vm.internal]
  location: MESH_INTERNAL
  ports: [{number: 7070, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.9}]
  subjectAltNames: ["spiffe://mesh.test/ns/default/sa/vm"]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8443, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: ["*"]
  gateways: [edge]
  http:
  - route: [{destination: {host: web, port: {number: 8080}}}]
"""

WEB = NodeClass("web", instance_ip="10.0.0.1", outbound_ip="127.0.0.2")
INGRESS = NodeClass("ingress", role=Role.GATEWAY, labels=(("istio", "ingressgateway"),))
TRUST = "mesh.test"


def pki(root: Path) -> CertAuthority:
    """The mesh CA, and certificates for web, api and the ingress gateway at
    ``root/pki/default/SERVICE/{cert,key}.pem``."""
    ca = CertAuthority(root / "pki")
    for service in ("web", "api", "ingress"):
        files = ca.issue(
            service,
            uris=[f"spiffe://{TRUST}/ns/default/sa/{service}"],
            directory=root / "pki" / "default" / service,
        )
        files.cert.rename(files.cert.with_name("cert.pem"))
        files.key.rename(files.key.with_name("key.pem"))
    return ca


def mesh_tls(root: Path, mode: MTLSMode = MTLSMode.STRICT, **changes: Any) -> MeshTLS:
    tls = MeshTLS(
        mode=mode,
        ca=str(root / "pki" / "ca.pem"),
        certificate=str(root / "pki" / "{namespace}" / "{service}" / "cert.pem"),
        private_key=str(root / "pki" / "{namespace}" / "{service}" / "key.pem"),
        trust_domain=TRUST,
    )
    return dataclasses.replace(tls, **changes)


def translation(root: Path, tls: MeshTLS, config: str = CONFIG) -> MeshTranslation:
    (root / "config").mkdir(exist_ok=True)
    (root / "config" / "mesh.yaml").write_text(config)
    mesh = load_directory(str(root / "config"), mesh_tls=tls).mesh
    return MeshTranslation(mesh, mesh_config=MeshConfig(mtls=tls))


def upstream_tls(cluster: Any) -> tls_pb2.UpstreamTlsContext | None:
    if not cluster.HasField("transport_socket"):
        return None
    context = tls_pb2.UpstreamTlsContext()
    cluster.transport_socket.typed_config.Unpack(context)
    return context


def test_clusters_to_mesh_services_originate_mutual_tls_checking_the_callees_identity(
    tmp_path: Path,
) -> None:
    pki(tmp_path)
    snapshot = translation(tmp_path, mesh_tls(tmp_path)).snapshot_for(WEB)
    clusters = snapshot.get(CLUSTER)
    api = upstream_tls(clusters["outbound|8081||api.default.svc.cluster.local"].message)
    assert api is not None
    common = api.common_tls_context
    assert [c.name for c in common.tls_certificate_sds_secret_configs] == ["default"]
    combined = common.combined_validation_context
    assert combined.validation_context_sds_secret_config.name == "ROOTCA"
    sans = combined.default_validation_context.match_typed_subject_alt_names
    assert [s.matcher.exact for s in sans] == [f"spiffe://{TRUST}/ns/default/sa/api"]
    assert list(common.alpn_protocols) == ["h2"]  # a GRPC port
    # TCP ports too; a MESH_INTERNAL entry, checked against its subjectAltNames; not a
    # ServiceEntry host outside the mesh (the default), nor where a rule says DISABLE.
    assert upstream_tls(clusters["outbound|9000||web.default.svc.cluster.local"].message)
    vm = upstream_tls(clusters["outbound|7070||vm.internal"].message)
    assert vm is not None
    vm_sans = vm.common_tls_context.combined_validation_context.default_validation_context
    assert [s.matcher.exact for s in vm_sans.match_typed_subject_alt_names] == [
        "spiffe://mesh.test/ns/default/sa/vm"
    ]
    assert upstream_tls(clusters["outbound|443||api.example.com"].message) is None
    assert upstream_tls(clusters["outbound|8082||legacy.default.svc.cluster.local"].message) is None


def test_each_class_gets_its_own_certificate_and_the_mesh_ca(tmp_path: Path) -> None:
    pki(tmp_path)
    tr = translation(tmp_path, mesh_tls(tmp_path))
    web, ingress = tr.snapshot_for(WEB), tr.snapshot_for(INGRESS)
    for snapshot, service in ((web, "web"), (ingress, "ingress")):
        secrets = snapshot.get(SECRET)
        own = secrets["default"].message.tls_certificate
        assert (
            own.certificate_chain.inline_bytes
            == (tmp_path / "pki" / "default" / service / "cert.pem").read_bytes()
        )
        assert (
            secrets["ROOTCA"].message.validation_context.trusted_ca.inline_bytes
            == (tmp_path / "pki" / "ca.pem").read_bytes()
        )
    # The clusters naming them are shared.
    name = "outbound|8081||api.default.svc.cluster.local"
    assert web.get(CLUSTER)[name] is ingress.get(CLUSTER)[name]
    # Proxyless gRPC reads no SDS: plaintext clusters and no secrets.
    grpc = tr.snapshot_for(NodeClass("web", client=ClientKind.GRPC))
    assert upstream_tls(grpc.get(CLUSTER)[name].message) is None
    assert not grpc.get(SECRET)


def inbound_chains(snapshot: Any, port: int) -> tuple[Any, list[Any]]:
    listener = snapshot.get(LISTENER)[f"inbound|10.0.0.1|{port}"].message
    return listener, list(listener.filter_chains)


@pytest.mark.parametrize("port", [8080, 9000])
def test_inbound_listeners_require_mesh_certificates_under_strict(
    tmp_path: Path, port: int
) -> None:
    pki(tmp_path)
    listener, chains = inbound_chains(
        translation(tmp_path, mesh_tls(tmp_path)).snapshot_for(WEB), port
    )
    assert len(chains) == 1 and not listener.listener_filters
    context = tls_pb2.DownstreamTlsContext()
    chains[0].transport_socket.typed_config.Unpack(context)
    assert context.require_client_certificate.value
    common = context.common_tls_context
    assert [c.name for c in common.tls_certificate_sds_secret_configs] == ["default"]
    assert common.combined_validation_context.validation_context_sds_secret_config.name == (
        "ROOTCA"
    )


def test_permissive_inbound_listeners_take_tls_and_plaintext(tmp_path: Path) -> None:
    pki(tmp_path)
    tr = translation(tmp_path, mesh_tls(tmp_path, MTLSMode.PERMISSIVE))
    listener, chains = inbound_chains(tr.snapshot_for(WEB), 8080)
    assert [f.name for f in listener.listener_filters] == ["envoy.filters.listener.tls_inspector"]
    assert chains[0].filter_chain_match.transport_protocol == "tls"
    assert chains[0].HasField("transport_socket")
    assert not chains[1].HasField("filter_chain_match") and not chains[1].HasField(
        "transport_socket"
    )
    assert not chains[0].filter_chain_match.application_protocols  # HTTP: any TLS is mTLS
    # On a TCP port only TLS offering the mesh's ALPN is mesh mTLS (which sidecars offer):
    # an application's own TLS from outside the mesh goes through as plaintext would.
    _, tcp_chains = inbound_chains(tr.snapshot_for(WEB), 9000)
    assert list(tcp_chains[0].filter_chain_match.application_protocols) == ["istio"]
    tcp = upstream_tls(
        tr.snapshot_for(WEB).get(CLUSTER)["outbound|9000||web.default.svc.cluster.local"].message
    )
    assert tcp is not None and list(tcp.common_tls_context.alpn_protocols) == ["istio"]


def test_a_class_without_its_certificate_is_refused_naming_the_settings(
    tmp_path: Path,
) -> None:
    pki(tmp_path)
    tls = dataclasses.replace(
        mesh_tls(tmp_path),
        origin=dataclasses.replace(MeshTLS().origin, path="settings.toml", line=3),
    )
    tr = translation(tmp_path, tls)
    with pytest.raises(TranslationError) as err:
        tr.snapshot_for(NodeClass("legacy", outbound_ip="127.0.0.2"))
    (problem,) = err.value.problems
    assert (problem.path, problem.line, problem.field) == (
        "settings.toml",
        3,
        "mesh.mtls.certificate",
    )
    assert "default/legacy/cert.pem" in problem.message


def test_per_workload_certificates_follow_the_instance_address(tmp_path: Path) -> None:
    ca = CertAuthority(tmp_path / "pki")
    files = ca.issue(
        "web-1",
        uris=[f"spiffe://{TRUST}/ns/default/sa/web"],
        directory=tmp_path / "pki" / "10.0.0.1",
    )
    tls = mesh_tls(
        tmp_path,
        certificate=str(tmp_path / "pki" / "{instance_ip}" / "web-1.pem"),
        private_key=str(tmp_path / "pki" / "{instance_ip}" / "web-1-key.pem"),
    )
    tr = translation(tmp_path, tls)
    own = tr.snapshot_for(WEB).get(SECRET)["default"].message.tls_certificate
    assert own.certificate_chain.inline_bytes == files.cert.read_bytes()
    with pytest.raises(TranslationError, match="instance_ip"):
        tr.snapshot_for(INGRESS)


def test_turning_mesh_mtls_on_rebuilds_what_the_previous_translation_built(
    tmp_path: Path,
) -> None:
    pki(tmp_path)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "mesh.yaml").write_text(CONFIG)
    tls = mesh_tls(tmp_path)
    mesh = load_directory(str(tmp_path / "config"), mesh_tls=tls).mesh
    plain = MeshTranslation(mesh, mesh_config=DEFAULT_MESH_CONFIG)
    name = "outbound|8081||api.default.svc.cluster.local"
    assert upstream_tls(plain.snapshot_for(WEB).get(CLUSTER)[name].message) is None
    secured = MeshTranslation(mesh, previous=plain, mesh_config=MeshConfig(mtls=tls))
    assert upstream_tls(secured.snapshot_for(WEB).get(CLUSTER)[name].message) is not None
    again = MeshTranslation(mesh, previous=secured, mesh_config=DEFAULT_MESH_CONFIG)
    snapshot = again.snapshot_for(WEB)
    assert upstream_tls(snapshot.get(CLUSTER)[name].message) is None
    assert not snapshot.get(SECRET)


ISTIO_MUTUAL_RULE = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api}
spec:
  host: api
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL
      subjectAltNames: ["spiffe://mesh.test/ns/default/sa/api-v2"]
"""


def test_istio_mutual_needs_mesh_mtls_and_then_uses_its_certificates(tmp_path: Path) -> None:
    pki(tmp_path)
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(CONFIG)
    (config / "rule.yaml").write_text(ISTIO_MUTUAL_RULE)
    with pytest.raises(ConfigError) as err:
        load_directory(str(config))
    (problem,) = err.value.problems
    assert (problem.path, problem.line, problem.field) == (
        str(config / "rule.yaml"),
        8,
        "trafficPolicy.tls.mode",
    )
    assert "[mesh.mtls]" in problem.message
    tls = mesh_tls(tmp_path)
    mesh = load_directory(str(config), mesh_tls=tls).mesh
    snapshot = MeshTranslation(mesh, mesh_config=MeshConfig(mtls=tls)).snapshot_for(WEB)
    context = upstream_tls(
        snapshot.get(CLUSTER)["outbound|8081||api.default.svc.cluster.local"].message
    )
    assert context is not None
    sans = context.common_tls_context.combined_validation_context.default_validation_context
    # The rule's own subject alt names replace the service's identity.
    assert [s.matcher.exact for s in sans.match_typed_subject_alt_names] == [
        "spiffe://mesh.test/ns/default/sa/api-v2"
    ]


def test_istio_mutual_refuses_certificate_files(tmp_path: Path) -> None:
    (tmp_path / "rule.yaml").write_text(
        ISTIO_MUTUAL_RULE.replace(
            "      subjectAltNames", "      caCertificates: ca.pem\n      subjectAltNames"
        )
    )
    with pytest.raises(ConfigError) as err:
        load_directory(str(tmp_path), mesh_tls=MeshTLS(mode=MTLSMode.STRICT))
    assert any(
        p.field == "trafficPolicy.tls.caCertificates" and "ISTIO_MUTUAL" in p.message
        for p in err.value.problems
    ), err.value.problems


def test_a_missing_mesh_ca_refuses_the_load_naming_the_settings(tmp_path: Path) -> None:
    pki(tmp_path)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "mesh.yaml").write_text(CONFIG)
    tls = dataclasses.replace(mesh_tls(tmp_path), ca=str(tmp_path / "nowhere.pem"))
    with pytest.raises(ConfigError) as err:
        load_directory(str(tmp_path / "config"), mesh_tls=tls)
    assert [p.field for p in err.value.problems] == ["mesh.mtls.ca"]


SETTINGS_CASES = [
    ('mode = "SOMETIMES"', "mesh.mtls.mode", 2, "must be one of"),
    ('mode = "STRICT"', "mesh.mtls.ca", 1, "missing"),
    (
        'mode = "STRICT"\nca = "ca.pem"\ncertificate = "all.pem"\nprivate_key = "{service}.key"',
        "mesh.mtls.certificate",
        4,
        "{service}",
    ),
    (
        'mode = "STRICT"\nca = "ca.pem"\ncertificate = "{host}.pem"\nprivate_key = "{service}.key"',
        "mesh.mtls.certificate",
        4,
        "unknown placeholder {host}",
    ),
    ('trust_domain = "a/b"', "mesh.mtls.trust_domain", 2, "trust domain"),
    (
        'mode = "STRICT"\nca = "ca.pem"\ncertificate = "{service:d}.pem"\n'
        'private_key = "{service!r}.key"',
        "mesh.mtls.private_key",
        5,
        "take no format",
    ),
    (
        'mode = "STRICT"\nca = "ca.pem"\ncertificate = "{service:d}.pem"\n'
        'private_key = "{service}.key"',
        "mesh.mtls.certificate",
        4,
        "take no format",
    ),
]


@pytest.mark.parametrize(("body", "field", "line", "message"), SETTINGS_CASES)
def test_mesh_mtls_settings_errors_name_file_line_and_key(
    tmp_path: Path, body: str, field: str, line: int, message: str
) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(f"[mesh.mtls]\n{body}\n")
    with pytest.raises(ConfigError) as err:
        Settings.from_file(str(path))
    found = [p for p in err.value.problems if p.field == field]
    assert found, err.value.problems
    assert (found[0].path, found[0].line) == (str(path), line)
    assert message in found[0].message


def test_mesh_mtls_settings_paths_are_relative_to_the_settings_file(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "settings.toml"
    path.parent.mkdir()
    path.write_text(
        '[mesh.mtls]\nmode = "permissive"\nca = "pki/ca.pem"\n'
        'certificate = "pki/{namespace}/{service}/cert.pem"\n'
        'private_key = "/abs/{service}.key"\n'
    )
    tls = Settings.from_file(str(path)).mesh.mtls
    assert tls.mode is MTLSMode.PERMISSIVE
    assert tls.ca == str(tmp_path / "etc" / "pki" / "ca.pem")
    assert tls.workload_files("ns", "svc", "") == (
        str(tmp_path / "etc" / "pki" / "ns" / "svc" / "cert.pem"),
        "/abs/svc.key",
    )
    assert (tls.origin.path, tls.origin.line) == (str(path), 1)


@pytest.mark.parametrize("mode", [MTLSMode.STRICT, MTLSMode.PERMISSIVE])
def test_envoy_accepts_sidecars_and_gateways_under_mesh_mtls(
    tmp_path: Path, mode: MTLSMode
) -> None:
    pki(tmp_path)
    tls = mesh_tls(tmp_path, mode)
    mesh = load_directory(str(_write(tmp_path)), mesh_tls=tls).mesh
    for node in (WEB, INGRESS):
        config = render_static(mesh, node, admin_port=0, mesh_config=MeshConfig(mtls=tls))
        secrets = {s["name"] for s in config["static_resources"]["secrets"]}
        assert secrets == {"default", "ROOTCA"}
        envoy_accepts(config, tmp_path / f"{node.service}.json")


def _write(root: Path) -> Path:
    config = root / "config"
    config.mkdir(exist_ok=True)
    (config / "mesh.yaml").write_text(CONFIG)
    return config


def test_files_both_templates_can_name_go_to_the_more_specific_one(tmp_path: Path) -> None:
    from xdsd.sources.certificates import mesh_certificate_refs

    for name in ("web.pem", "web-key.pem", "api.pem", "api-key.pem", "ca.pem"):
        (tmp_path / name).write_text("")
    tls = MeshTLS(
        mode=MTLSMode.STRICT,
        ca=str(tmp_path / "ca.pem"),
        certificate=str(tmp_path / "{service}.pem"),
        private_key=str(tmp_path / "{service}-key.pem"),
    )
    refs = {(Path(r.path).name, r.field) for r in mesh_certificate_refs(tls)}
    assert refs == {
        ("ca.pem", "mesh.mtls.ca"),
        ("web.pem", "mesh.mtls.certificate"),
        ("api.pem", "mesh.mtls.certificate"),
        ("web-key.pem", "mesh.mtls.private_key"),
        ("api-key.pem", "mesh.mtls.private_key"),
    }
    # One file holding both: named by both fields, so both checks apply to it.
    combined = dataclasses.replace(tls, private_key=tls.certificate)
    refs = {(Path(r.path).name, r.field) for r in mesh_certificate_refs(combined)}
    assert ("web.pem", "mesh.mtls.private_key") in refs
    assert ("web.pem", "mesh.mtls.certificate") in refs
    assert ("ca.pem", "mesh.mtls.private_key") not in refs  # the CA is no one's key


def test_a_reload_reads_again_only_the_mesh_files_the_watcher_named(tmp_path: Path) -> None:
    from xdsd.sources import DirectoryLoader

    ca = pki(tmp_path)
    config = _write(tmp_path)
    loader = DirectoryLoader(str(config))
    loader.mesh_tls = mesh_tls(tmp_path)
    web_cert = tmp_path / "pki" / "default" / "web" / "cert.pem"
    api_cert = tmp_path / "pki" / "default" / "api" / "cert.pem"
    first = loader.load().mesh
    assert first.certificate(str(web_cert)) == web_cert.read_bytes()
    # Both files replaced; the watcher names web's only (api's change is not seen yet).
    old_api = api_cert.read_bytes()
    for service, path in (("web", web_cert), ("api", api_cert)):
        files = ca.issue(
            f"{service}-2",
            uris=[f"spiffe://{TRUST}/ns/default/sa/{service}"],
            directory=tmp_path / "new",
        )
        path.write_bytes(files.cert.read_bytes())
        (path.parent / "key.pem").write_bytes(files.key.read_bytes())
    mesh = loader.load({str(web_cert), str(web_cert.parent / "key.pem")}).mesh
    assert mesh.certificate(str(web_cert)) == web_cert.read_bytes()
    assert mesh.certificate(str(api_cert)) == old_api
    # A config edit alone reads no certificate again; a forced load (SIGHUP) reads all.
    (config / "mesh.yaml").write_text(CONFIG.replace("10.0.0.3", "10.0.0.4"))
    assert loader.load({str(config / "mesh.yaml")}).mesh.certificate(str(api_cert)) == old_api
    assert loader.load().mesh.certificate(str(api_cert)) == api_cert.read_bytes()


EAST_WEST = """\
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: east-west}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 15443, name: mtls, protocol: HTTPS}
    hosts: ["*"]
    tls:
      mode: ISTIO_MUTUAL
      subjectAltNames: ["spiffe://mesh.test/ns/default/sa/web"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api-east-west}
spec:
  hosts: [api.mesh.example]
  gateways: [east-west]
  http:
  - route: [{destination: {host: api}}]
"""


def test_istio_mutual_gateway_servers_use_the_mesh_certificates(tmp_path: Path) -> None:
    pki(tmp_path)
    config = _write(tmp_path)
    (config / "east-west.yaml").write_text(EAST_WEST)
    with pytest.raises(ConfigError) as err:
        load_directory(str(config))
    assert [(p.line, p.field) for p in err.value.problems] == [(11, "servers[0].tls.mode")]
    tls = mesh_tls(tmp_path)
    mesh = load_directory(str(config), mesh_tls=tls).mesh
    snapshot = MeshTranslation(mesh, mesh_config=MeshConfig(mtls=tls)).snapshot_for(INGRESS)
    listener = next(
        r.message
        for r in snapshot.get(LISTENER).values()
        if r.message.address.socket_address.port_value == 15443
    )
    (chain,) = listener.filter_chains
    context = tls_pb2.DownstreamTlsContext()
    chain.transport_socket.typed_config.Unpack(context)
    assert context.require_client_certificate.value
    common = context.common_tls_context
    assert [c.name for c in common.tls_certificate_sds_secret_configs] == ["default"]
    combined = common.combined_validation_context
    assert combined.validation_context_sds_secret_config.name == "ROOTCA"
    assert [
        m.matcher.exact for m in combined.default_validation_context.match_typed_subject_alt_names
    ] == ["spiffe://mesh.test/ns/default/sa/web"]
    config_json = render_static(mesh, INGRESS, admin_port=0, mesh_config=MeshConfig(mtls=tls))
    envoy_accepts(config_json, tmp_path / "east-west.json")


def test_proxyless_grpc_with_mesh_certificates_gets_a_certificate_provider_context(
    tmp_path: Path,
) -> None:
    from xdsd.translate import grpc_bootstrap

    pki(tmp_path)
    tls = mesh_tls(tmp_path)
    tr = translation(tmp_path, tls)
    node = NodeClass("web", client=ClientKind.GRPC, mesh_tls=True)
    name = "outbound|8081||api.default.svc.cluster.local"
    context = upstream_tls(tr.snapshot_for(node).get(CLUSTER)[name].message)
    assert context is not None
    common = context.common_tls_context
    assert common.tls_certificate_provider_instance.instance_name == "mesh"
    validation = common.validation_context
    assert validation.ca_certificate_provider_instance.instance_name == "mesh"
    assert [m.exact for m in validation.match_subject_alt_names] == [
        f"spiffe://{TRUST}/ns/default/sa/api"
    ]
    assert not tr.snapshot_for(node).get(SECRET)  # the files are the client's to read
    # Its bootstrap names its own files, and says it has them.
    doc = grpc_bootstrap(
        "web-1",
        NodeClass("web", client=ClientKind.GRPC),
        xds_host="127.0.0.1",
        xds_port=1,
        mesh_tls=tls,
    )
    config = doc["certificate_providers"]["mesh"]["config"]
    assert config["certificate_file"] == str(tmp_path / "pki" / "default" / "web" / "cert.pem")
    assert config["ca_certificate_file"] == tls.ca
    assert doc["node"]["metadata"]["mesh_tls"] is True


def test_a_service_added_to_a_file_finds_its_files_and_a_swapped_link_is_read(
    tmp_path: Path,
) -> None:
    from xdsd.sources import DirectoryLoader

    ca = pki(tmp_path)
    config = _write(tmp_path)
    loader = DirectoryLoader(str(config))
    loader.mesh_tls = mesh_tls(tmp_path)
    loader.load()
    # A new service in an existing file, its files written first: found without SIGHUP.
    files = ca.issue(
        "extra",
        uris=[f"spiffe://{TRUST}/ns/default/sa/extra"],
        directory=tmp_path / "pki" / "default" / "extra",
    )
    files.cert.rename(files.cert.with_name("cert.pem"))
    files.key.rename(files.key.with_name("key.pem"))
    extra_cert = tmp_path / "pki" / "default" / "extra" / "cert.pem"
    (config / "mesh.yaml").write_text(
        CONFIG + "---\nkind: Service\nname: extra\nports: [{number: 8083, protocol: HTTP}]\n"
    )
    mesh = loader.load({str(config / "mesh.yaml")}).mesh
    assert mesh.certificate(str(extra_cert)) == extra_cert.read_bytes()
    # A volume that swaps a "..data" link reports that name, never cert.pem's.
    web_dir = tmp_path / "pki" / "default" / "web"
    renewed = ca.issue(
        "web-3", uris=[f"spiffe://{TRUST}/ns/default/sa/web"], directory=tmp_path / "renewed"
    )
    (web_dir / "cert.pem").write_bytes(renewed.cert.read_bytes())
    (web_dir / "key.pem").write_bytes(renewed.key.read_bytes())
    mesh = loader.load({str(web_dir / "..data")}).mesh
    assert mesh.certificate(str(web_dir / "cert.pem")) == renewed.cert.read_bytes()


def test_a_bad_proxy_file_fails_only_its_class_and_is_read_again_when_fixed(
    tmp_path: Path,
) -> None:
    from xdsd.sources import DirectoryLoader

    pki(tmp_path)
    config = _write(tmp_path)
    loader = DirectoryLoader(str(config))
    tls = mesh_tls(tmp_path)
    loader.mesh_tls = tls
    api_key = tmp_path / "pki" / "default" / "api" / "key.pem"
    good = api_key.read_bytes()
    api_key.write_text("not a key\n")
    result = loader.load()  # not refused: one service's renewal gone wrong
    (warning,) = [w for w in result.warnings if w.field == "mesh.mtls.private_key"]
    assert str(api_key) in warning.message and "no PEM private key" in warning.message
    tr = MeshTranslation(result.mesh, mesh_config=MeshConfig(mtls=tls))
    assert tr.snapshot_for(WEB).get(SECRET)["default"]  # other classes are served
    with pytest.raises(TranslationError, match="not usable"):
        tr.snapshot_for(NodeClass("api", outbound_ip="127.0.0.2"))
    # Loads that touch nothing of it keep the warning; fixing the file is seen.
    assert [w.field for w in loader.load([]).warnings] == ["mesh.mtls.private_key"]
    api_key.write_bytes(good)
    fixed = loader.load([str(api_key)])
    assert not fixed.warnings
    assert fixed.mesh.certificate(str(api_key)) == good


def test_with_issued_identities_a_class_gets_the_bundle_and_no_default(tmp_path: Path) -> None:
    """xdsd's CA issues ``default`` per connected proxy: no certificate file is read, a
    class snapshot holds only ``ROOTCA`` (the bundle), and it names ``default`` without
    holding it; another bundle (an authority added) changes ``ROOTCA``."""
    tls = MeshTLS(mode=MTLSMode.STRICT, trust_domain=TRUST, issued=True, bundle=b"BUNDLE-1")
    tr = translation(tmp_path, tls)  # no pki/ at all: the loader needs no file
    web = tr.snapshot_for(WEB)
    secrets = web.get(SECRET)
    assert set(secrets) == {"ROOTCA"}
    assert secrets["ROOTCA"].message.validation_context.trusted_ca.inline_bytes == b"BUNDLE-1"
    api = upstream_tls(web.get(CLUSTER)["outbound|8081||api.default.svc.cluster.local"].message)
    assert api is not None
    assert [c.name for c in api.common_tls_context.tls_certificate_sds_secret_configs] == [
        "default"
    ]
    assert set(tr.snapshot_for(INGRESS).get(SECRET)) == {"ROOTCA"}
    grown = translation(tmp_path, dataclasses.replace(tls, bundle=b"BUNDLE-1\nBUNDLE-2"))
    rootca = grown.snapshot_for(WEB).get(SECRET)["ROOTCA"]
    assert rootca.message.validation_context.trusted_ca.inline_bytes == b"BUNDLE-1\nBUNDLE-2"
    # without the bundle (the daemon has not loaded its CA) the class is refused
    with pytest.raises(TranslationError, match="trust bundle"):
        translation(tmp_path, dataclasses.replace(tls, bundle=b"")).snapshot_for(WEB)
