"""Every cross-reference problem names the referring field's own line (not its
document's first), and a name near a known one gets "did you mean": checked through
``xdsd validate``, its output line and exit code, for each kind of reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from xdsd.cli import main
from xdsd.errors import ConfigError
from xdsd.located import Document
from xdsd.model import DestinationRule, Subset
from xdsd.sources.reference_lines import with_reference_lines

SERVICES = """\
kind: Service
name: reviews
ports:
- {number: 9080, protocol: HTTP}
endpoints:
- {address: 10.0.0.1, labels: {version: v1}}
---
kind: Service
name: ratings
ports:
- {number: 9080, protocol: HTTP, name: http}
- {number: 9090, protocol: GRPC, name: grpc}
endpoints:
- {address: 10.0.0.2}
"""

RULE = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {version: v1}
"""

GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: ingress
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
"""

VS_HEAD = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: canary
spec:
  hosts:
  - reviews
"""


def vs(body: str, head: str = VS_HEAD) -> str:
    return head + body


ROUTE = """\
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
"""

# name → (files besides the services, the rule and the gateway; the expected line of the
# output, after the directory; the exit code)
CASES: dict[str, tuple[dict[str, str], str, int]] = {
    "destination host": (
        {"vs.yaml": vs(ROUTE.replace("host: reviews", "host: reveiws"))},
        "vs.yaml:11: http[0].route[0].destination.host: no service named 'reveiws'; "
        "did you mean 'reviews'?",
        1,
    ),
    "destination host with namespace": (
        {"vs.yaml": vs(ROUTE.replace("host: reviews", "host: reveiws.default"))},
        "vs.yaml:11: http[0].route[0].destination.host: no service named "
        "'reveiws.default'; did you mean 'reviews.default'?",
        1,
    ),
    "destination host far from any": (
        {"vs.yaml": vs(ROUTE.replace("host: reviews", "host: zzz"))},
        "vs.yaml:11: http[0].route[0].destination.host: no service named 'zzz'",
        1,
    ),
    "destination host in JSON": (
        {
            "vs.json": '{"kind": "VirtualService", "name": "canary", "hosts": ["reviews"],\n'
            ' "http": [{"route": [{"destination":\n   {"host": "reveiws"}}]}]}\n'
        },
        "vs.json:3: http[0].route[0].destination.host: no service named 'reveiws'; "
        "did you mean 'reviews'?",
        1,
    ),
    "destination subset": (
        {"vs.yaml": vs(ROUTE.replace("subset: v1", "subset: v11"))},
        "vs.yaml:12: http[0].route[0].destination.subset: subset 'v11' of Service "
        "default/reviews is not defined: DestinationRule 'reviews' ({dir}/rule.yaml:1) "
        "defines 'v1'; did you mean 'v1'?",
        1,
    ),
    "destination port": (
        {"vs.yaml": vs(ROUTE + "        port: {number: 9999}\n")},
        "vs.yaml:13: http[0].route[0].destination.port.number: Service default/reviews "
        "has no port 9999 (ports: 9080)",
        1,
    ),
    "port required": (
        {"vs.yaml": vs(ROUTE.replace("reviews\n        subset: v1", "ratings"))},
        "vs.yaml:10: http[0].route[0].destination.port.number: is required: Service "
        "default/ratings has several ports",
        1,
    ),
    "mirror host": (
        {"vs.yaml": vs(ROUTE + "    mirror:\n      host: ratnigs\n")},
        "vs.yaml:14: http[0].mirror.host: no service named 'ratnigs'; did you mean 'ratings'?",
        1,
    ),
    "tcp destination host": (
        {"vs.yaml": vs("  tcp:\n  - route:\n    - destination:\n        host: reveiws\n")},
        "vs.yaml:11: tcp[0].route[0].destination.host: no service named 'reveiws'; "
        "did you mean 'reviews'?",
        1,
    ),
    "rule host": (
        {"vs.yaml": vs(ROUTE, VS_HEAD + "  - reveiws2\n")},
        "vs.yaml:8: warning: hosts[1]: no service named 'reveiws2': this host is ignored "
        "until one is defined; did you mean 'reviews'?",
        0,
    ),
    "gateway": (
        {"vs.yaml": vs(ROUTE, VS_HEAD + "  gateways:\n  - mesh\n  - ingres\n")},
        "vs.yaml:10: warning: gateways[1]: no Gateway default/ingres: the rule applies to "
        "it once one is defined; did you mean 'ingress'?",
        0,
    ),
    "gateway with namespace": (
        {"vs.yaml": vs(ROUTE, VS_HEAD + "  gateways:\n  - mesh\n  - default/ingres\n")},
        "vs.yaml:10: warning: gateways[1]: no Gateway default/ingres: the rule applies to "
        "it once one is defined; did you mean 'default/ingress'?",
        0,
    ),
    "two rules route one service": (
        {
            "a.yaml": vs(ROUTE),
            "b.yaml": vs(ROUTE.replace("subset: v1", ""), VS_HEAD.replace("canary", "other")),
        },
        "b.yaml:7: hosts[0]: Service default/reviews is already routed by VirtualService "
        "'canary' ({dir}/a.yaml:1); merge the two rules",
        1,
    ),
    "destination rule host": (
        {"dr.yaml": RULE.replace("host: reviews", "host: reveiws").replace("reviews\n", "x\n")},
        "dr.yaml:6: warning: host: no service named 'reveiws': rule ignored until one is "
        "defined; did you mean 'reviews'?",
        0,
    ),
    "second destination rule": (
        {"dr.yaml": RULE.replace("name: reviews", "name: second")},
        "dr.yaml:6: host: Service default/reviews already has DestinationRule 'reviews' "
        "({dir}/rule.yaml:1); merge them into one",
        1,
    ),
    "service host claimed twice": (
        {
            "s.yaml": "kind: Service\nname: web\nhosts:\n- www\n- reviews.default.svc.cluster.local\nports: [{number: 80, protocol: HTTP}]\n"
        },
        "s.yaml:5: hosts[1]: host 'reviews.default.svc.cluster.local' is already a name of Service "
        "default/reviews ({dir}/services.yaml:1)",
        1,
    ),
    "service entry host claimed": (
        {
            "e.yaml": "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
            "metadata: {name: ext}\nspec:\n  hosts:\n  - api.example.com\n"
            "  - reviews.default.svc.cluster.local\n"
            "  ports:\n  - {number: 443, name: https, protocol: HTTPS}\n"
            "  resolution: DNS\n"
        },
        "e.yaml:7: hosts[1]: host 'reviews.default.svc.cluster.local' is already a name of "
        "Service default/reviews ({dir}/services.yaml:1)",
        1,
    ),
    "service entry selector": (
        {
            "e.yaml": "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
            "metadata: {name: vms}\nspec:\n  hosts: [vm.example.com]\n"
            "  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n"
            "  workloadSelector:\n    labels: {app: vm}\n",
            "w.yaml": "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n"
            "metadata: {name: vm1}\nspec:\n  address: vm1.example.com\n  labels: {app: vm}\n",
        },
        "e.yaml:8: workloadSelector: selects WorkloadEntry default/vm1 ({dir}/w.yaml:1), "
        "whose address 'vm1.example.com' is not an IP address: resolution STATIC needs IP "
        "addresses (use resolution DNS for host names)",
        1,
    ),
    "sidecar selector": (
        {
            "a.yaml": "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: a}\n"
            "spec:\n  workloadSelector:\n    labels: {app: r}\n"
            "  egress:\n  - hosts: [./*]\n",
            "b.yaml": "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: b}\n"
            "spec:\n  egress:\n  - hosts: [./*]\n"
            "  workloadSelector:\n    labels: {app: r}\n",
        },
        "b.yaml:7: warning: workloadSelector: a workload labelled app=r is selected by "
        "Sidecar a ({dir}/a.yaml:1) too, which applies to it (the first by name)",
        0,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_reference_problem_is_on_the_fields_line(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files, expected, code = CASES[case]
    (tmp_path / "services.yaml").write_text(SERVICES)
    (tmp_path / "rule.yaml").write_text(RULE)
    (tmp_path / "gateway.yaml").write_text(GATEWAY)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert main(["validate", str(tmp_path)]) == code
    err = capsys.readouterr().err
    expected = f"{tmp_path}/" + expected.replace("{dir}", str(tmp_path))
    assert expected in err.splitlines(), err


def test_a_hint_follows_the_names_as_they_change(tmp_path: Path) -> None:
    """A hint depends on every name of the mesh: adding the near name to a directory
    loaded incrementally gives the hint a cold load gives."""
    from tests.sources.crosscheck_reference import reference_load
    from xdsd.sources.loader import DirectoryLoader

    (tmp_path / "vs.yaml").write_text(
        vs(ROUTE.replace("host: reviews\n        subset: v1", "host: reveiws"))
    )
    loader = DirectoryLoader(str(tmp_path))
    with pytest.raises(ConfigError) as first:
        loader.load()
    assert [p.message for p in first.value.problems] == ["no service named 'reveiws'"]
    (tmp_path / "services.yaml").write_text(SERVICES)
    with pytest.raises(ConfigError) as second:
        loader.load()
    expected = reference_load(str(tmp_path))[1]
    assert [str(p) for p in second.value.problems] == [str(p) for p in expected]
    assert second.value.problems[0].message.endswith("; did you mean 'reviews'?")


@pytest.mark.parametrize("base", [("spec",), ()])
@pytest.mark.parametrize("subsets", [0, 1, 3])
def test_a_rules_fields_get_their_own_lines(base: tuple[str, ...], subsets: int) -> None:
    """``host`` and each ``subsets[N]`` get the line of their own path under ``base``
    (the paths are made once per shape and shared by every such rule); a field on the
    document's first line, or not in its line table, gets none."""
    lines = {(*base, "host"): 5}
    lines.update({(*base, "subsets", i): 7 + i for i in range(subsets) if i != 1})
    doc = Document("r.yaml", 1, {}, lines)
    rule = DestinationRule(
        "r", "reviews", subsets=tuple(Subset(f"v{i}", (), None) for i in range(subsets))
    )
    found = with_reference_lines(rule, doc, base)
    assert found is rule
    expected = [("host", 5)] + [(f"subsets[{i}]", 7 + i) for i in range(subsets) if i != 1]
    assert list(rule.lines) == expected
