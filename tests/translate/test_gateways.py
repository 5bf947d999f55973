"""Gateway translation: which servers a gateway node gets, how they merge into listeners,
what the route configurations hold, and that Envoy accepts all of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2

from tests.harness import envoy_accepts
from tests.pem import write_fake_pem
from xdsd.errors import TranslationError
from xdsd.model import HTTPMatch, Mesh, ResourceKey
from xdsd.model.networking import EntryPort, Server, gateway_key
from xdsd.model.service import Protocol
from xdsd.resources import LISTENER, ROUTE
from xdsd.sources import load_directory
from xdsd.sources.gateway import CIPHER_SUITES
from xdsd.translate import MeshTranslation, NodeClass, Role, render_static
from xdsd.translate.gateways import common_hosts, gateway_match_applies
from xdsd.translate.route_matches import Caller

SERVICES = """\
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
kind: Service
name: db
ports: [{number: 5432, protocol: TCP}]
endpoints: [{address: 10.0.0.3}]
---
kind: Service
name: vault
ports: [{number: 8443, protocol: TLS}]
endpoints: [{address: 10.0.0.4}]
"""

GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: infra}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*.example.com"]
    tls: {httpsRedirect: true}
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [web.example.com]
    tls:
      mode: SIMPLE
      serverCertificate: certs/gw.pem
      privateKey: certs/gw-key.pem
      minProtocolVersion: TLSV1_2
      maxProtocolVersion: TLSV1_3
      cipherSuites: [ECDHE-ECDSA-AES128-GCM-SHA256]
  - port: {number: 443, name: mtls, protocol: HTTPS}
    hosts: [api.example.com]
    tls:
      mode: MUTUAL
      serverCertificate: certs/gw.pem
      privateKey: certs/gw-key.pem
      caCertificates: certs/ca.pem
      subjectAltNames: [spiffe://example.com/client, client.example.com]
  - port: {number: 443, name: pass, protocol: TLS}
    hosts: [vault.example.com]
    tls: {mode: PASSTHROUGH}
  - port: {number: 5432, name: db, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: [web.example.com]
  gateways: [infra/edge]
  http:
  - route: [{destination: {host: web}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: infra}
spec:
  hosts: ["*.example.com"]
  gateways: [edge]
  http:
  - match: [{uri: {prefix: /api}}]
    route: [{destination: {host: api.default.svc.cluster.local}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vault, namespace: infra}
spec:
  hosts: [vault.example.com]
  gateways: [edge]
  tls:
  - match: [{sniHosts: [vault.example.com]}]
    route: [{destination: {host: vault.default.svc.cluster.local}}]
  - match: [{sniHosts: [vault.example.com], port: 443}]
    route: [{destination: {host: api.default.svc.cluster.local}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: infra}
spec:
  hosts: ["*"]
  gateways: [edge]
  tcp:
  - match: [{port: 1}]
    route: [{destination: {host: web.default.svc.cluster.local}}]
  - route: [{destination: {host: db.default.svc.cluster.local}}]
"""

NODE = NodeClass("ingress", role=Role.GATEWAY, labels=(("istio", "ingressgateway"),))


def load(tmp: Path, *texts: str) -> Mesh:
    (tmp / "certs").mkdir(exist_ok=True)
    for name in ("gw.pem", "gw-key.pem", "ca.pem"):
        write_fake_pem(tmp / "certs" / name)
    (tmp / "services.yaml").write_text(SERVICES)
    for i, text in enumerate(texts):
        (tmp / f"rules{i}.yaml").write_text(text)
    return load_directory(str(tmp)).mesh


def resources(mesh: Mesh, node: NodeClass = NODE) -> tuple[dict[str, Any], dict[str, Any]]:
    snapshot = MeshTranslation(mesh).snapshot_for(node)
    listeners = {n: r.message for n, r in snapshot.get(LISTENER).items()}
    routes = {n: r.message for n, r in snapshot.get(ROUTE).items()}
    return listeners, routes


def unpack(typed: Any, kind: Any) -> Any:
    out = kind()
    typed.Unpack(out)
    return out


def test_servers_merge_into_listeners_named_like_istio(tmp_path: Path) -> None:
    listeners, routes = resources(load(tmp_path, GATEWAY))
    assert sorted(listeners) == ["0.0.0.0_443", "0.0.0.0_5432", "0.0.0.0_80"]
    assert sorted(routes) == ["http.80", "https.443.https.edge.infra", "https.443.mtls.edge.infra"]
    https = listeners["0.0.0.0_443"]
    assert https.enable_reuse_port.value is False
    assert [f.name for f in https.listener_filters] == ["envoy.filters.listener.tls_inspector"]
    chains = {tuple(c.filter_chain_match.server_names): c for c in https.filter_chains}
    assert sorted(chains) == [("api.example.com",), ("vault.example.com",), ("web.example.com",)]
    web_hcm = unpack(
        chains[("web.example.com",)].filters[0].typed_config, hcm_pb2.HttpConnectionManager
    )
    assert web_hcm.rds.route_config_name == "https.443.https.edge.infra"
    assert web_hcm.use_remote_address.value is True
    # passthrough: the first applying tls block per SNI name; the repeat is left out
    vault = unpack(chains[("vault.example.com",)].filters[0].typed_config, tcp_proxy_pb2.TcpProxy)
    assert vault.cluster == "outbound|8443||vault.default.svc.cluster.local"
    assert not chains[("vault.example.com",)].HasField("transport_socket")
    # tcp: the first rule that applies to the server's port
    [db_chain] = listeners["0.0.0.0_5432"].filter_chains
    db = unpack(db_chain.filters[0].typed_config, tcp_proxy_pb2.TcpProxy)
    assert db.cluster == "outbound|5432||db.default.svc.cluster.local"


def test_downstream_tls_contexts_from_files(tmp_path: Path) -> None:
    listeners, _ = resources(load(tmp_path, GATEWAY))
    chains = {
        tuple(c.filter_chain_match.server_names): c for c in listeners["0.0.0.0_443"].filter_chains
    }
    certs = tmp_path / "certs"
    simple = unpack(
        chains[("web.example.com",)].transport_socket.typed_config, tls_pb2.DownstreamTlsContext
    )
    common = simple.common_tls_context
    assert list(common.alpn_protocols) == ["h2", "http/1.1"]
    [sds] = common.tls_certificate_sds_secret_configs
    assert sds.name == f"file-cert:{certs / 'gw.pem'}~{certs / 'gw-key.pem'}"
    assert sds.sds_config.HasField("ads")
    assert not common.tls_certificates
    assert not common.HasField("combined_validation_context")
    assert simple.require_client_certificate.value is False
    params = common.tls_params
    assert (params.tls_minimum_protocol_version, params.tls_maximum_protocol_version) == (
        params.TLSv1_2,
        params.TLSv1_3,
    )
    assert list(params.cipher_suites) == ["ECDHE-ECDSA-AES128-GCM-SHA256"]
    mutual = unpack(
        chains[("api.example.com",)].transport_socket.typed_config, tls_pb2.DownstreamTlsContext
    )
    combined = mutual.common_tls_context.combined_validation_context
    validation = combined.default_validation_context
    assert mutual.require_client_certificate.value is True
    assert combined.validation_context_sds_secret_config.name == f"file-root:{certs / 'ca.pem'}"
    sans = [(m.san_type, m.matcher.exact) for m in validation.match_typed_subject_alt_names]
    matcher = common_pb2.SubjectAltNameMatcher
    assert sans == [
        (matcher.URI, "spiffe://example.com/client"),
        (matcher.DNS, "client.example.com"),
    ]


def test_route_configurations(tmp_path: Path) -> None:
    _, routes = resources(load(tmp_path, GATEWAY))
    http = routes["http.80"]
    assert http.ignore_port_in_host_matching is True
    vhosts = {v.name: v for v in http.virtual_hosts}
    # the api rule meets the server host *.example.com; the web rule (default namespace,
    # server host without namespace) web.example.com; the vault rule (tls only)
    # vault.example.com, which gets no routes (as Istio)
    assert sorted(vhosts) == ["*.example.com:80", "vault.example.com:80", "web.example.com:80"]
    assert all(v.require_tls == v.ALL for v in vhosts.values())
    assert [r.match.prefix for r in vhosts["web.example.com:80"].routes] == ["/"]
    assert [r.match.prefix for r in vhosts["*.example.com:80"].routes] == ["/api"]
    https = routes["https.443.https.edge.infra"]
    [vhost] = https.virtual_hosts
    assert list(vhost.domains) == ["web.example.com"] and vhost.require_tls == vhost.NONE
    # both rules meet web.example.com; default/web comes first by key, but its catch-all
    # route moves after api's /api route (Istio's SortVHostRoutes)
    assert [r.route.cluster for r in vhost.routes] == [
        "outbound|8080||api.default.svc.cluster.local",
        "outbound|8080||web.default.svc.cluster.local",
    ]


def test_identical_virtual_hosts_collapse_and_no_rule_gives_a_404_host(tmp_path: Path) -> None:
    text = GATEWAY.replace(
        'hosts: ["*.example.com"]\n    tls: {httpsRedirect: true}',
        "hosts: [a.example.com, b.example.com, c.other.org]",
    )
    _, routes = resources(load(tmp_path, text))
    # the api rule meets a and b alike; the db rule (hosts "*", tcp only) gives c.other.org
    # a virtual host without routes, as Istio
    vhosts = {tuple(v.domains): len(v.routes) for v in routes["http.80"].virtual_hosts}
    assert vhosts == {("a.example.com", "b.example.com"): 1, ("c.other.org",): 0}
    empty = GATEWAY.split("---")[0]
    _, routes = resources(load(tmp_path, empty.replace("*.example.com", "nobody.org")))
    [blackhole] = routes["http.80"].virtual_hosts
    assert (blackhole.name, list(blackhole.domains), len(blackhole.routes)) == (
        "nobody.org:80",
        ["nobody.org"],
        0,
    )


def test_gateway_without_rules_answers_404_everywhere(tmp_path: Path) -> None:
    text = GATEWAY.split("---")[0].replace("    tls: {httpsRedirect: true}\n", "", 1)
    _, routes = resources(load(tmp_path, text))
    [blackhole] = routes["http.80"].virtual_hosts
    assert (blackhole.name, list(blackhole.domains), len(blackhole.routes)) == (
        "blackhole:80",
        ["*"],
        0,
    )


def test_selection_by_labels(tmp_path: Path) -> None:
    mesh = load(tmp_path, GATEWAY)
    other = NodeClass("ingress", role=Role.GATEWAY, labels=(("istio", "egressgateway"),))
    listeners, routes = resources(mesh, other)
    assert listeners == {} and routes == {}
    empty_selector = GATEWAY.replace("  selector: {istio: ingressgateway}\n", "")
    listeners, _ = resources(load(tmp_path, empty_selector), other)
    assert "0.0.0.0_80" in listeners
    bound = NodeClass("ingress", role=Role.GATEWAY, labels=NODE.labels, instance_ip="10.1.1.1")
    listeners, _ = resources(mesh, bound)
    assert sorted(listeners) == ["10.1.1.1_443", "10.1.1.1_5432", "10.1.1.1_80"]


def test_bind_makes_its_own_listener_and_route_name(tmp_path: Path) -> None:
    extra = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: side, namespace: infra}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    bind: 127.0.0.9
    hosts: ["*"]
  - port: {number: 80, name: http2, protocol: HTTP}
    hosts: ["*.other.org"]
"""
    listeners, routes = resources(load(tmp_path, GATEWAY, extra))
    assert "127.0.0.9_80" in listeners and "http.80.127.0.0.9" in routes
    # two HTTP servers on one port and address share http.80
    names = {d for v in routes["http.80"].virtual_hosts for d in v.domains}
    assert "*.example.com" in names and "*.other.org" not in names  # no rule for it
    assert len(listeners["0.0.0.0_80"].filter_chains) == 1


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ("{number: 443, name: plain, protocol: HTTP}", "plain HTTP and TLS servers cannot share"),
        ("{number: 5432, name: db2, protocol: TCP}", "a TCP server cannot share port 5432"),
        (
            "{number: 443, name: again, protocol: TLS}",
            "SNI host 'web.example.com' is served on port 443 already",
        ),
    ],
)
def test_servers_that_cannot_share_a_listener(tmp_path: Path, server: str, message: str) -> None:
    extra = f"""\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: clash, namespace: infra}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {server}
    hosts: [web.example.com]
    tls: {{mode: PASSTHROUGH}}
"""
    if "TLS" not in server:
        extra = extra.replace("    tls: {mode: PASSTHROUGH}\n", "")
    mesh = load(tmp_path, GATEWAY, extra)
    with pytest.raises(TranslationError) as info:
        MeshTranslation(mesh).snapshot_for(NODE)
    text = [str(p) for p in info.value.problems]
    # Gateways are merged in key order: infra/clash first, so edge's server is refused
    assert any(
        "rules0.yaml:1: servers[" in t and message in t and "Gateway infra/clash" in t for t in text
    ), text


@pytest.mark.parametrize(
    ("server_hosts", "vs_namespace", "vs_hosts", "common"),
    [
        (["*"], "default", ["a.example.com"], ["a.example.com"]),
        (["*.example.com"], "default", ["a.example.com", "b.org"], ["a.example.com"]),
        (["a.example.com"], "default", ["*.example.com"], ["a.example.com"]),
        (["*.example.com"], "default", ["*.a.example.com"], ["*.a.example.com"]),
        (["*.a.example.com"], "default", ["*"], ["*.a.example.com"]),
        (["prod/a.example.com"], "default", ["a.example.com"], []),
        (["prod/a.example.com"], "prod", ["a.example.com"], ["a.example.com"]),
        (["./a.example.com"], "infra", ["A.example.com"], ["a.example.com"]),
        (["*/a.example.com"], "x", ["a.example.com"], ["a.example.com"]),
        (["*"], "shop", ["reviews"], ["reviews.shop.svc.cluster.local"]),
        (["example.com"], "default", ["*.example.com"], []),
    ],
)
def test_host_intersection(
    server_hosts: list[str], vs_namespace: str, vs_hosts: list[str], common: list[str]
) -> None:
    """Istio's Names.Intersection over the server hosts that apply to the rule's
    namespace (``./`` is the Gateway's, infra here) and the rule's qualified hosts."""
    from xdsd.model import VirtualService

    server = Server(EntryPort(80, Protocol.HTTP, "http"), tuple(server_hosts))
    vs = VirtualService("r", vs_namespace, hosts=tuple(vs_hosts))
    assert common_hosts(server, ResourceKey("Gateway", "infra", "gw"), vs) == common


GW = ResourceKey("Gateway", "infra", "edge")


@pytest.mark.parametrize(
    ("block", "caller", "applies"),
    [
        (HTTPMatch(), Caller(), True),
        (HTTPMatch(gateways=("edge",)), Caller(), False),  # edge in the rule's namespace
        (HTTPMatch(gateways=("infra/edge",)), Caller(), True),
        (HTTPMatch(gateways=("edge.infra.svc.cluster.local",)), Caller(), True),
        (HTTPMatch(gateways=("mesh",)), Caller(), False),
        (HTTPMatch(source_labels=(("istio", "in"),)), Caller((("istio", "in"),)), True),
        (HTTPMatch(source_labels=(("istio", "in"),)), Caller(), False),
        (HTTPMatch(source_namespace="infra"), Caller(namespace="infra"), True),
    ],
)
def test_which_blocks_apply_on_a_gateway(block: HTTPMatch, caller: Caller, applies: bool) -> None:
    assert gateway_match_applies(block, GW, "default", caller) is applies


def test_gateway_references() -> None:
    assert gateway_key("mesh", "ns") is None
    assert gateway_key("gw", "ns") == ResourceKey("Gateway", "ns", "gw")
    assert gateway_key("other/gw", "ns") == ResourceKey("Gateway", "other", "gw")
    assert gateway_key("gw.other.svc.cluster.local", "ns") == ResourceKey("Gateway", "other", "gw")


def test_resources_are_shared_and_reused(tmp_path: Path) -> None:
    mesh = load(tmp_path, GATEWAY)
    first = MeshTranslation(mesh)
    a = first.snapshot_for(NODE)
    b = first.snapshot_for(NodeClass("other-gw", role=Role.GATEWAY, labels=NODE.labels))
    assert a.get(LISTENER)["0.0.0.0_443"] is b.get(LISTENER)["0.0.0.0_443"]
    assert a.get(ROUTE)["http.80"] is b.get(ROUTE)["http.80"]
    again = MeshTranslation(load(tmp_path, GATEWAY), previous=first).snapshot_for(NODE)
    assert again.get(ROUTE)["http.80"] is a.get(ROUTE)["http.80"]
    assert again.get(LISTENER)["0.0.0.0_80"] is a.get(LISTENER)["0.0.0.0_80"]


def test_envoy_accepts_every_gateway_feature(tmp_path: Path) -> None:
    """A gateway with every server kind, TLS setting and every cipher suite xdsd lets
    through, rendered statically, passes ``envoy --mode validate`` with real
    certificate files."""
    from tests.e2e.certs import CertAuthority

    ca = CertAuthority(tmp_path / "certs")
    ca.issue("gw")
    ciphers = ", ".join(sorted(CIPHER_SUITES))
    text = GATEWAY.replace("[ECDHE-ECDSA-AES128-GCM-SHA256]", f"[{ciphers}]")
    (tmp_path / "services.yaml").write_text(SERVICES)
    (tmp_path / "rules.yaml").write_text(text)
    (tmp_path / "optional.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: opt}\nspec:\n"
        "  selector: {istio: ingressgateway}\n  servers:\n"
        "  - port: {number: 9443, name: opt, protocol: HTTPS}\n    hosts: ['*']\n"
        "    tls: {mode: OPTIONAL_MUTUAL, serverCertificate: certs/gw.pem,\n"
        "          privateKey: certs/gw-key.pem, caCertificates: certs/ca.pem}\n"
        "  - port: {number: 9444, name: tls, protocol: TLS}\n    hosts: ['*']\n"
        "    tls: {mode: SIMPLE, serverCertificate: certs/gw.pem, privateKey: certs/gw-key.pem}\n"
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: t}\n"
        "spec:\n  hosts: ['*']\n  gateways: [opt]\n  tcp: [{route: [{destination: {host: db}}]}]\n"
    )
    mesh = load_directory(str(tmp_path)).mesh
    listeners, _ = resources(mesh)
    assert "0.0.0.0_9443" in listeners and "0.0.0.0_9444" in listeners
    config = render_static(mesh, NODE, admin_port=0)
    envoy_accepts(config, tmp_path / "envoy.json")
