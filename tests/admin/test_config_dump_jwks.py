"""The config dump of a sidecar whose RequestAuthentication holds a symmetric (HMAC) key
inline: the admin server's rendering of the snapshot (what ``/debug/config_dump``
answers) names the provider and the key's id, not the key. (Through the real daemon's
admin server: tests/e2e/security/test_admin_secrets.py.)"""

from __future__ import annotations

import json
from pathlib import Path

from xdsd.admin import _snapshot_json
from xdsd.sources import load_directory
from xdsd.translate import MeshTranslation, NodeClass

KEY = "U0VDUkVULUhNQUMtS0VZLURPLU5PVC1TSE9X"
JWKS = json.dumps({"keys": [{"kty": "oct", "alg": "HS256", "kid": "k1", "k": KEY}]})
FILES = f"""\
kind: Service
name: web
ports: [{{number: 8080, protocol: HTTP}}]
endpoints: [{{address: 10.0.0.1, labels: {{app: web}}}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: hmac, namespace: default}}
spec:
  jwtRules:
  - issuer: https://hmac.issuer.test
    jwks: {json.dumps(JWKS)}
"""


def test_the_dump_shows_the_provider_but_not_the_hmac_key(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(FILES)
    mesh = load_directory(str(tmp_path)).mesh
    node = NodeClass(
        "web", instance_ip="10.0.0.1", outbound_ip="127.0.0.2", labels=(("app", "web"),)
    )
    snapshot = MeshTranslation(mesh).snapshot_for(node)
    served = b"".join(
        r.message.SerializeToString()
        for bucket in snapshot.resources.values()
        for r in bucket.values()
    )
    dump = json.dumps(_snapshot_json(snapshot))
    assert KEY.encode() in served  # the sidecar is given its key...
    assert KEY not in dump  # ...the dump does not show it
    assert "hmac.issuer.test" in dump and '\\"kid\\": \\"k1\\"' in dump
