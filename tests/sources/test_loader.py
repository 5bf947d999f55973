"""Loading directories: shapes, formats, file selection, warnings, cross-checks."""

from __future__ import annotations

import os
import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from tests.paths import EXAMPLE_CONFIG
from xdsd.errors import ConfigError, Severity
from xdsd.model import Locality, Protocol, Resolution
from xdsd.sources import load_directory

FLAT_TOML = """\
kind = "Service"
name = "ratings"
namespace = "shop"
hosts = ["ratings.example.internal"]
resolution = "DNS"

[[ports]]
name = "grpc"
number = 9090
protocol = "grpc"
targetPort = 8090

[[endpoints]]
address = "ratings-1.example.internal"
labels = { version = "v1" }
locality = "eu/a/1"
weight = 3
"""

ISTIO_YAML = """\
apiVersion: xdsd.io/v1
kind: Service
metadata:
  name: ratings
  namespace: shop
spec:
  hosts: [ratings.example.internal]
  resolution: DNS
  ports:
  - {name: grpc, number: 9090, protocol: grpc, targetPort: 8090}
  endpoints:
  - address: ratings-1.example.internal
    labels: {version: v1}
    locality: eu/a/1
    weight: 3
"""

FLAT_JSON = """\
{"kind": "Service", "name": "ratings", "namespace": "shop",
 "hosts": ["ratings.example.internal"], "resolution": "DNS",
 "ports": [{"name": "grpc", "number": 9090, "protocol": "grpc", "targetPort": 8090}],
 "endpoints": [{"address": "ratings-1.example.internal", "labels": {"version": "v1"},
                "locality": "eu/a/1", "weight": 3}]}
"""


@pytest.mark.parametrize(
    ("name", "text"), [("r.toml", FLAT_TOML), ("r.yaml", ISTIO_YAML), ("r.json", FLAT_JSON)]
)
def test_flat_and_istio_shapes_mean_the_same(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text)
    mesh = load_directory(str(tmp_path)).mesh
    (svc,) = mesh.services
    assert (svc.name, svc.namespace, svc.resolution) == ("ratings", "shop", Resolution.DNS)
    assert svc.ports[0].protocol is Protocol.GRPC and svc.ports[0].effective_target_port == 8090
    (ep,) = svc.endpoints
    assert ep.labels == (("version", "v1"),) and ep.weight == 3
    assert ep.locality == Locality("eu", "a", "1")
    assert mesh.service("ratings.example.internal", "other") is svc
    assert mesh.service("ratings", "shop") is svc
    assert mesh.service("ratings.shop.svc.cluster.local", "default") is svc
    assert mesh.service("ratings", "default") is None


def test_example_config_loads_cleanly() -> None:
    result = load_directory(str(EXAMPLE_CONFIG))
    assert result.warnings == ()
    names = [s.name for s in result.mesh.services]
    assert names == ["details", "productpage", "ratings", "reviews"]
    (vs,) = result.mesh.virtual_services
    split = vs.http[1]
    assert [(r.destination.subset, r.weight) for r in split.route] == [("v1", 50), ("v3", 50)]
    assert split.timeout == timedelta(seconds=10)
    assert split.retries is not None and split.retries.attempts == 3
    # the loader fills in the port of a single-port destination
    assert all(r.destination.port == 9080 for r in split.route)


def test_dot_names_skipped_symlinks_followed_multi_document(tmp_path: Path) -> None:
    real = tmp_path / "..2026_11_26"
    real.mkdir()
    shutil.copy(EXAMPLE_CONFIG / "services" / "details.toml", real / "details.toml")
    os.symlink("..2026_11_26", tmp_path / "..data")
    os.symlink("..data/details.toml", tmp_path / "details.toml")  # the ConfigMap layout
    (tmp_path / ".hidden.yaml").write_text("this: [is not even valid")
    (tmp_path / "notes.txt").write_text("not a config file")
    (tmp_path / "two.yaml").write_text(
        "kind: Service\nname: a\nports: [{number: 1, protocol: TCP}]\n---\n"
        "kind: Service\nname: b\nports: [{number: 2, protocol: TCP}]\n---\n"
    )
    result = load_directory(str(tmp_path))
    assert [s.name for s in result.mesh.services] == ["a", "b", "details"]
    assert all(".." not in f for f in result.files)


def test_rule_for_unknown_host_is_a_warning_and_strict_refuses(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE_CONFIG, tmp_path / "c")
    (tmp_path / "c" / "rules" / "ghost.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: ghost}\n"
        "spec:\n  hosts: [ghost]\n  http:\n  - route:\n    - destination: {host: reviews}\n"
    )
    result = load_directory(str(tmp_path / "c"))
    (warning,) = result.warnings
    assert warning.severity is Severity.WARNING
    assert warning.field == "hosts[0]" and warning.line == 5 and "ghost" in warning.message

    from xdsd.cli import main

    assert main(["validate", str(tmp_path / "c")]) == 0
    assert main(["validate", "--strict", str(tmp_path / "c")]) == 1


def test_unsupported_kinds_are_named(tmp_path: Path) -> None:
    (tmp_path / "gw.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: ProxyConfig\nmetadata: {name: gw}\n"
        "spec: {}\n---\n"
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: p}\n"
        "spec: {}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: k8s}\nspec: {}\n"
    )
    result = load_directory(str(tmp_path))
    text = "\n".join(str(w) for w in result.warnings)
    assert "gw.yaml:2: warning: kind: ProxyConfig is not supported" in text
    assert "gw.yaml:7: warning: kind: Widget (example.com/v1)" in text
    assert "gw.yaml:11: warning: apiVersion: a Kubernetes v1 Service" in text


@pytest.mark.parametrize(
    ("api_version", "kind", "message"),
    [
        ("security.istio.io/v1", "Nope", "kind: unknown security.istio.io kind 'Nope'"),
        ("security.istio.io/v2", "PeerAuthentication", "apiVersion: unsupported version"),
    ],
)
def test_unknown_security_kinds_are_errors(
    tmp_path: Path, api_version: str, kind: str, message: str
) -> None:
    """Security fails closed: what xdsd cannot enforce refuses the load."""
    (tmp_path / "p.yaml").write_text(
        f"apiVersion: {api_version}\nkind: {kind}\nmetadata: {{name: p}}\nspec: {{}}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_directory(str(tmp_path))
    assert any(message in str(p) for p in info.value.problems), info.value.problems


def test_a_failed_load_returns_nothing_and_lists_all_errors(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE_CONFIG, tmp_path / "c")
    reviews = tmp_path / "c" / "rules" / "reviews.yaml"
    reviews.write_text(reviews.read_text().replace("weight: 50", "weight: -1", 1))
    (tmp_path / "c" / "services" / "broken.toml").write_text("kind = \n")
    with pytest.raises(ConfigError) as info:
        load_directory(str(tmp_path / "c"))
    rendered = [str(p) for p in info.value.problems]
    assert any(
        "reviews.yaml:24: http[1].route[0].weight: must not be negative" in r for r in rendered
    )
    assert any("broken.toml:1: TOML syntax error" in r for r in rendered)
