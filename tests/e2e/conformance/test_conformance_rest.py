"""Istio's conformance inputs not covered by the per-kind modules (DestinationRules on
their own, security kinds, rules whose destinations a Kubernetes cluster would define),
and the index: every file of the Istio conformance inputs (``tests.paths.CONFORMANCE``) is either shown to load
(and to render configuration ``envoy --mode validate`` accepts) by one of the
``test_conformance*`` modules, or refused for a reason ``docs/rules.md`` names.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.certs import CertAuthority
from tests.e2e.conformance import (
    test_conformance,
    test_conformance_entries,
    test_conformance_gateways,
    test_conformance_sidecars,
)
from tests.harness import envoy_accepts
from tests.paths import CONFORMANCE, EXAMPLE_CONFIG, REPO
from tests.translate import test_authz_goldens as authz_goldens
from xdsd.errors import ConfigError
from xdsd.model.mesh_config import MeshConfig, MeshTLS, MTLSMode
from xdsd.sources import load_directory
from xdsd.translate import NodeClass, render_static

ISTIO = CONFORMANCE / "istio"
TESTDATA = ISTIO / "testdata"
DOCS = REPO / "docs" / "rules.md"

#: What a Kubernetes cluster would define beside the files (their destinations).
SERVICE3 = """\
kind: Service
metadata: {name: service3, namespace: default}
spec:
  ports: [{number: 81, protocol: HTTP}]
  endpoints: [{address: 10.2.0.1, labels: {version: v1}}, {address: 10.2.0.2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: service3, namespace: default}
spec:
  host: service3
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"""
C_WEIGHTED = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: c-weighted, namespace: testns}
spec:
  hosts: [c-weighted.extsvc.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.3.0.1, labels: {version: v1}}, {address: 10.3.0.2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: c-weighted, namespace: testns}
spec:
  host: c-weighted.extsvc.com
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"""

#: File → (what is written beside it, namespaces to render a sidecar in).
LOADING: dict[str, tuple[str, tuple[str, ...]]] = {
    "authn.yaml": ("", ("default",)),  # security.istio.io only: warned about, nothing else
    "peer-authn-strict.yaml": ("", ("default",)),
    "destination-rule-fqdn.yaml": ("", ("default",)),
    "destination-rule-locality.yaml": ("", ("default",)),
    "rule-content-route.yaml": (C_WEIGHTED, ("testns",)),
    "virtual-service-all.yaml": (SERVICE3, ("testns", "default")),
    "rule-fault-injection.yaml": (test_conformance_gateways.C_SERVICE, ("testns",)),
}
#: Files refused whatever is written beside them, and what the refusal names. The same
#: list, with the reasons, is in docs/rules.md ("Conformance").
REFUSED = {
    "bookinfo/egress-rule-google-apis.yaml": "caCertificates",
    "testdata/destination-rule-passthrough.yaml": "PASSTHROUGH",
    "testdata/destination-rule-ssl.yaml": "caCertificates",
}


@pytest.mark.parametrize("name", sorted(LOADING))
def test_file_loads_and_envoy_accepts_the_result(name: str, tmp_path: Path) -> None:
    root = tmp_path / "config"
    shutil.copytree(EXAMPLE_CONFIG / "services", root / "services")
    shutil.copy(TESTDATA / name, root)
    beside, namespaces = LOADING[name]
    if beside:
        (root / "beside.yaml").write_text(beside)
    mesh = load_directory(str(root)).mesh
    for namespace in namespaces:
        node = NodeClass("client", namespace=namespace, instance_ip="127.0.0.2")
        config = render_static(mesh, node, node_id=f"client-{namespace}", admin_port=0)
        envoy_accepts(config, tmp_path / f"{namespace}.json")


#: Files that load with mesh mutual TLS on (``[mesh.mtls]``) and are refused without it.
MESH_MTLS = {"bookinfo/destination-rule-all-mtls.yaml": "ISTIO_MUTUAL"}


@pytest.mark.parametrize("name", sorted(MESH_MTLS))
def test_file_needs_mesh_mtls_and_envoy_accepts_the_result(name: str, tmp_path: Path) -> None:
    root = tmp_path / "config"
    shutil.copytree(EXAMPLE_CONFIG / "services", root / "services")
    shutil.copy(ISTIO / name, root)
    with pytest.raises(ConfigError) as caught:
        load_directory(str(root))
    assert any(
        MESH_MTLS[name] in str(p) and "[mesh.mtls]" in str(p) for p in caught.value.problems
    ), caught.value.problems
    ca = CertAuthority(tmp_path / "pki")
    ca.issue(
        "productpage",
        uris=["spiffe://cluster.local/ns/default/sa/productpage"],
        directory=tmp_path / "pki" / "default",
    )
    tls = MeshTLS(
        mode=MTLSMode.STRICT,
        ca=str(ca.ca_path),
        certificate=str(tmp_path / "pki" / "{namespace}" / "{service}.pem"),
        private_key=str(tmp_path / "pki" / "{namespace}" / "{service}-key.pem"),
    )
    mesh = load_directory(str(root), mesh_tls=tls).mesh
    node = NodeClass("productpage", instance_ip="127.0.0.2", outbound_ip="127.0.0.3")
    config = render_static(mesh, node, admin_port=0, mesh_config=MeshConfig(mtls=tls))
    envoy_accepts(config, tmp_path / "productpage.json")
    # The command line says the same: validate needs the settings to accept the file.
    settings = tmp_path / "settings.toml"
    settings.write_text(
        f'[mesh.mtls]\nmode = "STRICT"\nca = "{tls.ca}"\ncertificate = "{tls.certificate}"\n'
        f'private_key = "{tls.private_key}"\n'
    )
    argv = [sys.executable, "-m", "xdsd.cli", "validate", str(root)]
    refused = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "[mesh.mtls]" in refused.stderr, refused.stderr
    accepted = subprocess.run(
        [*argv, "--settings", str(settings)], capture_output=True, text=True, timeout=60
    )
    assert accepted.returncode == 0, accepted.stderr


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_file_is_refused_naming_the_reason(name: str, tmp_path: Path) -> None:
    root = tmp_path / "config"
    shutil.copytree(EXAMPLE_CONFIG / "services", root / "services")
    shutil.copy(ISTIO / name, root)
    with pytest.raises(ConfigError) as caught:
        load_directory(str(root))
    reported = [str(p) for p in caught.value.problems]
    assert any(REFUSED[name] in r for r in reported), reported


def _covered() -> set[str]:
    """Every file some conformance module loads and validates."""
    out = {f"bookinfo/{n}" for n in test_conformance.SUPPORTED}
    out |= {f"testdata/{n}" for n in test_conformance_entries.LOADING}
    out |= {f"testdata/{n}" for n in test_conformance_sidecars.FILES}
    out |= {f for case in test_conformance_gateways.CASES.values() for f in case.files}
    out |= {f"testdata/{n}" for n in LOADING}
    out |= set(MESH_MTLS)
    out |= _authz_goldens()
    return out


def _authz_goldens() -> set[str]:
    """Istio's AuthorizationPolicy goldens (inputs and Istio's filters): each input is
    loaded and its filters compared by ``tests/translate/test_authz_goldens.py``, and
    rendered into listeners Envoy accepts by ``test_conformance_authz``."""
    out = {f"authz/{c.input}" for c in authz_goldens.CASES.values()}
    out |= {f"authz/{o}" for c in authz_goldens.CASES.values() for o in c.outputs}
    out |= {f"authz/{n}" for n in authz_goldens.NOT_COMPARED}
    out |= {str(p.relative_to(ISTIO)) for p in (ISTIO / "authz").rglob("extended-*.yaml")}
    return out


def test_every_conformance_file_is_accounted_for() -> None:
    files = {str(p.relative_to(ISTIO)) for p in ISTIO.rglob("*.yaml")}
    covered = _covered()
    assert not covered & set(REFUSED), covered & set(REFUSED)
    assert files - covered - set(REFUSED) == set(), "files neither loaded nor refused"
    assert (covered | set(REFUSED)) - files == set(), "listed files that do not exist"


def test_docs_list_every_refused_file_and_its_reason() -> None:
    text = DOCS.read_text()
    section = text.split("\n## Conformance\n", 1)[1].split("\n## ", 1)[0]
    for name, reason in REFUSED.items():
        line = next((ln for ln in section.splitlines() if f"`{name}`" in ln), "")
        assert reason in line, f"docs/rules.md 'Conformance' has no line for {name} naming {reason}"
