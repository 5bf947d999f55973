"""Bad Sidecars: each case exits 1 (or warns) naming file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.sources.test_bad_input import _materialize
from xdsd.cli import main
from xdsd.sources import load_directory


def sidecar(spec: str, name: str = "default", selector: str = "") -> str:
    head = f"apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {name}}}\n"
    body = "spec:\n"
    if selector:
        body += f"  workloadSelector: {{labels: {{{selector}}}}}\n"
    return head + body + spec


CASES: dict[str, tuple[str, list[str]]] = {
    "empty": ("  {}\n", ["x.yaml:4:", "empty Sidecar"]),
    "host without namespace": (
        "  egress:\n  - hosts: [reviews]\n",
        ["x.yaml:6:", "egress[0].hosts[0]", "./reviews"],
    ),
    "catch-all not last": (
        "  egress:\n  - hosts: [./*]\n  - port: {number: 80, protocol: HTTP}\n    hosts: [./a]\n",
        ["x.yaml:6:", "egress[0]", "must be the last one"],
    ),
    "two catch-alls": (
        "  egress:\n  - hosts: [./a]\n  - hosts: [./b]\n",
        ["x.yaml:7:", "egress[1]", "only one egress listener may have no port"],
    ),
    "egress port twice": (
        "  egress:\n  - port: {number: 80, protocol: HTTP}\n    hosts: [./a]\n"
        "  - port: {number: 80, protocol: HTTP}\n    bind: 127.0.0.5\n    hosts: [./b]\n",
        ["x.yaml:8:", "egress[1].port.number", "used by another egress listener"],
    ),
    "egress target port": (
        "  egress:\n  - port: {number: 80, protocol: HTTP, targetPort: 8080}\n    hosts: [./a]\n",
        ["x.yaml:6:", "egress[0].port.targetPort", "no meaning"],
    ),
    "bind not an address": (
        "  egress:\n  - port: {number: 80, protocol: HTTP}\n    bind: localhost\n"
        "    hosts: [./a]\n",
        ["x.yaml:7:", "egress[0].bind", "IP address"],
    ),
    "bind without port": (
        "  egress:\n  - bind: 127.0.0.5\n    hosts: [./a]\n",
        ["x.yaml:6:", "egress[0].bind", "needs a port"],
    ),
    "capture mode": (
        "  egress:\n  - hosts: [./a]\n    captureMode: NONE\n",
        ["x.yaml:7:", "egress[0].captureMode", "not supported"],
    ),
    "default endpoint elsewhere": (
        "  ingress:\n  - port: {number: 80, protocol: HTTP}\n    defaultEndpoint: 10.0.0.1:80\n",
        ["x.yaml:7:", "ingress[0].defaultEndpoint", "127.0.0.1:PORT"],
    ),
    "default endpoint bad port": (
        "  ingress:\n  - port: {number: 80, protocol: HTTP}\n    defaultEndpoint: 127.0.0.1:0\n",
        ["x.yaml:7:", "ingress[0].defaultEndpoint", "127.0.0.1:PORT"],
    ),
    "default endpoint on the instance address": (
        "  ingress:\n  - port: {number: 80, protocol: HTTP}\n    defaultEndpoint: 0.0.0.0:8080\n",
        ["x.yaml:7:", "ingress[0].defaultEndpoint", "instance_ip"],
    ),
    "ingress bind": (
        "  ingress:\n  - port: {number: 80, protocol: HTTP}\n    bind: 127.0.0.9\n",
        ["x.yaml:7:", "ingress[0].bind", "not supported"],
    ),
    "ingress port twice": (
        "  ingress:\n  - port: {number: 80, protocol: HTTP}\n"
        "  - port: {number: 80, protocol: TCP}\n",
        ["x.yaml:7:", "ingress[1].port.number", "another ingress listener"],
    ),
    "unknown policy": (
        "  outboundTrafficPolicy: {mode: SOMETIMES}\n",
        ["x.yaml:5:", "outboundTrafficPolicy.mode", "REGISTRY_ONLY"],
    ),
    "egress proxy": (
        "  outboundTrafficPolicy: {mode: ALLOW_ANY, egressProxy: {host: x}}\n",
        ["x.yaml:5:", "outboundTrafficPolicy.egressProxy", "not supported"],
    ),
    "inbound connection pool": (
        "  inboundConnectionPool: {http: {http1MaxPendingRequests: 1}}\n",
        ["x.yaml:5:", "inboundConnectionPool", "not supported"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_sidecar_names_file_line_field(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, expected = CASES[case]
    _materialize(tmp_path, {"x.yaml": sidecar(spec)})
    code = main(["validate", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    for fragment in expected:
        assert fragment in err, f"{fragment!r} not in:\n{err}"


def test_two_sidecars_without_selector_in_a_namespace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Istio's analyzer: MultipleSidecarsWithoutWorkloadSelectors."""
    one = sidecar("  egress:\n  - hosts: [./*]\n", "a")
    two = sidecar("  egress:\n  - hosts: [./*]\n", "b")
    _materialize(tmp_path, {"a.yaml": one, "b.yaml": two})
    assert main(["validate", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "b.yaml:1: namespace 'default' already has a Sidecar without workloadSelector (a," in err


def test_overlapping_selectors_and_allow_any_are_warnings(tmp_path: Path) -> None:
    """Istio's ConflictingSidecarWorkloadSelectors (the first by name applies), and
    ALLOW_ANY, which VM sidecars cannot honour."""
    files = {
        "a.yaml": sidecar("  egress:\n  - hosts: [./*]\n", "a", "app: r"),
        "b.yaml": sidecar("  egress:\n  - hosts: [./*]\n", "b", "app: r, version: v1"),
        "c.yaml": sidecar("  egress:\n  - hosts: [./*]\n", "c", "app: other"),
        "d.yaml": sidecar("  outboundTrafficPolicy: {mode: ALLOW_ANY}\n", "d", "app: d"),
    }
    _materialize(tmp_path, files)
    warnings = [str(w) for w in load_directory(str(tmp_path)).warnings]
    assert any(
        w.startswith(
            f"{tmp_path}/b.yaml:5: warning: workloadSelector: a workload labelled "
            "app=r, version=v1 is selected by Sidecar a"
        )
        for w in warnings
    ), warnings
    assert not any("c.yaml" in w for w in warnings)
    assert any(
        "d.yaml:6: warning: outboundTrafficPolicy.mode: ALLOW_ANY needs" in w for w in warnings
    ), warnings
