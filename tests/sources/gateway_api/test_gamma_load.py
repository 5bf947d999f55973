"""GAMMA through the loader and ``xdsd validate``: an HTTPRoute whose parent is a
Service becomes a VirtualService bound to ``mesh`` with the ingress conversion's rules;
an Istio VirtualService for the same service refuses the load naming both files; the
conditions are printed one per line, with a summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from xdsd.cli import main
from xdsd.errors import ConfigError
from xdsd.sources import DirectoryLoader

SERVICES = "".join(
    f"---\nkind: Service\nname: {name}\nports:\n- {{number: 9080, protocol: HTTP, name: http}}\n"
    f"endpoints:\n- {{address: 10.0.0.{i}}}\n"
    for i, name in enumerate(("reviews", "reviews-v1", "reviews-v2"), start=1)
)
ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews-canary
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: reviews
    port: 9080
  rules:
  - matches:
    - headers:
      - name: end-user
        value: jason
    backendRefs:
    - name: reviews-v2
      port: 9080
  - backendRefs:
    - name: reviews-v1
      port: 9080
      weight: 90
    - name: reviews-v2
      port: 9080
      weight: 10
"""
ISTIO = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews-v1
"""


def _config(tmp_path: Path, **files: str) -> Path:
    config = tmp_path / "config"
    config.mkdir()
    (config / "services.yaml").write_text(SERVICES)
    for name, text in files.items():
        (config / f"{name}.yaml").write_text(text)
    return config


def test_a_service_parent_is_a_mesh_virtual_service_with_the_shared_rules(tmp_path: Path) -> None:
    mesh = DirectoryLoader(str(_config(tmp_path, route=ROUTE))).load().mesh
    (vs,) = mesh.virtual_services
    assert vs.hosts == ("reviews.default.svc.cluster.local",) and vs.gateways == ("mesh",)
    header, split = vs.http  # the header match first (precedence), both on port 9080
    assert header.match[0].headers[0].name == "end-user" and header.match[0].port == 9080
    assert [(d.destination.host.split(".")[0], d.weight) for d in split.route] == [
        ("reviews-v1", 90),
        ("reviews-v2", 10),
    ]
    assert split.match[0].port == 9080
    types = {(c.scope, c.type, c.status) for c in mesh.gateway_conditions}
    assert types == {("parentRefs[0]", "Accepted", True), ("parentRefs[0]", "ResolvedRefs", True)}


def test_an_istio_virtual_service_for_the_same_service_refuses_the_load(tmp_path: Path) -> None:
    config = _config(tmp_path, route=ROUTE, vs=ISTIO)
    with pytest.raises(ConfigError) as refused:
        DirectoryLoader(str(config)).load()
    (error,) = refused.value.problems
    assert str(error) == (
        f"{config}/vs.yaml:7: hosts[0]: Service default/reviews is routed both by HTTPRoute "
        f"default/reviews-canary ({config}/route.yaml:7) and by VirtualService 'reviews'; "
        "route a service with the Gateway API or with a VirtualService, not both"
    )


def test_validate_prints_each_condition_not_met_and_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = ROUTE.replace("name: reviews\n    port", "name: nope\n    port").replace(
        "  - backendRefs:\n    - name: reviews-v1", "  - backendRefs:\n    - name: gone"
    )
    second = ROUTE.replace("reviews-canary", "other").replace(
        "name: reviews\n", "name: reviews-v1\n"
    )
    second = second.replace(
        "  - backendRefs:\n    - name: reviews-v1", "  - backendRefs:\n    - name: gone"
    )
    config = _config(tmp_path, broken=broken, second=second)
    assert main(["validate", str(config)]) == 0
    out, err = capsys.readouterr()
    assert f"{config}/broken.yaml:7: HTTPRoute default/reviews-canary: parentRefs[0]: " in err
    assert "Accepted=False NoMatchingParent: no Service default/nope" in err
    assert (
        f"{config}/second.yaml:7: HTTPRoute default/other: parentRefs[0]: "
        "ResolvedRefs=False BackendNotFound: " in err
    )
    assert out.splitlines()[-1] == "Gateway API status: 2 objects, 3 conditions, 2 not met"
