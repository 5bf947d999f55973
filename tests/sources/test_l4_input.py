"""VirtualService tcp and tls rules: what is read, and bad values refused with file, line
and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from xdsd.cli import main
from xdsd.model import Destination, L4Match, L4Route, RouteDestination
from xdsd.sources import load_directory

SERVICES = """\
kind: Service
metadata: {name: db}
spec:
  ports: [{number: 5432, protocol: TCP}]
  endpoints: [{address: 10.0.0.1, labels: {version: v1}}, {address: 10.0.0.2}]
---
kind: Service
metadata: {name: tls-a}
spec:
  ports: [{number: 8443, protocol: TLS}]
  endpoints: [{address: 10.0.1.1}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db}
spec:
  host: db
  subsets: [{name: v1, labels: {version: v1}}]
"""

HEAD = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: l4}
spec:
  hosts: [db, tls-a, "*.example.com"]
"""


def load(tmp_path: Path, body: str) -> object:
    (tmp_path / "services.yaml").write_text(SERVICES)
    (tmp_path / "vs.yaml").write_text(HEAD + body)
    return load_directory(str(tmp_path)).mesh


def test_tcp_and_tls_rules_are_read(tmp_path: Path) -> None:
    mesh = load(
        tmp_path,
        """\
  tcp:
  - match:
    - port: 5432
      destinationSubnets: [10.1.2.3/8, 192.168.0.7]
      sourceLabels: {app: web}
      sourceNamespace: shop
      gateways: [mesh]
    route:
    - {destination: {host: db, subset: v1}, weight: 3}
    - {destination: {host: db, port: {number: 5432}}, weight: 1}
  - route: [{destination: {host: db}}]
  tls:
  - match: [{sniHosts: [tls-a, a.example.com, "*.b.example.com"], port: 8443}]
    route: [{destination: {host: tls-a}}]
""",
    )
    (vs,) = mesh.virtual_services  # type: ignore[attr-defined]
    assert vs.tcp == (
        L4Route(
            (
                L4Match(
                    port=5432,
                    destination_subnets=("10.0.0.0/8", "192.168.0.7/32"),
                    source_labels=(("app", "web"),),
                    source_namespace="shop",
                    gateways=("mesh",),
                ),
            ),
            (
                RouteDestination(Destination("db", "v1", 5432), 3),  # the only port, filled in
                RouteDestination(Destination("db", "", 5432), 1),
            ),
        ),
        L4Route((), (RouteDestination(Destination("db", "", 5432), 100),)),
    )
    assert vs.tls == (
        L4Route(
            (L4Match(port=8443, sni_hosts=("tls-a", "a.example.com", "*.b.example.com")),),
            (RouteDestination(Destination("tls-a", "", 8443), 100),),
        ),
    )


# name → (rules after ``hosts``, expected fragments of one error line)
CASES: dict[str, tuple[str, list[str]]] = {
    "tls without match": (
        "  tls:\n  - route: [{destination: {host: tls-a}}]\n",
        ["vs.yaml:7:", "tls[0].match", "is required", "sniHosts"],
    ),
    "tls match without sniHosts": (
        "  tls:\n  - match: [{port: 8443}]\n    route: [{destination: {host: tls-a}}]\n",
        ["vs.yaml:7:", "tls[0].match[0].sniHosts", "is required"],
    ),
    "sni outside the hosts": (
        "  tls:\n  - match: [{sniHosts: [tls-b]}]\n    route: [{destination: {host: tls-a}}]\n",
        ["vs.yaml:7:", "tls[0].match[0].sniHosts[0]", "'tls-b' is not within", "hosts"],
    ),
    "sni wider than a wildcard host": (
        "  tls:\n  - match: [{sniHosts: ['*.com']}]\n    route: [{destination: {host: tls-a}}]\n",
        ["tls[0].match[0].sniHosts[0]", "'*.com' is not within"],
    ),
    "sni not a name": (
        "  tls:\n  - match: [{sniHosts: [a_b]}]\n    route: [{destination: {host: tls-a}}]\n",
        ["tls[0].match[0].sniHosts[0]", "must be a DNS name"],
    ),
    "sniHosts on tcp": (
        "  tcp:\n  - match: [{sniHosts: [db]}]\n    route: [{destination: {host: db}}]\n",
        ["vs.yaml:7:", "tcp[0].match[0].sniHosts", "move this rule to tls"],
    ),
    "bad subnet": (
        "  tcp:\n  - match: [{destinationSubnets: [10.0.0.0/33]}]\n"
        "    route: [{destination: {host: db}}]\n",
        ["vs.yaml:7:", "tcp[0].match[0].destinationSubnets[0]", "CIDR", "10.0.0.0/33"],
    ),
    "bad port": (
        "  tcp:\n  - match: [{port: 0}]\n    route: [{destination: {host: db}}]\n",
        ["tcp[0].match[0].port", "at least 1"],
    ),
    "label value not a string": (
        "  tcp:\n  - match: [{sourceLabels: {version: 2}}]\n    route: [{destination: {host: db}}]\n",
        ["tcp[0].match[0].sourceLabels.version", "quote it"],
    ),
    "tcp without route": (
        "  tcp:\n  - match: [{port: 5432}]\n",
        ["vs.yaml:7:", "tcp[0].route", "is required"],
    ),
    "negative weight": (
        "  tcp:\n  - route:\n    - {destination: {host: db}, weight: -1}\n",
        ["vs.yaml:8:", "tcp[0].route[0].weight", "must not be negative"],
    ),
    "all weights zero": (
        "  tcp:\n  - route:\n    - {destination: {host: db}, weight: 0}\n"
        "    - {destination: {host: db, subset: v1}}\n",
        ["tcp[0].route", "all weights are zero"],
    ),
    "sourceSubnet refused by name": (
        "  tcp:\n  - match: [{sourceSubnet: 10.0.0.0/8}]\n    route: [{destination: {host: db}}]\n",
        ["vs.yaml:7:", "tcp[0].match[0].sourceSubnet", "not supported", "never applies it"],
    ),
    "unknown field in a tls match": (
        "  tls:\n  - match: [{sniHost: [tls-a]}]\n    route: [{destination: {host: tls-a}}]\n",
        ["tls[0].match[0].sniHost", "did you mean 'sniHosts'"],
    ),
    "tcp destination to no service (validate checks it too)": (
        "  tcp:\n  - route: [{destination: {host: nowhere}}]\n",
        ["vs.yaml:7:", "tcp[0].route[0].destination.host", "no service named 'nowhere'"],
    ),
    "tcp destination subset not defined": (
        "  tcp:\n  - route: [{destination: {host: db, subset: v9}}]\n",
        ["tcp[0].route[0].destination.subset", "subset 'v9'", "is not defined"],
    ),
    "tls destination port not a port of the service": (
        "  tls:\n  - match: [{sniHosts: [tls-a]}]\n"
        "    route: [{destination: {host: tls-a, port: {number: 9}}}]\n",
        ["tls[0].route[0].destination.port.number", "has no port 9"],
    ),
    "unknown field in a tcp rule": (
        "  tcp:\n  - rout: [{destination: {host: db}}]\n",
        ["tcp[0].rout", "unknown field"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_l4_rule_exits_1_naming_file_line_field(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body, expected = CASES[case]
    (tmp_path / "services.yaml").write_text(SERVICES)
    (tmp_path / "vs.yaml").write_text(HEAD + body)
    assert main(["validate", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if all(f in line for f in expected)]
    assert lines, f"no line holds all of {expected}:\n{err}"


def test_sni_given_as_an_ip_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "services.yaml").write_text(SERVICES)
    body = (
        "  tls:\n  - match: [{sniHosts: [10.0.1.1]}]\n    route: [{destination: {host: tls-a}}]\n"
    )
    (tmp_path / "vs.yaml").write_text(HEAD + body)
    assert main(["validate", str(tmp_path)]) == 0
    assert "warning: tls[0].match[0].sniHosts[0]" in capsys.readouterr().err
