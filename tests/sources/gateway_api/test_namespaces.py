"""Namespace documents (core ``v1``) and the label selectors of listeners'
``allowedRoutes``: read from files, hostile input refused at its field, and the
selector applied to the routes of each namespace through a whole load."""

from __future__ import annotations

from pathlib import Path

import pytest

from xdsd.errors import ConfigError, Problem
from xdsd.model.gateway_api import (
    AllowedRoutes,
    KubeGateway,
    LabelRequirement,
    Listener,
    ObjectRef,
    Route,
)
from xdsd.sources import LoadResult, load_directory
from xdsd.sources.gateway_api import conditions as cond
from xdsd.sources.gateway_api.attach import attach, selects

GROUP = "gateway.networking.k8s.io"
NAME = "kubernetes.io/metadata.name"


def _load(tmp_path: Path, text: str) -> LoadResult:
    (tmp_path / "doc.yaml").write_text(text)
    return load_directory(str(tmp_path))


def _errors(tmp_path: Path, text: str) -> list[Problem]:
    (tmp_path / "doc.yaml").write_text(text)
    with pytest.raises(ConfigError) as e:
        load_directory(str(tmp_path))
    return list(e.value.problems)


def test_a_namespace_is_read_with_its_name_label(tmp_path: Path) -> None:
    text = """\
apiVersion: v1
kind: Namespace
metadata:
  name: apps
  labels: {team: a, example.com/tier: gold}
  annotations: {note: anything}
  uid: 1234
spec: {finalizers: [kubernetes]}
status: {phase: Active}
---
apiVersion: v1
kind: Namespace
metadata: {name: bare}
"""
    api = _load(tmp_path, text).mesh.gateway_api
    assert [(ns.name, ns.labels) for ns in api.namespaces] == [
        ("apps", (("example.com/tier", "gold"), (NAME, "apps"), ("team", "a"))),
        ("bare", ((NAME, "bare"),)),
    ]
    assert api.namespace_labels()["bare"] == {NAME: "bare"}


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ("{labels: {a: b}}", "metadata.name: is required"),
        ("{name: Apps}", "metadata.name: must be a namespace name"),
        ("{name: " + "a" * 64 + "}", "metadata.name: must be a namespace name"),
        ("{name: apps, namespace: default}", "metadata.namespace: a Namespace is not in"),
        ("{name: apps, labels: {'bad key': x}}", "is not a label name"),
        ("{name: apps, labels: {a/b/c: x}}", "its prefix must be"),
        ("{name: apps, labels: {team: '-x'}}", "label value '-x' must be"),
        ("{name: apps, labels: {team: 3}}", "label values must be strings"),
        ("{name: apps, labels: [team]}", "metadata.labels: must be"),
        ("{name: apps, labels: {kubernetes.io/metadata.name: other}}", "own name ('apps')"),
        ("{name: apps, lables: {}}", "did you mean 'labels'"),
        ("{name: apps, labels: {" + "a" * 400 + ": x}}", "is not a label name"),
    ],
)
def test_a_wrong_namespace_is_an_error_at_its_field(
    tmp_path: Path, metadata: str, expected: str
) -> None:
    found = _errors(tmp_path, f"apiVersion: v1\nkind: Namespace\nmetadata: {metadata}\n")
    shown = [f"{p.field}: {p.message}" for p in found]
    assert any(expected in s for s in shown), shown
    assert all(p.line == 3 for p in found), found
    assert all(len(s) < 400 for s in shown), shown  # a huge name is not repeated


def test_too_many_labels_and_a_spec_field_are_refused(tmp_path: Path) -> None:
    many = ", ".join(f"l{i}: v" for i in range(65))
    shown = [
        f"{p.field}: {p.message}"
        for p in _errors(
            tmp_path,
            f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: a, labels: {{{many}}}}}\n",
        )
    ]
    assert any("holds 65 labels: xdsd reads at most 64" in s for s in shown), shown
    shown = [
        f"{p.field}: {p.message}"
        for p in _errors(
            tmp_path, "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\nspec: {x: 1}\n"
        )
    ]
    assert any(s.startswith("spec.x: unknown field") for s in shown), shown


def test_a_namespace_declared_twice_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: apps}\n")
    found = _errors(
        tmp_path, "apiVersion: v1\nkind: Namespace\nmetadata: {name: apps, labels: {a: b}}\n"
    )
    assert any("duplicate Namespace" in p.message for p in found), found


@pytest.mark.parametrize(
    ("allowed", "labels", "selected"),
    [
        (AllowedRoutes("Selector"), {}, True),  # an empty selector selects all
        (AllowedRoutes("Selector", (("team", "a"),)), {"team": "a"}, True),
        (AllowedRoutes("Selector", (("team", "a"),)), {"team": "b"}, False),
        (
            AllowedRoutes("Selector", expressions=(LabelRequirement("team", "In", ("a", "b")),)),
            {"team": "b"},
            True,
        ),
        (
            AllowedRoutes("Selector", expressions=(LabelRequirement("team", "In", ("a",)),)),
            {},
            False,
        ),
        (
            AllowedRoutes("Selector", expressions=(LabelRequirement("team", "NotIn", ("a",)),)),
            {},
            True,
        ),
        (
            AllowedRoutes("Selector", expressions=(LabelRequirement("team", "NotIn", ("a",)),)),
            {"team": "a"},
            False,
        ),
        (
            AllowedRoutes("Selector", expressions=(LabelRequirement("team", "Exists"),)),
            {"team": ""},
            True,
        ),
        (AllowedRoutes("Selector", expressions=(LabelRequirement("team", "Exists"),)), {}, False),
        (
            AllowedRoutes("Selector", expressions=(LabelRequirement("team", "DoesNotExist"),)),
            {},
            True,
        ),
        (
            AllowedRoutes("Selector", expressions=(LabelRequirement("team", "DoesNotExist"),)),
            {"team": "a"},
            False,
        ),
        (
            AllowedRoutes(
                "Selector",
                (("env", "prod"),),
                expressions=(LabelRequirement("team", "Exists"),),
            ),
            {"team": "a", "env": "dev"},
            False,
        ),
    ],
)
def test_selector_operators(allowed: AllowedRoutes, labels: dict[str, str], selected: bool) -> None:
    assert selects(allowed, labels) is selected


def test_an_undeclared_namespace_has_only_its_name_label() -> None:
    by_name = AllowedRoutes("Selector", ((NAME, "apps"),))
    gw = KubeGateway("gw", "infra", "xdsd", (Listener("http", 80, "HTTP", allowed_routes=by_name),))
    parent = ObjectRef("gw", "Gateway", GROUP, namespace="infra")
    found, _ = attach(Route("HTTPRoute", "r", "apps", (parent,)), {("infra", "gw"): gw}, {})
    assert len(found) == 1
    found, conditions = attach(
        Route("HTTPRoute", "r", "other", (parent,)), {("infra", "gw"): gw}, {}
    )
    assert not found and conditions[0].reason == cond.NOT_ALLOWED_BY_LISTENERS


LOADED = """\
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: xdsd}
spec: {controllerName: xdsd.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra}
spec:
  gatewayClassName: xdsd
  listeners:
  - name: http
    port: 80
    protocol: HTTP
    allowedRoutes:
      namespaces:
        from: Selector
        selector:
          matchLabels: {shared-gateway: "true"}
          matchExpressions: [{key: env, operator: NotIn, values: [dev]}]
---
apiVersion: v1
kind: Namespace
metadata: {name: apps, labels: {shared-gateway: "true"}}
---
apiVersion: v1
kind: Namespace
metadata: {name: devs, labels: {shared-gateway: "true", env: dev}}
"""


def _route(namespace: str) -> str:
    return f"""\
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: {namespace}}}
spec:
  parentRefs: [{{name: gw, namespace: infra}}]
  rules: [{{backendRefs: [{{name: web, port: 80}}]}}]
---
apiVersion: xdsd.dev/v1
kind: Service
metadata: {{name: web, namespace: {namespace}}}
spec:
  ports: [{{number: 80, protocol: HTTP}}]
  endpoints: [{{address: 10.0.0.1}}]
"""


@pytest.mark.parametrize(
    ("namespace", "attached"),
    [("apps", True), ("devs", False), ("plain", False), ("infra", False)],
)
def test_the_selector_over_namespace_documents(
    tmp_path: Path, namespace: str, attached: bool
) -> None:
    """Labelled and not excluded: attached; excluded by an expression, undeclared,
    or the Gateway's own unlabelled namespace: ``NotAllowedByListeners``."""
    mesh = _load(tmp_path, LOADED + _route(namespace)).mesh
    (accepted,) = [
        c for c in mesh.gateway_conditions if c.target.kind == "HTTPRoute" and c.type == "Accepted"
    ]
    assert accepted.status is attached
    assert accepted.reason == ("Accepted" if attached else cond.NOT_ALLOWED_BY_LISTENERS)
    routed = [vs for vs in mesh.virtual_services if vs.gateways == ("infra/gw",)]
    assert bool(routed) is attached
