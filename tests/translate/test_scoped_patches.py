"""EnvoyFilter patches and Sidecar scoping together: a patch of a cluster a node cannot
see does not bring that cluster back into its snapshot, and nodes that see different
sets each get the patch on what they do see."""

from __future__ import annotations

from pathlib import Path

from xdsd.resources import CLUSTER
from xdsd.sources import load_directory
from xdsd.translate import MeshTranslation, NodeClass

CONFIG = """\
kind: Service
metadata: {name: web}
spec:
  ports: [{number: 80, protocol: HTTP}]
  endpoints: [{address: 10.0.0.1}]
---
kind: Service
metadata: {name: db}
spec:
  ports: [{number: 5432, protocol: TCP}]
  endpoints: [{address: 10.0.0.2}]
---
kind: Service
metadata: {name: client}
spec:
  ports: [{number: 8080, protocol: HTTP, targetPort: 7070}]
  endpoints: [{address: 10.0.0.3, labels: {app: client}}, {address: 10.0.0.4, labels: {app: other}}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: narrow}
spec:
  workloadSelector: {labels: {app: client}}
  egress: [{hosts: ["./web"]}]
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: timeouts, namespace: istio-system}
spec:
  configPatches:
  - applyTo: CLUSTER
    match: {context: SIDECAR_OUTBOUND}
    patch: {operation: MERGE, value: {connect_timeout: 7s}}
"""


def test_a_patch_does_not_widen_a_scoped_snapshot(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(CONFIG)
    translation = MeshTranslation(load_directory(str(tmp_path)).mesh)
    narrow = NodeClass("client", labels=(("app", "client"),), instance_ip="10.0.0.3")
    wide = NodeClass("client", labels=(("app", "other"),), instance_ip="10.0.0.4")
    for node, expected in ((narrow, {"web"}), (wide, {"web", "db", "client"})):
        clusters = translation.snapshot_for(node).get(CLUSTER)
        outbound = {n.split("|")[3].split(".")[0] for n in clusters if n.startswith("outbound|")}
        assert outbound == expected, (node.labels, sorted(clusters))
        for name, resource in clusters.items():
            if name.startswith("outbound|"):
                assert resource.message.connect_timeout.seconds == 7, name
