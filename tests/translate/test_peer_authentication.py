"""PeerAuthentication in translation: Istio's precedence (workload > namespace > mesh,
port levels keyed by the workload port, UNSET inherits, ``[mesh.mtls]`` under all),
the inbound listeners it gives, and the callers' side: endpoints of DISABLE workloads
marked for plaintext, clusters that honour the mark unless a DestinationRule sets TLS;
kept right across edits (memo checking mode is on); Envoy accepts the result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from envoy.config.endpoint.v3 import endpoint_pb2

from tests.harness import envoy_accepts
from tests.translate.test_mesh_mtls import mesh_tls, pki
from xdsd.model import Port, Protocol
from xdsd.model.mesh_config import MeshConfig, MeshTLS, MTLSMode
from xdsd.model.security import PeerAuthentication, WorkloadSelector
from xdsd.resources import CLUSTER, ENDPOINT, LISTENER
from xdsd.sources import load_directory
from xdsd.translate import MeshTranslation, NodeClass, render_static
from xdsd.translate.peer_authentication import (
    PLAINTEXT,
    PLAINTEXT_MATCH,
    TLS_MODE_KEY,
    TRANSPORT_SOCKET_MATCH,
    mode_of,
)
from xdsd.translate.workload_security import applies

D, P, S = MTLSMode.DISABLE, MTLSMode.PERMISSIVE, MTLSMode.STRICT
WEB = (("app", "web"),)


def pa(
    namespace: str,
    mode: MTLSMode | None = None,
    selector: tuple[tuple[str, str], ...] = (),
    ports: tuple[tuple[int, MTLSMode | None], ...] = (),
) -> PeerAuthentication:
    return PeerAuthentication(
        f"p-{namespace}-{mode}-{len(selector)}",
        namespace,
        selector=WorkloadSelector(selector) if selector else None,
        mode=mode,
        port_modes=ports,
    )


MESH_S = pa("istio-system", S)
NS_D = pa("default", D)
NS_UNSET = pa("default")
WL_P = pa("default", P, WEB)
WL_UNSET_PORTS = pa("default", None, WEB, ((8080, S), (9090, None)))

#: (policies, workload port, default) → mode.
PRECEDENCE = [
    ((), 80, P, P),
    ((MESH_S,), 80, P, S),
    ((MESH_S, NS_D), 80, P, D),
    ((MESH_S, NS_UNSET), 80, P, S),  # UNSET inherits the mesh's
    ((MESH_S, NS_D, WL_P), 80, S, P),
    ((NS_D, WL_UNSET_PORTS), 8080, P, S),  # the port's own mode
    ((NS_D, WL_UNSET_PORTS), 9090, P, D),  # port UNSET: the workload's, inherited
    ((NS_D, WL_UNSET_PORTS), 80, P, D),  # another port: the workload's
    ((pa("istio-system", D, WEB), MESH_S), 80, P, S),  # root selector: ignored
]


@pytest.mark.parametrize(("policies", "port", "default", "expected"), PRECEDENCE)
def test_istio_precedence(
    policies: tuple[PeerAuthentication, ...], port: int, default: MTLSMode, expected: MTLSMode
) -> None:
    assert mode_of(policies, port, default) is expected


def test_root_namespace_policy_with_a_selector_applies_to_no_workload() -> None:
    rooted = pa("istio-system", D, WEB)
    assert not applies(rooted, "default", WEB)
    assert not applies(rooted, "istio-system", WEB)
    assert applies(pa("istio-system", D), "default", WEB)
    assert not applies(pa("other", D), "default", WEB)


CONFIG = """\
kind: Service
name: web
ports:
- {number: 80, protocol: HTTP, targetPort: 8080}
- {number: 9000, name: db, protocol: TCP}
endpoints: [{address: 10.0.0.1, labels: {app: web}}, {address: 10.0.0.4, labels: {app: web2}}]
---
kind: Service
name: api
ports: [{number: 8081, protocol: GRPC}]
endpoints: [{address: 10.0.0.2, labels: {app: api}}]
"""
RULE = """\
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web}
spec:
  host: web
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
"""
WEB_NODE = NodeClass("web", instance_ip="10.0.0.1", outbound_ip="127.0.0.2", labels=WEB)
API_NODE = NodeClass("api", instance_ip="10.0.0.2", outbound_ip="127.0.0.2")


def policy(spec: str, name: str = "web", namespace: str = "default") -> str:
    return (
        "\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}"
    )


def translate(
    root: Path,
    extra: str,
    tls: MeshTLS,
    previous: MeshTranslation | None = None,
) -> MeshTranslation:
    (root / "config").mkdir(exist_ok=True)
    (root / "config" / "mesh.yaml").write_text(CONFIG + extra)
    mesh = load_directory(str(root / "config"), mesh_tls=tls).mesh
    return MeshTranslation(mesh, mesh_config=MeshConfig(mtls=tls), previous=previous)


def chains(tr: MeshTranslation, port: int) -> list[Any]:
    listener = tr.snapshot_for(WEB_NODE).get(LISTENER)[f"inbound|10.0.0.1|{port}"].message
    return list(listener.filter_chains)


def secure(chain: Any) -> bool:
    return chain.HasField("transport_socket")


def test_a_workload_policy_makes_its_ports_strict_and_a_port_level_keeps_one_permissive(
    tmp_path: Path,
) -> None:
    pki(tmp_path)
    tls = mesh_tls(tmp_path, MTLSMode.PERMISSIVE)
    tr = translate(tmp_path, "", tls)
    assert [secure(c) for c in chains(tr, 80)] == [True, False]  # the settings: PERMISSIVE
    strict = policy(
        "  selector: {matchLabels: {app: web}}\n  mtls: {mode: STRICT}\n"
        "  portLevelMtls:\n    8080: {mode: PERMISSIVE}\n"
    )
    tr = translate(tmp_path, strict, tls, previous=tr)
    # Port 80's workload port is its targetPort 8080: PERMISSIVE; 9000 is STRICT.
    assert [secure(c) for c in chains(tr, 80)] == [True, False]
    assert [secure(c) for c in chains(tr, 9000)] == [True]
    # Another workload of the namespace is not selected.
    api = tr.snapshot_for(API_NODE).get(LISTENER)["inbound|10.0.0.2|8081"].message
    assert len(api.filter_chains) == 2


def test_namespace_and_mesh_policies_and_their_precedence(tmp_path: Path) -> None:
    pki(tmp_path)
    tls = mesh_tls(tmp_path, MTLSMode.PERMISSIVE)
    mesh_wide = policy("  mtls: {mode: STRICT}\n", "mesh", "istio-system")
    tr = translate(tmp_path, mesh_wide, tls)
    assert [secure(c) for c in chains(tr, 80)] == [True]
    namespace = policy("  mtls: {mode: DISABLE}\n", "ns")
    tr = translate(tmp_path, mesh_wide + namespace, tls, previous=tr)
    assert [secure(c) for c in chains(tr, 80)] == [False]
    workload = policy("  selector: {matchLabels: {app: web}}\n  mtls: {mode: UNSET}\n")
    tr = translate(tmp_path, mesh_wide + namespace + workload, tls, previous=tr)
    assert [secure(c) for c in chains(tr, 80)] == [False]  # UNSET: the namespace's


def plaintext_endpoints(tr: MeshTranslation, cluster: str) -> list[str]:
    cla = tr.snapshot_for(API_NODE).get(ENDPOINT)[cluster].message
    assert isinstance(cla, endpoint_pb2.ClusterLoadAssignment)
    out = []
    for group in cla.endpoints:
        for lb in group.lb_endpoints:
            fields = lb.metadata.filter_metadata[TRANSPORT_SOCKET_MATCH].fields
            if TLS_MODE_KEY in fields:
                assert fields[TLS_MODE_KEY].string_value == PLAINTEXT
                out.append(lb.endpoint.address.socket_address.address)
    return out


def plaintext_match(tr: MeshTranslation, cluster: str) -> bool:
    message = tr.snapshot_for(API_NODE).get(CLUSTER)[cluster].message
    return [m.name for m in message.transport_socket_matches] == [PLAINTEXT_MATCH]


WEB_80 = "outbound|80||web.default.svc.cluster.local"
WEB_9000 = "outbound|9000||web.default.svc.cluster.local"


def test_callers_reach_disable_workloads_in_plaintext(tmp_path: Path) -> None:
    pki(tmp_path)
    tls = mesh_tls(tmp_path, MTLSMode.STRICT)
    tr = translate(tmp_path, "", tls)
    assert plaintext_match(tr, WEB_80) and plaintext_endpoints(tr, WEB_80) == []
    disable = policy(
        "  selector: {matchLabels: {app: web}}\n  mtls: {mode: DISABLE}\n"
        "  portLevelMtls:\n    9000: {mode: STRICT}\n"
    )
    tr = translate(tmp_path, disable, tls, previous=tr)
    # The workload labelled app=web only, on its DISABLE port only.
    assert plaintext_endpoints(tr, WEB_80) == ["10.0.0.1"]
    assert plaintext_endpoints(tr, WEB_9000) == []
    # The clusters are the same as before: shared, only the assignment changed.
    assert plaintext_match(tr, WEB_80)
    assert [secure(c) for c in chains(tr, 80)] == [False]
    # Back to STRICT: the mark goes away.
    tr = translate(tmp_path, policy("  mtls: {mode: STRICT}\n"), tls, previous=tr)
    assert plaintext_endpoints(tr, WEB_80) == []
    # Envoy accepts a caller's configuration with marked endpoints.
    tr = translate(tmp_path, disable, tls, previous=tr)
    config = render_static(tr.mesh, API_NODE, admin_port=0, mesh_config=MeshConfig(mtls=tls))
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == WEB_80]
    assert [m["name"] for m in cluster["transport_socket_matches"]] == [PLAINTEXT_MATCH]
    metadata = [
        lb.get("metadata", {}).get("filter_metadata", {}).get(TRANSPORT_SOCKET_MATCH)
        for group in cluster["load_assignment"]["endpoints"]
        for lb in group["lb_endpoints"]
    ]
    assert {TLS_MODE_KEY: PLAINTEXT} in metadata, metadata
    envoy_accepts(config, tmp_path / "api.json")


def test_a_destination_rules_tls_wins(tmp_path: Path) -> None:
    pki(tmp_path)
    tls = mesh_tls(tmp_path, MTLSMode.STRICT)
    disable = policy("  mtls: {mode: DISABLE}\n")
    tr = translate(tmp_path, RULE + disable, tls)
    assert not plaintext_match(tr, WEB_80)  # ISTIO_MUTUAL as written, whatever the callee
    assert plaintext_match(tr, "outbound|8081||api.default.svc.cluster.local")


def test_without_mesh_mtls_nothing_is_marked(tmp_path: Path) -> None:
    tr = translate(tmp_path, policy("  mtls: {mode: DISABLE}\n"), MeshTLS())
    assert plaintext_endpoints(tr, WEB_80) == []
    message = tr.snapshot_for(API_NODE).get(CLUSTER)[WEB_80].message
    assert not message.transport_socket_matches and not message.HasField("transport_socket")


def test_the_port_key_is_the_target_port() -> None:
    port = Port(80, Protocol.HTTP, target_port=8080)
    keyed = pa("default", S, WEB, ((8080, D),))
    assert mode_of((keyed,), port.effective_target_port, P) is D
    assert mode_of((pa("default", S, WEB, ((80, D),)),), port.effective_target_port, P) is S


SIDECAR = """
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: web, namespace: default}
spec:
  workloadSelector: {labels: {app: web}}
  ingress:
  - port: {number: 9080, protocol: HTTP, name: http}
    defaultEndpoint: 127.0.0.1:7070
"""


@pytest.mark.parametrize(("key", "strict"), [(9080, True), (7070, False), (8080, False)])
def test_a_sidecar_ingress_port_is_keyed_by_its_number(
    tmp_path: Path, key: int, strict: bool
) -> None:
    # Istio keys an ingress listener's port-level mode by the ingress port's number
    # (its workload port), not by the defaultEndpoint's port it forwards to.
    pki(tmp_path)
    tls = mesh_tls(tmp_path, MTLSMode.PERMISSIVE)
    level = policy(
        f"  selector: {{matchLabels: {{app: web}}}}\n  portLevelMtls:\n    {key}: {{mode: STRICT}}\n"
    )
    tr = translate(tmp_path, SIDECAR + level, tls)
    assert [secure(c) for c in chains(tr, 9080)] == ([True] if strict else [True, False])
    # the listener still forwards to the default endpoint
    cluster = tr.snapshot_for(WEB_NODE).get(CLUSTER)["inbound|9080||"].message
    sock = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert sock.port_value == 7070
