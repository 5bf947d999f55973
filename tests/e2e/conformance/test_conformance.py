"""Istio's bookinfo traffic-management samples: what xdsd implements loads and renders
configuration a real Envoy accepts; what it does not is refused by name."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.harness import envoy_accepts
from tests.paths import CONFORMANCE, EXAMPLE_CONFIG
from xdsd.errors import ConfigError
from xdsd.sources import load_directory

BOOKINFO = CONFORMANCE / "istio" / "bookinfo"

# Files using only what is implemented: VirtualService http routing (fault injection
# included), DestinationRule subsets and Gateways (gateway nodes: see
# test_conformance_gateways.py).
SUPPORTED = [
    "bookinfo-gateway.yaml",
    "certmanager-gateway.yaml",
    "destination-rule-all.yaml",
    "destination-rule-reviews.yaml",
    "fault-injection-details-v1.yaml",
    "virtual-service-all-v1.yaml",
    "virtual-service-details-v2.yaml",
    "virtual-service-ratings-db.yaml",
    "virtual-service-ratings-mysql.yaml",
    "virtual-service-ratings-mysql-vm.yaml",
    "virtual-service-reviews-50-v3.yaml",
    "virtual-service-reviews-80-20.yaml",
    "virtual-service-reviews-90-10.yaml",
    "virtual-service-reviews-jason-v2-v3.yaml",
    "virtual-service-reviews-test-v2.yaml",
    "virtual-service-reviews-v2-v3.yaml",
    "virtual-service-reviews-v3.yaml",
    "virtual-service-ratings-test-abort.yaml",
    "virtual-service-ratings-test-delay.yaml",
]
# Files needing what later work implements, and the name the refusal must carry.
NOT_YET = {
    "destination-rule-all-mtls.yaml": "trafficPolicy.tls",
    "egress-rule-google-apis.yaml": "tls.caCertificates",
}


def test_every_bookinfo_file_is_classified() -> None:
    assert sorted(p.name for p in BOOKINFO.glob("*.yaml")) == sorted([*SUPPORTED, *NOT_YET])


def _workdir(tmp_path: Path, name: str) -> Path:
    root = tmp_path / "config"
    shutil.copytree(EXAMPLE_CONFIG / "services", root / "services")
    # Files with DestinationRules replace the subsets file rather than duplicate its rules.
    if "kind: DestinationRule" not in (BOOKINFO / name).read_text():
        shutil.copy(BOOKINFO / "destination-rule-all.yaml", root)
    shutil.copy(BOOKINFO / name, root)
    return root


@pytest.mark.parametrize("name", SUPPORTED)
def test_supported_file_loads_and_envoy_accepts_the_result(name: str, tmp_path: Path) -> None:
    from xdsd.translate import NodeClass, render_static

    root = _workdir(tmp_path, name)
    mesh = load_directory(str(root)).mesh
    for service, version in (("productpage", "v1"), ("reviews", "v2")):
        node = NodeClass(service=service, labels=(("version", version),), instance_ip="127.0.0.2")
        config = render_static(mesh, node, node_id=f"{service}-{version}", admin_port=0)
        envoy_accepts(config, tmp_path / f"{service}.json")


@pytest.mark.parametrize("name", sorted(NOT_YET))
def test_unsupported_file_is_reported_by_name(name: str, tmp_path: Path) -> None:
    root = _workdir(tmp_path, name)
    try:
        result = load_directory(str(root))
        reported = [str(w) for w in result.warnings]
    except ConfigError as e:
        reported = [str(p) for p in (*e.problems, *e.warnings)]
    assert any(NOT_YET[name] in r and name in r for r in reported), reported
