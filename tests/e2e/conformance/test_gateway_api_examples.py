"""The Gateway API project's own standard examples, served: for each example (a file, with
the files of its folder that hold no routes), the static configuration of every gateway
node its Gateways imply, and of one sidecar, passes ``envoy --mode validate``.

The examples assume a cluster: this test writes what they name and do not hold — the
xdsd Services their backendRefs name, a TLS Secret (a real certificate of a throwaway
CA) for each ``certificateRefs`` entry, and a GatewayClass of xdsd's controller for each
class name their Gateways use (an example's own GatewayClass names another controller:
it is replaced by xdsd's of the same name, so that its Gateways are served). A gateway
node is the one labelled ``gateway.networking.k8s.io/gateway-name: NAME`` in the
Gateway's namespace (``envoy_validation.implied_classes``)."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.certs import CertAuthority
from tests.harness import envoy_binary
from tests.sources.test_gateway_api_examples import (
    EXAMPLES,
    STANDARD,
    WITH_CONTEXT,
    _only_not_read_warnings,
    _services,
)
from xdsd.envoy_validation import ADMIN_PORT, implied_classes
from xdsd.errors import ConfigError, TranslationError
from xdsd.model.gateway_api import CONTROLLER_NAME
from xdsd.sources import load_directory
from xdsd.translate import Role, render_static

#: Each example: a top-level file alone, or a folder's route file with its context.
CASES: list[tuple[Path, list[Path]]] = [
    (p, []) for p in STANDARD if p.parent == EXAMPLES / "standard"
] + [(p, c) for p, c in WITH_CONTEXT]


def _certificate_refs(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(namespace, name) of each Secret a Gateway document's listeners name."""
    if doc.get("kind") != "Gateway":
        return []
    namespace = (doc.get("metadata") or {}).get("namespace", "default")
    found = []
    for listener in (doc.get("spec") or {}).get("listeners") or []:
        for ref in ((listener or {}).get("tls") or {}).get("certificateRefs") or []:
            if ref.get("kind", "Secret") == "Secret" and ref.get("group", "") == "":
                found.append((ref.get("namespace", namespace), ref["name"]))
    return found


#: The examples whose Gateway uses ``spec.tls`` (frontend client validation, backend
#: client certificates), which xdsd refuses by name under its own class.
REFUSED_BY_NAME = frozenset({"backend-tls.yaml", "frontend-cert-validation.yaml"})


def _write(directory: Path, files: list[Path], ca: CertAuthority) -> None:
    """The examples' documents (their GatewayClasses made xdsd's), and what they name."""
    docs: list[dict[str, Any]] = []
    for path in files:
        docs += [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    classes = {
        (d.get("spec") or {}).get("gatewayClassName") for d in docs if d.get("kind") == "Gateway"
    } | {(d.get("metadata") or {}).get("name") for d in docs if d.get("kind") == "GatewayClass"}
    docs = [d for d in docs if d.get("kind") != "GatewayClass"]
    docs += [
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GatewayClass",
            "metadata": {"name": name},
            "spec": {"controllerName": CONTROLLER_NAME},
        }
        for name in sorted(c for c in classes if isinstance(c, str))
    ]
    cert = ca.issue("example.com", ["*.example.com", "example.com"])
    crt = base64.b64encode(cert.cert.read_bytes()).decode()
    key = base64.b64encode(cert.key.read_bytes()).decode()
    secrets = {ref for d in docs for ref in _certificate_refs(d)}
    docs += [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "type": "kubernetes.io/tls",
            "data": {"tls.crt": crt, "tls.key": key},
        }
        for namespace, name in sorted(secrets)
    ]
    (directory / "examples.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    services = _services(files)
    if services:
        (directory / "zz-services.yaml").write_text(services)


def _refusals(configs: list[tuple[str, dict[str, Any]]], directory: Path) -> list[str]:
    """Envoy's words for each configuration ``envoy --mode validate`` refuses; the runs
    are started together (each costs about a second of Envoy's start-up)."""
    runs = []
    for i, (what, config) in enumerate(configs):
        path = directory / f"envoy-{i}.json"
        path.write_text(json.dumps(config))
        command = [envoy_binary(), "--mode", "validate", "-c", str(path), "-l", "critical"]
        command += ["--base-id", str(1000 + i)]
        runs.append(
            (
                what,
                subprocess.Popen(
                    command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
                ),
            )
        )
    refused = []
    for what, proc in runs:
        output, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            refused.append(f"{what}: {output[-2000:]}")
    return refused


@pytest.mark.parametrize(
    ("path", "context"), CASES, ids=[str(p.relative_to(EXAMPLES)) for p, _ in CASES]
)
def test_each_example_renders_what_envoy_accepts(
    tmp_path: Path, path: Path, context: list[Path]
) -> None:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    _write(config_dir, [*context, path], CertAuthority(tmp_path / "ca"))
    try:
        result = load_directory(str(config_dir))
    except ConfigError as e:
        # a field xdsd refuses in a Gateway of its own class (the example's class was
        # another controller's, which keeps them): refused by name, nothing to serve
        for problem in e.problems:
            assert "is not supported by xdsd" in problem.message, str(problem)
        assert path.name in REFUSED_BY_NAME, f"{path.name} refused: {e.problems[0]}"
        return
    _only_not_read_warnings(result)
    mesh = result.mesh
    classes = implied_classes(mesh)
    gateways = [(w, n) for w, n in classes if n.role is Role.GATEWAY]
    sidecars = [(w, n) for w, n in classes if n.role is Role.SIDECAR]
    docs = [d for p in [*context, path] for d in yaml.safe_load_all(p.read_text())]
    protocols = {
        (listener or {}).get("protocol")
        for d in docs
        if isinstance(d, dict) and d.get("kind") == "Gateway"
        for listener in (d.get("spec") or {}).get("listeners") or []
    }
    if protocols:
        # each Gateway of the example is served (its class made xdsd's), UDP ones too
        assert gateways, [str(w) for w in result.warnings]
    configs = [
        (what, render_static(mesh, node, node_id=f"n{i}", admin_port=ADMIN_PORT))
        for i, (what, node) in enumerate(gateways)
    ]
    if sidecars:
        what, node = sidecars[0]
        try:
            configs.append((what, render_static(mesh, node, admin_port=ADMIN_PORT)))
        except TranslationError as e:
            # the Services written here for the example share a TCP port, which a
            # sidecar cannot tell apart (xdsd says so by name)
            assert all("both TCP services on port" in p.message for p in e.problems), e
    assert not _refusals(configs, tmp_path)
