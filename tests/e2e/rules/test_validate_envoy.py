"""``xdsd validate --envoy``: every node class the directory implies goes through a real
``envoy --mode validate``; a value Envoy refuses is reported against the EnvoyFilter
patch (or raw resource) that wrote it, exit 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import envoy_binary

SERVICE = """\
kind: Service
name: reviews
ports:
- {number: 9080, protocol: HTTP, targetPort: 19080}
endpoints:
- {address: 10.0.0.1, labels: {version: v1}}
"""

GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: ingress}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
"""

FILTER = """\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: timeouts}
spec:
  configPatches:
  - applyTo: CLUSTER
    match: {context: SIDECAR_OUTBOUND, cluster: {service: reviews}}
    patch: {operation: MERGE, value: {connect_timeout: 3s}}
  - applyTo: CLUSTER
    match: {context: SIDECAR_OUTBOUND, cluster: {service: reviews}}
    patch:
      operation: MERGE
      value: {connect_timeout: -3s}
"""


def _validate(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xdsd.cli", "validate", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "reviews.yaml").write_text(SERVICE)
    (tmp_path / "gateway.yaml").write_text(GATEWAY)
    return tmp_path


def test_every_class_passes_envoy(config: Path) -> None:
    done = _validate("--envoy", str(config))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == (
        "envoy: accepted 2 classes: sidecar of default/reviews (version=v1); "
        "gateway default/ingressgateway (istio=ingressgateway)"
    )


def test_a_value_envoy_refuses_is_reported_with_its_file(config: Path) -> None:
    (config / "filter.yaml").write_text(FILTER)
    plain = _validate(str(config))
    assert plain.returncode == 0, plain.stderr  # xdsd alone cannot know Envoy's rule
    done = _validate(f"--envoy={envoy_binary()}", str(config))
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines[0].startswith(
        f"{config}/filter.yaml:13: configPatches[1].patch.value: Envoy rejects the sidecar "
        "of default/reviews (version=v1): "
    ), done.stderr
    assert "Expected positive duration" in lines[0] and "-3" in lines[0], lines[0]
    assert lines[1:] == ["error: Envoy refused 1 class"], done.stderr
    # the gateway, which the filter does not touch, still passes
    assert done.stdout.startswith("envoy: accepted 1 class: gateway default/ingressgateway")


def test_a_missing_envoy_is_one_line(config: Path) -> None:
    done = _validate("--envoy=/nonexistent/envoy", str(config))
    assert done.returncode == 1
    assert done.stderr == (
        "xdsd: error: --envoy /nonexistent/envoy: no executable file there: give the Envoy binary\n"
    )
