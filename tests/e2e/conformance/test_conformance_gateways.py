"""Istio's Gateway samples (bookinfo and pilot test data): each loads, and the static
config of a gateway node its selector picks passes ``envoy --mode validate``.

Istio's files name certificates under ``/etc/certs/`` (paths inside an Istio gateway
pod). xdsd checks certificate files when it loads them, so the files as written are
refused with the missing path named by file, line and field; the check of the rest uses
a copy of the file with ``/etc/certs/`` replaced by the config directory's ``certs/``,
where this test writes real certificates of the same names. The services the rules
route to are written here (the samples assume a Kubernetes cluster that has them).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.certs import CertAuthority
from tests.harness import envoy_accepts
from tests.paths import CONFORMANCE, EXAMPLE_CONFIG
from xdsd.errors import ConfigError
from xdsd.resources import LISTENER, ROUTE
from xdsd.sources import load_directory
from xdsd.translate import MeshTranslation, NodeClass, Role, render_static

ISTIO = CONFORMANCE / "istio"
CERT_DIR = "/etc/certs/"

C_SERVICE = """\
kind: Service
name: c
namespace: testns
ports: [{number: 80, protocol: HTTP}]
endpoints: [{address: 10.1.0.1, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: c, namespace: testns}
spec:
  host: c
  subsets: [{name: v2, labels: {version: v2}}]
"""
EGRESS_SERVICES = """\
kind: Service
name: istio-egressgateway
namespace: testns
ports: [{number: 80, protocol: HTTP}]
endpoints: [{address: 10.1.0.2}]
---
kind: Service
name: eu-bookinfo
namespace: testns
hosts: [eu.bookinfo.com]
ports: [{number: 80, protocol: HTTP}]
endpoints: [{address: 10.1.0.3}]
"""
SE_GW_SERVICES = """\
kind: Service
name: istio-egressgateway
namespace: istio-system
ports: [{number: 80, protocol: HTTP}]
endpoints: [{address: 10.1.0.4}]
---
kind: Service
name: httpbin
namespace: exampleegressgw
hosts: [httpbin.com]
ports: [{number: 80, protocol: HTTP}]
endpoints: [{address: 10.1.0.5}]
"""


@dataclass(frozen=True)
class Case:
    """Corpus files loaded together, services written beside them, the gateway node's
    labels, and the listeners and route configurations it must get."""

    files: tuple[str, ...]
    labels: tuple[tuple[str, str], ...]
    listeners: tuple[str, ...]
    routes: tuple[str, ...] = ()
    services: str = ""
    bookinfo: bool = False
    #: Gateway files naming /etc/certs files.
    certs: tuple[str, ...] = field(default=())


INGRESS = (("istio", "ingressgateway"),)
EGRESS = (("istio", "egressgateway"),)
CASES = {
    "bookinfo-gateway": Case(
        ("bookinfo/bookinfo-gateway.yaml",),
        INGRESS,
        ("0.0.0.0_8080",),
        ("http.8080",),
        bookinfo=True,
    ),
    "certmanager-gateway": Case(
        ("bookinfo/certmanager-gateway.yaml",),
        INGRESS,
        ("0.0.0.0_80",),
        ("http.80",),
        bookinfo=True,
    ),
    "gateway-all": Case(
        ("testdata/gateway-all.yaml",),
        (("app", "my-gateway-controller"),),
        ("0.0.0.0_443", "0.0.0.0_80"),
        ("http.80", "https.443.https.my-gateway.testns"),
        certs=("testdata/gateway-all.yaml",),
    ),
    # a TCP server no rule routes: no listener (nothing to proxy to)
    "gateway-tcp-a": Case(("testdata/gateway-tcp-a.yaml",), INGRESS, ()),
    "ingressgateway": Case(
        ("testdata/ingressgateway.yaml", "testdata/rule-ingressgateway.yaml"),
        INGRESS,
        ("0.0.0.0_443", "0.0.0.0_80"),
        ("http.80", "https.443.https.istio-ingressgateway.testns"),
        services=C_SERVICE,
        certs=("testdata/ingressgateway.yaml",),
    ),
    "egressgateway": Case(
        ("testdata/egressgateway.yaml", "testdata/rule-route-via-egressgateway.yaml"),
        EGRESS,
        ("0.0.0.0_443", "0.0.0.0_80"),
        ("http.80", "https.443.https.istio-egressgateway.testns"),
        services=EGRESS_SERVICES,
        certs=("testdata/egressgateway.yaml",),
    ),
    "ingress": Case(
        ("testdata/ingress.yaml",),
        (("istio", "ingress"),),
        ("0.0.0.0_443", "0.0.0.0_80"),
        ("http.80", "https.443.https.istio-ingress.testns"),
        certs=("testdata/ingress.yaml",),
    ),
    "se-example-gw": Case(
        ("testdata/se-example-gw.yaml",),
        EGRESS,
        ("0.0.0.0_80",),
        ("http.80",),
        services=SE_GW_SERVICES,
    ),
}


def test_every_corpus_gateway_is_covered() -> None:
    """Every corpus file defining a Gateway is one of the cases."""
    with_gateways = {
        str(p.relative_to(ISTIO)) for p in ISTIO.rglob("*.yaml") if "kind: Gateway" in p.read_text()
    }
    covered = {f for case in CASES.values() for f in case.files}
    assert with_gateways <= covered, sorted(with_gateways - covered)


def _config_dir(tmp_path: Path, case: Case, *, substitute: bool) -> Path:
    root = tmp_path / "config"
    if case.bookinfo:
        shutil.copytree(EXAMPLE_CONFIG / "services", root / "services")
        shutil.copy(ISTIO / "bookinfo" / "destination-rule-all.yaml", root)
    root.mkdir(exist_ok=True)
    if case.services:
        (root / "services.yaml").write_text(case.services)
    for name in case.files:
        text = (ISTIO / name).read_text()
        if substitute:
            text = text.replace(CERT_DIR, "certs/")
        (root / Path(name).name).write_text(text)
    ca = CertAuthority(root / "certs")
    files = ca.issue("gateway", ["uk.bookinfo.com", "eu.bookinfo.com"])
    for target, source in (
        ("servercert.pem", files.cert),
        ("cert-chain.pem", files.cert),
        ("privatekey.pem", files.key),
        ("key.pem", files.key),
        ("root-cert.pem", files.ca),
    ):
        shutil.copy(source, root / "certs" / target)
    return root


@pytest.mark.parametrize("name", sorted(CASES))
def test_gateway_file_loads_and_envoy_accepts_the_gateway(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    root = _config_dir(tmp_path, case, substitute=True)
    mesh = load_directory(str(root)).mesh
    node = NodeClass("gateway", role=Role.GATEWAY, labels=case.labels)
    snapshot = MeshTranslation(mesh).snapshot_for(node)
    assert sorted(snapshot.get(LISTENER)) == sorted(case.listeners)
    assert sorted(snapshot.get(ROUTE)) == sorted(case.routes)
    config = render_static(mesh, node, node_id=f"{name}-gateway", admin_port=0)
    envoy_accepts(config, tmp_path / "gateway.json")


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c.certs))
def test_certificates_istio_mounts_in_its_pods_are_named_as_missing(
    name: str, tmp_path: Path
) -> None:
    case = CASES[name]
    root = _config_dir(tmp_path, case, substitute=False)
    with pytest.raises(ConfigError) as info:
        load_directory(str(root))
    for corpus_file in case.certs:
        base = Path(corpus_file).name
        reported = [str(p) for p in info.value.problems if Path(p.path).name == base]
        assert reported and all(
            ".tls." in r and f"file '{CERT_DIR}" in r and "does not exist" in r for r in reported
        ), reported
