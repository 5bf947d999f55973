"""The Gateway API project's own examples (``conformance/gateway-api/examples``): every
standard-channel file loads, alone and with the files of its folder, beside the xdsd
Services its backendRefs name (written here); the experimental ones load or are refused
by name. Kinds xdsd does not read (ListenerSet) are warnings naming them; the
examples' Namespaces are read, and give their labels to listeners' selectors."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.paths import CONFORMANCE
from xdsd.errors import ConfigError
from xdsd.sources import LoadResult, load_directory

EXAMPLES = CONFORMANCE / "gateway-api" / "examples"
STANDARD = sorted((EXAMPLES / "standard").rglob("*.yaml"))
EXPERIMENTAL = sorted((EXAMPLES / "experimental").rglob("*.yaml"))
FOLDERS = sorted({p.parent for p in STANDARD if p.parent != EXAMPLES / "standard"})
#: The protocol of an xdsd Service port a route kind's backend gets.
PROTOCOLS = {"HTTPRoute": "HTTP", "GRPCRoute": "GRPC", "TLSRoute": "TLS", "UDPRoute": "UDP"}
#: Kinds of the examples xdsd does not read: a warning each, by name.
NOT_READ = ("ListenerSet",)


def _backends(doc: dict[str, Any]) -> list[tuple[str, str, int, str]]:
    """(namespace, name, port, protocol) of each Service a route document names
    (backendRefs, per-backend filters and mirrors)."""
    kind = doc.get("kind", "")
    meta = doc.get("metadata") or {}
    namespace = meta.get("namespace", "default")
    protocol = PROTOCOLS.get(kind, "TCP")
    found: list[tuple[str, str, int, str]] = []

    def visit(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                refs = item if key == "backendRefs" else [item] if key == "backendRef" else []
                for ref in refs if isinstance(refs, list) else []:
                    if (
                        isinstance(ref, dict)
                        and ref.get("kind", "Service") == "Service"
                        and ref.get("group", "") == ""
                        and isinstance(ref.get("port"), int)
                    ):
                        ns = ref.get("namespace", namespace)
                        found.append((ns, ref["name"], ref["port"], protocol))
                visit(item)
        elif isinstance(value, list):
            for item in value:
                visit(item)

    if kind.endswith("Route"):
        visit(doc.get("spec"))
    return found


def _services(files: list[Path]) -> str:
    """The xdsd Services the routes of ``files`` name, each with every port named."""
    ports: dict[tuple[str, str], dict[int, str]] = {}
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict):
                for ns, name, port, protocol in _backends(doc):
                    ports.setdefault((ns, name), {}).setdefault(port, protocol)
    out = []
    for i, ((ns, name), by_port) in enumerate(sorted(ports.items())):
        listed = ", ".join(f"{{number: {n}, protocol: {p}}}" for n, p in sorted(by_port.items()))
        out.append(
            f"apiVersion: xdsd.io/v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n"
            f"spec:\n  ports: [{listed}]\n  endpoints: [{{address: 10.9.{i // 250}.{i % 250 + 1}}}]\n"
        )
    return "---\n".join(out)


def _load(tmp_path: Path, files: list[Path]) -> LoadResult:
    for i, path in enumerate(files):
        shutil.copy(path, tmp_path / f"{i:02d}-{path.name}")
    services = _services(files)
    if services:
        (tmp_path / "zz-services.yaml").write_text(services)
    return load_directory(str(tmp_path))


#: What a standard file may hold that xdsd does not serve, refused by name: a parent
#: that is neither a Gateway nor a Service (GEP-1748's ServiceImport).
NOT_SERVED = (
    "is not served",
    "a parent of group multicluster.x-k8s.io and kind ServiceImport is neither",
)


def _only_not_read_warnings(result: LoadResult) -> None:
    """Every warning names a kind xdsd does not read, or what the conversion does not
    serve (refused by name)."""
    for warning in result.warnings:
        message = warning.message
        assert any(f"{kind} (" in message for kind in NOT_READ) or any(
            words in message for words in NOT_SERVED
        ), str(warning)


def test_the_examples_are_there() -> None:
    assert len(STANDARD) > 60 and EXPERIMENTAL
    assert (CONFORMANCE / "gateway-api" / "LICENSE").is_file()


@pytest.mark.parametrize("path", STANDARD, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_every_standard_file_loads(tmp_path: Path, path: Path) -> None:
    result = _load(tmp_path, [path])
    _only_not_read_warnings(result)
    kinds = {d.get("kind") for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)}
    api = result.mesh.gateway_api
    read = len(api.classes) + len(api.gateways) + len(api.routes) + len(api.grants)
    read += len(api.backend_tls) + len(api.namespaces)
    assert read or kinds <= set(NOT_READ), kinds


def _kinds(path: Path) -> set[str]:
    return {d.get("kind", "") for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)}


#: Each file of a folder holding routes, with the folder's files that hold none (its
#: Gateways, classes, grants, namespaces): the folder's files are alternatives to one
#: another (the same route names), each meant to go with that context.
WITH_CONTEXT = [
    (
        path,
        [
            c
            for c in sorted(path.parent.glob("*.yaml"))
            if not any(k.endswith("Route") for k in _kinds(c))
        ],
    )
    for folder in FOLDERS
    for path in sorted(folder.glob("*.yaml"))
    if any(k.endswith("Route") for k in _kinds(path))
]


@pytest.mark.parametrize(
    ("path", "context"), WITH_CONTEXT, ids=[str(p.relative_to(EXAMPLES)) for p, _ in WITH_CONTEXT]
)
def test_every_standard_route_loads_with_its_folders_gateways(
    tmp_path: Path, path: Path, context: list[Path]
) -> None:
    _only_not_read_warnings(_load(tmp_path, [*context, path]))


@pytest.mark.parametrize("path", EXPERIMENTAL, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_experimental_files_load_or_are_refused_by_name(tmp_path: Path, path: Path) -> None:
    try:
        _load(tmp_path, [path])
    except ConfigError as e:
        for problem in e.problems:
            assert "not supported" in problem.message or "not read" in problem.message, str(problem)


CROSS = EXAMPLES / "standard" / "cross-namespace-routing"
CLASS = """\
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: shared-gateway-class}
spec: {controllerName: xdsd.dev/gateway-controller}
"""


@pytest.mark.parametrize("with_namespaces", [True, False])
def test_the_cross_namespace_example_attaches_by_its_namespaces_labels(
    tmp_path: Path, with_namespaces: bool
) -> None:
    """The guide's shared Gateway takes routes of namespaces labelled
    ``shared-gateway-access: "true"``: with the example's Namespace documents its
    routes are accepted; without them, no namespace has the label."""
    (tmp_path / "class.yaml").write_text(CLASS)
    files = [CROSS / "gateway.yaml", CROSS / "site-route.yaml", CROSS / "store-route.yaml"]
    if with_namespaces:
        files.insert(0, CROSS / "0-namespaces.yaml")
    mesh = _load(tmp_path, files).mesh
    accepted = {
        (c.target.name, c.status, c.reason)
        for c in mesh.gateway_conditions
        if c.target.kind == "HTTPRoute" and c.type == "Accepted"
    }
    reason = "Accepted" if with_namespaces else "NotAllowedByListeners"
    routes = ("home", "login", "store")  # site-route.yaml holds two
    assert accepted == {(name, with_namespaces, reason) for name in routes}


def test_the_udp_example_forwards_to_udp_ports(tmp_path: Path) -> None:
    """The guide's UDP Gateway (its class made xdsd's): each listener forwards to its
    UDPRoute's backend, a UDP port of the Service written here."""
    (tmp_path / "class.yaml").write_text(
        CLASS.replace("shared-gateway-class", "my-udp-gateway-class")
    )
    mesh = _load(tmp_path, [EXAMPLES / "standard" / "basic-udp.yaml"]).mesh
    (gateway,) = mesh.gateways
    assert {s.name: s.datagrams_to for s in gateway.servers} == {
        "foo": (("my-foo-service.default.svc.cluster.local", 6000, 1),),
        "bar": (("my-bar-service.default.svc.cluster.local", 6000, 1),),
    }
