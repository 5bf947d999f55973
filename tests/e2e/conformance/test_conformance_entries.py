"""Istio's conformance inputs that use ServiceEntry: each loads (ServiceEntries become
services, WorkloadEntries their endpoints) and, for a sidecar in each namespace it uses,
the rendered configuration passes ``envoy --mode validate``.

Files that use ServiceEntry but do not load for reasons outside ServiceEntry are listed in
``OTHER_REASONS`` with the reason, so that a change there shows up here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.e2e.certs import CertAuthority
from tests.harness import envoy_accepts
from tests.paths import CONFORMANCE
from xdsd.errors import ConfigError
from xdsd.sources import load_directory

TESTDATA = CONFORMANCE / "istio" / "testdata"

#: Files with ServiceEntries that load, and the namespaces to render a sidecar in.
LOADING = {
    "byon.yaml": ("testns",),
    "destination-rule-all.yaml": ("default",),
    "external_services.yaml": ("testns",),
    "none.yaml": ("none",),
    "rule-default-route.yaml": ("default",),
    "rule-default-route-append-headers.yaml": ("default",),
    "rule-default-route-cors-policy.yaml": ("default",),
    "rule-redirect-injection.yaml": ("default",),
    "rule-regex-route.yaml": ("default",),
    "rule-weighted-route.yaml": ("default",),
    "rule-websocket-route.yaml": ("testns",),  # websocketUpgrade: an obsolete no-op
    "se-example.yaml": ("seexamples",),
    "static-weighted-se.yaml": ("default",),
}
#: Files with ServiceEntries refused for something else, and what the refusal names.
OTHER_REASONS = {
    # a VirtualService routes to `c`, which only a Kubernetes v1 Service defines
    "rule-fault-injection.yaml": "no service named 'c'",
    # its VirtualService routes to hosts nothing defines (httpbin.com, the egress
    # gateway's service), which xdsd refuses for rules that apply to sidecars
    "se-example-gw.yaml": "no service named 'httpbin.com'",
}
#: Client certificate files se-example.yaml names (relative to the config directory).
SE_EXAMPLE_CERTS = "tests/testdata/certs/default"


def test_every_file_with_a_service_entry_is_listed() -> None:
    using = sorted(p.name for p in TESTDATA.glob("*.yaml") if "kind: ServiceEntry" in p.read_text())
    assert using == sorted([*LOADING, *OTHER_REASONS])


def _workdir(tmp_path: Path, name: str) -> Path:
    root = tmp_path / "config"
    root.mkdir()
    shutil.copy(TESTDATA / name, root)
    if name == "se-example.yaml":
        certs = root / SE_EXAMPLE_CERTS
        certs.mkdir(parents=True)
        ca = CertAuthority(tmp_path / "ca")
        issued = ca.issue("client", ["v1.mymongodb.somedomain"])
        shutil.copy(issued.cert, certs / "cert-chain.pem")
        shutil.copy(issued.key, certs / "key.pem")
        shutil.copy(issued.ca, certs / "root-cert.pem")
    return root


@pytest.mark.parametrize("name", sorted(LOADING))
def test_file_loads_and_envoy_accepts_the_result(name: str, tmp_path: Path) -> None:
    from xdsd.translate import NodeClass, render_static

    root = _workdir(tmp_path, name)
    mesh = load_directory(str(root)).mesh
    assert any(s.entry for s in mesh.services)
    for namespace in LOADING[name]:
        node = NodeClass(service="client", namespace=namespace, instance_ip="127.0.0.2")
        config = render_static(mesh, node, node_id=f"client-{namespace}", admin_port=0)
        envoy_accepts(config, tmp_path / f"{namespace}.json")


@pytest.mark.parametrize("name", sorted(OTHER_REASONS))
def test_file_refused_for_something_else(name: str, tmp_path: Path) -> None:
    root = _workdir(tmp_path, name)
    with pytest.raises(ConfigError) as caught:
        load_directory(str(root))
    reported = [str(p) for p in caught.value.problems]
    assert any(OTHER_REASONS[name] in r and name in r for r in reported), reported
