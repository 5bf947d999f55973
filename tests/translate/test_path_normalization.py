"""Every HTTP connection manager xdsd gives an Envoy (sidecar inbound and outbound, the
HTTP proxy, virtual-address and capture listeners, gateway servers) normalizes request
paths the way Istio's default (BASE) does, before RBAC and routing see them; a
proxyless gRPC client's API listener is left as it was. Envoy accepts the result.
(The traffic through a real Envoy is in tests/e2e/security/test_path_normalization.py.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from tests.harness import envoy_accepts
from xdsd.model.mesh_config import AccessLog, MeshConfig
from xdsd.resources import LISTENER
from xdsd.sources import load_directory
from xdsd.translate import MeshTranslation, NodeClass, Role, render_static
from xdsd.translate.node import ClientKind

FILES = """\
kind: Service
name: web
ports: [{number: 8080, protocol: HTTP}, {number: 9090, protocol: GRPC}]
endpoints: [{address: 10.0.0.1}]
---
kind: Service
name: db
ports: [{number: 5432, protocol: TCP}]
endpoints: [{address: 10.0.0.3}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web-edge, namespace: default}
spec:
  hosts: ["*"]
  gateways: [edge]
  http:
  - route: [{destination: {host: web.default.svc.cluster.local, port: {number: 8080}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: default}
spec:
  action: DENY
  rules:
  - to:
    - operation: {paths: ["/admin*"]}
"""

SIDECAR = NodeClass(
    "web",
    labels=(("app", "web"),),
    instance_ip="10.0.0.1",
    outbound_ip="127.0.0.2",
    virtual_addresses="127.240.0.0/16",
    capture=15006,
)
GATEWAY = NodeClass("gw", role=Role.GATEWAY, labels=(("istio", "ingressgateway"),))


def _hcms(listener: Any) -> list[tuple[str, Any]]:
    """(listener name, connection manager) of every HTTP connection manager of
    ``listener``: its filter chains', its default chain's and its API listener's."""
    found: list[tuple[str, Any]] = []
    configs = [f.typed_config for c in listener.filter_chains for f in c.filters]
    if listener.HasField("default_filter_chain"):
        configs.extend(f.typed_config for f in listener.default_filter_chain.filters)
    if listener.HasField("api_listener"):
        configs.append(listener.api_listener.api_listener)
    for config in configs:
        if config.type_url.endswith(".HttpConnectionManager"):
            hcm = hcm_pb2.HttpConnectionManager()
            assert config.Unpack(hcm)
            found.append((listener.name, hcm))
    return found


def _all_hcms(translation: MeshTranslation, node: NodeClass) -> list[tuple[str, Any]]:
    snapshot = translation.snapshot_for(node)
    return [h for r in snapshot.get(LISTENER).values() for h in _hcms(r.message)]


def _assert_base(name: str, hcm: Any) -> None:
    assert hcm.HasField("normalize_path") and hcm.normalize_path.value is True, name
    assert hcm.merge_slashes is False, name
    assert hcm.path_with_escaped_slashes_action == hcm_pb2.HttpConnectionManager.KEEP_UNCHANGED, (
        name
    )


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("mesh")
    (path / "mesh.yaml").write_text(FILES)
    result = load_directory(str(path))
    return result.mesh


@pytest.mark.parametrize(
    "config", [MeshConfig(), MeshConfig(access_log=AccessLog(enabled=True))], ids=["plain", "log"]
)
def test_every_sidecar_connection_manager_normalizes(mesh: Any, config: MeshConfig) -> None:
    """Inbound (the one that carries RBAC), outbound, the HTTP proxy, virtual-address and
    capture listeners; the access-log decoration keeps it."""
    hcms = _all_hcms(MeshTranslation(mesh, mesh_config=config), SIDECAR)
    names = {name for name, _ in hcms}
    assert "inbound|10.0.0.1|8080" in names, names
    assert "outbound_http_proxy" in names, names
    assert any(n.startswith("outbound|127.0.0.2|") for n in names), names
    assert any(n.startswith("outbound|127.240.") for n in names), names
    assert any(n.startswith("capture|") for n in names), names
    inbound = [h for n, h in hcms if n == "inbound|10.0.0.1|8080"]
    assert any(f.name == "envoy.filters.http.rbac" for h in inbound for f in h.http_filters)
    for name, hcm in hcms:
        _assert_base(name, hcm)


def test_every_gateway_connection_manager_normalizes(mesh: Any) -> None:
    hcms = _all_hcms(MeshTranslation(mesh), GATEWAY)
    assert [name for name, _ in hcms] == ["0.0.0.0_80"]
    for name, hcm in hcms:
        _assert_base(name, hcm)


def test_proxyless_grpc_api_listeners_are_left_alone(mesh: Any) -> None:
    """gRPC clients do not normalize and run no filter that reads the path: their API
    listeners stay as they were."""
    node = NodeClass("client", client=ClientKind.GRPC)
    hcms = _all_hcms(MeshTranslation(mesh), node)
    assert hcms
    for name, hcm in hcms:
        assert not hcm.HasField("normalize_path"), name
        assert hcm.path_with_escaped_slashes_action == 0, name


@pytest.mark.parametrize("node", [SIDECAR, GATEWAY], ids=["sidecar", "gateway"])
def test_envoy_accepts_the_normalizing_listeners(
    mesh: Any, node: NodeClass, tmp_path: Path
) -> None:
    envoy_accepts(render_static(mesh, node, admin_port=19000), tmp_path / "envoy.json")
