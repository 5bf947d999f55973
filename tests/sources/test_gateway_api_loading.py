"""Gateway API objects in the loader: dispatch into ``Mesh.gateway_api``, the conversion
merged as the synthetic file ``<gateway-api>``, its problems and conditions, and
incremental reloads equal to cold loads (with a stand-in ``convert``: the real one is
the siblings' of issue 21)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from xdsd.errors import ConfigError, Problem
from xdsd.model import Service, VirtualService
from xdsd.model.gateway_api import Condition, GatewayAPI
from xdsd.model.rules import Destination, HTTPRoute, RouteDestination
from xdsd.sources import DirectoryLoader, LoadResult, load_directory
from xdsd.sources.gateway_api import merge
from xdsd.sources.gateway_api.convert import Converted

SERVICE = """apiVersion: xdsd.io/v1
kind: Service
metadata: {{name: {name}}}
spec:
  ports: [{{number: 80, protocol: HTTP}}]
  endpoints: [{{address: 10.0.0.{n}}}]
"""
CLASS = """apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: xdsd}
spec: {controllerName: xdsd.dev/gateway-controller}
"""
GATEWAY = """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: web
  labels: {team: edge}
spec:
  gatewayClassName: xdsd
  listeners:
  - {name: http, port: 8080, protocol: HTTP}
status:
  conditions: [{type: Programmed, status: "True"}]
"""
ROUTE = """apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}}}
spec:
  parentRefs: [{{name: web}}]
  rules:
  - backendRefs: [{{name: {backend}, port: 80}}]
"""

calls: list[int] = []


def fake_convert(api: GatewayAPI, services: Sequence[Service], root: str = "") -> Converted:
    """One VirtualService per HTTPRoute to its first backend; an error for a backend
    no service is; a condition per route."""
    calls.append(1)
    names = {s.name for s in services}
    out: list[VirtualService] = []
    problems: list[Problem] = []
    conditions: list[Condition] = []
    for route in api.routes:
        backend = route.rules[0].backend_refs[0].ref.name
        if backend not in names:
            problems.append(
                Problem(route.origin.path, route.origin.line, "", f"no service {backend}")
            )
            continue
        http = HTTPRoute(route=(RouteDestination(Destination(backend)),))
        vs = VirtualService(
            f"gw-{route.name}", route.namespace, ("*",), ("web",), (http,), origin=route.origin
        )
        out.append(vs)
        conditions.append(Condition(route.key, "Accepted", True, "Accepted"))
    return Converted((), tuple(out), tuple(conditions), tuple(problems))


@pytest.fixture(autouse=True)
def stand_in(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(merge, "convert", fake_convert)
    calls.clear()
    yield


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).write_text(text)


def cold(root: Path) -> LoadResult | list[str]:
    try:
        return load_directory(str(root))
    except ConfigError as e:
        return [str(p) for p in e.problems]


def warm(loader: DirectoryLoader, changed: set[str] | None) -> LoadResult | list[str]:
    try:
        return loader.load(changed)
    except ConfigError as e:
        return [str(p) for p in e.problems]


def same(a: LoadResult | list[str], b: LoadResult | list[str]) -> bool:
    if isinstance(a, list) or isinstance(b, list):
        return a == b
    return (a.mesh, a.mesh.gateway_conditions, a.warnings) == (
        b.mesh,
        b.mesh.gateway_conditions,
        b.warnings,
    )


def test_objects_are_in_the_mesh_and_the_conversion_is_merged(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "a.yaml": SERVICE.format(name="a", n=1),
            "class.yaml": CLASS,
            "gw.yaml": GATEWAY,
            "r1.yaml": ROUTE.format(name="r1", backend="a"),
        },
    )
    result = load_directory(str(tmp_path))
    api = result.mesh.gateway_api
    assert [c.name for c in api.classes] == ["xdsd"]
    assert [g.name for g in api.gateways] == ["web"]
    assert api.gateways[0].labels == (("team", "edge"),)
    assert [r.key.kind for r in api.routes] == ["HTTPRoute"]
    (vs,) = result.mesh.virtual_services
    assert vs.name == "gw-r1" and vs.origin.path.endswith("r1.yaml")
    assert [c.type for c in result.mesh.gateway_conditions] == ["Accepted"]


def test_conversion_problems_refuse_the_load(tmp_path: Path) -> None:
    write(tmp_path, {"gw.yaml": GATEWAY, "r1.yaml": ROUTE.format(name="r1", backend="none")})
    with pytest.raises(ConfigError) as e:
        load_directory(str(tmp_path))
    assert [p.message for p in e.value.problems] == ["no service none"]
    assert e.value.problems[0].path.endswith("r1.yaml")


def test_converted_duplicates_of_a_file_are_reported(tmp_path: Path) -> None:
    vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: gw-r1}\n"
    vs += "spec:\n  hosts: [a]\n  http: [{route: [{destination: {host: a}}]}]\n"
    write(
        tmp_path,
        {
            "a.yaml": SERVICE.format(name="a", n=1),
            "r1.yaml": ROUTE.format(name="r1", backend="a"),
            "vs.yaml": vs,
        },
    )
    errors = cold(tmp_path)
    assert isinstance(errors, list) and any("duplicate VirtualService" in e for e in errors)


def test_no_gateway_api_objects_no_conversion(tmp_path: Path) -> None:
    write(tmp_path, {"a.yaml": SERVICE.format(name="a", n=1)})
    load_directory(str(tmp_path))
    assert calls == []


def test_incremental_reloads_give_what_cold_loads_give(tmp_path: Path) -> None:
    write(tmp_path, {"a.yaml": SERVICE.format(name="a", n=1), "gw.yaml": GATEWAY})
    loader = DirectoryLoader(str(tmp_path))
    assert same(warm(loader, None), cold(tmp_path))
    r1, b, a = tmp_path / "r1.yaml", tmp_path / "b.yaml", tmp_path / "a.yaml"
    steps: list[tuple[str, Path, str | None]] = [
        ("route to b, missing", r1, ROUTE.format(name="r1", backend="b")),
        ("b appears", b, SERVICE.format(name="b", n=2)),
        ("route to a", r1, ROUTE.format(name="r1", backend="a")),
        ("a changes", a, SERVICE.format(name="a", n=9)),
        ("b goes", b, None),
        ("route goes", r1, None),
        ("route back", r1, ROUTE.format(name="r1", backend="a")),
    ]
    for what, path, text in steps:
        if text is None:
            path.unlink()
        else:
            path.write_text(text)
        calls.clear()
        got = warm(loader, {str(path)})
        assert same(got, cold(tmp_path)), what
    # an unchanged reload does not convert again
    calls.clear()
    assert same(warm(loader, None), cold(tmp_path))
    assert len(calls) == 1  # the cold load's: the forced reload changed nothing


def test_unchanged_converted_objects_keep_their_identity(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "a.yaml": SERVICE.format(name="a", n=1),
            "b.yaml": SERVICE.format(name="b", n=2),
            "r1.yaml": ROUTE.format(name="r1", backend="a"),
            "r2.yaml": ROUTE.format(name="r2", backend="b"),
        },
    )
    loader = DirectoryLoader(str(tmp_path))
    first = loader.load()
    (tmp_path / "r2.yaml").write_text(ROUTE.format(name="r2", backend="a"))
    second = loader.load({str(tmp_path / "r2.yaml")})
    old = {v.name: v for v in first.mesh.virtual_services}
    new = {v.name: v for v in second.mesh.virtual_services}
    assert new["gw-r1"] is old["gw-r1"]
    assert new["gw-r2"] != old["gw-r2"]
