"""Istio's own test configuration that uses the Sidecar kind (``testdata/none.yaml``,
``se-example.yaml``, ``se-example-gw.yaml``): each loads, and for a node of each
Sidecar's namespace the configuration xdsd renders passes ``envoy --mode validate``.

``se-example-gw.yaml`` routes to services a Kubernetes cluster would define (the egress
gateway's, and ``httpbin.com``, which its ServiceEntry spells ``httpbin.org``): they are
written beside it, as ``test_conformance_gateways`` does."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.e2e.certs import CertAuthority
from tests.e2e.conformance.test_conformance_gateways import SE_GW_SERVICES
from tests.harness import envoy_accepts
from tests.paths import CONFORMANCE
from xdsd.resources import LISTENER
from xdsd.sources import load_directory
from xdsd.translate import MeshTranslation, NodeClass, render_static

TESTDATA = CONFORMANCE / "istio" / "testdata"
FILES = ["none.yaml", "se-example.yaml", "se-example-gw.yaml"]
#: Certificate files the files' DestinationRules name, relative to the config directory.
CERTS = (
    "tests/testdata/certs/default/cert-chain.pem",
    "tests/testdata/certs/default/key.pem",
    "tests/testdata/certs/default/root-cert.pem",
)


def test_every_file_with_a_sidecar_is_covered() -> None:
    using = sorted(p.name for p in TESTDATA.glob("*.yaml") if "kind: Sidecar" in p.read_text())
    assert using == sorted(FILES)


def _sidecar_lines(path: Path) -> set[int]:
    """The first line of each Sidecar document of ``path``."""
    lines: set[int] = set()
    start = 1
    for number, text in enumerate(path.read_text().splitlines(), 1):
        if text.startswith("---"):
            start = number + 1
        if text.strip() == "kind: Sidecar":
            lines.add(start)
    return lines


def _workdir(tmp_path: Path, name: str) -> Path:
    root = tmp_path / "config"
    root.mkdir()
    shutil.copy(TESTDATA / name, root)
    ca = CertAuthority(tmp_path / "ca")
    files = ca.issue("client", ["client.example"])
    for rel, src in zip(CERTS, (files.cert, files.key, files.ca), strict=True):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / rel)
    if name == "se-example-gw.yaml":
        (root / "services.yaml").write_text(SE_GW_SERVICES)
    return root


@pytest.mark.parametrize("name", FILES)
def test_sidecar_file_loads_and_envoy_accepts_the_result(name: str, tmp_path: Path) -> None:
    root = _workdir(tmp_path, name)
    mesh = load_directory(str(root)).mesh
    assert mesh.sidecars
    for sidecar in mesh.sidecars:
        service = next((s.name for s in mesh.services if s.namespace == sidecar.namespace), "app")
        node = NodeClass(
            service,
            namespace=sidecar.namespace,
            labels=sidecar.workload_selector,
            instance_ip="127.0.0.2",
            outbound_ip="127.0.0.3",
        )
        translation = MeshTranslation(mesh)
        assert translation.sidecar(node) is sidecar
        snapshot = translation.snapshot_for(node)
        inbound = {n for n in snapshot.get(LISTENER) if n.startswith("inbound|")}
        # a Sidecar's ingress listeners replace the service's own ports (Istio's rule)
        own = mesh.service_by_name(node.namespace, service)  # a ServiceEntry's host: none
        ports = [i.port.number for i in sidecar.ingress] or (
            [p.number for p in own.ports] if own is not None else []
        )
        assert inbound == {f"inbound|127.0.0.2|{n}" for n in ports}
        config = render_static(mesh, node, node_id=f"{service}-{sidecar.name}", admin_port=0)
        envoy_accepts(config, tmp_path / f"{sidecar.namespace}-{sidecar.name}.json")
